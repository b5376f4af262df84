//! What each board costs, as the edge shows it: real enrolled connectors (`mailslot
//! run`) count the bytes their tunnel carries and puts on the wire, in memory, and send
//! them with their health; `mailslot-edge devices show --json`, `devices show` and
//! `devices ls` show them. A board that carried a known download over QUIC, another
//! over HTTP/2, and one that carried nothing.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

const TOKEN: &str = "cost-admin-token-0123456789abcdef";
/// The download the busy boards carry.
const PAYLOAD: u64 = 3_000_000;
/// Health reports come every 10 s (the edge's shortest `fleet.health-every`): a report
/// with the download in it comes within two of them.
const REPORTS_WITHIN: Duration = Duration::from_secs(35);

/// A real enrolled connector over `protocol`, with one connection.
struct Board {
    proc: Proc,
    id: String,
    _dir: TempDir,
}

fn start_board(edge: &EdgeProc, key: &str, origin: &Origin, name: &str, protocol: &str) -> Board {
    let dir = TempDir::new(name);
    compile(
        dir.path(),
        &format!(
            "tunnel: shop\nenroll: {key}\nedge: [\"{}\"]\nedge-ca: {}\nprotocol: {protocol}\n\
             ha-connections: 1\nkeepalive: 2s\nidle-timeout: 6s\ningress:\n  - hostname: \"{{device}}.shop.example.test\"\n    \
             service: http://{}\n  - service: http_status:404\n",
            edge.tunnel,
            edge.ca().display(),
            origin.addr
        ),
    );
    let proc = Proc::spawn(
        name,
        Command::new(MAILSLOT)
            .arg("run")
            .arg("--config")
            .arg(dir.join("config.bin")),
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
    Board {
        proc,
        id,
        _dir: dir,
    }
}

/// `devices show ID --json` until `done` holds for its health's cost.
fn wait_cost(
    cli: &std::path::Path,
    board: &Board,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let out = devices(cli, &["show", board.id.as_str(), "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let d: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        let cost = &d["health"]["cost"];
        if !cost.is_null() && done(cost) {
            return cost.clone();
        }
        assert!(
            start.elapsed() < REPORTS_WITHIN,
            "{what}: {d:#}\nboard log:\n{}",
            board.proc.dump()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The figures of one day hold together: overhead is what the wire took beyond the
/// payload.
fn consistent(day: &serde_json::Value) -> (u64, u64, u64) {
    let n = |k: &str| day[k].as_u64().unwrap_or_else(|| panic!("{k}: {day:#}"));
    let (carried, wire, overhead) = (n("carried"), n("wire"), n("overhead"));
    assert_eq!(overhead, wire.saturating_sub(carried), "{day:#}");
    (carried, wire, overhead)
}

pub(crate) fn boards_report_what_their_tunnel_carried_and_cost_on_the_wire() {
    let edge = start_edge(init_edge(&format!(
        "admin-listen: 127.0.0.1:0\nadmin-token: {TOKEN}\nkeepalive: 2s\nidle-timeout: 6s\n\
         fleet:\n  health-every: 10s\n"
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
    let key = stdout(&out).trim().to_string();
    let origin = Origin::start("board");
    let quic = start_board(&edge, &key, &origin, "busy-quic", "quic");
    let h2 = start_board(&edge, &key, &origin, "busy-http2", "http2");
    let idle = start_board(&edge, &key, &origin, "idle", "quic");
    for board in [&quic, &h2] {
        let (status, body) = get(
            &edge,
            &format!("{}.shop.example.test", board.id),
            &format!("/bytes/{PAYLOAD}"),
        );
        assert_eq!(status, 200);
        assert_eq!(body.len() as u64, PAYLOAD);
    }
    for (board, protocol) in [(&quic, "quic"), (&h2, "http2")] {
        let cost = wait_cost(&cli, board, "a report with the download", |c| {
            c["today"]["carried"].as_u64().unwrap_or(0) >= PAYLOAD
        });
        let (carried, wire, overhead) = consistent(&cost["today"]);
        eprintln!("{protocol}: {}", cost["today"]);
        assert!(wire >= carried && overhead > 0, "{cost:#}");
        // The download is most of what was carried, and the wire took little more.
        assert!(carried < PAYLOAD + 100_000, "{cost:#}");
        assert!(wire < carried + carried / 4, "{cost:#}");
        assert!(
            cost["today"]["covered_secs"].as_u64().unwrap() < 600,
            "{cost:#}"
        );
        assert!(cost["yesterday"].is_null(), "started today: {cost:#}");
        assert_eq!(cost["day"].as_str().unwrap().len(), 10, "{cost:#}");
    }
    // The idle board carried nothing, yet staying online cost bytes: its handshake,
    // registration, keep-alives and reports.
    let cost = wait_cost(&cli, &idle, "a report of the idle board", |_| true);
    let (carried, wire, overhead) = consistent(&cost["today"]);
    eprintln!("idle: {}", cost["today"]);
    assert_eq!(carried, 0, "{cost:#}");
    assert!(wire > 0 && overhead == wire, "{cost:#}");
    // The text forms.
    let show = stdout(&devices(&cli, &["show", idle.id.as_str()]));
    assert!(
        show.contains("cost today:") && show.contains("on the wire, 0 B carried"),
        "{show}"
    );
    let ls = stdout(&devices(&cli, &["ls"]));
    let head = ls.lines().next().unwrap();
    assert!(head.trim_end().ends_with("TODAY"), "{ls}");
    for board in [&quic, &h2] {
        let line = ls.lines().find(|l| l.starts_with(&board.id)).unwrap();
        assert!(line.trim_end().ends_with("MiB"), "{ls}");
    }
}
