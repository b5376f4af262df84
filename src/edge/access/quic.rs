//! Access clients over QUIC (ALPN `mailslot-access` on the tunnel port): caps per
//! address and in total, one access per stream, and the close of an idle client.
//! Admission is `admit.rs`'s; this module only carries the QUIC side.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::admit::{
    admit, normalize_host, ACCESS_FIRST_TIMEOUT, ACCESS_IDLE_TIMEOUT, MAX_ACCESS_CONNS,
    MAX_ACCESS_CONNS_PER_ADDR, MAX_STREAMS_PER_CLIENT, REQUEST_TIMEOUT,
};
use super::pipe::{pipe, AccessLog, Recheck};
use crate::edge::flood::{log_limited, LogLimit};
use crate::edge::EdgeState;
use crate::transport::{RecvHalf, SendHalf, TunnelStream};
use crate::wire::{self, AccessError, AccessReply, AccessRequest};

/// Admitted streams of one access client connection, and since when it has had none.
struct ClientActivity {
    admitted: std::sync::atomic::AtomicUsize,
    /// Whether a stream was ever admitted.
    ever: std::sync::atomic::AtomicBool,
    since: std::sync::Mutex<std::time::Instant>,
}

impl ClientActivity {
    fn new() -> Arc<ClientActivity> {
        Arc::new(ClientActivity {
            admitted: 0.into(),
            ever: false.into(),
            since: std::sync::Mutex::new(std::time::Instant::now()),
        })
    }

    fn since(&self) -> std::sync::MutexGuard<'_, std::time::Instant> {
        self.since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts an admitted stream until the guard drops.
    fn admitted(self: &Arc<Self>) -> AdmittedStream {
        self.admitted
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.ever.store(true, std::sync::atomic::Ordering::Release);
        AdmittedStream(self.clone())
    }

    /// Resolves once the connection has had no admitted stream for `first` after its
    /// start, or for `idle` after its last one ended.
    async fn idle(&self, first: Duration, idle: Duration) {
        loop {
            let limit = if self.ever.load(std::sync::atomic::Ordering::Acquire) {
                idle
            } else {
                first
            };
            let wait = if self.admitted.load(std::sync::atomic::Ordering::Acquire) > 0 {
                limit
            } else {
                let idle = self.since().elapsed();
                if idle >= limit {
                    return;
                }
                limit - idle
            };
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }
}

/// An admitted access stream of a [`ClientActivity`].
struct AdmittedStream(Arc<ClientActivity>);

impl Drop for AdmittedStream {
    fn drop(&mut self) {
        *self.0.since() = std::time::Instant::now();
        self.0
            .admitted
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Did this QUIC connection negotiate the access ALPN?
pub(crate) fn is_access_connection(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol)
        .is_some_and(|p| p == wire::ACCESS_ALPN)
}

/// Serves one access client's QUIC connection: each stream it opens is one access.
pub(crate) async fn serve_quic(conn: quinn::Connection, state: Arc<EdgeState>) {
    let peer = conn.remote_address();
    let Some(_addr_slot) = state.access.per_addr.admit(peer.ip()) else {
        log_limited!(
            ACCESS_LOG,
            Warn,
            "access client {peer} refused: {MAX_ACCESS_CONNS_PER_ADDR} clients connected from its address"
        );
        conn.close(
            1u32.into(),
            b"edge busy: too many access clients from this address",
        );
        return;
    };
    let Ok(_conn_permit) = state.access.conns.clone().try_acquire_owned() else {
        log_limited!(
            ACCESS_LOG,
            Warn,
            "access client {peer} refused: {MAX_ACCESS_CONNS} clients connected"
        );
        conn.close(1u32.into(), b"edge busy: too many access clients");
        return;
    };
    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(MAX_STREAMS_PER_CLIENT));
    log::debug!("access client {peer} connected");
    let activity = ClientActivity::new();
    loop {
        let accepted = tokio::select! {
            s = conn.accept_bi() => s,
            () = activity.idle(ACCESS_FIRST_TIMEOUT, ACCESS_IDLE_TIMEOUT) => {
                log::debug!("access client {peer}: idle, closed");
                conn.close(0u32.into(), b"idle: no access stream");
                return;
            }
        };
        let (send, recv) = match accepted {
            Ok(s) => s,
            Err(e) => {
                log::debug!(
                    "access client {peer} gone: {}",
                    crate::transport::quic::describe_close(&e)
                );
                return;
            }
        };
        let stream = TunnelStream {
            send: SendHalf::Quic(send),
            recv: RecvHalf::Quic(recv),
        };
        tokio::spawn(serve_quic_stream(
            stream,
            peer,
            state.clone(),
            activity.clone(),
        ));
    }
}

/// Refusals of access clients are logged at most this often.
static ACCESS_LOG: LogLimit = LogLimit::new(10, Duration::from_secs(10));

async fn serve_quic_stream(
    mut client: TunnelStream,
    peer: SocketAddr,
    state: Arc<EdgeState>,
    activity: Arc<ClientActivity>,
) {
    let req = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        wire::read_access_frame::<_, AccessRequest>(&mut client),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            log::debug!("access client {peer}: bad request: {e}");
            client.abort();
            return;
        }
        Err(_) => {
            log::debug!("access client {peer}: no request within {REQUEST_TIMEOUT:?}");
            client.abort();
            return;
        }
    };
    let host = normalize_host(&req.hostname);
    let (host, bad_host) = match host {
        Ok(h) => (h, None),
        Err(e) => (String::new(), Some(e)),
    };
    // Watching for reloads from before admission, so none is missed in between.
    let recheck = Recheck::new(&state, req.credential.clone());
    let admitted = if let Some(e) = bad_host {
        Err(e)
    } else if req.version != wire::PROTOCOL_VERSION {
        Err((
            AccessError::BadRequest,
            format!(
                "this edge speaks access protocol {}, the client {}: update the older one",
                wire::PROTOCOL_VERSION,
                req.version
            ),
        ))
    } else {
        admit(&state, &host, peer.ip(), &req.credential).await
    };
    let reply = match &admitted {
        Ok(_) => AccessReply::Ok,
        Err((error, message)) => {
            log::info!("access denied: {host} from {peer} over quic: {message}");
            AccessReply::Err {
                error: *error,
                message: wire::bounded_reason(message.clone()),
            }
        }
    };
    let sent = match wire::encode_access_frame(&reply) {
        Ok(frame) => client.write_all(&frame).await.is_ok(),
        Err(_) => false,
    };
    match admitted {
        Ok((identity, tunnel, permit)) if sent => {
            let _admitted = activity.admitted();
            let log = AccessLog::new(identity, &host, peer, "quic");
            pipe(client, tunnel, log, permit, Some(recheck)).await;
        }
        Ok((_, mut tunnel, _)) => tunnel.abort(),
        Err(_) => {
            let _ = client.shutdown().await;
        }
    }
}
