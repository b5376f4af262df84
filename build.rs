//! Records the build time, which the connector uses as the earliest possible "now" when
//! checking certificates on boards whose clock starts at 1970.
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
}
