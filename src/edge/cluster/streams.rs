//! Keep-alive HTTP/1.1 connections to the other edges, each inside a stream of the
//! peer connection: a forwarded request takes an idle one to its edge, or opens a new
//! stream; the connection goes back to the pool when its response body has been read
//! to the end (one whose response was abandoned, or that switched protocols, is
//! closed). Each request carries its own visitor ([`super::peer::VISITOR_HEADER`]), so
//! a stream serves any visitor's requests one after the other.
//!
//! Why keep them: a new stream costs each edge a task, a stream header and an HTTP
//! connection's set-up; reused, a forwarded request costs the requests themselves.
//! Bounds: at most [`MAX_IDLE_PER_PEER`] idle connections per edge, for at most
//! [`super::peer::MAX_PEERS`] edges, each closed after [`IDLE_TIMEOUT`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::forward::Miss;
use super::peer::{PeerKind, MAX_PEERS};
use crate::edge::body::Body;
use crate::edge::pool::{GiveBack, ReturningBody};
use crate::util::lock;

/// Idle connections to another edge are closed after this long.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often expired idle connections are closed.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// Most idle connections kept to one edge.
pub(crate) const MAX_IDLE_PER_PEER: usize = 64;

struct Idle {
    tx: http1::SendRequest<Body>,
    since: Instant,
}

/// Idle connections by member address (at most [`MAX_PEERS`] members).
#[derive(Default)]
pub(crate) struct PeerPool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl PeerPool {
    /// The newest idle connection to `member`, dropping closed and expired ones.
    fn checkout(&self, member: &str) -> Option<Idle> {
        let mut idle = lock(&self.idle);
        let list = idle.get_mut(member)?;
        let now = Instant::now();
        let mut taken = None;
        while let Some(c) = list.pop() {
            if !c.tx.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT {
                taken = Some(c);
                break;
            }
        }
        if list.is_empty() {
            idle.remove(member);
        }
        taken
    }

    /// Closes the idle connections past [`IDLE_TIMEOUT`] (and drops closed ones), every
    /// [`SWEEP_EVERY`], until the task is dropped.
    pub(crate) async fn sweep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            lock(&self.idle).retain(|_, list| {
                list.retain(|c| !c.tx.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
                !list.is_empty()
            });
        }
    }

    fn checkin(&self, member: &str, mut c: Idle) {
        let now = Instant::now();
        c.since = now;
        let mut idle = lock(&self.idle);
        if !idle.contains_key(member) && idle.len() >= MAX_PEERS {
            return; // dropping the sender ends the stream
        }
        let list = idle.entry(member.to_string()).or_default();
        list.retain(|c| !c.tx.is_closed() && now.duration_since(c.since) < IDLE_TIMEOUT);
        if list.len() < MAX_IDLE_PER_PEER {
            list.push(c);
        }
    }
}

impl super::Cluster {
    /// Sends `req` (origin-form target, `Host` and the visitor header set) to an edge
    /// holding a connection for `host`'s tunnel, on an idle connection to it when
    /// there is one; the response and that edge's member address.
    pub(crate) async fn send_forward(
        &self,
        host: &str,
        mut req: Request<Body>,
    ) -> Result<(Response<PeerBody>, String), Miss> {
        let mut why = String::new();
        for member in self.holders_of(host).await? {
            while let Some(mut idle) = self.pool.checkout(&member) {
                match idle.tx.try_send_request(req).await {
                    Ok(resp) => return Ok((self.wrap(resp, member.clone(), idle), member)),
                    Err(mut e) => match e.take_message() {
                        // The connection closed before the request went out: another.
                        Some(r) => req = r,
                        None => {
                            return Err(Miss::Unreachable(format!(
                                "peer {member}: {}",
                                e.into_error()
                            )))
                        }
                    },
                }
            }
            let stream = match self.open_stream(&member, PeerKind::Http, None).await {
                Ok(s) => s,
                Err(e) => {
                    if !why.is_empty() {
                        why.push_str("; ");
                    }
                    why.push_str(&e);
                    continue;
                }
            };
            let (mut tx, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| Miss::Unreachable(format!("peer {member}: {e}")))?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    log::debug!("cluster: connection to a peer: {e}");
                }
            });
            let resp = tx
                .send_request(req)
                .await
                .map_err(|e| Miss::Unreachable(format!("peer {member}: {e}")))?;
            let idle = Idle {
                tx,
                since: Instant::now(),
            };
            return Ok((self.wrap(resp, member.clone(), idle), member));
        }
        Err(Miss::Unreachable(why))
    }

    fn wrap(&self, resp: Response<Incoming>, member: String, idle: Idle) -> Response<PeerBody> {
        // A connection that switched protocols carries the upgraded stream now.
        let back = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Back {
            pool: self.pool.clone(),
            member,
            idle,
        });
        resp.map(|body| ReturningBody::new(body, back))
    }
}

/// Where a connection goes once its response is read.
pub(crate) struct Back {
    pool: Arc<PeerPool>,
    member: String,
    idle: Idle,
}

impl GiveBack for Back {
    const WAIT: Duration = IDLE_TIMEOUT;

    fn sender(&mut self) -> &mut http1::SendRequest<Body> {
        &mut self.idle.tx
    }

    fn checkin(self) {
        self.pool.checkin(&self.member, self.idle);
    }
}

/// A response body from another edge; its connection returns to the pool when the
/// body has been read to its end.
pub(crate) type PeerBody = ReturningBody<Back>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender on an HTTP/1.1 connection over an in-memory pipe (its other end kept
    /// open by `ends`).
    async fn sender(ends: &mut Vec<tokio::io::DuplexStream>) -> http1::SendRequest<Body> {
        let (a, b) = tokio::io::duplex(64);
        ends.push(b);
        let (tx, conn) = http1::handshake(TokioIo::new(a)).await.unwrap();
        tokio::spawn(conn);
        tx
    }

    #[tokio::test]
    async fn the_pool_keeps_a_bounded_number_of_fresh_open_connections() {
        let pool = PeerPool::default();
        let mut ends = Vec::new();
        for _ in 0..MAX_IDLE_PER_PEER + 5 {
            let tx = sender(&mut ends).await;
            let since = Instant::now();
            pool.checkin("10.0.0.1:7844", Idle { tx, since });
        }
        assert_eq!(lock(&pool.idle)["10.0.0.1:7844"].len(), MAX_IDLE_PER_PEER);
        assert!(pool.checkout("10.0.0.1:7844").is_some());
        assert!(pool.checkout("10.0.0.2:7844").is_none());
        // A connection whose other end went away is not handed out.
        let mut others = Vec::new();
        let tx = sender(&mut others).await;
        pool.checkin(
            "10.0.0.3:7844",
            Idle {
                tx,
                since: Instant::now(),
            },
        );
        drop(others);
        tokio::time::timeout(Duration::from_secs(5), async {
            while lock(&pool.idle)["10.0.0.3:7844"]
                .iter()
                .any(|c| !c.tx.is_closed())
            {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap();
        assert!(pool.checkout("10.0.0.3:7844").is_none());
        // One idle past IDLE_TIMEOUT is not handed out either.
        {
            let mut idle = lock(&pool.idle);
            for c in idle.get_mut("10.0.0.1:7844").unwrap() {
                c.since = Instant::now().checked_sub(IDLE_TIMEOUT).unwrap();
            }
        }
        assert!(pool.checkout("10.0.0.1:7844").is_none());
        assert!(!lock(&pool.idle).contains_key("10.0.0.1:7844"));
    }
}
