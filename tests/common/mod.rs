//! Test harness: real `mailslot-edge` and `mailslot` processes, a real origin, real
//! clients. Everything binds port 0 on loopback; readiness is read from the processes'
//! own log lines, never guessed with sleeps.

#![allow(dead_code)]

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub const EDGE: &str = env!("CARGO_BIN_EXE_mailslot-edge");
pub const MAILSLOT: &str = env!("CARGO_BIN_EXE_mailslot");
/// Longest wait for any expected event.
pub const WAIT: Duration = Duration::from_secs(20);

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "mailslot-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

fn addr_after(line: &str, marker: &str) -> SocketAddr {
    let rest = &line[line.find(marker).unwrap() + marker.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// A running edge with its folder.
pub struct EdgeProc {
    pub dir: TempDir,
    pub proc: Proc,
    pub tunnel: SocketAddr,
    pub http: SocketAddr,
    pub https: SocketAddr,
}

/// `mailslot-edge init` into a fresh folder, listeners rewritten to port 0.
pub fn init_edge(extra_yaml: &str) -> TempDir {
    let dir = TempDir::new("edge");
    let st = Command::new(EDGE)
        .args(["init", "--dir"])
        .arg(dir.path())
        .args(["--hostname", "127.0.0.1", "--hostname", "localhost"])
        .args([
            "--hostname",
            "dev42.example.com",
            "--hostname",
            "*.dev42.example.com",
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let yml = dir.path().join("edge.yml");
    let text = std::fs::read_to_string(&yml).unwrap();
    let overridden: Vec<&str> = extra_yaml
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, _)| k))
        .collect();
    let text = text
        .lines()
        .filter(|l| !overridden.iter().any(|k| l.starts_with(&format!("{k}:"))))
        .map(|l| {
            if l.starts_with("tunnel-listen:") {
                "tunnel-listen: 127.0.0.1:0".to_string()
            } else if l.starts_with("http-listen:") {
                "http-listen: 127.0.0.1:0".to_string()
            } else if l.starts_with("https-listen:") {
                "https-listen: 127.0.0.1:0".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&yml, format!("{text}\n{extra_yaml}\n")).unwrap();
    dir
}

/// Starts `mailslot-edge serve` on a folder made by [`init_edge`].
pub fn start_edge(dir: TempDir) -> EdgeProc {
    let proc = Proc::spawn(
        "edge",
        Command::new(EDGE)
            .arg("serve")
            .arg("--config")
            .arg(dir.path().join("edge.yml")),
    );
    let tunnel = addr_after(
        &proc.wait_line("tunnel listener on udp "),
        "tunnel listener on udp ",
    );
    let http = addr_after(&proc.wait_line(": HTTP on "), ": HTTP on ");
    let https = addr_after(&proc.wait_line(": HTTPS on "), ": HTTPS on ");
    EdgeProc {
        dir,
        proc,
        tunnel,
        http,
        https,
    }
}

impl EdgeProc {
    /// `mailslot-edge token` for this edge.
    pub fn token(&self, tunnel: &str, allow: &[&str], expires: &str) -> String {
        let mut cmd = Command::new(EDGE);
        cmd.arg("token")
            .arg("--config")
            .arg(self.dir.path().join("edge.yml"));
        cmd.args(["--tunnel", tunnel, "--expires", expires]);
        for a in allow {
            cmd.args(["--allow", a]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// Compiles a device YAML (written into `dir`) into `dir/config.bin`.
pub fn compile(dir: &Path, yaml: &str) -> PathBuf {
    let yml = dir.join("config.yml");
    std::fs::write(&yml, yaml).unwrap();
    let bin = dir.join("config.bin");
    let out = Command::new(MAILSLOT)
        .args(["config", "compile"])
        .arg(&yml)
        .arg("--output")
        .arg(&bin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compile failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// Starts `mailslot run` and waits until `conns` connections registered.
pub fn start_connector(dir: &Path, yaml: &str, conns: usize) -> Proc {
    let bin = compile(dir, yaml);
    let p = Proc::spawn(
        "connector",
        Command::new(MAILSLOT).arg("run").arg("--config").arg(&bin),
    );
    p.wait_lines("registered: tunnel", conns);
    p
}

/// The standard device YAML: `rules` are YAML ingress list items.
pub fn device_yaml(edge: &EdgeProc, token: &str, ha: usize, rules: &str) -> String {
    device_yaml_with(
        &edge.tunnel.to_string(),
        &edge.ca(),
        "quic",
        token,
        ha,
        rules,
    )
}

/// A device YAML for any edge address and protocol.
pub fn device_yaml_with(
    edge: &str,
    ca: &Path,
    protocol: &str,
    token: &str,
    ha: usize,
    rules: &str,
) -> String {
    format!(
        "tunnel: dev42\ntoken: {token}\nedge: [\"{edge}\"]\nedge-ca: {}\nprotocol: {protocol}\nha-connections: {ha}\ningress:\n{rules}",
        ca.display()
    )
}

/// A real HTTP origin on loopback, counting what it receives.
pub struct Origin {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(2654435761) >> 7) as u8
}

/// The bytes `/bytes/N` serves.
pub fn pattern(n: u64) -> Vec<u8> {
    (0..n).map(pattern_byte).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

type OBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn origin_handle(
    name: String,
    req: Request<Incoming>,
    conns: Arc<AtomicUsize>,
) -> Response<OBody> {
    let path = req.uri().path().to_string();
    let text = |s: String| Response::new(Full::new(Bytes::from(s)).boxed());
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap_or(0);
        // Streamed in 64 KiB chunks: the origin never holds the whole body.
        let mut r = Response::new(ChunkStream { pos: 0, end: n }.boxed());
        r.headers_mut()
            .insert("content-length", n.to_string().parse().unwrap());
        return r;
    }
    match path.as_str() {
        "/sha256" => {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let mut len = 0usize;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return text("body error".into());
                };
                if let Ok(d) = frame.into_data() {
                    len += d.len();
                    ctx.update(&d);
                }
            }
            text(format!("{} {len}", hex(ctx.finish().as_ref())))
        }
        p if p.starts_with("/delay/") => {
            let ms: u64 = p["/delay/".len()..].parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms.min(30_000))).await;
            text("done".into())
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            text("late".into())
        }
        "/headers" => {
            let mut s = String::new();
            for (k, v) in req.headers() {
                s.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            text(s)
        }
        "/connections" => text(conns.load(Ordering::SeqCst).to_string()),
        _ => text(format!("origin {name} {path}")),
    }
}

/// The body of `/bytes/N`, produced in 64 KiB chunks.
pub struct ChunkStream {
    pos: u64,
    end: u64,
}

impl http_body::Body for ChunkStream {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let me = self.get_mut();
        if me.pos >= me.end {
            return std::task::Poll::Ready(None);
        }
        let n = (me.end - me.pos).min(64 * 1024);
        let v: Vec<u8> = (me.pos..me.pos + n).map(pattern_byte).collect();
        me.pos += n;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(v)))))
    }
}

impl Origin {
    pub fn start(name: &str) -> Origin {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (c2, r2, name) = (connections.clone(), requests.clone(), name.to_string());
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c2.fetch_add(1, Ordering::SeqCst);
                let (c3, r3, name) = (c2.clone(), r2.clone(), name.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        r3.fetch_add(1, Ordering::SeqCst);
                        let (name, c3) = (name.clone(), c3.clone());
                        async move { Ok::<_, Infallible>(origin_handle(name, req, c3).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Origin {
            addr,
            connections,
            requests,
            _rt: rt,
        }
    }
}

/// Runs curl; returns (exit success, stdout bytes, stderr text).
pub fn curl(args: &[&str]) -> (bool, Vec<u8>, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl is installed");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// curl with `Host: host` against the edge's HTTP listener; (status, body).
pub fn get(edge: &EdgeProc, host: &str, path: &str) -> (u16, Vec<u8>) {
    let url = format!("http://{}{path}", edge.http);
    let (ok, out, err) = curl(&["-H", &format!("Host: {host}"), "-w", "\n%{http_code}", &url]);
    assert!(ok, "curl {url} failed: {err}");
    let split = out.iter().rposition(|&b| b == b'\n').unwrap();
    let code = std::str::from_utf8(&out[split + 1..])
        .unwrap()
        .parse()
        .unwrap();
    (code, out[..split].to_vec())
}

/// Is the process `pid` holding a listening TCP socket?
pub fn listening_tcp_inodes(pid: u32) -> Vec<String> {
    let mut listening = std::collections::HashSet::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for l in text.lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() > 9 && cols[3] == "0A" {
                listening.insert(cols[9].to_string());
            }
        }
    }
    socket_inodes(pid)
        .into_iter()
        .filter(|i| listening.contains(i))
        .collect()
}

/// Inodes of the sockets `pid` holds.
pub fn socket_inodes(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(t) = std::fs::read_link(e.path()) {
            let t = t.to_string_lossy().to_string();
            if let Some(i) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                out.push(i.to_string());
            }
        }
    }
    out
}

/// Local UDP ports of the sockets `pid` holds.
pub fn udp_ports(pid: u32) -> Vec<u16> {
    let inodes = socket_inodes(pid);
    let mut ports = Vec::new();
    for f in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for l in text.lines().skip(1) {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.len() > 9 && inodes.contains(&cols[9].to_string()) {
                if let Some(p) = cols[1]
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                {
                    ports.push(p);
                }
            }
        }
    }
    ports
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
