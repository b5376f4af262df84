#!/usr/bin/env bash
# Runs every fuzz target (fuzz/ and fuzz/edge/, see fuzz/README.md) for a bounded time,
# starting from the checked-in seeds in fuzz/seeds/<target>/ and the corpus earlier runs
# left in fuzz/corpus/<target>/. A crash, a timeout or an out-of-memory fails the run
# and leaves its reproducer in fuzz/artifacts/<target>/.
#
# Needs the nightly toolchain and cargo-fuzz (installed here from crates.io when
# missing). When either cannot be had, the run FAILS with "FUZZ SKIPPED: <reason>":
# fuzzing that did not happen never passes quietly. To skip it on purpose, set
# MAILSLOT_FUZZ=skip; the script still says so on its last line.
#
# Environment:
#   FUZZ_SECONDS   seconds each target runs (default 15)
#   FUZZ_JOBS      targets run at once (default: the number of cores, at most 2)
#   MAILSLOT_FUZZ  "skip" skips, loudly
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-15}
cores=$(nproc 2>/dev/null || echo 1)
jobs=${FUZZ_JOBS:-$((cores < 2 ? cores : 2))}

skipped() {
    echo "FUZZ SKIPPED: $1"
    exit "${2:-1}"
}

if [ "${MAILSLOT_FUZZ:-}" = skip ]; then
    skipped "MAILSLOT_FUZZ=skip is set; no fuzz target ran" 0
fi
if ! rustup toolchain list 2>/dev/null | grep '^nightly' >/dev/null; then
    echo "fuzz: installing the nightly toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1 \
        || skipped "no nightly toolchain, and 'rustup toolchain install nightly' failed"
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (once; a few minutes)"
    cargo install cargo-fuzz --locked >/dev/null 2>&1 \
        || skipped "cargo-fuzz is not installed, and 'cargo install cargo-fuzz --locked' failed"
fi

# Both crates build into one target folder, so the dependencies they share build once.
# Defaults of cargo fuzz: optimised, with debug assertions, overflow checks and
# AddressSanitizer.
crates=(fuzz fuzz/edge)
start=$(date +%s)
for dir in "${crates[@]}"; do
    echo "== fuzz: build $dir"
    cargo +nightly fuzz build --fuzz-dir "$dir" --target-dir fuzz/target
done
echo "fuzz: built in $(($(date +%s) - start)) s"

triple=$(rustc +nightly -vV | sed -n 's/^host: //p')
bin=fuzz/target/$triple/release
targets=()
for dir in "${crates[@]}"; do
    while read -r t; do
        [ -n "$t" ] && targets+=("$t")
    done < <(cargo +nightly fuzz list --fuzz-dir "$dir")
done
logs=fuzz/target/fuzz-logs
mkdir -p "$logs"

# One target: its seeds and saved corpus, for $seconds; the log goes to $logs/<target>.
run_one() {
    local t=$1
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    local seeds=()
    [ -d "fuzz/seeds/$t" ] && seeds=("fuzz/seeds/$t")
    "$bin/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" \
        "fuzz/corpus/$t" "${seeds[@]}" </dev/null >"$logs/$t" 2>&1
}
export -f run_one
export seconds bin logs

echo "== fuzz: ${#targets[@]} targets, ${seconds} s each, $jobs at a time"
status=0
rm -f "$logs/FAILED"
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one "$1" || echo "$1" >>"$logs/FAILED"' _ {} || true
for t in "${targets[@]}"; do
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t" | tail -1)
    if [ -f "$logs/FAILED" ] && grep -qx "$t" "$logs/FAILED"; then
        status=1
        echo "fuzz $t: FAILED after ${runs:-?} executions"
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written to|^Base64' "$logs/$t" | head -8 | sed 's/^/    /'
        echo "    replay: fuzz/target/$triple/release/$t fuzz/artifacts/$t/<file> (full log: $logs/$t)"
    else
        echo "fuzz $t: ${runs:-?} executions, no finding"
    fi
done
rm -f "$logs/FAILED"
echo "fuzz: done in $(($(date +%s) - start)) s"
exit $status
