//! What an idle, registered device costs: the IP bytes and packets that cross the
//! carrier NAT, both directions, while the connector sits idle, extrapolated to a day
//! and split by direction and cause.
//!
//! The counting is done from outside, by iptables rules in the NAT's FORWARD path (a
//! chain of its own, jumped to first, so a delay queue further down the chain does not
//! change what is counted). Each packet lands in one cause:
//!
//! | cause          | match                   | what it is                                  |
//! |----------------|-------------------------|---------------------------------------------|
//! | `dns`          | UDP or TCP port 53      | name lookups                                |
//! | `udp <100`     | UDP, IP length under 100| keep-alives: QUIC pings, ACKs, NAT keep-alives (29 B) |
//! | `udp 100-1199` | UDP, 100 to 1199 bytes  | QUIC stream data (requests, reports)        |
//! | `udp >=1200`   | UDP, 1200 bytes or more | QUIC handshakes, path probes (both padded), bulk data |
//! | `tcp <=72`     | TCP, IP length up to 72 | TCP segments without payload (ACKs, SYN, FIN) |
//! | `tcp >72`      | TCP, longer             | TLS records (HTTP/2 PINGs, data)            |
//! | `other`        | anything else           | ICMP, ...                                   |
//!
//! iptables cannot tell a QUIC PING from an ACK (both are encrypted and about the same
//! size), so small UDP packets are also counted by exact IP length, per direction: the
//! sizes that dominate are printed. And `tests/netns/bursts.py` captures on the NAT's
//! LAN side and groups each flow's packets into bursts (gaps under [`BURST_GAP_MS`]):
//! an idle connection's burst is one keep-alive and its acknowledgement, and the side
//! that sends first is the one whose timer fired, so the bytes split into keep-alives
//! started by the device and by the edge (the QUIC connections to one edge share the
//! device's UDP socket, hence one flow, which one of them keeps alive: the flow's keeper,
//! with a 29-byte NAT keep-alive, a burst of one, or a QUIC ping and its ACK). The IP
//! lengths of the bursts' first packets (a keep-alive) and of the others (mostly ACKs)
//! are printed, and the wake-ups of
//! the link (what keeps a cellular radio out of its idle state) counted.
//!
//! Ignored by default (each profile takes the idle window plus setup, 10 minutes by
//! default); run by name, all profiles at once in parallel:
//! `IDLE_SECS=600 cargo test --release --test scenarios -- --ignored idle_traffic
//! --test-threads 5`. `IDLE_SECS` sets the window (default 600, 10 to 21600).

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::netns::*;
use crate::scene::*;

/// The iptables chain the counting rules live in (filter table, NAT namespace).
const CHAIN: &str = "MSIDLE";
/// Default idle window, seconds.
const DEFAULT_IDLE_SECS: u64 = 600;
/// Bounds of the idle window, seconds.
const IDLE_SECS_RANGE: (u64, u64) = (10, 6 * 3600);
/// Small UDP packets are counted by exact IP length from here to [`SMALL_UDP`] - 1.
const SMALL_UDP_MIN: u32 = 28;
/// UDP packets under this IP length are counted as keep-alive PINGs and ACKs.
const SMALL_UDP: u32 = 100;
/// Packets of a flow closer than this belong to one burst, milliseconds.
const BURST_GAP_MS: u32 = 500;

/// One measured configuration.
pub struct Profile {
    pub name: &'static str,
    pub device: Device,
    /// Connections to wait for before the window (registered lines in the log).
    pub connections: usize,
    /// Delay added each way at the NAT (the NFQUEUE delay tool), milliseconds.
    pub delay_ms: Option<u32>,
    /// Idle time before the window: an HTTP/2 edge learns the device's keep-alive period
    /// from its first keep-alive, and pings until then.
    pub settle: Duration,
    /// A metered device learns its NAT's mapping lifetime first (`connector::natlife`):
    /// the window starts once it has (about 40 minutes: probes of 75, 150, 300, 600 and
    /// 1200 s), and the settle after that.
    pub learn: bool,
}

/// Longest wait for a metered device's learning before the window.
const LEARN_WITHIN: Duration = Duration::from_secs(50 * 60);

/// Counters of one direction, by cause: (cause, packets, bytes).
pub struct Direction {
    pub total: (u64, u64),
    pub causes: Vec<(String, u64, u64)>,
    /// Small UDP packets by IP length: (length, packets).
    pub sizes: Vec<(u32, u64)>,
}

/// Bursts of one protocol started by one side, as `bursts.py` prints them.
pub struct Bursts {
    pub proto: String,
    /// "up" (the device) or "down" (the edge).
    pub starter: String,
    pub count: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Packets per burst, `n:count,...`.
    pub sizes: String,
    /// IP lengths of the bursts' first packets (the keep-alives), `len:count,...`.
    pub first: String,
    /// IP lengths of the other packets (replies, acknowledgements).
    pub rest: String,
}

/// What one idle window cost.
pub struct Idle {
    pub window: Duration,
    pub up: Direction,
    pub down: Direction,
    /// The capture's bursts: (protocol, starter, bursts, packets, bytes, then as
    /// `n:count,...`: packets per burst, IP lengths of the first packets, of the rest).
    pub bursts: Vec<Bursts>,
    /// Bursts of the whole link.
    pub wakeups: u64,
    /// Registrations logged during the window (re-handshakes, reconnections).
    pub registrations: usize,
    /// The first request after the window: how long it took, its outcome.
    pub after: (Duration, Result<u16, String>),
}

/// The idle window from `IDLE_SECS`, bounded.
fn idle_window() -> Duration {
    let secs = match std::env::var("IDLE_SECS") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("IDLE_SECS={v:?}: expected whole seconds")),
        Err(_) => DEFAULT_IDLE_SECS,
    };
    let (lo, hi) = IDLE_SECS_RANGE;
    assert!(
        (lo..=hi).contains(&secs),
        "IDLE_SECS={secs}: expected {lo} to {hi} seconds"
    );
    Duration::from_secs(secs)
}

/// The counting rules: per direction a total, one rule per cause (each ends with
/// RETURN, so a packet counts once), and small UDP packets by exact length.
pub fn install_counters(net: &Net) {
    let mut rules = vec![
        format!("iptables -N {CHAIN}"),
        format!("iptables -I FORWARD 1 -j {CHAIN}"),
    ];
    for (dir, iface, port) in [
        ("up", "-i lan0 -o wan0", "--dport"),
        ("down", "-i wan0 -o lan0", "--sport"),
    ] {
        let rule = |m: &str, name: &str, ret: bool| {
            format!(
                "iptables -A {CHAIN} {iface} {m} -m comment --comment '{dir} {name}'{}",
                if ret { " -j RETURN" } else { "" }
            )
        };
        rules.push(rule("", "total", false));
        for len in SMALL_UDP_MIN..SMALL_UDP {
            rules.push(rule(
                &format!("-p udp ! {port} 53 -m length --length {len}"),
                &format!("len {len}"),
                false,
            ));
        }
        rules.push(rule(&format!("-p udp {port} 53"), "dns", true));
        rules.push(rule(&format!("-p tcp {port} 53"), "dns", true));
        rules.push(rule(
            &format!("-p udp -m length --length 0:{}", SMALL_UDP - 1),
            &format!("udp <{SMALL_UDP}"),
            true,
        ));
        rules.push(rule(
            &format!("-p udp -m length --length {SMALL_UDP}:1199"),
            &format!("udp {SMALL_UDP}-1199"),
            true,
        ));
        rules.push(rule("-p udp", "udp >=1200", true));
        rules.push(rule("-p tcp -m length --length 0:72", "tcp <=72", true));
        rules.push(rule("-p tcp", "tcp >72", true));
        rules.push(rule("", "other", true));
    }
    net.sh(&net.nat, &rules.join(" && "));
}

pub fn read_counters(net: &Net) -> (Direction, Direction) {
    let all = net.counters(&net.nat, CHAIN);
    let dir = |d: &str| {
        let prefix = format!("{d} ");
        let mut out = Direction {
            total: (0, 0),
            causes: Vec::new(),
            sizes: Vec::new(),
        };
        for (name, pkts, bytes) in all.iter().filter(|(n, _, _)| n.starts_with(&prefix)) {
            let name = &name[prefix.len()..];
            if name == "total" {
                out.total = (*pkts, *bytes);
            } else if let Some(len) = name.strip_prefix("len ") {
                if *pkts > 0 {
                    out.sizes.push((len.parse().unwrap(), *pkts));
                }
            } else {
                out.causes.push((name.to_string(), *pkts, *bytes));
            }
        }
        out.sizes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out
    };
    (dir("up"), dir("down"))
}

/// Starts the scene and the connector of `profile`, proves it serves, lets it sit idle
/// for `window` while the NAT counts, and proves it still serves.
pub fn measure(profile: &Profile, window: Duration) -> Idle {
    let mut s = Scene::new();
    if let Some(ms) = profile.delay_ms {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/netns/delay.py");
        // The delay program ends on its own after the window and a margin for setup.
        let limit = window.as_secs() + profile.settle.as_secs() + 300;
        let delay = Proc::spawn(
            "delay",
            s.net
                .cmd(&s.net.nat, "python3")
                .arg("-u")
                .arg(&script)
                .args(["0", &ms.to_string(), &limit.to_string()]),
        );
        delay.wait_line("delaying queue");
        s.helpers.push(delay);
        s.net.sh(
            &s.net.nat,
            "iptables -A FORWARD -j NFQUEUE --queue-num 0 --queue-bypass",
        );
    }
    install_counters(&s.net);
    s.start_connector(profile.device);
    let c = s.connector();
    c.wait_count("registered", profile.connections, WAIT)
        .unwrap_or_else(|| {
            panic!(
                "{}: not {} connections registered; log:\n{}",
                profile.name,
                profile.connections,
                c.dump()
            )
        });
    // Serving: one request through each edge the device is connected to.
    for i in 0..profile.connections.min(2) {
        let r = s.get(i, "/", 20);
        assert_eq!(r, Ok(200), "{}: GET via e{}", profile.name, i + 1);
    }
    if profile.learn {
        s.net.sh(&s.net.nat, &format!("iptables -Z {CHAIN}"));
        let start = Instant::now();
        let line = s
            .connector()
            .wait_line_within("NAT learnt: ", LEARN_WITHIN)
            .unwrap_or_else(|| panic!("nothing learnt; log:\n{}", s.connector().dump()));
        let (up, down) = read_counters(&s.net);
        eprintln!(
            "measured: {}: learnt in {}s ({}); meanwhile {} B up, {} B down at the NAT ({} \
             probes besides keep-alives)",
            profile.name,
            start.elapsed().as_secs(),
            line.split("NAT learnt: ").nth(1).unwrap_or_default(),
            up.total.1,
            down.total.1,
            s.connector().count("NAT probe of") + 1
        );
    }
    // The last acknowledgements of those requests, then the window.
    thread::sleep(Duration::from_secs(2) + profile.settle);
    let registered = s.connector().count("registered");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/netns/bursts.py");
    let capture = Proc::spawn(
        "bursts",
        s.net
            .cmd(&s.net.nat, "python3")
            .arg("-u")
            .arg(&script)
            .arg("lan0")
            .arg(BURST_GAP_MS.to_string())
            .arg(window.as_secs().to_string()),
    );
    capture.wait_line("capturing on");
    s.net.sh(&s.net.nat, &format!("iptables -Z {CHAIN}"));
    let start = Instant::now();
    thread::sleep(window);
    let (up, down) = read_counters(&s.net);
    let window = start.elapsed();
    capture
        .wait_line_within("done", Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the capture did not end; log:\n{}", capture.dump()));
    let (bursts, wakeups) = parse_bursts(&capture.log.lock().unwrap());
    let registrations = s.connector().count("registered") - registered;
    assert!(
        s.connector_alive(),
        "{}: the connector exited",
        profile.name
    );
    let t = Instant::now();
    let r = s.get(0, "/", 20);
    let after = (t.elapsed(), r);
    Idle {
        window,
        up,
        down,
        bursts,
        wakeups,
        registrations,
        after,
    }
}

/// The bursts and wake-ups `bursts.py` printed.
fn parse_bursts(log: &[String]) -> (Vec<Bursts>, u64) {
    let mut bursts = Vec::new();
    let mut wakeups = 0;
    for line in log {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["bursts:", proto, starter, n, p, b, sizes, first, rest] => bursts.push(Bursts {
                proto: proto.to_string(),
                starter: starter.to_string(),
                count: n.parse().unwrap(),
                packets: p.parse().unwrap(),
                bytes: b.parse().unwrap(),
                sizes: sizes.to_string(),
                first: first.to_string(),
                rest: rest.to_string(),
            }),
            ["wakeups:", n] => wakeups = n.parse().unwrap(),
            _ => {}
        }
    }
    (bursts, wakeups)
}

/// Extrapolated to a day.
fn per_day(n: u64, window: Duration) -> f64 {
    n as f64 * 86_400.0 / window.as_secs_f64()
}

fn mb(bytes: f64) -> String {
    format!("{:.2} MB", bytes / 1e6)
}

fn pct(part: u64, all: u64) -> String {
    if all == 0 {
        return "0%".into();
    }
    format!("{:.0}%", part as f64 * 100.0 / all as f64)
}

/// Prints the figures of one profile, `measured:` first.
pub fn report(profile: &Profile, idle: &Idle) {
    let w = idle.window;
    let bytes = idle.up.total.1 + idle.down.total.1;
    let pkts = idle.up.total.0 + idle.down.total.0;
    eprintln!(
        "measured: idle {}: {}/day, {:.0} packets/day (IP bytes both ways at the NAT, \
         {:.0} s window extrapolated); up {} / down {}; {} registrations in the window; \
         GET after the window {:?} in {:.2}s",
        profile.name,
        mb(per_day(bytes, w)),
        per_day(pkts, w),
        w.as_secs_f64(),
        pct(idle.up.total.1, bytes),
        pct(idle.down.total.1, bytes),
        idle.registrations,
        idle.after.1,
        idle.after.0.as_secs_f32(),
    );
    for (d, dir) in [
        ("up (device to edge)", &idle.up),
        ("down (edge to device)", &idle.down),
    ] {
        eprintln!(
            "  {d}: {}/day, {:.0} packets/day, {} bytes and {} packets in the window",
            mb(per_day(dir.total.1, w)),
            per_day(dir.total.0, w),
            dir.total.1,
            dir.total.0
        );
        for (cause, p, b) in dir.causes.iter().filter(|c| c.1 > 0) {
            eprintln!(
                "    {cause:<14} {:>9}/day {:>8.0} packets/day  {:>4} of all bytes",
                mb(per_day(*b, w)),
                per_day(*p, w),
                pct(*b, bytes)
            );
        }
        let sizes: Vec<String> = dir
            .sizes
            .iter()
            .take(6)
            .map(|(len, p)| format!("{len} B x{p}"))
            .collect();
        if !sizes.is_empty() {
            eprintln!(
                "    small UDP by IP length (most frequent): {}",
                sizes.join(", ")
            );
        }
    }
}

fn report_bursts(idle: &Idle) {
    let w = idle.window;
    let bytes = idle.up.total.1 + idle.down.total.1;
    eprintln!(
        "  bursts (gap {BURST_GAP_MS} ms, captured on the NAT's LAN side); link wake-ups {:.0}/day:",
        per_day(idle.wakeups, w)
    );
    for b in &idle.bursts {
        let who = if b.starter == "up" { "device" } else { "edge" };
        eprintln!(
            "    {} started by the {who:<6} {:>9}/day {:>6.0} bursts/day {:>7.0} packets/day \
             {:>4} of all bytes; packets per burst {}; IP lengths of the first packet {}, \
             of the others {}",
            b.proto,
            mb(per_day(b.bytes, w)),
            per_day(b.count, w),
            per_day(b.packets, w),
            pct(b.bytes, bytes),
            b.sizes,
            b.first,
            b.rest,
        );
    }
}

fn run(profile: Profile) {
    let window = idle_window();
    let idle = measure(&profile, window);
    report(&profile, &idle);
    report_bursts(&idle);
    assert_eq!(
        idle.after.1,
        Ok(200),
        "{}: GET after the idle window",
        profile.name
    );
}

/// The default device profile: `protocol: auto` (QUIC), `ha-connections: 4` (two at
/// each of the two edges), `keepalive: 15s`, no delay.
pub fn idle_traffic() {
    run(Profile {
        name: "default (quic, 4 connections, keepalive 15s)",
        device: Device::default(),
        connections: 4,
        delay_ms: None,
        settle: Duration::ZERO,
        learn: false,
    });
}

/// The default profile at a 50 ms round trip (25 ms each way at the NAT).
pub fn idle_traffic_50ms_rtt() {
    run(Profile {
        name: "default at 50 ms RTT (quic, 4 connections, keepalive 15s)",
        device: Device::default(),
        connections: 4,
        delay_ms: Some(25),
        settle: Duration::ZERO,
        learn: false,
    });
}

/// One QUIC connection.
pub fn idle_traffic_one_connection() {
    run(Profile {
        name: "quic, 1 connection, keepalive 15s",
        device: Device {
            ha_connections: Some(1),
            ..Device::default()
        },
        connections: 1,
        delay_ms: None,
        settle: Duration::ZERO,
        learn: false,
    });
}

/// The HTTP/2 fallback with the default four connections.
pub fn idle_traffic_http2() {
    run(Profile {
        name: "http2, 4 connections, keepalive 15s",
        device: Device {
            protocol: Some("http2"),
            ..Device::default()
        },
        connections: 4,
        delay_ms: None,
        settle: Duration::ZERO,
        learn: false,
    });
}

/// The HTTP/2 fallback with one connection.
pub fn idle_traffic_http2_one_connection() {
    run(Profile {
        name: "http2, 1 connection, keepalive 15s",
        device: Device {
            protocol: Some("http2"),
            ha_connections: Some(1),
            ..Device::default()
        },
        connections: 1,
        delay_ms: None,
        settle: Duration::ZERO,
        learn: false,
    });
}

/// Idle time before a metered profile's window: its first keep-alive (5 minutes) and a
/// margin, after which the edge knows the device's keep-alive period.
const METERED_SETTLE: Duration = Duration::from_secs(330);

/// The metered profile (`metered: true`): one HTTP/2 connection with keep-alives every
/// 5 minutes, health reports hourly at most.
pub fn idle_traffic_metered() {
    run(Profile {
        name: "metered (http2, 1 connection, keepalive 300s)",
        device: Device {
            extra_yaml: "metered: true\n",
            ..Device::default()
        },
        connections: 1,
        delay_ms: None,
        settle: METERED_SETTLE,
        learn: false,
    });
}

/// The metered profile once it has learnt its NAT's mapping lifetime (the namespace
/// NAT keeps TCP mappings for the kernel's 5 days): its keep-alive is at the cap, 900 s.
/// The window should hold a few keep-alives: `IDLE_SECS=2700` or more.
pub fn idle_traffic_metered_learnt() {
    run(Profile {
        name: "metered, learnt (http2, 1 connection, keepalive learnt)",
        device: Device {
            extra_yaml: "metered: true\n",
            ..Device::default()
        },
        connections: 1,
        delay_ms: None,
        settle: Duration::from_secs(10),
        learn: true,
    });
}

/// The metered profile at a 50 ms round trip.
pub fn idle_traffic_metered_50ms_rtt() {
    run(Profile {
        name: "metered at 50 ms RTT (http2, 1 connection, keepalive 300s)",
        device: Device {
            extra_yaml: "metered: true\n",
            ..Device::default()
        },
        connections: 1,
        delay_ms: Some(25),
        settle: METERED_SETTLE,
        learn: false,
    });
}
