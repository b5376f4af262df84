//! HTTP through the tunnel: the edge speaks HTTP/1.1 to the origin inside tunnel
//! streams, keeping idle ones for later requests ([`super::pool`]).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::body::{read_prefix, BoxError, Guarded, Prefix, Refusal};
use super::pool::{Pool, SendError};
use super::registry::{Conn, Registry, Route};
use super::shield::Shield;
use crate::transport::TunnelStream;
use crate::wire::{self, RuleAction, StreamError, StreamHeader, StreamKind, StreamReply};
use tokio::sync::OwnedSemaphorePermit;

/// Body type of everything the edge sends or forwards.
pub type Body = BoxBody<Bytes, BoxError>;

/// Time to open a tunnel stream and hear the connector's reply.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
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
        conn.streams.fetch_add(1, Ordering::Relaxed);
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

/// What the front knows about a visitor's request.
pub struct Visitor {
    pub peer: SocketAddr,
    /// The client's address: the peer, or from `X-Forwarded-For` behind a trusted proxy.
    pub client_ip: IpAddr,
    /// The `X-Forwarded-For` value to send on.
    pub forwarded_for: HeaderValue,
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
    // The headers each Connection value names go too. A value is cloned (a reference
    // count) so that the map can change meanwhile, and names are looked up as text:
    // nothing is allocated.
    let mut i = 0;
    while let Some(value) = headers.get_all(header::CONNECTION).iter().nth(i).cloned() {
        i += 1;
        for name in value.to_str().unwrap_or("").split(',') {
            let name = name.trim();
            if !name.eq_ignore_ascii_case("connection") {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The protocol a visitor asks to switch to, when the edge lets it through: WebSocket
/// only (on a GET, as RFC 6455 requires). Anything else (`h2c` above all: after it
/// the origin would read raw HTTP/2 that no path rule or rate limit sees) is not
/// forwarded: the request goes on as plain HTTP/1.1 without its `Upgrade`, which is
/// how a client asking for an optional upgrade expects a server that declines it to
/// answer (RFC 9110 7.8).
fn upgrade_of(method: &Method, headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if !wants || *method != Method::GET {
        return None;
    }
    let mut values = headers.get_all(header::UPGRADE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    value
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"websocket")
        .then(|| HeaderValue::from_static("websocket"))
}

/// Request shapes that proxies disagree about, and so open the door to smuggling.
/// (HTTP/1.1 requests with both Content-Length and Transfer-Encoding never get here:
/// hyper drops the length, lets Transfer-Encoding win and closes the connection after
/// the response, as RFC 9112 6.3 asks; the checks below cover HTTP/2 and anything
/// that slips through.)
fn hygiene(headers: &HeaderMap) -> Result<(), &'static str> {
    let te = headers.get_all(header::TRANSFER_ENCODING).iter().count();
    let cl: Vec<&HeaderValue> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if te > 0 && !cl.is_empty() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    if te > 1 {
        return Err("more than one Transfer-Encoding");
    }
    if let Some(v) = headers.get(header::TRANSFER_ENCODING) {
        if !v.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err("a Transfer-Encoding other than chunked");
        }
    }
    if cl.len() > 1 && cl.windows(2).any(|w| w[0] != w[1]) {
        return Err("conflicting Content-Length headers");
    }
    Ok(())
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A response from the edge itself, counted and logged at a bounded pace.
fn refuse(
    shield: &Shield,
    counter: &AtomicU64,
    status: StatusCode,
    visitor: &Visitor,
    host: &str,
    why: &str,
) -> Response<Body> {
    counter.fetch_add(1, Ordering::Relaxed);
    shield.log_rejection(format_args!(
        "{} {host} from {}: {why}",
        status.as_u16(),
        visitor.client_ip
    ));
    text(status, why.to_string())
}

fn with_retry_after(mut r: Response<Body>, secs: u64) -> Response<Body> {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Holds a tunnel's request permit until the response body is done.
struct WithPermit<B> {
    body: B,
    _permit: OwnedSemaphorePermit,
}

impl<B> http_body::Body for WithPermit<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.get_mut().body)
            .poll_frame(cx)
            .map_err(Into::into)
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves one visitor request for `host` (lowercase, without port).
#[allow(clippy::too_many_arguments)]
pub async fn handle(
    registry: &Registry,
    pool: &Arc<Pool>,
    shield: &Shield,
    origin_timeout: Duration,
    mut req: Request<Incoming>,
    host: &str,
    authority: &str,
    visitor: &Visitor,
) -> Response<Body> {
    let limits = &shield.limits;
    let c = &shield.counters;
    if let Err(why) = hygiene(req.headers()) {
        return refuse(
            shield,
            &c.bad_request,
            StatusCode::BAD_REQUEST,
            visitor,
            host,
            why,
        );
    }
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    if target > limits.max_url_bytes {
        return refuse(
            shield,
            &c.url_too_long,
            StatusCode::URI_TOO_LONG,
            visitor,
            host,
            "the URL is too long",
        );
    }
    let upgrade = upgrade_of(req.method(), req.headers());
    let visitor_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let bodiless = http_body::Body::is_end_stream(req.body());
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path();
    if let Err(secs) = shield.rate_check(visitor.client_ip, host, path) {
        let r = refuse(
            shield,
            &c.rate_limited,
            StatusCode::TOO_MANY_REQUESTS,
            visitor,
            host,
            "too many requests; slow down",
        );
        return with_retry_after(r, secs);
    }
    // Answer what needs no tunnel stream before reading any body. A request without a
    // body goes where this look-up sends it; one with a body only peeks now and looks
    // again once the body's start has arrived (its tunnel's connections may have
    // changed meanwhile).
    let first = if bodiless {
        registry.route(host, path)
    } else {
        registry.peek(host, path)
    };
    match &first {
        Route::NoTunnel => return text(StatusCode::NOT_FOUND, format!("no tunnel serves {host} on this edge")),
        Route::Offline => return text(StatusCode::BAD_GATEWAY, format!("the tunnel for {host} is offline")),
        Route::Rule { rules, rule, .. } => match rules.rules.get(usize::from(*rule)).map(|r| r.action) {
            Some(RuleAction::Status(code)) => {
                let mut resp = Response::new(empty());
                *resp.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::NOT_FOUND);
                return resp;
            }
            Some(RuleAction::Stream) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("{host} is a TCP service: reach it with `mailslot access tcp --hostname {host}`"),
                )
            }
            _ => {}
        },
    }
    let max_body = shield.max_body(host);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return refuse(
            shield,
            &c.body_too_large,
            StatusCode::PAYLOAD_TOO_LARGE,
            visitor,
            host,
            "the request body is too large",
        );
    }
    let prefix = match read_prefix(body, limits.body_buffer, max_body, limits.body_timeout).await {
        Ok(p) => p,
        Err(refusal) => {
            let (counter, status, why) = match refusal {
                Refusal::Slow => (
                    &c.slow_body,
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body arrived too slowly",
                ),
                Refusal::TooLarge => (
                    &c.body_too_large,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the request body is too large",
                ),
                Refusal::Broken => (
                    &c.bad_request,
                    StatusCode::BAD_REQUEST,
                    "the request body is malformed",
                ),
            };
            return refuse(shield, counter, status, visitor, host, why);
        }
    };
    let (replayable, mut rest) = match prefix {
        Prefix::Complete(b) => (Some(b), None),
        Prefix::Partial(b, incoming) => (
            None,
            Some(Guarded::new(
                b,
                incoming,
                max_body,
                limits.body_idle_timeout,
            )),
        ),
    };
    let can_retry = replayable.is_some() && idempotent(&parts.method);
    // The Host the origin sees (unless its rule sets one) and X-Forwarded-Host: the
    // visitor's own Host header when it names the authority, as it nearly always does.
    let authority_value = match parts.headers.get(header::HOST) {
        Some(v) if v.as_bytes() == authority.as_bytes() => Some(v.clone()),
        _ => HeaderValue::from_str(authority).ok(),
    };
    let mut first = bodiless.then_some(first);
    let mut tried = heapless::Vec::<usize, MAX_ATTEMPTS>::new();
    loop {
        let route = match first.take() {
            Some(route) => route,
            None => registry.route_excluding(host, path, &tried),
        };
        let (conn, rules, rule, permits) = match route {
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
            Route::Rule {
                conn,
                rules,
                rule,
                permits,
            } => (conn, rules, rule, permits),
        };
        let Some(r) = rules.rules.get(usize::from(rule)) else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "rule table changed");
        };
        if r.action != RuleAction::Http {
            return text(StatusCode::BAD_GATEWAY, "the rule table changed; try again");
        }
        let permit = match tokio::time::timeout(limits.queue_timeout, permits.acquire_owned()).await
        {
            Ok(Ok(p)) => p,
            _ => {
                let r = refuse(
                    shield,
                    &c.tunnel_busy,
                    StatusCode::SERVICE_UNAVAILABLE,
                    visitor,
                    host,
                    "the tunnel is busy; try again shortly",
                );
                return with_retry_after(r, 1);
            }
        };
        // At most MAX_ATTEMPTS: no attempt follows the last (`may_retry` below).
        let _ = tried.push(conn.session.id());
        // Another attempt may follow this one.
        let may_retry = can_retry && tried.len() < MAX_ATTEMPTS;
        let body: Body = match (&replayable, rest.take()) {
            (Some(b), _) if b.is_empty() => empty(),
            (Some(b), _) => Full::new(b.clone()).map_err(|never| match never {}).boxed(),
            (None, Some(g)) => g.boxed(),
            (None, None) => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    "the request could not be forwarded",
                )
            }
        };
        let mut up = Request::new(body);
        *up.method_mut() = parts.method.clone();
        // Origin-form: the path and query only, whatever form the visitor sent.
        *up.uri_mut() = match parts.uri.path_and_query() {
            Some(pq) => Uri::from(pq.clone()),
            None => Uri::from_static("/"),
        };
        *up.version_mut() = http::Version::HTTP_11;
        // The visitor's headers are kept only while another attempt may need them.
        let mut headers = if may_retry {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        strip_hop_by_hop(&mut headers);
        if let Some(proto) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, proto.clone());
        }
        let host_value = match r.host_header.as_deref() {
            Some(h) => HeaderValue::from_str(h).ok(),
            None => authority_value.clone(),
        };
        match host_value {
            Some(v) => {
                headers.insert(header::HOST, v);
            }
            None => return text(StatusCode::BAD_REQUEST, "invalid Host"),
        }
        set_forwarded(
            &mut headers,
            visitor,
            authority_value.as_ref(),
            shield.is_trusted(visitor.peer.ip()),
        );
        *up.headers_mut() = headers;

        let retry = may_retry.then_some(&tried[..]);
        let send = pool.send(&conn, rules.generation, rule, host, up);
        let watched = watch_silence(registry, &conn, retry, host, send);
        let mut resp = match tokio::time::timeout(origin_timeout, watched).await {
            Err(_) => {
                return text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the origin did not answer within {}s",
                        origin_timeout.as_secs_f32()
                    ),
                )
            }
            Ok(Watched::Retry) => {
                log::info!("{host}: the connector stopped answering on a tunnel connection; retrying on another");
                continue;
            }
            Ok(Watched::Done(Ok(resp))) => resp,
            Ok(Watched::Done(Err(SendError::Dial(e)))) => match e {
                // What went wrong (an address, an error from the device's system) is
                // for the operator: logged here and by the connector, never shown to
                // the visitor.
                DialError::Device { error, message } => {
                    let status = if error == StreamError::DialTimeout {
                        StatusCode::GATEWAY_TIMEOUT
                    } else {
                        StatusCode::BAD_GATEWAY
                    };
                    shield.log_rejection(format_args!(
                        "{} {host} from {}: origin unreachable: {message}",
                        status.as_u16(),
                        visitor.client_ip
                    ));
                    return text(status, "origin unreachable");
                }
                DialError::Tunnel(m) if may_retry => {
                    log::info!("{host}: tunnel connection failed ({m}); retrying on another");
                    continue;
                }
                DialError::Tunnel(m) => {
                    shield.log_rejection(format_args!(
                        "502 {host} from {}: tunnel connection failed: {m}",
                        visitor.client_ip
                    ));
                    return text(StatusCode::BAD_GATEWAY, "the tunnel connection failed");
                }
            },
            Ok(Watched::Done(Err(SendError::Origin(e)))) => {
                log::debug!("{host}: origin request failed: {e:?}");
                return text(StatusCode::BAD_GATEWAY, "the origin closed the connection");
            }
            Ok(Watched::Silent) => {
                shield.log_rejection(format_args!(
                    "502 {host} from {}: no connection of its tunnel answers",
                    visitor.client_ip
                ));
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!("the tunnel for {host} is not answering"),
                );
            }
        };
        // A proxy answers in its own HTTP version, whatever the origin spoke (an
        // HTTP/1.0 origin must not make the edge say HTTP/1.0 to an HTTP/1.1 visitor).
        *resp.version_mut() = http::Version::HTTP_11;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(visitor_up) = visitor_upgrade else {
                // Nothing was asked for: switching now would hand the visitor's
                // connection to a protocol the edge never agreed to.
                shield.log_rejection(format_args!(
                    "502 {host} from {}: the origin switched protocols unasked",
                    visitor.client_ip
                ));
                return text(
                    StatusCode::BAD_GATEWAY,
                    "the origin sent an invalid response",
                );
            };
            let origin_up = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let _permit = permit;
                let (Ok(v), Ok(o)) = (visitor_up.await, origin_up.await) else {
                    return;
                };
                let (mut v, mut o) = (TokioIo::new(v), TokioIo::new(o));
                let _ = tokio::io::copy_bidirectional(&mut v, &mut o).await;
            });
            let (rparts, _) = resp.into_parts();
            return Response::from_parts(rparts, empty());
        }
        strip_hop_by_hop(resp.headers_mut());
        if let Some(policy) = shield.host_policy(host) {
            for (name, value) in &policy.add_headers {
                if !resp.headers().contains_key(name) {
                    resp.headers_mut().insert(name.clone(), value.clone());
                }
            }
        }
        let (rparts, rbody) = resp.into_parts();
        let body = WithPermit {
            body: rbody,
            _permit: permit,
        };
        return Response::from_parts(rparts, body.boxed());
    }
}

/// What came of a request [`watch_silence`] watched.
enum Watched<T> {
    /// The request ended (well or not) on its connection.
    Done(T),
    /// The connector went silent and another connection answers: retry there.
    Retry,
    /// The connector went silent and no connection of the tunnel answers.
    Silent,
}

/// Runs `request` on `conn` while watching its connector. When the connector sends
/// nothing at all for [`Conn::silence_limit`] after the request began (its process hung
/// or died, or its path went dark: the edge would hear nothing else until the idle
/// timeout), new requests avoid the connection, and:
/// - when no other connection of the tunnel answers, the request is given up
///   ([`Watched::Silent`]): the visitor hears within the silence window that the
///   tunnel is not answering, instead of waiting out the dial timeout;
/// - when `retry` allows it (the request may be retried: the connections tried) and another connection answers, this one is given up ([`Watched::Retry`])
///   to be retried there;
/// - otherwise (another connection answers, but the request cannot be repeated) it
///   waits as before: a NAT rebinding silences a connection until its next keep-alive.
///
/// Halfway through a silence the connector is asked for an answer ([`Conn::nudge`]). A
/// live connector answers within a round trip whatever its origin does, so one that
/// sent nothing back had not taken the request from the tunnel: nothing had reached the
/// origin. (Should that connection come back after all, the abandoned copy may still
/// arrive: allowed for an idempotent request, RFC 9110 9.2.2; for another request the
/// visitor was told 502, which does not claim that nothing happened.)
async fn watch_silence<T>(
    registry: &Registry,
    conn: &Conn,
    retry: Option<&[usize]>,
    host: &str,
    request: impl Future<Output = T>,
) -> Watched<T> {
    let heard = conn.heard();
    let half = conn.silence_limit() / 2;
    tokio::pin!(request);
    tokio::select! {
        r = &mut request => return Watched::Done(r),
        _ = tokio::time::sleep(half) => {}
    }
    if conn.heard() != heard {
        return Watched::Done(request.await);
    }
    conn.nudge();
    tokio::select! {
        r = &mut request => return Watched::Done(r),
        _ = tokio::time::sleep(half) => {}
    }
    if conn.heard() != heard {
        return Watched::Done(request.await);
    }
    registry.set_silent(conn, heard);
    if !registry.has_answering(host, &[conn.session.id()]) {
        return Watched::Silent;
    }
    match retry {
        Some(tried) if registry.has_answering(host, tried) => Watched::Retry,
        _ => Watched::Done(request.await),
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const TRUE_CLIENT_IP: HeaderName = HeaderName::from_static("true-client-ip");

/// The headers that tell the origin who asked and how. A visitor cannot choose what
/// they say: each is set by the edge, or removed. Only a peer in `trusted-proxies`
/// speaks for the visitor: its `X-Forwarded-For` and `Forwarded` chains get the peer
/// appended, its `X-Forwarded-Port` and `True-Client-IP` pass. `X-Real-IP` is the
/// client address the edge uses everywhere else (the peer, or from a trusted proxy's
/// `X-Forwarded-For`).
fn set_forwarded(
    headers: &mut HeaderMap,
    visitor: &Visitor,
    authority: Option<&HeaderValue>,
    trusted: bool,
) {
    headers.insert(X_FORWARDED_FOR, visitor.forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(visitor.scheme));
    match authority {
        Some(v) => headers.insert(X_FORWARDED_HOST, v.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
    headers.insert(X_REAL_IP, ip_header(visitor.client_ip));
    let forwarded = forwarded_element(visitor, authority);
    let chain = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    let forwarded = if trusted && !chain.is_empty() {
        HeaderValue::from_str(&format!("{chain}, {forwarded}")).ok()
    } else {
        HeaderValue::from_str(&forwarded).ok()
    };
    headers.remove(header::FORWARDED);
    if let Some(v) = forwarded {
        headers.insert(header::FORWARDED, v);
    }
    if !trusted {
        headers.remove(TRUE_CLIENT_IP);
        let port = authority
            .and_then(|a| a.to_str().ok())
            .and_then(port_of)
            .unwrap_or(if visitor.scheme == "https" { 443 } else { 80 });
        headers.insert(X_FORWARDED_PORT, HeaderValue::from(port));
    }
}

/// An address as a header value.
fn ip_header(ip: IpAddr) -> HeaderValue {
    use std::fmt::Write;
    // An address fits in 45 characters: formatted without a heap allocation.
    let mut s = heapless::String::<48>::new();
    let _ = write!(s, "{ip}");
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// This hop's element of `Forwarded` (RFC 7239): the peer, the authority asked for
/// and the scheme.
fn forwarded_element(visitor: &Visitor, authority: Option<&HeaderValue>) -> String {
    let mut el = match visitor.peer.ip() {
        IpAddr::V4(ip) => format!("for={ip}"),
        IpAddr::V6(ip) => format!("for=\"[{ip}]\""),
    };
    if let Some(a) = authority.and_then(|a| a.to_str().ok()) {
        if !a.contains(['"', '\\']) {
            el.push_str(&format!(";host=\"{a}\""));
        }
    }
    el.push_str(";proto=");
    el.push_str(visitor.scheme);
    el
}

/// The port of an authority, when it names one.
fn port_of(authority: &str) -> Option<u16> {
    let (host, port) = authority.rsplit_once(':')?;
    if host.starts_with('[') && !host.ends_with(']') {
        return None; // an IPv6 address without a port
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("Connection,X-Other"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
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
