//! `mailslot config compile|show|check` through the real binary.

use std::fs;

use crate::common::*;

pub(crate) fn compile_check_show_round_trip() {
    let dir = TempDir::new("cli");
    let yaml = write_example(&dir, "config.yml", "dev42", 8080);
    let bin = dir.join("config.bin");

    let out = config_ok(&[&"compile", &yaml, &"--output", &bin]);
    let bytes = fs::read(&bin).unwrap();
    assert!(
        stdout(&out).contains(&format!("{} bytes", bytes.len())),
        "{}",
        stdout(&out)
    );
    assert_eq!(&bytes[..4], b"MSLC");

    let out = config_ok(&[&"check", &bin]);
    let summary = stdout(&out);
    for line in [
        &format!("valid, {} bytes, format version 1", bytes.len()) as &str,
        "tunnel:      dev42",
        "edges:       edge.example.com:7844",
        "protocol:    auto",
        "rules:       5",
        "  dev42.example.com  -> http://localhost:8080",
        "  api.dev42.example.com  ^/v1/  -> http://localhost:9000",
        "  secure.dev42.example.com  -> https://localhost:8443  [no-tls-verify]",
        "  *  -> http_status:404",
    ] {
        assert!(summary.contains(line), "missing {line:?} in:\n{summary}");
    }
    assert!(!summary.contains(&token()));

    let out = config_ok(&[&"show", &bin]);
    let masked = stdout(&out);
    assert!(!masked.contains(&token()), "{masked}");
    assert!(masked.contains("token: \"********\""), "{masked}");

    let out = config_ok(&[&"show", &bin, &"--show-secrets"]);
    let shown = stdout(&out);
    assert!(shown.contains(&token()));
    assert!(
        shown.contains("edge-ca: |\n  -----BEGIN CERTIFICATE-----\n"),
        "{shown}"
    );

    // The shown YAML compiles, from another folder, to the same bytes.
    let other = TempDir::new("cli-other");
    fs::write(other.join("shown.yml"), &shown).unwrap();
    config_ok(&[
        &"compile",
        &other.join("shown.yml"),
        &"--output",
        &other.join("again.bin"),
    ]);
    assert_eq!(fs::read(other.join("again.bin")).unwrap(), bytes);

    // The masked YAML does not compile.
    fs::write(other.join("masked.yml"), &masked).unwrap();
    let out = config(&[
        &"compile",
        &other.join("masked.yml"),
        &"--output",
        &other.join("m.bin"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--show-secrets"), "{}", stderr(&out));
    assert!(!other.join("m.bin").exists());
}

pub(crate) fn recompiling_keeps_previous() {
    let dir = TempDir::new("cli-prev");
    let a = write_example(&dir, "a.yml", "first", 8080);
    let b = write_example(&dir, "b.yml", "second", 8081);
    let bin = dir.join("config.bin");
    config_ok(&[&"compile", &a, &"--output", &bin]);
    let first = fs::read(&bin).unwrap();
    config_ok(&[&"compile", &b, &"--output", &bin]);
    assert_eq!(fs::read(dir.join("config.bin.prev")).unwrap(), first);
    assert!(stdout(&config(&[&"check", &bin])).contains("tunnel:      second"));
}

pub(crate) fn compile_errors() {
    let dir = TempDir::new("cli-err");
    let bin = dir.join("config.bin");
    write_example(&dir, "good.yml", "dev42", 8080);
    config_ok(&[&"compile", &dir.join("good.yml"), &"--output", &bin]);
    let good = fs::read(&bin).unwrap();

    let typo = example_yaml("dev42", 8080).replace("    path: ^/v1/", "    pth: ^/v1/");
    fs::write(dir.join("typo.yml"), typo).unwrap();
    let out = config(&[&"compile", &dir.join("typo.yml"), &"--output", &bin]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("mailslot config compile:") && err.contains("typo.yml"),
        "{err}"
    );
    assert!(
        err.contains("unknown field `pth`") && err.contains("line 14"),
        "{err}"
    );
    // A failed compile leaves the installed file alone.
    assert_eq!(fs::read(&bin).unwrap(), good);

    let long = example_yaml("dev42", 8080).replace(
        "ssh.dev42.example.com",
        &format!("{}.example.com", "s".repeat(288)),
    );
    fs::write(dir.join("long.yml"), long).unwrap();
    let out = config(&[&"compile", &dir.join("long.yml"), &"--output", &bin]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("ingress[3].hostname: 300 bytes, limit 253"),
        "{}",
        stderr(&out)
    );

    let no_catch_all = example_yaml("dev42", 8080).replace("  - service: http_status:404\n", "");
    fs::write(dir.join("nca.yml"), no_catch_all).unwrap();
    let out = config(&[&"compile", &dir.join("nca.yml"), &"--output", &bin]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("ingress[3]: the last rule must be a catch-all"),
        "{}",
        stderr(&out)
    );

    let out = config(&[&"compile", &dir.join("missing.yml"), &"--output", &bin]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.yml"), "{}", stderr(&out));

    let out = config(&[&"compile", &dir.join("good.yml")]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("--output"), "{}", stderr(&out));
}

pub(crate) fn bad_binaries() {
    let dir = TempDir::new("cli-bad");
    let yaml = write_example(&dir, "config.yml", "dev42", 8080);
    let bin = dir.join("config.bin");
    config_ok(&[&"compile", &yaml, &"--output", &bin]);
    let good = fs::read(&bin).unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
        (
            "flipped",
            {
                let mut b = good.clone();
                b[40] ^= 0x10;
                b
            },
            "checksum",
        ),
        (
            "newer",
            {
                let mut b = good.clone();
                b[4] = 9;
                b
            },
            "written by a newer mailslot: update",
        ),
        (
            "yaml",
            b"tunnel: dev42\n".to_vec(),
            "not a mailslot config file",
        ),
        ("empty", Vec::new(), "truncated"),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.join(name);
        fs::write(&path, bytes).unwrap();
        for cmd in ["check", "show"] {
            let out = config(&[&cmd, &path]);
            assert_eq!(out.status.code(), Some(1), "{cmd} {name}");
            let err = stderr(&out);
            assert!(
                err.contains(expect) && err.contains(name),
                "{cmd} {name}: {err}"
            );
            assert!(out.stdout.is_empty());
        }
    }
    let out = config(&[&"check", &dir.join("nonexistent.bin")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nonexistent.bin: cannot read"),
        "{}",
        stderr(&out)
    );
}

/// Runs `mailslot run --config BIN` until `ready` shows on stderr, stops it with SIGTERM
/// and returns everything it logged.
fn run_then_stop(bin: &std::path::Path, ready: &str) -> String {
    use std::io::{BufRead, BufReader};
    let mut child = mailslot()
        .env("RUST_LOG", "info")
        .args([
            std::ffi::OsStr::new("run"),
            "--config".as_ref(),
            bin.as_os_str(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains(ready) {
            break;
        }
    }
    assert!(log.contains(ready), "{log}");
    // SAFETY: kill takes a pid and a signal number.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    for line in lines {
        log.push_str(&line.unwrap());
        log.push('\n');
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    log
}

/// The connector keeps the last time it saw a set clock beside its config, written at
/// most once a day: a second run within the day writes nothing, not even at its stop.
pub(crate) fn run_keeps_a_last_known_good_time_written_at_most_daily() {
    let dir = TempDir::new("clock");
    // An edge port nobody listens on: the connector logs its first failed dial at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = dir.join("config.yml");
    fs::write(
        &yaml,
        format!(
            "tunnel: t\ntoken: k\nedge: [\"127.0.0.1:{port}\"]\nprotocol: http2\n\
             ingress:\n  - service: http_status:404\n"
        ),
    )
    .unwrap();
    let bin = dir.join("config.bin");
    config_ok(&[&"compile", &yaml, &"--output", &bin]);
    let clock = dir.join("config.bin.clock");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };

    let before = now();
    let log = run_then_stop(&bin, "last-known-good time");
    assert_eq!(log.matches("last-known-good time").count(), 1, "{log}");
    let saved: u64 = fs::read_to_string(&clock).unwrap().trim().parse().unwrap();
    assert!((before..=now()).contains(&saved), "{saved}");
    let written = fs::metadata(&clock).unwrap().modified().unwrap();

    // Stopped once it runs (its signal handlers are in place when it dials).
    let log = run_then_stop(&bin, "cannot connect to edge");
    assert!(!log.contains("last-known-good time"), "{log}");
    assert_eq!(fs::metadata(&clock).unwrap().modified().unwrap(), written);
    assert_eq!(fs::read_to_string(&clock).unwrap(), format!("{saved}\n"));

    // A time two days old is replaced.
    fs::write(&clock, format!("{}\n", saved - 2 * 86400)).unwrap();
    let log = run_then_stop(&bin, "last-known-good time");
    assert!(log.contains("saved to"), "{log}");
    let again: u64 = fs::read_to_string(&clock).unwrap().trim().parse().unwrap();
    assert!(again >= saved, "{again}");
}
