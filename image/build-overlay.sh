#!/usr/bin/env bash
# Cross-builds the device binary for TARGET and packs the root-fs overlay into
# mailslot-overlay-TARGET.tar.gz: the binary, the BusyBox init script, the systemd unit
# and sysusers entry, and the empty config folder. The tarball is reproducible: sorted
# entries, every mtime SOURCE_DATE_EPOCH (default: the last commit's time), owners 0:0,
# fixed modes, gzip without a name or time stamp.
#
#   image/build-overlay.sh aarch64-unknown-linux-musl
#   image/build-overlay.sh armv7-unknown-linux-musleabihf --output-dir /tmp/out
#
# Options:
#   --output-dir DIR   where the tarball goes (default: $CARGO_TARGET_DIR or target, /image)
#   --binary FILE      pack this binary instead of building one
# The binary is also copied to image/overlay/usr/bin/mailslot (not committed), so that
# image/overlay can serve as Buildroot's BR2_ROOTFS_OVERLAY as it is.
#
# The build is cross/build.sh TARGET when it exists; otherwise, for the aarch64 and
# x86_64 musl targets, cargo with Debian's cross gcc as the linker.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 2
}

target=
out_dir=
binary=
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help) usage ;;
        --output-dir)
            out_dir=$2
            shift 2
            ;;
        --binary)
            binary=$2
            shift 2
            ;;
        -*)
            echo "build-overlay.sh: unknown option $1" >&2
            usage
            ;;
        *)
            [ -z "$target" ] || usage
            target=$1
            shift
            ;;
    esac
done
[ -n "$target" ] || usage

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
overlay=$root/image/overlay
target_dir=${CARGO_TARGET_DIR:-$root/target}
out_dir=${out_dir:-$target_dir/image}

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH

if [ -z "$binary" ]; then
    if [ -x cross/build.sh ]; then
        # Its report goes to stderr: stdout carries only the tarball path.
        cross/build.sh "$target" >&2
    else
        case "$target" in
            aarch64-unknown-linux-musl)
                export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER:-aarch64-linux-gnu-gcc}
                export CC_aarch64_unknown_linux_musl=${CC_aarch64_unknown_linux_musl:-aarch64-linux-gnu-gcc}
                ;;
            x86_64-unknown-linux-musl) ;;
            *)
                echo "build-overlay.sh: no cross/build.sh here, and no built-in recipe for $target" >&2
                exit 1
                ;;
        esac
        CARGO_PROFILE_RELEASE_OPT_LEVEL=${CARGO_PROFILE_RELEASE_OPT_LEVEL:-z} \
            cargo build --release --locked --no-default-features --bin mailslot --target "$target"
    fi
    binary=$target_dir/$target/release/mailslot
fi
[ -f "$binary" ] || {
    echo "build-overlay.sh: no binary at $binary" >&2
    exit 1
}

# The overlay as Buildroot sees it gets the binary too (ignored by git).
install -D -m 0755 "$binary" "$overlay/usr/bin/mailslot"

# Stage exactly what ships, with explicit modes: a checkout's modes depend on umask.
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
install -D -m 0755 "$binary" "$stage/usr/bin/mailslot"
install -D -m 0755 "$overlay/etc/init.d/S95mailslot" "$stage/etc/init.d/S95mailslot"
install -D -m 0644 "$overlay/usr/lib/systemd/system/mailslot.service" \
    "$stage/usr/lib/systemd/system/mailslot.service"
install -D -m 0644 "$overlay/usr/lib/sysusers.d/mailslot.conf" "$stage/usr/lib/sysusers.d/mailslot.conf"
install -d -m 0700 "$stage/etc/mailslot"

# Only these entries, not their parent folders: unpacking the tarball onto a root fs
# must not touch the modes or times of /etc or /usr.
entries=(
    etc/init.d/S95mailslot
    etc/mailslot
    usr/bin/mailslot
    usr/lib/systemd/system/mailslot.service
    usr/lib/sysusers.d/mailslot.conf
)
mkdir -p "$out_dir"
tarball=$out_dir/mailslot-overlay-$target.tar.gz
tmp=$tarball.tmp.$$
LC_ALL=C tar -C "$stage" --format=gnu --no-recursion --sort=name \
    --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
    -cf - "${entries[@]}" | gzip -9 -n >"$tmp"
mv "$tmp" "$tarball"
echo "$tarball"
