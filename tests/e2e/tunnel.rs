//! End to end: a real edge process, a real connector process, real origins and real
//! clients (curl, a WebSocket client), all on loopback with port 0.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// Edge + connector with the README's rule shapes; origins A (web), B (api).
struct Setup {
    edge: EdgeProc,
    connector: Proc,
    a: Origin,
    b: Origin,
    _dev: TempDir,
}

fn setup(extra_edge_yaml: &str, ha: usize) -> Setup {
    setup_with(extra_edge_yaml, ha, "quic")
}

fn setup_with(extra_edge_yaml: &str, ha: usize, protocol: &str) -> Setup {
    let edge = start_edge(init_edge(extra_edge_yaml));
    let a = Origin::start("A");
    let b = Origin::start("B");
    let token = edge.token("dev42", &["dev42.example.com", "*.dev42.example.com"], "1d");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead); // nothing listens there any more
    let rules = format!(
        "  - hostname: dev42.example.com\n    service: http://{a}\n\
         \x20 - hostname: api.dev42.example.com\n    path: ^/v1/\n    service: http://{b}\n\
         \x20 - hostname: teapot.dev42.example.com\n    service: http_status:418\n\
         \x20 - hostname: dead.dev42.example.com\n    service: http://127.0.0.1:{dead_port}\n\
         \x20 - hostname: host.dev42.example.com\n    service: http://{a}\n    origin-request:\n      http-host-header: internal.local\n\
         \x20 - service: http_status:404\n",
        a = a.addr,
        b = b.addr,
    );
    let dev = TempDir::new("device");
    let yaml = device_yaml_over(&edge, protocol, &token, ha, &rules);
    let connector = start_connector(dev.path(), &yaml, ha);
    Setup {
        edge,
        connector,
        a,
        b,
        _dev: dev,
    }
}

/// GETs `/bytes/N` for each of `sizes` through the edge; each body arrives intact.
fn downloads_arrive_intact(edge: &EdgeProc, sizes: &[u64]) {
    for &n in sizes {
        let url = format!("http://{}/bytes/{n}", edge.http);
        let r = curl(&["-H", "Host: dev42.example.com", &url]);
        assert!(r.ok, "{}", r.stderr);
        assert_eq!(r.body.len() as u64, n);
        assert_eq!(
            sha256_hex(&r.body),
            sha256_hex(&pattern(n)),
            "body of {n} bytes differs"
        );
    }
}

/// POSTs `size` bytes (with `extra` curl arguments) to the origin's `/sha256` through
/// the edge; the origin saw them intact.
fn upload_arrives_intact(edge: &EdgeProc, size: u64, extra: &[&str]) {
    let dir = TempDir::new("upload");
    let file = dir.join("up.bin");
    let data = pattern(size);
    std::fs::write(&file, &data).unwrap();
    let url = format!("http://{}/sha256", edge.http);
    let from_file = format!("@{}", file.display());
    let mut args = vec!["-H", "Host: dev42.example.com"];
    args.extend_from_slice(extra);
    args.extend(["--data-binary", &from_file, &url]);
    let r = curl(&args);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(
        String::from_utf8(r.body).unwrap(),
        format!("{} {}", sha256_hex(&data), data.len())
    );
}

pub(crate) fn bodies_of_every_size_arrive_intact_over_http1() {
    let s = setup("", 2);
    downloads_arrive_intact(&s.edge, &[0, 1024, 100 * 1024 * 1024]);
}

/// `workers: 1`: the whole edge on one thread (tunnels, visitors, timers) still serves
/// bodies both ways and many requests at once.
pub(crate) fn an_edge_on_one_worker_thread_serves_bodies_and_parallel_requests() {
    let s = setup("workers: 1", 2);
    let log = s.edge.proc.dump();
    assert!(log.contains(": 1 worker thread\n"), "{log}");
    downloads_arrive_intact(&s.edge, &[0, 1024, 20 * 1024 * 1024]);
    upload_arrives_intact(&s.edge, 3 * 1024 * 1024 + 1, &[]);
    assert_eq!(parallel_gets(&s.edge, 200, 500, 50), 200);
}

pub(crate) fn http2_transport_carries_bodies_uploads_and_many_streams() {
    let s = setup_with("", 2, "http2");
    assert!(
        s.connector.dump().contains("over http2"),
        "registered over HTTP/2"
    );
    downloads_arrive_intact(&s.edge, &[0, 1024, 50 * 1024 * 1024]);
    upload_arrives_intact(&s.edge, 3 * 1024 * 1024 + 1, &[]);
    assert_eq!(parallel_gets(&s.edge, 200, 500, 50), 200);
}

pub(crate) fn chunked_upload_reaches_the_origin_intact() {
    let s = setup("", 1);
    upload_arrives_intact(
        &s.edge,
        5 * 1024 * 1024 + 7,
        &["-H", "Transfer-Encoding: chunked"],
    );
}

pub(crate) fn http2_over_tls_with_sni() {
    let s = setup("", 1);
    let port = s.edge.https.port();
    let resolve = format!("dev42.example.com:{port}:127.0.0.1");
    let url = format!("https://dev42.example.com:{port}/bytes/1024");
    let ca = s.edge.ca();
    let r = curl(&[
        "--http2",
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
        &url,
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.version == "2" && r.status == 200,
        "HTTP/{} {}",
        r.version,
        r.status
    );
    assert!(r.body.ends_with(&pattern(1024)));
}

pub(crate) fn path_rules_status_rules_and_the_catch_all() {
    let s = setup("", 1);
    let (code, body) = get(&s.edge, "api.dev42.example.com", "/v1/users");
    assert_eq!(
        (code, String::from_utf8(body).unwrap()),
        (200, "origin B /v1/users".into())
    );
    let (code, _) = get(&s.edge, "api.dev42.example.com", "/v2/users");
    assert_eq!(code, 404, "no rule matches: the catch-all answers");
    let (code, body) = get(&s.edge, "dev42.example.com", "/x");
    assert_eq!(
        (code, String::from_utf8(body).unwrap()),
        (200, "origin A /x".into())
    );
    let (code, _) = get(&s.edge, "teapot.dev42.example.com", "/");
    assert_eq!(code, 418);
    let (code, body) = get(&s.edge, "unknown.example.org", "/");
    assert_eq!(code, 404);
    assert!(String::from_utf8_lossy(&body).contains("no tunnel serves unknown.example.org"));
    // Status rules are answered at the edge: the origins saw only the two proxied requests.
    assert_eq!(s.a.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(s.b.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
}

pub(crate) fn forwarding_headers_and_host_override() {
    let s = setup("", 1);
    let (code, body) = get(&s.edge, "dev42.example.com", "/headers");
    assert_eq!(code, 200);
    let h = String::from_utf8(body).unwrap();
    assert!(h.contains("host: dev42.example.com\n"), "{h}");
    assert!(h.contains("x-forwarded-for: 127.0.0.1\n"), "{h}");
    assert!(h.contains("x-forwarded-proto: http\n"), "{h}");
    assert!(h.contains("x-forwarded-host: dev42.example.com\n"), "{h}");
    let (_, body) = get(&s.edge, "host.dev42.example.com", "/headers");
    let h = String::from_utf8(body).unwrap();
    assert!(h.contains("host: internal.local\n"), "{h}");
    assert!(
        h.contains("x-forwarded-host: host.dev42.example.com\n"),
        "{h}"
    );
}

pub(crate) fn dead_origin_gives_502_slow_origin_504_and_others_are_undisturbed() {
    let s = setup("origin-response-timeout: 1s", 1);
    let (code, body) = get(&s.edge, "dead.dev42.example.com", "/");
    assert_eq!(code, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("origin unreachable"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let slow_edge = s.edge.http;
    let slow = std::thread::spawn(move || {
        let url = format!("http://{slow_edge}/slow");
        let r = curl(&["-H", "Host: dev42.example.com", "-o", "/dev/null", &url]);
        assert!(r.ok);
        r.status
    });
    // While the slow request waits, others are served.
    for _ in 0..5 {
        let (code, _) = get(&s.edge, "dev42.example.com", "/fine");
        assert_eq!(code, 200);
    }
    assert_eq!(slow.join().unwrap(), 504);
}

pub(crate) fn idle_tunnel_streams_are_reused() {
    let s = setup("", 1);
    for _ in 0..5 {
        let (code, _) = get(&s.edge, "dev42.example.com", "/x");
        assert_eq!(code, 200);
    }
    // Five visitor connections, one origin connection: the tunnel stream was pooled.
    let (_, body) = get(&s.edge, "dev42.example.com", "/connections");
    assert_eq!(String::from_utf8(body).unwrap(), "1");
}

pub(crate) fn requests_take_turns_on_the_tunnel_connections() {
    // Two tunnel connections. One request after another, they alternate between the
    // connections, and each connection keeps one pooled stream to the origin: the
    // origin sees two connections. Had one tunnel connection taken every request, it
    // would see one.
    let s = setup("", 2);
    let seen = || s.a.connections.load(std::sync::atomic::Ordering::SeqCst);
    let url = format!("http://{}/sha256", s.edge.http);
    for _ in 0..4 {
        // A request with a body: its route is looked at first and picked after the
        // body's start has arrived.
        let r = curl(&[
            "-H",
            "Host: dev42.example.com",
            "--data-binary",
            "abc",
            &url,
        ]);
        assert!(r.ok, "{}", r.stderr);
        assert!(r.text().ends_with(" 3"));
    }
    assert_eq!(seen(), 2, "requests with a body");
    for _ in 0..4 {
        assert_eq!(get(&s.edge, "dev42.example.com", "/x").0, 200);
    }
    assert_eq!(seen(), 2, "requests without a body");
}

/// Runs `count` GETs of `/bytes/<first + i>` for dev42.example.com with curl, at most
/// `parallel` at once over keep-alive connections, and returns how many answered 200.
fn parallel_gets(edge: &EdgeProc, count: usize, first: usize, parallel: usize) -> usize {
    let dir = TempDir::new("par");
    let cfg = dir.path().join("urls");
    let mut text = String::new();
    for i in 0..count {
        text.push_str(&format!(
            "url = \"http://{}/bytes/{}\"\nheader = \"Host: dev42.example.com\"\noutput = \"/dev/null\"\n",
            edge.http,
            first + i
        ));
    }
    std::fs::write(&cfg, text).unwrap();
    let parallel = parallel.to_string();
    // Several transfers in one run: their statuses come from this `-w`, in the body.
    let r = curl(&[
        "--parallel",
        "--parallel-max",
        &parallel,
        "-K",
        cfg.to_str().unwrap(),
        "-w",
        "%{http_code}\n",
    ]);
    assert!(r.ok, "{}", r.stderr);
    r.text().lines().filter(|l| *l == "200").count()
}

pub(crate) fn concurrent_visitors_reuse_origin_connections() {
    // 1000 requests from 50 keep-alive visitor connections at once: each request takes
    // a stream that another has just finished with, so the origin sees about as many
    // connections as there are visitors, not one per request.
    let s = setup("", 1);
    assert_eq!(parallel_gets(&s.edge, 1000, 100, 50), 1000);
    let (_, body) = get(&s.edge, "dev42.example.com", "/connections");
    let origin_conns: usize = String::from_utf8(body).unwrap().parse().unwrap();
    eprintln!("origin connections: {origin_conns}");
    assert!(
        (1..=55).contains(&origin_conns),
        "{origin_conns} origin connections for 50 visitors"
    );
}

pub(crate) fn many_concurrent_requests_over_one_connection() {
    let s = setup("", 1);
    assert_eq!(parallel_gets(&s.edge, 300, 1000, 100), 300);
}

pub(crate) fn websocket_upgrade_echoes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let edge = start_edge(init_edge(""));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws_origin = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let ws_addr = ws_origin.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((tcp, _)) = ws_origin.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    let token = edge.token("dev42", &["ws.dev42.example.com"], "1d");
    let dev = TempDir::new("device");
    let rules = format!("  - hostname: ws.dev42.example.com\n    service: http://{ws_addr}\n  - service: http_status:404\n");
    let _c = start_connector(dev.path(), &device_yaml(&edge, &token, 1, &rules), 1);
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(edge.http).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.dev42.example.com/chat", tcp)
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..20 {
            let msg = format!("hello {i}");
            ws.send(Message::text(msg.clone())).await.unwrap();
            let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(back.into_text().unwrap().as_str(), msg);
        }
        let big = vec![7u8; 1 << 20];
        ws.send(Message::binary(big.clone())).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_data().as_ref(), &big[..]);
    });
}

pub(crate) fn tokens_for_other_hosts_forged_or_expired_are_refused() {
    let edge = start_edge(init_edge(""));
    let origin = Origin::start("A");
    let rules = dev42_rules(origin.addr);
    let cases = [
        (
            "other host",
            edge.token("dev42", &["dev41.example.com"], "1d"),
            "not allowed by this tunnel's token",
        ),
        (
            "expired",
            edge.token("dev42", &["dev42.example.com"], "0s"),
            "expired",
        ),
        (
            "forged",
            {
                // Signed by another edge's key.
                let other = start_edge(init_edge(""));
                other.token("dev42", &["dev42.example.com"], "1d")
            },
            "signature is not valid",
        ),
        ("garbage", "mst1.AAAA.BBBB".to_string(), "refused"),
    ];
    for (what, token, expect) in cases {
        let dev = TempDir::new("device");
        let bin = compile(dev.path(), &device_yaml(&edge, &token, 1, &rules));
        let p = Proc::spawn(
            "connector",
            Command::new(MAILSLOT).arg("run").arg("--config").arg(&bin),
        );
        let line = p.wait_line("refused the tunnel");
        assert!(
            line.contains(expect),
            "{what}: connector says {line:?}, expected {expect:?}"
        );
        edge.proc.wait_line("refused");
        let (code, _) = get(&edge, "dev42.example.com", "/");
        assert_eq!(code, 404, "{what}: nothing is served");
    }
    assert_eq!(origin.requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

pub(crate) fn a_hostname_belongs_to_one_tunnel_unless_the_token_is_shared() {
    let edge = start_edge(init_edge(""));
    let a = Origin::start("A");
    let rules = dev42_rules(a.addr);
    let t1 = edge.token("dev42", &["dev42.example.com"], "1d");
    let d1 = TempDir::new("device");
    let _c1 = start_connector(d1.path(), &device_yaml(&edge, &t1, 1, &rules), 1);
    // Same token: a replica, admitted.
    let d2 = TempDir::new("device");
    let _c2 = start_connector(d2.path(), &device_yaml(&edge, &t1, 1, &rules), 1);
    // Another token for the same name: refused while the first tunnel is up.
    let t2 = edge.token("intruder", &["dev42.example.com"], "1d");
    let d3 = TempDir::new("device");
    let bin = compile(d3.path(), &device_yaml(&edge, &t2, 1, &rules));
    let p = Proc::spawn(
        "connector",
        Command::new(MAILSLOT).arg("run").arg("--config").arg(&bin),
    );
    let line = p.wait_line("refused the tunnel");
    assert!(line.contains("already served by tunnel dev42"), "{line}");
}

pub(crate) fn the_connector_listens_on_nothing() {
    let s = setup("", 2);
    let pid = s.connector.pid();
    assert!(
        listening_tcp_inodes(pid).is_empty(),
        "connector has a listening TCP socket"
    );
    // Its UDP sockets are QUIC client endpoints: a QUIC handshake to them gets nowhere.
    let ports = udp_ports(pid);
    assert!(!ports.is_empty(), "the connector's QUIC socket was found");
    let rt = tokio::runtime::Runtime::new().unwrap();
    for port in ports {
        let refused = rt.block_on(async {
            let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            let tls = mailslot::tls::edge_client_config(None).unwrap();
            let cfg = quinn::ClientConfig::new(std::sync::Arc::new(
                quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
            ));
            ep.set_default_client_config(cfg);
            let attempt = ep
                .connect(([127, 0, 0, 1], port).into(), "localhost")
                .unwrap();
            !matches!(
                tokio::time::timeout(Duration::from_secs(3), attempt).await,
                Ok(Ok(_))
            )
        });
        assert!(
            refused,
            "a QUIC handshake to the connector's port {port} succeeded"
        );
    }
    // And it still serves through the tunnel it dialed.
    assert_eq!(get(&s.edge, "dev42.example.com", "/").0, 200);
}

pub(crate) fn demo_works_as_the_readme_says() {
    let p = Proc::spawn(
        "demo",
        Command::new(MAILSLOT).args(["demo", "--listen", "127.0.0.1:0"]),
    );
    let line = p.wait_line("curl -H");
    let cmd = line.trim().strip_prefix("or").unwrap().trim().to_string();
    let out = run_ok(
        "the README's curl",
        Command::new("sh")
            .arg("-c")
            .arg(format!("{cmd} -sS --max-time 10")),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Hello from mailslot!"));
}

pub(crate) fn sighup_reload_applies_new_rules_without_failing_requests() {
    let edge = start_edge(init_edge(""));
    let a = Origin::start("A");
    let b = Origin::start("B");
    let token = edge.token("dev42", &["*.dev42.example.com"], "1d");
    let dev = TempDir::new("device");
    let rules_a = format!("  - hostname: web.dev42.example.com\n    service: http://{}\n  - service: http_status:404\n", a.addr);
    let c = start_connector(dev.path(), &device_yaml(&edge, &token, 2, &rules_a), 2);
    assert_eq!(get(&edge, "new.dev42.example.com", "/").0, 404);

    // Load in the background: bounded in count, every response must be a 200.
    let http = edge.http;
    let load = std::thread::spawn(move || {
        let mut codes = Vec::new();
        for i in 0..150 {
            let url = format!("http://{http}/n{i}");
            let r = curl(&["-H", "Host: web.dev42.example.com", "-o", "/dev/null", &url]);
            codes.push(if r.ok {
                r.status.to_string()
            } else {
                "curl failed".into()
            });
        }
        codes
    });
    let rules_b = format!(
        "  - hostname: web.dev42.example.com\n    service: http://{}\n  - hostname: new.dev42.example.com\n    service: http://{}\n  - service: http_status:404\n",
        a.addr, b.addr
    );
    compile(dev.path(), &device_yaml(&edge, &token, 2, &rules_b));
    c.signal(1);
    c.wait_line("reloaded");
    edge.proc.wait_lines("rule table 2 applied", 2);
    let (code, body) = get(&edge, "new.dev42.example.com", "/x");
    assert_eq!(
        (code, String::from_utf8(body).unwrap()),
        (200, "origin B /x".to_string())
    );

    // A bad file is refused and the running config stays.
    std::fs::write(dev.path().join("config.bin"), b"not a config").unwrap();
    c.signal(1);
    c.wait_line("refused");
    assert_eq!(get(&edge, "new.dev42.example.com", "/y").0, 200);

    let codes = load.join().unwrap();
    let bad: Vec<_> = codes.iter().filter(|c| *c != "200").collect();
    assert!(bad.is_empty(), "requests failed during the reload: {bad:?}");
}

pub(crate) fn sigterm_drains_and_exits_zero() {
    let s = setup("", 2);
    let http = s.edge.http;
    let download = std::thread::spawn(move || {
        let url = format!("http://{http}/bytes/{}", 60 * 1024 * 1024);
        let r = curl(&["-H", "Host: dev42.example.com", "--limit-rate", "20M", &url]);
        (r.ok, r.body.len(), r.stderr)
    });
    // Wait until the origin has the request, then ask the connector to stop.
    let deadline = std::time::Instant::now() + WAIT;
    while s.a.requests.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "download never reached the origin"
        );
        std::thread::yield_now();
    }
    let mut c = s.connector;
    c.signal(15);
    c.wait_line("draining");
    let status = c
        .wait_exit(Duration::from_secs(40))
        .expect("connector exits within the grace period");
    assert!(status.success(), "exit status {status:?}");
    let (ok, len, err) = download.join().unwrap();
    assert!(ok, "{err}");
    assert_eq!(len, 60 * 1024 * 1024, "the transfer in flight completed");
}

pub(crate) fn a_revoked_tunnel_is_refused_although_its_token_verifies() {
    let dir = init_edge("");
    let out = Command::new(EDGE)
        .arg("token")
        .arg("--config")
        .arg(dir.path().join("edge.yml"))
        .args(["--tunnel", "dev42", "--allow", "dev42.example.com"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let note = String::from_utf8(out.stderr).unwrap();
    let id = note
        .split(" id ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let yml = dir.path().join("edge.yml");
    let mut text = std::fs::read_to_string(&yml).unwrap();
    text.push_str(&format!("revoked-tunnels: [\"{id}\"]\n"));
    std::fs::write(&yml, text).unwrap();
    let edge = start_edge(dir);
    let a = Origin::start("A");
    let rules = dev42_rules(a.addr);
    let dev = TempDir::new("device");
    let bin = compile(dev.path(), &device_yaml(&edge, &token, 1, &rules));
    let p = Proc::spawn(
        "connector",
        Command::new(MAILSLOT).arg("run").arg("--config").arg(&bin),
    );
    let line = p.wait_line("refused the tunnel");
    assert!(line.contains("revoked"), "{line}");
    // Retrying cannot help until someone changes something: the next try is a
    // minute or so away, not seconds (each try costs a device a handshake of data).
    let secs: f32 = line
        .split("retrying in ")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no delay in {line:?}"));
    assert!(secs >= 30.0, "{line}");
    // The operator lifts the revocation; a reload of the device's config retries now.
    let text = std::fs::read_to_string(&yml).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("revoked-tunnels:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&yml, text).unwrap();
    edge.proc.signal(1);
    edge.proc.wait_line("reloaded (generation 1)");
    p.signal(1);
    assert!(
        p.wait_line_within("registered: tunnel", Duration::from_secs(10))
            .is_some(),
        "not registered within 10 s of the reload:\n{}",
        p.dump()
    );
}

/// An HTTPS origin with a certificate for `localhost` from its own CA; (address, CA PEM).
fn tls_origin(rt: &tokio::runtime::Runtime) -> (std::net::SocketAddr, String) {
    let pki = mailslot::edge::init::generate_pki(&["localhost".into()]).unwrap();
    let ck =
        mailslot::edge::CertKey::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(mailslot::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(ck.chain, ck.key)
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let body = "origin TLS";
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, pki.ca_pem)
}

pub(crate) fn https_and_unix_socket_origins_with_their_options() {
    let edge = start_edge(init_edge(""));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tls_addr, ca_pem) = tls_origin(&rt);
    let port = tls_addr.port();
    let dev = TempDir::new("device");
    let ca = dev.path().join("origin-ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    // A unix-socket origin: HTTP over the socket.
    let sock = dev.path().join("origin.sock");
    let unix = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    unix.set_nonblocking(true).unwrap();
    rt.spawn(async move {
        let unix = tokio::net::UnixListener::from_std(unix).unwrap();
        while let Ok((s, _)) = unix.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = s;
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\norigin unix").await;
            });
        }
    });
    let token = edge.token("dev42", &["*.dev42.example.com"], "1d");
    let ca = ca.display();
    let rules = format!(
        "  - hostname: trusted.dev42.example.com\n    service: https://localhost:{port}\n    origin-request: {{ ca-pool: {ca} }}\n\
         \x20 - hostname: insecure.dev42.example.com\n    service: https://127.0.0.1:{port}\n    origin-request: {{ no-tls-verify: true }}\n\
         \x20 - hostname: named.dev42.example.com\n    service: https://127.0.0.1:{port}\n    originRequest: {{ originServerName: localhost, caPool: {ca} }}\n\
         \x20 - hostname: strict.dev42.example.com\n    service: https://127.0.0.1:{port}\n    origin-request: {{ ca-pool: {ca} }}\n\
         \x20 - hostname: public-roots.dev42.example.com\n    service: https://localhost:{port}\n\
         \x20 - hostname: unix.dev42.example.com\n    service: unix:{}\n\
         \x20 - service: http_status:404\n",
        sock.display()
    );
    let _c = start_connector(dev.path(), &device_yaml(&edge, &token, 1, &rules), 1);
    for host in ["trusted", "insecure", "named"] {
        let (code, body) = get(&edge, &format!("{host}.dev42.example.com"), "/");
        assert_eq!(
            (code, String::from_utf8(body).unwrap()),
            (200, "origin TLS".to_string()),
            "{host}"
        );
    }
    // Verification is real: the wrong name, and a private CA against the public roots, fail.
    for host in ["strict", "public-roots"] {
        let (code, body) = get(&edge, &format!("{host}.dev42.example.com"), "/");
        assert_eq!(code, 502, "{host}: {}", String::from_utf8_lossy(&body));
    }
    let (code, body) = get(&edge, "unix.dev42.example.com", "/");
    assert_eq!(
        (code, String::from_utf8(body).unwrap()),
        (200, "origin unix".to_string())
    );
}

/// Two replicas of a connector (one token, two connections each); one stops answering
/// (SIGSTOP: a hung board, or one whose path went dark, sends nothing and closes
/// nothing). GETs one after another through the edge must all succeed, each within a
/// few seconds: the edge notices the silence of the stopped replica's connections and
/// retries on the replica that answers. Returns the slowest GET.
fn hung_replica(protocol: &str) -> Duration {
    let edge = start_edge(init_edge(""));
    let origin = Origin::start("A");
    let token = edge.token("dev42", &["dev42.example.com"], "1d");
    let rules = dev42_rules(origin.addr);
    let yaml = device_yaml_over(&edge, protocol, &token, 2, &rules);
    let (d1, d2) = (TempDir::new("replica1"), TempDir::new("replica2"));
    let _live = start_connector(d1.path(), &yaml, 2);
    let hung = start_connector(d2.path(), &yaml, 2);
    // Every connection carries a request and keeps a pooled stream.
    for _ in 0..8 {
        assert_eq!(get(&edge, "dev42.example.com", "/").0, 200);
    }
    hung.signal(19); // SIGSTOP
    let mut slowest = Duration::ZERO;
    for n in 0..16 {
        let url = format!("http://{}/n{n}", edge.http);
        let r = curl(&[
            "-o",
            "/dev/null",
            "--max-time",
            "8",
            "-H",
            "Host: dev42.example.com",
            &url,
        ]);
        let took = r.time;
        assert!(
            r.ok && r.status == 200,
            "GET {n} over {protocol} with one replica hung: {:03} {} after {took:?}\n{}",
            r.status,
            r.stderr,
            edge.proc.dump()
        );
        slowest = slowest.max(took);
    }
    hung.signal(18); // SIGCONT, so that it can be stopped
    slowest
}

pub(crate) fn a_hung_replica_costs_no_get_over_quic() {
    let slowest = hung_replica("quic");
    eprintln!("slowest GET with one replica hung (QUIC): {slowest:?}");
}

pub(crate) fn a_hung_replica_costs_no_get_over_http2() {
    let slowest = hung_replica("http2");
    eprintln!("slowest GET with one replica hung (HTTP/2): {slowest:?}");
}

/// The edge's flow watch over QUIC: a connector that goes silent (SIGSTOP) has both of
/// its connections closed by the edge once nothing came from it for the edge's
/// `idle-timeout` (3 s here; QUIC's own idle timeout is 30 min), while a connector that
/// keeps talking keeps its connections through the same window.
pub(crate) fn a_silent_connector_is_closed_after_the_edges_idle_timeout() {
    let edge = start_edge(init_edge("keepalive: 1s\nidle-timeout: 3s\n"));
    let origin = Origin::start("A");
    let token = edge.token("dev42", &["dev42.example.com"], "1d");
    let rules = dev42_rules(origin.addr);
    let yaml = device_yaml_over(&edge, "quic", &token, 2, &rules)
        .replace("ingress:\n", "keepalive: 1s\nidle-timeout: 3s\ningress:\n");
    let dev = TempDir::new("device");
    let connector = start_connector(dev.path(), &yaml, 2);
    // Three idle timeouts of a talking connector: nothing closed.
    assert!(
        edge.proc
            .wait_line_within("nothing from the connector", Duration::from_secs(9))
            .is_none(),
        "a connector that keeps talking was closed:\n{}",
        edge.proc.dump()
    );
    assert_eq!(get(&edge, "dev42.example.com", "/").0, 200);
    connector.signal(19); // SIGSTOP: silent from now on, closing nothing itself
    let stopped = std::time::Instant::now();
    let seen = edge
        .proc
        .wait_count("nothing from the connector", 2, Duration::from_secs(8))
        .is_some();
    connector.signal(18); // SIGCONT, so that it can be stopped
    assert!(
        seen,
        "both connections of a silent connector still open {:?} after it stopped:\n{}",
        stopped.elapsed(),
        edge.proc.dump()
    );
    eprintln!("silent connector closed after {:?}", stopped.elapsed());
}

/// The admin listener's `/tunnels` listing.
fn admin_tunnels(admin: std::net::SocketAddr) -> String {
    let r = curl(&[&format!("http://{admin}/tunnels")]);
    assert!(r.ok, "{}", r.stderr);
    String::from_utf8(r.body).unwrap()
}

/// The value of `key=` in a `/tunnels` line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

pub(crate) fn fleet_status_lists_each_connection_with_its_round_trip_and_packet_size() {
    let s = setup("admin-listen: 127.0.0.1:0\n", 2);
    let admin = s.edge.admin_addr();
    let url = format!("http://{}/bytes/{}", s.edge.http, 4 << 20);
    let r = curl(&["-H", "Host: dev42.example.com", &url]);
    assert!(r.ok && r.body.len() == 4 << 20, "download: {}", r.stderr);
    // Loopback carries 64 KiB packets: MTU discovery grows QUIC's packets from 1200
    // bytes past an Ethernet MTU's 1452 to MAX_PACKET, 6540, in a binary search of a
    // few round trips (a look in the middle of it finds a size in between, 6456 say).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = admin_tunnels(admin);
        let lines: Vec<String> = text.lines().map(String::from).collect();
        let grown = |l: &String| field(l, "packet") == "6540";
        if lines.len() == 2 && lines.iter().all(grown) {
            break lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "connections did not grow their packets to 6540 bytes:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for l in &lines {
        assert_eq!(field(l, "tunnel"), "dev42");
        assert_eq!(field(l, "protocol"), "quic");
        assert!(field(l, "from").starts_with("127.0.0.1:"), "{l}");
        assert_eq!(field(l, "packet"), "6540", "{l}");
        let rtt: f64 = field(l, "rtt_ms").parse().unwrap();
        assert!(
            rtt > 0.0 && rtt < 100.0,
            "loopback round trip {rtt} ms: {l}"
        );
        assert_eq!(field(l, "draining"), "false");
        assert!(field(l, "hosts").contains("dev42.example.com"), "{l}");
    }
    let mut indexes: Vec<&str> = lines.iter().map(|l| field(l, "index")).collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1"]);
    // The download took one tunnel stream; two more requests, one after the other,
    // take their turns on both connections, where each keeps one pooled stream.
    let streams = |lines: &[String]| -> Vec<u64> {
        let mut v: Vec<u64> = lines
            .iter()
            .map(|l| field(l, "streams").parse().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(streams(&lines), [0, 1], "{lines:?}");
    for _ in 0..2 {
        assert_eq!(get(&s.edge, "dev42.example.com", "/x").0, 200);
    }
    let lines: Vec<String> = admin_tunnels(admin).lines().map(String::from).collect();
    assert_eq!(streams(&lines), [1, 1], "{lines:?}");
}

pub(crate) fn fleet_status_of_http2_connections_has_no_packet_size() {
    let s = setup_with("admin-listen: 127.0.0.1:0\n", 1, "http2");
    let admin = s.edge.admin_addr();
    let text = admin_tunnels(admin);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(field(lines[0], "protocol"), "http2");
    assert_eq!(field(lines[0], "packet"), "-");
}

/// GET `path` of `host` with extra request headers; (status, body).
fn get_with(edge: &EdgeProc, host: &str, path: &str, headers: &[&str]) -> (u16, String) {
    let url = format!("http://{}{path}", edge.http);
    let mut args = vec!["-H".to_string(), format!("Host: {host}")];
    for h in headers {
        args.push("-H".into());
        args.push(h.to_string());
    }
    args.push(url.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = curl(&args);
    assert!(r.ok, "curl {url} failed: {}", r.stderr);
    (r.status, String::from_utf8(r.body).unwrap())
}

/// Client-address headers a visitor sends.
const SPOOFED: [&str; 5] = [
    "X-Real-IP: 6.6.6.6",
    "Forwarded: for=6.6.6.6;proto=https",
    "True-Client-IP: 6.6.6.6",
    "X-Forwarded-Port: 6666",
    "X-Forwarded-For: 6.6.6.6",
];

pub(crate) fn client_address_headers_from_visitors_never_reach_the_origin() {
    let s = setup("", 1);
    let (code, h) = get_with(&s.edge, "dev42.example.com", "/headers", &SPOOFED);
    assert_eq!(code, 200);
    assert!(!h.contains("6.6.6.6") && !h.contains("6666"), "{h}");
    assert!(!h.contains("true-client-ip"), "{h}");
    assert!(h.contains("x-real-ip: 127.0.0.1\n"), "{h}");
    assert!(h.contains("x-forwarded-for: 127.0.0.1\n"), "{h}");
    assert!(h.contains("x-forwarded-port: 80\n"), "{h}");
    assert!(
        h.contains("forwarded: for=127.0.0.1;host=\"dev42.example.com\";proto=http\n"),
        "{h}"
    );
}

pub(crate) fn client_address_headers_from_a_trusted_proxy_are_kept_and_extended() {
    let s = setup("trusted-proxies: [127.0.0.1/32]", 1);
    let (code, h) = get_with(&s.edge, "dev42.example.com", "/headers", &SPOOFED);
    assert_eq!(code, 200);
    // The proxy speaks for the visitor: its client is the client.
    assert!(h.contains("x-real-ip: 6.6.6.6\n"), "{h}");
    assert!(h.contains("x-forwarded-for: 6.6.6.6, 127.0.0.1\n"), "{h}");
    assert!(h.contains("true-client-ip: 6.6.6.6\n"), "{h}");
    assert!(h.contains("x-forwarded-port: 6666\n"), "{h}");
    assert!(
        h.contains(
            "forwarded: for=6.6.6.6;proto=https, for=127.0.0.1;host=\"dev42.example.com\";proto=http\n"
        ),
        "{h}"
    );
}

pub(crate) fn only_websocket_upgrades_reach_the_origin() {
    let s = setup("", 1);
    // curl's own h2c upgrade (`--http2` on an http:// URL): answered in HTTP/1.1, and
    // the origin never hears of the upgrade.
    let url = format!("http://{}/headers", s.edge.http);
    // `-i`: the status line and headers as received, before the body.
    let r = curl(&["--http2", "-i", "-H", "Host: dev42.example.com", &url]);
    assert!(r.ok, "{}", r.stderr);
    let out = String::from_utf8(r.body).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(
        !lower.contains("upgrade") && !lower.contains("h2c"),
        "{out}"
    );
    // Any other protocol by hand, too.
    let (code, h) = get_with(
        &s.edge,
        "dev42.example.com",
        "/headers",
        &["Connection: Upgrade", "Upgrade: mailslot-raw"],
    );
    assert_eq!(code, 200);
    assert!(!h.contains("upgrade"), "{h}");
}

pub(crate) fn a_dead_origin_shows_the_visitor_no_address_or_error() {
    let s = setup("", 1);
    let (code, body) = get(&s.edge, "dead.dev42.example.com", "/");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("unreachable"), "{body}");
    assert!(
        !body.contains("127.0.0.1") && !body.to_lowercase().contains("refused"),
        "{body}"
    );
    // The detail is in the edge's log, and the connector's.
    s.edge
        .proc
        .wait_line("origin unreachable: cannot reach 127.0.0.1:");
    s.connector.wait_line("cannot reach 127.0.0.1:");
}

pub(crate) fn an_http10_origin_is_answered_in_http11() {
    let edge = start_edge(init_edge(""));
    let origin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_addr = origin.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for tcp in origin.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match tcp.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tcp.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nold origin");
        }
    });
    let token = edge.token("dev42", &["dev42.example.com"], "1d");
    let dev = TempDir::new("device");
    let rules = dev42_rules(origin_addr);
    let _c = start_connector(dev.path(), &device_yaml(&edge, &token, 1, &rules), 1);
    let url = format!("http://{}/", edge.http);
    // `-i`: the status line and headers as received, before the body.
    let r = curl(&["--http1.1", "-i", "-H", "Host: dev42.example.com", &url]);
    assert!(r.ok, "{}", r.stderr);
    let out = String::from_utf8(r.body).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("old origin"), "{out}");
}

/// An origin speaking HTTP/1.1 on kept connections, answering by path what a test
/// needs: a HEAD's head only, interim 100 before a final answer, a chunked body with
/// extensions and trailers, a body until close, and a malformed length. Counts the
/// connections it accepted.
fn scripted_origin() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let origin = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = origin.local_addr().unwrap();
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    std::thread::spawn(move || {
        for tcp in origin.incoming() {
            let Ok(mut tcp) = tcp else { continue };
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let end = loop {
                        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match tcp.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while got.len() < end + len {
                        match tcp.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = got[end..end + len].to_vec();
                    got.drain(..end + len);
                    let path = head.split(' ').nth(1).unwrap_or("").to_string();
                    let answer: Vec<u8> = match path.as_str() {
                        "/head" => b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n".to_vec(),
                        "/continue" => [
                            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: "[..],
                            body.len().to_string().as_bytes(),
                            b"\r\n\r\n",
                            &body,
                        ]
                        .concat(),
                        "/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n".to_vec(),
                        "/close" => {
                            let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end");
                            return;
                        }
                        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\nx".to_vec(),
                    };
                    if tcp.write_all(&answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

pub(crate) fn origin_heads_interim_answers_chunks_and_bodies_until_close_pass_through() {
    use std::sync::atomic::Ordering;
    let edge = start_edge(init_edge(""));
    let (origin, conns) = scripted_origin();
    let token = edge.token("dev42", &["dev42.example.com"], "1d");
    let dev = TempDir::new("device");
    let _c = start_connector(
        dev.path(),
        &device_yaml(&edge, &token, 1, &dev42_rules(origin)),
        1,
    );
    let url = |path: &str| format!("http://{}{path}", edge.http);
    let host = ["-H", "Host: dev42.example.com"];
    // A HEAD: the origin's length, no body; the kept connection is not left waiting
    // for one (the next requests on it are answered).
    let r = curl(&[host[0], host[1], "-I", &url("/head")]);
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert_eq!(r.header("content-length"), Some("1000"));
    // Chunked, with an extension and trailers: the body whole.
    let r = curl(&[host[0], host[1], &url("/chunked")]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "hello world"),
        "{}",
        r.stderr
    );
    // Expect: 100-continue: the origin's interim answer is not the response.
    let r = curl(&[
        host[0],
        host[1],
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        "posted",
        &url("/continue"),
    ]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (201, "posted"),
        "{}",
        r.stderr
    );
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one origin connection, kept"
    );
    // A body that ends when the origin closes: whole, and that connection not kept.
    let r = curl(&[host[0], host[1], &url("/close")]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "until the end"),
        "{}",
        r.stderr
    );
    // A malformed length: 502, nothing of it passed on.
    let r = curl(&[host[0], host[1], &url("/bad")]);
    assert_eq!(r.status, 502, "{}", r.text());
    let r = curl(&[host[0], host[1], &url("/chunked")]);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "hello world"),
        "{}",
        r.stderr
    );
}

/// A GET through the edge with curl's own time limit; (status, how long it took).
fn timed_get(edge: &EdgeProc, host: &str, path: &str, max_secs: u32) -> (String, Duration) {
    let url = format!("http://{}{path}", edge.http);
    let r = curl(&[
        "-o",
        "/dev/null",
        "--max-time",
        &max_secs.to_string(),
        "-H",
        &format!("Host: {host}"),
        &url,
    ]);
    (format!("{:03}", r.status), r.time)
}

pub(crate) fn a_tunnel_whose_connector_died_answers_502_within_seconds() {
    let mut s = setup("", 2);
    for _ in 0..4 {
        assert_eq!(get(&s.edge, "dev42.example.com", "/").0, 200);
    }
    // Killed: its connections stay open at the edge until the QUIC idle timeout.
    s.connector.signal(9);
    s.connector.wait_exit(WAIT).unwrap();
    for n in 0..3 {
        let (code, took) = timed_get(&s.edge, "dev42.example.com", &format!("/n{n}"), 20);
        assert!(
            code == "502" && took < Duration::from_secs(8),
            "GET {n} to a tunnel without a live connector: {code:?} after {took:?}\n{}",
            s.edge.proc.dump()
        );
    }
    // A POST (not retried) too.
    let url = format!("http://{}/post", s.edge.http);
    let r = curl(&[
        "-o",
        "/dev/null",
        "--max-time",
        "20",
        "-H",
        "Host: dev42.example.com",
        "--data",
        "x=1",
        &url,
    ]);
    let took = r.time;
    assert!(
        r.status == 502 && took < Duration::from_secs(8),
        "POST: {:03} after {took:?}",
        r.status
    );
}

pub(crate) fn a_connector_restarted_after_a_crash_replaces_its_dead_connections_at_once() {
    let edge = start_edge(init_edge(""));
    let origin = Origin::start("A");
    // A tunnel name of its own: instance slots are shared by every connector of one
    // tunnel name and user on this machine, other tests' included.
    let tunnel = format!("crashy{}", std::process::id());
    let token = edge.token(&tunnel, &["dev42.example.com"], "1d");
    let rules = dev42_rules(origin.addr);
    let yaml = device_yaml(&edge, &token, 2, &rules)
        .replace("tunnel: dev42\n", &format!("tunnel: {tunnel}\n"));
    let dev = TempDir::new("device");
    // A replica with the very same config on the same machine: another instance,
    // never replaced.
    let mut replica = start_connector(dev.path(), &yaml, 2);
    let mut first = start_connector(dev.path(), &yaml, 2);
    for _ in 0..8 {
        assert_eq!(get(&edge, "dev42.example.com", "/").0, 200);
    }
    first.signal(9); // SIGKILL: nothing tells the edge
    first.wait_exit(WAIT).unwrap();
    let gone_before = edge.proc.count(": disconnected: ");
    // The supervisor starts it again, with the same config.
    let mut second = start_connector(dev.path(), &yaml, 2);
    // The dead process's two connections are closed at once, not after the idle timeout
    // (45 s); the replica's stay.
    let took = edge
        .proc
        .wait_count(": disconnected: ", gone_before + 2, Duration::from_secs(5));
    assert!(
        took.is_some(),
        "the dead connections are still listed\n{}",
        edge.proc.dump()
    );
    assert_eq!(edge.proc.count("superseded"), 2, "{}", edge.proc.dump());
    // Requests are served at once: none meets a dead connection.
    for n in 0..12 {
        let (code, _) = timed_get(&edge, "dev42.example.com", &format!("/n{n}"), 10);
        assert_eq!(code, "200");
    }
    assert_eq!(
        edge.proc.count("stopped answering"),
        0,
        "{}",
        edge.proc.dump()
    );
    assert_eq!(
        edge.proc.count(": disconnected: "),
        gone_before + 2,
        "only the dead process's connections go\n{}",
        edge.proc.dump()
    );
    // Both stop cleanly: the next visitor hears at once that nothing serves the host
    // (before, the killed process's connections still took requests, for 30 s each).
    for p in [&mut second, &mut replica] {
        p.signal(15);
        assert!(p.wait_exit(WAIT).is_some_and(|s| s.success()));
    }
    let (code, took) = timed_get(&edge, "dev42.example.com", "/", 10);
    assert!(
        code == "404" && took < Duration::from_secs(3),
        "{code:?} after {took:?}"
    );
}

/// QUIC key updates (RFC 9001, section 6) on a tunnel connection: a connector that
/// updates its packet keys again and again, with requests through the tunnel before,
/// between and after, keeps being served. The connector here is in the test process
/// (quinn, as the connector's, and the protocol through `mailslot::wire`) because a
/// key update can only be forced from inside the process that holds the connection;
/// the edge is the real one. Each forced update is one the edge takes from the peer
/// (it makes the next keys when the first packet of the new phase arrives); the
/// connector's side makes its keys when it starts the update. quinn ignores a forced
/// update while the previous one's old keys are kept (three probe timeouts after it was
/// acknowledged, about 80 ms on loopback); the requests between two updates take longer.
pub(crate) fn quic_key_updates_keep_the_tunnel_working() {
    use mailslot::wire::{
        self, ConnectorMsg, EdgeMsg, Register, RuleAction, RuleInfo, StreamHeader, StreamReply,
        PROTOCOL_VERSION,
    };
    use rustls::pki_types::pem::PemObject;

    /// Bytes of each answer: many packets each way per request.
    const BODY: usize = 256 * 1024;
    const HOST: &str = "keys.dev42.example.com";

    let edge = start_edge(init_edge(""));
    let token = edge.token("keys", &[HOST], "1d");
    let rt = tokio::runtime::Runtime::new().unwrap();

    // A connector's TLS settings (the crate's own), trusting this edge's CA.
    let ca = rustls::pki_types::CertificateDer::from_pem_file(edge.ca()).unwrap();
    let tls = mailslot::tls::edge_client_config(Some(&ca)).unwrap();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let endpoint = {
        let _guard = rt.enter();
        let mut e = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        e.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
        e
    };

    // Register as a connector does: the edge's hello, our registration, its answer.
    let (conn, control_send, mut control_recv) = rt.block_on(async {
        let conn = endpoint
            .connect(edge.tunnel, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        match wire::read_control::<_, EdgeMsg>(&mut recv).await {
            Ok(EdgeMsg::Hello { .. }) => {}
            other => panic!("expected the edge's hello, got {other:?}"),
        }
        let rule = |hostname: Option<&str>, action| RuleInfo {
            hostname: hostname.map(str::to_string),
            path: None,
            action,
            host_header: None,
        };
        let msg = ConnectorMsg::Register(Register {
            version: PROTOCOL_VERSION,
            token,
            connector_id: [7; 16],
            conn_index: 0,
            rules_generation: 1,
            rules: vec![
                rule(Some(HOST), RuleAction::Http),
                rule(None, RuleAction::Status(404)),
            ],
            software: "key-update test".into(),
        });
        wire::write_control(&mut send, &msg).await.unwrap();
        match wire::read_control::<_, EdgeMsg>(&mut recv).await {
            Ok(EdgeMsg::Registered { .. }) => {}
            other => panic!("expected registered, got {other:?}"),
        }
        (conn, send, recv)
    });
    // The origin inside the connector: each request on a data stream gets BODY bytes.
    let serving = conn.clone();
    rt.spawn(async move {
        let _keep = control_send;
        let control = async {
            while wire::read_control::<_, EdgeMsg>(&mut control_recv)
                .await
                .is_ok()
            {}
        };
        let streams = async {
            while let Ok((mut send, mut recv)) = serving.accept_bi().await {
                tokio::spawn(async move {
                    let header: StreamHeader = wire::read_stream_frame(&mut recv).await.unwrap();
                    assert_eq!(header.hostname, HOST);
                    let frame = wire::encode_stream_frame(&StreamReply::Ok).unwrap();
                    send.write_all(&frame).await.unwrap();
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match recv.read(&mut chunk).await {
                                Ok(Some(n)) => head.extend_from_slice(&chunk[..n]),
                                _ => return,
                            }
                        }
                        head.clear();
                        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY}\r\n\r\n");
                        send.write_all(answer.as_bytes()).await.unwrap();
                        send.write_all(&pattern(BODY as u64)).await.unwrap();
                    }
                });
            }
        };
        tokio::select! {
            _ = control => {}
            _ = streams => {}
        }
    });

    let fetch = |round: usize| {
        let (code, body) = get(&edge, HOST, "/");
        assert_eq!(code, 200, "request {round}");
        assert_eq!(
            body,
            pattern(BODY as u64),
            "request {round}: the body arrives intact"
        );
    };
    fetch(0);
    for update in 1..=6 {
        conn.force_key_update();
        for round in 0..5 {
            fetch(update * 10 + round);
        }
    }
    assert!(conn.close_reason().is_none(), "{:?}", conn.close_reason());
    endpoint.close(quinn::VarInt::from_u32(0), b"done");
    rt.block_on(endpoint.wait_idle());
}
