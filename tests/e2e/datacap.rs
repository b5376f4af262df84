//! The daily data cap (`data-cap` in the device config): past it the device serves only
//! its essential rules, the edge answers the others with a 503 page without opening a
//! stream, and the daily reset restores them. The device's clock is a test clock file
//! (`MAILSLOT_TEST_CLOCK_FILE`): the reset is a write to it, not a day's wait.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::*;

const WEB: &str = "web.dev42.example.com";
const ADMIN: &str = "admin.dev42.example.com";
const DB: &str = "db.dev42.example.com";
/// 23:00:00 UTC on day 20000 since 1970 (2024-10-04).
const LATE: u64 = 20_000 * 86_400 + 23 * 3600;

fn tunnels(admin: std::net::SocketAddr) -> String {
    let r = curl(&[&format!("http://{admin}/tunnels")]);
    assert!(r.ok, "{}", r.stderr);
    r.text()
}

/// The tunnel streams the edge has opened, over all connections (`/tunnels`).
fn streams(admin: std::net::SocketAddr) -> u64 {
    tunnels(admin)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("streams="))
        })
        .map(|n| n.parse::<u64>().unwrap())
        .sum()
}

fn get_host(edge: &EdgeProc, host: &str, path: &str, extra: &[&str]) -> Curl {
    let url = format!("http://{}{path}", edge.http);
    let hosth = format!("Host: {host}");
    let mut args = vec!["-H", hosth.as_str()];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

/// An edge, two origins and a connector with a 64 KiB cap whose clock file reads
/// `clock_secs`: `web` and `db` (a raw TCP rule behind one of the edge's TCP ports) are
/// normal rules, `admin` is essential.
struct Capped {
    edge: EdgeProc,
    admin: std::net::SocketAddr,
    tcp_port: std::net::SocketAddr,
    web: Origin,
    essential: Origin,
    connector: Proc,
    clock: std::path::PathBuf,
    _dev: TempDir,
}

fn start_capped(clock_secs: u64) -> Capped {
    let edge = start_edge(init_edge(&format!(
        "admin-listen: 127.0.0.1:0\ntcp-ports:\n  - listen: 127.0.0.1:0\n    hostname: {DB}\n    ip-allow: [127.0.0.0/8]\n"
    )));
    let admin = edge.admin_addr();
    let tcp_line = edge.proc.wait_line("TCP port ");
    let tcp_port: std::net::SocketAddr = tcp_line[tcp_line.find("TCP port ").unwrap() + 9..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let web = Origin::start("web");
    let essential = Origin::start("admin");
    let token = edge.token("dev42", &["*.dev42.example.com"], "1d");
    let dev = TempDir::new("device");
    let clock = dev.join("clock");
    std::fs::write(&clock, clock_secs.to_string()).unwrap();
    let rules = format!(
        "  - hostname: {WEB}\n    service: http://{w}\n\
         \x20 - hostname: {ADMIN}\n    service: http://{a}\n    essential: true\n\
         \x20 - hostname: {DB}\n    service: tcp://{w}\n\
         \x20 - service: http_status:404\n",
        w = web.addr,
        a = essential.addr,
    );
    let yaml =
        device_yaml(&edge, &token, 2, &rules).replace("ingress:\n", "data-cap: 64KiB\ningress:\n");
    let bin = compile(dev.path(), &yaml);
    let connector = Proc::spawn(
        "connector",
        Command::new(MAILSLOT)
            .arg("run")
            .arg("--config")
            .arg(&bin)
            .env("MAILSLOT_TEST_CLOCK_FILE", &clock),
    );
    connector.wait_lines("registered: tunnel", 2);
    Capped {
        edge,
        admin,
        tcp_port,
        web,
        essential,
        connector,
        clock,
        _dev: dev,
    }
}

pub(crate) fn past_the_cap_only_essential_rules_are_served_until_the_reset() {
    let Capped {
        edge,
        admin,
        tcp_port,
        web,
        essential,
        connector,
        clock,
        _dev,
    } = start_capped(LATE);

    // Under the cap, every rule serves.
    let r = get_host(&edge, WEB, "/bytes/1000", &[]);
    assert_eq!((r.ok, r.status), (true, 200), "{}", r.stderr);

    // A download through the normal rule crosses the 64 KiB cap: the device cuts it.
    let r = get_host(&edge, WEB, "/bytes/1048576", &[]);
    assert!(
        r.body.len() < 1 << 20,
        "the download went on past the cap: {} bytes",
        r.body.len()
    );
    let line = connector.wait_line("over the daily cap of 65536 bytes");
    assert!(line.contains("serving essential rules only"), "{line}");
    let line = edge.proc.wait_line("tunnel dev42 over its daily data cap");
    assert!(
        line.contains("serving essential rules only until"),
        "{line}"
    );
    // Both connections told the edge: one line.
    wait_until(|| {
        tunnels(admin)
            .lines()
            .filter(|l| l.ends_with(" data_cap=over"))
            .count()
            == 2
    });
    assert_eq!(
        edge.proc.count("over its daily data cap"),
        1,
        "{}",
        edge.proc.dump()
    );
    assert_eq!(connector.count("over the daily cap"), 1);

    // The normal hostname gets the edge's 503 page; nothing goes down the tunnel.
    let opened = streams(admin);
    let seen = web.requests.load(Ordering::SeqCst);
    let r = get_host(&edge, WEB, "/", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text().contains("is over its daily data cap"),
        "{}",
        r.text()
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((3000..=3600).contains(&retry), "Retry-After {retry}");
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let r = get_host(&edge, WEB, "/", &["-H", "Accept: text/html,*/*;q=0.8"]);
    assert_eq!(r.status, 503);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(
        r.text().contains("<h1>503 Service Unavailable</h1>"),
        "{}",
        r.text()
    );
    assert!(r.header("retry-after").is_some());
    assert_eq!(streams(admin), opened, "a stream was opened for {WEB}");
    assert_eq!(web.requests.load(Ordering::SeqCst), seen);

    // The essential hostname still serves.
    let r = get_host(&edge, ADMIN, "/bytes/1000", &[]);
    assert_eq!((r.ok, r.status), (true, 200), "{}", r.stderr);
    assert_eq!(r.body, pattern(1000));
    assert_eq!(essential.requests.load(Ordering::SeqCst), 1);

    // A raw TCP port is not the edge's to refuse: the device refuses the stream of a
    // rule that is not essential (as it does for an edge that predates the cap).
    let conns = web.connections.load(Ordering::SeqCst);
    let r = curl(&[
        "-H",
        &format!("Host: {DB}"),
        &format!("http://{tcp_port}/bytes/10"),
    ]);
    assert!(!r.ok && r.status == 0, "{} {}", r.status, r.stderr);
    assert_eq!(
        web.connections.load(Ordering::SeqCst),
        conns,
        "the device dialed"
    );

    // Midnight on the device: the count resets and every rule serves again.
    std::fs::write(&clock, (LATE + 3600 + 10).to_string()).unwrap();
    connector.wait_line("data cap: the daily count was reset");
    edge.proc
        .wait_line("tunnel dev42 back under its daily data cap: serving every rule");
    let r = get_host(&edge, WEB, "/bytes/1000", &[]);
    assert_eq!((r.ok, r.status), (true, 200), "{}", r.stderr);
    assert_eq!(r.body, pattern(1000));
    assert!(!tunnels(admin).contains("data_cap=over"));
    let r = curl(&[
        "-H",
        &format!("Host: {DB}"),
        &format!("http://{tcp_port}/bytes/10"),
    ]);
    assert_eq!((r.ok, r.status), (true, 200), "{}", r.stderr);
}

/// Polls `f` (a look at the edge's state, not a stand-in for readiness) until true.
fn wait_until(f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "condition not met within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A board without an RTC (its clock reads 1970) counts its days by the edge's clock,
/// which every hello carries: the reset is due at the edge's next midnight UTC.
pub(crate) fn a_device_without_a_clock_counts_its_days_by_the_edge() {
    let boot = 1000;
    let c = start_capped(boot);
    // Logged at the first hello, before the registrations the start waited for.
    let unset = "the clock is unset: the data cap's days follow the edge's clock";
    assert_eq!(c.connector.count(unset), 1, "{}", c.connector.dump());
    let r = get_host(&c.edge, WEB, "/bytes/1048576", &[]);
    assert!(r.body.len() < 1 << 20, "{} bytes", r.body.len());
    let line = c.connector.wait_line("over the daily cap of 65536 bytes");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now % 86_400;
    let logged: u64 = line
        .rsplit(" in ")
        .next()
        .and_then(|s| s.trim().strip_suffix('s'))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no reset time in {line:?}"));
    // The device's time stands still (the clock file) since the hello: a few seconds.
    assert!(
        logged >= to_midnight && logged <= to_midnight + 30,
        "reset in {logged}s, the edge's midnight in {to_midnight}s: {line}"
    );
    c.edge
        .proc
        .wait_line("tunnel dev42 over its daily data cap");
    let r = get_host(&c.edge, WEB, "/", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    // The system clock moves past the edge's midnight: the count resets.
    std::fs::write(&c.clock, (boot + logged + 5).to_string()).unwrap();
    c.connector.wait_line("data cap: the daily count was reset");
    c.edge
        .proc
        .wait_line("tunnel dev42 back under its daily data cap");
    let r = get_host(&c.edge, WEB, "/bytes/10", &[]);
    assert_eq!((r.ok, r.status), (true, 200), "{}", r.stderr);
}
