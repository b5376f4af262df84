//! Reloading `edge.yml` with SIGHUP on a running edge: renewed certificates are served,
//! a revoked tunnel is closed and kept out, policies tighten for the next request, open
//! access sessions that a new policy no longer admits are cut, and a bad file changes
//! nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;

use crate::common::*;

const SECRET: &str = "ci-secret-0123456789";
const DB: &str = "db.dev42.example.com";
const WEB: &str = "web.dev42.example.com";
const SIGHUP: i32 = 1;

struct World {
    edge: EdgeProc,
    /// `edge.yml` as `init` wrote it; each stage appends its own sections.
    base: String,
    connector: Proc,
    origin: Origin,
    /// The tunnel's id, as the edge logs it.
    tunnel_id: String,
    /// Operator side: HOME for `mailslot access`.
    client: TempDir,
    reloads: usize,
    _dev: TempDir,
}

fn yml(edge: &EdgeProc) -> PathBuf {
    edge.dir.path().join("edge.yml")
}

fn world(sections: &str) -> World {
    let dir = init_edge("");
    let path = dir.path().join("edge.yml");
    let base = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{base}{sections}")).unwrap();
    let edge = start_edge(dir);
    let origin = Origin::start("A");
    let token = edge.token("dev42", &["*.dev42.example.com"], "1d");
    let rules = format!(
        "  - hostname: {DB}\n    service: tcp://{o}\n\
         \x20 - hostname: {WEB}\n    service: http://{o}\n\
         \x20 - service: http_status:404\n",
        o = origin.addr
    );
    let dev = TempDir::new("device");
    let connector = start_connector(dev.path(), &device_yaml(&edge, &token, 2, &rules), 2);
    let line = edge.proc.wait_line(": registered");
    let tunnel_id = line
        .split("tunnel dev42 (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no tunnel id in {line:?}"))
        .to_string();
    assert_eq!(tunnel_id.len(), 32, "{line}");
    World {
        edge,
        base,
        connector,
        origin,
        tunnel_id,
        client: TempDir::new("operator"),
        reloads: 0,
        _dev: dev,
    }
}

impl World {
    /// Writes `sections` after the base config, sends SIGHUP and waits for the reload.
    fn reload(&mut self, sections: &str) {
        std::fs::write(yml(&self.edge), format!("{}{sections}", self.base)).unwrap();
        self.edge.proc.signal(SIGHUP);
        self.reloads += 1;
        self.edge
            .proc
            .wait_line(&format!("reloaded (generation {})", self.reloads));
    }

    /// Writes a file the edge must refuse, sends SIGHUP; the refusal's log line.
    fn reload_refused(&self, text: &str) -> String {
        std::fs::write(yml(&self.edge), text).unwrap();
        self.edge.proc.signal(SIGHUP);
        self.edge.proc.wait_line("not reloaded")
    }

    /// `mailslot-edge access-token`: (token, its id from stderr).
    fn access_token(&self, user: &str, host: &str) -> (String, String) {
        let out = run_ok(
            "mailslot-edge access-token",
            Command::new(EDGE)
                .arg("access-token")
                .arg("--config")
                .arg(yml(&self.edge))
                .args(["--user", user, "--hostname", host, "--ttl", "1h"]),
        );
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        let id = err
            .split("access token ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no id in {err:?}"))
            .to_string();
        assert!(
            err.contains(&format!("revoked-access-tokens: [{id}]")),
            "{err}"
        );
        (
            String::from_utf8(out.stdout).unwrap().trim().to_string(),
            id,
        )
    }

    /// `mailslot access tcp --listen 127.0.0.1:0` with `creds`; it and its address.
    fn access_tcp(&self, transport: &str, creds: &[&str]) -> (Proc, SocketAddr) {
        let edge = match transport {
            "quic" => self.edge.tunnel,
            _ => self.edge.https,
        };
        let mut cmd = Command::new(MAILSLOT);
        cmd.args(["access", "tcp", "--hostname", DB, "--listen", "127.0.0.1:0"])
            .args(["--transport", transport, "--edge", &edge.to_string()])
            .arg("--edge-ca")
            .arg(self.edge.ca())
            .args(creds)
            .env("HOME", self.client.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("MAILSLOT_ACCESS_TOKEN")
            .env_remove("MAILSLOT_SERVICE_TOKEN_ID")
            .env_remove("MAILSLOT_SERVICE_TOKEN_SECRET");
        let p = Proc::spawn("access-tcp", &mut cmd);
        let addr = p.wait_listen_addr();
        (p, addr)
    }

    /// (status, body) of `GET /` for `host` with `headers`, through the edge's HTTP port.
    fn get(&self, host: &str, headers: &[&str]) -> (u16, String) {
        let url = format!("http://{}/", self.edge.http);
        let host = format!("Host: {host}");
        let mut args = vec!["-H", &host];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.push(&url);
        let r = curl(&args);
        assert!(r.ok, "{}", r.stderr);
        (r.status, r.text())
    }
}

/// An HTTP/1.1 keep-alive connection through `mailslot access tcp` to the origin, held
/// open to see whether the edge cuts it.
struct Session(BufReader<TcpStream>);

impl Session {
    fn open(addr: SocketAddr) -> Session {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        Session(BufReader::new(tcp))
    }

    /// One request and its body.
    fn get(&mut self, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {DB}\r\n\r\n");
        self.0.get_mut().write_all(req.as_bytes()).unwrap();
        let mut len = None;
        loop {
            let mut line = String::new();
            let n = self.0.read_line(&mut line).unwrap();
            assert!(n > 0, "the session closed before a response to {path}");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse::<usize>().ok();
                }
            }
        }
        let mut body = vec![0; len.expect("a Content-Length")];
        self.0.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    }

    /// The edge closes the session (EOF or reset) within the read timeout.
    fn assert_cut(&mut self) {
        let mut buf = [0u8; 64];
        match self.0.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!("the session is still open: {n} bytes arrived"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("the session is still open after {WAIT:?}")
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                panic!("the session is still open after {WAIT:?}")
            }
            Err(_) => {} // reset
        }
    }
}

fn policies(db_allow: &str, tokens: bool) -> String {
    let tokens = if tokens {
        format!("service-tokens:\n  - id: ci\n    secret: {SECRET}\n")
    } else {
        String::new()
    };
    format!("{tokens}access:\n  - hostname: {DB}\n    allow: {db_allow}\n")
}

pub(crate) fn revoking_a_tunnel_closes_its_connections_and_keeps_it_out() {
    let sections = policies("service-token", true);
    let mut w = world(&sections);
    let (_client, addr) = w.access_tcp(
        "quic",
        &["--service-token-id", "ci", "--service-token-secret", SECRET],
    );
    let mut session = Session::open(addr);
    assert_eq!(session.get("/one"), "origin A /one");
    assert_eq!(w.get(WEB, &[]).0, 200);

    let revoked = format!("{sections}revoked-tunnels: [{}]\n", w.tunnel_id);
    w.reload(&revoked);
    // Both connections are closed by the edge, and the connector is told why.
    w.edge
        .proc
        .wait_lines("disconnected: closed by the edge: tunnel token refused", 2);
    w.connector.wait_line("is revoked on this edge");
    session.assert_cut();
    // It cannot come back: its registrations are refused.
    w.edge
        .proc
        .wait_line("refused: tunnel token refused: tunnel dev42");
    let requests = w.origin.requests.load(Ordering::SeqCst);
    let (code, body) = w.get(WEB, &[]);
    assert_ne!(code, 200, "{body}");
    assert_eq!(w.origin.requests.load(Ordering::SeqCst), requests);

    // Lifting the revocation lets the connector back in at its next attempt (after a
    // refusal for good, a minute or more away; a reload of the device config tries at
    // once); the edge logs a registration once the connection routes.
    w.reload(&sections);
    w.connector.signal(SIGHUP);
    w.edge.proc.wait_line(": registered");
    assert_eq!(w.get(WEB, &[]).0, 200);
}

pub(crate) fn reload_tightens_policies_and_refuses_bad_files() {
    let mut w = world("");
    assert_eq!(w.get(WEB, &[]).0, 200);
    let (alice, alice_id) = w.access_token("alice", WEB);
    let bearer = format!("Authorization: Bearer {alice}");

    // An HTTP hostname gains a policy: the next request needs credentials.
    let signed = format!("access:\n  - hostname: {WEB}\n    allow: signed\n");
    w.reload(&signed);
    let requests = w.origin.requests.load(Ordering::SeqCst);
    let (code, body) = w.get(WEB, &[]);
    assert_eq!(code, 401, "{body}");
    assert_eq!(w.origin.requests.load(Ordering::SeqCst), requests);
    assert_eq!(w.get(WEB, &[&bearer]).0, 200);

    // Bad files are refused whole, with the reason, and the running policy stays.
    let line = w.reload_refused(&format!("{}{signed}  - hostname: [\n", w.base));
    assert!(line.contains("edge.yml"), "{line}");
    let missing = format!(
        "{}{signed}service-tokens:\n  - id: ci\n    secret-file: missing.secret\n",
        w.base
    );
    let line = w.reload_refused(&missing);
    assert!(line.contains("missing.secret"), "{line}");
    assert_eq!(w.get(WEB, &[]).0, 401);
    assert_eq!(w.get(WEB, &[&bearer]).0, 200);

    // What only a restart can change is named, and left as it was.
    w.reload(&format!("{signed}limits:\n  max-conns: 100\n"));
    let line = w.edge.proc.wait_line("take effect only at a restart");
    assert!(line.contains("limits"), "{line}");

    // A signed access token revoked by its id.
    w.reload(&format!("{signed}revoked-access-tokens: [{alice_id}]\n"));
    let (code, body) = w.get(WEB, &[&bearer]);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");
    let (bob, _) = w.access_token("bob", WEB);
    assert_eq!(
        w.get(WEB, &[&format!("Authorization: Bearer {bob}")]).0,
        200
    );
}

pub(crate) fn open_sessions_a_reload_no_longer_admits_are_cut() {
    let mut w = world(&policies("[signed, service-token]", true));
    let (alice, alice_id) = w.access_token("alice", DB);
    let (_a, alice_addr) = w.access_tcp("quic", &["--token", &alice]);
    let (_c, ci_addr) = w.access_tcp(
        "https",
        &["--service-token-id", "ci", "--service-token-secret", SECRET],
    );
    let mut alice_session = Session::open(alice_addr);
    let mut ci_session = Session::open(ci_addr);
    assert_eq!(alice_session.get("/a"), "origin A /a");
    assert_eq!(ci_session.get("/c"), "origin A /c");

    // A reload that changes nothing for them leaves both sessions alone.
    let sections = policies("[signed, service-token]", true);
    w.reload(&format!("{sections}revoked-tunnels: []\n"));
    assert_eq!(alice_session.get("/a2"), "origin A /a2");

    // Alice's token is revoked: her session (QUIC) is cut, ci's goes on.
    w.reload(&format!("{sections}revoked-access-tokens: [{alice_id}]\n"));
    alice_session.assert_cut();
    let line = w
        .edge
        .proc
        .wait_line("cut: no longer admitted after a reload of edge.yml or a revocation");
    assert!(line.contains("alice") && line.contains("revoked"), "{line}");
    assert_eq!(ci_session.get("/c2"), "origin A /c2");

    // The service token is removed: ci's session (WebSocket over HTTPS) is cut too.
    w.reload(&policies("signed", false));
    ci_session.assert_cut();
    let line = w
        .edge
        .proc
        .wait_line("cut: no longer admitted after a reload of edge.yml or a revocation");
    assert!(line.contains("service:ci"), "{line}");
}

/// `GET /` for `WEB` over HTTPS, trusting only `ca`: the status, or curl's complaint.
fn https_get(w: &World, ca: &std::path::Path) -> Result<u16, String> {
    let port = w.edge.https.port();
    let resolve = format!("{WEB}:{port}:127.0.0.1");
    let url = format!("https://{WEB}:{port}/");
    let r = curl(&[
        "-o",
        "/dev/null",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ]);
    if !r.ok {
        return Err(r.stderr);
    }
    Ok(r.status)
}

pub(crate) fn renewed_certificates_are_served_after_sighup_without_dropping_tunnels() {
    let mut w = world("");
    let old_ca = w.edge.ca();
    assert_eq!(https_get(&w, &old_ca), Ok(200));
    // A renewal: a certificate for the same names from another CA, written over the
    // files edge.yml names, as an ACME client renews in place.
    let renewed = init_edge("");
    let new_ca = renewed.path().join("ca.pem");
    let old_key = std::fs::read(w.edge.dir.path().join("edge.key")).unwrap();
    for f in ["edge.crt", "edge.key"] {
        std::fs::copy(renewed.path().join(f), w.edge.dir.path().join(f)).unwrap();
    }
    assert!(
        https_get(&w, &new_ca).is_err(),
        "the renewed certificate was served before the reload"
    );
    w.reload("");
    assert_eq!(https_get(&w, &new_ca), Ok(200));
    assert!(
        https_get(&w, &old_ca).is_err(),
        "the old certificate is still served"
    );
    // The tunnel stayed up through it, and connectors that trust the new CA get in.
    assert_eq!(w.get(WEB, &[]).0, 200);
    assert_eq!(w.connector.count("lost edge"), 0, "{}", w.connector.dump());
    let token = w.edge.token("dev42", &["*.dev42.example.com"], "1d");
    let dev = TempDir::new("device-new-ca");
    let rules = format!(
        "  - hostname: new.dev42.example.com\n    service: http://{}\n  - service: http_status:404\n",
        w.origin.addr
    );
    let yaml = device_yaml_with(
        &w.edge.tunnel.to_string(),
        &new_ca,
        "quic",
        &token,
        1,
        &rules,
    );
    let _replica = start_connector(dev.path(), &yaml, 1);
    // A key that does not fit its certificate is refused whole; the renewed one stays.
    std::fs::write(w.edge.dir.path().join("edge.key"), old_key).unwrap();
    let line = w.reload_refused(&w.base);
    assert!(line.contains("do not fit"), "{line}");
    assert_eq!(https_get(&w, &new_ca), Ok(200));
}
