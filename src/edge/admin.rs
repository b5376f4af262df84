//! The admin listener (`admin-listen`, off by default; keep it on loopback): fleet
//! status and Prometheus metrics.
//!
//! - `GET /tunnels`: one line per tunnel connection: tunnel, id, connector, index,
//!   protocol, connector address, hostnames.
//! - `GET /metrics`: counts of tunnels, connections and rejections.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::EdgeState;

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<EdgeState>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&req, &state)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn answer(req: &Request<Incoming>, state: &EdgeState) -> Response<Full<Bytes>> {
    let body = match req.uri().path() {
        "/tunnels" => tunnels(state),
        "/metrics" => metrics(state),
        _ => {
            let mut r = Response::new(Full::new(Bytes::from_static(b"try /tunnels or /metrics\n")));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return r;
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn tunnels(state: &EdgeState) -> String {
    let mut out = String::new();
    for line in state.registry.connection_lines() {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn metrics(state: &EdgeState) -> String {
    let conns = state.registry.all_conns();
    let mut tunnels: Vec<[u8; 16]> = conns.iter().map(|c| c.tunnel_id).collect();
    tunnels.sort();
    tunnels.dedup();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP mailslot_edge_tunnels Tunnels with at least one connection."
    );
    let _ = writeln!(out, "# TYPE mailslot_edge_tunnels gauge");
    let _ = writeln!(out, "mailslot_edge_tunnels {}", tunnels.len());
    let _ = writeln!(
        out,
        "# HELP mailslot_edge_connections Tunnel connections, by protocol."
    );
    let _ = writeln!(out, "# TYPE mailslot_edge_connections gauge");
    for proto in ["quic", "http2"] {
        let n = conns
            .iter()
            .filter(|c| c.session.protocol() == proto)
            .count();
        let _ = writeln!(out, "mailslot_edge_connections{{protocol=\"{proto}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP mailslot_edge_rejections_total Visitor requests and connections refused by the shield.");
    let _ = writeln!(out, "# TYPE mailslot_edge_rejections_total counter");
    for (name, v) in state.shield.counters.snapshot() {
        let _ = writeln!(
            out,
            "mailslot_edge_rejections_total{{reason=\"{name}\"}} {v}"
        );
    }
    out
}
