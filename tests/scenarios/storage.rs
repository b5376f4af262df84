//! The connector writes nothing to storage in steady state, idle or busy: an SD card
//! or eMMC wears with every write, and a board may run for years.
//!
//! The connector is traced with `strace -f -y` (every thread; `-y` prints the path
//! behind each file descriptor) through an idle window and a window of traffic, and
//! every call that could change a file is checked: `write`-family calls to a
//! descriptor that is a file (not a socket, pipe or eventfd), opens for writing or
//! creating, renames, unlinks, truncations, `mkdir`s and syncs. Allowed: the daily
//! last-known-good clock file (`config.bin.clock`, written at most once a day) and
//! `/dev/null`. `write_bytes` of `/proc/PID/io` (bytes the process sent to the block
//! layer) is compared too. The trace's own soundness is checked by its socket writes:
//! a trace that missed the traffic's writes would prove nothing.
//!
//! `STORAGE_SECS` sets each window (default 60 s, 10 to 3600).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::scene::*;

/// Default length of each window, seconds.
const DEFAULT_SECS: u64 = 60;
/// Bounds of `STORAGE_SECS`.
const SECS_RANGE: (u64, u64) = (10, 3600);

/// System calls that change files, besides writes through a descriptor.
const FILE_CHANGES: &[&str] = &[
    "creat",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "mkdir",
    "mkdirat",
    "rmdir",
    "truncate",
    "ftruncate",
    "link",
    "linkat",
    "symlink",
    "symlinkat",
    "fsync",
    "fdatasync",
    "sync_file_range",
    "syncfs",
    "fallocate",
];

/// Writes through a descriptor.
const WRITES: &[&str] = &["write", "pwrite64", "writev", "pwritev", "pwritev2"];

/// Open flags that make an open a write.
const WRITE_FLAGS: &[&str] = &["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"];

/// What one traced window saw: file changes (call lines) and writes to sockets.
#[derive(Default)]
struct Seen {
    file_changes: Vec<String>,
    socket_writes: u64,
    calls: BTreeMap<String, u64>,
}

fn window_secs() -> u64 {
    std::env::var("STORAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SECS)
        .clamp(SECS_RANGE.0, SECS_RANGE.1)
}

/// Whether a path may be written in steady state.
fn allowed(path: &str) -> bool {
    path == "/dev/null" || path.ends_with("config.bin.clock") || path.contains(".clock.tmp")
}

/// Classifies one strace line (`PID name(args) = result`).
fn classify(line: &str, seen: &mut Seen) {
    let call = line
        .split_once(' ')
        .map(|(_, rest)| rest.trim_start())
        .unwrap_or(line);
    let Some((name, args)) = call.split_once('(') else {
        return;
    };
    if name.starts_with('<') || name.starts_with("---") || name.starts_with("+++") {
        return;
    }
    *seen.calls.entry(name.to_string()).or_default() += 1;
    if call.contains("= -1 ") {
        return; // failed: changed nothing
    }
    if WRITES.contains(&name) {
        // `-y`: the descriptor is printed as `5</path>` or `5<socket:[123]>`.
        let target = args
            .split_once('<')
            .and_then(|(_, r)| r.split_once('>'))
            .map(|(t, _)| t)
            .unwrap_or("");
        if target.starts_with("socket:") || target.starts_with("TCP") || target.starts_with("UDP") {
            seen.socket_writes += 1;
        } else if target.starts_with('/') && !allowed(target) {
            seen.file_changes.push(line.to_string());
        }
        return;
    }
    if name == "openat" || name == "open" {
        let path = args.split('"').nth(1).unwrap_or("");
        if WRITE_FLAGS.iter().any(|f| args.contains(f)) && !allowed(path) {
            seen.file_changes.push(line.to_string());
        }
        return;
    }
    if FILE_CHANGES.contains(&name) && !args.split('"').any(allowed) {
        seen.file_changes.push(line.to_string());
    }
}

/// `write_bytes` of `/proc/PID/io`.
fn write_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Whether every thread of `pid` is traced.
fn all_traced(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("status"))
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
            })
            .unwrap_or(false)
    })
}

/// Traces `pid` while `work` runs; what it saw.
fn traced(pid: u32, dir: &TempDir, name: &str, work: impl FnOnce()) -> Seen {
    let out = dir.path().join(name);
    let mut strace = Proc::spawn(
        "strace",
        Command::new("strace")
            .args(["-f", "-qq", "-y", "-e"])
            .arg(format!(
                "trace=write,pwrite64,writev,pwritev,pwritev2,open,openat,{}",
                FILE_CHANGES
                    .iter()
                    .filter(|c| **c != "creat" || cfg!(target_arch = "x86_64"))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(",")
            ))
            .arg("-o")
            .arg(&out)
            .args(["-p", &pid.to_string()]),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !all_traced(pid) {
        assert!(
            Instant::now() < deadline,
            "strace did not attach: {}",
            strace.dump()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    work();
    strace.signal(2);
    strace
        .wait_exit(Duration::from_secs(20))
        .expect("strace stops");
    let mut seen = Seen::default();
    for line in std::fs::read_to_string(&out).unwrap().lines() {
        classify(line, &mut seen);
    }
    seen
}

/// A registered connector, idle for a window and then serving requests for one,
/// writes to no file.
pub fn connector_writes_nothing_to_storage() {
    classifier_self_check();
    let secs = window_secs();
    let mut s = Scene::new();
    // A data cap: its count lives in memory only.
    s.connect(Device {
        extra_yaml: "data-cap: 1GiB\n",
        ..Device::default()
    });
    assert_eq!(s.get(0, "/", 10), Ok(200));
    let pid = s.connector().pid();
    let dir = TempDir::new("strace");
    let before = write_bytes(pid);

    let idle = traced(pid, &dir, "idle", || {
        std::thread::sleep(Duration::from_secs(secs));
    });
    let busy = traced(pid, &dir, "busy", || {
        let load = Load::start_paths(&s, &[0, 1], &["/", "/mid.bin"], 20);
        std::thread::sleep(Duration::from_secs(secs));
        let results = load.finish();
        let failed = failures(&results);
        assert!(failed.is_empty(), "requests failed: {failed:?}");
        println!("  {} requests served in the busy window", results.len());
    });
    let after = write_bytes(pid);
    for (name, seen) in [("idle", &idle), ("busy", &busy)] {
        println!(
            "measured: {name} {secs} s: {} file changes, {} socket writes; calls {:?}",
            seen.file_changes.len(),
            seen.socket_writes,
            seen.calls
        );
    }
    assert!(
        busy.socket_writes > 0,
        "the trace saw no socket writes while serving: it traced nothing"
    );
    for (name, seen) in [("idle", &idle), ("busy", &busy)] {
        assert!(
            seen.file_changes.is_empty(),
            "the connector changed files while {name}:\n{}",
            seen.file_changes.join("\n")
        );
    }
    assert_eq!(after, before, "write_bytes of /proc/{pid}/io grew");
}

/// The classifier on lines as strace prints them (the scenario binary runs no unit
/// tests, so the scenario calls this first).
fn classifier_self_check() {
    {
        let mut seen = Seen::default();
        for line in [
            "12 write(7<socket:[4411]>, \"GET\"..., 3) = 3",
            "12 write(2<pipe:[99]>, \"log\", 3) = 3",
            "13 openat(AT_FDCWD</>, \"/etc/hosts\", O_RDONLY|O_CLOEXEC) = 9</etc/hosts>",
            "13 openat(AT_FDCWD</>, \"/tmp/d/config.bin.clock.tmp\", O_WRONLY|O_CREAT, 0600) = 9",
            "13 write(9</tmp/d/config.bin.clock.tmp>, \"1\", 1) = 1",
            "14 openat(AT_FDCWD</>, \"/tmp/d/state\", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 9</tmp/d/state>",
            "14 write(9</tmp/d/state>, \"x\", 1) = 1",
            "14 rename(\"/tmp/d/a\", \"/tmp/d/b\") = 0",
            "14 unlink(\"/tmp/d/gone\") = -1 ENOENT (No such file or directory)",
        ] {
            classify(line, &mut seen);
        }
        assert_eq!(seen.socket_writes, 1);
        assert_eq!(seen.file_changes.len(), 3, "{:?}", seen.file_changes);
    }
}
