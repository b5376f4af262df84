#!/usr/bin/env bash
# Footprint of the device binary per target: the stripped size of `mailslot`, and the
# connector's memory on loopback with a real x86_64 edge and origin:
#   idle  VmRSS once its connections (ha-connections: 4) are registered and settled;
#   peak  VmHWM after a bounded load of 50 concurrent visitors (REQUESTS requests of
#         BYTES bytes each, curl --parallel --parallel-max 50).
# ARM binaries run under qemu-user, whose own code and translation cache are counted in
# the same process: their RSS is inflated, and the x86_64 musl build run natively is the
# honest memory figure (the connector's heap and stacks are much the same on ARM).
#
#   cross/footprint.sh [TARGET...]
#     default: x86_64-unknown-linux-musl aarch64-unknown-linux-musl
#              armv7-unknown-linux-musleabihf (and arm-unknown-linux-musleabihf if built)
#   REQUESTS=500 BYTES=65536 cross/footprint.sh x86_64-unknown-linux-musl
#
# Builds what is missing with cross/build.sh (and host debug binaries of the edge);
# needs qemu-user-static for ARM, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
requests=${REQUESTS:-500}
bytes=${BYTES:-65536}
tdir=${CARGO_TARGET_DIR:-$root/target}

if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf)
    [ -x "$tdir/arm-unknown-linux-musleabihf/release/mailslot" ] && targets+=(arm-unknown-linux-musleabihf)
fi

cargo build --locked --bins --quiet
export EDGE_BIN=$tdir/debug/mailslot-edge HOST_MAILSLOT=$tdir/debug/mailslot
# shellcheck source=lib.sh
. "$root/cross/lib.sh"
work=$(mktemp -d)
trap 'ms_cleanup; rm -rf "$work"' EXIT

kib() { awk -v k="$1" 'BEGIN { printf "%.2f MiB", k / 1024 }'; }
status_kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

rows=()
for t in "${targets[@]}"; do
    bin=$tdir/$t/release/mailslot
    cross/build.sh "$t" >/dev/null
    size=$(stat -c %s "$bin")
    read -r -a runner <<<"$(ms_runner "$t")"

    ms_init "$work/$t"
    ms_start_edge
    ms_start_origin
    ms_start_connector connector 4 "${runner[@]}" "$bin"
    sleep 3
    idle=$(status_kib "$CONNECTOR_PID" VmRSS)

    cfg=$work/$t/urls.cfg
    for _ in $(seq "$requests"); do
        printf 'url = "http://%s/bytes/%s"\noutput = "/dev/null"\n' "$EDGE_HTTP" "$bytes"
    done >"$cfg"
    start=$SECONDS
    ok=$(curl -sS --parallel --parallel-max 50 --max-time 120 -H 'Host: dev42.example.com' \
        -w '%{http_code}\n' -K "$cfg" 2>"$work/$t/curl.err" | grep -c '^200$' || true)
    secs=$((SECONDS - start))
    rss=$(status_kib "$CONNECTOR_PID" VmRSS)
    peak=$(status_kib "$CONNECTOR_PID" VmHWM)
    ms_cleanup
    note=native
    [ ${#runner[@]} -gt 0 ] && note="qemu-user (${runner[*]}): RSS includes qemu"
    rows+=("$(printf '%-32s %9d B %-10s  idle %-10s  peak %-10s  after %-10s  %s/%s ok in %ss  %s' \
        "$t" "$size" "($(kib $((size / 1024))))" "$(kib "$idle")" "$(kib "$peak")" "$(kib "$rss")" \
        "$ok" "$requests" "$secs" "$note")")
    echo "${rows[-1]}"
done

echo
echo "footprint: $requests requests of $bytes B, 50 concurrent; ha-connections 4"
printf '%s\n' "${rows[@]}"
