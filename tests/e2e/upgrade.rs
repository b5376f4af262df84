//! Binary updates with real binaries: copies of the `mailslot` under test whose version
//! record (src/release.rs) says another version, stripped to keep them small.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use mailslot::launch;

/// A copy of the `mailslot` under test that reports `version`: a real binary.
pub(crate) fn release_copy(dir: &Path, name: &str, version: &str) -> PathBuf {
    let exe = env!("CARGO_BIN_EXE_mailslot");
    let out = dir.join(name);
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(exe)
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(exe, &out).unwrap();
    }
    let mut bytes = std::fs::read(&out).unwrap();
    mailslot::release::set_version(&mut bytes, version).unwrap();
    std::fs::write(&out, &bytes).unwrap();
    set_mode(&out, 0o755);
    let o = run_ok("version", Command::new(&out).arg("version"));
    assert_eq!(stdout(&o).trim(), format!("mailslot {version}"));
    out
}

/// A "release" that exits at once, whatever it is asked: a crash loop.
pub(crate) fn crashing(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, "#!/bin/sh\necho 'crashing release' >&2\nexit 1\n").unwrap();
    set_mode(&p, 0o755);
    p
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Whether `bin version` runs and says it is mailslot; why not.
fn starts(bin: &Path) -> Result<(), String> {
    let out = output_of(Command::new(bin).arg("version")).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    match out.status.success() && text.starts_with("mailslot ") {
        true => Ok(()),
        false => Err(format!(
            "{:?}: {text} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// xorshift64*, seeded from the clock.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Power-loss stand-in: a shell loop that installs good and crash-looping releases,
/// boots them through the real launcher (`mailslot run`, which counts the boot and
/// execs the trial), confirms and rolls back, is SIGKILLed with everything it started
/// at random moments. After each kill the state folder must start a working binary:
/// the binary the launcher picks runs, and when it is a trial, the launcher's own
/// rollback (its boots used up) leaves one that runs (or none: the launcher itself).
///
/// SIGKILL keeps what the kernel accepted: this tests the order of writes and renames.
/// Bounded: `MAILSLOT_POWERLOSS_KILLS` kills (default 300) or 90 s.
pub(crate) fn killed_updates_always_leave_a_binary_that_starts() {
    let kills: u32 = std::env::var("MAILSLOT_POWERLOSS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let deadline = Instant::now() + Duration::from_secs(90);
    let dir = TempDir::new("upgrade-powerloss");
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    let v1 = release_copy(dir.path(), "v1", "1.0.0-pl");
    let v2 = release_copy(dir.path(), "v2", "2.0.0-pl");
    let bad = crashing(dir.path(), "bad");
    let exe = env!("CARGO_BIN_EXE_mailslot");
    let s = state.display();
    // `run` with a config that does not exist: the launcher counts the boot and starts
    // the trial, which then fails (it cannot register, as a bad release would not).
    let boot = format!("'{exe}' run --config '{s}/none' --state-dir '{s}' --trial-deadline 5");
    let (v1, v2, bad) = (v1.display(), v2.display(), bad.display());
    // One cycle of steps; each run starts at a random one, so that kills land
    // everywhere in the cycle (the state folder carries over from run to run).
    let steps = [
        format!("'{exe}' upgrade install '{v2}' --version 2.0.0-pl --state-dir '{s}'"),
        boot.clone(),
        format!("'{exe}' upgrade confirm --state-dir '{s}'"),
        format!("'{exe}' upgrade install '{bad}' --version 3.0.0-bad --state-dir '{s}'"),
        boot.clone(),
        boot.clone(),
        boot.clone(),
        boot.clone(),
        format!("'{exe}' upgrade install '{v1}' --version 1.0.0-pl --state-dir '{s}'"),
        format!("'{exe}' upgrade confirm --state-dir '{s}'"),
        format!("'{exe}' upgrade install '{v2}' --version 2.0.0-pl --state-dir '{s}'"),
        boot.clone(),
        format!("'{exe}' upgrade rollback --state-dir '{s}'"),
    ];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut rng = Rng(nanos | 1);
    let seed = rng.0;
    let (mut done, mut on_trial, mut rolled) = (0u32, 0u32, 0u32);
    while done < kills && Instant::now() < deadline {
        let first = (rng.next() % steps.len() as u64) as usize;
        let cycle: Vec<&str> = steps[first..]
            .iter()
            .chain(&steps[..first])
            .map(String::as_str)
            .collect();
        let script = format!("while :; do {}; done", cycle.join("; "));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("RUST_LOG", "off")
            .env_remove(launch::LAUNCHED_ENV)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.next() % 300_000));
        let group = format!("-{}", child.id());
        let status = Command::new("kill")
            .args(["-KILL", "--", &group])
            .status()
            .unwrap();
        assert!(status.success(), "kill {group} failed (seed {seed})");
        child.wait().unwrap();
        done += 1;

        let (bin, _) = launch::choice(&state);
        let is_trial = bin.as_ref().is_some_and(|b| b.ends_with(launch::TRIAL));
        if is_trial {
            on_trial += 1;
            // Boot as init would until the launcher rolls the trial back.
            for _ in 0..=launch::MAX_TRIAL_BOOTS {
                if launch::choice(&state).0 != bin {
                    break;
                }
                let _ = Command::new("sh")
                    .arg("-c")
                    .arg(&boot)
                    .env("RUST_LOG", "off")
                    .output();
            }
            let (after, _) = launch::choice(&state);
            assert!(
                after.as_ref().is_none_or(|b| !b.ends_with(launch::TRIAL)),
                "after kill {done} (seed {seed}): the trial was not rolled back"
            );
            rolled += 1;
        }
        let (bin, _) = launch::choice(&state);
        let runs = bin.as_deref().map_or(PathBuf::from(exe), Path::to_path_buf);
        let started = starts(&runs);
        assert!(
            started.is_ok(),
            "after kill {done} (seed {seed}): {} does not start: {}",
            runs.display(),
            started.unwrap_err()
        );
        // The last confirmed binary, and the one before it, are always whole.
        for name in [launch::INSTALLED, launch::PREV] {
            let p = state.join(name);
            if p.exists() {
                if let Err(e) = starts(&p) {
                    panic!("after kill {done} (seed {seed}): {name} does not start: {e}");
                }
            }
        }
    }
    eprintln!(
        "{done} kills (seed {seed}): {on_trial} left a release on trial, rolled back by the \
         launcher each time ({rolled})"
    );
    assert!(done >= kills.min(50), "only {done} kills in 90 s");
}

const TOKEN: &str = "upgrade-admin-token-0123456789abcdef";
/// The trial binaries' deadline in these tests.
const TRIAL_DEADLINE: &str = "20";

/// An edge with an admin listener, a fleet store and a release key; the key's file.
struct Fleet {
    edge: EdgeProc,
    /// edge.yml for the `devices` commands (the admin listener's real port).
    cli: PathBuf,
    enroll: String,
    origin: Origin,
    work: TempDir,
    key: PathBuf,
}

impl Fleet {
    fn start() -> Fleet {
        let work = TempDir::new("upgrade");
        let key = work.join("release.key");
        let out = run_ok(
            "mailslot-edge release keygen",
            Command::new(EDGE)
                .args(["release", "keygen", "--out"])
                .arg(&key),
        );
        let public = stdout(&out).trim().to_string();
        assert_eq!(public.len(), 64, "{public}");
        let edge = start_edge(init_edge(&format!(
            "admin-listen: 127.0.0.1:0\nadmin-token: {TOKEN}\nfleet:\n  release-key: {public}\n"
        )));
        let cli = cli_config(&edge, TOKEN);
        let out = run_ok(
            "mailslot-edge enroll-key",
            Command::new(EDGE)
                .arg("enroll-key")
                .arg("--config")
                .arg(edge.dir.join("edge.yml"))
                .args([
                    "--fleet",
                    "shop",
                    "--hostname",
                    "{device}.shop.example.test",
                ]),
        );
        Fleet {
            enroll: stdout(&out).trim().to_string(),
            origin: Origin::start("board"),
            work,
            cli,
            edge,
            key,
        }
    }

    fn yaml(&self, metered: bool) -> String {
        format!(
            "tunnel: shop\nenroll: {}\nedge: [\"{}\"]\nedge-ca: {}\nprotocol: quic\n\
             ha-connections: 1\nkeepalive: 2s\nidle-timeout: 6s\n{}ingress:\n  - hostname: \"{{device}}.shop.example.test\"\n    \
             service: http://{}\n  - service: http_status:404\n",
            self.enroll,
            self.edge.tunnel,
            self.edge.ca().display(),
            if metered { "metered: true\n" } else { "" },
            self.origin.addr
        )
    }

    /// `mailslot-edge release ARGS --config edge.yml`.
    fn release(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
        let mut cmd = Command::new(EDGE);
        cmd.arg("release");
        for a in args {
            cmd.arg(a);
        }
        cmd.arg("--config")
            .arg(self.edge.dir.join("edge.yml"))
            .output()
            .unwrap()
    }

    /// Signs `file` as `version` for this host's target and records it.
    fn add_release(&self, file: &Path, version: &str) {
        let target = mailslot::release::TARGET;
        let out = self.release(&[
            &"sign",
            &file,
            &"--key",
            &self.key,
            &"--target",
            &target,
            &"--version",
            &version,
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let sig = PathBuf::from(format!("{}.sig", file.display()));
        let out = self.release(&[&"add", &file, &"--target", &target, &"--sig", &sig]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).contains(&format!("release {version} for {target} recorded")));
    }

    fn devices(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
        devices(&self.cli, args)
    }

    /// One device from the admin API, as JSON.
    fn api_device(&self, id: &str) -> serde_json::Value {
        api_device(&self.edge, TOKEN, id)
    }
}

/// A real enrolled connector with its state folder, run by a supervisor loop as init
/// runs it (restarted when it exits).
struct Board {
    dir: TempDir,
    proc: Proc,
    id: String,
}

impl Board {
    fn start(fleet: &Fleet, name: &str, metered: bool) -> Board {
        let dir = TempDir::new(name);
        compile(dir.path(), &fleet.yaml(metered));
        std::fs::create_dir(dir.join("state")).unwrap();
        // The init script's loop, without its backoff: restart at once.
        let proc = Proc::spawn(
            name,
            Command::new("sh")
                .arg("-c")
                .arg(
                    "while :; do \"$0\" run --config \"$1/config.bin\" --state-dir \"$1/state\" \
                     --trial-deadline \"$2\"; echo \"supervisor: exited $?\" >&2; done",
                )
                .arg(MAILSLOT)
                .arg(dir.path())
                .arg(TRIAL_DEADLINE)
                .env_remove(launch::LAUNCHED_ENV)
                .process_group(0),
        );
        proc.wait_line("registered: device");
        let out = run_ok(
            "mailslot identity",
            Command::new(MAILSLOT)
                .args(["identity", "--config"])
                .arg(dir.join("config.bin")),
        );
        let id = stdout(&out)
            .lines()
            .find_map(|l| l.strip_prefix("device id:"))
            .map(|s| s.trim().to_string())
            .unwrap();
        Board { dir, proc, id }
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn serves(&self, fleet: &Fleet) -> bool {
        let url = format!("http://{}/via-board", fleet.edge.http);
        let r = curl(&["-H", &format!("Host: {}.shop.example.test", self.id), &url]);
        r.status == 200
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        // The supervisor loop and whatever it runs, as a group.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.proc.pid())])
            .status();
    }
}

/// A device upgraded from the version under test to another real binary: downloaded
/// through the tunnel, started on trial through the launcher, confirmed at its first
/// registration; the inventory shows the new version, and it serves.
pub(crate) fn a_device_is_upgraded_and_the_inventory_shows_the_new_version() {
    let fleet = Fleet::start();
    let board = Board::start(&fleet, "upgraded", false);
    let before = fleet.api_device(&board.id);
    assert_eq!(before["version"], mailslot::release::version());
    let v2 = release_copy(fleet.work.path(), "mailslot-v2", "0.2.0-e2e");
    fleet.add_release(&v2, "0.2.0-e2e");
    let ls = fleet.release(&[&"ls"]);
    assert!(stdout(&ls).contains("0.2.0-e2e"), "{}", stdout(&ls));

    let out = fleet.devices(&[&"upgrade", &board.id, &"--version", &"0.2.0-e2e"]);
    let said = stdout(&out);
    assert!(
        out.status.success(),
        "{said}\n{}\nboard:\n{}\nedge:\n{}",
        stderr(&out),
        board.proc.dump(),
        fleet.edge.proc.dump()
    );
    assert!(said.contains("applied everywhere (1)"), "{said}");
    let log = board.proc.dump();
    assert!(
        log.contains("release 0.2.0-e2e installed for trial; restarting into it"),
        "{log}"
    );
    assert!(log.contains("launcher: starting"), "{log}");
    assert!(log.contains("release 0.2.0-e2e confirmed"), "{log}");
    // One process all along: the swap execs in place.
    assert_eq!(board.proc.count("supervisor: exited"), 0, "{log}");
    let d = fleet.api_device(&board.id);
    assert_eq!(d["version"], "0.2.0-e2e", "{d}");
    assert_eq!(d["release"]["state"], "applied", "{d}");
    assert!(board.serves(&fleet));
    assert_eq!(
        launch::choice(&board.state()).0,
        Some(board.state().join(launch::INSTALLED))
    );
    let o = run_ok(
        "installed",
        Command::new(board.state().join(launch::INSTALLED)).arg("version"),
    );
    assert_eq!(stdout(&o).trim(), "mailslot 0.2.0-e2e");
}

/// A release that exits at once is rolled back by the launcher after its boots, the
/// previous binary registers again, and the reason reaches the inventory.
pub(crate) fn a_crash_looping_release_is_rolled_back_with_the_reason() {
    let fleet = Fleet::start();
    let board = Board::start(&fleet, "crashloop", false);
    let bad = crashing(fleet.work.path(), "mailslot-bad");
    fleet.add_release(&bad, "0.3.0-crash");
    let out = fleet.devices(&[&"upgrade", &board.id, &"--version", &"0.3.0-crash"]);
    // (Whether the command fails depends on whether the edge marked the rollout
    // stopped before the command's last look; what it prints does not.)
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("rolled back"),
        "{said}\nboard:\n{}",
        board.proc.dump()
    );
    assert!(
        said.contains("started 3 times without registering"),
        "{said}"
    );
    let d = fleet.api_device(&board.id);
    assert_eq!(d["release"]["state"], "rolled back", "{d}");
    assert!(
        d["release"]["reason"]
            .as_str()
            .unwrap()
            .contains("without registering"),
        "{d}"
    );
    assert_eq!(d["version"], mailslot::release::version());
    assert_eq!(
        board.proc.count("crashing release"),
        launch::MAX_TRIAL_BOOTS as usize,
        "{}",
        board.proc.dump()
    );
    assert!(board.state().join(launch::FAILED).exists());
    assert!(board.serves(&fleet));
}

/// A release whose signature the device's pinned key does not verify (a releases
/// folder written by someone without the release key) is refused by the device:
/// nothing downloaded, nothing installed.
pub(crate) fn a_release_signed_with_another_key_is_refused_by_the_device() {
    let fleet = Fleet::start();
    let board = Board::start(&fleet, "forged", false);
    // The edge's own `release add` refuses it, so it is written into the folder by hand.
    let forger = fleet.work.join("forger.key");
    run_ok(
        "keygen",
        Command::new(EDGE)
            .args(["release", "keygen", "--out"])
            .arg(&forger),
    );
    let v2 = release_copy(fleet.work.path(), "mailslot-forged", "0.4.0-forged");
    let target = mailslot::release::TARGET;
    let out = fleet.release(&[&"add", &v2, &"--target", &target, &"--key", &forger]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not verify"), "{}", stderr(&out));
    let key = std::fs::read(&forger).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(&key).unwrap();
    let bytes = std::fs::read(&v2).unwrap();
    let sha: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .try_into()
        .unwrap();
    let msg = mailslot::release::signed_message("0.4.0-forged", target, bytes.len() as u64, &sha);
    let offer = mailslot::release::Offer {
        version: "0.4.0-forged".into(),
        target: target.into(),
        size: bytes.len() as u64,
        sha256: sha,
        signature: pair.sign(&msg).as_ref().to_vec(),
        metered_ok: false,
    };
    let folder = fleet.edge.dir.join("releases/0.4.0-forged");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(&v2, folder.join(target)).unwrap();
    std::fs::write(folder.join(format!("{target}.offer")), offer.encode()).unwrap();

    let out = fleet.devices(&[&"upgrade", &board.id, &"--version", &"0.4.0-forged"]);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        !out.status.success(),
        "{said}\nboard:\n{}",
        board.proc.dump()
    );
    assert!(said.contains("refused"), "{said}");
    assert!(
        said.contains("does not verify against the pinned release key"),
        "{said}"
    );
    let d = fleet.api_device(&board.id);
    assert_eq!(d["version"], mailslot::release::version(), "{d}");
    assert_eq!(launch::choice(&board.state()).0, None);
    assert!(!board.state().join(launch::PART).exists());
    assert!(!fleet
        .edge
        .proc
        .dump()
        .contains("sending release 0.4.0-forged"));
    assert!(board.serves(&fleet));
}

/// A device on a metered link downloads nothing unless the upgrade says it may.
pub(crate) fn a_metered_device_downloads_only_when_the_upgrade_allows_it() {
    let fleet = Fleet::start();
    let board = Board::start(&fleet, "metered", true);
    let v2 = release_copy(fleet.work.path(), "mailslot-v2", "0.5.0-metered");
    fleet.add_release(&v2, "0.5.0-metered");
    let out = fleet.devices(&[&"upgrade", &board.id, &"--version", &"0.5.0-metered"]);
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.contains("refused"), "{said}");
    assert!(said.contains("metered"), "{said}");
    assert!(!fleet
        .edge
        .proc
        .dump()
        .contains("sending release 0.5.0-metered"));
    assert!(!board.state().join(launch::PART).exists());

    let out = fleet.devices(&[
        &"upgrade",
        &board.id,
        &"--version",
        &"0.5.0-metered",
        &"--metered-ok",
    ]);
    let said = stdout(&out);
    assert!(
        out.status.success(),
        "{said}{}\n{}",
        stderr(&out),
        board.proc.dump()
    );
    assert!(said.contains("applied everywhere (1)"), "{said}");
    assert_eq!(fleet.api_device(&board.id)["version"], "0.5.0-metered");
}

/// A download cut short (here: half of it in `mailslot.part` from before a restart) is
/// resumed from where the file ends, and the result checks out.
pub(crate) fn a_partial_download_is_resumed_from_where_it_ended() {
    let fleet = Fleet::start();
    let v2 = release_copy(fleet.work.path(), "mailslot-v2", "0.6.0-resumed");
    fleet.add_release(&v2, "0.6.0-resumed");
    let bytes = std::fs::read(&v2).unwrap();
    let half = bytes.len() / 2;
    let board = Board::start(&fleet, "resumed", false);
    std::fs::write(board.state().join(launch::PART), &bytes[..half]).unwrap();
    std::fs::write(board.state().join("part.version"), "0.6.0-resumed").unwrap();
    let out = fleet.devices(&[&"upgrade", &board.id, &"--version", &"0.6.0-resumed"]);
    assert!(
        out.status.success(),
        "{}{}\n{}",
        stdout(&out),
        stderr(&out),
        board.proc.dump()
    );
    let edge = fleet.edge.proc.dump();
    assert!(
        edge.contains(&format!(
            "sending release 0.6.0-resumed from byte {half} of {}",
            bytes.len()
        )),
        "{edge}"
    );
    assert!(board
        .proc
        .dump()
        .contains(&format!("resuming at byte {half}")));
    assert_eq!(fleet.api_device(&board.id)["version"], "0.6.0-resumed");
    assert_eq!(
        std::fs::read(board.state().join(launch::INSTALLED)).unwrap(),
        bytes
    );
}

/// A release built for another CPU (a real binary whose ELF header names aarch64: the
/// kernel refuses it with ENOEXEC) never runs: the launcher counts each failed start
/// and rolls it back, and the reason reaches the inventory.
pub(crate) fn a_release_for_another_cpu_is_rolled_back_with_the_reason() {
    let fleet = Fleet::start();
    let board = Board::start(&fleet, "wrongcpu", false);
    let file = release_copy(fleet.work.path(), "mailslot-arm", "0.7.0-wrongcpu");
    let mut bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF");
    bytes[18..20].copy_from_slice(&0xb7u16.to_le_bytes()); // e_machine: EM_AARCH64
    std::fs::write(&file, &bytes).unwrap();
    fleet.add_release(&file, "0.7.0-wrongcpu");
    let out = fleet.devices(&[&"upgrade", &board.id, &"--version", &"0.7.0-wrongcpu"]);
    // (Whether the command fails depends on whether the edge marked the rollout
    // stopped before the command's last look; what it prints does not.)
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("rolled back"),
        "{said}\nboard:\n{}",
        board.proc.dump()
    );
    assert!(said.contains("it cannot run: Exec format error"), "{said}");
    assert_eq!(
        fleet.api_device(&board.id)["version"],
        mailslot::release::version()
    );
    assert!(board.serves(&fleet));
}

/// A release on trial that registers with no edge within its deadline rolls itself
/// back and starts the launcher again, which runs the binary before it.
pub(crate) fn a_trial_that_reaches_no_edge_rolls_itself_back_at_its_deadline() {
    let dir = TempDir::new("deadline");
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    // An edge address where nothing answers.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let yaml = format!(
        "tunnel: t\ntoken: {}\nedge: [\"{}\"]\nprotocol: quic\nha-connections: 1\ningress:\n  - service: http_status:404\n",
        token(),
        dead.local_addr().unwrap()
    );
    let config = compile(dir.path(), &yaml);
    let v2 = release_copy(dir.path(), "v2", "0.8.0-deadline");
    run_ok(
        "upgrade install",
        Command::new(MAILSLOT)
            .args(["upgrade", "install"])
            .arg(&v2)
            .arg("--state-dir")
            .arg(&state),
    );
    let started = Instant::now();
    let p = Proc::spawn(
        "deadline",
        Command::new(MAILSLOT)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args(["--trial-deadline", "2"])
            .env_remove(launch::LAUNCHED_ENV),
    );
    p.wait_line("mailslot 0.8.0-deadline starting");
    p.wait_line("release 0.8.0-deadline rolled back: it did not register with an edge within 2s");
    // The launcher again, with nothing installed: this binary runs on.
    p.wait_line(&format!(
        "mailslot {} starting",
        mailslot::release::version()
    ));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(state.join(launch::FAILED).exists());
    assert_eq!(launch::choice(&state).0, None);
    assert_eq!(
        launch::pending_report(&state),
        Some(launch::Report::RolledBack {
            version: "0.8.0-deadline".into(),
            reason: "it did not register with an edge within 2s".into()
        })
    );
}

/// A download whose stream ends early (as a connection lost mid-transfer ends it: here
/// the edge's file holds only the first half when the first fetch is served) is asked
/// for again from where the device's file ends, on the same run, and checks out.
pub(crate) fn a_download_cut_short_is_resumed_on_the_next_fetch() {
    let fleet = Fleet::start();
    let v2 = release_copy(fleet.work.path(), "mailslot-v2", "0.9.0-cut");
    fleet.add_release(&v2, "0.9.0-cut");
    let bytes = std::fs::read(&v2).unwrap();
    let half = bytes.len() / 3;
    let served = fleet
        .edge
        .dir
        .join(&format!("releases/0.9.0-cut/{}", mailslot::release::TARGET));
    std::fs::write(&served, &bytes[..half]).unwrap();
    let board = Board::start(&fleet, "cut", false);
    let cli = fleet.cli.clone();
    let id = board.id.clone();
    let upgrade = std::thread::spawn(move || {
        Command::new(EDGE)
            .args([
                "devices",
                "upgrade",
                &id,
                "--version",
                "0.9.0-cut",
                "--config",
            ])
            .arg(&cli)
            .output()
            .unwrap()
    });
    fleet
        .edge
        .proc
        .wait_line(&format!("sent release 0.9.0-cut from byte 0 ({half} B)"));
    // The whole file again, before the device's next fetch (a second after the first).
    std::fs::write(&served, &bytes).unwrap();
    let out = upgrade.join().unwrap();
    assert!(
        out.status.success(),
        "{}{}\nboard:\n{}\nedge:\n{}",
        stdout(&out),
        stderr(&out),
        board.proc.dump(),
        fleet.edge.proc.dump()
    );
    assert!(board
        .proc
        .dump()
        .contains(&format!("release 0.9.0-cut: resuming at byte {half}")));
    assert!(fleet.edge.proc.dump().contains(&format!(
        "sending release 0.9.0-cut from byte {half} of {}",
        bytes.len()
    )));
    assert_eq!(fleet.api_device(&board.id)["version"], "0.9.0-cut");
    assert_eq!(
        std::fs::read(board.state().join(launch::INSTALLED)).unwrap(),
        bytes
    );
}
