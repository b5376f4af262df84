//! An admitted access stream: bytes copied both ways and counted (for its log line
//! and its tunnel's metrics), the client checked again at each reload of the policy
//! (and cut when no longer admitted), and one log line when it ends. Deciding
//! admission is not this module's job.

use std::net::{IpAddr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::edge::live::Live;
use crate::edge::metrics::{CountedIo, Kind, TunnelStats};
use crate::edge::policy::{Denied, HostKind, Identity};
use crate::edge::EdgeState;
use crate::transport::TunnelStream;
use crate::wire::AccessCredential;

/// What one access line says.
pub(super) struct AccessLog {
    identity: Identity,
    host: String,
    peer: SocketAddr,
    /// The client's address policies see (the peer, or behind a trusted proxy the
    /// address it forwarded for).
    pub(super) client_ip: IpAddr,
    via: String,
    started_unix: u64,
    started: Instant,
}

impl AccessLog {
    pub(super) fn new(identity: Identity, host: &str, peer: SocketAddr, via: &str) -> AccessLog {
        AccessLog {
            identity,
            host: host.to_string(),
            peer,
            client_ip: peer.ip(),
            via: via.to_string(),
            started_unix: crate::edge::token::now_unix(),
            started: Instant::now(),
        }
    }
}

/// A raw tunnel stream with the counters of its tunnel: what [`pipe`] carries is
/// counted there. Used as the stream itself (it dereferences to it).
pub(crate) struct RawStream {
    stream: TunnelStream,
    stats: Arc<TunnelStats>,
}

impl RawStream {
    /// Counts the stream as opened to the tunnel of `stats`.
    pub(crate) fn new(stream: TunnelStream, stats: Arc<TunnelStats>) -> RawStream {
        stats.stream_opened();
        RawStream { stream, stats }
    }
}

impl Deref for RawStream {
    type Target = TunnelStream;
    fn deref(&self) -> &TunnelStream {
        &self.stream
    }
}

impl DerefMut for RawStream {
    fn deref_mut(&mut self) -> &mut TunnelStream {
        &mut self.stream
    }
}

/// What it takes to check an admitted client again when a reload changes the policy.
pub(super) struct Recheck {
    credential: AccessCredential,
    /// When the client was admitted (Unix seconds): a token that expires during a
    /// session does not end it.
    admitted_unix: u64,
    live: watch::Receiver<Arc<Live>>,
}

impl Recheck {
    pub(super) fn new(state: &EdgeState, credential: AccessCredential) -> Recheck {
        // Made before admission reads the policy, so a reload in between is not
        // missed (at worst the same policy is checked twice).
        Recheck {
            credential,
            admitted_unix: crate::edge::token::now_unix(),
            live: state.live.subscribe(),
        }
    }

    /// Resolves with the reason once a reload no longer admits the client.
    async fn revoked(&mut self, host: &str, ip: IpAddr) -> String {
        while self.live.changed().await.is_ok() {
            let live = self.live.borrow_and_update().clone();
            let check = live.policy.check(
                host,
                HostKind::Stream,
                ip,
                &self.credential,
                &live.verify_keys,
                self.admitted_unix,
            );
            if let Err(Denied { message, .. }) = check {
                return message;
            }
        }
        // The edge is going away; its shutdown ends the stream.
        std::future::pending().await
    }
}

/// Copies bytes both ways until both sides are done, or until a reload of the policy
/// no longer admits the client (`recheck`), then logs the access line.
pub(super) async fn pipe<C>(
    client: C,
    tunnel: RawStream,
    log: AccessLog,
    permit: OwnedSemaphorePermit,
    mut recheck: Option<Recheck>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let _permit = permit;
    let RawStream { mut stream, stats } = tunnel;
    let mut client = CountedIo::new(client, stats, Kind::Stream);
    let ip = log.client_ip;
    let result = {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut stream);
        let revoked = async {
            match &mut recheck {
                Some(r) => r.revoked(&log.host, ip).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = copy => r.map_err(|e| format!("ended: {e}")),
            why = revoked => Err(format!("cut: no longer admitted after a reload of edge.yml or a revocation: {why}")),
        }
    };
    let end = match result {
        Ok(_) => {
            // Both directions are done; a WebSocket client's transport closes cleanly now.
            let _ = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
            "closed".to_string()
        }
        Err(why) => {
            stream.abort();
            let _ = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
            why
        }
    };
    log::info!(
        "access: {} ({}) {} from {} over {}: started {}, {:.1}s, {} B up, {} B down, {end}",
        log.identity.who,
        log.identity.how,
        log.host,
        log.peer,
        log.via,
        log.started_unix,
        log.started.elapsed().as_secs_f64(),
        client.read,
        client.written,
    );
}
