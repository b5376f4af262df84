#!/usr/bin/env bash
# CI for the image overlay (issue 7): installs what tests/image.rs needs, idempotently,
# then runs it. As root: apt packages and the arm64 architecture (for busybox-static).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" = 0 ]; then
    dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
    apt-get update -qq
    # tar, gzip, make: usually present; util-linux: unshare; coreutils: chroot, mkfifo.
    apt-get install -y -qq --no-install-recommends \
        ca-certificates curl tar gzip make git util-linux coreutils dpkg \
        gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static systemd >/dev/null
fi
rustup target add aarch64-unknown-linux-musl >/dev/null 2>&1 || true

echo "== test (image)"
cargo test --locked --test image -- --nocapture
