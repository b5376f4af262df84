//! The admin listener (`admin-listen`, off by default; keep it on loopback): fleet
//! status and Prometheus metrics. With `admin-token` set, every request needs
//! `Authorization: Bearer TOKEN` (401 otherwise); off loopback the token is required
//! (the edge refuses to start without it). Connections are closed after
//! [`IDLE_TIMEOUT`] without a request, at most [`MAX_CONNS`] are open at once.
//!
//! - `GET /tunnels`: one line per tunnel connection: tunnel, id, connector, index,
//!   protocol, connector address, hostnames.
//! - `GET /metrics`: counts of tunnels, connections and rejections.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};

use super::EdgeState;
use crate::transport::Transport;

/// Time an admin connection may stay without a request (also the time to send one).
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an admin connection stays open at all.
const MAX_CONN_TIME: Duration = Duration::from_secs(300);
/// Admin connections open at once; more are refused.
pub(crate) const MAX_CONNS: usize = 64;

/// Serves the admin endpoints until the task is dropped.
pub(crate) async fn serve(listener: tokio::net::TcpListener, state: Arc<EdgeState>) {
    let conns = Arc::new(tokio::sync::Semaphore::new(MAX_CONNS));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            continue; // dropping the socket refuses it
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(answer(&req, &state)) }
            });
            // HTTP/1.1 only (curl and Prometheus speak it): its idle time is a head's.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(IDLE_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(MAX_CONN_TIME, conn).await;
        });
    }
}

/// Is the request allowed: no token configured, or its bearer token matches?
fn authorized(req: &Request<Incoming>, state: &EdgeState) -> bool {
    let token = state.admin_token.borrow();
    let Some(token) = token.as_ref() else {
        return true;
    };
    req.headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| {
            let v = v.as_bytes();
            let scheme = v.get(..7)?;
            scheme
                .eq_ignore_ascii_case(b"bearer ")
                .then(|| v.get(7..))
                .flatten()
        })
        .is_some_and(|presented| token.matches(presented.trim_ascii()))
}

fn answer(req: &Request<Incoming>, state: &EdgeState) -> Response<Full<Bytes>> {
    if !authorized(req, state) {
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"401 the admin listener needs Authorization: Bearer <admin-token>\n",
        )));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
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
    for proto in [Transport::Quic, Transport::Http2] {
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
    state.metrics.render(&mut out);
    out
}
