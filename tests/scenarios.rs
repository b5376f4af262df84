#![cfg(feature = "edge")]
//! Scenarios in network namespaces: a device behind a carrier-like NAT with a closed
//! firewall, two edges and a visitor (see `tests/netns`). Real processes throughout:
//! `mailslot run` and a Python origin in the device namespace, `mailslot-edge serve` in
//! each edge namespace, curl and nmap as visitors. Needs root; skips with a message
//! otherwise.
//!
//! The tests assert generous bounds and print what they measured; the ignored `bench`
//! test repeats the timing scenarios and prints the figures for the README:
//! `cargo test --release --test scenarios -- --ignored bench --nocapture`.

mod common;
mod netns;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use netns::*;

const HOST: &str = "dev42.example.com";
/// Size of the file the device's origin serves for long downloads.
const BIG: u64 = 24 * 1024 * 1024;
/// Size of the file downloaded over a lossy, slow path.
const MID: u64 = 1024 * 1024;

/// One test's world: namespaces, origin, edges and (once started) the connector.
/// Fields drop in order: processes first, the namespaces last.
struct Scene {
    connector: Option<Proc>,
    /// A second connector with the same config and token (a replica), when started.
    replica: Option<Proc>,
    edges: [Option<Proc>; 2],
    helpers: Vec<Proc>,
    origin: Proc,
    edge_dir: TempDir,
    dev_dir: TempDir,
    /// The tunnel token, shared by the connector and its replica.
    token: String,
    _www: TempDir,
    net: Net,
}

/// Device config keys added to the standard ones.
#[derive(Default, Clone, Copy)]
struct Device {
    extra_yaml: &'static str,
    /// `protocol:` (`auto` when `None`).
    protocol: Option<&'static str>,
    /// Name the edges by [`EDGE_NAMES`] instead of their addresses.
    edge_names: bool,
}

/// Names of the edges, resolved only where a test sets up name resolution.
const EDGE_NAMES: [&str; 2] = ["e1.mailslot.test", "e2.mailslot.test"];

impl Scene {
    /// Namespaces, origin and both edges; the connector is started separately.
    fn new() -> Scene {
        let net = Net::new();
        let www = TempDir::new("www");
        std::fs::write(www.path().join("index.html"), "hello from the device\n").unwrap();
        std::fs::write(www.path().join("big.bin"), pattern(BIG)).unwrap();
        std::fs::write(www.path().join("mid.bin"), pattern(MID)).unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/netns/origin.py");
        let origin = Proc::spawn(
            "origin",
            net.cmd(&net.device, "python3")
                .arg("-u")
                .arg(&script)
                .arg("8080")
                .arg(www.path()),
        );
        origin.wait_line("Serving HTTP");
        let edge_dir = TempDir::new("edges");
        let out = Command::new(EDGE)
            .args(["init", "--dir"])
            .arg(edge_dir.path())
            .args(["--hostname", EDGE_IPS[0], "--hostname", EDGE_IPS[1]])
            .args(["--hostname", EDGE_NAMES[0], "--hostname", EDGE_NAMES[1]])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (i, _) in EDGE_IPS.iter().enumerate() {
            std::fs::write(
                edge_dir.path().join(format!("edge{}.yml", i + 1)),
                format!(
                    "name: e{}\ntunnel-listen: 0.0.0.0:7844\nhttp-listen: 0.0.0.0:80\n\
                     https-listen: none\ncert: edge.crt\nkey: edge.key\nsigning-key: signing.key\n",
                    i + 1
                ),
            )
            .unwrap();
        }
        let mut s = Scene {
            connector: None,
            replica: None,
            edges: [None, None],
            helpers: Vec::new(),
            origin,
            edge_dir,
            dev_dir: TempDir::new("device"),
            token: String::new(),
            _www: www,
            net,
        };
        s.token = s.issue_token();
        s.start_edge(0);
        s.start_edge(1);
        s
    }

    fn edge_yml(&self, i: usize) -> PathBuf {
        self.edge_dir.path().join(format!("edge{}.yml", i + 1))
    }

    /// Starts edge `i` and waits until it listens.
    fn start_edge(&mut self, i: usize) {
        let p = Proc::spawn(
            &format!("e{}", i + 1),
            self.net
                .cmd(&self.net.edges[i], EDGE)
                .arg("serve")
                .arg("--config")
                .arg(self.edge_yml(i)),
        );
        p.wait_line(": HTTP on ");
        self.edges[i] = Some(p);
    }

    fn issue_token(&self) -> String {
        let out = Command::new(EDGE)
            .arg("token")
            .arg("--config")
            .arg(self.edge_yml(0))
            .args(["--tunnel", "dev42", "--allow", HOST, "--expires", "1d"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Compiles the device config and starts the connector (without waiting).
    fn start_connector(&mut self, device: Device) {
        self.connector = Some(self.spawn_connector("connector", device));
    }

    /// Compiles the device config and starts a `mailslot run` named `name`.
    fn spawn_connector(&self, name: &str, device: Device) -> Proc {
        let edges = if device.edge_names {
            EDGE_NAMES
        } else {
            EDGE_IPS
        };
        let yaml = format!(
            "tunnel: dev42\ntoken: {}\nedge: [\"{}:7844\", \"{}:7844\"]\nedge-ca: {}\n\
             protocol: {}\nha-connections: 4\n{}\ningress:\n  - hostname: {HOST}\n    \
             service: http://127.0.0.1:8080\n  - service: http_status:404\n",
            self.token,
            edges[0],
            edges[1],
            self.edge_dir.path().join("ca.pem").display(),
            device.protocol.unwrap_or("auto"),
            device.extra_yaml,
        );
        let bin = compile(self.dev_dir.path(), &yaml);
        Proc::spawn(
            name,
            self.net
                .cmd(&self.net.device, MAILSLOT)
                .arg("run")
                .arg("--config")
                .arg(&bin),
        )
    }

    fn connector_alive(&mut self) -> bool {
        let c = self.connector.as_mut().expect("connector started");
        c.child.try_wait().unwrap().is_none()
    }

    fn connector(&self) -> &Proc {
        self.connector.as_ref().expect("connector running")
    }

    /// Starts the connector and waits for its four connections, two at each edge.
    fn connect(&mut self, device: Device) {
        self.start_connector(device);
        wait_spread(self.connector());
    }

    /// Starts a replica of the connector and waits for its four connections.
    fn connect_replica(&mut self, device: Device) {
        let r = self.spawn_connector("replica", device);
        wait_spread(&r);
        self.replica = Some(r);
    }

    /// Stops edge `i` (SIGTERM: it sends GoAway), keeps it down for `down`, starts it
    /// again; the time from its listening again to serving through it.
    fn restart_edge(&mut self, i: usize, down: Duration) -> Duration {
        let mut e = self.edges[i].take().unwrap();
        e.signal(15);
        let st = e
            .wait_exit(Duration::from_secs(10))
            .expect("the edge exits");
        assert!(st.success(), "edge exit status {st:?}");
        drop(e);
        thread::sleep(down);
        self.start_edge(i);
        self.wait_serving(i, Duration::from_secs(60))
            .unwrap_or_else(|| {
                panic!(
                    "not serving via e{}; log:\n{}",
                    i + 1,
                    self.connector().dump()
                )
            })
    }

    /// A visitor's GET through edge `i`: the status, or curl's error.
    fn get(&self, i: usize, path: &str, max_time: u32) -> Result<u16, String> {
        get_in(&self.net, i, path, max_time)
    }

    /// A visitor's download of the origin's file `name` through edge 1, within
    /// `max_time` seconds: the body, or curl's error.
    fn download(&self, name: &str, max_time: u32) -> Result<Vec<u8>, String> {
        let dir = TempDir::new("dl");
        let file = dir.path().join(name);
        let out = self
            .net
            .cmd(&self.net.visitor, "curl")
            .args(["-sS", "--max-time", &max_time.to_string()])
            .args(["-H", &format!("Host: {HOST}"), "-o"])
            .arg(&file)
            .arg(format!("http://{}/{name}", EDGE_IPS[0]))
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(std::fs::read(&file).unwrap())
    }

    /// Polls GET / through edge `i` until it answers 200; how long that took.
    fn wait_serving(&self, i: usize, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < within {
            if self.get(i, "/", 2) == Ok(200) {
                return Some(start.elapsed());
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

/// Waits for a connector's four connections, two at each edge.
fn wait_spread(c: &Proc) {
    for e in ["at edge e1", "at edge e2"] {
        c.wait_count(e, 2, WAIT)
            .unwrap_or_else(|| panic!("no two connections {e}; log:\n{}", c.dump()));
    }
}

fn get_in(net: &Net, i: usize, path: &str, max_time: u32) -> Result<u16, String> {
    get_in_names(&net.visitor, i, path, max_time)
}

/// One request of a [`Load`]: when it started, through which edge, its outcome.
type Sample = (Duration, usize, Result<u16, String>);

/// Requests through the given edges in a loop, in the background, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    start: Instant,
    thread: Option<thread::JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(scene: &Scene, edges: &'static [usize], max_time: u32) -> Load {
        Load::start_paths(scene, edges, &["/"], max_time)
    }

    /// Requests cycle through `paths` as well as `edges`.
    fn start_paths(
        scene: &Scene,
        edges: &'static [usize],
        paths: &'static [&'static str],
        max_time: u32,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let net_names = (scene.net.visitor.clone(), scene.net.edges.clone());
        let stop2 = stop.clone();
        let thread = thread::spawn(move || {
            let mut out = Vec::new();
            // Bounded: an hour of requests at most, whatever the test does.
            for n in 0..100_000usize {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let i = edges[n % edges.len()];
                let at = start.elapsed();
                let r = get_in_names(&net_names.0, i, paths[n % paths.len()], max_time);
                out.push((at, i, r));
                thread::sleep(Duration::from_millis(50));
            }
            out
        });
        Load {
            stop,
            start,
            thread: Some(thread),
        }
    }

    /// Stops and returns (time since start, edge, result) per request.
    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn get_in_names(visitor: &str, i: usize, path: &str, max_time: u32) -> Result<u16, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", visitor, "curl"])
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time"])
        .arg(max_time.to_string())
        .args(["-H", &format!("Host: {HOST}")])
        .arg(format!("http://{}{path}", EDGE_IPS[i]))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(format!(
            "curl: {} (status {code})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    code.parse().map_err(|_| format!("curl printed {code:?}"))
}

fn failures(results: &[Sample]) -> Vec<&Sample> {
    results.iter().filter(|(_, _, r)| *r != Ok(200)).collect()
}

macro_rules! need_root {
    ($name:expr) => {
        if !netns::available($name) {
            return;
        }
    };
}

/// Open ports in nmap's grepable output (`open|filtered` is not open).
fn open_ports(grepable: &str) -> Vec<String> {
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

fn nmap(net: &Net, from: &str, args: &str) -> String {
    let line = format!("timeout 600 nmap -n -Pn --max-retries 0 -oG - {args}");
    net.sh(from, &line)
}

#[test]
fn port_scans_find_nothing_open_while_the_service_is_reachable() {
    need_root!("port_scans_find_nothing_open_while_the_service_is_reachable");
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
fn udp_blocked_then_unblocked() -> (Duration, Duration) {
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

#[test]
fn udp_blocked_falls_back_to_http2_and_returns_to_quic() {
    need_root!("udp_blocked_falls_back_to_http2_and_returns_to_quic");
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

/// SIGKILL one edge while visitors use the other; the last failure after the kill
/// (`None`: none failed).
fn edge_killed() -> Option<Duration> {
    let mut s = Scene::new();
    s.connect(Device::default());
    let load = Load::start(&s, &[1], 3);
    thread::sleep(Duration::from_secs(2));
    let killed_at = load.start.elapsed();
    let mut e1 = s.edges[0].take().unwrap();
    e1.signal(9);
    e1.wait_exit(Duration::from_secs(5)).expect("edge 1 exits");
    thread::sleep(Duration::from_secs(5));
    let results = load.finish();
    let after: Vec<_> = results.iter().filter(|(t, _, _)| *t >= killed_at).collect();
    assert!(after.len() >= 10, "too few requests: {}", after.len());
    after
        .iter()
        .filter(|(_, _, r)| *r != Ok(200))
        .map(|(t, _, _)| *t - killed_at)
        .max()
}

#[test]
fn killing_one_edge_leaves_the_other_serving() {
    need_root!("killing_one_edge_leaves_the_other_serving");
    let last_failure = edge_killed();
    eprintln!("measured: last failed request via the other edge after the kill: {last_failure:?}");
    if let Some(t) = last_failure {
        assert!(
            t <= Duration::from_secs(1),
            "requests failed {t:?} after the kill"
        );
    }
}

/// Stops edge 1 (SIGTERM: it sends GoAway), keeps it down for `down`, starts it again;
/// the time from its listening again to serving through it.
fn edge_restarted(down: Duration) -> Duration {
    let mut s = Scene::new();
    s.connect(Device::default());
    let t = s.restart_edge(0, down);
    assert_eq!(s.get(1, "/", 5), Ok(200));
    // The quick retries while the edge was down were many; the log has one line each
    // for its two slots (slots 0 and 2 are on edge 1).
    let c = s.connector();
    for slot in [0, 2] {
        let lines = retry_lines(c, slot);
        assert_eq!(
            lines,
            1,
            "connection {slot}: {lines} retry lines\n{}",
            c.dump()
        );
    }
    // UDP was never blocked: the quick retries' short QUIC wait must not claim it was.
    assert_eq!(c.count("seems blocked"), 0, "{}", c.dump());
    t
}

/// Lines where connection `slot` says it is retrying.
fn retry_lines(c: &Proc, slot: usize) -> usize {
    let log = c.log.lock().unwrap();
    log.iter()
        .filter(|l| l.contains(&format!("connection {slot}: ")) && l.contains("retrying"))
        .count()
}

#[test]
fn a_restarted_edge_serves_again_within_2s() {
    need_root!("a_restarted_edge_serves_again_within_2s");
    let t = edge_restarted(Duration::from_secs(6));
    eprintln!(
        "measured: serving through a restarted edge {:.2}s after it listens",
        t.as_secs_f32()
    );
    assert!(t <= Duration::from_secs(2), "took {t:?}");
}

#[test]
fn requests_succeed_with_loss_and_delay_at_the_nat() {
    need_root!("requests_succeed_with_loss_and_delay_at_the_nat");
    let has_nfq = Command::new("python3")
        .args(["-c", "import netfilterqueue"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !has_nfq {
        eprintln!("SKIPPED: python3 module netfilterqueue (PyPI NetfilterQueue) is missing");
        return;
    }
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

#[test]
fn quic_survives_nat_rebinding() {
    need_root!("quic_survives_nat_rebinding");
    let mut s = Scene::new();
    s.connect(Device::default());
    let c = s.connector();
    assert_eq!(c.count("over quic"), 4, "{}", c.dump());
    let load = Load::start(&s, &[0, 1], 30);
    thread::sleep(Duration::from_secs(2));
    s.net.sh(
        &s.net.nat,
        &format!(
            "iptables -t nat -R POSTROUTING 1 -o wan0 -p udp -j MASQUERADE --to-ports {} && \
             conntrack -D -p udp >/dev/null 2>&1; true",
            NAT_UDP_PORTS[1]
        ),
    );
    // Traffic goes on; the flows now leave from the new port window.
    thread::sleep(Duration::from_secs(20));
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
    let failed = failures(&results);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        results.len()
    );
    let c = s.connector();
    assert_eq!(c.count("lost edge"), 0, "{}", c.dump());
    let slowest = results
        .windows(2)
        .map(|w| w[1].0.saturating_sub(w[0].0))
        .max()
        .unwrap_or_default();
    eprintln!(
        "measured: {} requests across a NAT rebinding, none failed; longest gap {:.2}s",
        results.len(),
        slowest.as_secs_f32()
    );
}

#[test]
fn a_jumbo_frame_lan_behind_a_narrow_uplink_still_carries_bulk_downloads() {
    need_root!("a_jumbo_frame_lan_behind_a_narrow_uplink_still_carries_bulk_downloads");
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

/// A visitor's POST of a few bytes through edge `i`: the status, or curl's error.
fn post_names(visitor: &str, i: usize, path: &str, max_time: u32) -> Result<u16, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", visitor, "curl"])
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time"])
        .arg(max_time.to_string())
        .args(["-H", &format!("Host: {HOST}"), "--data", "order=1"])
        .arg(format!("http://{}{path}", EDGE_IPS[i]))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(format!(
            "curl: {} (status {code})",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    code.parse().map_err(|_| format!("curl printed {code:?}"))
}

/// What a replica's death cost the visitors.
struct ReplicaKill {
    /// GETs started after the kill, and the slowest of them.
    gets: usize,
    slowest_get: Duration,
    /// POSTs sent just after the kill, and how many the edge answered 502 without the
    /// origin ever seeing them (they hit a dead connection and were not replayed).
    posts: usize,
    posts_refused: usize,
    /// Requests the edges moved to another connection.
    retried: usize,
}

/// Two connectors share the token (replicas); one is SIGKILLed: no goodbye, and over
/// QUIC the edges hear nothing from its connections until their idle timeout. GETs
/// through edge 1 (keep-alive pooled streams and new ones alternately) must all succeed,
/// retried on the replica that lives; POSTs through edge 2 that hit a dead connection
/// must not be replayed.
fn replica_killed(protocol: &'static str) -> ReplicaKill {
    let mut s = Scene::new();
    // A short idle timeout bounds how long a POST on a dead connection waits.
    let device = Device {
        extra_yaml: "keepalive: 3s\nidle-timeout: 10s\n",
        protocol: Some(protocol),
        ..Device::default()
    };
    s.connect(device);
    s.connect_replica(device);
    let over = format!("over {protocol}");
    assert_eq!(s.connector().count(&over), 4, "{}", s.connector().dump());
    // Each edge holds four connections (two per replica): two requests on each leave
    // an idle pooled stream everywhere.
    for i in [0, 1] {
        for _ in 0..8 {
            assert_eq!(s.get(i, "/", 5), Ok(200));
        }
    }
    let load = Load::start_paths(&s, &[0], &["/", "/?close"], 15);
    thread::sleep(Duration::from_secs(2));
    let killed_at = load.start.elapsed();
    let mut victim = s.connector.take().unwrap();
    victim.signal(9);
    victim
        .wait_exit(Duration::from_secs(5))
        .expect("replica exits");
    // Four POSTs at once through edge 2: round robin sends one to each of its four
    // connections, two of them dead.
    let posts: Vec<_> = (0..4)
        .map(|n| {
            let net_visitor = s.net.visitor.clone();
            let path = format!("/post/{n}");
            thread::spawn(move || {
                let r = post_names(&net_visitor, 1, &path, 30);
                (path, r)
            })
        })
        .collect();
    let posts: Vec<(String, Result<u16, String>)> =
        posts.into_iter().map(|t| t.join().unwrap()).collect();
    thread::sleep(Duration::from_secs(2));
    let results = load.finish();
    let after: Vec<_> = results.iter().filter(|(t, _, _)| *t >= killed_at).collect();
    assert!(
        after.len() >= 10,
        "too few GETs after the kill: {}",
        after.len()
    );
    let failed: Vec<_> = after.iter().filter(|(_, _, r)| *r != Ok(200)).collect();
    let edge_logs = || {
        s.edges
            .iter()
            .flatten()
            .map(|e| e.dump())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        failed.is_empty(),
        "{} of {} GETs after the kill failed: {failed:?}\nedges:\n{}",
        failed.len(),
        after.len(),
        edge_logs()
    );
    let mut refused = 0;
    for (path, r) in &posts {
        let seen = s.origin.count(&format!("\"POST {path} "));
        match r {
            Ok(200) => assert_eq!(seen, 1, "{path}: answered 200, origin saw it {seen} times"),
            other => {
                assert_eq!(
                    seen, 0,
                    "{path}: answered {other:?}, origin saw it {seen} times"
                );
                refused += 1;
            }
        }
    }
    let retried = s
        .edges
        .iter()
        .flatten()
        .map(|e| e.count("retrying on another"))
        .sum();
    // Requests run back to back: the longest gap between starts bounds the slowest.
    let slowest_get = after
        .windows(2)
        .map(|w| w[1].0.saturating_sub(w[0].0))
        .max()
        .unwrap_or_default();
    eprintln!("POSTs just after the kill: {posts:?}");
    ReplicaKill {
        gets: after.len(),
        slowest_get,
        posts: posts.len(),
        posts_refused: refused,
        retried,
    }
}

#[test]
fn a_killed_replica_costs_no_get_and_replays_no_post_quic() {
    need_root!("a_killed_replica_costs_no_get_and_replays_no_post_quic");
    let r = replica_killed("quic");
    eprintln!(
        "measured (QUIC): {} GETs after SIGKILL of one replica, none failed, slowest {:.2}s; \
         {} retried on another connection; {} of {} POSTs hit a dead connection: 502, not replayed",
        r.gets,
        r.slowest_get.as_secs_f32(),
        r.retried,
        r.posts_refused,
        r.posts
    );
    assert!(r.retried >= 1, "no GET hit a dead connection");
    assert!(r.posts_refused >= 1, "no POST hit a dead connection");
}

#[test]
fn a_killed_replica_costs_no_get_and_replays_no_post_http2() {
    need_root!("a_killed_replica_costs_no_get_and_replays_no_post_http2");
    let r = replica_killed("http2");
    eprintln!(
        "measured (HTTP/2): {} GETs after SIGKILL of one replica, none failed, slowest {:.2}s; \
         {} retried on another connection; {} of {} POSTs refused, none replayed",
        r.gets,
        r.slowest_get.as_secs_f32(),
        r.retried,
        r.posts_refused,
        r.posts
    );
}

#[test]
fn dns_failure_keeps_the_last_good_addresses() {
    need_root!("dns_failure_keeps_the_last_good_addresses");
    let mut s = Scene::new();
    let dev = s.net.device.clone();
    let hosts = format!(
        "127.0.0.1 localhost\n{} {}\n{} {}\n",
        EDGE_IPS[0], EDGE_NAMES[0], EDGE_IPS[1], EDGE_NAMES[1]
    );
    // The device's own resolver: its hosts file, then a DNS server that is not there
    // (loopback, refused at once). Nothing leaves the namespaces.
    s.net.etc(&dev, "nsswitch.conf", "hosts: files dns\n");
    s.net.etc(
        &dev,
        "resolv.conf",
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    );
    s.net.etc(&dev, "hosts", &hosts);
    s.connect(Device {
        edge_names: true,
        ..Device::default()
    });
    // DNS fails from now on.
    s.net.etc(&dev, "hosts", "127.0.0.1 localhost\n");
    let lookup = s
        .net
        .sh_status(&dev, &format!("getent hosts {}", EDGE_NAMES[0]));
    assert!(!lookup.status.success(), "{} still resolves", EDGE_NAMES[0]);
    // Each connection attempt to edge 1 ends in one TCP SYN (QUIC gets no answer, the
    // HTTP/2 fallback is refused), and each attempt resolves the name first.
    s.net.sh(
        &dev,
        &format!(
            "iptables -A OUTPUT -p tcp -d {} --dport 7844 --syn",
            EDGE_IPS[0]
        ),
    );
    let t = s.restart_edge(0, Duration::from_secs(4));
    let counters = s.net.sh(&dev, "iptables -L OUTPUT -v -x -n");
    let attempts: u64 = counters
        .lines()
        .find(|l| l.contains(EDGE_IPS[0]) && l.contains("dpt:7844"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter:\n{counters}"));
    let c = s.connector();
    c.wait_count("registered: tunnel", 6, WAIT)
        .unwrap_or_else(|| panic!("edge 1's connections did not return:\n{}", c.dump()));
    let failed = format!("cannot resolve edge {}", EDGE_NAMES[0]);
    assert!(attempts >= 3, "only {attempts} attempts:\n{}", c.dump());
    assert_eq!(c.count(&failed), 1, "{}", c.dump());
    let line = c
        .dump()
        .lines()
        .find(|l| l.contains(&failed))
        .map(String::from)
        .unwrap_or_default();
    assert!(
        line.contains(&format!(
            "using its last known addresses ({}:7844)",
            EDGE_IPS[0]
        )),
        "{line}"
    );
    // DNS works again: said once too.
    s.net.etc(&dev, "hosts", &hosts);
    s.restart_edge(0, Duration::from_secs(1));
    let c = s.connector();
    let again = format!("edge {}:7844 resolves again", EDGE_NAMES[0]);
    c.wait_count(&again, 1, WAIT)
        .unwrap_or_else(|| panic!("no {again:?}:\n{}", c.dump()));
    assert_eq!(c.count(&again), 1, "{}", c.dump());
    assert_eq!(c.count("seems blocked"), 0, "{}", c.dump());
    eprintln!(
        "measured: DNS failing, {attempts} attempts to reach restarted edge 1 by its last \
         known address, serving {:.2}s after it listened; one log line: {line}",
        t.as_secs_f32()
    );
}

/// Edge 1 is SIGKILLed and stays down: after the quick-retry window its two slots
/// connect to edge 2, so the tunnel keeps four connections; once edge 1 is back they
/// move back to it. Returns (kill to both slots on edge 2, edge 1 listening to both
/// back on it).
fn edge_down_for_long() -> (Duration, Duration) {
    let mut s = Scene::new();
    // A short idle timeout: the connector notices the dead edge after 10 s, not 45 s.
    let device = Device {
        extra_yaml: "keepalive: 3s\nidle-timeout: 10s\n",
        ..Device::default()
    };
    s.connect(device);
    let mut e1 = s.edges[0].take().unwrap();
    e1.signal(9);
    e1.wait_exit(Duration::from_secs(5)).expect("edge 1 exits");
    let killed = Instant::now();
    let c = s.connector();
    let lent = c
        .wait_count("until it answers again", 2, Duration::from_secs(90))
        .map(|_| killed.elapsed())
        .unwrap_or_else(|| panic!("slots stayed on the dead edge:\n{}", c.dump()));
    assert_eq!(c.count("at edge e2"), 4, "{}", c.dump());
    assert_eq!(s.get(1, "/", 5), Ok(200));
    // Minutes of retries for two slots, a few lines: the loss with the quick window's
    // promise, maybe a backoff line, the move.
    for slot in [0, 2] {
        let lines = retry_lines(c, slot);
        assert!(
            lines <= 3,
            "connection {slot}: {lines} retry lines\n{}",
            c.dump()
        );
    }
    s.start_edge(0);
    let listening = Instant::now();
    let c = s.connector();
    let back = c
        .wait_count("moved back from edge", 2, Duration::from_secs(60))
        .map(|_| listening.elapsed())
        .unwrap_or_else(|| panic!("slots did not move back:\n{}", c.dump()));
    assert!(s.wait_serving(0, WAIT).is_some());
    assert_eq!(s.get(1, "/", 5), Ok(200));
    (lent, back)
}

#[test]
fn slots_of_a_dead_edge_serve_through_the_live_one_until_it_returns() {
    need_root!("slots_of_a_dead_edge_serve_through_the_live_one_until_it_returns");
    let (lent, back) = edge_down_for_long();
    eprintln!(
        "measured: edge 1 killed: its slots on edge 2 after {:.1}s (idle timeout 10 s + \
         30 s of quick retries); back on edge 1 {:.1}s after it listened",
        lent.as_secs_f32(),
        back.as_secs_f32()
    );
    assert!(lent <= Duration::from_secs(60), "took {lent:?}");
    assert!(back <= Duration::from_secs(40), "took {back:?}");
}

/// Cuts the NAT's forwarding for `cut`; the time from restoring it to serving.
fn outage(cut: Duration) -> Duration {
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

#[test]
fn serves_again_after_minutes_of_outage() {
    need_root!("serves_again_after_minutes_of_outage");
    let back = outage(Duration::from_secs(150));
    eprintln!(
        "measured: serving {:.1}s after a 150 s outage ended",
        back.as_secs_f32()
    );
    assert!(back <= Duration::from_secs(45), "took {back:?}");
}

#[test]
fn boots_without_a_network_and_connects_once_it_appears() {
    need_root!("boots_without_a_network_and_connects_once_it_appears");
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

#[test]
fn sigterm_lets_a_download_finish_and_exits_0() {
    need_root!("sigterm_lets_a_download_finish_and_exits_0");
    let mut s = Scene::new();
    s.connect(Device::default());
    let dir = TempDir::new("dl");
    let file = dir.path().join("big.bin");
    // 24 MiB at 3 MiB/s: about 8 s in flight.
    let mut dl = Proc::spawn(
        "download",
        s.net
            .cmd(&s.net.visitor, "curl")
            .args(["-sS", "--limit-rate", "3M", "--max-time", "60"])
            .args(["-H", &format!("Host: {HOST}"), "-w", "%{http_code}\n"])
            .arg("-o")
            .arg(&file)
            .arg(format!("http://{}/big.bin", EDGE_IPS[0])),
    );
    let started = Instant::now();
    while std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0) < 1024 * 1024 {
        assert!(started.elapsed() < WAIT, "the download did not start");
        thread::sleep(Duration::from_millis(20));
    }
    let mut c = s.connector.take().unwrap();
    c.signal(15);
    let term = Instant::now();
    c.wait_line("draining");
    // New requests during the drain: the only connector is leaving, so the edge says
    // the tunnel is offline (502) rather than hanging.
    let during = s.get(1, "/", 5);
    let st = c
        .wait_exit(Duration::from_secs(35))
        .expect("exits within the grace period");
    let exit_after = term.elapsed();
    assert_eq!(st.code(), Some(0), "{}", c.dump());
    let dst = dl
        .wait_exit(Duration::from_secs(60))
        .expect("download ends");
    assert!(dst.success(), "{}", dl.dump());
    assert_eq!(dl.count("200"), 1, "{}", dl.dump());
    let body = std::fs::read(&file).unwrap();
    assert_eq!(body.len() as u64, BIG);
    assert_eq!(sha256_hex(&body), sha256_hex(&pattern(BIG)));
    eprintln!(
        "measured: download completed during the drain; connector exited 0 {:.1}s after \
         SIGTERM; a new request during the drain got {during:?}",
        exit_after.as_secs_f32()
    );
    assert!(exit_after <= Duration::from_secs(32));
}

/// Repeats the timing scenarios and prints the figures (for the README).
#[test]
#[ignore]
fn bench() {
    need_root!("bench");
    let runs = 3;
    let fmt = |v: &mut Vec<f32>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        format!(
            "min {:.2}s  median {:.2}s  max {:.2}s",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        )
    };
    let (mut fallback, mut back, mut restart) = (Vec::new(), Vec::new(), Vec::new());
    let mut failover = Vec::new();
    let (mut replica, mut lent, mut returned) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let (f, b) = udp_blocked_then_unblocked();
        fallback.push(f.as_secs_f32());
        back.push(b.as_secs_f32());
        restart.push(edge_restarted(Duration::from_secs(6)).as_secs_f32());
        failover.push(edge_killed().map_or(0.0, |d| d.as_secs_f32()));
        replica.push(replica_killed("quic").slowest_get.as_secs_f32());
        let (l, r) = edge_down_for_long();
        lent.push(l.as_secs_f32());
        returned.push(r.as_secs_f32());
    }
    println!("scenario figures over {runs} runs:");
    println!(
        "  HTTP/2 fallback (start to serving, UDP blocked): {}",
        fmt(&mut fallback)
    );
    println!(
        "  return to QUIC after unblocking UDP:             {}",
        fmt(&mut back)
    );
    println!(
        "  serving via a restarted edge after it listens:   {}",
        fmt(&mut restart)
    );
    println!(
        "  failed requests via the other edge after a kill: {}",
        fmt(&mut failover)
    );
    println!(
        "  longest GET gap after a replica's SIGKILL (QUIC): {}",
        fmt(&mut replica)
    );
    println!(
        "  dead edge's slots on the other edge after kill:  {}",
        fmt(&mut lent)
    );
    println!(
        "  slots back on a returned edge after it listens:  {}",
        fmt(&mut returned)
    );
}
