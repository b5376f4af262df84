//! The caps on access streams and clients, and the one way in every access path
//! shares: check the policy in force, take a stream permit, then open a raw tunnel
//! stream to the hostname's stream rule (trying other connections of the tunnel).
//! Carrying the bytes is `pipe.rs`'s job.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::pipe::RawStream;
use crate::edge::policy::{Denied, HostKind, Identity};
use crate::edge::registry::Route;
use crate::edge::stream::{self, DialError};
use crate::edge::EdgeState;
use crate::wire::{self, AccessCredential, AccessError, StreamKind};

/// Access streams open at once on this edge (all clients and TCP ports together).
pub(crate) const MAX_ACCESS_STREAMS: usize = 4096;
/// Access client connections (QUIC) at once.
pub(crate) const MAX_ACCESS_CONNS: usize = 1024;
/// Concurrent streams one access client connection may open.
pub(crate) const MAX_STREAMS_PER_CLIENT: u32 = 64;
/// Access client connections (QUIC) at once from one address (IPv6: one /64).
pub(crate) const MAX_ACCESS_CONNS_PER_ADDR: usize = 32;
/// Time a client has to send its access request.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time from an access client's handshake to its first admitted stream (a client
/// opens its stream at once).
pub(crate) const ACCESS_FIRST_TIMEOUT: Duration = REQUEST_TIMEOUT;
/// Longest time an access client connection stays open without an admitted stream
/// after its last one ended. The client dials again when it needs the connection.
pub(crate) const ACCESS_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts on distinct tunnel connections before giving up.
const MAX_ATTEMPTS: usize = 3;

/// The edge's access caps (the policy in force is in `EdgeState::live`).
pub struct AccessState {
    streams: Arc<Semaphore>,
    pub(super) conns: Arc<Semaphore>,
    pub(super) per_addr: Arc<crate::edge::flood::PerAddr>,
}

impl Default for AccessState {
    fn default() -> Self {
        AccessState {
            streams: Arc::new(Semaphore::new(MAX_ACCESS_STREAMS)),
            conns: Arc::new(Semaphore::new(MAX_ACCESS_CONNS)),
            per_addr: crate::edge::flood::PerAddr::new(MAX_ACCESS_CONNS_PER_ADDR, MAX_ACCESS_CONNS),
        }
    }
}

impl AccessState {
    pub(super) fn stream_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().ok()
    }
}

/// The hostname an access client asked for, in canonical form (see [`crate::hostname`]).
pub(super) fn normalize_host(h: &str) -> Result<String, (AccessError, String)> {
    crate::hostname::canonical(h.trim())
        .map(|h| h.into_owned())
        .map_err(|e| {
            (
                AccessError::BadRequest,
                format!("{h:?} is not a hostname: {e}"),
            )
        })
}

pub(super) type Admitted = (Identity, RawStream, OwnedSemaphorePermit);

/// Checks the policy, then opens a raw stream to the hostname's stream rule.
pub(super) async fn admit(
    state: &EdgeState,
    host: &str,
    ip: IpAddr,
    cred: &AccessCredential,
) -> Result<Admitted, (AccessError, String)> {
    let live = state.live();
    let identity = live
        .policy
        .check(
            host,
            HostKind::Stream,
            ip,
            cred,
            &live.verify_keys,
            crate::edge::token::now_unix(),
        )
        .map_err(|Denied { error, message }| (error, message))?;
    let permit = state.access.stream_permit().ok_or((
        AccessError::Unavailable,
        "the edge is at its access stream limit; try again shortly".to_string(),
    ))?;
    let tunnel = open_raw(state, host, Some(SocketAddr::new(ip, 0))).await?;
    Ok((identity, tunnel, permit))
}

/// Opens a raw tunnel stream to `host`'s stream rule, trying other connections of the
/// tunnel when one fails. The stream carries its tunnel's counters.
///
/// `client`: the access client, when the stream may go to another edge of the cluster
/// (this edge holding no live connection for the tunnel); `None` for a stream another
/// edge forwarded here, which is never forwarded again.
pub(crate) async fn open_raw(
    state: &EdgeState,
    host: &str,
    client: Option<SocketAddr>,
) -> Result<RawStream, (AccessError, String)> {
    let mut tried: Vec<usize> = Vec::new();
    loop {
        let route = state.registry.route_excluding(host, "/", &tried);
        if let (Route::NoTunnel | Route::Offline, true) = (&route, tried.is_empty()) {
            if let (Some(client), Some(cluster)) = (client, state.cluster.get()) {
                let stream = cluster.open_raw_forward(host, client).await?;
                return Ok(RawStream::new(stream, state.metrics.none().clone()));
            }
        }
        let (conn, rules, rule) = match route {
            Route::NoTunnel => {
                return Err((
                    AccessError::NoTunnel,
                    format!("no tunnel serves {host} on this edge"),
                ))
            }
            Route::Offline => {
                return Err((
                    AccessError::Unavailable,
                    format!("the tunnel for {host} is offline"),
                ))
            }
            Route::Rule {
                conn, rules, rule, ..
            } => (conn, rules, rule),
        };
        match rules.rules.get(usize::from(rule)).map(|r| r.action) {
            Some(wire::RuleAction::Stream) => {}
            _ => {
                return Err((
                    AccessError::NotStream,
                    format!("{host} is not a TCP service (its ingress rule is not tcp://, ssh://, rdp:// or tcp+unix:)"),
                ))
            }
        }
        tried.push(conn.session.id());
        match stream::open_tunnel_stream(&conn, rules.generation, rule, StreamKind::Raw, host).await
        {
            Ok(s) => return Ok(RawStream::new(s, state.metrics.tunnel(&conn.tunnel_name))),
            Err(DialError::Device { message, .. }) => {
                return Err((
                    AccessError::Unavailable,
                    format!("the device could not reach the service: {message}"),
                ))
            }
            Err(e) if tried.len() < MAX_ATTEMPTS => {
                log::info!("{host}: {e}; trying another tunnel connection");
            }
            Err(e) => return Err((AccessError::Unavailable, e.to_string())),
        }
    }
}
