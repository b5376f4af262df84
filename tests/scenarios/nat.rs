//! The network between device and edge: port scans of the device, UDP blocked, loss and
//! delay, a NAT rebinding, a path-MTU black hole, a long outage, a boot without a route.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::netns::*;
use crate::scene::*;

/// Open ports in nmap's grepable output (`open|filtered` is not open).
pub fn open_ports(grepable: &str) -> Vec<String> {
    let mut open = Vec::new();
    for line in grepable.lines() {
        let Some((host, ports)) = line.split_once("Ports: ") else {
            continue;
        };
        for entry in ports.split(", ") {
            let f: Vec<&str> = entry.split('/').collect();
            if f.len() > 2 && f[1] == "open" {
                open.push(format!("{} {}/{}", host.trim(), f[0].trim(), f[2]));
            }
        }
    }
    open
}

pub fn nmap(net: &Net, from: &str, args: &str) -> String {
    let line = format!("timeout 600 nmap -n -Pn --max-retries 0 -oG - {args}");
    net.sh(from, &line)
}

pub fn port_scans_find_nothing_open_while_the_service_is_reachable() {
    let mut s = Scene::new();
    s.connect(Device::default());
    assert_eq!(s.get(0, "/", 5), Ok(200));
    assert_eq!(s.get(1, "/", 5), Ok(200));
    // The parser sees an open port where there is one: the edge's HTTP listener.
    let control = nmap(
        &s.net,
        &s.net.visitor,
        &format!("-sS -p 80 {}", EDGE_IPS[0]),
    );
    assert_eq!(open_ports(&control).len(), 1, "{control}");
    let started = Instant::now();
    let sources = [s.net.visitor.clone(), s.net.edges[0].clone()];
    for from in &sources {
        let out = nmap(
            &s.net,
            from,
            &format!("-sS -sU -p- --min-rate 20000 {DEVICE_IP} {NAT_WAN_IP}"),
        );
        for target in [DEVICE_IP, NAT_WAN_IP] {
            assert!(
                out.contains(&format!("Host: {target} ")),
                "nmap did not scan {target}: {out}"
            );
        }
        let open = open_ports(&out);
        assert!(open.is_empty(), "open ports seen from {from}: {open:?}");
    }
    eprintln!(
        "measured: full TCP+UDP scans of device and NAT from 2 places in {:.1}s, nothing open",
        started.elapsed().as_secs_f32()
    );
    // The tunnel still works after the scans.
    assert_eq!(s.get(0, "/", 5), Ok(200));
}

/// UDP blocked at the NAT: HTTP/2 serves within 5 s; unblocked: back to QUIC.
/// Returns (time to serve over HTTP/2, time to have all connections on QUIC again).
pub fn udp_blocked_then_unblocked() -> (Duration, Duration) {
    let mut s = Scene::new();
    s.net.sh(&s.net.nat, "iptables -I FORWARD -p udp -j DROP");
    let started = Instant::now();
    s.start_connector(Device::default());
    let fallback = s
        .wait_serving(0, Duration::from_secs(30))
        .map(|_| started.elapsed())
        .unwrap_or_else(|| panic!("no HTTP/2 fallback; log:\n{}", s.connector().dump()));
    let c = s.connector();
    assert!(c.count("seems blocked") >= 1, "{}", c.dump());
    c.wait_count("over http2", 4, WAIT)
        .unwrap_or_else(|| panic!("not all on HTTP/2; log:\n{}", c.dump()));
    assert_eq!(c.count("over quic"), 0);
    let load = Load::start(&s, &[0, 1], 10);
    s.net.sh(&s.net.nat, "iptables -D FORWARD -p udp -j DROP");
    let back = c
        .wait_count("over quic", 4, Duration::from_secs(90))
        .unwrap_or_else(|| panic!("not back on QUIC; log:\n{}", c.dump()));
    thread::sleep(Duration::from_secs(1));
    let results = load.finish();
    let failed = failures(&results);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while moving back to QUIC: {failed:?}",
        failed.len(),
        results.len()
    );
    (fallback, back)
}

pub fn udp_blocked_falls_back_to_http2_and_returns_to_quic() {
    let (fallback, back) = udp_blocked_then_unblocked();
    eprintln!(
        "measured: serving over HTTP/2 {:.2}s after start; all on QUIC {:.1}s after unblocking",
        fallback.as_secs_f32(),
        back.as_secs_f32()
    );
    assert!(
        fallback <= Duration::from_secs(5),
        "fallback took {fallback:?}"
    );
    assert!(
        back <= Duration::from_secs(60),
        "return to QUIC took {back:?}"
    );
}

pub fn requests_succeed_with_loss_and_delay_at_the_nat() {
    let mut s = Scene::new();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/netns/delay.py");
    let delay = Proc::spawn(
        "delay",
        s.net
            .cmd(&s.net.nat, "python3")
            .arg("-u")
            .arg(&script)
            .args(["0", "100", "300"]),
    );
    delay.wait_line("delaying queue");
    s.helpers.push(delay);
    s.net.sh(
        &s.net.nat,
        "iptables -A FORWARD -m statistic --mode random --probability 0.05 -j DROP && \
         iptables -A FORWARD -j NFQUEUE --queue-num 0 --queue-bypass",
    );
    s.connect(Device::default());
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for n in 0..40 {
        let t = Instant::now();
        let r = s.get(n % 2, "/", 20);
        assert_eq!(r, Ok(200), "request {n} failed");
        slowest = slowest.max(t.elapsed());
    }
    // A larger body, intact.
    let body = s.download("mid.bin", 120).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sha256_hex(&body), sha256_hex(&pattern(MID)));
    eprintln!(
        "measured: 40 requests and a {} MiB download with 5% loss and 100 ms delay each way \
         in {:.1}s; slowest request {:.2}s",
        MID >> 20,
        started.elapsed().as_secs_f32(),
        slowest.as_secs_f32()
    );
}

/// How often a QUIC flow's keeper pings the edge at the default settings (`idle-timeout`
/// 45 s less one `keepalive` of 15 s), seconds: the longest a NAT rebinding leaves the
/// edge without the device's new address.
const KEEPER_PROBE: u64 = 30;

pub fn quic_survives_nat_rebinding() {
    let mut s = Scene::new();
    s.connect(Device::default());
    let c = s.connector();
    assert_eq!(c.count("over quic"), 4, "{}", c.dump());
    let load = Load::start(&s, &[0, 1], 30);
    thread::sleep(Duration::from_secs(2));
    let rebound = load.start.elapsed();
    s.net.sh(
        &s.net.nat,
        &format!(
            "iptables -t nat -R POSTROUTING 1 -o wan0 -p udp -j MASQUERADE --to-ports {} && \
             conntrack -D -p udp >/dev/null 2>&1; true",
            NAT_UDP_PORTS[1]
        ),
    );
    // Traffic goes on; the flows now leave from the new port window.
    thread::sleep(Duration::from_secs(KEEPER_PROBE + 5));
    let flows = s.net.sh(&s.net.nat, "conntrack -L -p udp 2>/dev/null");
    let results = load.finish();
    let moved = flows
        .lines()
        .filter(|l| l.contains("dport=7844"))
        .filter_map(|l| {
            l.split_whitespace()
                .filter_map(|f| f.strip_prefix("dport="))
                .nth(1)
                .and_then(|p| p.parse::<u16>().ok())
        })
        .filter(|p| (40000..=40999).contains(p))
        .count();
    assert!(moved >= 1, "no flow in the new window:\n{flows}");
    // Until the connector's next QUIC packet (its keeper's ping, at most 30 s: its NAT
    // keep-alives in between open the new mapping, but the edge cannot tell whose they
    // are) moves the connection at the edge, the edge cannot reach the device: it
    // answers such requests with a quick 502, as for any tunnel whose connections all
    // went silent, instead of holding them. After that window nothing fails, and QUIC
    // carries on without a new handshake.
    let window = rebound + Duration::from_secs(KEEPER_PROBE + 3);
    let failed = failures(&results);
    let late: Vec<_> = failed
        .iter()
        .filter(|(t, _, r)| *t > window || *r != Ok(502))
        .collect();
    assert!(
        late.is_empty(),
        "requests failed after the keep-alive window or without a quick 502: {late:?} \
         (all failures: {failed:?})"
    );
    assert!(
        results.iter().any(|(t, _, r)| *t > window && *r == Ok(200)),
        "no request served after the keep-alive window: {results:?}"
    );
    let c = s.connector();
    assert_eq!(c.count("lost edge"), 0, "{}", c.dump());
    // The edges list each connection at the address it now comes from (the NAT's new
    // port window), not the one it registered from.
    for e in 0..2 {
        let lines = s.tunnel_lines(e);
        assert!(!lines.is_empty(), "edge {} lists no connection", e + 1);
        for l in &lines {
            let port = l
                .split_whitespace()
                .find_map(|f| f.strip_prefix("from="))
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse::<u16>().ok());
            assert!(
                port.is_some_and(|p| (40000..=40999).contains(&p)),
                "edge {} lists a connection at its old address: {l}",
                e + 1
            );
        }
    }
    let slowest = results
        .windows(2)
        .map(|w| w[1].0.saturating_sub(w[0].0))
        .max()
        .unwrap_or_default();
    eprintln!(
        "measured: {} requests across a NAT rebinding, {} answered 502 before the \
         connector's next keep-alive, none after; longest gap {:.2}s",
        results.len(),
        failed.len(),
        slowest.as_secs_f32()
    );
}

pub fn a_jumbo_frame_lan_behind_a_narrow_uplink_still_carries_bulk_downloads() {
    let mut s = Scene::new();
    // The device's LAN carries 9000-byte frames; the NAT's uplink carries 1500, and the
    // NAT drops larger packets without the ICMP answer that would tell the sender (a
    // path-MTU black hole). (A length match would see the device's offload batches
    // whole on veth links, so the kernel's own forwarding check drops them instead.)
    s.net.sh(&s.net.device, "ip link set eth0 mtu 9000");
    s.net.sh(
        &s.net.nat,
        "ip link set lan0 mtu 9000 && \
         iptables -A OUTPUT -p icmp --icmp-type fragmentation-needed -j DROP",
    );
    s.connect(Device {
        protocol: Some("quic"),
        ..Device::default()
    });
    let started = Instant::now();
    let body = s.download("big.bin", 60);
    let took = started.elapsed();
    let body = body.unwrap_or_else(|e| panic!("{e}\nconnector log:\n{}", s.connector().dump()));
    assert_eq!(sha256_hex(&body), sha256_hex(&pattern(BIG)));
    // The connector did probe past 1500 bytes (its route allows 9000), and every probe
    // fell into the hole.
    let dropped: u64 = s
        .net
        .sh(&s.net.nat, "iptables -nvxL OUTPUT")
        .lines()
        .find(|l| l.contains("icmptype 3 code 4"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the NAT's drop rule");
    assert!(dropped > 0, "no packet larger than 1500 bytes was sent");
    assert_eq!(
        s.connector().count("lost edge"),
        0,
        "{}",
        s.connector().dump()
    );
    eprintln!(
        "measured: {} MiB through a 9000-byte LAN and a 1500-byte black-holing uplink in \
         {:.1}s; {dropped} oversized probes dropped",
        BIG >> 20,
        took.as_secs_f32()
    );
}

/// Cuts the NAT's forwarding for `cut`; the time from restoring it to serving.
pub fn outage(cut: Duration) -> Duration {
    let mut s = Scene::new();
    s.connect(Device::default());
    s.net.sh(&s.net.nat, "iptables -I FORWARD 1 -j DROP");
    thread::sleep(cut);
    assert!(s.connector_alive(), "the connector exited");
    let c = s.connector();
    // The connections did notice: all four were lost (idle timeout), none came back.
    assert!(c.count("lost edge") >= 4, "{}", c.dump());
    assert_eq!(c.count("registered: tunnel"), 4, "{}", c.dump());
    s.net.sh(&s.net.nat, "iptables -D FORWARD 1");
    let back = s
        .wait_serving(0, Duration::from_secs(90))
        .unwrap_or_else(|| panic!("not serving after the outage; log:\n{}", c.dump()));
    assert!(s.wait_serving(1, Duration::from_secs(90)).is_some());
    back
}

pub fn serves_again_after_minutes_of_outage() {
    let back = outage(Duration::from_secs(150));
    eprintln!(
        "measured: serving {:.1}s after a 150 s outage ended",
        back.as_secs_f32()
    );
    assert!(back <= Duration::from_secs(45), "took {back:?}");
}

pub fn boots_without_a_network_and_connects_once_it_appears() {
    let mut s = Scene::new();
    s.net.sh(&s.net.device, "ip route del default");
    s.start_connector(Device::default());
    thread::sleep(Duration::from_secs(8));
    assert!(s.connector_alive(), "the connector exited");
    let c = s.connector();
    assert_eq!(c.count("registered: tunnel"), 0);
    s.net.sh(
        &s.net.device,
        &format!("ip route add default via {NAT_LAN_IP}"),
    );
    let t = s
        .wait_serving(0, Duration::from_secs(60))
        .unwrap_or_else(|| panic!("never connected; log:\n{}", c.dump()));
    eprintln!(
        "measured: serving {:.1}s after the route appeared",
        t.as_secs_f32()
    );
    assert!(t <= Duration::from_secs(35), "took {t:?}");
}

/// The port of a `/tunnels` line's `from=` address.
fn from_port(line: &str) -> Option<u16> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("from="))
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
}

/// Whether a `/tunnels` line lists the connection in the NAT's second port window.
fn in_new_window(line: &str) -> bool {
    from_port(line).is_some_and(|p| (40000..=40999).contains(&p))
}

/// Polls edge `e`'s `/tunnels` until `done` holds for its lines; how long that took.
fn wait_lines(
    s: &Scene,
    e: usize,
    within: Duration,
    done: impl Fn(&[String]) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if done(&s.tunnel_lines(e)) {
            return Some(start.elapsed());
        }
        thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A NAT rebinding while the device sits idle: only the keeper of each edge's flow (the
/// lowest connection there) keeps the NAT mapping alive; its siblings are quiet for
/// minutes. Once the keeper's next QUIC ping has moved it to the new port at the edge,
/// visitors are served at once (the edge sends them to the keeper, not to a sibling
/// still listed at the old port), and the siblings follow within seconds (the keeper
/// pokes them when the edge validates its new path).
pub fn an_idle_device_is_served_at_once_after_a_nat_rebinding() {
    let mut s = Scene::new();
    s.connect(Device::default());
    let c = s.connector();
    assert_eq!(c.count("over quic"), 4, "{}", c.dump());
    assert_eq!(s.get(0, "/", 10), Ok(200));
    assert_eq!(s.get(1, "/", 10), Ok(200));
    s.net.sh(
        &s.net.nat,
        &format!(
            "iptables -t nat -R POSTROUTING 1 -o wan0 -p udp -j MASQUERADE --to-ports {} && \
             conntrack -D -p udp >/dev/null 2>&1; true",
            NAT_UDP_PORTS[1]
        ),
    );
    let rebound = Instant::now();
    for e in 0..2 {
        // The keeper's next QUIC ping moves it at the edge.
        wait_lines(&s, e, Duration::from_secs(KEEPER_PROBE + 10), |l| {
            l.iter().any(|l| in_new_window(l))
        })
        .unwrap_or_else(|| panic!("no connection at e{} moved: {:?}", e + 1, s.tunnel_lines(e)));
        let moved = rebound.elapsed();
        let lines = s.tunnel_lines(e);
        let mut times = Vec::new();
        for _ in 0..8 {
            let t = Instant::now();
            let r = s.get(e, "/", 10);
            times.push((t.elapsed(), r));
        }
        eprintln!(
            "measured: e{}: its keeper moved by {:.1}s after the rebinding; then 8 GETs: {:?}; \
             lines then: {lines:?}",
            e + 1,
            moved.as_secs_f32(),
            times
                .iter()
                .map(|(t, _)| t.as_secs_f32())
                .collect::<Vec<_>>()
        );
        for (t, r) in &times {
            assert_eq!(*r, Ok(200), "e{}: {times:?}", e + 1);
            assert!(
                *t < Duration::from_millis(800),
                "e{}: a request waited {t:?}, not served at once: {times:?}",
                e + 1
            );
        }
        // The siblings follow their keeper.
        let all = wait_lines(&s, e, Duration::from_secs(5), |l| {
            l.len() == 2 && l.iter().all(|l| in_new_window(l))
        });
        assert!(
            all.is_some(),
            "e{}: a sibling stayed at its old address: {:?}",
            e + 1,
            s.tunnel_lines(e)
        );
    }
    let c = s.connector();
    assert_eq!(c.count("lost edge"), 0, "{}", c.dump());
    assert_eq!(c.count("registered"), 4, "no new handshake: {}", c.dump());
}

/// A NAT rebinding under a metered device: its one connection is HTTP/2 over TCP, which
/// cannot move to a new NAT port (a TCP connection is its four addresses), so the
/// connection is replaced. Until the device's next keep-alive (at most
/// [`METERED_KEEPALIVE`] after the last), nothing it sends crosses the NAT and it cannot
/// know; the keep-alive then leaves from the new port and the edge's TCP answers with a
/// reset (or, where a NAT drops such orphan packets, nothing answers for
/// [`METERED_IDLE`]), and the connector dials again from the new mapping. Bound: one
/// keep-alive period, the idle timeout, one reconnection. Requests in that window get
/// the edge's quick 502 (no live connection); after it, none fails.
pub fn a_metered_device_reconnects_after_a_nat_rebinding_by_its_next_keepalive() {
    let mut s = Scene::new();
    s.connect_metered();
    assert_eq!(s.get(0, "/", 10), Ok(200));
    let load = Load::start(&s, &[0], 5);
    thread::sleep(Duration::from_secs(1));
    // TCP now leaves from the second port window, and the NAT forgets its TCP flows.
    s.net.sh(
        &s.net.nat,
        &format!(
            "iptables -t nat -I POSTROUTING 1 -o wan0 -p tcp -j MASQUERADE --to-ports {} && \
             conntrack -D -p tcp >/dev/null 2>&1; true",
            NAT_UDP_PORTS[1]
        ),
    );
    let rebound = load.start.elapsed();
    let bound = METERED_KEEPALIVE + METERED_IDLE + METERED_RECONNECT;
    let c = s.connector();
    let back = c
        .wait_count("registered: ", 2, bound + Duration::from_secs(30))
        .map(|_| load.start.elapsed() - rebound);
    thread::sleep(Duration::from_secs(2));
    let results = load.finish();
    let back = back.unwrap_or_else(|| panic!("no new connection; log:\n{}", c.dump()));
    let failed = failures(&results);
    let window = rebound + back + Duration::from_secs(1);
    let late: Vec<_> = failed.iter().filter(|(t, _, _)| *t > window).collect();
    eprintln!(
        "measured: metered (HTTP/2, keep-alive {}s): connected again {:.1}s after a NAT \
         rebinding (bound {}s); {} of {} requests failed before, none after",
        METERED_KEEPALIVE.as_secs(),
        back.as_secs_f32(),
        bound.as_secs(),
        failed.len(),
        results.len()
    );
    assert!(back <= bound, "took {back:?}; log:\n{}", c.dump());
    assert!(
        late.is_empty(),
        "requests failed after the reconnection: {late:?}"
    );
    assert!(
        results.iter().any(|(t, _, r)| *t > window && *r == Ok(200)),
        "no request served after the reconnection: {results:?}"
    );
    // The edge lists the new connection at the NAT's new port.
    let lines = s.tunnel_lines(0);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(in_new_window(&lines[0]), "{lines:?}");
    assert_eq!(c.count("over http2"), 2, "{}", c.dump());
}

/// A metered device through a link cut longer than its keep-alive and idle timeout: its
/// keep-alive goes unanswered, it drops the connection (at most [`METERED_KEEPALIVE`] +
/// [`METERED_IDLE`] into the cut, and a few seconds) and retries on the usual schedule (quick retries, then
/// backoff up to 30 s); once the link is back it serves within the default profile's
/// bound (45 s: the 30 s backoff cap and a reconnection). A cut shorter than that goes
/// unnoticed: the TCP connection outlives it, and the device serves at once after it.
pub fn a_metered_device_serves_again_after_an_outage() {
    let mut s = Scene::new();
    s.connect_metered();
    assert_eq!(s.get(0, "/", 10), Ok(200));
    s.net.sh(&s.net.nat, "iptables -I FORWARD 1 -j DROP");
    let cut = Instant::now();
    let c = s.connector();
    // The next keep-alive, its idle timeout, and the pinger's own pace (it sleeps a
    // keep-alive period after each answer) with room for a loaded machine.
    let notice_bound = METERED_KEEPALIVE + METERED_IDLE + Duration::from_secs(5);
    let noticed = c
        .wait_count("lost edge", 1, notice_bound)
        .map(|_| cut.elapsed())
        .unwrap_or_else(|| panic!("the cut went unnoticed; log:\n{}", c.dump()));
    thread::sleep(Duration::from_secs(60).saturating_sub(cut.elapsed()));
    assert!(s.connector_alive(), "the connector exited");
    let c = s.connector();
    assert_eq!(c.count("registered: "), 1, "{}", c.dump());
    s.net.sh(&s.net.nat, "iptables -D FORWARD 1");
    let back = s
        .wait_serving(0, Duration::from_secs(90))
        .unwrap_or_else(|| panic!("not serving after the outage; log:\n{}", c.dump()));
    eprintln!(
        "measured: metered: a 60 s cut noticed after {:.1}s (bound {}s); serving {:.1}s after \
         it ended",
        noticed.as_secs_f32(),
        notice_bound.as_secs(),
        back.as_secs_f32()
    );
    assert!(back <= Duration::from_secs(45), "took {back:?}");
}
