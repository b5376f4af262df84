#!/usr/bin/env bash
# CI for the device builds. For aarch64 and armv7 (musl): build the device binary with
# cross/build.sh, check that it is statically linked for the right machine, run the
# library's unit tests under qemu-user, and run an end-to-end smoke: the ARM connector
# under qemu registers with an x86_64 edge on loopback, and a visitor's request reaches
# an origin through it.
#
# Installs what it needs (apt, rustup, pip into a venv), idempotently; as root on a fresh
# Debian 12 machine. MAILSLOT_CROSS_TARGETS overrides the target list (e.g. add
# arm-unknown-linux-musleabihf for ARMv6).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

targets=${MAILSLOT_CROSS_TARGETS:-aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf}
export MAILSLOT_BUILD=${MAILSLOT_BUILD:-host}
nightly=${MAILSLOT_NIGHTLY:-nightly}
t0=$SECONDS
lap() { echo "   ($(($SECONDS - t0))s so far)"; }

echo "== cross: install tools"
export DEBIAN_FRONTEND=noninteractive
pkgs=(qemu-user-static gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils file curl
    ca-certificates python3 python3-venv)
absent=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || absent+=("$p")
done
if [ ${#absent[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing packages and not root: apt-get install ${absent[*]}" >&2
        exit 1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${absent[@]}" >/dev/null
fi

# zig and cargo-zigbuild (32-bit ARM links with zig's musl): a venv, so a system Python
# that refuses `pip install` (PEP 668) is left alone.
venv=${MAILSLOT_CROSS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/mailslot-cross/venv}
if ! "$venv/bin/python3" -c 'import ziglang' >/dev/null 2>&1 || [ ! -x "$venv/bin/cargo-zigbuild" ]; then
    python3 -m venv "$venv"
    "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check \
        'ziglang==0.17.1' 'cargo-zigbuild==0.24.1'
fi
export PATH="$venv/bin:$PATH"

rustup target add aarch64-unknown-linux-musl x86_64-unknown-linux-musl >/dev/null 2>&1 ||
    rustup target add aarch64-unknown-linux-musl x86_64-unknown-linux-musl
if ! rustup run "$nightly" rustc -V >/dev/null 2>&1; then
    rustup toolchain install "$nightly" --profile minimal --component rust-src
fi
rustup component add rust-src --toolchain "$nightly" >/dev/null 2>&1 ||
    rustup component add rust-src --toolchain "$nightly"
lap

echo "== cross: host edge and mailslot (for the smoke test)"
cargo build --locked --bins --quiet
host_dir=${CARGO_TARGET_DIR:-$root/target}/debug
export EDGE_BIN=$host_dir/mailslot-edge HOST_MAILSLOT=$host_dir/mailslot
lap

# shellcheck source=../cross/lib.sh
. "$root/cross/lib.sh"
work=$(mktemp -d)
trap 'ms_cleanup; rm -rf "$work"' EXIT

for t in $targets; do
    echo "== cross: $t: build"
    # std rebuilt for size on nightly (cross/build.sh's default for aarch64 when nightly
    # and zig are installed, as above; always for 32-bit ARM): forced here, so that a
    # missing tool fails the build instead of falling back to the larger stable build.
    # MAILSLOT_BUILD_STD=0 checks the stable build (aarch64) instead.
    echo "   $(rustup run "$nightly" rustc -V) (MAILSLOT_NIGHTLY=$nightly)"
    out=$(MAILSLOT_BUILD_STD=${MAILSLOT_BUILD_STD:-1} cross/build.sh "$t" | tail -1)
    bin=${CARGO_TARGET_DIR:-$root/target}/$t/release/mailslot
    echo "   $out"
    # The device binary's size goals (README, docs/boards.md): a build over them fails.
    size=$(stat -c %s "$bin")
    case "$t" in
        aarch64-*) goal=2097152 ;;
        armv7-*) goal=1782579 ;;
        *) goal= ;;
    esac
    if [ -n "$goal" ] && [ "$size" -gt "$goal" ]; then
        echo "$t: mailslot is $size B, over its size goal of $goal B"; exit 1
    fi
    echo "   size: $size B${goal:+ (goal: at most $goal B)}"
    lap

    echo "== cross: $t: statically linked?"
    case "$t" in
        aarch64-*) machine=AArch64 ;;
        arm*) machine=ARM ;;
        x86_64-*) machine=X86-64 ;;
    esac
    readelf -hW "$bin" | grep -q "Machine: *.*$machine" ||
        { echo "wrong machine:"; readelf -hW "$bin" | grep Machine; exit 1; }
    if readelf -lW "$bin" | grep -q INTERP; then
        echo "has a program interpreter (dynamically linked):"; readelf -lW "$bin" | grep -A1 INTERP; exit 1
    fi
    if readelf -dW "$bin" 2>/dev/null | grep -q NEEDED; then
        echo "needs shared libraries:"; readelf -dW "$bin" | grep NEEDED; exit 1
    fi
    file -b "$bin"
    read -r -a runner <<<"$(ms_runner "$t")"
    "${runner[@]}" "$bin" version

    echo "== cross: $t: unit tests under qemu-user"
    cross/build.sh --test "$t"
    lap

    echo "== cross: $t: end-to-end smoke (ARM connector under qemu, x86_64 edge)"
    ms_init "$work/$t"
    ms_start_edge
    ms_start_origin
    ms_start_connector connector 2 "${runner[@]}" "$bin"
    body=$(curl -sS --max-time 30 -H 'Host: dev42.example.com' "http://$EDGE_HTTP/smoke")
    [ "$body" = "hello from the origin" ] || { echo "unexpected body: $body"; cat "$work/$t/connector.log"; exit 1; }
    # 64 KiB through the tunnel, and the catch-all rule answered by the edge.
    n=$(curl -sS --max-time 30 -H 'Host: dev42.example.com' "http://$EDGE_HTTP/bytes/65536" | wc -c)
    [ "$n" = 65536 ] || { echo "got $n of 65536 bytes"; exit 1; }
    code=$(curl -sS --max-time 30 -o /dev/null -w '%{http_code}' -H 'Host: other.example.com' "http://$EDGE_HTTP/")
    [ "$code" = 404 ] || { echo "catch-all answered $code, not 404"; exit 1; }
    # SIGTERM drains and exits 0.
    kill -TERM "$CONNECTOR_PID"
    deadline=$((SECONDS + 40))
    while kill -0 "$CONNECTOR_PID" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$CONNECTOR_PID" 2>/dev/null; then
        echo "connector still running 40 s after SIGTERM"; exit 1
    fi
    rc=0; wait "$CONNECTOR_PID" || rc=$?
    [ $rc = 0 ] || { echo "connector exited $rc after SIGTERM"; cat "$work/$t/connector.log"; exit 1; }
    ms_cleanup
    echo "   smoke ok: visitor -> x86_64 edge -> $t connector (qemu) -> origin"
    lap
done

echo "== cross: done in $((SECONDS - t0))s"
echo "$(echo $targets | wc -w) passed, 0 failed"
