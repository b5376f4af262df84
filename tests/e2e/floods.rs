//! Floods of idle connections against the edge's listeners, tokens that expire while
//! connected, the admin listener's token, and an edge killed and restarted: real
//! processes, real sockets on loopback (which has all of 127/8, so a flood can come
//! from several addresses), real clients.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

/// A TCP connection from `from` (any port) to `to`.
fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.bind(&SocketAddr::new(from, 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(s.into())
}

/// The flood's source addresses: 127.0.0.2 to 127.0.0.6.
fn flood_addr(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 2 + (i % 5) as u8])
}

/// Waits until the peer closes `s` (EOF or reset); how long that took, `None` after
/// `within`.
fn closed_within(s: &mut impl Read, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// A tunnel serving `dev42.example.com` from a fresh origin.
fn tunnel(edge: &EdgeProc, protocol: &str, expires: &str) -> (Proc, Origin, TempDir) {
    let origin = Origin::start("A");
    let token = edge.token("dev42", &["dev42.example.com"], expires);
    let rules = dev42_rules(origin.addr);
    let dev = TempDir::new("device");
    let yaml = device_yaml_over(edge, protocol, &token, 1, &rules);
    let connector = start_connector(dev.path(), &yaml, 1);
    (connector, origin, dev)
}

/// curl against the edge's HTTP listener with a short limit; the status, 0 on failure.
fn status_within(edge: &EdgeProc, secs: u32, extra: &[&str]) -> u16 {
    let url = format!("http://{}/", edge.http);
    let max = secs.to_string();
    let mut args = vec![
        "--max-time",
        &max,
        "-o",
        "/dev/null",
        "-H",
        "Host: dev42.example.com",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args).status
}

pub(crate) fn silent_sockets_do_not_lock_visitors_out() {
    let edge = start_edge(init_edge(
        "limits:\n  max-conns: 64\n  max-conns-per-ip: 16\n",
    ));
    let (_connector, _origin, _dev) = tunnel(&edge, "quic", "1d");
    assert_eq!(status_within(&edge, 10, &[]), 200);
    // 80 connections from five addresses, 16 each, that never send a byte.
    let silent: Vec<TcpStream> = (0..80)
        .map(|i| connect_from(flood_addr(i), edge.http).unwrap())
        .collect();
    let start = Instant::now();
    let code = status_within(&edge, 5, &[]);
    let took = start.elapsed();
    println!("visitor answered {code} after {took:?} with 80 silent sockets open");
    assert_eq!(code, 200, "a visitor is locked out by 80 silent sockets");
    drop(silent);
}

pub(crate) fn connections_without_a_request_are_closed() {
    let edge = start_edge(init_edge(
        "limits:\n  request-head-timeout: 2s\n  tls-handshake-timeout: 2s\n",
    ));
    let (_connector, _origin, _dev) = tunnel(&edge, "quic", "1d");
    let within = Duration::from_secs(8);

    let opened = Instant::now();
    // Plain TCP that never sends a byte.
    let mut silent = TcpStream::connect(edge.http).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // Only the HTTP/2 preface (h2c, prior knowledge), then nothing.
    let mut preface = TcpStream::connect(edge.http).unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    preface
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // TLS done, then silence.
    let tls_idle = rt.block_on(async {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(edge.ca()).unwrap();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(edge.https).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("dev42.example.com").unwrap();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the edge")
    });
    let t_silent = closed_within(&mut silent, within).map(|_| opened.elapsed());
    println!("silent TCP closed {t_silent:?} after it opened");
    let t_preface = closed_within(&mut preface, within).map(|_| opened.elapsed());
    println!("preface-only HTTP/2 closed {t_preface:?} after it opened");
    let t_tls = rt.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut tls = tls_idle;
        let mut buf = [0u8; 64];
        match tokio::time::timeout(within, tls.read(&mut buf)).await {
            Ok(_) => Some(opened.elapsed()),
            Err(_) => None,
        }
    });
    println!("idle TLS closed {t_tls:?} after the connections opened");
    assert!(t_silent.is_some(), "a silent connection stays open");
    assert!(
        t_preface.is_some(),
        "an HTTP/2 connection with only its preface stays open"
    );
    assert!(t_tls.is_some(), "an idle TLS connection stays open");
}

pub(crate) fn idle_http2_connections_are_closed_between_requests() {
    let edge = start_edge(init_edge("limits:\n  conn-idle-timeout: 3s\n"));
    let (_connector, _origin, _dev) = tunnel(&edge, "quic", "1d");
    let within = Duration::from_secs(8);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // HTTP/2 (h2c) after one answered request: idle between requests.
    let h2_between = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(edge.http).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        let driver = tokio::spawn(async move {
            let start = Instant::now();
            let _ = conn.await;
            start.elapsed()
        });
        let req = http::Request::get("http://dev42.example.com/")
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        while let Some(chunk) = body.data().await {
            let _ = chunk.unwrap();
        }
        (client, driver)
    });
    let (client, driver) = h2_between;
    let t = rt.block_on(async { tokio::time::timeout(within, driver).await });
    println!("idle HTTP/2 after a request closed after {t:?}");
    assert!(
        t.is_ok(),
        "an idle HTTP/2 connection stays open between requests"
    );
    drop(client);
}

pub(crate) fn http2_visitors_are_held_to_max_headers() {
    let edge = start_edge(init_edge("limits:\n  max-headers: 20\n"));
    let (_connector, origin, _dev) = tunnel(&edge, "quic", "1d");
    let headers: Vec<String> = (0..30).map(|i| format!("X-Many-{i}: {i}")).collect();
    let mut args: Vec<&str> = vec!["--http2-prior-knowledge"];
    for h in &headers {
        args.push("-H");
        args.push(h);
    }
    let before = origin.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(status_within(&edge, 10, &args), 431);
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "the request reached the origin"
    );
    assert_eq!(status_within(&edge, 10, &["--http2-prior-knowledge"]), 200);
}

pub(crate) fn ip_allow_sees_the_client_behind_a_trusted_proxy() {
    let edge = start_edge(init_edge(
        "trusted-proxies: [127.0.0.0/8]\naccess:\n  - hostname: dev42.example.com\n    allow: public\n    ip-allow: [198.51.100.0/24]\n",
    ));
    let (_connector, _origin, _dev) = tunnel(&edge, "quic", "1d");
    // The proxy (loopback) forwards for an allowed client, then for another one.
    assert_eq!(
        status_within(&edge, 10, &["-H", "X-Forwarded-For: 198.51.100.7"]),
        200,
        "ip-allow checked the proxy's address, not the client's"
    );
    assert_eq!(
        status_within(&edge, 10, &["-H", "X-Forwarded-For: 203.0.113.5"]),
        403
    );
}

pub(crate) fn an_idle_flood_does_not_keep_a_connector_from_registering() {
    let edge = start_edge(init_edge(""));
    let origin = Origin::start("A");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let target = edge.tunnel;
    let flood = {
        let (stop, opened) = (stop.clone(), opened.clone());
        std::thread::spawn(move || {
            // Up to 300 idle connections from five addresses, at most 300 new ones a
            // second; closed ones are opened again. Bounded by `stop` and 60 s.
            let mut open: Vec<TcpStream> = Vec::new();
            let start = Instant::now();
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && start.elapsed() < Duration::from_secs(60)
            {
                let tick = Instant::now();
                open.retain(|s| {
                    let mut b = [0u8; 1];
                    match s.peek(&mut b) {
                        Ok(0) => false,
                        Ok(_) => true,
                        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                    }
                });
                for _ in 0..30 {
                    if open.len() >= 300 {
                        break;
                    }
                    if let Ok(s) = connect_from(flood_addr(n), target) {
                        let _ = s.set_nonblocking(true);
                        open.push(s);
                        opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(100).saturating_sub(tick.elapsed()));
            }
        })
    };
    // The flood is under way: a few hundred connections made.
    let t0 = Instant::now();
    while opened.load(std::sync::atomic::Ordering::Relaxed) < 300 && t0.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    let token = edge.token("dev42", &["dev42.example.com"], "1d");
    let rules = dev42_rules(origin.addr);
    let dev = TempDir::new("device");
    let yaml = device_yaml_over(&edge, "http2", &token, 1, &rules);
    let bin = compile(dev.path(), &yaml);
    let start = Instant::now();
    let connector = Proc::spawn(
        "connector",
        Command::new(MAILSLOT).arg("run").arg("--config").arg(&bin),
    );
    let registered = connector.wait_line_within("registered: tunnel", Duration::from_secs(10));
    let took = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = flood.join();
    println!(
        "http2 connector registered after {took:?} during a flood of {} idle connections",
        opened.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        registered.is_some(),
        "an idle flood kept the connector out; connector log:\n{}",
        connector.dump()
    );
    // The flood's refusals and timeouts are logged with a limit.
    let lines = edge.proc.count("tunnel connection from") + edge.proc.count("tunnel TLS handshake");
    assert!(lines <= 40, "{lines} log lines about the flood");
}

pub(crate) fn an_expired_token_closes_its_connection() {
    expired_token_closes("quic");
}

pub(crate) fn an_expired_token_closes_its_http2_connection() {
    expired_token_closes("http2");
}

fn expired_token_closes(protocol: &str) {
    let edge = start_edge(init_edge(""));
    let (connector, _origin, _dev) = tunnel(&edge, protocol, "4s");
    assert_eq!(status_within(&edge, 10, &[]), 200);
    let line = connector.wait_line_within(
        "tunnel token of tunnel dev42 expired",
        Duration::from_secs(12),
    );
    assert!(
        line.is_some(),
        "the connection outlived its token; connector log:\n{}",
        connector.dump()
    );
    println!("connector: {}", line.unwrap_or_default());
    edge.proc
        .wait_line("closed by the edge: tunnel token of tunnel dev42 expired");
    assert_ne!(status_within(&edge, 10, &[]), 200, "served after expiry");
}

pub(crate) fn the_admin_listener_requires_its_bearer_token() {
    const TOKEN: &str = "admin-0123456789-secret";
    let edge = start_edge(init_edge(&format!(
        "admin-listen: 127.0.0.1:0\nadmin-token: {TOKEN}\n"
    )));
    let admin = edge.admin_addr();
    let url = format!("http://{admin}/tunnels");
    let code = |extra: &[&str]| {
        let mut args = vec!["--max-time", "10", "-o", "/dev/null"];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args).status.to_string()
    };
    assert_eq!(code(&[]), "401");
    assert_eq!(
        code(&["-H", "Authorization: Bearer wrong-token-0123456789"]),
        "401"
    );
    let good = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(code(&["-H", &good]), "200");
    // A reload puts a new token in force.
    const NEW: &str = "admin-new-0123456789-secret";
    let yml = edge.dir.path().join("edge.yml");
    let text = std::fs::read_to_string(&yml).unwrap().replace(TOKEN, NEW);
    std::fs::write(&yml, text).unwrap();
    edge.proc.signal(1); // SIGHUP
    edge.proc.wait_line("reloaded (generation 1)");
    assert_eq!(code(&["-H", &good]), "401");
    assert_eq!(
        code(&["-H", &format!("Authorization: Bearer {NEW}")]),
        "200"
    );
    // An idle connection is closed.
    let mut idle = TcpStream::connect(admin).unwrap();
    idle.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t = closed_within(&mut idle, Duration::from_secs(15));
    println!("idle admin connection closed after {t:?}");
    assert!(t.is_some(), "an idle admin connection stays open");

    // Off loopback, the token is required.
    let dir = init_edge("admin-listen: 0.0.0.0:0\n");
    let out = Command::new(EDGE)
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("edge.yml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started without a token");
    assert!(err.contains("admin-token"), "{err}");
}

pub(crate) fn a_killed_edge_restarted_on_its_port_is_used_again_at_once() {
    let dir = init_edge("");
    let yml = dir.path().join("edge.yml");
    let mut edge = start_edge(dir);
    let port = edge.tunnel.port();
    // The restarted edge binds the same UDP (and TCP) port.
    let text = std::fs::read_to_string(&yml).unwrap().replace(
        "tunnel-listen: 127.0.0.1:0",
        &format!("tunnel-listen: 127.0.0.1:{port}"),
    );
    std::fs::write(&yml, text).unwrap();
    let origin = Origin::start("A");
    let token = edge.token("dev42", &["dev42.example.com"], "1d");
    let rules = dev42_rules(origin.addr);
    let dev = TempDir::new("device");
    let yaml = device_yaml(&edge, &token, 2, &rules)
        .replace("ingress:\n", "keepalive: 5s\nidle-timeout: 45s\ningress:\n");
    let connector = start_connector(dev.path(), &yaml, 2);
    assert_eq!(status_within(&edge, 10, &[]), 200);

    edge.proc.child.kill().unwrap(); // SIGKILL
    let _ = edge.proc.child.wait();
    let proc = Proc::spawn(
        "edge2",
        Command::new(EDGE).arg("serve").arg("--config").arg(&yml),
    );
    let line = proc.wait_line(": HTTP on ");
    let http: SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let restarted = Instant::now();
    edge.proc = proc;
    edge.http = http;
    // Until a request goes through the restarted edge; bounded at 30 s.
    let mut served = None;
    while restarted.elapsed() < Duration::from_secs(30) {
        if status_within(&edge, 2, &[]) == 200 {
            served = Some(restarted.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "served again {served:?} after the edge restarted (connector keepalive 5s, QUIC idle timeout 45s)"
    );
    let took = served
        .unwrap_or_else(|| panic!("never served again; connector log:\n{}", connector.dump()));
    assert!(
        took < Duration::from_secs(12),
        "{took:?} to serve again: the connector waited for its idle timeout"
    );
}

pub(crate) fn access_clients_are_capped_per_address_and_closed_when_idle() {
    let edge = start_edge(init_edge(""));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ca = {
        use rustls_pki_types::pem::PemObject;
        let pem = std::fs::read(edge.ca()).unwrap();
        rustls_pki_types::CertificateDer::from_pem_slice(&pem)
            .unwrap()
            .to_vec()
    };
    rt.block_on(async {
        let mut tls = mailslot::tls::edge_client_config(Some(&ca)).unwrap();
        tls.alpn_protocols = vec![mailslot::wire::ACCESS_ALPN.to_vec()];
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        )));
        // 33 access connections from one address that never open a stream.
        let mut conns = Vec::new();
        for _ in 0..33 {
            let c = tokio::time::timeout(
                Duration::from_secs(10),
                ep.connect(edge.tunnel, "127.0.0.1").unwrap(),
            )
            .await
            .expect("handshake in time")
            .expect("handshake");
            conns.push(c);
        }
        let opened = Instant::now();
        // The last is one too many for its address.
        let last = conns.pop().unwrap();
        let why = tokio::time::timeout(Duration::from_secs(5), last.closed()).await;
        println!("33rd access connection: {why:?}");
        let why = why.expect("the 33rd access connection from one address stays open");
        assert!(why.to_string().contains("too many access clients"), "{why}");
        // The others are closed for idling without a stream.
        for c in conns {
            let why = tokio::time::timeout(Duration::from_secs(20), c.closed()).await;
            let why = why.expect("an access connection without a stream stays open");
            assert!(why.to_string().contains("idle"), "{why}");
        }
        println!(
            "idle access connections closed {:?} after they opened",
            opened.elapsed()
        );
    });
}
