//! Power loss stand-in: a shell loop compiling two configs over the same `config.bin` is
//! SIGKILLed, with every process it started, at random moments. After each kill,
//! `config.bin` or `config.bin.prev` must hold one of the two configs (in fact
//! `config.bin` always does: it is only ever replaced by a rename).
//!
//! SIGKILL keeps what the kernel already accepted, so this tests the order of the
//! writes and renames, not the fsyncs; those follow the documented ext4/POSIX recipe.
//! Bounded: `MAILSLOT_POWERLOSS_KILLS` kills (default 300) or 60 s, whichever is first.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use mailslot::config::store;

/// xorshift64*, seeded from the clock: std only.
struct Rng(u64);

impl Rng {
    fn from_time() -> Rng {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub(crate) fn killed_writers_never_leave_the_device_without_a_config() {
    let kills: u32 = std::env::var("MAILSLOT_POWERLOSS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let deadline = Instant::now() + Duration::from_secs(60);
    let dir = TempDir::new("powerloss");
    let a = write_example(&dir, "a.yml", "first", 8080);
    let b = write_example(&dir, "b.yml", "second", 8081);
    let bin = dir.join("config.bin");
    // The device starts with a good config, as it would after provisioning.
    config_ok(&[&"compile", &a, &"--output", &bin]);

    let exe = env!("CARGO_BIN_EXE_mailslot");
    let script = format!(
        "while :; do '{exe}' config compile '{a}' --output '{bin}'; '{exe}' config compile '{b}' --output '{bin}'; done",
        a = a.display(),
        b = b.display(),
        bin = bin.display()
    );
    let mut rng = Rng::from_time();
    let seed = rng.0;
    let (mut done, mut from_prev, mut mid_write) = (0u32, 0u32, 0u32);
    while done < kills && Instant::now() < deadline {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("RUST_LOG", "off")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        // Anywhere from before the first write to a few compiles in.
        std::thread::sleep(Duration::from_micros(rng.below(25_000)));
        let group = format!("-{}", child.id());
        let status = Command::new("kill")
            .args(["-KILL", "--", &group])
            .status()
            .unwrap();
        assert!(status.success(), "kill {group} failed (seed {seed})");
        child.wait().unwrap();
        done += 1;

        let loaded =
            store::load(&bin).unwrap_or_else(|e| panic!("after kill {done} (seed {seed}): {e}"));
        assert!(
            loaded.config.tunnel == "first" || loaded.config.tunnel == "second",
            "unexpected tunnel {:?}",
            loaded.config.tunnel
        );
        if let Some(reason) = &loaded.fallback_reason {
            eprintln!("fell back to config.bin.prev: {reason}");
            from_prev += 1;
        }
        if temp_files(&dir).next().is_some() {
            mid_write += 1;
        }
        // .prev is only ever created by renaming a complete file, so it is valid too.
        let prev = store::prev_path(&bin);
        if prev.exists() {
            store::decode_file(&prev)
                .unwrap_or_else(|e| panic!("after kill {done} (seed {seed}): {e}"));
        }
    }
    eprintln!(
        "{done} kills (seed {seed}): {mid_write} left a temp file (killed mid-write), \
         {from_prev} loads fell back to config.bin.prev"
    );
    // config.bin is replaced by rename only, so a kill never leaves it missing or partial.
    assert_eq!(from_prev, 0);
    assert!(done >= kills.min(50), "only {done} kills in 60 s");

    // The next write removes the temp files the kills left.
    config_ok(&[&"compile", &b, &"--output", &bin]);
    let temps: Vec<_> = temp_files(&dir).collect();
    assert!(temps.is_empty(), "{temps:?}");
    assert_eq!(store::load(&bin).unwrap().config.tunnel, "second");
}

fn temp_files(dir: &TempDir) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
}
