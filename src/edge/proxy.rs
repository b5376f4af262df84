//! One visitor request through a tunnel, as named steps read top-down in [`handle`]:
//!
//! 1. [`admit`]: request shapes, URL length and rate limits, before anything else;
//! 2. [`route_first`]: answer what needs no tunnel stream (no tunnel, offline,
//!    `http_status:` and TCP rules) before reading any body;
//! 3. [`read_body`]: buffer the start of the body within the shield's limits;
//! 4. [`forward`]: attempts on distinct connections ([`take_connection`], then
//!    [`attempt`], watched by [`watch_silence`]), retried while the request may be;
//! 5. [`respond`]: the origin's answer, or the WebSocket [`upgrade`] it agreed to.
//!
//! The edge speaks HTTP/1.1 to the origin inside tunnel streams, keeping idle ones for
//! later requests ([`super::pool`]); header rewriting lives in [`super::forward`].
//!
//! Each request is counted once, in [`handle`], under the tunnel [`route_first`] found
//! ([`super::metrics`]); an attempt's origin latency and the bodies' bytes are counted
//! on the way.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::OwnedSemaphorePermit;

use super::body::{empty, read_prefix, text, Body, BoxError, Guarded, Prefix, Refusal};
use super::cluster::forward::Miss;
use super::cluster::Cluster;
use super::forward::{self, Visitor};
use super::metrics::{
    CountedBody, CountedIo, Direction, Kind, Metrics, Protocol, Source, TunnelStats,
};
use super::pool::{Pool, PooledBody, SendError, Up};
use super::registry::{Conn, Registry, Route, Rules};
use super::shield::Shield;
use super::silence::{watch_silence, Watched};
use super::stream::DialError;
use crate::wire::{RuleAction, StreamError};

/// Attempts on distinct connections for a request that can be retried.
const MAX_ATTEMPTS: usize = 3;

/// What the steps of one request share: the edge's parts it goes through, and who
/// asks for what.
pub(crate) struct Ctx<'a> {
    pub(crate) registry: &'a Registry,
    pub(crate) pool: &'a Arc<Pool>,
    pub(crate) shield: &'a Shield,
    pub(crate) metrics: &'a Metrics,
    /// Time the origin has to start its response.
    pub(crate) origin_timeout: Duration,
    pub(crate) visitor: &'a Visitor,
    /// The canonical host (lowercase, without port).
    pub(crate) host: &'a str,
    /// The canonical authority (`host[:port]`).
    pub(crate) authority: &'a str,
    /// The cluster, when requests for tunnels held elsewhere go to the edge holding
    /// them (a visitor's request on an edge of a cluster); `None` for a request
    /// another edge forwarded, which is never forwarded again.
    pub(crate) cluster: Option<&'a Cluster>,
    /// The member address of the edge that forwarded this request, if one did: the
    /// visitor's limits were applied there.
    pub(crate) from_peer: Option<&'a str>,
}

/// A step's result: `Err` is the edge's own answer, and the request ends there (boxed:
/// it is the rare path).
type Step<T> = Result<T, Box<Response<Body>>>;

/// Serves one visitor request, and counts it under its tunnel (`_none` when no tunnel
/// took it).
pub(crate) async fn handle(cx: &Ctx<'_>, req: Request<Incoming>) -> Response<Body> {
    let protocol = Protocol::of(req.version());
    let mut tunnel = None;
    let (resp, source) = match run(cx, req, &mut tunnel).await {
        Ok(resp) => (resp, Source::Origin),
        Err(resp) => (*resp, Source::Edge),
    };
    tunnel.as_deref().unwrap_or(cx.metrics.none()).request(
        protocol,
        source,
        resp.status().as_u16(),
    );
    resp
}

/// The steps; `tunnel` gets the counters of the tunnel that takes the request.
async fn run(
    cx: &Ctx<'_>,
    mut req: Request<Incoming>,
    tunnel: &mut Option<Arc<TunnelStats>>,
) -> Step<Response<Body>> {
    admit(cx, &req)?;
    let upgrade = forward::upgrade_of(req.method(), req.headers());
    let visitor_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let bodiless = http_body::Body::is_end_stream(req.body());
    let (parts, body) = req.into_parts();
    let Some((first, stats)) = route_first(cx, parts.uri.path(), bodiless, tunnel)? else {
        let body = read_body(cx, &parts.headers, body).await?;
        // Boxed: a request for a tunnel held by another edge is the rarer path, and its
        // state would otherwise be part of (and copied with) every request's future.
        return Box::pin(to_peer(cx, parts, body, upgrade, visitor_upgrade)).await;
    };
    // A device past its daily data cap serves only its essential rules.
    super::cap::check(cx.registry, &first, cx.host, &parts.headers)?;
    let body = read_body(cx, &parts.headers, body).await?;
    let out = Outgoing::new(cx, parts, body, upgrade, stats.clone());
    // A request without a body goes where the first look-up sent it; one with a body
    // looks again now that its start has arrived (the tunnel's connections may have
    // changed meanwhile).
    let (resp, permit) = forward(cx, out, bodiless.then_some(first)).await?;
    respond(cx, resp, permit, visitor_upgrade, stats)
}

/// Refuses request shapes that invite smuggling, over-long URLs and visitors over
/// their rate.
fn admit(cx: &Ctx<'_>, req: &Request<Incoming>) -> Step<()> {
    let c = &cx.shield.counters;
    if let Err(why) = forward::hygiene(req.headers()) {
        return Err(refuse(cx, &c.bad_request, StatusCode::BAD_REQUEST, why).into());
    }
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    if target > cx.shield.limits.max_url_bytes {
        return Err(refuse(
            cx,
            &c.url_too_long,
            StatusCode::URI_TOO_LONG,
            "the URL is too long",
        )
        .into());
    }
    // A forwarded request was counted at the edge the visitor reached.
    let rate = match cx.from_peer {
        Some(_) => Ok(()),
        None => cx
            .shield
            .rate_check(cx.visitor.client_ip, cx.host, req.uri().path()),
    };
    if let Err(secs) = rate {
        let r = refuse(
            cx,
            &c.rate_limited,
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests; slow down",
        );
        return Err(with_retry_after(r, secs).into());
    }
    Ok(())
}

/// Answers what needs no tunnel stream, before any body is read. A request without a
/// body takes the route (and so counts against the connection's load); one with a
/// body only peeks. A request a tunnel takes (even to be answered by one of its
/// `http_status:` rules) gets that tunnel's counters, in `tunnel` too. `Ok(None)`: no
/// live connection here, and the request may go to an edge of the cluster holding one.
fn route_first(
    cx: &Ctx<'_>,
    path: &str,
    bodiless: bool,
    tunnel: &mut Option<Arc<TunnelStats>>,
) -> Step<Option<(Route, Arc<TunnelStats>)>> {
    let host = cx.host;
    let first = if bodiless {
        cx.registry.route(host, path)
    } else {
        cx.registry.peek(host, path)
    };
    let stats = match &first {
        Route::Rule { conn, .. } => cx.metrics.tunnel(&conn.tunnel_name),
        _ => cx.metrics.none().clone(),
    };
    *tunnel = Some(stats.clone());
    match &first {
        Route::NoTunnel | Route::Offline if cx.cluster.is_some() => Ok(None),
        Route::NoTunnel | Route::Offline if cx.from_peer.is_some() => Err(text(
            StatusCode::BAD_GATEWAY,
            format!(
                "the edge holding {host} has no connection for it now (a request is \
                 forwarded between edges at most once); try again shortly"
            ),
        )
        .into()),
        Route::NoTunnel => Err(no_tunnel(host).into()),
        Route::Offline => Err(text(
            StatusCode::BAD_GATEWAY,
            format!("the tunnel for {host} is offline"),
        )
        .into()),
        Route::Rule { rules, rule, .. } => {
            match rules.rules.get(usize::from(*rule)).map(|r| r.action) {
                Some(RuleAction::Status(code)) => {
                    let mut resp = Response::new(empty());
                    *resp.status_mut() =
                        StatusCode::from_u16(code).unwrap_or(StatusCode::NOT_FOUND);
                    Err(resp.into())
                }
                Some(RuleAction::Stream) => Err(text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{host} is a TCP service: reach it with `mailslot access tcp --hostname {host}`"
                    ),
                ).into()),
                _ => Ok(Some((first, stats))),
            }
        }
    }
}

/// The request body as it goes to the origin.
enum ReqBody {
    /// The whole body, read at the edge: replayable for a retry.
    Whole(Bytes),
    /// The start read at the edge and the rest to come; taken by the first attempt.
    Streaming(Option<Guarded>),
}

/// Reads the start of the body (the whole of a small one) within the host's size cap
/// and the shield's time limits.
async fn read_body(cx: &Ctx<'_>, headers: &http::HeaderMap, body: Incoming) -> Step<ReqBody> {
    let limits = &cx.shield.limits;
    let c = &cx.shield.counters;
    let max_body = cx.shield.max_body(cx.host);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(refuse(
            cx,
            &c.body_too_large,
            StatusCode::PAYLOAD_TOO_LARGE,
            "the request body is too large",
        )
        .into());
    }
    match read_prefix(body, limits.body_buffer, max_body, limits.body_timeout).await {
        Ok(Prefix::Complete(b)) => Ok(ReqBody::Whole(b)),
        Ok(Prefix::Partial(b, incoming)) => Ok(ReqBody::Streaming(Some(Guarded::new(
            b,
            incoming,
            max_body,
            limits.body_idle_timeout,
        )))),
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
            Err(refuse(cx, counter, status, why).into())
        }
    }
}

/// The request on its way to the origin, kept between attempts.
struct Outgoing {
    parts: http::request::Parts,
    body: ReqBody,
    /// Whether the request may be sent more than once: its whole body is at hand and
    /// its method is idempotent.
    can_retry: bool,
    /// The protocol the visitor asks to switch to, when the edge lets it through.
    upgrade: Option<HeaderValue>,
    /// The Host the origin sees (unless its rule sets one) and X-Forwarded-Host: the
    /// visitor's own Host header when it names the authority, as it nearly always does.
    authority: Option<HeaderValue>,
    /// The tunnel's counters: the body's bytes, the origin's latency.
    stats: Arc<TunnelStats>,
    /// The request for the edge's own origin connections once built (the visitor's
    /// headers were taken into it).
    raw: Option<Arc<Request<Bytes>>>,
}

impl Outgoing {
    fn new(
        cx: &Ctx<'_>,
        parts: http::request::Parts,
        body: ReqBody,
        upgrade: Option<HeaderValue>,
        stats: Arc<TunnelStats>,
    ) -> Outgoing {
        let can_retry = matches!(body, ReqBody::Whole(_)) && forward::idempotent(&parts.method);
        let authority = match parts.headers.get(header::HOST) {
            Some(v) if v.as_bytes() == cx.authority.as_bytes() => Some(v.clone()),
            _ => HeaderValue::from_str(cx.authority).ok(),
        };
        Outgoing {
            parts,
            body,
            can_retry,
            upgrade,
            authority,
            stats,
            raw: None,
        }
    }

    /// The request for one attempt under a rule whose `Host` is `host_header` (if it
    /// sets one). The visitor's headers are kept only while `may_retry`: another
    /// attempt may need them. A request whose whole body is at hand and that asks for
    /// no upgrade goes on the edge's own origin connections ([`Up::Raw`]).
    fn request(&mut self, cx: &Ctx<'_>, host_header: Option<&str>, may_retry: bool) -> Step<Up> {
        let host = match host_header {
            Some(h) => HeaderValue::from_str(h).ok(),
            None => self.authority.clone(),
        };
        let Some(host) = host else {
            return Err(text(StatusCode::BAD_REQUEST, "invalid Host").into());
        };
        if let (ReqBody::Whole(b), None) = (&self.body, &self.upgrade) {
            // Counted as it goes into the tunnel: a retried body once per attempt.
            if !b.is_empty() {
                self.stats
                    .bytes(Kind::Http, Direction::ToOrigin, b.len() as u64);
            }
            let body = b.clone();
            return Ok(Up::Raw(self.raw_request(cx, host, body)));
        }
        let headers = if may_retry {
            self.parts.headers.clone()
        } else {
            std::mem::take(&mut self.parts.headers)
        };
        let headers = forward::to_origin(
            headers,
            self.upgrade.as_ref(),
            host,
            cx.visitor,
            self.authority.as_ref(),
            cx.visitor.trusted,
        );
        let uri = origin_form(&self.parts.uri);
        // Counted as hyper sends it into the tunnel: a retried body once per attempt.
        let counted = |b| CountedBody::new(b, self.stats.clone(), Direction::ToOrigin);
        let body = match &mut self.body {
            ReqBody::Whole(b) if b.is_empty() => empty(),
            ReqBody::Whole(b) => {
                counted(ReqBytes::Whole(http_body_util::Full::new(b.clone()))).boxed()
            }
            ReqBody::Streaming(rest) => match rest.take() {
                Some(g) => counted(ReqBytes::Rest(g)).boxed(),
                None => {
                    return Err(text(
                        StatusCode::BAD_GATEWAY,
                        "the request could not be forwarded",
                    )
                    .into())
                }
            },
        };
        let mut up = Request::new(body);
        *up.method_mut() = self.parts.method.clone();
        *up.uri_mut() = uri;
        *up.version_mut() = http::Version::HTTP_11;
        *up.headers_mut() = headers;
        Ok(Up::Hyper(Box::new(up)))
    }

    /// The request for the edge's own origin connections (its whole `body` at hand),
    /// built once: the visitor's headers are rewritten for the first attempt, and a
    /// retry sends the same request (with its `Host` replaced should the rule there set
    /// another).
    fn raw_request(&mut self, cx: &Ctx<'_>, host: HeaderValue, body: Bytes) -> Arc<Request<Bytes>> {
        if let Some(built) = &mut self.raw {
            if built.headers().get(header::HOST) != Some(&host) {
                Arc::make_mut(built)
                    .headers_mut()
                    .insert(header::HOST, host);
            }
            return built.clone();
        }
        let headers = forward::to_origin(
            std::mem::take(&mut self.parts.headers),
            None,
            host,
            cx.visitor,
            self.authority.as_ref(),
            cx.visitor.trusted,
        );
        let mut up = Request::new(body);
        *up.method_mut() = self.parts.method.clone();
        *up.uri_mut() = origin_form(&self.parts.uri);
        *up.headers_mut() = headers;
        let built = Arc::new(up);
        self.raw = Some(built.clone());
        built
    }
}

/// Origin-form: the path and query only, whatever form the visitor sent.
fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

/// Sends the request on connections of its tunnel until one answers: at most
/// [`MAX_ATTEMPTS`], each on a connection not tried before, and a second only for a
/// request that may be sent twice. `first` is the route already taken, if any.
async fn forward(
    cx: &Ctx<'_>,
    mut out: Outgoing,
    mut first: Option<Route>,
) -> Step<(Response<PooledBody>, OwnedSemaphorePermit)> {
    let mut tried = heapless::Vec::<usize, MAX_ATTEMPTS>::new();
    loop {
        let route = match first.take() {
            Some(route) => route,
            None => cx
                .registry
                .route_excluding(cx.host, out.parts.uri.path(), &tried),
        };
        let taken = take_connection(cx, route, tried.is_empty()).await?;
        // At most MAX_ATTEMPTS: no attempt follows the last (`may_retry` below).
        let _ = tried.push(taken.conn.session.id());
        // Another attempt may follow this one.
        let may_retry = out.can_retry && tried.len() < MAX_ATTEMPTS;
        let up = out.request(cx, taken.host_header.as_deref(), may_retry)?;
        let retry = may_retry.then_some(&tried[..]);
        let stats = &out.stats;
        if let Some(resp) = attempt(cx, &taken, up, retry, stats).await? {
            return Ok((resp, taken.permit));
        }
    }
}

/// A connection chosen for an attempt, with the tunnel's request permit.
struct Taken {
    conn: Arc<Conn>,
    rules: Arc<Rules>,
    rule: u16,
    /// The `Host` the rule sets, if any.
    host_header: Option<String>,
    /// Held until the response (or the upgraded connection) is done.
    permit: OwnedSemaphorePermit,
}

/// Checks a route for an attempt and waits (bounded) for one of its tunnel's request
/// permits. `first_attempt`: whether no connection was tried yet.
async fn take_connection(cx: &Ctx<'_>, route: Route, first_attempt: bool) -> Step<Taken> {
    let host = cx.host;
    let (conn, rules, rule, permits) = match route {
        Route::NoTunnel => return Err(no_tunnel(host).into()),
        Route::Offline if first_attempt => {
            return Err(text(
                StatusCode::BAD_GATEWAY,
                format!("the tunnel for {host} is offline"),
            )
            .into())
        }
        Route::Offline => {
            return Err(text(
                StatusCode::BAD_GATEWAY,
                format!("the tunnel for {host} lost its connections"),
            )
            .into())
        }
        Route::Rule {
            conn,
            rules,
            rule,
            permits,
        } => (conn, rules, rule, permits),
    };
    let Some(r) = rules.rules.get(usize::from(rule)) else {
        return Err(text(StatusCode::INTERNAL_SERVER_ERROR, "rule table changed").into());
    };
    if r.action != RuleAction::Http {
        return Err(text(StatusCode::BAD_GATEWAY, "the rule table changed; try again").into());
    }
    let host_header = r.host_header.clone();
    let queue = cx.shield.limits.queue_timeout;
    let Ok(Ok(permit)) = tokio::time::timeout(queue, permits.acquire_owned()).await else {
        let r = refuse(
            cx,
            &cx.shield.counters.tunnel_busy,
            StatusCode::SERVICE_UNAVAILABLE,
            "the tunnel is busy; try again shortly",
        );
        return Err(with_retry_after(r, 1).into());
    };
    Ok(Taken {
        conn,
        rules,
        rule,
        host_header,
        permit,
    })
}

/// One attempt on the connection `taken`, watched for silence and bounded by the
/// origin timeout; the time to the origin's response head goes to `stats`.
/// `Ok(None)`: give up on this connection and try another; `retry` (the connections
/// tried) is set when that is allowed.
async fn attempt(
    cx: &Ctx<'_>,
    taken: &Taken,
    up: Up,
    retry: Option<&[usize]>,
    stats: &TunnelStats,
) -> Step<Option<Response<PooledBody>>> {
    let (conn, rules, rule): (&Conn, &Rules, u16) = (&taken.conn, &taken.rules, taken.rule);
    let host = cx.host;
    let client = cx.visitor.client_ip;
    let sent = Instant::now();
    let deadline = tokio::time::Instant::from_std(sent) + cx.origin_timeout;
    let send = std::pin::pin!(cx.pool.send(conn, rules.generation, rule, host, up));
    let watched = watch_silence(cx.registry, conn, retry, host, deadline, send).await;
    match watched {
        Watched::TimedOut => Err(text(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the origin did not answer within {}s",
                cx.origin_timeout.as_secs_f32()
            ),
        )
        .into()),
        Watched::Retry => {
            log::info!("{host}: the connector stopped answering on a tunnel connection; retrying on another");
            Ok(None)
        }
        Watched::Done(Ok(resp)) => {
            stats.origin_latency(sent.elapsed());
            Ok(Some(resp))
        }
        // What went wrong (an address, an error from the device's system) is for the
        // operator: logged here and by the connector, never shown to the visitor.
        Watched::Done(Err(SendError::Dial(DialError::Device { error, message }))) => {
            let status = if error == StreamError::DialTimeout {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            };
            cx.shield.log_rejection(format_args!(
                "{} {host} from {client}: origin unreachable: {message}",
                status.as_u16(),
            ));
            Err(text(status, "origin unreachable").into())
        }
        Watched::Done(Err(SendError::Dial(DialError::Tunnel(m)))) if retry.is_some() => {
            log::info!("{host}: tunnel connection failed ({m}); retrying on another");
            Ok(None)
        }
        Watched::Done(Err(SendError::Dial(DialError::Tunnel(m)))) => {
            cx.shield.log_rejection(format_args!(
                "502 {host} from {client}: tunnel connection failed: {m}"
            ));
            Err(text(StatusCode::BAD_GATEWAY, "the tunnel connection failed").into())
        }
        Watched::Done(Err(SendError::Origin(e))) => {
            log::debug!("{host}: origin request failed: {e:?}");
            Err(text(StatusCode::BAD_GATEWAY, "the origin closed the connection").into())
        }
        Watched::Silent => {
            cx.shield.log_rejection(format_args!(
                "502 {host} from {client}: no connection of its tunnel answers"
            ));
            Err(text(
                StatusCode::BAD_GATEWAY,
                format!("the tunnel for {host} is not answering"),
            )
            .into())
        }
    }
}

/// The origin's response as the visitor gets it: in the edge's HTTP version, without
/// hop-by-hop headers, with the host's added headers, holding the tunnel's permit
/// until its body is sent. A switch of protocols goes to [`upgrade`].
fn respond(
    cx: &Ctx<'_>,
    mut resp: Response<PooledBody>,
    permit: OwnedSemaphorePermit,
    visitor_upgrade: Option<OnUpgrade>,
    stats: Arc<TunnelStats>,
) -> Step<Response<Body>> {
    // A proxy answers in its own HTTP version, whatever the origin spoke (an HTTP/1.0
    // origin must not make the edge say HTTP/1.0 to an HTTP/1.1 visitor).
    *resp.version_mut() = http::Version::HTTP_11;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return upgrade(cx, resp, permit, visitor_upgrade, stats);
    }
    forward::strip_hop_by_hop(resp.headers_mut());
    if let Some(policy) = cx.shield.host_policy(cx.host) {
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
        stats,
    };
    Ok(Response::from_parts(rparts, body.boxed()))
}

/// The origin switched protocols: when the visitor asked for it (a WebSocket, the only
/// upgrade the edge lets through), both connections are joined in a task that holds
/// the tunnel's permit; otherwise the visitor gets a 502.
fn upgrade(
    cx: &Ctx<'_>,
    mut resp: Response<PooledBody>,
    permit: OwnedSemaphorePermit,
    visitor_upgrade: Option<OnUpgrade>,
    stats: Arc<TunnelStats>,
) -> Step<Response<Body>> {
    let Some(visitor_up) = visitor_upgrade else {
        // Nothing was asked for: switching now would hand the visitor's connection to
        // a protocol the edge never agreed to.
        cx.shield.log_rejection(format_args!(
            "502 {} from {}: the origin switched protocols unasked",
            cx.host, cx.visitor.client_ip
        ));
        return Err(text(
            StatusCode::BAD_GATEWAY,
            "the origin sent an invalid response",
        )
        .into());
    };
    let origin_up = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let _permit = permit;
        let (Ok(v), Ok(o)) = (visitor_up.await, origin_up.await) else {
            return;
        };
        let mut v = CountedIo::new(TokioIo::new(v), stats, Kind::Http);
        let mut o = TokioIo::new(o);
        let _ = tokio::io::copy_bidirectional(&mut v, &mut o).await;
    });
    let (rparts, _) = resp.into_parts();
    Ok(Response::from_parts(rparts, empty()))
}

/// Sends a request whose tunnel this edge holds no connection for to an edge of the
/// cluster that does, and relays its answer (a WebSocket upgrade included). The
/// visitor's limits, policies and client address were applied here; the other edge
/// routes it to its own connections only.
async fn to_peer(
    cx: &Ctx<'_>,
    parts: http::request::Parts,
    body: ReqBody,
    upgrade: Option<HeaderValue>,
    visitor_upgrade: Option<OnUpgrade>,
) -> Step<Response<Body>> {
    let host = cx.host;
    let Some(cluster) = cx.cluster else {
        return Err(no_tunnel(host).into());
    };
    let v = cx.visitor;
    let visitor = match crate::edge::cluster::forward::visitor_header(cx.host, cx.authority, v) {
        Ok(h) => h,
        Err(why) => {
            cx.shield.log_rejection(format_args!(
                "502 {host} from {}: not forwarded: {why}",
                v.client_ip
            ));
            return Err(text(
                StatusCode::BAD_GATEWAY,
                "the request could not be forwarded",
            )
            .into());
        }
    };
    let body = match body {
        ReqBody::Whole(b) if b.is_empty() => empty(),
        ReqBody::Whole(b) => ReqBytes::Whole(http_body_util::Full::new(b)).boxed(),
        ReqBody::Streaming(rest) => match rest {
            Some(g) => ReqBytes::Rest(g).boxed(),
            None => empty(),
        },
    };
    let mut up = Request::new(body);
    *up.method_mut() = parts.method;
    *up.uri_mut() = match parts.uri.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    };
    let mut headers = parts.headers;
    forward::strip_hop_by_hop(&mut headers);
    if let Some(proto) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
    if let Ok(a) = HeaderValue::from_str(cx.authority) {
        headers.insert(header::HOST, a);
    }
    // Replaces any the visitor sent: the other edge believes only this edge's.
    headers.insert(crate::edge::cluster::forward::VISITOR_HEADER, visitor);
    *up.headers_mut() = headers;
    // The other edge answers within its own origin timeout; a little more here.
    let wait = cx.origin_timeout + PEER_SLACK;
    let mut resp = match tokio::time::timeout(wait, cluster.send_forward(host, up)).await {
        Ok(Ok((resp, _member))) => resp,
        Ok(Err(miss)) => return Err(missed(cx, miss).into()),
        Err(_) => {
            return Err(text(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the edge holding {host} did not answer within {}s",
                    wait.as_secs()
                ),
            )
            .into())
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(visitor_up) = visitor_upgrade else {
            return Err(text(
                StatusCode::BAD_GATEWAY,
                "the origin sent an invalid response",
            )
            .into());
        };
        let peer_up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let (Ok(v), Ok(p)) = (visitor_up.await, peer_up.await) else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(v), &mut TokioIo::new(p)).await;
        });
        let (mut rparts, _) = resp.into_parts();
        if let Some(proto) = upgrade {
            rparts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            rparts.headers.insert(header::UPGRADE, proto);
        }
        return Ok(Response::from_parts(rparts, empty()));
    }
    forward::strip_hop_by_hop(resp.headers_mut());
    *resp.version_mut() = http::Version::HTTP_11;
    Ok(resp.map(|b| b.map_err(BoxError::from).boxed()))
}

/// Time a forwarding edge waits beyond its origin timeout for the other edge's answer.
const PEER_SLACK: Duration = Duration::from_secs(2);

/// The visitor's answer when no edge of the cluster can take the request.
fn missed(cx: &Ctx<'_>, miss: Miss) -> Response<Body> {
    let host = cx.host;
    match miss {
        // A tunnel this edge knows, offline here and unknown to the cluster.
        Miss::Unknown if matches!(cx.registry.peek(host, "/"), Route::Offline) => text(
            StatusCode::BAD_GATEWAY,
            format!("the tunnel for {host} is offline"),
        ),
        Miss::Unknown => no_tunnel(host),
        Miss::Offline => text(
            StatusCode::BAD_GATEWAY,
            format!("the tunnel for {host} is offline"),
        ),
        Miss::Unreachable(why) => {
            cx.shield.log_rejection(format_args!(
                "502 {host} from {}: no edge holding its tunnel answers: {why}",
                cx.visitor.client_ip
            ));
            with_retry_after(
                text(
                    StatusCode::BAD_GATEWAY,
                    format!("the edge holding {host} is unreachable; try again shortly"),
                ),
                1,
            )
        }
        Miss::NoPresence(why) => {
            cx.shield.log_rejection(format_args!(
                "503 {host} from {}: which edge holds its tunnel is unknown: {why}",
                cx.visitor.client_ip
            ));
            with_retry_after(
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("which edge serves {host} cannot be told now; try again shortly"),
                ),
                5,
            )
        }
    }
}

/// The 404 of a hostname no tunnel serves here.
fn no_tunnel(host: &str) -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        format!("no tunnel serves {host} on this edge"),
    )
}

/// A response from the edge itself, counted and logged at a bounded pace.
fn refuse(cx: &Ctx<'_>, counter: &AtomicU64, status: StatusCode, why: &str) -> Response<Body> {
    counter.fetch_add(1, Ordering::Relaxed);
    cx.shield.log_rejection(format_args!(
        "{} {} from {}: {why}",
        status.as_u16(),
        cx.host,
        cx.visitor.client_ip
    ));
    text(status, why.to_string())
}

fn with_retry_after(mut r: Response<Body>, secs: u64) -> Response<Body> {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

/// Holds a tunnel's request permit until the response body is done, counting the
/// body's bytes as they go to the visitor.
struct WithPermit<B> {
    body: B,
    _permit: OwnedSemaphorePermit,
    stats: Arc<TunnelStats>,
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
        let me = self.get_mut();
        let frame = Pin::new(&mut me.body).poll_frame(cx).map_err(Into::into);
        if let Poll::Ready(Some(Ok(f))) = &frame {
            if let Some(d) = f.data_ref() {
                me.stats
                    .bytes(Kind::Http, Direction::ToVisitor, d.len() as u64);
            }
        }
        frame
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A request body on its way to the origin, before counting: the whole of it, or its
/// start and the rest to come. (One type for both: one box per attempt, as before.)
enum ReqBytes {
    Whole(http_body_util::Full<Bytes>),
    Rest(Guarded),
}

impl http_body::Body for ReqBytes {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReqBytes::Whole(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
            ReqBytes::Rest(g) => Pin::new(g).poll_frame(cx),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            ReqBytes::Whole(b) => b.is_end_stream(),
            ReqBytes::Rest(g) => g.is_end_stream(),
        }
    }
    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ReqBytes::Whole(b) => b.size_hint(),
            ReqBytes::Rest(g) => g.size_hint(),
        }
    }
}
