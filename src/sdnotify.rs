//! systemd's service notification protocol (`sd_notify`), without libsystemd: one unix
//! datagram per message to the socket named by `NOTIFY_SOCKET`.
//!
//! Under a `Type=notify` unit the connector says `READY=1` once a first tunnel connection
//! registered, `WATCHDOG=1` every half `WATCHDOG_USEC` while its runtime is alive (the
//! pings come from a task on the same runtime that serves streams, so a wedged runtime
//! stops them and systemd restarts the service), a `STATUS=` line when the number of
//! connections changes, and `STOPPING=1` when it starts to drain. Without
//! `NOTIFY_SOCKET` (BusyBox init, a shell) nothing is sent.
//!
//! ```text
//!  NOTIFY_SOCKET=/run/systemd/notify    a socket path
//!  NOTIFY_SOCKET=@name                  a Linux abstract socket
//!  datagram: "READY=1\nSTATUS=1/4 connections\n"
//! ```

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::connector::SlotState;

/// Sends notifications to one notify socket. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` asks for, if it is set and usable. A value that is
    /// set but unusable is logged once.
    pub fn from_env() -> Option<Notifier> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        match Notifier::connect(&value.to_string_lossy()) {
            Ok(n) => Some(n),
            Err(e) => {
                log::warn!("NOTIFY_SOCKET={value:?} is unusable, not notifying systemd: {e}");
                None
            }
        }
    }

    /// A notifier for a socket path, or `@name` for an abstract socket.
    pub(crate) fn connect(socket: &str) -> io::Result<Notifier> {
        let addr = match socket.strip_prefix('@') {
            Some(name) => abstract_addr(name.as_bytes())?,
            None if socket.starts_with('/') => SocketAddr::from_pathname(socket)?,
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "only a socket path or an @abstract name is supported",
                ))
            }
        };
        let sock = UnixDatagram::unbound()?;
        // A notification must never block the connector; systemd reads these promptly.
        sock.set_nonblocking(true)?;
        Ok(Notifier {
            inner: Arc::new(Inner { sock, addr }),
        })
    }

    /// Sends one message (`KEY=VALUE` lines); failures are logged at debug level only,
    /// since the service works the same without them.
    pub(crate) fn notify(&self, msg: &str) {
        if let Err(e) = self
            .inner
            .sock
            .send_to_addr(msg.as_bytes(), &self.inner.addr)
        {
            log::debug!("sd_notify {:?} failed: {e}", msg.trim_end());
        }
    }

    /// Tells systemd the service is shutting down.
    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=draining\n");
    }

    /// Says `READY=1` once a slot is connected, reports the connection count as it
    /// changes, and pings the watchdog every `watchdog / 2`. Runs until the slots'
    /// sender is gone (the connector stopped) or the task is dropped.
    pub async fn run(self, mut slots: watch::Receiver<Vec<SlotState>>, watchdog: Option<Duration>) {
        let mut ready = false;
        let mut last_count = None;
        // Without a watchdog the tick never fires.
        let period = watchdog.map_or(Duration::from_secs(86_400 * 365), |w| {
            (w / 2).max(Duration::from_millis(1))
        });
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (connected, total) = {
                let s = slots.borrow_and_update();
                (s.iter().filter(|s| s.connected).count(), s.len())
            };
            if last_count != Some(connected) {
                last_count = Some(connected);
                let mut msg = String::new();
                if connected > 0 && !ready {
                    ready = true;
                    msg.push_str("READY=1\n");
                }
                msg.push_str(&format!(
                    "STATUS={connected}/{total} tunnel connections up\n"
                ));
                self.notify(&msg);
            }
            tokio::select! {
                changed = slots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tick.tick(), if watchdog.is_some() => self.notify("WATCHDOG=1\n"),
            }
        }
    }
}

/// The watchdog interval systemd expects pings within (`WATCHDOG_USEC`), when it is
/// meant for this process (`WATCHDOG_PID` absent or ours).
pub fn watchdog_from_env() -> Option<Duration> {
    if let Some(pid) = std::env::var_os("WATCHDOG_PID") {
        if pid.to_str().and_then(|p| p.parse::<u32>().ok()) != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::TempDir;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock
            .recv(&mut buf)
            .expect("a notification within the timeout");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn slot(connected: bool) -> SlotState {
        SlotState {
            connected,
            ..SlotState::default()
        }
    }

    #[tokio::test]
    async fn ready_after_first_connection_then_watchdog_and_status() {
        let dir = TempDir::new();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let n = Notifier::connect(path.to_str().unwrap()).unwrap();
        let (tx, rx) = watch::channel(vec![slot(false), slot(false)]);
        let task = tokio::spawn(n.clone().run(rx, Some(Duration::from_millis(100))));

        let server = tokio::task::spawn_blocking(move || {
            let first = recv(&server);
            (server, first)
        });
        let (server, first) = server.await.unwrap();
        assert_eq!(first, "STATUS=0/2 tunnel connections up\n");

        tx.send_modify(|s| s[1].connected = true);
        let server = tokio::task::spawn_blocking(move || {
            // Watchdog pings may come first; READY comes once, with the status.
            let mut seen = Vec::new();
            loop {
                let m = recv(&server);
                seen.push(m.clone());
                if m.contains("READY=1") {
                    assert_eq!(m, "READY=1\nSTATUS=1/2 tunnel connections up\n");
                    break;
                }
                assert_eq!(m, "WATCHDOG=1\n", "{seen:?}");
            }
            let m = recv(&server);
            assert!(m == "WATCHDOG=1\n", "{m:?}");
            let m = recv(&server);
            assert!(m == "WATCHDOG=1\n", "{m:?}");
            server
        })
        .await
        .unwrap();

        // A lost connection changes the status but never repeats READY.
        tx.send_modify(|s| s[1].connected = false);
        let server = tokio::task::spawn_blocking(move || {
            loop {
                let m = recv(&server);
                if m.starts_with("STATUS=") {
                    assert_eq!(m, "STATUS=0/2 tunnel connections up\n");
                    break;
                }
                assert_eq!(m, "WATCHDOG=1\n");
            }
            server
        })
        .await
        .unwrap();
        n.stopping();
        let seen = tokio::task::spawn_blocking(move || {
            let mut seen = Vec::new();
            while !seen.iter().any(|m: &String| m.starts_with("STOPPING=1")) {
                seen.push(recv(&server));
            }
            seen
        })
        .await
        .unwrap();
        assert!(!seen.iter().any(|m| m.contains("READY")), "{seen:?}");

        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends with the connector")
            .unwrap();
    }

    #[test]
    fn abstract_socket() {
        let name = format!("mailslot-test-notify-{}", std::process::id());
        let server = UnixDatagram::bind_addr(&abstract_addr(name.as_bytes()).unwrap()).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let n = Notifier::connect(&format!("@{name}")).unwrap();
        n.notify("READY=1\n");
        assert_eq!(recv(&server), "READY=1\n");
    }

    #[test]
    fn unusable_values_refused() {
        assert!(Notifier::connect("relative/path").is_err());
        assert!(Notifier::connect("vsock:2:1234").is_err());
        // A socket nobody listens on: sending fails quietly.
        Notifier::connect("/nonexistent/notify")
            .unwrap()
            .notify("READY=1\n");
    }
}
