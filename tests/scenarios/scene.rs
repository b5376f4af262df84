//! The scenes the scenarios play in: namespaces (see `tests/netns`), an origin and two
//! edges, a connector started on demand; visitors' requests and background load.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::netns::*;

pub const HOST: &str = "dev42.example.com";
/// Size of the file the device's origin serves for long downloads.
pub const BIG: u64 = 24 * 1024 * 1024;
/// Size of the file downloaded over a lossy, slow path.
pub const MID: u64 = 1024 * 1024;

/// One test's world: namespaces, origin, edges and (once started) the connector.
/// Fields drop in order: processes first, the namespaces last.
pub struct Scene {
    pub connector: Option<Proc>,
    /// A second connector with the same config and token (a replica), when started.
    pub replica: Option<Proc>,
    pub edges: [Option<Proc>; 2],
    pub helpers: Vec<Proc>,
    pub origin: Proc,
    pub edge_dir: TempDir,
    pub dev_dir: TempDir,
    /// The tunnel token, shared by the connector and its replica.
    pub token: String,
    _www: TempDir,
    pub net: Net,
}

/// Device config keys added to the standard ones.
#[derive(Default, Clone, Copy)]
pub struct Device {
    pub extra_yaml: &'static str,
    /// `protocol:` (`auto` when `None`).
    pub protocol: Option<&'static str>,
    /// Name the edges by [`EDGE_NAMES`] instead of their addresses.
    pub edge_names: bool,
    /// `ha-connections:` (4 when `None`).
    pub ha_connections: Option<u8>,
    /// Environment of the connector process.
    pub env: &'static [(&'static str, &'static str)],
}

/// The keep-alive of a metered device in these scenarios: 300 s in the field
/// (`config::METERED_KEEPALIVE_SECS`), shortened through
/// `MAILSLOT_TEST_METERED_KEEPALIVE_SECS` so that a scenario waits seconds, not minutes.
/// Every metered bound is written in terms of it.
pub const METERED_KEEPALIVE: Duration = Duration::from_secs(10);
/// The metered device's `idle-timeout`: a keep-alive unanswered this long ends its
/// connection.
pub const METERED_IDLE: Duration = Duration::from_secs(10);
/// A reconnection once the connector knows its connection is gone: a quick retry (at
/// most 300 ms), TCP, TLS and HTTP/2 handshakes and the registration, with room for a
/// loaded machine.
pub const METERED_RECONNECT: Duration = Duration::from_secs(5);

impl Device {
    /// The metered profile (`metered: true`: one HTTP/2 connection, keep-alive every
    /// [`METERED_KEEPALIVE`], health hourly).
    pub fn metered() -> Device {
        Device {
            // `keepalive` below the metered floor: the floor (the env override) rules.
            extra_yaml: "metered: true
keepalive: 1s
idle-timeout: 10s
",
            env: &[("MAILSLOT_TEST_METERED_KEEPALIVE_SECS", "10")],
            ..Device::default()
        }
    }
}

/// Each edge's admin listener, on the loopback of its own namespace.
pub const ADMIN: &str = "127.0.0.1:9090";

/// Names of the edges, resolved only where a test sets up name resolution.
pub const EDGE_NAMES: [&str; 2] = ["e1.mailslot.test", "e2.mailslot.test"];

impl Scene {
    /// Namespaces, origin and both edges; the connector is started separately.
    pub fn new() -> Scene {
        let net = Net::new();
        let www = TempDir::new("www");
        std::fs::write(www.path().join("index.html"), "hello from the device\n").unwrap();
        std::fs::write(www.path().join("big.bin"), pattern(BIG)).unwrap();
        std::fs::write(www.path().join("mid.bin"), pattern(MID)).unwrap();
        let origin = spawn_origin(&net, &net.device, "origin", www.path());
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
                     https-listen: none\ncert: edge.crt\nkey: edge.key\nsigning-key: signing.key\n\
                     admin-listen: {ADMIN}\nfleet:\n  store: fleet{}.redb\n",
                    i + 1,
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

    pub fn edge_yml(&self, i: usize) -> PathBuf {
        self.edge_dir.path().join(format!("edge{}.yml", i + 1))
    }

    /// Starts edge `i` and waits until it listens.
    pub fn start_edge(&mut self, i: usize) {
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

    pub fn issue_token(&self) -> String {
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
    pub fn start_connector(&mut self, device: Device) {
        self.connector = Some(self.spawn_connector("connector", device));
    }

    /// Compiles the device config and starts a `mailslot run` named `name`.
    pub fn spawn_connector(&self, name: &str, device: Device) -> Proc {
        let edges = if device.edge_names {
            EDGE_NAMES
        } else {
            EDGE_IPS
        };
        let yaml = format!(
            "tunnel: dev42\ntoken: {}\nedge: [\"{}:7844\", \"{}:7844\"]\nedge-ca: {}\n\
             protocol: {}\nha-connections: {}\n{}\ningress:\n  - hostname: {HOST}\n    \
             service: http://127.0.0.1:8080\n  - service: http_status:404\n",
            self.token,
            edges[0],
            edges[1],
            self.edge_dir.path().join("ca.pem").display(),
            device.protocol.unwrap_or("auto"),
            device.ha_connections.unwrap_or(4),
            device.extra_yaml,
        );
        let bin = compile(self.dev_dir.path(), &yaml);
        Proc::spawn(
            name,
            self.net
                .cmd(&self.net.device, MAILSLOT)
                .arg("run")
                .arg("--config")
                .arg(&bin)
                .envs(device.env.iter().copied()),
        )
    }

    /// Starts a metered connector ([`Device::metered`]) and waits for its one
    /// connection, over HTTP/2 at edge 1.
    pub fn connect_metered(&mut self) {
        self.start_connector(Device::metered());
        let c = self.connector();
        c.wait_line("registered: ");
        let log = c.dump();
        assert!(
            log.contains("at edge e1") && log.contains("over http2"),
            "not one HTTP/2 connection at e1: {log}"
        );
    }

    pub fn connector_alive(&mut self) -> bool {
        let c = self.connector.as_mut().expect("connector started");
        c.child.try_wait().unwrap().is_none()
    }

    pub fn connector(&self) -> &Proc {
        self.connector.as_ref().expect("connector running")
    }

    /// Starts the connector and waits for its four connections, two at each edge.
    pub fn connect(&mut self, device: Device) {
        self.start_connector(device);
        wait_spread(self.connector());
    }

    /// Starts a replica of the connector and waits for its four connections.
    pub fn connect_replica(&mut self, device: Device) {
        let r = self.spawn_connector("replica", device);
        wait_spread(&r);
        self.replica = Some(r);
    }

    /// Stops edge `i` (SIGTERM: it sends GoAway), keeps it down for `down`, starts it
    /// again; the time from its listening again to serving through it.
    pub fn restart_edge(&mut self, i: usize, down: Duration) -> Duration {
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
    pub fn get(&self, i: usize, path: &str, max_time: u32) -> Result<u16, String> {
        get_in(&self.net, i, path, max_time)
    }

    /// A visitor's download of the origin's file `name` through edge 1, within
    /// `max_time` seconds: the body, or curl's error.
    pub fn download(&self, name: &str, max_time: u32) -> Result<Vec<u8>, String> {
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

    /// The connections edge `i` lists for the tunnel (its admin `/tunnels`), one line each.
    pub fn tunnel_lines(&self, i: usize) -> Vec<String> {
        self.net
            .sh(
                &self.net.edges[i],
                &format!("curl -sS --max-time 5 http://{ADMIN}/tunnels"),
            )
            .lines()
            .filter(|l| l.starts_with("tunnel=dev42 "))
            .map(String::from)
            .collect()
    }

    /// Polls GET / through edge `i` until it answers 200; how long that took.
    pub fn wait_serving(&self, i: usize, within: Duration) -> Option<Duration> {
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

/// The device's origin (`tests/netns/origin.py`) in namespace `ns` on 127.0.0.1:8080,
/// serving `www`; returns once it listens.
pub fn spawn_origin(net: &Net, ns: &str, name: &str, www: &std::path::Path) -> Proc {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/netns/origin.py");
    let origin = Proc::spawn(
        name,
        net.cmd(ns, "python3")
            .arg("-u")
            .arg(&script)
            .arg("8080")
            .arg(www),
    );
    origin.wait_line("Serving HTTP");
    origin
}

/// Waits for a connector's four connections, two at each edge.
pub fn wait_spread(c: &Proc) {
    for e in ["at edge e1", "at edge e2"] {
        c.wait_count(e, 2, WAIT)
            .unwrap_or_else(|| panic!("no two connections {e}; log:\n{}", c.dump()));
    }
}

pub fn get_in(net: &Net, i: usize, path: &str, max_time: u32) -> Result<u16, String> {
    get_in_names(&net.visitor, i, path, max_time)
}

/// One request of a [`Load`]: when it started, through which edge, its outcome.
pub type Sample = (Duration, usize, Result<u16, String>);

/// Requests through the given edges in a loop, in the background, until stopped.
pub struct Load {
    pub stop: Arc<AtomicBool>,
    pub start: Instant,
    pub thread: Option<thread::JoinHandle<Vec<Sample>>>,
}

impl Load {
    pub fn start(scene: &Scene, edges: &'static [usize], max_time: u32) -> Load {
        Load::start_paths(scene, edges, &["/"], max_time)
    }

    /// Requests cycle through `paths` as well as `edges`.
    pub fn start_paths(
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
    pub fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

pub fn get_in_names(visitor: &str, i: usize, path: &str, max_time: u32) -> Result<u16, String> {
    status_in_names(visitor, i, path, max_time, &[])
}

/// A visitor's request through edge `i` (curl with `extra` arguments): the status, or
/// curl's error.
fn status_in_names(
    visitor: &str,
    i: usize,
    path: &str,
    max_time: u32,
    extra: &[&str],
) -> Result<u16, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", visitor, "curl"])
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time"])
        .arg(max_time.to_string())
        .args(["-H", &format!("Host: {HOST}")])
        .args(extra)
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

pub fn failures(results: &[Sample]) -> Vec<&Sample> {
    results.iter().filter(|(_, _, r)| *r != Ok(200)).collect()
}

/// Lines where connection `slot` says it is retrying.
pub fn retry_lines(c: &Proc, slot: usize) -> usize {
    let log = c.log.lock().unwrap();
    log.iter()
        .filter(|l| l.contains(&format!("connection {slot}: ")) && l.contains("retrying"))
        .count()
}

/// A visitor's POST of a few bytes through edge `i`: the status, or curl's error.
pub fn post_names(visitor: &str, i: usize, path: &str, max_time: u32) -> Result<u16, String> {
    status_in_names(visitor, i, path, max_time, &["--data", "order=1"])
}
