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
        let out = Command::new(&runs).arg("version").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with("mailslot "),
            "after kill {done} (seed {seed}): {} does not start: {text} {}",
            runs.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // The last confirmed binary is always whole.
        for name in [launch::INSTALLED, launch::PREV] {
            let p = state.join(name);
            if p.exists() {
                let o = Command::new(&p).arg("version").output().unwrap();
                assert!(
                    o.status.success(),
                    "after kill {done} (seed {seed}): {name} broken"
                );
            }
        }
    }
    eprintln!(
        "{done} kills (seed {seed}): {on_trial} left a release on trial, rolled back by the \
         launcher each time ({rolled})"
    );
    assert!(done >= kills.min(50), "only {done} kills in 90 s");
}
