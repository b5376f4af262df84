//! Public TCP ports (`tcp-ports:`): bound at start, each connection from an address in
//! the entry's `ip-allow` piped to its one hostname. No credentials: the address list
//! is the policy.

use std::sync::Arc;
use std::time::Duration;

use super::admit::open_raw;
use super::pipe::{pipe, AccessLog};
use crate::edge::policy::{Identity, TcpPortSpec};
use crate::edge::EdgeState;

/// A `tcp-ports:` entry with its bound listener.
pub struct BoundTcpPort {
    pub listener: std::net::TcpListener,
    pub spec: TcpPortSpec,
}

/// Binds the `tcp-ports:` listeners.
pub fn bind_tcp_ports(specs: &[TcpPortSpec]) -> Result<Vec<BoundTcpPort>, String> {
    specs
        .iter()
        .map(|spec| {
            std::net::TcpListener::bind(spec.listen)
                .map(|listener| BoundTcpPort {
                    listener,
                    spec: spec.clone(),
                })
                .map_err(|e| format!("tcp-ports: cannot listen on {}: {e}", spec.listen))
        })
        .collect()
}

/// Serves one `tcp-ports:` listener: each connection from an allowed address is piped
/// to the entry's hostname.
pub(crate) async fn serve_tcp_port(
    listener: tokio::net::TcpListener,
    spec: TcpPortSpec,
    state: Arc<EdgeState>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log::warn!("tcp port {}: accept failed: {e}", spec.listen);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let via = format!(
            "tcp port {}",
            listener.local_addr().map_or(spec.listen, |a| a)
        );
        if !spec.admits(peer.ip()) {
            log::info!(
                "access denied: {} from {peer} over {via}: address not in ip-allow",
                spec.hostname,
            );
            continue;
        }
        let Some(permit) = state.access.stream_permit() else {
            log::warn!(
                "tcp port {}: access stream limit reached; {peer} refused",
                spec.listen
            );
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let host = spec.hostname.clone();
        let via = format!(
            "tcp port {}",
            listener.local_addr().map_or(spec.listen, |a| a)
        );
        tokio::spawn(async move {
            match open_raw(&state, &host, Some(peer)).await {
                Ok(tunnel) => {
                    let who = Identity {
                        who: "anonymous".into(),
                        how: "ip-allow",
                    };
                    let log = AccessLog::new(who, &host, peer, &via);
                    pipe(tcp, tunnel, log, permit, None).await;
                }
                Err((_, message)) => {
                    log::info!("access failed: {host} from {peer} over {via}: {message}")
                }
            }
        });
    }
}
