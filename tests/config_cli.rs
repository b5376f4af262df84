//! `mailslot config compile|show|check` through the real binary.

mod config_common;

use std::fs;

use config_common::*;

#[test]
fn compile_check_show_round_trip() {
    let dir = TempDir::new("cli");
    let yaml = write_example(&dir, "config.yml", "dev42", 8080);
    let bin = dir.join("config.bin");

    let out = config(&[&"compile", &yaml, &"--output", &bin]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = fs::read(&bin).unwrap();
    assert!(
        stdout(&out).contains(&format!("{} bytes", bytes.len())),
        "{}",
        stdout(&out)
    );
    assert_eq!(&bytes[..4], b"MSLC");

    let out = config(&[&"check", &bin]);
    assert!(out.status.success(), "{}", stderr(&out));
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

    let out = config(&[&"show", &bin]);
    assert!(out.status.success(), "{}", stderr(&out));
    let masked = stdout(&out);
    assert!(!masked.contains(&token()), "{masked}");
    assert!(masked.contains("token: \"********\""), "{masked}");

    let out = config(&[&"show", &bin, &"--show-secrets"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(shown.contains(&token()));
    assert!(
        shown.contains("edge-ca: |\n  -----BEGIN CERTIFICATE-----\n"),
        "{shown}"
    );

    // The shown YAML compiles, from another folder, to the same bytes.
    let other = TempDir::new("cli-other");
    fs::write(other.join("shown.yml"), &shown).unwrap();
    let out = config(&[
        &"compile",
        &other.join("shown.yml"),
        &"--output",
        &other.join("again.bin"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
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

#[test]
fn recompiling_keeps_previous() {
    let dir = TempDir::new("cli-prev");
    let a = write_example(&dir, "a.yml", "first", 8080);
    let b = write_example(&dir, "b.yml", "second", 8081);
    let bin = dir.join("config.bin");
    assert!(config(&[&"compile", &a, &"--output", &bin])
        .status
        .success());
    let first = fs::read(&bin).unwrap();
    assert!(config(&[&"compile", &b, &"--output", &bin])
        .status
        .success());
    assert_eq!(fs::read(dir.join("config.bin.prev")).unwrap(), first);
    assert!(stdout(&config(&[&"check", &bin])).contains("tunnel:      second"));
}

#[test]
fn compile_errors() {
    let dir = TempDir::new("cli-err");
    let bin = dir.join("config.bin");
    write_example(&dir, "good.yml", "dev42", 8080);
    assert!(
        config(&[&"compile", &dir.join("good.yml"), &"--output", &bin])
            .status
            .success()
    );
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

#[test]
fn bad_binaries() {
    let dir = TempDir::new("cli-bad");
    let yaml = write_example(&dir, "config.yml", "dev42", 8080);
    let bin = dir.join("config.bin");
    assert!(config(&[&"compile", &yaml, &"--output", &bin])
        .status
        .success());
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
