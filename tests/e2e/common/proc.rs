//! A child process whose output lines are collected and awaited.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use super::WAIT;

/// A child process whose stderr lines are collected; killed on drop.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .env(
                "RUST_LOG",
                std::env::var("MAILSLOT_TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stderr.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stdout.take().unwrap()),
        ] {
            let tx = tx.clone();
            let log = log.clone();
            let tag = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("MAILSLOT_TEST_LOG").is_some() {
                        eprintln!("[{tag}] {line}");
                    }
                    log.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        Proc {
            child,
            lines: rx,
            log,
            name: name.to_string(),
        }
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_line(&self, needle: &str) -> String {
        self.wait_line_within(needle, WAIT).unwrap_or_else(|| {
            panic!(
                "{}: no line with {needle:?} within {WAIT:?}; log:\n{}",
                self.name,
                self.dump()
            )
        })
    }

    pub fn wait_line_within(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Waits for the "listening on ADDR" line of a client that bound port 0; its ADDR.
    pub fn wait_listen_addr(&self) -> SocketAddr {
        let line = self.wait_line("listening on ");
        line.split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{}: no address in {line:?}", self.name))
    }

    /// The address after `marker` in the first line logged so far, or within [`WAIT`],
    /// that holds it (read from the collected log, so a line another wait passed over
    /// counts).
    pub fn logged_addr(&self, marker: &str) -> SocketAddr {
        let line = self
            .wait_count(marker, 1, WAIT)
            .and_then(|_| {
                let log = self.log.lock().unwrap();
                log.iter().find(|l| l.contains(marker)).cloned()
            })
            .unwrap_or_else(|| panic!("{}: no line with {marker:?}\n{}", self.name, self.dump()));
        line.split(marker)
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{}: no address in {line:?}", self.name))
    }

    /// Waits for `n` lines containing `needle`.
    pub fn wait_lines(&self, needle: &str, n: usize) {
        for _ in 0..n {
            self.wait_line(needle);
        }
    }

    pub fn dump(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by number.
    pub fn signal(&self, sig: i32) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit; its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// Log lines so far containing `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until `n` log lines contain `needle`; how long that took, or `None` after
    /// `within`. Reads the collected log, so lines already seen count too.
    pub fn wait_count(&self, needle: &str, n: usize, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.count(needle) >= n {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}
