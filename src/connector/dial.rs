//! Reaching an edge: resolving an edge entry's name (keeping its last good addresses
//! in [`Names`](super::slot::Names) for when DNS fails; the members an edge of a
//! cluster told instead, while one of them works), the QUIC endpoints, and opening a
//! session as the slot's [`Plan`] says.

use std::net::SocketAddr;
use std::time::Duration;

use super::slot::{self, Auto, Plan, Resolved};
use super::{Shared, MAX_STREAMS_PER_CONN};
use crate::config::Protocol;
use crate::transport::{quic, Retry, Session, TransportError};
use crate::util::lock;

/// Time allowed to resolve an edge name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to set up an HTTP/2 connection (TCP, TLS, preface).
const H2_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves edge entry `idx` for `slot`: the slot's share of the members an edge of
/// the entry told, when one of them works (no DNS query then; the TLS name stays the
/// entry's), else the entry's name. When DNS fails the last good addresses are used;
/// that is said once per failing spell, and once when the name resolves again.
async fn edge_for(
    shared: &Shared,
    slot: usize,
    idx: usize,
) -> Result<(SocketAddr, String), String> {
    let rt = shared.current.borrow().clone();
    let edges = &rt.config.edges;
    let Some(entry) = edges.get(idx).map(|e| e.as_str()) else {
        return Err("no edge addresses configured".into());
    };
    // Stored addresses were checked (and given their port) when the config was compiled.
    let (host, port) = crate::config::validate::parse_edge_addr(entry)
        .map_err(|e| format!("edge address {entry:?}: {e}"))?;
    let member = lock(&shared.names).member_for(idx, slot, edges.len(), std::time::Instant::now());
    if let Some(addr) = member {
        return Ok((addr, host.to_string()));
    }
    crate::transport::meter::dns_lookup(host);
    let fresh = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    let (resolved, why) = match fresh {
        Ok(Ok(it)) => {
            let v: Vec<SocketAddr> = it.collect();
            let got = lock(&shared.names).resolved(idx, v, slot, edges.len());
            (got, "it has no address".to_string())
        }
        Ok(Err(e)) => (
            lock(&shared.names).failed(idx, slot, edges.len()),
            e.to_string(),
        ),
        Err(_) => (
            lock(&shared.names).failed(idx, slot, edges.len()),
            format!("no answer within {}s", RESOLVE_TIMEOUT.as_secs()),
        ),
    };
    let addr = match resolved {
        Resolved::Fresh { addr, again, addrs } => {
            if again {
                log::info!("edge {entry} resolves again ({})", addr_list(&addrs));
            }
            addr
        }
        Resolved::Cached { addr, first, addrs } => {
            if first {
                log::warn!(
                    "cannot resolve edge {entry} ({why}); using its last known addresses ({}) \
                     until it resolves again",
                    addr_list(&addrs)
                );
            }
            addr
        }
        Resolved::Unknown => return Err(format!("cannot resolve edge {entry}: {why}")),
    };
    Ok((addr, host.to_string()))
}

pub(super) fn addr_list(addrs: &[SocketAddr]) -> String {
    let v: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    v.join(", ")
}

/// The QUIC endpoint for `remote`'s address family, opened on first use and shared.
pub(super) fn endpoint_for(
    shared: &Shared,
    remote: SocketAddr,
) -> Result<quic::DeviceEndpoint, String> {
    let mut eps = lock(&shared.endpoints);
    let slot = if remote.is_ipv6() {
        &mut eps.1
    } else {
        &mut eps.0
    };
    if let Some(ep) = slot {
        return Ok(ep.clone());
    }
    let ep = quic::device_endpoint(remote).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    *slot = Some(ep.clone());
    Ok(ep)
}

/// Everything needed to dial one edge address.
pub(super) struct Dial {
    /// The edge entry (index in the config's `edge:` list) the address came from.
    pub(super) entry: usize,
    addr: SocketAddr,
    pub(super) server_name: String,
    tls: rustls::ClientConfig,
    tuning: quic::ClientTuning,
}

impl Dial {
    /// The address dialled.
    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(super) async fn quic(
        &self,
        shared: &Shared,
        handshake: Duration,
    ) -> Result<Session, TransportError> {
        let endpoint = endpoint_for(shared, self.addr).map_err(TransportError::backoff)?;
        // quinn's own keep-alive is only a sibling's rare one: the keeper of the flow
        // pings every `keepalive` and watches for `idle-timeout` itself
        // ([`super::session`]), so any connection can take the role.
        let tuning = quic::ClientTuning {
            handshake_timeout: handshake,
            keepalive: self.tuning.keepalive.max(quic::SIBLING_KEEPALIVE),
            idle_timeout: quic::long_idle(self.tuning.idle_timeout, self.tuning.keepalive),
            ..self.tuning
        };
        quic::connect(
            &endpoint.quinn,
            self.addr,
            &self.server_name,
            self.tls.clone(),
            tuning,
        )
        .await
    }

    async fn h2(&self) -> Result<Session, TransportError> {
        crate::transport::h2::connect(
            self.addr,
            &self.server_name,
            self.tls.clone(),
            // A TCP mapping lasts hours at a NAT: the keeper's pings only prove the path.
            slot::probe_every(self.tuning.keepalive, self.tuning.idle_timeout),
            self.tuning.idle_timeout,
            self.tuning.max_streams,
            H2_CONNECT_TIMEOUT,
        )
        .await
    }

    /// An HTTP/2 connection that stays silent (no keep-alives) for a NAT probe
    /// (`super::natlife`); `hold`: how long it is kept at most.
    pub(super) async fn h2_probe(&self, hold: Duration) -> Result<Session, TransportError> {
        let session = crate::transport::h2::connect(
            self.addr,
            &self.server_name,
            self.tls.clone(),
            hold,
            self.tuning.idle_timeout,
            1,
            H2_CONNECT_TIMEOUT,
        )
        .await?;
        if let Session::H2(h) = &session {
            h.set_quiet(true);
        }
        Ok(session)
    }

    fn describe(&self, e: TransportError) -> String {
        let clock = if crate::tls::clock_unset() {
            " (the system clock is not set; certificates are checked against the later of the \
             build time and the last-known-good time)"
        } else {
            ""
        };
        format!(
            "cannot connect to edge {} ({}): {}{clock}",
            self.server_name, self.addr, e.message
        )
    }
}

/// Resolves edge entry `entry` and prepares what dialing it takes.
pub(super) async fn prepare(shared: &Shared, slot: usize, entry: usize) -> Result<Dial, String> {
    let (addr, server_name) = edge_for(shared, slot, entry).await?;
    build(shared, entry, addr, server_name)
}

/// What dialing `addr` again takes, for edge entry `entry` already resolved to it (no
/// name lookup: a metered link pays for those).
pub(super) fn again(shared: &Shared, entry: usize, addr: SocketAddr) -> Result<Dial, String> {
    let rt = shared.current.borrow().clone();
    let Some(edge) = rt.config.edges.get(entry) else {
        return Err("no edge addresses configured".into());
    };
    let (host, _) = crate::config::validate::parse_edge_addr(edge.as_str())
        .map_err(|e| format!("edge address {edge:?}: {e}"))?;
    build(shared, entry, addr, host.to_string())
}

fn build(
    shared: &Shared,
    entry: usize,
    addr: SocketAddr,
    server_name: String,
) -> Result<Dial, String> {
    let rt = shared.current.borrow().clone();
    let cfg = &rt.config;
    let tls = rt.edge_tls()?;
    Ok(Dial {
        entry,
        addr,
        server_name,
        tls,
        tuning: quic::ClientTuning {
            keepalive: Duration::from_secs(u64::from(cfg.keepalive_secs_on(cfg.protocol).max(1))),
            idle_timeout: Duration::from_secs(u64::from(cfg.idle_timeout_secs.max(2))),
            max_streams: MAX_STREAMS_PER_CONN,
            handshake_timeout: slot::HANDSHAKE_TIMEOUT,
            send_window: quic::device_send_window(cfg.ha_connections),
        },
    })
}

/// Opens a session to `dial` with `protocol`, as `auto` plans it; in `auto`, QUIC first
/// and HTTP/2 when UDP seems blocked (remembered in `auto`).
pub(super) async fn open_session(
    shared: &Shared,
    dial: &Dial,
    slot: usize,
    protocol: Protocol,
    auto: &mut Auto,
    fast: bool,
) -> Result<Session, String> {
    Ok(match auto.plan(protocol, fast) {
        Plan::Quic { wait } => dial
            .quic(shared, wait)
            .await
            .map_err(|e| dial.describe(e))?,
        Plan::Http2 => dial.h2().await.map_err(|e| dial.describe(e))?,
        Plan::QuicFirst { wait, recheck } => match dial.quic(shared, wait).await {
            Ok(s) => s,
            Err(e) if e.retry == Retry::Fallback => {
                // Said only once TCP works: when both fail, the edge is just down.
                let s = dial.h2().await.map_err(|e| dial.describe(e))?;
                // A quick retry's short QUIC wait proves little: its first packet may
                // have gone out while the edge was still down, and the resend comes
                // after about a second. The edge is up now (TCP answered): ask again.
                if let Some(wait) = recheck {
                    if let Ok(q) = dial.quic(shared, wait).await {
                        s.close("QUIC answers");
                        return Ok(q);
                    }
                }
                log::warn!(
                    "connection {slot}: UDP to {}:{} seems blocked ({}); using HTTP/2 over TCP",
                    dial.server_name,
                    dial.addr.port(),
                    e.message
                );
                auto.udp_blocked();
                s
            }
            Err(e) => return Err(dial.describe(e)),
        },
        Plan::Http2Fallback => match dial.h2().await {
            Ok(s) => s,
            Err(e) => {
                // TCP fails too: the next attempt starts from QUIC again.
                auto.quic_again();
                return Err(dial.describe(e));
            }
        },
    })
}
