#!/usr/bin/env bash
# Builds the device binary (`mailslot`, --no-default-features: no edge, no YAML) for one
# target, statically linked against musl, into target/TARGET/release/mailslot.
#
#   cross/build.sh aarch64-unknown-linux-musl        # Pi 3/4/5, 64-bit OS
#   cross/build.sh armv7-unknown-linux-musleabihf    # Pi 2/3/Zero 2, 32-bit OS
#   cross/build.sh arm-unknown-linux-musleabihf      # Pi Zero/Pi 1 (ARMv6)
#   cross/build.sh x86_64-unknown-linux-musl
#   cross/build.sh --test TARGET    # instead: the library's unit tests, run under qemu-user
#
# With a Docker engine (`docker info` works) and `cross` installed, it runs `cross build`
# (configuration: Cross.toml at the repository root; stable's prebuilt std, the larger
# aarch64 binary). Otherwise it uses the host toolchain: for aarch64, nightly rebuilding
# std for size through `cargo zigbuild` when nightly and zig are installed, else stable
# with Debian's gcc as the linker; for x86_64 stable; for 32-bit ARM stable with the
# rustup target where rustup has it, else nightly with -Zbuild-std, through `cargo
# zigbuild`. It installs nothing but the rustup target/component; what is missing is
# printed with the command that installs it.
#
# Environment:
#   MAILSLOT_BUILD=cross|host   force the method (default: cross when Docker works)
#   MAILSLOT_NIGHTLY            the nightly toolchain for -Zbuild-std (default: nightly)
#   MAILSLOT_BUILD_STD=1|0      1: nightly -Zbuild-std (std rebuilt for size: no
#                               backtrace symbolizer, `optimize_for_size`; 270 KB
#                               smaller on aarch64); 0: stable's prebuilt std where
#                               rustup has it. Default: 1 for aarch64 when nightly
#                               (with rust-src) and zig are installed, else 0; always
#                               1 where rustup has no prebuilt std (32-bit ARM)
#   MAILSLOT_BUILD_STD_FEATURES std features for -Zbuild-std (default: optimize_for_size)
#   CARGO_TARGET_DIR            honoured; the binary is then under it
# Extra arguments go to cargo (e.g. --features ..., -v).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 2
}
[ $# -ge 1 ] || usage
mode=build
case "$1" in
    -h | --help) usage ;;
    --test)
        mode=test
        shift
        [ $# -ge 1 ] || usage
        ;;
esac
target=$1
shift

cd "$(dirname "$0")/.."
root=$PWD

case "$target" in
    aarch64-unknown-linux-musl | x86_64-unknown-linux-musl) kind=64 ;;
    armv7-unknown-linux-musleabihf | arm-unknown-linux-musleabihf) kind=arm32 ;;
    *)
        echo "build.sh: unsupported target $target" >&2
        echo "supported: aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf arm-unknown-linux-musleabihf x86_64-unknown-linux-musl" >&2
        exit 2
        ;;
esac

if [ "$mode" = build ]; then
    cargo_args=(build --release --locked --no-default-features --bin mailslot --target "$target")
    # The release profile is tuned for speed (the edge); the device binary for size.
    export CARGO_PROFILE_RELEASE_OPT_LEVEL=${CARGO_PROFILE_RELEASE_OPT_LEVEL:-z}
else
    cargo_args=(test --locked --no-default-features --lib --target "$target")
fi
nightly=${MAILSLOT_NIGHTLY:-nightly}
out_dir=${CARGO_TARGET_DIR:-$root/target}
out=$out_dir/$target/release/mailslot

missing=()
need() { # need COMMAND INSTALL-HINT
    command -v "$1" >/dev/null 2>&1 || missing+=("$1: $2")
}
# cargo-zigbuild runs `zig`, or `python3 -m ziglang` (pip's ziglang).
have_zig() {
    command -v zig >/dev/null 2>&1 || python3 -c 'import ziglang' >/dev/null 2>&1
}
report_missing() {
    if [ ${#missing[@]} -gt 0 ]; then
        echo "build.sh: cannot build $target on this host; missing:" >&2
        printf '  %s\n' "${missing[@]}" >&2
        exit 1
    fi
}

method=${MAILSLOT_BUILD:-}
if [ -z "$method" ]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        if command -v cross >/dev/null 2>&1; then
            method=cross
        else
            echo "build.sh: Docker works but cross is missing (cargo install cross --locked); using the host toolchain" >&2
            method=host
        fi
    else
        method=host
    fi
fi

if [ "$method" = cross ]; then
    need cross "cargo install cross --locked"
    report_missing
    echo "build.sh: cross ${cargo_args[*]}" >&2
    CROSS_CONFIG=$root/Cross.toml cross "${cargo_args[@]}" "$@"
elif [ "$method" = host ]; then
    need cargo "https://rustup.rs"
    need rustup "https://rustup.rs"
    report_missing

    # aarch64 (the size goal that binds): nightly rebuilding std for size by default, when
    # nightly with rust-src and zig are at hand; else stable with the prebuilt std, which
    # works but is about 270 KB larger (see cross/README.md, "Size and memory").
    # Other targets: stable with the prebuilt std when rustup offers it (x86_64; 32-bit
    # ARM too where rustup's mirror has it), else nightly building std from source.
    toolchain=stable
    build_std=()
    want_std=${MAILSLOT_BUILD_STD:-}
    if [ -z "$want_std" ] && [ "$mode" = build ]; then
        case "$target" in
            aarch64-*)
                if rustup run "$nightly" rustc -V >/dev/null 2>&1 &&
                    { rustup component list --toolchain "$nightly" --installed 2>/dev/null | grep -q '^rust-src' ||
                        rustup component add rust-src --toolchain "$nightly" >/dev/null 2>&1; } &&
                    command -v cargo-zigbuild >/dev/null 2>&1 && have_zig; then
                    want_std=1
                else
                    echo "build.sh: $target with stable's prebuilt std: it works the same but is about" \
                        "270 KB larger, at the edge of the 2 MiB size goal. For the small build: rustup toolchain install $nightly" \
                        "--profile minimal --component rust-src; pip install ziglang cargo-zigbuild." \
                        "MAILSLOT_BUILD_STD=0 chooses stable without this note." >&2
                fi
                ;;
        esac
    fi
    if [ "$want_std" = 1 ]; then
        # std rebuilt for size: without its backtrace symbolizer and with core's and
        # alloc's `optimize_for_size` (see below and cross/README.md). Default for
        # aarch64, always for 32-bit ARM, opt-in for x86_64.
        toolchain=$nightly
    elif ! rustup target list --toolchain stable --installed 2>/dev/null | grep -qx "$target"; then
        if ! rustup target add --toolchain stable "$target" >/dev/null 2>&1; then
            echo "build.sh: no prebuilt std for $target; using nightly -Zbuild-std" >&2
            toolchain=$nightly
        fi
    fi
    if [ "$toolchain" != stable ]; then
        if ! rustup run "$toolchain" rustc -V >/dev/null 2>&1; then
            missing+=("$toolchain toolchain: rustup toolchain install $toolchain --profile minimal --component rust-src")
        elif ! rustup component list --toolchain "$toolchain" --installed | grep -q '^rust-src'; then
            rustup component add rust-src --toolchain "$toolchain" >&2 ||
                missing+=("rust-src: rustup component add rust-src --toolchain $toolchain")
        fi
        if [ "$mode" = build ]; then
            # The release profile aborts on panic. std without its default features
            # (`backtrace`: the DWARF symbolizer, gimli/addr2line/miniz_oxide, which
            # finds nothing in a stripped binary anyway; `panic-unwind`): a panic still
            # prints its message and location, a backtrace prints addresses. With
            # `optimize_for_size`: core's and alloc's smaller variants of sorting,
            # formatting and the like (same results). MAILSLOT_BUILD_STD_FEATURES
            # replaces that list (empty: no std features).
            build_std=(-Zbuild-std=std,panic_abort "-Zbuild-std-features=${MAILSLOT_BUILD_STD_FEATURES-optimize_for_size}")
        else
            build_std=(-Zbuild-std) # the test harness unwinds
        fi
    fi

    linker=gcc
    case "$target" in
        aarch64-*)
            if ! command -v aarch64-linux-gnu-gcc >/dev/null 2>&1; then
                if command -v cargo-zigbuild >/dev/null 2>&1 && have_zig; then
                    linker=zig
                else
                    missing+=("aarch64-linux-gnu-gcc: apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross")
                fi
            fi
            ;;
        x86_64-*) need cc "apt-get install gcc" ;;
        arm*)
            # Debian's armhf gcc and libgcc are ARMv7/Thumb-2; zig builds musl and its
            # compiler runtime for the exact target CPU.
            linker=zig
            ;;
    esac
    if [ ${#build_std[@]} -gt 0 ]; then
        # Without rustc's self-contained musl, a glibc gcc would link glibc's startup
        # files; zig brings musl's.
        linker=zig
    fi
    if [ "$linker" = zig ]; then
        need cargo-zigbuild "pip install cargo-zigbuild ziglang"
        have_zig || missing+=("zig: pip install ziglang")
    fi
    report_missing

    rustflags=()
    if [ ${#build_std[@]} -gt 0 ]; then
        # A std built from source has no self-contained musl startup files; the linker
        # (zig) supplies musl's crt and libc instead.
        # zig also warns about the absent prebuilt-std folder rustc passes with -L.
        rustflags=(-C link-self-contained=no -A linker_messages)
    fi
    if [ "$linker" = zig ]; then
        # `cargo-zigbuild zigbuild|test`: the subcommand is cargo-zigbuild's own.
        sub=zigbuild
        [ "$mode" = test ] && sub=test
        cmd=(env "RUSTUP_TOOLCHAIN=$toolchain" cargo-zigbuild "$sub" "${cargo_args[@]:1}" "${build_std[@]}")
    else
        cmd=(cargo "+$toolchain" "${cargo_args[@]}" "${build_std[@]}")
    fi
    echo "build.sh: ${rustflags:+RUSTFLAGS=\"${rustflags[*]}\" }${cmd[*]} $*" >&2
    if [ ${#rustflags[@]} -gt 0 ]; then
        RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }${rustflags[*]}" "${cmd[@]}" "$@"
    else
        "${cmd[@]}" "$@"
    fi
else
    echo "build.sh: MAILSLOT_BUILD must be cross or host" >&2
    exit 2
fi

[ "$mode" = build ] || exit 0
if [ ! -f "$out" ]; then
    echo "build.sh: build finished but $out is missing" >&2
    exit 1
fi
echo "$out ($(stat -c %s "$out") bytes)"
