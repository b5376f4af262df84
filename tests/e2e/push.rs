//! Config pushes to real enrolled connectors (`mailslot run`) through a real
//! `mailslot-edge serve`, with `mailslot-edge devices push-config`: a good push applies
//! without cutting a download in flight; a push pointing a device at a dead edge is
//! rolled back by the device within its (shortened) deadline and the device serves
//! again; a fleet push whose canary rolls back stops before the others get it; a device
//! whose pinned key differs refuses a push; read-only admin credentials cannot push.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

const TOKEN: &str = "push-admin-token-0123456789abcdef";
/// The devices' rollback deadline in these tests (`MAILSLOT_ROLLBACK_AFTER`).
const ROLLBACK_AFTER: &str = "5";

/// An edge with an admin listener and a fleet store.
struct Fleet {
    edge: EdgeProc,
    /// edge.yml for the `devices` commands (the admin listener's real port).
    cli: PathBuf,
    enroll: String,
    origin: Origin,
    work: TempDir,
}

impl Fleet {
    fn start() -> Fleet {
        let edge = start_edge(init_edge(&format!(
            "admin-listen: 127.0.0.1:0\nadmin-token: {TOKEN}\n"
        )));
        let cli = cli_config(&edge, TOKEN);
        let out = run_ok(
            "mailslot-edge enroll-key",
            Command::new(EDGE)
                .arg("enroll-key")
                .arg("--config")
                .arg(edge.dir.path().join("edge.yml"))
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
            work: TempDir::new("push"),
            cli,
            edge,
        }
    }

    /// A device YAML of this fleet: its edges, connections, and a rule of its own.
    fn yaml(&self, edges: &[String], ha: usize, extra_rule: &str) -> String {
        let edges: Vec<String> = edges.iter().map(|e| format!("\"{e}\"")).collect();
        format!(
            "tunnel: shop\nenroll: {}\nedge: [{}]\nedge-ca: {}\nprotocol: quic\n\
             ha-connections: {ha}\nkeepalive: 2s\nidle-timeout: 6s\ningress:\n{extra_rule}  - hostname: \"{{device}}.shop.example.test\"\n    \
             service: http://{}\n  - service: http_status:404\n",
            self.enroll,
            edges.join(", "),
            self.edge.ca().display(),
            self.origin.addr
        )
    }

    fn good_edges(&self) -> Vec<String> {
        vec![self.edge.tunnel.to_string()]
    }

    /// Writes `yaml` as a file to push.
    fn push_file(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.work.join(name);
        std::fs::write(&path, yaml).unwrap();
        path
    }

    fn devices(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> std::process::Output {
        devices(&self.cli, args)
    }

    /// One device from the admin API, as JSON.
    fn api_device(&self, id: &str) -> serde_json::Value {
        api_device(&self.edge, TOKEN, id)
    }
}

/// A real enrolled connector.
struct Board {
    dir: TempDir,
    proc: Proc,
    id: String,
}

impl Board {
    fn start(fleet: &Fleet, name: &str, ha: usize, pins: Option<&str>) -> Board {
        let dir = TempDir::new(name);
        let golden = compile(dir.path(), &fleet.yaml(&fleet.good_edges(), ha, ""));
        assert_eq!(golden, dir.join("config.bin"));
        if let Some(pins) = pins {
            std::fs::write(dir.join("device.pins"), pins).unwrap();
        }
        let proc = Proc::spawn(
            name,
            Command::new(MAILSLOT)
                .arg("run")
                .arg("--config")
                .arg(dir.join("config.bin"))
                .env("MAILSLOT_ROLLBACK_AFTER", ROLLBACK_AFTER),
        );
        proc.wait_lines("registered: device", ha);
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

    fn host(&self) -> String {
        format!("{}.shop.example.test", self.id)
    }

    fn config(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("config.bin")).unwrap()
    }
}

/// Polls until `get` gives `Some` within `within`.
fn wait_for<T>(what: &str, within: Duration, mut get: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = get() {
            return v;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A good push (a new rule and one connection instead of two: the slots restart)
/// applies while a download through the tunnel goes on, and the download arrives whole.
pub(crate) fn a_good_push_applies_without_dropping_a_download_in_flight() {
    let fleet = Fleet::start();
    let board = Board::start(&fleet, "good", 2, None);
    let before = board.config();
    // A download of 6 MB that the visitor stops reading after its first bytes: it stays
    // in flight (flow control holds it in the tunnel) until the push has been applied,
    // whatever the speed of this machine.
    let mut download = std::net::TcpStream::connect(fleet.edge.http).unwrap();
    download
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        download,
        "GET /bytes/6000000 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        board.host()
    )
    .unwrap();
    let mut got = vec![0u8; 64 * 1024];
    download.read_exact(&mut got).unwrap();
    let rule = "  - hostname: \"{device}.shop.example.test\"\n    path: ^/added$\n    service: http_status:204\n";
    let file = fleet.push_file("good.yml", &fleet.yaml(&fleet.good_edges(), 1, rule));
    let out = fleet.devices(&[&"push-config", &board.id, &file]);
    let said = stdout(&out);
    assert!(
        out.status.success(),
        "{said}\n{}\n{}",
        stderr(&out),
        board.proc.dump()
    );
    assert!(said.starts_with("rollout "), "{said}");
    assert!(said.contains("applied everywhere (1)"), "{said}");
    // The rest of the download, read only now, arrives whole.
    download.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got[..got.len().min(512)]).to_string();
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {text}"));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = &got[head_end + 4..];
    assert_eq!(
        body.len(),
        6_000_000,
        "board:\n{}\nedge:\n{}",
        board.proc.dump(),
        fleet.edge.proc.dump()
    );
    assert!(body == pattern(6_000_000), "the download arrived changed");
    assert_ne!(board.config(), before, "config.bin is the pushed one");
    assert_eq!(
        std::fs::read(board.dir.join("config.bin.prev")).unwrap(),
        before
    );
    assert!(!board.dir.join("config.bin.trial").exists());
    // The inventory shows the push applied and the new digest.
    let d = fleet.api_device(&board.id);
    assert_eq!(d["config_push"]["state"], "applied", "{d:#}");
    let digest = ring::digest::digest(&ring::digest::SHA256, &board.config());
    assert_eq!(d["config_digest"], hex(&digest.as_ref()[..8]), "{d:#}");
    // The new rule is served by the edge now.
    let r = curl(&[
        "-H",
        &format!("Host: {}", board.host()),
        &format!("http://{}/added", fleet.edge.http),
    ]);
    assert_eq!(r.status, 204, "{}", r.text());
    let show = stdout(&fleet.devices(&[&"show", &board.id]));
    assert!(
        show.contains("last config push:") && show.contains(" applied"),
        "{show}"
    );
}

/// A push pointing the device at a dead edge: the device rolls back on its own within
/// its deadline, serves again, and the inventory says why.
pub(crate) fn a_push_to_a_dead_edge_rolls_back_and_the_device_serves_again() {
    let fleet = Fleet::start();
    let board = Board::start(&fleet, "dead", 2, None);
    let before = board.config();
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let file = fleet.push_file(
        "dead.yml",
        &fleet.yaml(std::slice::from_ref(&dead_addr), 2, ""),
    );
    let started = Instant::now();
    let out = fleet.devices(&[&"push-config", &board.id, &file]);
    let (said, err) = (stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{said}");
    assert!(
        err.contains("stopped: device") && err.contains("rolled back: config"),
        "{said}\n{err}\n{}",
        board.proc.dump()
    );
    // The deadline (5 s) and a reconnection; well under the default 120 s.
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    assert!(board.proc.wait_count("rolled back: ", 1, WAIT).is_some());
    assert_eq!(board.config(), before, "the previous config.bin is back");
    assert!(!board.dir.join("config.bin.trial").exists());
    // It serves again.
    let r = curl(&[
        "-H",
        &format!("Host: {}", board.host()),
        &format!("http://{}/bytes/10", fleet.edge.http),
    ]);
    assert_eq!(r.status, 200, "{}", r.text());
    let d = fleet.api_device(&board.id);
    assert_eq!(d["config_push"]["state"], "rolled back", "{d:#}");
    let why = d["config_push"]["reason"].as_str().unwrap();
    assert!(
        why.starts_with("config ") && why.contains(" rolled back: "),
        "{why}"
    );
    // The reason names what failed: the dead edge.
    assert!(why.contains(&dead_addr), "{why}");
    let digest = ring::digest::digest(&ring::digest::SHA256, &before);
    assert_eq!(d["config_digest"], hex(&digest.as_ref()[..8]), "{d:#}");
    let ls = stdout(&fleet.devices(&[&"ls"]));
    assert!(ls.contains("rolled back"), "{ls}");
}

/// A device killed (`kill -9`) during a trial, started again: the trial goes on from
/// its marker and rolls back within the deadline; the device serves with its previous
/// config and the inventory says so.
pub(crate) fn a_device_killed_during_a_trial_rolls_back_after_it_starts_again() {
    let fleet = Fleet::start();
    let mut board = Board::start(&fleet, "killed", 1, None);
    let before = board.config();
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let file = fleet.push_file(
        "dead.yml",
        &fleet.yaml(std::slice::from_ref(&dead_addr), 1, ""),
    );
    let out = fleet.devices(&[&"push-config", &board.id, &file, &"--no-wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(board.proc.wait_count("applied on trial", 1, WAIT).is_some());
    assert!(board.dir.join("config.bin.trial").exists());
    assert_ne!(board.config(), before);
    board.proc.signal(9);
    assert!(board.proc.wait_exit(WAIT).is_some());
    let again = Proc::spawn(
        "killed-again",
        Command::new(MAILSLOT)
            .arg("run")
            .arg("--config")
            .arg(board.dir.join("config.bin"))
            .env("MAILSLOT_ROLLBACK_AFTER", ROLLBACK_AFTER),
    );
    board.proc = again;
    assert!(
        board.proc.wait_count("is on trial", 1, WAIT).is_some(),
        "{}",
        board.proc.dump()
    );
    assert!(board.proc.wait_count("rolled back: ", 1, WAIT).is_some());
    assert!(board
        .proc
        .wait_count("registered: device", 1, WAIT)
        .is_some());
    assert_eq!(board.config(), before);
    assert!(!board.dir.join("config.bin.trial").exists());
    let d = wait_for("the inventory shows the rollback", WAIT, || {
        let d = fleet.api_device(&board.id);
        (d["config_push"]["state"] == "rolled back").then_some(d)
    });
    assert!(
        d["config_push"]["reason"]
            .as_str()
            .unwrap()
            .contains(&dead_addr),
        "{d:#}"
    );
    let r = curl(&[
        "-H",
        &format!("Host: {}", board.host()),
        &format!("http://{}/bytes/10", fleet.edge.http),
    ]);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A fleet push with a canary share: the canary rolls back, the rollout stops, and the
/// other devices never get the config.
pub(crate) fn a_fleet_push_whose_canary_rolls_back_stops_there() {
    let fleet = Fleet::start();
    let boards: Vec<Board> = (0..3)
        .map(|i| Board::start(&fleet, &format!("canary{i}"), 1, None))
        .collect();
    let before: Vec<Vec<u8>> = boards.iter().map(Board::config).collect();
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let file = fleet.push_file("fleet.yml", &fleet.yaml(&[dead_addr], 1, ""));
    let out = fleet.devices(&[
        &"push-config",
        &"--fleet",
        &"shop",
        &file,
        &"--canary",
        &"10%",
    ]);
    let (said, err) = (stdout(&out), stderr(&out));
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("1 canary device(s) first"), "{said}");
    assert!(err.contains("stopped: device"), "{said}\n{err}");
    assert!(err.contains("0 applied, 2 skipped"), "{said}\n{err}");
    let states: Vec<String> = boards
        .iter()
        .map(|b| {
            fleet.api_device(&b.id)["config_push"]["state"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut sorted = states.clone();
    sorted.sort();
    assert_eq!(sorted, ["rolled back", "skipped", "skipped"], "{states:?}");
    for (b, before) in boards.iter().zip(&before) {
        assert_eq!(&b.config(), before, "{}", b.id);
        if fleet.api_device(&b.id)["config_push"]["state"] == "skipped" {
            assert_eq!(b.proc.count("on trial"), 0, "{}", b.proc.dump());
            assert!(!b.dir.join("config.bin.prev").exists());
        }
    }
}

/// A device whose pinned config key is not its fleet's refuses the push (the edge's
/// keys never replace a pin), and so does the rollout.
pub(crate) fn a_device_whose_pin_differs_refuses_the_push() {
    let fleet = Fleet::start();
    let other = format!("config {}\n", "ab".repeat(32));
    let board = Board::start(&fleet, "pinned", 1, Some(&other));
    let before = board.config();
    assert!(board
        .proc
        .wait_count("another config key than the one pinned", 1, WAIT)
        .is_some());
    let file = fleet.push_file("forged.yml", &fleet.yaml(&fleet.good_edges(), 1, ""));
    let out = fleet.devices(&[&"push-config", &board.id, &file]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(err.contains("refused it: config push"), "{err}");
    assert!(
        err.contains("not signed by this device's pinned config key"),
        "{err}"
    );
    assert_eq!(board.config(), before);
    assert_eq!(
        std::fs::read_to_string(board.dir.join("device.pins")).unwrap(),
        other,
        "the pin is never replaced"
    );
    let d = fleet.api_device(&board.id);
    assert_eq!(d["config_push"]["state"], "refused", "{d:#}");
}

/// Read-only admin credentials (Basic authentication) and no credentials cannot push.
pub(crate) fn read_only_admin_credentials_cannot_push() {
    let fleet = Fleet::start();
    let url = format!("http://{}/api/v1/push-config", fleet.edge.admin_addr());
    let body = r#"{"fleet":"shop","config":""}"#;
    let basic = curl(&[
        "-u",
        &format!("viewer:{TOKEN}"),
        "-X",
        "POST",
        "--data",
        body,
        &url,
    ]);
    assert_eq!(basic.status, 403, "{}", basic.text());
    assert!(basic.text().contains("Basic authentication reads only"));
    let none = curl(&["-X", "POST", "--data", body, &url]);
    assert_eq!(none.status, 401, "{}", none.text());
    let bearer = curl(&[
        "-H",
        &format!("Authorization: Bearer {TOKEN}"),
        "-X",
        "POST",
        "--data",
        body,
        &url,
    ]);
    assert_eq!(bearer.status, 400, "{}", bearer.text());
    assert!(
        bearer.text().contains("no devices in fleet shop"),
        "{}",
        bearer.text()
    );
}
