//! Keep-alive HTTP/1.1 connections to origins, each one inside a tunnel stream.
//!
//! Two kinds of connection share the pool: the edge's own ([`super::origin`], for a
//! request whose whole body is at hand and that asks for no upgrade: most requests),
//! and hyper's client (a body that streams in, a WebSocket upgrade). A request takes an
//! idle connection of its own kind only.
//!
//! A request takes an idle connection of the same tunnel connection, rule table
//! generation, rule and visitor hostname (the stream header named them, and the
//! connector checked them once), or opens a new stream. A connection goes back to the
//! pool when its response body has been read to the end; one whose response was
//! abandoned, or that switched protocols, is closed. Idle connections are closed after
//! [`IDLE_TIMEOUT`]; the pool holds at most [`MAX_IDLE_PER_KEY`] per key and
//! [`MAX_IDLE`] in all.
//!
//! Unlike a general-purpose client pool, nothing here races a new stream against a
//! connection about to come free: a request with no idle connection opens a stream at
//! once and keeps it. Racing opened streams that were then dropped whenever more than a
//! handful came free together, which on a busy tunnel cost a stream and an origin
//! connection for one request in twenty.

use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustc_hash::FxHashMap;

use super::body::{Body, BoxError};
use super::origin::{self, OriginError, RawBody, RawConn};
use super::registry::Conn;
use super::stream::{open_tunnel_stream, DialError};
use crate::wire::StreamKind;

/// Idle connections are closed after this long.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most idle connections per (tunnel connection, generation, rule).
pub(crate) const MAX_IDLE_PER_KEY: usize = 64;
/// Most idle connections in all.
pub(crate) const MAX_IDLE: usize = 4096;
/// How often closed and expired connections are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// Tunnel connection id, rule table generation, rule.
type Key = (usize, u32, u16);

struct Idle {
    host: Arc<str>,
    conn: IdleConn,
    since: Instant,
}

/// An idle connection of either kind.
enum IdleConn {
    /// hyper's client: a sender to the connection's task.
    Hyper(http1::SendRequest<Body>),
    /// The edge's own: the stream itself.
    Raw(RawConn),
}

impl IdleConn {
    fn is_closed(&mut self) -> bool {
        match self {
            IdleConn::Hyper(tx) => tx.is_closed(),
            IdleConn::Raw(c) => !c.is_open(),
        }
    }

    fn is_raw(&self) -> bool {
        matches!(self, IdleConn::Raw(_))
    }
}

#[derive(Default)]
struct Table {
    /// Keyed by the edge's own numbers: `rustc_hash`, not std's keyed hash.
    by_key: FxHashMap<Key, Vec<Idle>>,
    count: usize,
}

/// Why a request could not be forwarded.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No tunnel stream: the tunnel connection failed, or the connector could not
    /// reach the origin.
    Dial(DialError),
    /// The origin connection failed while the request was under way.
    Origin(BoxError),
}

/// A request for the origin: for the edge's own connections when its whole body is at
/// hand and it asks for no upgrade (shared: a retry sends the same one again), else for
/// hyper's.
pub(crate) enum Up {
    Raw(Arc<Request<Bytes>>),
    /// Boxed: the rarer kind (a body that streams in, an upgrade).
    Hyper(Box<Request<Body>>),
}

/// The pool of origin connections of one edge.
pub(crate) struct Pool {
    table: Mutex<Table>,
    builder: http1::Builder,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            table: Mutex::default(),
            builder: http1::Builder::new(),
        }
    }
}

impl Pool {
    /// Closes idle connections that expired or whose stream is gone, every
    /// 15 s, for as long as the pool exists.
    pub(crate) fn spawn_sweeper(self: &Arc<Self>) {
        let pool: Weak<Pool> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.sweep(Instant::now());
            }
        });
    }

    fn sweep(&self, now: Instant) {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut removed = 0;
        t.by_key.retain(|_, idle| {
            let before = idle.len();
            idle.retain_mut(|i| !i.conn.is_closed() && now.duration_since(i.since) < IDLE_TIMEOUT);
            removed += before - idle.len();
            !idle.is_empty()
        });
        t.count -= removed;
    }

    /// Idle connections held now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).count
    }

    /// The most recently used idle connection for `key` and `host` of the kind asked
    /// for (`raw`: the edge's own) that is still open.
    fn checkout(&self, key: Key, host: &str, raw: bool) -> Option<Idle> {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let idle = t.by_key.get_mut(&key)?;
        let now = Instant::now();
        let mut taken = None;
        let mut removed = 0;
        // Newest last: search from the end, dropping dead ones on the way.
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let Some(candidate) = idle.get_mut(i) else {
                break;
            };
            if candidate.conn.is_raw() != raw || *candidate.host != *host {
                continue;
            }
            if candidate.conn.is_closed() || now.duration_since(candidate.since) >= IDLE_TIMEOUT {
                idle.swap_remove(i);
                removed += 1;
                continue;
            }
            taken = Some(idle.remove(i));
            removed += 1;
            break;
        }
        if idle.is_empty() {
            t.by_key.remove(&key);
        }
        t.count -= removed;
        taken
    }

    fn checkin(&self, key: Key, mut idle: Idle) {
        idle.since = Instant::now();
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if t.count >= MAX_IDLE {
            return; // dropping the sender closes the connection
        }
        let list = t.by_key.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_KEY {
            return;
        }
        list.push(idle);
        t.count += 1;
    }

    /// Sends `up` (origin-form target, `Host` set) to the origin of `rule` through
    /// `conn`, on an idle connection of its kind when there is one.
    pub(crate) async fn send(
        self: &Arc<Self>,
        conn: &Conn,
        generation: u32,
        rule: u16,
        host: &str,
        up: Up,
    ) -> Result<Response<PooledBody>, SendError> {
        match up {
            Up::Raw(req) => self.send_raw(conn, generation, rule, host, req).await,
            Up::Hyper(req) => self.send_hyper(conn, generation, rule, host, *req).await,
        }
    }

    /// [`Self::send`] on the edge's own connections.
    async fn send_raw(
        self: &Arc<Self>,
        conn: &Conn,
        generation: u32,
        rule: u16,
        host: &str,
        req: Arc<Request<Bytes>>,
    ) -> Result<Response<PooledBody>, SendError> {
        let key = (conn.session.id(), generation, rule);
        let retry = super::forward::idempotent(req.method());
        while let Some(idle) = self.checkout(key, host, true) {
            let IdleConn::Raw(mut c) = idle.conn else {
                continue;
            };
            match exchange(&mut c, &req).await {
                Ok((resp, framing, keep)) => {
                    let back = RawBack {
                        pool: self.clone(),
                        key,
                        host: idle.host,
                    };
                    return Ok(resp.map(|()| PooledBody::Raw(c.body(framing, keep, back))));
                }
                // The origin closed the idle connection as the request went: nothing
                // was answered, and a request that may be sent twice goes on a fresh
                // one (a kept connection that closes unasked is normal, not an error).
                Err(OriginError::Closed { before_any: true } | OriginError::Io(_)) if retry => {}
                Err(e) => return Err(SendError::Origin(e.into())),
            }
        }
        let stream = open_tunnel_stream(conn, generation, rule, StreamKind::Http, host)
            .await
            .map_err(SendError::Dial)?;
        let mut c = RawConn::new(stream);
        let (resp, framing, keep) = exchange(&mut c, &req)
            .await
            .map_err(|e| SendError::Origin(e.into()))?;
        let back = RawBack {
            pool: self.clone(),
            key,
            host: host.into(),
        };
        Ok(resp.map(|()| PooledBody::Raw(c.body(framing, keep, back))))
    }

    /// [`Self::send`] on hyper's connections.
    async fn send_hyper(
        self: &Arc<Self>,
        conn: &Conn,
        generation: u32,
        rule: u16,
        host: &str,
        mut req: Request<Body>,
    ) -> Result<Response<PooledBody>, SendError> {
        let key = (conn.session.id(), generation, rule);
        while let Some(idle) = self.checkout(key, host, false) {
            let IdleConn::Hyper(mut tx) = idle.conn else {
                continue;
            };
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.clone().wrap(resp, key, idle.host, tx)),
                Err(mut e) => match e.take_message() {
                    // The connection closed before the request went out: try another.
                    Some(r) => req = r,
                    None => return Err(SendError::Origin(e.into_error().into())),
                },
            }
        }
        let stream = open_tunnel_stream(conn, generation, rule, StreamKind::Http, host)
            .await
            .map_err(SendError::Dial)?;
        let (mut tx, connection) = self
            .builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Origin(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                log::debug!("origin connection: {e}");
            }
        });
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| SendError::Origin(e.into()))?;
        Ok(self.clone().wrap(resp, key, host.into(), tx))
    }

    fn wrap(
        self: Arc<Self>,
        resp: Response<Incoming>,
        key: Key,
        host: Arc<str>,
        tx: http1::SendRequest<Body>,
    ) -> Response<PooledBody> {
        // A connection that switched protocols carries the upgraded stream now.
        let back = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then_some(Back {
            pool: self,
            key,
            host,
            tx,
        });
        resp.map(|body| PooledBody::Hyper(ReturningBody::new(body, back)))
    }
}

/// One exchange on the edge's own connection: the request written, the response head
/// read.
async fn exchange(
    c: &mut RawConn,
    req: &Request<Bytes>,
) -> Result<(Response<()>, origin::Framing, bool), OriginError> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    c.send(req.method(), target, req.headers(), req.body())
        .await?;
    c.read_head(req.method() == http::Method::HEAD).await
}

/// Where an edge's own connection goes once its response is read.
pub(crate) struct RawBack {
    pool: Arc<Pool>,
    key: Key,
    host: Arc<str>,
}

impl origin::Back for RawBack {
    fn checkin(self, conn: RawConn) {
        self.pool.checkin(
            self.key,
            Idle {
                host: self.host,
                conn: IdleConn::Raw(conn),
                since: Instant::now(),
            },
        );
    }
}

/// Where a connection goes once its response is read.
pub(crate) struct Back {
    pool: Arc<Pool>,
    key: Key,
    host: Arc<str>,
    tx: http1::SendRequest<Body>,
}

impl GiveBack for Back {
    const WAIT: Duration = IDLE_TIMEOUT;

    fn sender(&mut self) -> &mut http1::SendRequest<Body> {
        &mut self.tx
    }

    fn checkin(self) {
        self.pool.checkin(
            self.key,
            Idle {
                host: self.host,
                conn: IdleConn::Hyper(self.tx),
                since: Instant::now(),
            },
        );
    }
}

/// A kept HTTP/1.1 connection's way back to its pool once a response has been read
/// (this pool's origin streams, and the connections to the other edges of a cluster).
pub(crate) trait GiveBack: Send + Sized + Unpin + 'static {
    /// Longest wait for the connection to take in the end of the exchange.
    const WAIT: Duration;
    /// The connection's request sender.
    fn sender(&mut self) -> &mut http1::SendRequest<Body>;
    /// Puts the connection back in its pool.
    fn checkin(self);
}

/// Returns `back`'s connection to its pool now, or once the connection task has taken
/// in the end of the exchange (or the request body has been sent), or never.
fn give<B: GiveBack>(mut back: B) {
    if back.sender().is_ready() {
        back.checkin();
        return;
    }
    tokio::spawn(async move {
        if let Ok(Ok(())) = tokio::time::timeout(B::WAIT, back.sender().ready()).await {
            back.checkin();
        }
    });
}

/// A response body whose connection returns to its pool when the body has been read to
/// its end.
pub(crate) struct ReturningBody<B: GiveBack> {
    body: Incoming,
    back: Option<B>,
}

impl<B: GiveBack> ReturningBody<B> {
    /// `body`, whose connection goes back through `back` (none: it does not).
    pub(crate) fn new(body: Incoming, back: Option<B>) -> Self {
        ReturningBody { body, back }
    }
}

/// A response body from the origin, from either kind of connection.
pub(crate) enum PooledBody {
    Hyper(ReturningBody<Back>),
    Raw(RawBody<RawBack>),
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            PooledBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            PooledBody::Raw(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            PooledBody::Hyper(b) => b.is_end_stream(),
            PooledBody::Raw(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            PooledBody::Hyper(b) => b.size_hint(),
            PooledBody::Raw(b) => b.size_hint(),
        }
    }
}

impl<B: GiveBack> http_body::Body for ReturningBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let me = self.get_mut();
        let frame = ready!(Pin::new(&mut me.body).poll_frame(cx));
        let done = match &frame {
            // The end of a chunked body, or trailers read.
            None => true,
            // The last bytes of a body of known length.
            Some(Ok(_)) => me.body.is_end_stream(),
            Some(Err(_)) => {
                me.back = None;
                false
            }
        };
        if done {
            if let Some(back) = me.back.take() {
                give(back);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl<B: GiveBack> Drop for ReturningBody<B> {
    fn drop(&mut self) {
        // An empty body may never be polled; one dropped before its end leaves the
        // connection mid-response, and it closes with the sender.
        if let Some(back) = self.back.take() {
            if http_body::Body::is_end_stream(&self.body) {
                give(back);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sender() -> http1::SendRequest<Body> {
        let (io, _peer) = tokio::io::duplex(64);
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        tx
    }

    async fn idle(host: &str) -> Idle {
        Idle {
            host: host.into(),
            conn: IdleConn::Hyper(sender().await),
            since: Instant::now(),
        }
    }

    #[tokio::test]
    async fn idle_connections_are_bounded_matched_and_expire() {
        let pool = Pool::default();
        for _ in 0..MAX_IDLE_PER_KEY + 6 {
            pool.checkin((1, 0, 0), idle("a.example").await);
        }
        assert_eq!(pool.idle(), MAX_IDLE_PER_KEY, "capped per key");
        pool.checkin((1, 0, 1), idle("b.example").await);
        assert_eq!(pool.idle(), MAX_IDLE_PER_KEY + 1);

        // Only the same connection, generation, rule and hostname match.
        assert!(pool.checkout((1, 0, 1), "a.example", false).is_none());
        assert!(pool.checkout((2, 0, 1), "b.example", false).is_none());
        assert!(pool.checkout((1, 1, 1), "b.example", false).is_none());
        assert!(pool.checkout((1, 0, 1), "b.example", false).is_some());
        assert!(pool.checkout((1, 0, 1), "b.example", false).is_none());
        assert_eq!(pool.idle(), MAX_IDLE_PER_KEY);

        // A closed connection is never handed out.
        let mut dead = idle("c.example").await;
        dead.conn = IdleConn::Hyper({
            let (io, peer) = tokio::io::duplex(64);
            drop(peer);
            let (mut tx, conn) = http1::Builder::new()
                .handshake::<_, Body>(TokioIo::new(io))
                .await
                .unwrap();
            tokio::spawn(conn);
            // The connection task ends at once; the sender then reports it closed.
            let _ = tx.ready().await;
            tx
        });
        pool.checkin((3, 0, 0), dead);
        assert!(pool.checkout((3, 0, 0), "c.example", false).is_none());

        // Everything idle past the timeout is swept.
        pool.sweep(Instant::now() + IDLE_TIMEOUT);
        assert_eq!(pool.idle(), 0);
    }
}
