//! The admin listener's request metrics against what real clients did: a real edge, a
//! real connector, real origins, curl over HTTP/1.1 and HTTP/2, a WebSocket, and a raw
//! stream through a public TCP port; then `/metrics` counts each request under its tunnel, status class,
//! protocol and answerer, the byte counters cover the bodies, and the latency histogram
//! counts every request the origin answered. The text is checked line by line here, and
//! by the Prometheus project's own parser (`prometheus_client`) when Python has it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::common::*;

const WEB: &str = "dev42.example.com";
const STATUS: &str = "status.dev42.example.com";
const TEAPOT: &str = "teapot.dev42.example.com";
const DB: &str = "db.dev42.example.com";
const WS: &str = "ws.dev42.example.com";

/// An origin that answers `/N` with status N.
struct StatusOrigin {
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

impl StatusOrigin {
    fn start() -> StatusOrigin {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let code = req.uri().path().trim_start_matches('/').parse().unwrap();
                        let mut r = Response::new(Full::new(Bytes::from_static(b"status\n")));
                        *r.status_mut() = StatusCode::from_u16(code).unwrap();
                        Ok::<_, Infallible>(r)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        StatusOrigin { addr, _rt: rt }
    }
}

/// A WebSocket origin that echoes every message, on `rt`.
fn ws_echo_origin(rt: &tokio::runtime::Runtime) -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `n` binary messages of `size` bytes through the edge's WebSocket to `WS` and
/// reads each echo back.
fn websocket_echoes(rt: &tokio::runtime::Runtime, edge: &EdgeProc, n: usize, size: usize) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(edge.http).await.unwrap();
        let url = format!("ws://{WS}/echo");
        let (mut ws, resp) = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..n {
            let msg = vec![i as u8; size];
            ws.send(Message::binary(msg.clone())).await.unwrap();
            let back = tokio::time::timeout(WAIT, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(back.into_data().as_ref(), msg.as_slice());
        }
        let _ = ws.close(None).await;
    });
}

/// The samples of a `/metrics` text: series (name and labels as written) → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// Checks the text with `prometheus_client`'s parser and, for each histogram, that its
/// buckets are cumulative and end in `+Inf` equal to `_count`. Returns false when
/// Python has no `prometheus_client`.
fn checked_by_prometheus_client(text: &str) -> bool {
    let has = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        return false;
    }
    let dir = TempDir::new("metrics");
    let file = dir.join("metrics.txt");
    std::fs::write(&file, text).unwrap();
    let script = r#"
import math, sys
from prometheus_client.parser import text_string_to_metric_families
families = list(text_string_to_metric_families(open(sys.argv[1]).read()))
for f in families:
    assert f.type in ("counter", "gauge", "histogram"), (f.name, f.type)
    if f.type != "histogram":
        continue
    series = {}
    for s in f.samples:
        key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
        series.setdefault(key, {"buckets": [], "count": None, "sum": None})
        if s.name.endswith("_bucket"):
            series[key]["buckets"].append((float(s.labels["le"]), s.value))
        elif s.name.endswith("_count"):
            series[key]["count"] = s.value
        elif s.name.endswith("_sum"):
            series[key]["sum"] = s.value
    for key, h in series.items():
        b = h["buckets"]
        assert b and b[-1][0] == math.inf, (key, b)
        assert all(x[0] < y[0] and x[1] <= y[1] for x, y in zip(b, b[1:])), (key, b)
        assert b[-1][1] == h["count"] and h["sum"] is not None, (key, h)
print(len(families), "families parsed")
"#;
    let out = run_ok(
        "prometheus_client parses /metrics",
        Command::new("python3").args(["-c", script]).arg(&file),
    );
    println!(
        "prometheus_client: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    true
}

pub(crate) fn requests_latency_and_bytes_are_counted_per_tunnel() {
    let edge = start_edge(init_edge(&format!(
        "admin-listen: 127.0.0.1:0\ntcp-ports:\n  - listen: 127.0.0.1:0\n    hostname: {DB}\n    ip-allow: [127.0.0.0/8]\n"
    )));
    let tcp_port = {
        let line = edge.proc.wait_line("TCP port ");
        let rest = &line[line.find("TCP port ").unwrap() + 9..];
        rest.split_whitespace()
            .next()
            .unwrap()
            .parse::<SocketAddr>()
            .unwrap()
    };
    let admin = edge.admin_addr();
    let web = Origin::start("A");
    let status = StatusOrigin::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws = ws_echo_origin(&rt);
    let token = edge.token("dev42", &[WEB, "*.dev42.example.com"], "1d");
    let rules = format!(
        "  - hostname: {WEB}\n    service: http://{w}\n\
         \x20 - hostname: {STATUS}\n    service: http://{s}\n\
         \x20 - hostname: {TEAPOT}\n    service: http_status:418\n\
         \x20 - hostname: {DB}\n    service: tcp://{w}\n\
         \x20 - hostname: {WS}\n    service: http://{ws}\n\
         \x20 - service: http_status:404\n",
        w = web.addr,
        s = status.addr,
    );
    let dev = TempDir::new("device");
    let _connector = start_connector(dev.path(), &device_yaml(&edge, &token, 2, &rules), 2);

    let get = |host: &str, path: &str, extra: &[&str]| -> Curl {
        let url = format!("http://{}{path}", edge.http);
        let hosth = format!("Host: {host}");
        let mut args = vec!["-H", hosth.as_str()];
        args.extend_from_slice(extra);
        args.push(&url);
        let r = curl(&args);
        assert!(r.ok, "{}", r.stderr);
        r
    };
    // Answered by the origin: downloads, uploads (one within the edge's buffer, one
    // streamed past it), HTTP/2, and one status of each class the origin sends.
    for _ in 0..3 {
        assert_eq!(get(WEB, "/bytes/10000", &[]).body.len(), 10_000);
    }
    let up = TempDir::new("upload");
    let mut uploaded = 0;
    for size in [5_000u64, 300_000] {
        let file = up.join(&format!("{size}.bin"));
        std::fs::write(&file, pattern(size)).unwrap();
        let data = format!("@{}", file.display());
        let r = get(WEB, "/sha256", &["--data-binary", &data]);
        assert_eq!(r.status, 200);
        assert!(r.text().ends_with(&format!(" {size}")), "{}", r.text());
        uploaded += size;
    }
    let r = get(WEB, "/bytes/2000", &["--http2-prior-knowledge"]);
    assert_eq!(
        (r.status, r.version.as_str(), r.body.len()),
        (200, "2", 2000)
    );
    for code in [302, 404, 503] {
        assert_eq!(get(STATUS, &format!("/{code}"), &[]).status, code);
    }
    // The origin switches to a WebSocket (101), whose bytes count as HTTP's.
    websocket_echoes(&rt, &edge, 10, 1000);
    // Answered by the edge: the tunnel's status rule, and a hostname no tunnel serves.
    assert_eq!(get(TEAPOT, "/", &[]).status, 418);
    assert_eq!(get("nobody.example.org", "/", &[]).status, 404);
    // A raw stream through the public TCP port: HTTP to the web origin, as bytes.
    let r = curl(&[&format!("http://{tcp_port}/bytes/50000")]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!((r.status, r.body.len()), (200, 50_000));
    // The access line is logged when the stream has ended.
    edge.proc
        .wait_line("access: anonymous (ip-allow) db.dev42.example.com");

    let text = curl(&[&format!("http://{admin}/metrics")]).text();
    println!("{text}");
    let m = samples(&text);
    let at = |series: &str| -> f64 { m.get(series).copied().unwrap_or(0.0) };
    let req = |tunnel: &str, protocol: &str, source: &str, class: &str| {
        at(&format!(
            "mailslot_edge_requests_total{{tunnel=\"{tunnel}\",protocol=\"{protocol}\",source=\"{source}\",class=\"{class}\"}}"
        ))
    };
    assert_eq!(req("dev42", "http1", "origin", "2xx"), 5.0);
    assert_eq!(req("dev42", "h2", "origin", "2xx"), 1.0);
    assert_eq!(req("dev42", "http1", "origin", "1xx"), 1.0);
    assert_eq!(req("dev42", "http1", "origin", "3xx"), 1.0);
    assert_eq!(req("dev42", "http1", "origin", "4xx"), 1.0);
    assert_eq!(req("dev42", "http1", "origin", "5xx"), 1.0);
    assert_eq!(req("dev42", "http1", "edge", "4xx"), 1.0);
    assert_eq!(req("_none", "http1", "edge", "4xx"), 1.0);
    let all: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("mailslot_edge_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        all, 12.0,
        "every request counted once, the raw stream not at all"
    );
    let origin_answered = 10.0;

    let h = "mailslot_edge_origin_latency_seconds";
    let count = at(&format!("{h}_count{{tunnel=\"dev42\"}}"));
    assert_eq!(count, origin_answered, "one observation per origin answer");
    assert_eq!(
        at(&format!("{h}_bucket{{tunnel=\"dev42\",le=\"+Inf\"}}")),
        count
    );
    let mut below = 0.0;
    for le in ["0.005", "0.01", "0.1", "1", "30", "+Inf"] {
        let b = at(&format!("{h}_bucket{{tunnel=\"dev42\",le=\"{le}\"}}"));
        assert!(b >= below, "buckets are cumulative: le={le}");
        below = b;
    }
    let sum = at(&format!("{h}_sum{{tunnel=\"dev42\"}}"));
    assert!(sum > 0.0 && sum < 60.0, "{sum}");

    let bytes = |kind: &str, dir: &str| {
        at(&format!(
            "mailslot_edge_bytes_total{{tunnel=\"dev42\",kind=\"{kind}\",direction=\"{dir}\"}}"
        ))
    };
    assert!(bytes("http", "to_visitor") >= 32_000.0 + 10_000.0);
    assert!(bytes("http", "to_origin") >= uploaded as f64 + 10_000.0);
    assert!(bytes("stream", "to_visitor") >= 50_000.0);
    assert!(bytes("stream", "to_origin") > 0.0);
    assert_eq!(
        at("mailslot_edge_access_streams_total{tunnel=\"dev42\"}"),
        1.0
    );
    // The families that were there before are still there.
    assert!(text.contains("mailslot_edge_tunnels 1\n"), "{text}");

    if !checked_by_prometheus_client(&text) {
        println!("python3 has no prometheus_client: the format was checked line by line only");
    }
}
