//! Visitors reach every device through any edge: where a forwarded request goes
//! ([`Located`], presence cached briefly), and how the edge holding the tunnel serves
//! a request another edge forwarded to it ([`serve_stream`]).
//!
//! The edge the visitor reached does everything that concerns the visitor: TLS, the
//! client address, the shield's limits, rate limits and access policies; then, holding
//! no connection for the hostname's tunnel, it sends the request as HTTP/1.1 (`proxy`)
//! to an edge that does, on a connection kept in a peer stream (`streams`,
//! [`super::peer`]), with the visitor as it saw them in a [`VISITOR_HEADER`], and relays
//! the answer. An access stream gets a stream of its own, its client in the stream's
//! [`PeerHeader`]. The receiving edge believes the visitor because the stream comes
//! from a peer that proved the cluster secret; it routes the request to its own
//! connections only: a forwarded request is never forwarded again, and one whose
//! tunnel is not held there ends in a 502 that says so.
//!
//! Presence is read from Redis at most once per [`CACHE_FOR`] per hostname (hits and
//! misses alike), so forwarding costs no Redis round trip per request; with Redis
//! unreachable the last entry read is used, however old (up to [`MAX_CACHED`] entries).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;

pub(crate) use super::peer::VISITOR_HEADER;
use super::peer::{PeerHeader, PeerKind, PeerVisitor, MAX_HEADER};
use crate::edge::flood::{log_limited, LogLimit};
use crate::edge::forward::{self, Visitor};
use crate::edge::{proxy, EdgeState};
use crate::transport::TunnelStream;
use crate::util::lock;
use crate::wire::{self, AccessError, AccessReply};

/// How long a presence look-up is used before Redis is asked again.
pub(crate) const CACHE_FOR: Duration = Duration::from_secs(1);
/// Most hostnames whose presence is cached.
pub(crate) const MAX_CACHED: usize = 4096;
/// Most edges tried for one request (the others are left to the next request).
const MAX_TRIED: usize = 2;

/// Longest wait for a presence look-up with nothing known of the hostname.
const LOOKUP_WAIT: Duration = Duration::from_secs(2);
/// Longest wait for a presence look-up when an older answer is at hand.
const STALE_WAIT: Duration = Duration::from_millis(250);

static REFUSED_LOG: LogLimit = LogLimit::new(10, Duration::from_secs(60));
static STALE_LOG: LogLimit = LogLimit::new(5, Duration::from_secs(60));

/// Why a request cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Miss {
    /// No tunnel serves the hostname anywhere in the cluster.
    Unknown,
    /// A tunnel serves it, but no other edge holds a connection for it now.
    Offline,
    /// Every edge holding it failed to answer: why, for the log.
    Unreachable(String),
    /// Redis cannot be asked and nothing was learnt before: why, for the log.
    NoPresence(String),
}

/// What presence said about one hostname, and when.
struct Entry {
    /// The tunnel and the members holding it; `None`: no tunnel claims the hostname.
    found: Option<([u8; 16], Vec<String>)>,
    at: Instant,
}

/// The presence of hostnames, cached for [`CACHE_FOR`], at most [`MAX_CACHED`].
#[derive(Default)]
pub(crate) struct Located {
    entries: Mutex<HashMap<String, Entry>>,
    /// Turns which holder a request goes to first.
    turn: AtomicUsize,
    /// When a look-up last failed (Redis unreachable).
    failed_at: Mutex<Option<Instant>>,
}

/// How long after a failed look-up a miss from Redis does not overrule the holders
/// last read: a Redis back from an outage longer than the presence TTL holds no
/// entries until each edge writes its own again (within
/// [`super::presence::RETRY_WHILE_FAILING`] and a reconnection), and visitors of
/// devices that never went away must not get a 404 or 502 meanwhile. A device that
/// did go away costs a hop to its old edge, which answers 502.
pub(crate) const AFTER_OUTAGE: Duration = Duration::from_secs(5);

impl Located {
    /// The cached entry of `host` if fresh.
    fn fresh(&self, host: &str, now: Instant) -> Option<Option<([u8; 16], Vec<String>)>> {
        let entries = lock(&self.entries);
        let e = entries.get(host)?;
        (now.duration_since(e.at) < CACHE_FOR).then(|| e.found.clone())
    }

    /// The cached entry of `host`, however old (Redis unreachable).
    fn last_known(&self, host: &str) -> Option<Option<([u8; 16], Vec<String>)>> {
        lock(&self.entries).get(host).map(|e| e.found.clone())
    }

    /// A look-up failed at `now`.
    fn failed(&self, now: Instant) {
        *lock(&self.failed_at) = Some(now);
    }

    /// What Redis `answered` for a hostname last read as `last`: `last` instead when
    /// the answer names no holder but `me` while `last` named others, within
    /// [`AFTER_OUTAGE`] of a failed look-up.
    fn settle(
        &self,
        answered: Option<([u8; 16], Vec<String>)>,
        last: Option<Option<([u8; 16], Vec<String>)>>,
        me: &str,
        now: Instant,
    ) -> Option<([u8; 16], Vec<String>)> {
        let others = |f: &Option<([u8; 16], Vec<String>)>| {
            f.as_ref().is_some_and(|(_, m)| m.iter().any(|m| m != me))
        };
        let recovering =
            (*lock(&self.failed_at)).is_some_and(|t| now.duration_since(t) < AFTER_OUTAGE);
        match last {
            Some(last) if recovering && !others(&answered) && others(&last) => last,
            _ => answered,
        }
    }

    /// Keeps what presence said about `host`; a full cache first drops entries past
    /// [`CACHE_FOR`], then (all fresh: a flood of hostnames) any one.
    fn keep(&self, host: &str, found: Option<([u8; 16], Vec<String>)>, now: Instant) {
        let mut entries = lock(&self.entries);
        if entries.len() >= MAX_CACHED && !entries.contains_key(host) {
            entries.retain(|_, e| now.duration_since(e.at) < CACHE_FOR);
            if entries.len() >= MAX_CACHED {
                if let Some(k) = entries.keys().next().cloned() {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(host.to_string(), Entry { found, at: now });
    }

    /// The members other than `me` holding `host`'s tunnel, first the one whose turn
    /// it is; `Err` as [`Miss`].
    pub(crate) fn holders(
        &self,
        found: Option<([u8; 16], Vec<String>)>,
        me: &str,
    ) -> Result<Vec<String>, Miss> {
        let Some((_, members)) = found else {
            return Err(Miss::Unknown);
        };
        let mut others: Vec<String> = members.into_iter().filter(|m| m != me).collect();
        if others.is_empty() {
            return Err(Miss::Offline);
        }
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) % others.len();
        others.rotate_left(turn);
        others.truncate(MAX_TRIED);
        Ok(others)
    }
}

impl super::Cluster {
    /// The edges other than this one holding a connection for `host`'s tunnel, by
    /// presence (cached, or the last read when Redis does not answer).
    pub(crate) async fn holders_of(&self, host: &str) -> Result<Vec<String>, Miss> {
        let Some(presence) = self.presence.get() else {
            return Err(Miss::Unknown);
        };
        let now = Instant::now();
        let found = match self.located.fresh(host, now) {
            Some(found) => found,
            None => {
                let last = self.located.last_known(host);
                // With an answer in hand, a slow Redis is not waited for long.
                let wait = if last.is_some() {
                    STALE_WAIT
                } else {
                    LOOKUP_WAIT
                };
                let looked = match tokio::time::timeout(wait, presence.locate(host)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no answer within {wait:?}")),
                };
                if looked.is_err() {
                    self.located.failed(now);
                }
                match (looked, last) {
                    (Ok(answered), last) => {
                        let found = self.located.settle(answered, last, self.member(), now);
                        self.located.keep(host, found.clone(), now);
                        found
                    }
                    (Err(e), Some(found)) => {
                        log_limited!(
                            STALE_LOG,
                            Warn,
                            "cluster: presence of {host} not read from redis {} ({e}): \
                             forwarding by the last read",
                            self.redis.shown()
                        );
                        // Not asked again for CACHE_FOR: each request would wait.
                        self.located.keep(host, found.clone(), now);
                        found
                    }
                    (Err(e), None) => {
                        return Err(Miss::NoPresence(format!(
                            "redis {}: {e}",
                            self.redis.shown()
                        )))
                    }
                }
            }
        };
        self.located.holders(found, self.member())
    }

    /// A new stream to `member`, started with a header of `kind` (and `visitor`).
    pub(crate) async fn open_stream(
        &self,
        member: &str,
        kind: PeerKind,
        visitor: Option<PeerVisitor>,
    ) -> Result<TunnelStream, String> {
        let Some(peers) = self.peers.get() else {
            return Err("this edge does not serve its peers yet".into());
        };
        let mut stream = peers.open(member).await?;
        let header = PeerHeader {
            version: super::peer::VERSION,
            kind,
            hops: 1,
            from: self.member().to_string(),
            visitor,
        }
        .encode()?;
        stream
            .write_all(&header)
            .await
            .map_err(|e| format!("peer {member}: {e}"))?;
        Ok(stream)
    }

    /// An access stream (SSH, TCP) to `host`'s stream rule at an edge holding its
    /// tunnel, for `client`, whose access policy this edge checked.
    pub(crate) async fn open_raw_forward(
        &self,
        host: &str,
        client: SocketAddr,
    ) -> Result<TunnelStream, (AccessError, String)> {
        let members = self.holders_of(host).await.map_err(|miss| match miss {
            Miss::Unknown => (
                AccessError::NoTunnel,
                format!("no tunnel serves {host} on this edge"),
            ),
            Miss::Offline => (
                AccessError::Unavailable,
                format!("the tunnel for {host} is offline"),
            ),
            Miss::Unreachable(why) | Miss::NoPresence(why) => {
                log::info!("access to {host} from {client}: {why}");
                (
                    AccessError::Unavailable,
                    format!("which edge serves {host} cannot be told now; try again shortly"),
                )
            }
        })?;
        let visitor = PeerVisitor {
            host: host.to_string(),
            authority: host.to_string(),
            peer: client,
            client_ip: client.ip(),
            forwarded_for: String::new(),
            https: false,
            trusted: false,
        };
        let mut why = String::new();
        for member in members {
            let opened = self
                .open_stream(&member, PeerKind::Raw, Some(visitor.clone()))
                .await;
            let mut stream = match opened {
                Ok(s) => s,
                Err(e) => {
                    why = e;
                    continue;
                }
            };
            let reply =
                tokio::time::timeout(RAW_REPLY_TIMEOUT, wire::read_stream_frame(&mut stream))
                    .await
                    .map_err(|_| format!("no answer within {RAW_REPLY_TIMEOUT:?}"))
                    .and_then(|r| r.map_err(|e| e.to_string()));
            match reply {
                Ok(AccessReply::Ok) => return Ok(stream),
                Ok(AccessReply::Err { error, message }) => return Err((error, message)),
                Err(e) => why = format!("peer {member}: {e}"),
            }
        }
        log::info!("access to {host} from {client}: no edge holding its tunnel answers: {why}");
        Err((
            AccessError::Unavailable,
            format!("the edge holding {host} is unreachable; try again shortly"),
        ))
    }
}

/// The [`VISITOR_HEADER`] of a request for `host` (`authority`) that `v` sent here.
pub(crate) fn visitor_header(
    host: &str,
    authority: &str,
    v: &Visitor,
) -> Result<HeaderValue, String> {
    PeerVisitor {
        host: host.to_string(),
        authority: authority.to_string(),
        peer: v.peer,
        client_ip: v.client_ip,
        forwarded_for: v.forwarded_for.to_str().map_or_else(
            |_| {
                forward::ip_header(v.peer.ip())
                    .to_str()
                    .unwrap_or_default()
                    .to_string()
            },
            str::to_string,
        ),
        https: v.scheme == "https",
        trusted: v.trusted,
    }
    .to_header()
}

/// Longest wait for the edge holding a tunnel to open an access stream to the device
/// (the device's own dial is bounded by 30 s there).
const RAW_REPLY_TIMEOUT: Duration = Duration::from_secs(35);

/// Serves an access stream another edge forwarded: a raw stream to the hostname's
/// stream rule on this edge's own connections (never forwarded again), the answer,
/// then the bytes both ways until either side ends.
async fn serve_raw(state: &EdgeState, h: &PeerHeader, mut stream: TunnelStream, from: SocketAddr) {
    let Some(v) = &h.visitor else {
        log::debug!("cluster: access stream from peer {from} without its client");
        return;
    };
    let opened = crate::edge::access::open_raw(state, &v.host, None).await;
    let reply = match &opened {
        Ok(_) => AccessReply::Ok,
        Err((error, message)) => AccessReply::Err {
            error: *error,
            message: match error {
                AccessError::NoTunnel | AccessError::Unavailable => format!(
                    "{message} (at edge {}, which forwards access streams no further)",
                    h.from
                ),
                _ => message.clone(),
            },
        },
    };
    let Ok(frame) = wire::encode_stream_frame(&reply) else {
        return;
    };
    if stream.write_all(&frame).await.is_err() {
        return;
    }
    let Ok(mut tunnel) = opened else {
        let _ = stream.shutdown().await;
        return;
    };
    log::info!(
        "cluster: access stream to {} for {} from peer {from} ({})",
        v.host,
        v.client_ip,
        h.from
    );
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut *tunnel).await;
}

/// Serves one stream a proven peer opened: its header, then HTTP/1.1 requests, each
/// routed to this edge's own connections ([`proxy::handle`], never forwarded again),
/// or an access stream ([`serve_raw`]).
pub(crate) async fn serve_stream(
    state: Arc<EdgeState>,
    mut stream: TunnelStream,
    from: SocketAddr,
) {
    let header = match PeerHeader::read(&mut stream).await {
        Ok(h) => h,
        Err(why) => {
            log_limited!(
                REFUSED_LOG,
                Warn,
                "cluster: stream from peer {from} refused: {why}"
            );
            let _ = stream.write_all(&refusal(&why)).await;
            let _ = stream.shutdown().await;
            return;
        }
    };
    if header.kind == PeerKind::Raw {
        return serve_raw(&state, &header, stream, from).await;
    }
    let from_member: Arc<str> = header.from.into();
    let limits = state.shield.limits.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let from_member = from_member.clone();
        async move { Ok::<_, Infallible>(serve_forwarded(&state, &from_member, req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // The forwarding edge sends its next requests to this edge on the stream, and
        // ends it when it no longer needs it.
        .keep_alive(true)
        .header_read_timeout(limits.request_head_timeout)
        // One more header than a visitor may send: the visitor's.
        .max_headers(limits.max_headers.saturating_add(1))
        .max_buf_size(
            limits
                .max_head_bytes
                .max(8192)
                .saturating_add(2 * MAX_HEADER),
        )
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = served.await {
        log::debug!("cluster: forwarded request from peer {from}: {e}");
    }
}

/// A forwarded request, with the visitor as the first edge saw it (its
/// [`VISITOR_HEADER`], removed here).
async fn serve_forwarded(
    state: &EdgeState,
    from: &str,
    mut req: Request<Incoming>,
) -> http::Response<crate::edge::body::Body> {
    let visitor = req
        .headers_mut()
        .remove(VISITOR_HEADER)
        .ok_or_else(|| "no visitor".to_string())
        .and_then(|v| PeerVisitor::from_header(&v));
    let h = match visitor {
        Ok(h) => h,
        Err(why) => {
            log_limited!(
                REFUSED_LOG,
                Warn,
                "cluster: request from peer {from} refused: {why}"
            );
            return crate::edge::body::text(
                http::StatusCode::BAD_REQUEST,
                format!("the edge holding the tunnel refused the request: {why}"),
            );
        }
    };
    let peer_ip = forward::ip_header(h.peer.ip());
    let forwarded_for = HeaderValue::from_str(&h.forwarded_for).unwrap_or_else(|_| peer_ip.clone());
    let visitor = Visitor {
        peer: h.peer,
        peer_ip,
        client_ip: h.client_ip,
        forwarded_for,
        scheme: if h.https { "https" } else { "http" },
        trusted: h.trusted,
    };
    let cx = proxy::Ctx {
        registry: &state.registry,
        pool: &state.pool,
        shield: &state.shield,
        metrics: &state.metrics,
        origin_timeout: state.origin_timeout,
        visitor: &visitor,
        host: &h.host,
        authority: &h.authority,
        cluster: None,
        from_peer: Some(from),
    };
    proxy::handle(&cx, req).await
}

/// A 502 written as raw HTTP/1.1 on a stream whose header was refused: the first
/// edge shows it to the visitor.
fn refusal(why: &str) -> Vec<u8> {
    let body = format!("502 Bad Gateway\nthe edge holding the tunnel refused the request: {why}\n");
    format!(
        "HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(members: &[&str]) -> Option<([u8; 16], Vec<String>)> {
        Some(([7; 16], members.iter().map(|m| m.to_string()).collect()))
    }

    #[test]
    fn holders_leave_out_this_edge_and_take_turns() {
        let l = Located::default();
        assert_eq!(l.holders(None, "a:1"), Err(Miss::Unknown));
        assert_eq!(l.holders(found(&["a:1"]), "a:1"), Err(Miss::Offline));
        assert_eq!(l.holders(found(&[]), "a:1"), Err(Miss::Offline));
        let first = l.holders(found(&["a:1", "b:1", "c:1"]), "a:1").unwrap();
        let second = l.holders(found(&["a:1", "b:1", "c:1"]), "a:1").unwrap();
        assert_eq!(first.len(), 2);
        assert_ne!(first.first(), second.first(), "turns spread the requests");
        assert!(!first.contains(&"a:1".to_string()));
    }

    #[test]
    fn the_cache_is_fresh_for_a_while_kept_when_stale_and_bounded() {
        let l = Located::default();
        let t0 = Instant::now();
        l.keep("h.example", found(&["b:1"]), t0);
        assert_eq!(l.fresh("h.example", t0), Some(found(&["b:1"])));
        let later = t0 + CACHE_FOR;
        assert_eq!(
            l.fresh("h.example", later),
            None,
            "asked again after CACHE_FOR"
        );
        assert_eq!(l.last_known("h.example"), Some(found(&["b:1"])));
        l.keep("gone.example", None, t0);
        assert_eq!(
            l.fresh("gone.example", t0),
            Some(None),
            "misses are cached too"
        );
        for i in 0..MAX_CACHED + 10 {
            l.keep(&format!("flood-{i}.example"), None, later);
        }
        assert!(lock(&l.entries).len() <= MAX_CACHED);
    }

    #[test]
    fn a_miss_just_after_an_outage_keeps_the_holders_last_read() {
        let l = Located::default();
        let t0 = Instant::now();
        let last = Some(found(&["b:1"]));
        // No outage: Redis's answer stands.
        assert_eq!(l.settle(None, last.clone(), "a:1", t0), None);
        l.failed(t0);
        // Just after one: a miss, or only this edge, does not overrule the last read...
        assert_eq!(l.settle(None, last.clone(), "a:1", t0), found(&["b:1"]));
        assert_eq!(
            l.settle(found(&["a:1"]), last.clone(), "a:1", t0),
            found(&["b:1"])
        );
        // ...an answer naming other holders does, and so does any answer later.
        assert_eq!(
            l.settle(found(&["c:1"]), last.clone(), "a:1", t0),
            found(&["c:1"])
        );
        assert_eq!(l.settle(None, last.clone(), "a:1", t0 + AFTER_OUTAGE), None);
        // Nothing read before: nothing to keep.
        assert_eq!(l.settle(None, None, "a:1", t0), None);
        assert_eq!(l.settle(None, Some(None), "a:1", t0), None);
    }

    #[test]
    fn a_refusal_is_a_complete_response() {
        let r = String::from_utf8(refusal("peer protocol version 9")).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 502 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(body.contains("peer protocol version 9"));
    }
}
