//! A real `redis-server` for the tests, on a unix socket in a temporary folder (no TCP
//! port), with its append-only file there too. A machine without redis-server fails
//! the test with the reason: it never passes without having run.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::edge::config::RedisAddr;

/// A running `redis-server` and its folder, both gone when dropped.
pub(crate) struct RedisServer {
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers.
    pub(crate) fn start(tag: &str) -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "mailslot-redis-{tag}-{}-{}",
            std::process::id(),
            crate::util::hex(&crate::util::random_bytes::<4>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = RedisServer { dir, child: None };
        s.restart();
        s
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// Its address, a unix socket.
    pub(crate) fn addr(&self) -> RedisAddr {
        RedisAddr::parse(&self.socket().display().to_string()).unwrap()
    }

    /// Stops it (SIGTERM: it writes its append-only file and exits).
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid, which it still is (not yet waited for).
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Starts it (again) on the same socket and files.
    pub(crate) fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(&self.dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "this test needs redis-server (apt-get install redis-server), which did \
                     not start: {e}"
                )
            });
        self.child = Some(child);
        let client = redis::Client::open(self.addr().url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
