//! `--help` and `-h` on every command of both binaries print that command's usage on
//! stdout and exit 0.

use std::process::Command;

/// Every command of `mailslot`, as typed before `--help`, and a word its usage holds.
const MAILSLOT: &[(&[&str], &str)] = &[
    (&[], "usage: mailslot <command>"),
    (&["run"], "usage: mailslot run [--config FILE]"),
    (&["provision"], "usage: mailslot provision [--config FILE]"),
    (&["config"], "usage: mailslot config compile"),
    (
        &["config", "compile"],
        "usage: mailslot config compile FILE.yml",
    ),
    (&["config", "show"], "usage: mailslot config show FILE.bin"),
    (
        &["config", "check"],
        "usage: mailslot config check FILE.bin",
    ),
    (&["identity"], "usage: mailslot identity [--config FILE]"),
    (
        &["upgrade"],
        "usage: mailslot upgrade status|confirm|rollback",
    ),
    (&["upgrade", "status"], "usage: mailslot upgrade status"),
    (&["upgrade", "install"], "usage: mailslot upgrade status"),
    (&["demo"], "usage: mailslot demo [--listen ADDR]"),
    (&["access"], "usage: mailslot access <ssh|tcp|ssh-config>"),
    (&["access", "ssh"], "access ssh --hostname NAME"),
    (
        &["access", "tcp"],
        "access tcp --hostname NAME --listen ADDR",
    ),
    (
        &["access", "ssh-config"],
        "access ssh-config --hostname NAME",
    ),
    (&["version"], "usage: mailslot version"),
    (&["help"], "usage: mailslot <command>"),
];

/// Every command of `mailslot-edge`.
const EDGE: &[(&[&str], &str)] = &[
    (&[], "usage: mailslot-edge <command>"),
    (&["init"], "usage: mailslot-edge init --dir DIR"),
    (&["token"], "usage: mailslot-edge token --config edge.yml"),
    (
        &["access-token"],
        "usage: mailslot-edge access-token --config",
    ),
    (
        &["enroll-key"],
        "usage: mailslot-edge enroll-key --config edge.yml --fleet NAME",
    ),
    (&["devices"], "mailslot-edge devices ls --config edge.yml"),
    (
        &["devices", "ls"],
        "mailslot-edge devices ls --config edge.yml",
    ),
    (&["devices", "show"], "devices show --config edge.yml ID"),
    (
        &["devices", "revoke"],
        "devices revoke --config edge.yml ID",
    ),
    (
        &["devices", "push-config"],
        "devices push-config --config edge.yml (ID... | --fleet F) config.yml",
    ),
    (
        &["devices", "upgrade"],
        "devices upgrade --config edge.yml (ID... | --fleet F) --version V",
    ),
    (&["release"], "usage: mailslot-edge release keygen --out"),
    (&["release", "keygen"], "release keygen --out release.key"),
    (
        &["release", "sign"],
        "release sign FILE --key release.key --target",
    ),
    (&["release", "add"], "release add FILE --target TRIPLE"),
    (&["release", "ls"], "release ls [--config edge.yml]"),
    (&["serve"], "usage: mailslot-edge serve --config edge.yml"),
    (&["version"], "usage: mailslot-edge version"),
];

fn walk(bin: &str, commands: &[(&[&str], &str)]) {
    for (cmd, expect) in commands {
        for help in ["--help", "-h"] {
            let out = Command::new(bin).args(*cmd).arg(help).output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "{bin} {} {help}: {:?}\n{stderr}",
                cmd.join(" "),
                out.status
            );
            assert!(
                stdout.contains(expect),
                "{bin} {} {help} printed:\n{stdout}",
                cmd.join(" ")
            );
            assert!(
                stderr.is_empty(),
                "{bin} {} {help}: {stderr}",
                cmd.join(" ")
            );
        }
    }
}

pub(crate) fn every_mailslot_command_has_help() {
    walk(env!("CARGO_BIN_EXE_mailslot"), MAILSLOT);
}

pub(crate) fn every_mailslot_edge_command_has_help() {
    walk(env!("CARGO_BIN_EXE_mailslot-edge"), EDGE);
}

/// Help that a subcommand prints is its own, not the whole list.
pub(crate) fn help_is_the_commands_own() {
    let out = Command::new(env!("CARGO_BIN_EXE_mailslot"))
        .args(["config", "show", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("config compile"), "{text}");
    assert!(!text.contains("access"), "{text}");
    let out = Command::new(env!("CARGO_BIN_EXE_mailslot-edge"))
        .args(["token", "-h"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--allow PATTERN"), "{text}");
    assert!(!text.contains("serve"), "{text}");
}
