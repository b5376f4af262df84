//! The edge as a shield: hostile visitor traffic dies at the edge. Every test counts
//! what the origin received to prove nothing reached the device.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::*;

struct Shielded {
    edge: EdgeProc,
    _connector: Proc,
    origin: Origin,
    _dev: TempDir,
}

fn setup(edge_yaml: &str) -> Shielded {
    shielded(edge_yaml, dev42_rules)
}

/// An edge with `edge_yaml`, an origin, and a connector of tunnel dev42 whose ingress
/// `rules` gives for the origin's address.
fn shielded(edge_yaml: &str, rules: impl Fn(std::net::SocketAddr) -> String) -> Shielded {
    let edge = start_edge(init_edge(edge_yaml));
    let origin = Origin::start("A");
    let token = edge.token("dev42", &["dev42.example.com", "*.dev42.example.com"], "1d");
    let rules = rules(origin.addr);
    let dev = TempDir::new("device");
    let connector = start_connector(dev.path(), &device_yaml(&edge, &token, 1, &rules), 1);
    Shielded {
        edge,
        _connector: connector,
        origin,
        _dev: dev,
    }
}

/// Reads until the peer closes or `within` passes; (bytes, closed by peer).
fn read_until_close(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

pub(crate) fn slowloris_and_slow_post_are_cut_off_before_the_device() {
    let s = setup("limits:\n  request-head-timeout: 2s\n  body-timeout: 2s\n");
    // Slowloris: a request head trickled a byte at a time.
    let mut c = TcpStream::connect(s.edge.http).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: dev42.example.com\r\n")
        .unwrap();
    let started = Instant::now();
    let mut cut = false;
    for _ in 0..40 {
        if c.write_all(b"X").is_err() {
            cut = true;
            break;
        }
        let (_, closed) = read_until_close(&mut c, Duration::from_millis(250));
        if closed {
            cut = true;
            break;
        }
    }
    assert!(cut, "the trickling client was not cut off");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut after {:?}",
        started.elapsed()
    );

    // Slow POST: a head announcing a body that never comes in time.
    let mut c = TcpStream::connect(s.edge.http).unwrap();
    c.write_all(b"POST /sha256 HTTP/1.1\r\nHost: dev42.example.com\r\nContent-Length: 100000\r\n\r\n0123456789").unwrap();
    let (resp, _) = read_until_close(&mut c, Duration::from_secs(8));
    let resp = String::from_utf8_lossy(&resp);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert_eq!(
        s.origin.connections.load(Ordering::SeqCst),
        0,
        "the device saw a stream"
    );
}

pub(crate) fn oversized_heads_and_bodies_and_smuggling_shapes_are_refused() {
    let s =
        setup("limits:\n  max-body-bytes: 1KiB\n  max-head-bytes: 8KiB\n  max-url-bytes: 1KiB\n");
    let url = format!("http://{}/x", s.edge.http);
    let host = "Host: dev42.example.com";
    let code = curl_code;
    let big = format!("X-Big: {}", "a".repeat(20_000));
    assert_eq!(code(&["-H", host, "-H", &big, &url]), "431");
    let body = "b".repeat(5000);
    assert_eq!(code(&["-H", host, "--data-binary", &body, &url]), "413");
    assert_eq!(
        code(&[
            "-H",
            host,
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &body,
            &url
        ]),
        "413"
    );
    let long = format!("http://{}/{}", s.edge.http, "p".repeat(2000));
    assert_eq!(code(&["-H", host, &long]), "414");

    // Raw requests curl would not send.
    let raw = |req: &[u8]| {
        let mut c = TcpStream::connect(s.edge.http).unwrap();
        c.write_all(req).unwrap();
        let (resp, _) = read_until_close(&mut c, Duration::from_secs(5));
        String::from_utf8_lossy(&resp).into_owned()
    };
    let two_cl = raw(b"POST /x HTTP/1.1\r\nHost: dev42.example.com\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde");
    assert!(two_cl.starts_with("HTTP/1.1 400"), "two lengths: {two_cl}");
    let bad_chunk = raw(b"POST /x HTTP/1.1\r\nHost: dev42.example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n");
    assert!(
        bad_chunk.starts_with("HTTP/1.1 400"),
        "bad chunk: {bad_chunk}"
    );
    let no_host = raw(b"GET /x HTTP/1.1\r\n\r\n");
    assert!(no_host.starts_with("HTTP/1.1 400"), "no host: {no_host}");
    assert_eq!(
        s.origin.requests.load(Ordering::SeqCst),
        0,
        "a refused request reached the origin"
    );
}

pub(crate) fn a_burst_from_one_address_is_rate_limited_while_another_is_served() {
    let s = setup("admin-listen: 127.0.0.1:0\nrate-limits:\n  - hostname: dev42.example.com\n    rate: 2/s\n    burst: 5\n");
    let url = format!("http://{}/x", s.edge.http);
    let run = |iface: &str, n: usize| {
        let mut codes = Vec::new();
        for _ in 0..n {
            codes.push(curl(&[
                "--interface",
                iface,
                "-H",
                "Host: dev42.example.com",
                "-o",
                "/dev/null",
                &url,
            ]));
        }
        codes
    };
    let a = run("127.0.0.1", 15);
    let limited: Vec<_> = a
        .iter()
        .filter(|r| r.version == "1.1" && r.status == 429)
        .collect();
    assert!(
        limited.len() >= 5,
        "a burst of 15 over a burst allowance of 5 got {} 429s",
        limited.len()
    );
    assert!(
        limited.iter().all(|r| r.header("retry-after").is_some()),
        "429 without Retry-After"
    );
    let b = run("127.0.0.2", 5);
    assert!(
        b.iter().all(|r| r.version == "1.1" && r.status == 200),
        "the second client was limited: {:?}",
        b.iter().map(|r| r.status).collect::<Vec<_>>()
    );
}

pub(crate) fn security_headers_are_added_per_hostname() {
    let s = setup(
        "hosts:\n  - hostname: dev42.example.com\n    hsts: max-age=600\n    nosniff: true\n",
    );
    let url = format!("http://{}/x", s.edge.http);
    let r = curl(&["-H", "Host: dev42.example.com", "-o", "/dev/null", &url]);
    let head = &r.headers;
    assert!(
        r.header("strict-transport-security")
            .is_some_and(|v| v.starts_with("max-age=600")),
        "{head:?}"
    );
    assert_eq!(
        r.header("x-content-type-options"),
        Some("nosniff"),
        "{head:?}"
    );
}

fn vm_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

pub(crate) fn a_thousand_visitors_on_one_tunnel_do_not_starve_another() {
    let edge = start_edge(init_edge("limits:\n  max-conns-per-ip: 4000\n"));
    let a = Origin::start("A");
    let b = Origin::start("B");
    let mut procs = Vec::new();
    let mut dirs = Vec::new();
    for (name, origin) in [("busy", &a), ("quiet", &b)] {
        let token = edge.token(name, &[&format!("{name}.example.com")], "1d");
        let rules = format!("  - hostname: {name}.example.com\n    service: http://{}\n  - service: http_status:404\n", origin.addr);
        let dev = TempDir::new("device");
        procs.push(start_connector(
            dev.path(),
            &device_yaml(&edge, &token, 2, &rules),
            2,
        ));
        dirs.push(dev);
    }
    let busy_pid = procs[0].pid();
    let http = edge.http;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // 1,000 visitors hold requests open on the busy tunnel (each origin answer takes 2 s).
    let flood = rt.spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            tasks.push(tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let Ok(mut c) = tokio::net::TcpStream::connect(http).await else {
                    return "connect failed".to_string();
                };
                let req = b"GET /delay/2000 HTTP/1.1\r\nHost: busy.example.com\r\nConnection: close\r\n\r\n";
                if c.write_all(req).await.is_err() {
                    return "write failed".to_string();
                }
                let mut out = Vec::new();
                let r = tokio::time::timeout(Duration::from_secs(60), c.read_to_end(&mut out)).await;
                let head = String::from_utf8_lossy(&out).to_ascii_lowercase();
                if r.is_err() {
                    "hung".to_string()
                } else if head.starts_with("http/1.1 503") && head.contains("retry-after:") {
                    "503".to_string()
                } else if head.starts_with("http/1.1 200") {
                    "200".to_string()
                } else {
                    // Anything else names its status and the edge's reason (the body's
                    // last line), so a failure says which path gave it.
                    let reason = head.trim_end().lines().last().unwrap_or("").chars().take(120);
                    format!("{} {}", head.get(9..12).unwrap_or("???"), reason.collect::<String>())
                }
            }));
        }
        let mut codes = std::collections::BTreeMap::new();
        for t in tasks {
            *codes.entry(t.await.unwrap_or_else(|_| "panic".into())).or_insert(0) += 1;
        }
        codes
    });
    // Meanwhile the quiet tunnel answers promptly.
    let deadline = Instant::now() + Duration::from_secs(3);
    while a.requests.load(Ordering::SeqCst) < 100 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    for _ in 0..10 {
        let started = Instant::now();
        let (code, _) = get(&edge, "quiet.example.com", "/q");
        assert_eq!(code, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "quiet tunnel took {:?}",
            started.elapsed()
        );
    }
    let codes = rt.block_on(flood).unwrap();
    eprintln!("busy tunnel outcomes: {codes:?}");
    // Beyond what the tunnel carries at once, visitors wait in a bounded queue and
    // then get 503 with Retry-After: never a hang or an error of another kind.
    let served = codes.get("200").copied().unwrap_or(0);
    let shed = codes.get("503").copied().unwrap_or(0);
    assert_eq!(served + shed, 1000, "{codes:?}");
    assert!(served >= 256, "{codes:?}");
    let hwm = vm_kib(busy_pid, "VmHWM:");
    eprintln!("busy connector peak RSS: {hwm} KiB (debug build)");
    assert!(hwm < 64 * 1024, "connector peak RSS {hwm} KiB");
}

/// A request that waits for a stream while every stream the connector allows on its
/// connection is held by a slow request is served once one frees, not refused as a
/// silent tunnel: the connector, which has nothing to say while its origin works, is
/// asked for an acknowledgement and gives one. (Before, over QUIC, such a request had
/// sent nothing to acknowledge, and after the silence window the edge answered 502
/// "not answering" and routed around a live connection.)
pub(crate) fn a_request_waiting_for_a_busy_connections_stream_is_served() {
    let s = setup("");
    let http = s.edge.http;
    // The connector takes 128 streams per connection, one of them the control stream:
    // 140 slow requests fill the other 127 and leave 13 waiting for one.
    const SLOW: usize = 140;
    let slow: Vec<_> = (0..SLOW)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(http).unwrap();
                c.write_all(b"GET /delay/3000 HTTP/1.1\r\nHost: dev42.example.com\r\nConnection: close\r\n\r\n")
                    .unwrap();
                let (out, _) = read_until_close(&mut c, Duration::from_secs(30));
                let text = String::from_utf8_lossy(&out).into_owned();
                text.lines().next().unwrap_or("").to_string() + " | " + text.lines().last().unwrap_or("")
            })
        })
        .collect();
    // Every stream is busy once the origin holds 127 requests.
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.origin.requests.load(Ordering::SeqCst) < 127 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(
        s.origin.requests.load(Ordering::SeqCst) >= 127,
        "the slow requests never filled the streams"
    );
    let started = Instant::now();
    let (code, body) = get(&s.edge, "dev42.example.com", "/after");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    eprintln!(
        "a request behind {SLOW} slow ones served after {:?}",
        started.elapsed()
    );
    let mut outcomes = std::collections::BTreeMap::new();
    for t in slow {
        *outcomes.entry(t.join().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert!(
        outcomes.keys().all(|k| k.starts_with("HTTP/1.1 200")),
        "{outcomes:?}"
    );
}

/// An edge whose device serves `*.dev42.example.com` (and `dev42.example.com`) with
/// `rules` first, then the origin.
fn setup_with(edge_yaml: &str, rules: &str) -> Shielded {
    shielded(edge_yaml, |o| {
        format!("{rules}  - hostname: dev42.example.com\n    service: http://{o}\n  - hostname: \"*.dev42.example.com\"\n    service: http://{o}\n  - service: http_status:404\n")
    })
}

/// Sends `req` as is over one TCP connection; the status line's code.
fn raw_status(addr: std::net::SocketAddr, req: &str) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(req.as_bytes()).unwrap();
    let (resp, _) = read_until_close(&mut c, Duration::from_secs(10));
    let resp = String::from_utf8_lossy(&resp).into_owned();
    resp.get(9..12).unwrap_or(&resp).to_string()
}

/// curl's status code for `args`.
fn curl_code(args: &[&str]) -> String {
    let mut all = vec!["-o", "/dev/null"];
    all.extend_from_slice(args);
    format!("{:03}", curl(&all).status)
}

pub(crate) fn an_empty_dns_label_does_not_bypass_an_access_policy() {
    let s = setup_with(
        "access:\n  - hostname: \"*.dev42.example.com\"\n    allow: signed\n",
        "",
    );
    let http = format!("http://{}/", s.edge.http);
    let https = format!("https://127.0.0.1:{}/", s.edge.https.port());
    let ca = s.edge.ca();
    let ca = ca.to_str().unwrap();
    // The proper name asks for credentials, however it is spelled.
    for host in [
        "grafana.dev42.example.com",
        "GRAFANA.Dev42.example.com.",
        "grafana.dev42.example.com:80",
    ] {
        let h = format!("Host: {host}");
        assert_eq!(curl_code(&["-H", &h, &http]), "401", "{host}");
    }
    // Spellings with an empty label (and other non-names) never reach the origin:
    // HTTP/1.1 Host header, absolute-form target, HTTP/2 :authority (h2c and TLS).
    for (host, h2) in [
        ("grafana..dev42.example.com", true),
        (".dev42.example.com", true),
        ("grafana.dev42.example.com..", true),
        ("grafana_x.dev42.example.com", true),
        // Not an authority HTTP/2 carries at all.
        ("grafana.dev42.example.com:", false),
    ] {
        let h = format!("Host: {host}");
        assert_eq!(curl_code(&["-H", &h, &http]), "400", "Host: {host}");
        let absolute = format!(
            "GET http://{host}/ HTTP/1.1\r\nHost: grafana.dev42.example.com\r\nConnection: close\r\n\r\n"
        );
        let code = raw_status(s.edge.http, &absolute);
        assert!(code == "400", "absolute-form {host}: {code}");
        if !h2 {
            continue;
        }
        assert_eq!(
            curl_code(&["--http2-prior-knowledge", "-H", &h, &http]),
            "400",
            "h2c :authority {host}"
        );
        assert_eq!(
            curl_code(&["--http2", "--cacert", ca, "-H", &h, &https]),
            "400",
            "h2 :authority {host}"
        );
    }
    // Two Host headers, or a bad one beside an absolute-form target: 400 too.
    let two = "GET / HTTP/1.1\r\nHost: grafana.dev42.example.com\r\nHost: x.example.com\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(s.edge.http, two), "400");
    let bad_beside = "GET http://x.dev42.example.com/ HTTP/1.1\r\nHost: grafana..dev42.example.com\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(s.edge.http, bad_beside), "400");
    assert_eq!(
        s.origin.requests.load(Ordering::SeqCst),
        0,
        "a request past the access policy reached the origin"
    );
}

pub(crate) fn path_spellings_do_not_bypass_path_rules_or_rate_limits() {
    let s = setup_with(
        "rate-limits:\n  - hostname: dev42.example.com\n    path: ^/login\n    rate: 1/h\n    burst: 1\n",
        "  - hostname: dev42.example.com\n    path: ^/admin\n    service: http_status:403\n",
    );
    let url = |p: &str| format!("http://{}{p}", s.edge.http);
    let host = "Host: dev42.example.com";
    let code = |p: &str| curl_code(&["--path-as-is", "-H", host, &url(p)]);
    for p in [
        "/admin/",
        "/%61dmin/",
        "/%61%64%6D%69%6E/",
        "//admin/",
        "/x/../admin/",
        "/./admin/",
        "/x/%2e%2e/admin/",
    ] {
        assert_eq!(code(p), "403", "{p}");
    }
    assert_eq!(
        s.origin.requests.load(Ordering::SeqCst),
        0,
        "a path rule was bypassed"
    );
    // Ambiguous spellings are refused outright.
    for p in ["/x%2F..%2Fadmin/", "/x/..;/admin/", "/admin%00", "/%zz"] {
        assert_eq!(code(p), "400", "{p}");
    }
    // The origin gets the normal form.
    let r = curl(&[
        "--path-as-is",
        "-H",
        host,
        &url("/a/./b//%63/../d%7e?q=/../x"),
    ]);
    assert_eq!(r.text(), "origin A /a/b/d~");
    let before = s.origin.requests.load(Ordering::SeqCst);
    // One login an hour: the first spelling takes it, the others are limited.
    assert_eq!(code("/login"), "200");
    for p in ["/%6cogin", "//login", "/x/../login", "/./login"] {
        assert_eq!(code(p), "429", "{p}");
    }
    assert_eq!(s.origin.requests.load(Ordering::SeqCst), before + 1);
}

pub(crate) fn a_rule_table_over_the_compiled_pattern_budget_is_refused_with_the_reason() {
    let edge = start_edge(init_edge(""));
    let token = edge.token("dev42", &["dev42.example.com"], "1d");
    // Sixteen patterns, each within the per-pattern limit, too big together.
    let mut rules = String::new();
    for i in 0..16 {
        rules.push_str(&format!(
            "  - hostname: dev42.example.com\n    path: ^/{i}/[a-z]{{1000}}\n    service: http_status:418\n"
        ));
    }
    rules.push_str("  - service: http_status:404\n");
    let dev = TempDir::new("device");
    let bin = compile(dev.path(), &device_yaml(&edge, &token, 1, &rules));
    let connector = Proc::spawn(
        "connector",
        std::process::Command::new(MAILSLOT)
            .arg("run")
            .arg("--config")
            .arg(&bin),
    );
    let line = connector.wait_line("refused the tunnel");
    assert!(
        line.contains("budget of 4096 KiB per tunnel"),
        "refusal without the reason: {line}"
    );
}

/// Reads one HTTP/1.1 response with a `content-length` body from `s` (bytes already
/// read in `buf` first); returns it and leaves what follows in `buf`.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let resp: Vec<u8> = buf.drain(..end + 4 + len).collect();
                return String::from_utf8_lossy(&resp).into_owned();
            }
        }
        assert!(Instant::now() < deadline, "no whole response in {buf:?}");
        let mut chunk = [0u8; 4096];
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a whole response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

pub(crate) fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let s = setup("");
    let host = "Host: dev42.example.com";
    let mut c = TcpStream::connect(s.edge.http).unwrap();
    // Four requests in one write: a GET, a POST with its body, a HEAD, and a GET that
    // closes the connection (the last one is served by hyper's server after the
    // edge's own HTTP/1.1 path hands the connection over).
    let reqs = format!(
        "GET /one HTTP/1.1\r\n{host}\r\n\r\n\
         POST /sha256 HTTP/1.1\r\n{host}\r\nContent-Length: 5\r\n\r\nhello\
         HEAD /three HTTP/1.1\r\n{host}\r\n\r\n\
         GET /four HTTP/1.1\r\n{host}\r\nConnection: close\r\n\r\n"
    );
    c.write_all(reqs.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let one = read_response(&mut c, &mut buf);
    assert!(one.starts_with("HTTP/1.1 200 OK\r\n"), "{one}");
    assert!(one.ends_with("origin A /one"), "{one}");
    let two = read_response(&mut c, &mut buf);
    assert!(
        two.ends_with("2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824 5"),
        "{two}"
    );
    // HEAD: the length of the GET's body, and no body.
    let head_end = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            assert!(Instant::now() < deadline);
            let mut chunk = [0u8; 4096];
            let n = c.read(&mut chunk).unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let three: Vec<u8> = buf.drain(..head_end).collect();
    let three = String::from_utf8_lossy(&three).to_lowercase();
    assert!(three.starts_with("http/1.1 200 ok\r\n"), "{three}");
    assert!(three.contains("content-length: 15\r\n"), "{three}");
    let (rest, closed) = read_until_close(&mut c, Duration::from_secs(10));
    buf.extend_from_slice(&rest);
    let four = String::from_utf8_lossy(&buf);
    assert!(four.starts_with("HTTP/1.1 200 OK\r\n"), "{four}");
    assert!(four.ends_with("origin A /four"), "{four}");
    assert!(closed, "Connection: close was not honoured");
    assert_eq!(s.origin.requests.load(Ordering::SeqCst), 4);
}

pub(crate) fn smuggling_attempts_on_raw_sockets_never_reach_the_origin_as_requests() {
    let s = setup("");
    let raw = |req: &str| {
        let mut c = TcpStream::connect(s.edge.http).unwrap();
        c.write_all(req.as_bytes()).unwrap();
        let (resp, _) = read_until_close(&mut c, Duration::from_secs(5));
        String::from_utf8_lossy(&resp).into_owned()
    };
    let host = "Host: dev42.example.com";
    let smuggled = format!("GET /smuggled HTTP/1.1\r\n{host}\r\n\r\n");
    // CL.TE and TE.CL: chunked wins, the length is dropped, the connection closes
    // after the answer; what follows the empty chunked body is never a request.
    for order in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
    ] {
        let resp = raw(&format!(
            "POST /sha256 HTTP/1.1\r\n{host}\r\n{order}\r\n\r\n0\r\n\r\n{smuggled}"
        ));
        assert!(resp.starts_with("HTTP/1.1 200"), "{order}: {resp}");
        assert!(!resp.contains("/smuggled"), "{order}: {resp}");
    }
    // A request hidden in a body of declared length is body, not a request.
    let mut c = TcpStream::connect(s.edge.http).unwrap();
    let body = smuggled.clone();
    c.write_all(
        format!(
            "POST /sha256 HTTP/1.1\r\n{host}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let mut buf = Vec::new();
    let resp = read_response(&mut c, &mut buf);
    assert!(resp.ends_with(&format!(" {}", body.len())), "{resp}");
    drop(c);
    // Shapes refused outright: an obsolete line fold, a length that is not a number,
    // a Transfer-Encoding other than chunked, two different lengths.
    for bad in [
        format!("GET /x HTTP/1.1\r\n{host}\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n"),
        format!("POST /x HTTP/1.1\r\n{host}\r\nContent-Length: +4\r\n\r\nabcd"),
        format!("POST /x HTTP/1.1\r\n{host}\r\nContent-Length: 0x4\r\n\r\nabcd"),
        format!("POST /x HTTP/1.1\r\n{host}\r\nTransfer-Encoding: gzip\r\n\r\nabcd"),
        format!(
            "POST /x HTTP/1.1\r\n{host}\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd"
        ),
        format!("GET /x HTTP/1.1\r\n{host}\r\n{host}\r\n\r\n"),
    ] {
        let resp = raw(&bad);
        assert!(resp.starts_with("HTTP/1.1 400"), "{bad:?}: {resp}");
    }
    assert_eq!(
        s.origin.requests.load(Ordering::SeqCst),
        3,
        "only the two chunked POSTs and the one with a length reached the origin"
    );
}
