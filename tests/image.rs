//! The image overlay: the tarball's contents, modes and reproducibility; the overlay
//! brought up like a board would (the BusyBox init script starting the aarch64 binary
//! under qemu-user, in a private user, mount and pid namespace, with a private
//! binfmt_misc instance), reaching an x86_64 edge on loopback; the Buildroot tree and the
//! systemd unit checked as far as the tools here allow; sd_notify from a real connector.
//!
//! Needs root and: tar, gzip, unshare, chroot, qemu-aarch64-static, dpkg-deb, apt-get
//! (for busybox-static:arm64), the aarch64-unknown-linux-musl rustup target and its
//! linker. A test that cannot run here is reported as ignored, with the reason (the
//! harness is libtest-mimic's, see `tests/scenarios/main.rs`); `.ci/image.sh`
//! installs it all.

// Test code: a failed unwrap is a failed test, and helpers shared between modules
// are `pub` inside this crate only.
#![allow(
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

#[path = "e2e/common/mod.rs"]
#[allow(dead_code, unused_imports)]
mod common;

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use libtest_mimic::{Completion, Trial};

const TARGET: &str = "aarch64-unknown-linux-musl";

/// A test that cannot run here: reported as ignored, with the reason.
fn skip(why: &str) -> Completion {
    Completion::ignored_with(why)
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .is_ok_and(|s| s.success())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// What the overlay build needs, or why it cannot run here.
fn build_prerequisites() -> Result<(), String> {
    for cmd in ["tar", "gzip", "git"] {
        if !have(cmd) {
            return Err(format!("{cmd} is not installed"));
        }
    }
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("rustup: {e}"))?;
    if !String::from_utf8_lossy(&targets.stdout).contains(TARGET) {
        return Err(format!("rustup target {TARGET} is not installed"));
    }
    if !root().join("cross/build.sh").exists() && !have("aarch64-linux-gnu-gcc") {
        return Err("aarch64-linux-gnu-gcc (gcc-aarch64-linux-gnu) is not installed".into());
    }
    Ok(())
}

/// Runs `image/build-overlay.sh` into `out`; the tarball's path.
fn build_overlay(out: &Path) -> PathBuf {
    let started = Instant::now();
    let mut cmd = Command::new("bash");
    // What cargo sets for this test process would make the nested cargo see another
    // environment than a shell's, and rebuild everything each time it changes hands.
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k == "CARGO"
            || k == "LD_LIBRARY_PATH"
            || k == "OUT_DIR"
            || [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_PRIMARY_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
        {
            cmd.env_remove(&*k);
        }
    }
    let o = cmd
        .arg(root().join("image/build-overlay.sh"))
        .arg(TARGET)
        .arg("--output-dir")
        .arg(out)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "build-overlay.sh failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("build-overlay.sh took {:?}", started.elapsed());
    let tarball = out.join(format!("mailslot-overlay-{TARGET}.tar.gz"));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        tarball.to_str().unwrap()
    );
    tarball
}

/// The overlay, built once per test run.
fn overlay() -> Result<&'static Path, String> {
    static OVERLAY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    OVERLAY
        .get_or_init(|| {
            build_prerequisites()?;
            let out = target_dir().join("image-test/a");
            Ok(build_overlay(&out))
        })
        .as_ref()
        .map(|p| p.as_path())
        .map_err(|e| e.clone())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn tarball_lists_what_ships_with_fixed_modes_and_is_reproducible() -> Completion {
    let first = match overlay() {
        Ok(p) => p,
        Err(e) => return skip(&e),
    };
    let second = build_overlay(&target_dir().join("image-test/b"));
    let a = std::fs::read(first).unwrap();
    let b = std::fs::read(&second).unwrap();
    assert!(a == b, "two builds of the overlay differ");

    // gzip -n: no file name, no time stamp.
    assert_eq!(&a[..3], &[0x1f, 0x8b, 8]);
    assert_eq!(a[3] & 0x08, 0, "gzip header holds a file name");
    assert_eq!(&a[4..8], &[0, 0, 0, 0], "gzip header holds a time");

    let epoch = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root())
        .output()
        .unwrap();
    let epoch = String::from_utf8_lossy(&epoch.stdout).trim().to_string();
    let listing = Command::new("tar")
        .args(["--numeric-owner", "--full-time", "-tvzf"])
        .arg(first)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8(listing.stdout).unwrap();
    let entries: Vec<(String, String, String)> = listing
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // -rwxr-xr-x 0/0 123 2024-01-01 00:00:00 usr/bin/mailslot
            (f[0].to_string(), f[1].to_string(), f[5].to_string())
        })
        .collect();
    let expected = [
        ("-rwxr-xr-x", "etc/init.d/S95mailslot"),
        ("drwx------", "etc/mailslot/"),
        ("-rwxr-xr-x", "usr/bin/mailslot"),
        ("-rw-r--r--", "usr/lib/systemd/system/mailslot.service"),
        ("-rw-r--r--", "usr/lib/sysusers.d/mailslot.conf"),
    ];
    assert_eq!(
        entries
            .iter()
            .map(|(m, _, n)| (m.as_str(), n.as_str()))
            .collect::<Vec<_>>(),
        expected,
        "{listing}"
    );
    assert!(entries.iter().all(|(_, o, _)| o == "0/0"), "{listing}");

    // Every mtime is SOURCE_DATE_EPOCH (the last commit's time).
    let dir = TempDir::new("untar");
    let st = Command::new("tar")
        .args(["--numeric-owner", "-xpzf"])
        .arg(first)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    for (_, name) in expected {
        let m = std::fs::symlink_metadata(dir.path().join(name)).unwrap();
        assert_eq!(m.mtime().to_string(), epoch, "{name}");
    }
    // The binary is a static aarch64 ELF.
    let bin = std::fs::read(dir.path().join("usr/bin/mailslot")).unwrap();
    assert_eq!(&bin[..4], b"\x7fELF");
    assert_eq!(
        u16::from_le_bytes([bin[18], bin[19]]),
        183,
        "e_machine: aarch64"
    );
    eprintln!("overlay: {} bytes, binary {} bytes", a.len(), bin.len());
    Completion::Completed
}

/// Debian's busybox-static for arm64: `MAILSLOT_BUSYBOX_DEB`, or downloaded once with
/// apt-get into the target folder. The tests run in parallel and share the file, so the
/// download happens once per process, into a folder of its own, and is renamed into
/// place whole: no test ever reads a file still being written.
fn busybox_deb() -> Result<PathBuf, String> {
    static DEB: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    DEB.get_or_init(fetch_busybox_deb).clone()
}

fn fetch_busybox_deb() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MAILSLOT_BUSYBOX_DEB") {
        return Ok(PathBuf::from(p));
    }
    let dir = target_dir().join("image-test/deb");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let find = |dir: &Path| {
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            (n.starts_with("busybox-static_") && n.ends_with("_arm64.deb")).then(|| e.path())
        })
    };
    if let Some(p) = find(&dir) {
        return Ok(p);
    }
    let part = dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&part);
    std::fs::create_dir_all(&part).map_err(|e| format!("{}: {e}", part.display()))?;
    let o = Command::new("apt-get")
        .args(["download", "busybox-static:arm64"])
        .current_dir(&part)
        .output()
        .map_err(|e| format!("apt-get: {e}"))?;
    let got = find(&part).filter(|_| o.status.success());
    let placed = got.and_then(|p| {
        let to = dir.join(p.file_name()?);
        std::fs::rename(&p, &to).ok().map(|_| to)
    });
    let _ = std::fs::remove_dir_all(&part);
    placed.ok_or_else(|| {
        format!(
            "cannot download busybox-static:arm64 (dpkg --add-architecture arm64 && apt-get \
             update, as .ci/image.sh does): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )
    })
}

/// binfmt_misc registration for aarch64 ELF executables. `F`: qemu is opened now, so
/// it works inside the chroot; `P`: argv[0] is kept, which BusyBox applets need.
const BINFMT_AARCH64: &str = r":mailslot-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:QEMU:FP";

/// A root file system: the overlay tarball, BusyBox, a passwd with root only.
fn assemble_root(tarball: &Path, deb: &Path, rootfs: &Path) {
    let st = Command::new("tar")
        .args(["--numeric-owner", "-xpzf"])
        .arg(tarball)
        .arg("-C")
        .arg(rootfs)
        .status()
        .unwrap();
    assert!(st.success());
    let x = rootfs.join(".deb");
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    for d in [
        "bin",
        "dev",
        "proc",
        "tmp",
        "var/run",
        "boot/mailslot",
        "boot/firmware/mailslot",
        "root",
    ] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::rename(x.join("bin/busybox"), rootfs.join("bin/busybox")).unwrap();
    std::fs::remove_dir_all(&x).unwrap();
    let list = Command::new("qemu-aarch64-static")
        .arg(rootfs.join("bin/busybox"))
        .arg("--list")
        .output()
        .unwrap();
    assert!(list.status.success());
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
}

/// Sends one command to the control loop inside the namespace.
fn ctl(rootfs: &Path, cmd: &str) {
    // Opening the FIFO blocks until the loop reads it: bound that.
    let path = rootfs.join("ctl");
    let cmd = format!("{cmd}\n");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::write(path, cmd));
    });
    rx.recv_timeout(WAIT)
        .expect("the control loop reads its FIFO")
        .unwrap();
}

fn overlay_boots_provisions_serves_and_restarts_under_qemu() -> Completion {
    if !is_root() {
        return skip("needs root (namespaces, chroot, binfmt_misc)");
    }
    for cmd in [
        "unshare",
        "chroot",
        "qemu-aarch64-static",
        "dpkg-deb",
        "curl",
        "mkfifo",
    ] {
        if !have(cmd) {
            return skip(&format!("{cmd} is not installed (see .ci/image.sh)"));
        }
    }
    let tarball = match overlay() {
        Ok(p) => p,
        Err(e) => return skip(&e),
    };
    let deb = match busybox_deb() {
        Ok(p) => p,
        Err(e) => return skip(&e),
    };
    let started = Instant::now();

    let edge = start_edge(init_edge(""));
    let origin = Origin::start("o");
    let token = edge.token("dev42", &["dev42.example.com"], "1d");
    let work = TempDir::new("image");
    let yaml = device_yaml(
        &edge,
        &token,
        1,
        &format!(
            "  - hostname: dev42.example.com\n    service: http://{}\n  - service: http_status:404\n",
            origin.addr
        ),
    );
    let config = std::fs::read(compile(work.path(), &yaml)).unwrap();

    let rootfs = work.path().join("root");
    std::fs::create_dir(&rootfs).unwrap();
    assemble_root(tarball, &deb, &rootfs);
    let boot_file = rootfs.join("boot/mailslot/config.bin");
    std::fs::write(&boot_file, &config).unwrap();
    let bad_file = rootfs.join("boot/firmware/mailslot/config.bin");
    // A copy cut short: the checksum fails.
    let mut bad = config.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    std::fs::write(&bad_file, &bad).unwrap();
    let ns = match board_namespace(work.path(), &rootfs) {
        Ok(ns) => ns,
        Err(skipped) => return skipped,
    };

    ctl(&rootfs, "start");
    wait_count(&ns, "registered: tunnel", 1);
    eprintln!("started and registered after {:?}", started.elapsed());
    wait_count(&ns, "ctl-done start 0", 1);
    let log = ns.dump();
    assert!(
        log.contains(
            "provisioning: installed /boot/mailslot/config.bin as /etc/mailslot/config.bin"
        ),
        "{log}"
    );
    assert!(
        log.contains("provisioning: /boot/firmware/mailslot/config.bin not installed"),
        "{log}"
    );
    assert!(log.contains("running as user mailslot"), "{log}");

    // The good file moved into /etc/mailslot, the bad one stayed.
    assert!(
        !boot_file.exists(),
        "the token lingers on the boot partition"
    );
    assert_eq!(std::fs::read(&bad_file).unwrap(), bad);
    let etc = rootfs.join("etc/mailslot");
    assert_eq!(std::fs::read(etc.join("config.bin")).unwrap(), config);
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    let uid: u32 = passwd
        .lines()
        .find_map(|l| l.strip_prefix("mailslot:x:"))
        .and_then(|r| r.split(':').next())
        .and_then(|u| u.parse().ok())
        .unwrap_or_else(|| panic!("the init script created no mailslot user:\n{passwd}"));
    for (p, mode) in [(etc.clone(), 0o700), (etc.join("config.bin"), 0o600)] {
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.uid(), uid, "{}", p.display());
        assert_eq!(m.permissions().mode() & 0o777, mode, "{}", p.display());
    }
    ctl(&rootfs, "uid");
    let line = wait_count(&ns, "ctl-uid", 1);
    assert!(
        line.split_whitespace()
            .skip(2)
            .all(|u| u == uid.to_string()),
        "mailslot runs as {line:?}, not uid {uid}"
    );

    // A visitor reaches the origin through the aarch64 connector.
    let (code, body) = get(&edge, "dev42.example.com", "/via-qemu");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"origin o /via-qemu");

    // Killed, it comes back.
    ctl(&rootfs, "kill");
    wait_count(&ns, "ctl-done kill 0", 1);
    wait_count(&ns, "exited with status 137; starting it again in 1s", 1);
    wait_count(&ns, "registered: tunnel", 2);
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, body) = get(&edge, "dev42.example.com", "/again");
        if code == 200 {
            assert_eq!(body, b"origin o /again");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 200 after the restart: {code}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // stop: SIGTERM, a drain, and the supervisor starts nothing more.
    ctl(&rootfs, "stop");
    wait_count(&ns, "ctl-done stop 0", 1);
    assert!(ns.dump().contains("connector stopped"), "{}", ns.dump());
    ctl(&rootfs, "status");
    wait_count(&ns, "ctl-done status 3", 1);
    assert_eq!(
        ns.dump().matches("registered: tunnel").count(),
        2,
        "{}",
        ns.dump()
    );
    ctl(&rootfs, "exit");
    let mut ns = ns;
    assert!(ns.wait_exit(WAIT).is_some(), "the namespace did not end");
    eprintln!("board test took {:?}", started.elapsed());
    Completion::Completed
}

/// The board's namespace: a private user, mount and pid namespace with its own
/// binfmt_misc (qemu for aarch64), chrooted into `rootfs`, running a control loop that
/// takes commands through [`ctl`]; `Err` when this kernel cannot.
fn board_namespace(work: &Path, rootfs: &Path) -> Result<Proc, Completion> {
    let st = Command::new("mkfifo")
        .arg(rootfs.join("ctl"))
        .arg(work.join("go"))
        .status()
        .unwrap();
    assert!(st.success());

    // Inside the chroot: the control loop, in BusyBox sh (aarch64, via binfmt_misc).
    std::fs::write(
        rootfs.join("ctl.sh"),
        r#"export MAILSLOT_LOG=stderr MAILSLOT_STOP_TIMEOUT=20
while :; do
    read -r cmd <ctl || continue
    case "$cmd" in
        start | stop | status) /etc/init.d/S95mailslot "$cmd"; echo "ctl-done $cmd $?" ;;
        kill) kill -KILL "$(cat /var/run/mailslot.child.pid)"; echo "ctl-done kill $?" ;;
        uid) echo "ctl-uid $(grep ^Uid: /proc/$(cat /var/run/mailslot.child.pid)/status)" ;;
        exit) exit 0 ;;
    esac
done
"#,
    )
    .unwrap();
    // As root of the new user namespace: a private binfmt_misc, /dev and /proc inside.
    let inner = format!(
        r#"set -e
mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || {{ echo "ns: binfmt-unavailable"; exit 0; }}
printf '%s' '{binfmt}' >/proc/sys/fs/binfmt_misc/register
mount --rbind /dev {root}/dev
mount --bind /proc {root}/proc
echo "ns: ready"
exec chroot {root} /bin/sh /ctl.sh
"#,
        binfmt = BINFMT_AARCH64.replace("QEMU", &which("qemu-aarch64-static")),
        root = rootfs.display()
    );
    std::fs::write(work.join("inner.sh"), inner).unwrap();
    let ns = Proc::spawn(
        "board",
        Command::new("unshare")
            .args([
                "--user",
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
            ])
            .args([
                "--",
                "/bin/sh",
                "-c",
                "read _ <\"$0\" && exec /bin/sh \"$1\"",
            ])
            .arg(work.join("go"))
            .arg(work.join("inner.sh")),
    );
    // Map ids 0..65535 to the same ids outside, so the mailslot user exists in there.
    // unshare(2) happens just after the spawn: wait for the new user namespace.
    let deadline = Instant::now() + WAIT;
    let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
    while std::fs::read_link(format!("/proc/{}/ns/user", ns.pid()))
        .ok()
        .as_ref()
        == Some(&ours)
    {
        assert!(Instant::now() < deadline, "unshare made no user namespace");
        std::thread::sleep(Duration::from_millis(5));
    }
    for map in ["uid_map", "gid_map"] {
        std::fs::write(format!("/proc/{}/{map}", ns.pid()), "0 0 65536\n").unwrap();
    }
    std::fs::write(work.join("go"), "go\n").unwrap();
    match ns.wait_line_within("ns: ", WAIT).as_deref() {
        Some("ns: ready") => {}
        Some("ns: binfmt-unavailable") => {
            return Err(skip(
                "this kernel has no binfmt_misc per user namespace (Linux 6.7+)",
            ))
        }
        _ => panic!("namespace setup failed:\n{}", ns.dump()),
    }

    Ok(ns)
}

/// Waits until `needle` was logged `n` times in all; the last such line.
fn wait_count(p: &Proc, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = p.dump();
        if log.matches(needle).count() >= n {
            return log
                .lines()
                .rev()
                .find(|l| l.contains(needle))
                .unwrap()
                .to_string();
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged {n} times within {WAIT:?}:\n{log}"
        );
        p.wait_line_within(needle, Duration::from_millis(100));
    }
}

fn which(cmd: &str) -> String {
    let o = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

fn sd_notify_from_a_real_connector() -> Completion {
    use std::os::unix::net::UnixDatagram;
    let edge = start_edge(init_edge(""));
    let origin = Origin::start("o");
    let token = edge.token("dev42", &["dev42.example.com"], "1d");
    let dir = TempDir::new("notify");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let yaml = device_yaml(
        &edge,
        &token,
        2,
        &format!(
            "  - hostname: dev42.example.com\n    service: http://{}\n  - service: http_status:404\n",
            origin.addr
        ),
    );
    let bin = compile(dir.path(), &yaml);
    let mut p = Proc::spawn(
        "connector",
        Command::new(MAILSLOT)
            .arg("run")
            .arg("--config")
            .arg(&bin)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("WATCHDOG_USEC", "200000"),
    );
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 256];
    let recv = |seen: &mut Vec<String>, buf: &mut [u8]| {
        let n = sock.recv(buf).expect("a notification");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    };
    while !seen.iter().any(|m| m.contains("READY=1")) {
        recv(&mut seen, &mut buf);
    }
    p.wait_line("registered: tunnel");
    let watchdogs = |seen: &[String]| seen.iter().filter(|m| *m == "WATCHDOG=1\n").count();
    let before = watchdogs(&seen);
    while watchdogs(&seen) < before + 2 {
        recv(&mut seen, &mut buf);
    }
    p.signal(15);
    while !seen.iter().any(|m| m.starts_with("STOPPING=1")) {
        recv(&mut seen, &mut buf);
    }
    let status = p.wait_exit(WAIT).expect("exits after SIGTERM");
    assert!(status.success());
    assert_eq!(
        seen.iter().filter(|m| m.contains("READY=1")).count(),
        1,
        "{seen:?}"
    );
    Completion::Completed
}

fn buildroot_tree_parses() -> Completion {
    let br = root().join("image/buildroot");
    let desc = std::fs::read_to_string(br.join("external.desc")).unwrap();
    assert!(desc.lines().any(|l| l == "name: MAILSLOT"), "{desc}");
    if !have("make") {
        return skip("make is not installed: the .mk files were not parsed");
    }
    // A stand-in for Buildroot's package infrastructure: it only prints what the
    // package defines, so make parses external.mk and mailslot.mk as Buildroot would.
    let dir = TempDir::new("br");
    let stub = format!(
        r#"BR2_EXTERNAL_MAILSLOT_PATH = {br}
TARGET_DIR = /tmp/target
INSTALL = install
RUSTC_TARGET_NAME = aarch64-unknown-linux-musl
pkgname = mailslot
cargo-package = $(info SITE=$(MAILSLOT_SITE)) $(info BUILD_OPTS=$(MAILSLOT_CARGO_BUILD_OPTS)) $(info USERS=$(strip $(MAILSLOT_USERS))) $(info PERMISSIONS=$(strip $(MAILSLOT_PERMISSIONS))) $(info HOOKS=$(MAILSLOT_POST_RSYNC_HOOKS))
include {br}/external.mk
$(info $(MAILSLOT_INSTALL_TARGET_CMDS))
$(info $(MAILSLOT_INSTALL_INIT_SYSV))
$(info $(MAILSLOT_INSTALL_INIT_SYSTEMD))
$(info $(MAILSLOT_CARGO_FETCH))
all: ; @:
"#,
        br = br.display()
    );
    std::fs::write(dir.path().join("Makefile"), stub).unwrap();
    let o = Command::new("make")
        .args(["--no-print-directory", "-s", "-f"])
        .arg(dir.path().join("Makefile"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("BUILD_OPTS=--no-default-features --bin mailslot"),
        "{out}"
    );
    assert!(
        out.contains("USERS=mailslot -1 mailslot -1 * /etc/mailslot"),
        "{out}"
    );
    assert!(
        out.contains("HOOKS= MAILSLOT_CARGO_FETCH") || out.contains("HOOKS=MAILSLOT_CARGO_FETCH"),
        "{out}"
    );
    assert!(
        out.contains(
            "/target/aarch64-unknown-linux-musl/release/mailslot /tmp/target/usr/bin/mailslot"
        ),
        "{out}"
    );
    for f in [
        "etc/init.d/S95mailslot",
        "usr/lib/systemd/system/mailslot.service",
        "usr/lib/sysusers.d/mailslot.conf",
    ] {
        assert!(out.contains(f), "{f} not installed: {out}");
        let installed = br.join("../overlay").join(f);
        assert!(installed.exists(), "{}", installed.display());
    }
    // Kconfig: every "config" has a type, "source" points at a file that exists.
    let top = std::fs::read_to_string(br.join("Config.in")).unwrap();
    for line in top.lines().filter(|l| l.starts_with("source ")) {
        let p = line
            .trim_start_matches("source ")
            .trim_matches('"')
            .replace("$BR2_EXTERNAL_MAILSLOT_PATH", br.to_str().unwrap());
        assert!(Path::new(&p).exists(), "{p}");
    }
    let pkg = std::fs::read_to_string(br.join("package/mailslot/Config.in")).unwrap();
    assert!(
        pkg.starts_with("config BR2_PACKAGE_MAILSLOT\n\tbool \"mailslot\"\n"),
        "{pkg}"
    );
    Completion::Completed
}

fn systemd_unit_verifies() -> Completion {
    if !have("systemd-analyze") {
        return skip("systemd-analyze is not installed");
    }
    let unit = root().join("image/overlay/usr/lib/systemd/system/mailslot.service");
    let o = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    // The binary is not installed on this host; anything else is a real complaint.
    let complaints: Vec<&str> = err
        .lines()
        .filter(|l| !l.contains("/usr/bin/mailslot is not executable"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(complaints.is_empty(), "{err}");
    let text = std::fs::read_to_string(&unit).unwrap();
    for line in [
        "Type=notify",
        "Restart=always",
        "WatchdogSec=60",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/etc/mailslot",
        "CapabilityBoundingSet=\n",
        "User=mailslot",
    ] {
        assert!(text.contains(line), "{line}");
    }
    let mut f = std::fs::File::open(&unit).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert!(s.contains("--boot-config /boot/firmware/mailslot/config.bin"));
    Completion::Completed
}

const UPGRADE_TOKEN: &str = "image-upgrade-admin-token-0123456789";

/// `mailslot-edge ARGS`, which must succeed; its stdout.
fn edge_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
    let mut cmd = Command::new(EDGE);
    for a in args {
        cmd.arg(a);
    }
    stdout(&run_ok("mailslot-edge", &mut cmd))
}

/// The overlay's aarch64 binary, booted by the BusyBox init script under qemu-user as
/// an enrolled device, is upgraded through its tunnel to a copy of itself whose version
/// record says 0.2.0-qemu (a real aarch64 binary: the launcher execs it from
/// /var/lib/mailslot as the mailslot user); then a crash-looping release is rolled back
/// by the launcher over the supervisor's restarts, and the reason reaches the edge.
fn overlay_upgrades_and_rolls_back_under_qemu() -> Completion {
    if !is_root() {
        return skip("needs root (namespaces, chroot, binfmt_misc)");
    }
    for cmd in [
        "unshare",
        "chroot",
        "qemu-aarch64-static",
        "dpkg-deb",
        "curl",
        "mkfifo",
    ] {
        if !have(cmd) {
            return skip(&format!("{cmd} is not installed (see .ci/image.sh)"));
        }
    }
    let tarball = match overlay() {
        Ok(p) => p,
        Err(e) => return skip(&e),
    };
    let deb = match busybox_deb() {
        Ok(p) => p,
        Err(e) => return skip(&e),
    };
    let started = Instant::now();
    let work = TempDir::new("image-upgrade");
    let key = work.join("release.key");
    let public = edge_ok(&[&"release", &"keygen", &"--out", &key])
        .trim()
        .to_string();
    let edge = start_edge(init_edge(&format!(
        "admin-listen: 127.0.0.1:0\nadmin-token: {UPGRADE_TOKEN}\nfleet:\n  release-key: {public}\n"
    )));
    let edge_yml = edge.dir.join("edge.yml");
    let cli = edge.dir.join("cli.yml");
    let text: String = std::fs::read_to_string(&edge_yml)
        .unwrap()
        .lines()
        .map(|l| match l.starts_with("admin-listen:") {
            true => format!("admin-listen: {}\n", edge.admin_addr()),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&cli, text).unwrap();
    let enroll = edge_ok(&[
        &"enroll-key",
        &"--config",
        &edge_yml,
        &"--fleet",
        &"boards",
        &"--hostname",
        &"{device}.boards.example.test",
    ])
    .trim()
    .to_string();
    let origin = Origin::start("o");
    let yaml = format!(
        "tunnel: boards\nenroll: {enroll}\nedge: [\"{}\"]\nedge-ca: {}\nprotocol: quic\nha-connections: 1\n\
         ingress:\n  - hostname: \"{{device}}.boards.example.test\"\n    service: http://{}\n  - service: http_status:404\n",
        edge.tunnel,
        edge.ca().display(),
        origin.addr
    );
    let config = std::fs::read(compile(work.path(), &yaml)).unwrap();
    let rootfs = work.path().join("root");
    std::fs::create_dir(&rootfs).unwrap();
    assemble_root(tarball, &deb, &rootfs);
    std::fs::write(rootfs.join("boot/mailslot/config.bin"), &config).unwrap();
    let ns = match board_namespace(work.path(), &rootfs) {
        Ok(ns) => ns,
        Err(skipped) => return skipped,
    };
    ctl(&rootfs, "start");
    let line = wait_count(&ns, "registered: device ", 1);
    let id: String = line
        .split("registered: device ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .to_string();
    eprintln!("board {id} registered after {:?}", started.elapsed());
    let devices = |args: &[&str]| {
        let mut cmd = Command::new(EDGE);
        cmd.arg("devices").args(args).arg("--config").arg(&cli);
        let o = cmd.output().unwrap();
        format!("{}{}", stdout(&o), stderr(&o))
    };

    // A release: the overlay's own binary, its version record rewritten.
    let mut v2 = std::fs::read(rootfs.join("usr/bin/mailslot")).unwrap();
    mailslot::release::set_version(&mut v2, "0.2.0-qemu").unwrap();
    let v2_file = work.join("mailslot-0.2.0-qemu");
    std::fs::write(&v2_file, &v2).unwrap();
    edge_ok(&[
        &"release",
        &"sign",
        &v2_file,
        &"--key",
        &key,
        &"--target",
        &TARGET,
    ]);
    let sig = work.join("mailslot-0.2.0-qemu.sig");
    edge_ok(&[
        &"release",
        &"add",
        &v2_file,
        &"--target",
        &TARGET,
        &"--sig",
        &sig,
        &"--config",
        &edge_yml,
    ]);
    let said = devices(&["upgrade", &id, "--version", "0.2.0-qemu"]);
    assert!(
        said.contains("applied everywhere (1)"),
        "{said}\nboard:\n{}",
        ns.dump()
    );
    let log = ns.dump();
    assert!(
        log.contains("launcher: starting /var/lib/mailslot/mailslot.trial"),
        "{log}"
    );
    assert!(log.contains("release 0.2.0-qemu confirmed"), "{log}");
    let shown = devices(&["show", &id]);
    assert!(shown.contains("0.2.0-qemu"), "{shown}");
    let state = rootfs.join("var/lib/mailslot");
    assert_eq!(std::fs::read(state.join("mailslot")).unwrap(), v2);
    let owner = std::fs::metadata(&state).unwrap().uid();
    assert_ne!(owner, 0, "the state folder must be the unprivileged user's");
    assert_eq!(
        std::fs::metadata(state.join("mailslot")).unwrap().uid(),
        owner
    );
    let (code, body) = get_host(
        &edge,
        &format!("{id}.boards.example.test"),
        "/after-upgrade",
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));

    // A release that exits at once: three boots through the supervisor, then rolled back.
    let bad = work.join("mailslot-crash");
    std::fs::write(&bad, "#!/bin/sh\necho 'crashing release'\nexit 1\n").unwrap();
    edge_ok(&[
        &"release",
        &"add",
        &bad,
        &"--target",
        &TARGET,
        &"--key",
        &key,
        &"--version",
        &"0.3.0-qemu-crash",
        &"--config",
        &edge_yml,
    ]);
    let said = devices(&["upgrade", &id, "--version", "0.3.0-qemu-crash"]);
    assert!(
        said.contains("rolled back: it started 3 times without registering"),
        "{said}\nboard:\n{}",
        ns.dump()
    );
    assert_eq!(
        ns.dump().matches("crashing release").count(),
        3,
        "{}",
        ns.dump()
    );
    // The confirmed 0.2.0-qemu runs again.
    let shown = devices(&["show", &id]);
    assert!(shown.contains("0.2.0-qemu"), "{shown}");
    let (code, _) = get_host(
        &edge,
        &format!("{id}.boards.example.test"),
        "/after-rollback",
    );
    assert_eq!(code, 200);

    ctl(&rootfs, "stop");
    wait_count(&ns, "ctl-done stop 0", 1);
    ctl(&rootfs, "exit");
    let mut ns = ns;
    assert!(ns.wait_exit(WAIT).is_some(), "the namespace did not end");
    eprintln!("upgrade board test took {:?}", started.elapsed());
    Completion::Completed
}

/// A GET through the edge for `host`, retried while the tunnel comes back.
fn get_host(edge: &EdgeProc, host: &str, path: &str) -> (u16, Vec<u8>) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, body) = get(edge, host, path);
        if code == 200 || Instant::now() > deadline {
            return (code, body);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    let args = common::harness_args();
    let test = |name: &str, run: fn() -> Completion| Trial::ignorable_test(name, move || Ok(run()));
    let trials = vec![
        test(
            "tarball_lists_what_ships_with_fixed_modes_and_is_reproducible",
            tarball_lists_what_ships_with_fixed_modes_and_is_reproducible,
        ),
        test(
            "overlay_boots_provisions_serves_and_restarts_under_qemu",
            overlay_boots_provisions_serves_and_restarts_under_qemu,
        ),
        test(
            "sd_notify_from_a_real_connector",
            sd_notify_from_a_real_connector,
        ),
        test(
            "overlay_upgrades_and_rolls_back_under_qemu",
            overlay_upgrades_and_rolls_back_under_qemu,
        ),
        test("buildroot_tree_parses", buildroot_tree_parses),
        test("systemd_unit_verifies", systemd_unit_verifies),
    ];
    libtest_mimic::run(&args, trials).exit();
}
