//! HTTP through the tunnel: the edge speaks HTTP/1.1 to the origin inside tunnel
//! streams, keeping idle streams pooled (keep-alive) for later requests.
//!
//! The pool is hyper's: a tunnel stream is "a connection to the origin", dialed by
//! [`TunnelDialer`] for a synthetic authority that names the visitor hostname, the
//! tunnel connection, its rule table generation and the rule:
//!
//! ```text
//!  http://<visitor-host>.c<conn>-g<generation>-r<rule>.tunnel/<path>
//! ```

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;

use super::registry::{Conn, Registry, Route};
use crate::transport::TunnelStream;
use crate::wire::{self, RuleAction, StreamError, StreamHeader, StreamKind, StreamReply};

/// Body type of everything the edge sends or forwards.
pub type Body = BoxBody<Bytes, hyper::Error>;
/// The pooled client that reaches origins through tunnels.
pub type TunnelClient = hyper_util::client::legacy::Client<TunnelDialer, Body>;

/// Time to open a tunnel stream and hear the connector's reply.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle pooled streams are closed after this long.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Most idle pooled streams per (hostname, connection, rule).
const POOL_MAX_IDLE: usize = 32;
/// Attempts on distinct connections for a request that can be retried.
const MAX_ATTEMPTS: usize = 3;

/// Why a tunnel stream could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The tunnel connection is gone or would not open a stream.
    #[error("tunnel connection unavailable: {0}")]
    Tunnel(String),
    /// The connector answered that it could not reach the origin.
    #[error("{message}")]
    Device { error: StreamError, message: String },
    /// The synthetic authority does not parse (a bug, not a visitor's fault).
    #[error("bad tunnel address {0}")]
    BadAddress(String),
}

/// Opens tunnel streams for the pooled client.
#[derive(Clone)]
pub struct TunnelDialer {
    registry: Arc<Registry>,
}

/// A tunnel stream as hyper's client sees it.
pub struct PooledStream(TokioIo<TunnelStream>);

impl Connection for PooledStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for PooledStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for PooledStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Parses `<host>.c<conn>-g<gen>-r<rule>.tunnel`.
fn parse_authority(host: &str) -> Option<(&str, usize, u32, u16)> {
    let rest = host.strip_suffix(".tunnel")?;
    let (visitor, ids) = rest.rsplit_once('.')?;
    let mut parts = ids.split('-');
    let conn = parts.next()?.strip_prefix('c')?.parse().ok()?;
    let generation = parts.next()?.strip_prefix('g')?.parse().ok()?;
    let rule = parts.next()?.strip_prefix('r')?.parse().ok()?;
    Some((visitor, conn, generation, rule))
}

impl tower_service::Service<Uri> for TunnelDialer {
    type Response = PooledStream;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<PooledStream, DialError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let registry = self.registry.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default();
            let (visitor, conn_id, generation, rule) =
                parse_authority(host).ok_or_else(|| DialError::BadAddress(host.to_string()))?;
            let conn = registry
                .conn(conn_id)
                .ok_or_else(|| DialError::Tunnel("the connection closed".into()))?;
            open_tunnel_stream(&conn, generation, rule, StreamKind::Http, visitor)
                .await
                .map(|stream| PooledStream(TokioIo::new(stream)))
        })
    }
}

/// Opens a data stream on `conn` for `rule` of rule table `rules_generation`, sends the
/// stream header and waits (bounded) for the connector's reply. On `Ok` the stream is
/// a byte pipe to the origin.
pub async fn open_tunnel_stream(
    conn: &Conn,
    rules_generation: u32,
    rule: u16,
    kind: StreamKind,
    hostname: &str,
) -> Result<TunnelStream, DialError> {
    let header = StreamHeader {
        rules_generation,
        rule,
        kind,
        hostname: hostname.to_string(),
    };
    let dial = async {
        let mut stream = conn
            .session
            .open_stream()
            .await
            .map_err(|e| DialError::Tunnel(e.to_string()))?;
        let frame =
            wire::encode_stream_frame(&header).map_err(|e| DialError::Tunnel(e.to_string()))?;
        stream
            .write_all(&frame)
            .await
            .map_err(|e| DialError::Tunnel(e.to_string()))?;
        match wire::read_stream_frame::<_, StreamReply>(&mut stream).await {
            Ok(StreamReply::Ok) => Ok(stream),
            Ok(StreamReply::Err { error, message }) => Err(DialError::Device { error, message }),
            Err(e) => Err(DialError::Tunnel(e.to_string())),
        }
    };
    match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Tunnel(format!(
            "no answer from the connector within {DIAL_TIMEOUT:?}"
        ))),
    }
}

/// Builds the pooled client over `registry`.
pub fn client(registry: Arc<Registry>) -> TunnelClient {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .set_host(false)
        .build(TunnelDialer { registry })
}

/// What the front knows about a visitor's request.
pub struct Visitor {
    pub peer: SocketAddr,
    pub scheme: &'static str,
}

/// A small text response from the edge itself.
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut body = format!(
        "{} {}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    let msg = msg.into();
    if !msg.is_empty() {
        body.push_str("\nmailslot edge: ");
        body.push_str(&msg);
        body.push('\n');
    }
    let mut r = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Headers that describe one hop and never pass through a proxy.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if wants {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

fn retryable(req: &Request<Incoming>) -> bool {
    matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) && req.body().is_end_stream()
}

/// Serves one visitor request for `host` (lowercase, without port).
pub async fn handle(
    registry: &Registry,
    client: &TunnelClient,
    origin_timeout: Duration,
    mut req: Request<Incoming>,
    host: &str,
    authority: &str,
    visitor: &Visitor,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let can_retry = retryable(&req);
    let upgrade = upgrade_of(req.headers());
    let visitor_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let mut body = Some(body);
    let mut tried: Vec<usize> = Vec::new();
    loop {
        let (conn, rules, rule) = match registry.route_excluding(host, &path, &tried) {
            Route::NoTunnel => {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("no tunnel serves {host} on this edge"),
                )
            }
            Route::Offline if tried.is_empty() => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("the tunnel for {host} is offline"),
                )
            }
            Route::Offline => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("the tunnel for {host} lost its connections"),
                )
            }
            Route::Rule { conn, rules, rule } => (conn, rules, rule),
        };
        let Some(r) = rules.rules.get(usize::from(rule)) else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "rule table changed");
        };
        match r.action {
            RuleAction::Status(code) => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::NOT_FOUND);
                let mut resp = Response::new(empty());
                *resp.status_mut() = status;
                return resp;
            }
            RuleAction::Stream => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("{host} is a TCP service: reach it with `mailslot access tcp --hostname {host}`"),
                )
            }
            RuleAction::Http => {}
        }
        let conn_id = conn.session.id();
        tried.push(conn_id);
        let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = format!(
            "http://{host}.c{conn_id}-g{}-r{rule}.tunnel{pq}",
            rules.generation
        );
        let Ok(uri) = uri.parse::<Uri>() else {
            return text(
                StatusCode::BAD_REQUEST,
                "request target cannot be forwarded",
            );
        };
        let mut up = Request::new(match body.take() {
            Some(b) if !can_retry => b.boxed(),
            _ => empty(),
        });
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        *up.version_mut() = http::Version::HTTP_11;
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        if let Some(proto) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto.clone());
        }
        let host_value = r.host_header.as_deref().unwrap_or(authority);
        match HeaderValue::from_str(host_value) {
            Ok(v) => {
                headers.insert(header::HOST, v);
            }
            Err(_) => return text(StatusCode::BAD_REQUEST, "invalid Host"),
        }
        set_forwarded(&mut headers, visitor, authority);
        *up.headers_mut() = headers;

        let sent = tokio::time::timeout(origin_timeout, client.request(up)).await;
        let mut resp = match sent {
            Err(_) => {
                return text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the origin did not answer within {}s",
                        origin_timeout.as_secs_f32()
                    ),
                )
            }
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                let dial = find_dial_error(&e);
                match dial {
                    Some(DialError::Device {
                        error: StreamError::DialTimeout,
                        message,
                    }) => {
                        return text(
                            StatusCode::GATEWAY_TIMEOUT,
                            format!("origin unreachable: {message}"),
                        )
                    }
                    Some(DialError::Device { message, .. }) => {
                        return text(
                            StatusCode::BAD_GATEWAY,
                            format!("origin unreachable: {message}"),
                        )
                    }
                    Some(DialError::Tunnel(m)) if can_retry && tried.len() < MAX_ATTEMPTS => {
                        log::info!("{host}: tunnel connection failed ({m}); retrying on another");
                        continue;
                    }
                    Some(other) => return text(StatusCode::BAD_GATEWAY, other.to_string()),
                    None => {
                        log::debug!("{host}: origin request failed: {e:?}");
                        return text(StatusCode::BAD_GATEWAY, "the origin closed the connection");
                    }
                }
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(visitor_up) = visitor_upgrade {
                let origin_up = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    let (Ok(v), Ok(o)) = (visitor_up.await, origin_up.await) else {
                        return;
                    };
                    let (mut v, mut o) = (TokioIo::new(v), TokioIo::new(o));
                    let _ = tokio::io::copy_bidirectional(&mut v, &mut o).await;
                });
                let (rparts, _) = resp.into_parts();
                return Response::from_parts(rparts, empty());
            }
        }
        strip_hop_by_hop(resp.headers_mut());
        let (rparts, rbody) = resp.into_parts();
        // `parts` is kept only for a retry; the visitor's method and path stay as sent.
        parts.extensions = http::Extensions::new();
        return Response::from_parts(rparts, rbody.boxed());
    }
}

fn set_forwarded(headers: &mut HeaderMap, visitor: &Visitor, authority: &str) {
    let ip = visitor.peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(visitor.scheme),
    );
    if let Ok(v) = HeaderValue::from_str(authority) {
        headers.insert("x-forwarded-host", v);
    }
}

fn find_dial_error<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a DialError> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(d) = err.downcast_ref::<DialError>() {
            return Some(d);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_round_trip() {
        assert_eq!(
            parse_authority("dev42.example.com.c17-g3-r2.tunnel"),
            Some(("dev42.example.com", 17, 3, 2))
        );
        assert_eq!(parse_authority("dev42.example.com.tunnel"), None);
        assert_eq!(parse_authority("x.c1-g2.tunnel"), None);
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
