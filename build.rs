//! Records the build time, which the connector uses as the earliest possible "now" when
//! checking certificates on boards whose clock starts at 1970; the version and target
//! triple a build reports (src/release.rs); and stops a build for a
//! board target that would link the edge into the device binary.

/// Targets that are boards (a device binary), never an edge host.
const BOARD_TARGETS: [&str; 3] = [
    "aarch64-unknown-linux-musl",
    "armv7-unknown-linux-musleabihf",
    "arm-unknown-linux-musleabihf",
];

fn main() {
    let now = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    println!("cargo:rustc-env=MAILSLOT_BUILD_UNIX={now}");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-env-changed=MAILSLOT_EDGE_ON_BOARD");

    // The version a build reports and writes into its version record (src/release.rs):
    // MAILSLOT_VERSION when set (a release build), else the crate version.
    let version = std::env::var("MAILSLOT_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| std::env::var("CARGO_PKG_VERSION").unwrap_or_default());
    println!("cargo:rustc-env=MAILSLOT_VERSION={version}");
    println!("cargo:rerun-if-env-changed=MAILSLOT_VERSION");
    // The target triple, which a release offer must name for this binary to take it.
    println!(
        "cargo:rustc-env=MAILSLOT_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );

    // `cross build --release --target aarch64-unknown-linux-musl` with the default
    // features would build the edge (hyper, YAML, regex, jemalloc) into `mailslot`.
    let target = std::env::var("TARGET").unwrap_or_default();
    let edge = std::env::var_os("CARGO_FEATURE_EDGE").is_some();
    let allowed = std::env::var_os("MAILSLOT_EDGE_ON_BOARD").is_some();
    if edge && !allowed && BOARD_TARGETS.contains(&target.as_str()) {
        eprintln!(
            "\n{target} is a board target: the device binary is built without the edge:\n\n    \
             cross/build.sh {target}\n\nor, by hand:\n\n    \
             cross build --release --no-default-features --bin mailslot --target {target}\n\n\
             (to build the edge for this target after all, set MAILSLOT_EDGE_ON_BOARD=1)\n"
        );
        std::process::exit(1);
    }
}
