//! End to end access: a real edge, a real connector, a real origin (HTTP, reached as a
//! raw TCP service) and, when this runs as root with OpenSSH installed, a real sshd on
//! loopback reached with real `ssh` and `scp` through `mailslot access`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::*;

const SERVICE_SECRET: &str = "ci-secret-0123456789";
const SSH_HOST: &str = "ssh.dev42.example.com";
const DB_HOST: &str = "db.dev42.example.com";
/// A raw-stream rule to a unix socket (`tcp+unix:`) where a redis may listen.
const REDIS_HOST: &str = "redis.dev42.example.com";
/// The socket's name in the device folder.
const REDIS_SOCKET: &str = "redis.sock";

/// Edge settings: short QUIC timers so idle sessions are tested in seconds.
fn edge_yaml() -> String {
    format!(
        "keepalive: 1s
idle-timeout: 4s
service-tokens:
  - id: ci
    secret: {SERVICE_SECRET}
access:
  - hostname: \"ssh.*.example.com\"
    allow: [signed, service-token]
  - hostname: {DB_HOST}
    allow: [signed, service-token]
    users: [alice]
  - hostname: secret.dev42.example.com
    allow: [signed, service-token]
  - hostname: {REDIS_HOST}
    allow: signed
tcp-ports:
  - listen: 127.0.0.1:0
    hostname: {DB_HOST}
    ip-allow: [127.0.0.0/8]
  - listen: 127.0.0.1:0
    hostname: {DB_HOST}
    ip-allow: [10.0.0.0/8]
"
    )
}

/// A real sshd on loopback with a fresh host key and one authorized client key.
struct Sshd {
    _proc: Proc,
    port: u16,
    dir: TempDir,
}

impl Sshd {
    fn key(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Starts sshd, or says why this test cannot (not root, OpenSSH missing).
fn start_sshd() -> Result<Sshd, Skip> {
    let sshd = Path::new("/usr/sbin/sshd");
    let have_client = Command::new("ssh").arg("-V").output().is_ok()
        && Command::new("ssh-keygen")
            .arg("-?")
            .stderr(Stdio::null())
            .output()
            .is_ok();
    if !sshd.exists() || !have_client {
        return Err(Skip(
            "needs OpenSSH (apt-get install openssh-server openssh-client): sshd or ssh missing"
                .into(),
        ));
    }
    if !is_root() {
        return Err(Skip("needs root to run sshd on loopback".into()));
    }
    let dir = TempDir::new("sshd");
    for name in ["host_key", "client_key"] {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.path().join(name))
            .status()
            .unwrap();
        assert!(st.success());
    }
    std::fs::copy(
        dir.path().join("client_key.pub"),
        dir.path().join("authorized_keys"),
    )
    .unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let cfg = dir.path().join("sshd_config");
    std::fs::write(
        &cfg,
        format!(
            "ListenAddress 127.0.0.1
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin yes
UsePAM no
ClientAliveInterval 2
LogLevel INFO
Subsystem sftp internal-sftp
",
            d = dir.path().display()
        ),
    )
    .unwrap();
    // sshd cannot take an inherited socket: pick a free port, release it, hand it over.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proc = Proc::spawn(
        "sshd",
        Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .args(["-p", &port.to_string()]),
    );
    proc.wait_line(&format!("Server listening on 127.0.0.1 port {port}"));
    Ok(Sshd {
        _proc: proc,
        port,
        dir,
    })
}

struct World {
    edge: EdgeProc,
    _connector: Proc,
    origin: Origin,
    /// The sshd, or why there is none.
    sshd: Result<Sshd, Skip>,
    /// Operator side: token files.
    client: TempDir,
    tunnel_token: String,
    /// TCP ports: (admitting loopback, admitting only 10/8).
    tcp_open: SocketAddr,
    tcp_closed: SocketAddr,
    /// The device's folder (config, the redis socket).
    dev: TempDir,
}

fn world(with_sshd: bool) -> World {
    let sshd = if with_sshd {
        start_sshd()
    } else {
        Err(Skip("not asked for".into()))
    };
    let ssh_port = match &sshd {
        Ok(s) => s.port,
        Err(_) => std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    };
    let edge = start_edge(init_edge(&edge_yaml()));
    let port_of = |line: String| -> SocketAddr {
        let rest = &line[line.find("TCP port ").unwrap() + 9..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let tcp_open = port_of(edge.proc.wait_line("TCP port "));
    let tcp_closed = port_of(edge.proc.wait_line("TCP port "));
    let origin = Origin::start("A");
    let tunnel_token = edge.token("dev42", &["dev42.example.com", "*.dev42.example.com"], "1d");
    let dev = TempDir::new("device");
    let rules = format!(
        "  - hostname: {SSH_HOST}\n    service: ssh://127.0.0.1:{ssh_port}\n\
         \x20 - hostname: {DB_HOST}\n    service: tcp://{o}\n\
         \x20 - hostname: {REDIS_HOST}\n    service: tcp+unix:{redis}\n\
         \x20 - hostname: open.dev42.example.com\n    service: tcp://{o}\n\
         \x20 - hostname: secret.dev42.example.com\n    service: http://{o}\n\
         \x20 - hostname: web.dev42.example.com\n    service: http://{o}\n\
         \x20 - service: http_status:404\n",
        o = origin.addr,
        redis = dev.path().join(REDIS_SOCKET).display()
    );
    let yaml = format!(
        "tunnel: dev42\ntoken: {tunnel_token}\nedge: [\"{}\"]\nedge-ca: {}\nprotocol: quic\n\
         ha-connections: 2\nkeepalive: 1s\nidle-timeout: 4s\ningress:\n{rules}",
        edge.tunnel,
        edge.ca().display()
    );
    let connector = start_connector(dev.path(), &yaml, 2);
    World {
        edge,
        _connector: connector,
        origin,
        sshd,
        client: TempDir::new("operator"),
        tunnel_token,
        tcp_open,
        tcp_closed,
        dev,
    }
}

impl World {
    /// `mailslot-edge access-token`.
    fn access_token(&self, user: &str, hosts: &[&str], ttl: &str) -> String {
        let mut cmd = Command::new(EDGE);
        cmd.arg("access-token")
            .arg("--config")
            .arg(self.edge.dir.path().join("edge.yml"))
            .args(["--user", user, "--ttl", ttl]);
        for h in hosts {
            cmd.args(["--hostname", h]);
        }
        let out = run_ok("mailslot-edge access-token", &mut cmd);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// A token that expired an hour ago, signed with the edge's key.
    fn expired_token(&self, user: &str, host: &str) -> String {
        let key = mailslot::edge::init::load_signing_key(
            &self.edge.dir.path().join(mailslot::edge::init::SIGNING_KEY),
        )
        .unwrap();
        let now = mailslot::edge::token::now_unix();
        mailslot::edge::policy::sign_access_token(
            &key,
            &mailslot::edge::policy::AccessClaims {
                user: user.into(),
                hosts: vec![host.into()],
                issued: now - 7200,
                expires: now - 3600,
            },
        )
        .unwrap()
    }

    /// Writes a token file for the operator.
    fn token_file(&self, name: &str, token: &str) -> PathBuf {
        let p = self.client.path().join(name);
        std::fs::write(&p, format!("{token}\n")).unwrap();
        p
    }

    /// The edge flags for a transport: quic, https, or auto with a dead QUIC port.
    fn edge_args(&self, transport: &str) -> Vec<String> {
        let mut v = vec![
            "--edge-ca".to_string(),
            self.edge.ca().display().to_string(),
            "--transport".into(),
        ];
        match transport {
            "quic" => v.extend(["quic".into(), "--edge".into(), self.edge.tunnel.to_string()]),
            "https" => v.extend(["https".into(), "--edge".into(), self.edge.https.to_string()]),
            "auto-fallback" => {
                let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let dead = dead.local_addr().unwrap();
                v.extend([
                    "auto".into(),
                    "--edge".into(),
                    dead.to_string(),
                    "--edge-https".into(),
                    self.edge.https.to_string(),
                ]);
            }
            other => panic!("transport {other}"),
        }
        v
    }

    /// `mailslot access <sub> --hostname host` with an empty environment for credentials.
    fn access(&self, sub: &str, host: &str, transport: &str, creds: &[&str]) -> Command {
        let mut c = Command::new(MAILSLOT);
        c.args(["access", sub, "--hostname", host])
            .args(self.edge_args(transport))
            .args(creds)
            .env("HOME", self.client.path())
            .env("RUST_LOG", "info")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("MAILSLOT_ACCESS_TOKEN")
            .env_remove("MAILSLOT_SERVICE_TOKEN_ID")
            .env_remove("MAILSLOT_SERVICE_TOKEN_SECRET");
        c
    }
}

impl World {
    /// Starts `mailslot access tcp --listen 127.0.0.1:0`; returns it and the address it
    /// reports.
    fn access_tcp(&self, host: &str, transport: &str, creds: &[&str]) -> (Proc, SocketAddr) {
        let mut cmd = self.access("tcp", host, transport, creds);
        let p = Proc::spawn("access-tcp", cmd.args(["--listen", "127.0.0.1:0"]));
        let addr = p.wait_listen_addr();
        (p, addr)
    }
}

/// Runs `cmd`, writes `input` to its stdin and keeps stdin open until it exits;
/// (success, stdout, stderr).
fn run_open_stdin(cmd: &mut Command, input: &[u8]) -> (bool, Vec<u8>, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(input);
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    (
        status.success(),
        t_out.join().unwrap(),
        t_err.join().unwrap(),
    )
}

fn http_request(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").into_bytes()
}

fn body_of(response: &[u8]) -> &[u8] {
    let i = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {:?}", String::from_utf8_lossy(response)));
    &response[i + 4..]
}

pub(crate) fn access_stdio_carries_a_tcp_service_over_quic_https_and_fallback() {
    let w = world(false);
    let alice = w.access_token("alice", &["*.dev42.example.com"], "1h");
    for transport in ["quic", "https", "auto-fallback"] {
        let (ok, out, err) = run_open_stdin(
            &mut w.access("ssh", DB_HOST, transport, &["--token", &alice]),
            &http_request(DB_HOST, "/bytes/300000"),
        );
        assert!(ok, "{transport}: {err}");
        assert_eq!(
            sha256_hex(body_of(&out)),
            sha256_hex(&pattern(300_000)),
            "{transport}"
        );
        if transport == "auto-fallback" {
            assert!(err.contains("using HTTPS"), "{err}");
        }
        let line = w
            .edge
            .proc
            .wait_line("access: alice (signed token) db.dev42.example.com");
        assert!(line.contains("B down"), "{line}");
    }
    // A service token, from the environment.
    let (ok, out, err) = run_open_stdin(
        w.access("ssh", DB_HOST, "https", &[])
            .env("MAILSLOT_SERVICE_TOKEN_ID", "ci")
            .env("MAILSLOT_SERVICE_TOKEN_SECRET", SERVICE_SECRET),
        &http_request(DB_HOST, "/svc"),
    );
    assert!(ok, "{err}");
    assert_eq!(body_of(&out), b"origin A /svc");
    w.edge
        .proc
        .wait_line("access: service:ci (service token) db.dev42.example.com");
}

pub(crate) fn access_tcp_listens_locally_and_carries_http() {
    let w = world(false);
    let alice = w.access_token("alice", &[DB_HOST], "1h");
    // The default token file.
    let cfg = w.client.path().join(".config/mailslot");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(cfg.join("access-token"), &alice).unwrap();
    for transport in ["quic", "https"] {
        let (p, addr) = w.access_tcp(DB_HOST, transport, &[]);
        for n in [0u64, 1, 2 * 1024 * 1024] {
            let r = curl(&[
                "-H",
                &format!("Host: {DB_HOST}"),
                &format!("http://{addr}/bytes/{n}"),
            ]);
            assert!(r.ok, "{transport}: {}\n{}", r.stderr, p.dump());
            assert_eq!(
                sha256_hex(&r.body),
                sha256_hex(&pattern(n)),
                "{transport} {n}"
            );
        }
        for _ in 0..3 {
            w.edge
                .proc
                .wait_line("access: alice (signed token) db.dev42.example.com");
        }
    }
}

pub(crate) fn refused_clients_never_reach_the_device() {
    let w = world(false);
    let before = w.origin.connections.load(Ordering::SeqCst);
    let bob = w.access_token("bob", &[DB_HOST], "1h");
    let alice_web = w.access_token("alice", &["web.dev42.example.com"], "1h");
    let alice_all = w.access_token("alice", &["*.dev42.example.com"], "1h");
    let expired = w.expired_token("alice", DB_HOST);
    let wrong_file = w.token_file("wrong", "msa1.AAAA.BBBB");
    let cases: Vec<(&str, &str, Vec<&str>, &str)> = vec![
        ("no credentials", DB_HOST, vec![], "none was presented"),
        (
            "a wrong token",
            DB_HOST,
            vec!["--token-file", wrong_file.to_str().unwrap()],
            "signature is not valid",
        ),
        (
            "an expired token",
            DB_HOST,
            vec!["--token", &expired],
            "expired",
        ),
        (
            "a tunnel token",
            DB_HOST,
            vec!["--token", &w.tunnel_token],
            "tunnel token is not an access token",
        ),
        (
            "a token for another hostname",
            DB_HOST,
            vec!["--token", &alice_web],
            "does not cover db.dev42.example.com",
        ),
        (
            "a user the policy does not list",
            DB_HOST,
            vec!["--token", &bob],
            "bob is not allowed",
        ),
        (
            "a wrong service secret",
            DB_HOST,
            vec!["--service-token-id", "ci", "--service-token-secret", "nope"],
            "unknown or its secret is wrong",
        ),
        (
            "a TCP hostname without a policy",
            "open.dev42.example.com",
            vec!["--token", &alice_all],
            "without an access policy",
        ),
    ];
    for transport in ["quic", "https"] {
        for (what, host, creds, expect) in &cases {
            let (ok, out, err) = run_open_stdin(
                &mut w.access("ssh", host, transport, creds),
                &http_request(host, "/"),
            );
            assert!(!ok, "{what} over {transport} was let in");
            assert!(out.is_empty(), "{what}: {out:?}");
            assert!(
                err.contains(expect) && err.contains("the edge refused access"),
                "{what} over {transport}: {err}"
            );
        }
    }
    // The public TCP port whose allow-list excludes loopback: closed at once.
    let r = curl(&[
        "-H",
        &format!("Host: {DB_HOST}"),
        &format!("http://{}/", w.tcp_closed),
    ]);
    assert!(!r.ok);
    w.edge.proc.wait_line("address not in ip-allow");
    assert_eq!(
        w.origin.connections.load(Ordering::SeqCst),
        before,
        "a refused client caused a connection on the device"
    );
    // And the same edge does let the right token in.
    let (ok, out, err) = run_open_stdin(
        &mut w.access("ssh", DB_HOST, "quic", &["--token", &alice_all]),
        &http_request(DB_HOST, "/ok"),
    );
    assert!(ok, "{err}");
    assert_eq!(body_of(&out), b"origin A /ok");
}

pub(crate) fn public_tcp_port_routes_to_the_stream_rule() {
    let w = world(false);
    let r = curl(&[
        "-H",
        &format!("Host: {DB_HOST}"),
        &format!("http://{}/bytes/100000", w.tcp_open),
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(sha256_hex(&r.body), sha256_hex(&pattern(100_000)));
    let line = w
        .edge
        .proc
        .wait_line("access: anonymous (ip-allow) db.dev42.example.com");
    assert!(line.contains("over tcp port"), "{line}");
}

pub(crate) fn http_hostname_with_a_policy_needs_credentials() {
    let w = world(false);
    let host = "secret.dev42.example.com";
    let (code, body) = get(&w.edge, host, "/x");
    let body = String::from_utf8_lossy(&body).to_string();
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
    assert_eq!(w.origin.requests.load(Ordering::SeqCst), 0);
    let url = format!("http://{}/headers", w.edge.http);
    let hosth = format!("Host: {host}");
    let alice = w.access_token("alice", &["*.dev42.example.com"], "1h");
    let bearer = format!("Authorization: Bearer {alice}");
    let tunnel = format!("Authorization: Bearer {}", w.tunnel_token);
    let secret = format!("Mailslot-Client-Secret: {SERVICE_SECRET}");
    let expired = format!("Authorization: Bearer {}", w.expired_token("alice", host));
    let code_of = |args: &[&str]| -> (u16, String) {
        let mut a = args.to_vec();
        a.push(&url);
        let r = curl(&a);
        assert!(r.ok, "{}", r.stderr);
        (r.status, r.text())
    };
    let (code, seen) = code_of(&["-H", &hosth, "-H", &bearer]);
    assert_eq!(code, 200, "{seen}");
    assert!(
        !seen.to_ascii_lowercase().contains("authorization"),
        "the token reached the origin: {seen}"
    );
    let (code, seen) = code_of(&["-H", &hosth, "-H", "Mailslot-Client-Id: ci", "-H", &secret]);
    assert_eq!(code, 200, "{seen}");
    assert!(
        !seen.contains(SERVICE_SECRET),
        "the secret reached the origin: {seen}"
    );
    let requests = w.origin.requests.load(Ordering::SeqCst);
    for bad in [&tunnel, &expired, &"Mailslot-Client-Id: ci".to_string()] {
        let (code, body) = code_of(&["-H", &hosth, "-H", bad]);
        assert_eq!(code, 401, "{bad}: {body}");
    }
    assert_eq!(w.origin.requests.load(Ordering::SeqCst), requests);
    // HTTP hostnames without a policy stay public.
    let (code, _) = get(&w.edge, "web.dev42.example.com", "/");
    assert_eq!(code, 200);
}

/// What ssh and scp are told here: the test's key only, no host key checks or
/// records, no prompts.
const SSH_CLIENT_OPTIONS: [&str; 8] = [
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "BatchMode=yes",
];

fn ssh_base(sshd: &Sshd, config: &Path) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-F")
        .arg(config)
        .arg("-i")
        .arg(sshd.key())
        .args(SSH_CLIENT_OPTIONS)
        .args(["-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20"]);
    c
}

/// An ssh_config from `mailslot access ssh-config` for this transport.
fn ssh_config(w: &World, transport: &str, token_file: &Path) -> PathBuf {
    let out = run_ok(
        "mailslot access ssh-config",
        &mut w.access(
            "ssh-config",
            SSH_HOST,
            transport,
            &["--token-file", token_file.to_str().unwrap()],
        ),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("Host {SSH_HOST}\n")), "{text}");
    assert!(text.contains("ProxyCommand "), "{text}");
    let p = w.client.path().join(format!("ssh_config.{transport}"));
    std::fs::write(&p, text).unwrap();
    p
}

pub(crate) fn ssh_and_scp_through_the_tunnel() -> Result<(), Skip> {
    let w = world(true);
    let sshd = w.sshd.as_ref().map_err(Skip::clone)?;
    let token = w.access_token("alice", &["ssh.*.example.com"], "8h");
    let token_file = w.token_file("alice", &token);
    for transport in ["quic", "https"] {
        let cfg = ssh_config(&w, transport, &token_file);
        let out = run_ok(
            &format!("ssh over {transport}"),
            ssh_base(sshd, &cfg)
                .arg(format!("root@{SSH_HOST}"))
                .arg("echo hello from $(hostname) over ssh"),
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("hello from "),
            "{:?}",
            out
        );
        w.edge
            .proc
            .wait_line("access: alice (signed token) ssh.dev42.example.com");
    }

    // scp 10 MiB up and back down, with ProxyCommand given on the command line.
    let data = pattern(10 * 1024 * 1024);
    let src = w.client.path().join("up.bin");
    std::fs::write(&src, &data).unwrap();
    let remote_dir = TempDir::new("scp-remote");
    let remote = remote_dir.path().join("copy.bin");
    let back = w.client.path().join("back.bin");
    let proxy = format!(
        "ProxyCommand={MAILSLOT} access ssh --hostname %h {} --token-file {}",
        w.edge_args("quic").join(" "),
        token_file.display()
    );
    let scp = |from: String, to: String| {
        run_ok(
            "scp",
            Command::new("scp")
                .args(["-F", "/dev/null", "-q", "-i"])
                .arg(sshd.key())
                .args(SSH_CLIENT_OPTIONS)
                .args(["-o", &proxy])
                .arg(from)
                .arg(to),
        );
    };
    scp(
        src.display().to_string(),
        format!("root@{SSH_HOST}:{}", remote.display()),
    );
    assert_eq!(
        sha256_hex(&std::fs::read(&remote).unwrap()),
        sha256_hex(&data)
    );
    scp(
        format!("root@{SSH_HOST}:{}", remote.display()),
        back.display().to_string(),
    );
    assert_eq!(
        sha256_hex(&std::fs::read(&back).unwrap()),
        sha256_hex(&data)
    );
    let line = w
        .edge
        .proc
        .wait_line("access: alice (signed token) ssh.dev42.example.com");
    assert!(line.contains(" B up"), "{line}");
    Ok(())
}

pub(crate) fn idle_interactive_sessions_stay_up() -> Result<(), Skip> {
    let w = world(true);
    let sshd = w.sshd.as_ref().map_err(Skip::clone)?;
    let token = w.access_token("alice", &[SSH_HOST], "1h");
    let token_file = w.token_file("alice", &token);
    // Both transports at once: start, idle past every idle timeout, then talk.
    let sessions: Vec<_> = ["quic", "https"]
        .into_iter()
        .map(|transport| {
            let cfg = ssh_config(&w, transport, &token_file);
            let mut child = ssh_base(sshd, &cfg)
                .args(["-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3"])
                .arg(format!("root@{SSH_HOST}"))
                .arg("echo ready; read line; echo got:$line")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let (tx, rx) = mpsc::channel();
            let out = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
            let ready = rx.recv_timeout(WAIT);
            assert_eq!(ready.as_deref(), Ok("ready"), "{transport}");
            (transport, child, rx)
        })
        .collect();
    // Idle for well over the edge's and the device's 4 s idle timeouts: keep-alives
    // (QUIC's, and ssh's own) must carry the session.
    std::thread::sleep(Duration::from_secs(10));
    for (transport, mut child, rx) in sessions {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"still here\n").unwrap();
        let got = rx.recv_timeout(WAIT);
        assert_eq!(got.as_deref(), Ok("got:still here"), "{transport}");
        let deadline = Instant::now() + WAIT;
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "{transport}: ssh did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// `redis-server` on a unix socket only (`--port 0`), or why not (redis missing).
fn start_redis(socket: &Path) -> Result<Proc, Skip> {
    let have = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !have("redis-server") || !have("redis-cli") {
        return Err(Skip(
            "needs redis (apt-get install redis-server redis-tools): redis-server or redis-cli missing"
                .into(),
        ));
    }
    let dir = socket.parent().unwrap();
    let proc = Proc::spawn(
        "redis",
        Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir),
    );
    // "ready to accept connections at PATH" (7.0), "Ready to accept connections unix" (7.2).
    proc.wait_line("eady to accept connections");
    Ok(proc)
}

/// `redis-cli -h 127.0.0.1 -p PORT ARGS...` fed `stdin` (then closed); (success,
/// stdout, stderr).
fn redis_cli(addr: SocketAddr, args: &[&str], stdin: &[u8]) -> (bool, Vec<u8>, String) {
    let mut child = Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(&input);
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("redis-cli {args:?} did not finish within 60 s"))
        .unwrap();
    let _ = writer.join();
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) fn access_tcp_carries_redis_from_a_unix_socket() -> Result<(), Skip> {
    let w = world(false);
    let _redis = start_redis(&w.dev.path().join(REDIS_SOCKET))?;
    let alice = w.access_token("alice", &[REDIS_HOST], "1h");
    // 1 MiB of printable bytes: redis-cli prints a raw value followed by a newline.
    let value: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| b'a' + (i.wrapping_mul(7) % 26) as u8)
        .collect();
    for transport in ["quic", "https"] {
        let (p, addr) = w.access_tcp(REDIS_HOST, transport, &["--token", &alice]);
        let (ok, out, err) = redis_cli(addr, &["PING"], b"");
        assert!(ok, "{transport}: {err}\n{}", p.dump());
        assert_eq!(out, b"PONG\n", "{transport}");
        // -x: the last argument is read from stdin.
        let key = format!("big-{transport}");
        let started = Instant::now();
        let (ok, out, err) = redis_cli(addr, &["-x", "SET", &key], &value);
        assert!(ok, "{transport}: {err}");
        assert_eq!(out, b"OK\n", "{transport}");
        let (ok, out, err) = redis_cli(addr, &["STRLEN", &key], b"");
        assert!(ok, "{transport}: {err}");
        assert_eq!(out, b"1048576\n", "{transport}");
        let (ok, out, err) = redis_cli(addr, &["GET", &key], b"");
        assert!(ok, "{transport}: {err}");
        assert_eq!(out.len(), value.len() + 1, "{transport}");
        assert_eq!(
            sha256_hex(&out[..value.len()]),
            sha256_hex(&value),
            "{transport}"
        );
        eprintln!(
            "redis over {transport}: SET, STRLEN and GET of 1 MiB in {:?}",
            started.elapsed()
        );
        // 200 commands on one connection, answered in order.
        let counter = format!("n-{transport}");
        let (ok, _, err) = redis_cli(addr, &["-r", "200", "INCR", &counter], b"");
        assert!(ok, "{transport}: {err}");
        let (ok, out, err) = redis_cli(addr, &["GET", &counter], b"");
        assert!(ok, "{transport}: {err}");
        assert_eq!(out, b"200\n", "{transport}");
        w.edge
            .proc
            .wait_line("access: alice (signed token) redis.dev42.example.com");
    }
    // Without credentials the edge refuses, and redis-cli says the connection closed.
    let (p, addr) = w.access_tcp(REDIS_HOST, "quic", &[]);
    let (_, out, _) = redis_cli(addr, &["PING"], b"");
    assert_ne!(out, b"PONG\n");
    p.wait_line("the edge refused access");
    Ok(())
}

/// What `access ssh-config` writes reaches `mailslot access ssh` through real ssh (its
/// ssh_config parser, its `%` expansion and the shell it runs the ProxyCommand with)
/// exactly as given: `$()`, backquotes, quotes, `#` and `%` in an option stay data.
pub(crate) fn ssh_config_options_reach_the_client_as_data() -> Result<(), Skip> {
    if Command::new("ssh").arg("-V").output().is_err() {
        return Err(Skip("needs ssh (openssh-client)".into()));
    }
    let dir = TempDir::new("sshcfg");
    let marker = dir.path().join("ran");
    let ca = dir.path().join(format!(
        "ca $(touch {m}) `touch {m}` it's \"# 100%h.pem",
        m = marker.display()
    ));
    let out = run_ok(
        "mailslot access ssh-config",
        Command::new(MAILSLOT)
            .args(["access", "ssh-config", "--hostname", SSH_HOST])
            .arg("--edge-ca")
            .arg(&ca),
    );
    let config = dir.path().join("ssh_config");
    std::fs::write(&config, &out.stdout).unwrap();
    let out = Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-o", "BatchMode=yes", SSH_HOST, "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!marker.exists(), "the ProxyCommand ran a command:\n{err}");
    // The client got the path as written, and said it does not exist.
    assert!(
        err.contains(&format!("--edge-ca {}: No such file", ca.display())),
        "{err}"
    );

    // A line break cannot smuggle a line into the config: refused.
    let out = Command::new(MAILSLOT)
        .args(["access", "ssh-config", "--hostname", SSH_HOST])
        .args(["--edge", "e:1\nHost *\n  ProxyCommand touch /tmp/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("control character"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `access tcp` and `access ssh` warn once when a secret is on their command line.
pub(crate) fn secret_on_the_command_line_is_warned_about() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let edge = format!("127.0.0.1:{port}");
    // `mailslot access ssh` to an edge that does not answer.
    let access_ssh = || {
        let mut c = Command::new(MAILSLOT);
        c.args(["access", "ssh", "--hostname", SSH_HOST])
            .args(["--transport", "https", "--edge", &edge])
            .stdin(Stdio::null());
        c
    };
    let out = access_ssh().args(["--token", "msa1.x.y"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("/proc/PID/cmdline").count(), 1, "{err}");
    assert!(err.contains("--token-file"), "{err}");
    assert!(!err.contains("msa1.x.y"), "{err}");
    let out = access_ssh()
        .env("MAILSLOT_ACCESS_TOKEN", "msa1.x.y")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("/proc/PID/cmdline"), "{err}");
}
