//! Certificates from a real ACME server: Debian's `pebble` (Let's Encrypt's test
//! server) with `pebble-challtestsrv` as its DNS, validating for real against the
//! edge's own listeners (TLS-ALPN-01 on HTTPS, HTTP-01 on HTTP). Without pebble the
//! tests are reported as ignored, with the reason.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::common::*;

const APP: &str = "app.example.test";
/// Longest wait for an order to complete.
const ISSUE_WAIT: Duration = Duration::from_secs(60);
const IN_FORCE: &str = "acme: certificate for app.example.test in force";

/// A TCP port free now on loopback (pebble takes ports, not listeners).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port free for both UDP and TCP (the DNS server takes both).
fn free_dns_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// pebble's DNS, its folder and its ports, before pebble itself: the edges' `acme:`
/// needs pebble's address, and pebble the edge's ports it validates on.
struct PebbleSetup {
    dir: TempDir,
    api: u16,
    mgmt: u16,
    dns: u16,
    dns_proc: Proc,
}

/// A running pebble.
struct Pebble {
    proc: Proc,
    dns: Proc,
    dir: TempDir,
    /// pebble's root for the certificates it issues (from its management API).
    root: PathBuf,
}

impl PebbleSetup {
    /// Checks the tools, makes pebble's certificate and starts its DNS.
    fn new() -> Result<PebbleSetup, Skip> {
        for tool in ["pebble", "pebble-challtestsrv"] {
            if Command::new(tool).arg("-h").output().is_err() {
                return Err(Skip(format!(
                    "{tool} is not installed (apt-get install pebble)"
                )));
            }
        }
        // pebble's own HTTPS certificate, for 127.0.0.1, from a throwaway private CA.
        let dir = TempDir::new("pebble");
        run_ok(
            "mailslot-edge init (pebble's certificate)",
            Command::new(EDGE)
                .args(["init", "--dir"])
                .arg(dir.path())
                .args(["--hostname", "127.0.0.1"]),
        );
        let (api, mgmt, dns, dns_mgmt) = (free_port(), free_port(), free_dns_port(), free_port());
        let dns_proc = Proc::spawn(
            "challtestsrv",
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{dns}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]),
        );
        dns_proc.wait_line("Starting management server");
        Ok(PebbleSetup {
            dir,
            api,
            mgmt,
            dns,
            dns_proc,
        })
    }

    /// The `acme:` section of an edge ordering from this pebble, with `extra` in it.
    fn acme_yaml(&self, extra: &str) -> String {
        format!(
            "acme:\n  directory: https://127.0.0.1:{}/dir\n  directory-ca: {}\n  email: \
             ops@example.com\n{extra}",
            self.api,
            self.dir.join("ca.pem").display()
        )
    }

    /// Starts pebble, validating on `http_port` and `https_port` of 127.0.0.1.
    fn start(self, http_port: u16, https_port: u16) -> Pebble {
        let PebbleSetup {
            dir,
            api,
            mgmt,
            dns,
            dns_proc,
        } = self;
        let config = dir.join("pebble.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"pebble": {{"listenAddress": "127.0.0.1:{api}",
                  "managementListenAddress": "127.0.0.1:{mgmt}",
                  "certificate": "{}", "privateKey": "{}",
                  "httpPort": {http_port}, "tlsPort": {https_port},
                  "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#,
                dir.join("edge.crt").display(),
                dir.join("edge.key").display(),
            ),
        )
        .unwrap();
        let proc = Proc::spawn(
            "pebble",
            Command::new("pebble")
                .arg("-config")
                .arg(&config)
                .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
                // Validation at once, every nonce good, every order validated afresh.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0"),
        );
        proc.wait_line("ACME directory available");
        let r = curl(&[
            "--cacert",
            dir.join("ca.pem").to_str().unwrap(),
            &format!("https://127.0.0.1:{mgmt}/roots/0"),
        ]);
        assert_eq!(r.status, 200, "pebble's root: {}", r.stderr);
        let root = dir.join("pebble-root.pem");
        std::fs::write(&root, &r.body).unwrap();
        Pebble {
            proc,
            dns: dns_proc,
            dir,
            root,
        }
    }
}

/// pebble, its DNS, and an edge whose `acme:` points at it.
struct World {
    edge: EdgeProc,
    pebble: Proc,
    _dns: Proc,
    _pebble_dir: TempDir,
    /// pebble's root for the certificates it issues (from its management API).
    root: PathBuf,
    origin: Origin,
}

impl World {
    /// Starts pebble's DNS, the edge (with `acme_extra` under `acme:`), then pebble,
    /// told to validate on the edge's HTTP and HTTPS ports.
    fn start(acme_extra: &str) -> Result<World, Skip> {
        let setup = PebbleSetup::new()?;
        let edge = start_edge(init_edge(&format!(
            "admin-listen: 127.0.0.1:0\n{}",
            setup.acme_yaml(acme_extra)
        )));
        let pebble = setup.start(edge.http.port(), edge.https.port());
        Ok(World {
            edge,
            pebble: pebble.proc,
            _dns: pebble.dns,
            _pebble_dir: pebble.dir,
            root: pebble.root,
            origin: Origin::start("app"),
        })
    }

    /// A device (the real connector, with a tunnel token allowing `allow`) serving
    /// `hostnames` from the origin.
    fn device(&self, tunnel: &str, allow: &[&str], hostnames: &[&str]) -> (TempDir, Proc) {
        let token = self.edge.token(tunnel, allow, "1d");
        let mut rules = String::new();
        for h in hostnames {
            rules.push_str(&format!(
                "  - hostname: \"{h}\"\n    service: http://{}\n",
                self.origin.addr
            ));
        }
        rules.push_str("  - service: http_status:404\n");
        let dir = TempDir::new("device");
        let yaml = device_yaml(&self.edge, &token, 1, &rules)
            .replace("tunnel: dev42", &format!("tunnel: {tunnel}"));
        let p = start_connector(dir.path(), &yaml, 1);
        (dir, p)
    }

    /// Waits until the edge has put its `n`th certificate for `app.example.test` in force.
    fn wait_issued(&self, n: usize) {
        assert!(
            self.edge.proc.wait_count(IN_FORCE, n, ISSUE_WAIT).is_some(),
            "no certificate #{n}; edge:\n{}\npebble:\n{}",
            self.edge.proc.dump(),
            self.pebble.dump()
        );
    }

    /// curl to `https://NAME:PORT/path` resolved to the edge, trusting pebble's root.
    fn https(&self, name: &str, path: &str) -> Curl {
        let port = self.edge.https.port();
        curl(&[
            "--cacert",
            self.root.to_str().unwrap(),
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            &format!("https://{name}:{port}{path}"),
        ])
    }

    /// Orders pebble has taken.
    fn orders(&self) -> usize {
        self.pebble.count("Added order")
    }
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

pub(crate) fn a_registered_name_gets_a_certificate_from_pebble_that_curl_trusts() -> Result<(), Skip>
{
    let w = World::start("")?;
    // Before any tunnel serves it, the name gets no certificate: the edge's own.
    let before = w.https(APP, "/");
    assert!(!before.ok, "pebble's root trusted before any order");
    let (_dev, _conn) = w.device("app", &[APP], &[APP]);
    w.wait_issued(1);
    assert!(w
        .edge
        .proc
        .dump()
        .contains("ordering a certificate for app.example.test (tls-alpn-01)"));
    let r = w.https(APP, "/hello");
    assert!(r.ok, "{}", r.stderr);
    assert_eq!((r.status, r.text()), (200, "origin app /hello".to_string()));
    assert_eq!(w.orders(), 1);
    // The expiry is in /metrics, in the future.
    let m = curl(&[&format!("http://{}/metrics", w.edge.admin_addr())]);
    let line = m
        .text()
        .lines()
        .find(|l| {
            l.starts_with("mailslot_edge_certificate_expiry_seconds{name=\"app.example.test\"}")
        })
        .map(String::from)
        .unwrap_or_else(|| panic!("no expiry gauge:\n{}", m.text()));
    let expiry: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expiry > now + 86400, "{line}");
    // The account key and the certificate's key are the edge's alone.
    let acme = w.edge.dir.join("acme");
    assert_eq!(mode(&acme.join("account.key")), 0o600);
    assert_eq!(mode(&acme.join("certs/app.example.test.key")), 0o600);
    // A restarted edge serves the cached certificate at once, with no new order.
    let World {
        edge, pebble, root, ..
    } = w;
    let EdgeProc { dir, proc, .. } = edge;
    drop(proc);
    let edge = start_edge(dir);
    assert!(edge
        .proc
        .wait_count("acme: 1 cached certificates", 1, WAIT)
        .is_some());
    let port = edge.https.port();
    let r = curl(&[
        "--cacert",
        root.to_str().unwrap(),
        "--resolve",
        &format!("{APP}:{port}:127.0.0.1"),
        &format!("https://{APP}:{port}/"),
    ]);
    assert!(r.ok, "cached certificate not served: {}", r.stderr);
    assert_eq!(pebble.count("Added order"), 1);
    Ok(())
}

pub(crate) fn http01_is_answered_on_the_http_listener() -> Result<(), Skip> {
    let w = World::start("  challenge: http-01\n")?;
    let (_dev, _conn) = w.device("app", &[APP], &[APP]);
    w.wait_issued(1);
    assert!(w
        .edge
        .proc
        .dump()
        .contains("ordering a certificate for app.example.test (http-01)"));
    let r = w.https(APP, "/");
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.status, 200);
    // A challenge path with no order in progress goes to the device as any path does.
    let (status, body) = get(&w.edge, APP, "/.well-known/acme-challenge/nothing");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (
            200,
            "origin app /.well-known/acme-challenge/nothing".to_string()
        )
    );
    Ok(())
}

/// A kept-alive HTTP/1.1 connection over TLS, trusting pebble's root.
struct Held(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl Held {
    fn open(root: &Path, addr: SocketAddr, name: &str) -> Held {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(root).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let conn = rustls::ClientConnection::new(
            Arc::new(cfg),
            ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        let mut held = Held(rustls::StreamOwned::new(conn, tcp));
        while held.0.conn.is_handshaking() {
            held.0
                .conn
                .complete_io(&mut held.0.sock)
                .expect("TLS handshake with the edge");
        }
        held
    }

    /// The certificate the edge presented.
    fn leaf(&self) -> Vec<u8> {
        self.0.conn.peer_certificates().unwrap()[0].to_vec()
    }

    /// GET `path`; the status and body.
    fn get(&mut self, path: &str) -> (u16, String) {
        write!(self.0, "GET {path} HTTP/1.1\r\nHost: {APP}\r\n\r\n").unwrap();
        self.0.flush().unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.0.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .expect("a content-length")
            .trim()
            .parse()
            .unwrap();
        while buf.len() < head_end + len {
            let n = self.0.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed mid-body");
            buf.extend_from_slice(&chunk[..n]);
        }
        (
            status,
            String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned(),
        )
    }
}

pub(crate) fn a_certificate_due_for_renewal_is_replaced_under_an_open_connection(
) -> Result<(), Skip> {
    // pebble issues five-year certificates: renew-after brings renewal to seconds.
    let w = World::start("  renew-after: 3s\n")?;
    let (_dev, _conn) = w.device("app", &[APP], &[APP]);
    w.wait_issued(1);
    let mut held = Held::open(&w.root, w.edge.https, APP);
    assert_eq!(held.get("/one"), (200, "origin app /one".to_string()));
    let first = held.leaf();
    w.wait_issued(2);
    // The connection opened before the swap is still up, on its certificate...
    assert_eq!(held.get("/two"), (200, "origin app /two".to_string()));
    assert_eq!(held.leaf(), first);
    // ...and new connections get the renewed one, which curl trusts as well.
    let mut fresh = Held::open(&w.root, w.edge.https, APP);
    assert_ne!(fresh.leaf(), first, "the renewed certificate is not served");
    assert_eq!(fresh.get("/three"), (200, "origin app /three".to_string()));
    let r = w.https(APP, "/");
    assert!(r.ok, "{}", r.stderr);
    assert!(w.orders() >= 2);
    Ok(())
}

pub(crate) fn names_no_tunnel_serves_cause_no_order() -> Result<(), Skip> {
    let w = World::start("")?;
    let (_dev, _conn) = w.device(
        "app",
        &[APP, "*.wild.example.test"],
        &[APP, "*.wild.example.test"],
    );
    w.wait_issued(1);
    assert_eq!(w.orders(), 1, "the wildcard was ordered");
    // Visitors ask for names no tunnel serves, and for a name under the wildcard, by
    // SNI and by Host header.
    for name in ["other.example.test", "x.wild.example.test"] {
        let r = w.https(name, "/");
        assert!(!r.ok, "{name} got a certificate pebble signed");
        let port = w.edge.https.port();
        let r = curl(&[
            "-k",
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            &format!("https://{name}:{port}/"),
        ]);
        assert!(r.ok, "{}", r.stderr);
        let _ = get(&w.edge, name, "/");
    }
    // A second device's name is ordered after those visits: by then, any order they
    // caused would have been placed too.
    let (_dev2, _conn2) = w.device("late", &["late.example.test"], &["late.example.test"]);
    assert!(w
        .edge
        .proc
        .wait_count(
            "acme: certificate for late.example.test in force",
            1,
            ISSUE_WAIT
        )
        .is_some());
    assert_eq!(w.orders(), 2, "{}", w.pebble.dump());
    let log = w.edge.proc.dump();
    assert!(!log.contains("ordering a certificate for other"), "{log}");
    assert!(!log.contains("ordering a certificate for x.wild"), "{log}");
    Ok(())
}

/// Two edges of a cluster (one Redis) with `acme:`: the device's tunnel is at A only,
/// so A orders, while pebble validates at B (as a DNS name leading to every edge may
/// send it): B answers A's challenge (`challenge`), puts the certificate A got in force,
/// and a visitor at B gets it, forwarded to the device at A. One order in all, no
/// certificate file on either edge.
fn cluster_shares(challenge: &str) -> Result<(), Skip> {
    let setup = PebbleSetup::new()?;
    let redis = crate::cluster::RedisProc::start()?;
    let extra = format!("  challenge: {challenge}\n");
    let acme = setup.acme_yaml(&extra);
    let secret = crate::cluster::SECRET;
    let a = crate::cluster::cluster_edge_with(&redis, "127.0.0.1:0", secret, None, &acme);
    let key = Some(a.dir.join("signing.key"));
    let b = crate::cluster::cluster_edge_with(&redis, "127.0.0.1:0", secret, key, &acme);
    let pebble = setup.start(b.http.port(), b.https.port());
    let origin = Origin::start("app");
    let token = a.token("app", &[APP], "1d");
    let rules = format!(
        "  - hostname: \"{APP}\"\n    service: http://{}\n  - service: http_status:404\n",
        origin.addr
    );
    let dev = TempDir::new("device");
    let yaml = device_yaml(&a, &token, 1, &rules).replace("tunnel: dev42", "tunnel: app");
    let _conn = start_connector(dev.path(), &yaml, 1);
    let dump = || {
        format!(
            "A:\n{}\nB:\n{}\npebble:\n{}",
            a.proc.dump(),
            b.proc.dump(),
            pebble.proc.dump()
        )
    };
    assert!(
        a.proc.wait_count(IN_FORCE, 1, ISSUE_WAIT).is_some(),
        "A got no certificate; {}",
        dump()
    );
    assert!(
        a.proc
            .dump()
            .contains(&format!("ordering a certificate for {APP} ({challenge})")),
        "{}",
        dump()
    );
    let from_a = format!("acme: certificate for {APP} from the cluster's redis in force");
    assert!(
        b.proc.wait_count(&from_a, 1, WAIT).is_some(),
        "B did not take A's certificate; {}",
        dump()
    );
    assert_eq!(b.proc.count("ordering a certificate"), 0, "{}", dump());
    assert_eq!(pebble.proc.count("Added order"), 1);
    let port = b.https.port();
    let r = curl(&[
        "--cacert",
        pebble.root.to_str().unwrap(),
        "--resolve",
        &format!("{APP}:{port}:127.0.0.1"),
        &format!("https://{APP}:{port}/hello"),
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!((r.status, r.text()), (200, "origin app /hello".to_string()));
    for edge in [&a, &b] {
        assert!(
            !edge.dir.join("acme").exists(),
            "a certificate folder on an edge of a cluster"
        );
    }
    Ok(())
}

pub(crate) fn edges_of_a_cluster_answer_each_others_tls_alpn_challenges() -> Result<(), Skip> {
    cluster_shares("tls-alpn-01")
}

pub(crate) fn edges_of_a_cluster_answer_each_others_http01_challenges() -> Result<(), Skip> {
    cluster_shares("http-01")
}
