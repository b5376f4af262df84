//! Test harness: real `mailslot-edge` and `mailslot` processes, a real origin, real
//! clients. Everything binds port 0 on loopback; readiness is read from the processes'
//! own log lines, never guessed with sleeps.
//!
//! Shared by the end-to-end binary (`tests/e2e`), the namespace scenarios and the image
//! test (those two include it by path and use a part of it).

mod browser;
mod config;
mod curl;
mod edge;
mod origin;
mod proc;
mod sockets;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use browser::*;
pub use config::*;
pub use curl::*;
pub use edge::*;
pub use origin::*;
pub use proc::*;
pub use sockets::*;

pub const EDGE: &str = env!("CARGO_BIN_EXE_mailslot-edge");
pub const MAILSLOT: &str = env!("CARGO_BIN_EXE_mailslot");
/// Longest wait for any expected event.
pub const WAIT: Duration = Duration::from_secs(20);

/// The libtest-mimic harness's arguments, with `RUST_TEST_THREADS` honoured as libtest
/// honours it (the e2e, scenario and image binaries all run under libtest-mimic).
pub fn harness_args() -> libtest_mimic::Arguments {
    let mut args = libtest_mimic::Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = std::env::var("RUST_TEST_THREADS")
            .ok()
            .and_then(|n| n.parse().ok());
    }
    args
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "mailslot-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` to its end and asserts it succeeded; on failure the panic names `what`
/// and prints the command's stdout and stderr.
pub fn run_ok(what: &str, cmd: &mut Command) -> Output {
    let out = output_of(cmd).unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Runs `cmd` to its end. A binary the tests have just written may fail to start with
/// ETXTBSY for an instant: another test thread's fork can inherit the descriptor the file
/// was written through until that child execs. That is tried again, for a second at most.
pub fn output_of(cmd: &mut Command) -> std::io::Result<Output> {
    let mut tries = 0;
    loop {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(26) && tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// A command's stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command's stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Why a test could not run on this machine (a tool missing, not root): the harness
/// reports the test as ignored, with this reason, in its summary.
#[derive(Clone, Debug)]
pub struct Skip(pub String);
