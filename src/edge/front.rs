//! The visitor front: HTTP/1.1 and HTTP/2 (ALPN over TLS, or prior knowledge in the
//! clear) on the edge's public listeners; TLS certificates chosen by SNI.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::body::{self, Body};
use super::forward::{self, Visitor};
use super::proxy;
use super::EdgeState;

/// Picks the certificate whose names cover the SNI name, else the edge's own, from the
/// certificates in force (a reload replaces them for the handshakes after it).
#[derive(Debug)]
pub(crate) struct SniResolver {
    certs: tokio::sync::watch::Receiver<Option<Arc<super::Certs>>>,
    /// Whether `certs:` are offered at all (the tunnel listener presents the edge's own).
    by_name: bool,
}

impl SniResolver {
    pub(crate) fn new(state: &EdgeState, by_name: bool) -> SniResolver {
        SniResolver {
            certs: state.certs.subscribe(),
            by_name,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.borrow().clone()?;
        if !self.by_name {
            return Some(certs.default.clone());
        }
        let Some(name) = hello.server_name() else {
            return Some(certs.default.clone());
        };
        let Ok(name) = rustls::pki_types::ServerName::try_from(name.to_string()) else {
            return Some(certs.default.clone());
        };
        for ck in &certs.others {
            let Some(leaf) = ck.cert.first() else {
                continue;
            };
            if let Ok(ee) = webpki::EndEntityCert::try_from(leaf) {
                if ee.verify_is_valid_for_subject_name(&name).is_ok() {
                    return Some(ck.clone());
                }
            }
        }
        Some(certs.default.clone())
    }
}

/// Accepts visitors on `listener` until the task is dropped; `tls` makes it HTTPS.
///
/// Accepting never waits: when `max-conns` connections are open, the one idle longest
/// (no request in flight: silent, mid TLS handshake, or between requests) is closed to
/// make room, and when none is idle the newcomer is refused. Each connection must
/// finish its TLS handshake within `tls-handshake-timeout`, start its first request
/// within `request-head-timeout`, and is closed after `conn-idle-timeout` without a
/// request in flight, whatever protocol it speaks.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<EdgeState>,
) {
    let table = ConnTable::new(state.shield.limits.max_conns);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: pause instead of spinning.
                log::warn!("accept on {:?} failed: {e}", listener.local_addr().ok());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match state.shield.admit(super::flood::addr_key(peer.ip())) {
            Ok(s) => s,
            Err(why) => {
                state
                    .shield
                    .log_rejection(format_args!("connection from {peer}: {why}"));
                continue; // dropping the socket closes it
            }
        };
        let Some(entry) = table.insert() else {
            state
                .shield
                .counters
                .conn_limit
                .fetch_add(1, Ordering::Relaxed);
            state.shield.log_rejection(format_args!(
                "connection from {peer}: all {} connections busy with requests",
                state.shield.limits.max_conns
            ));
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        let table = table.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let limits = state.shield.limits.clone();
            // Until the first request: the TLS handshake's time, then a request head's.
            let first = match tls {
                Some(_) => limits
                    .tls_handshake_timeout
                    .max(limits.request_head_timeout),
                None => limits.request_head_timeout,
            };
            let conn = entry.clone();
            let serve = async move {
                match tls {
                    None => serve_conn(TokioIo::new(tcp), peer, "http", state, conn).await,
                    Some(acceptor) => {
                        let handshake = limits.tls_handshake_timeout;
                        match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                if super::acme::is_validation(stream.get_ref().1.alpn_protocol()) {
                                    return;
                                }
                                // The first request's time starts now.
                                conn.touch();
                                serve_conn(TokioIo::new(stream), peer, "https", state, conn).await
                            }
                            Ok(Err(e)) => log::debug!("TLS handshake from {peer} failed: {e}"),
                            Err(_) => {
                                state
                                    .shield
                                    .counters
                                    .tls_timeout
                                    .fetch_add(1, Ordering::Relaxed);
                                log::debug!("TLS handshake from {peer} timed out");
                            }
                        }
                    }
                }
            };
            // In this order, without the random start select! makes by default: the
            // connection's own work is what wakes its task almost every time.
            tokio::select! {
                biased;
                _ = serve => {}
                end = entry.idle_expired(first, limits.request_head_timeout, limits.conn_idle_timeout) => {
                    match end {
                        IdleEnd::Evicted => log::debug!("visitor {peer}: idle connection closed to make room"),
                        IdleEnd::Expired => log::debug!("visitor {peer}: idle connection closed"),
                    }
                }
            }
            table.remove(&entry);
        });
    }
}

/// The visitor connections open on one listener, by age, with whether each has a
/// request in flight: the oldest idle one makes room for a newcomer.
struct ConnTable {
    max: usize,
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<ConnEntry>>>,
}

/// One visitor connection's activity.
struct ConnEntry {
    id: u64,
    /// Requests whose responses are still being sent.
    in_flight: AtomicUsize,
    /// Requests started so far.
    requests: AtomicU64,
    /// Last start or end of a request (or of the TLS handshake), in ms after `born`,
    /// plus one: 0 until then.
    last: AtomicU64,
    born: Instant,
    /// Set when the connection is closed to make room (then `activity` is told).
    evicted: AtomicBool,
    /// Told when a request starts or ends, or the connection is evicted.
    activity: Notify,
}

impl ConnTable {
    fn new(max: usize) -> Arc<ConnTable> {
        Arc::new(ConnTable {
            max: max.max(1),
            next: AtomicU64::new(0),
            open: Mutex::new(BTreeMap::new()),
        })
    }

    /// A place for a new connection; when all are taken, the oldest idle connection
    /// is told to close and gives up its place. `None` when every one is busy.
    fn insert(&self) -> Option<Arc<ConnEntry>> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() >= self.max {
            let idle = open
                .iter()
                .find(|(_, c)| c.in_flight.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id)?;
            if let Some(old) = open.remove(&idle) {
                old.evicted.store(true, Ordering::Release);
                old.activity.notify_one();
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ConnEntry {
            id,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            last: AtomicU64::new(0),
            born: Instant::now(),
            evicted: AtomicBool::new(false),
            activity: Notify::new(),
        });
        open.insert(id, entry.clone());
        Some(entry)
    }

    fn remove(&self, entry: &ConnEntry) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&entry.id);
    }
}

impl ConnEntry {
    fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last.store(ms + 1, Ordering::Release);
    }

    /// Marks a request as started; the guard marks it finished when dropped (with the
    /// response body, so a long download counts as activity).
    ///
    /// Only the end of the connection's first request tells [`Self::idle_expired`]:
    /// that is the one change that can bring its deadline forward (from the time a first
    /// request may take to the idle limit). Any other start or end only moves the
    /// deadline later, which the watch finds when it wakes at the earlier one; so a
    /// request costs no wake-up of the connection's task and no new timer.
    fn begin(self: &Arc<Self>) -> Active {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let first = self.requests.fetch_add(1, Ordering::Relaxed) == 0;
        self.touch();
        Active {
            entry: self.clone(),
            first,
        }
    }

    /// Resolves once the connection has had no request in flight for its limit:
    /// `first` from its start, `head` after the TLS handshake until a first request,
    /// `idle` between requests; or once the connection is evicted to make room (one
    /// watch for both: each future in the connection's `select!` is polled at every
    /// wake-up of its task).
    async fn idle_expired(&self, first: Duration, head: Duration, idle: Duration) -> IdleEnd {
        loop {
            if self.evicted.load(Ordering::Acquire) {
                return IdleEnd::Evicted;
            }
            let touched = self.last.load(Ordering::Acquire);
            let last = Duration::from_millis(touched.saturating_sub(1));
            let limit = if self.requests.load(Ordering::Relaxed) > 0 {
                idle
            } else if touched == 0 {
                first
            } else {
                head
            };
            let since = self.born.elapsed().saturating_sub(last);
            let wait = if self.in_flight.load(Ordering::Acquire) > 0 {
                limit
            } else if since >= limit {
                return IdleEnd::Expired;
            } else {
                limit - since
            };
            // Look again at the deadline (a request that started or ended meanwhile
            // moved it later), when the first request ends ([`Self::begin`]) or when
            // the connection is evicted ([`ConnTable::insert`]).
            tokio::select! {
                () = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
                () = self.activity.notified() => {}
            }
        }
    }
}

/// Why [`ConnEntry::idle_expired`] ended.
#[derive(Debug, PartialEq)]
enum IdleEnd {
    /// Closed to make room for a newcomer.
    Evicted,
    /// Idle past its limit.
    Expired,
}

/// A request in flight on a [`ConnEntry`]; `first`: the connection's first request.
struct Active {
    entry: Arc<ConnEntry>,
    first: bool,
}

impl Drop for Active {
    fn drop(&mut self) {
        self.entry.touch();
        self.entry.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.first {
            self.entry.activity.notify_one();
        }
    }
}

/// A response body that keeps its request counted as in flight until it is sent.
struct Tracked {
    inner: Body,
    _active: Active,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = super::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

async fn serve_conn<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    scheme: &'static str,
    state: Arc<EdgeState>,
    conn: Arc<ConnEntry>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = state.shield.limits.clone();
    // The peer's address as text, once for all the connection's requests.
    let peer_ip = forward::ip_header(peer.ip());
    let service = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let peer_ip = peer_ip.clone();
        let active = conn.begin();
        async move {
            let resp = if req.headers().len() > state.shield.limits.max_headers {
                // HTTP/1.1 heads are held to this by the parser; HTTP/2 ones here.
                state
                    .shield
                    .counters
                    .bad_request
                    .fetch_add(1, Ordering::Relaxed);
                body::text(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "too many request headers",
                )
            } else {
                route(req, peer, peer_ip, scheme, &state).await
            };
            Ok::<_, Infallible>(resp.map(|inner| {
                Tracked {
                    inner,
                    _active: active,
                }
                .boxed()
            }))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_head_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_head_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        // Header blocks are held to the same size as HTTP/1.1 heads.
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX))
        // A peer gone silent mid-request is found by pings.
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    if let Err(e) = builder.serve_connection_with_upgrades(io, service).await {
        log::debug!("visitor {peer}: {e}");
    }
}

/// How often an HTTP/2 visitor connection is pinged, and how long an answer may take.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// Looked up as a constant name: as text it would be parsed on each look-up.
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    peer_ip: http::HeaderValue,
    scheme: &'static str,
    state: &EdgeState,
) -> Response<Body> {
    if let Some(answer) = super::acme::http01(state, scheme, req.uri().path()) {
        return answer;
    }
    // Host and path in canonical form before anything looks at them: access policies,
    // routing, rate limits and the origin see one spelling of each.
    let (req, host, authority) = match canonical_request(req) {
        Ok(x) => x,
        Err(why) => {
            state
                .shield
                .counters
                .bad_request
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return body::text(StatusCode::BAD_REQUEST, why);
        }
    };
    let shield = &state.shield;
    // One client address for access policies (`ip-allow`) and rate limits alike.
    let client_ip = shield.client_ip(
        peer.ip(),
        req.headers()
            .get(X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok()),
    );
    let req = match super::access::gate(req, &host, peer, client_ip, scheme, state).await {
        Ok(req) => req,
        Err(resp) => return resp,
    };
    let xff = req
        .headers()
        .get(X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok());
    let trusted = shield.is_trusted(peer.ip());
    let forwarded_for = forward::forwarded_for_text(&peer_ip, xff.filter(|_| trusted));
    let visitor = Visitor {
        peer,
        peer_ip,
        client_ip,
        forwarded_for,
        scheme,
        trusted,
    };
    let cx = proxy::Ctx {
        registry: &state.registry,
        pool: &state.pool,
        shield,
        metrics: &state.metrics,
        origin_timeout: state.origin_timeout,
        visitor: &visitor,
        host: &host,
        authority: &authority,
        cluster: state.cluster.get().map(|c| &**c),
        from_peer: None,
    };
    proxy::handle(&cx, req).await
}

/// The request with its URI's path in normal form ([`super::path`]) and its authority
/// canonical, with the canonical host and authority (`host[:port]`). The authority is
/// the URI's (absolute-form target, HTTP/2 `:authority`), else the Host header's.
fn canonical_request(
    req: Request<Incoming>,
) -> Result<(Request<Incoming>, String, String), Cow<'static, str>> {
    let (mut parts, body) = req.into_parts();
    // One Host header at most, and a valid one even where the target's authority is
    // the one used (RFC 9112 3.2): two spellings of a host are one too many.
    let mut hosts = parts.headers.get_all(http::header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err("the request names more than one Host".into());
    }
    let host_header = host_header
        .map(|h| h.to_str().map_err(|_| "the request names no valid host"))
        .transpose()?;
    let host_split = host_header
        .map(|h| {
            crate::hostname::split_authority(h)
                .map_err(|e| Cow::Owned(format!("the Host header is not valid: {e}")))
        })
        .transpose()?;
    // The target's authority, else the Host header's, which was split just above.
    let (host, authority) = match (parts.uri.authority(), host_split) {
        (Some(a), _) => host_of(a.as_str())
            .map_err(|e| Cow::Owned(format!("the request names no valid host: {e}")))?,
        (None, Some((host, port))) => host_and_authority(host, port),
        (None, None) => return Err("the request names no host".into()),
    };
    let path = super::path::normalize(parts.uri.path()).map_err(|e| Cow::Borrowed(e.reason()))?;
    let uri_authority_ok = parts
        .uri
        .authority()
        .is_none_or(|a| a.as_str() == authority);
    if let Cow::Owned(path) = path {
        let pq = match parts.uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(pq.parse().map_err(|_| "the path is not valid")?);
        parts.uri = http::Uri::from_parts(uri).map_err(|_| "the path is not valid")?;
    }
    if !uri_authority_ok {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.authority = Some(
            authority
                .parse()
                .map_err(|_| "the request names no valid host")?,
        );
        parts.uri = http::Uri::from_parts(uri).map_err(|_| "the request names no valid host")?;
    }
    Ok((Request::from_parts(parts, body), host, authority))
}

/// The canonical host of an authority ([`crate::hostname`]: lowercase, no trailing dot,
/// IPv6 without brackets) and the authority rebuilt from it (`host[:port]`).
fn host_of(authority: &str) -> Result<(String, String), crate::hostname::HostError> {
    let (host, port) = crate::hostname::split_authority(authority)?;
    Ok(host_and_authority(host, port))
}

/// The canonical host and the authority rebuilt from it, from a split authority.
fn host_and_authority(host: Cow<'_, str>, port: Option<u16>) -> (String, String) {
    let host = host.into_owned();
    let authority = match (port, host.contains(':')) {
        (None, false) => host.clone(),
        (None, true) => format!("[{host}]"),
        (Some(p), false) => format!("{host}:{p}"),
        (Some(p), true) => format!("[{host}]:{p}"),
    };
    (host, authority)
}

#[cfg(test)]
mod tests {
    use super::{host_of, ConnTable, IdleEnd};
    use std::future::Future;
    use std::time::Duration;

    #[test]
    fn a_full_table_closes_its_oldest_idle_connection() {
        let t = ConnTable::new(2);
        let a = t.insert().unwrap();
        let b = t.insert().unwrap();
        let busy_a = a.begin();
        let c = t.insert().expect("b is idle: it makes room");
        assert!(
            t.open.lock().unwrap().get(&b.id).is_none(),
            "b was told to go"
        );
        let _busy_c = c.begin();
        assert!(t.insert().is_none(), "every connection is busy");
        drop(busy_a);
        let d = t.insert().expect("a is idle again");
        assert!(t.open.lock().unwrap().get(&a.id).is_none());
        t.remove(&d);
        assert!(t.insert().is_some());
    }

    #[tokio::test]
    async fn an_evicted_connection_s_watch_ends_at_once() {
        let t = ConnTable::new(1);
        let a = t.insert().unwrap();
        let hour = Duration::from_secs(3600);
        let mut watch = Box::pin(a.idle_expired(hour, hour, hour));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            watch.as_mut().poll(&mut cx).is_pending(),
            "idle, but not for an hour"
        );
        let _b = t.insert().expect("a is idle: it makes room");
        let end = tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .expect("the watch ends when its connection is evicted");
        assert_eq!(end, IdleEnd::Evicted);
    }

    #[test]
    fn hosts() {
        let h = |a| host_of(a).unwrap();
        assert_eq!(
            h("Dev42.Example.com:8080"),
            ("dev42.example.com".into(), "dev42.example.com:8080".into())
        );
        assert_eq!(
            h("dev42.example.com."),
            ("dev42.example.com".into(), "dev42.example.com".into())
        );
        assert_eq!(h("[::1]:80"), ("::1".into(), "[::1]:80".into()));
        assert_eq!(h("x"), ("x".into(), "x".into()));
        assert!(host_of("grafana..dev42.example.com").is_err());
        assert!(host_of("a_b.example.com:80").is_err());
    }
}
