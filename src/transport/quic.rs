//! QUIC (quinn) endpoints for both ends of the tunnel, and their memory bounds.
//!
//! Per connection, the connector buffers at most `DEVICE_CONN_RECEIVE_WINDOW` bytes received
//! from the edge (`DEVICE_STREAM_RECEIVE_WINDOW` per stream) and `DEVICE_SEND_WINDOW` bytes
//! unacknowledged towards it, and the edge
//! may open at most `max_streams` concurrent streams on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, IdleTimeout, TransportConfig, VarInt};

use super::{Retry, Session, TransportError};

/// Bytes one stream may have in flight towards its receiver.
pub const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;
/// Bytes all streams of a connection may have in flight towards its receiver.
pub const CONN_RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;

/// Timing and limits of the connector's QUIC connections.
#[derive(Debug, Clone, Copy)]
pub struct ClientTuning {
    pub keepalive: Duration,
    pub idle_timeout: Duration,
    /// Concurrent streams the edge may open on one connection.
    pub max_streams: u32,
    /// How long a handshake may take before the path counts as blocked.
    pub handshake_timeout: Duration,
}

/// Bytes the connector keeps in flight towards the edge per connection (its
/// retransmission buffer), and the windows it grants the edge: a device holds less
/// than an edge. 512 KiB covers about 40 Mbit/s at a 100 ms round trip per connection.
pub const DEVICE_SEND_WINDOW: u32 = 512 * 1024;
/// Bytes per stream the connector accepts from the edge before reading them.
pub const DEVICE_STREAM_RECEIVE_WINDOW: u32 = 512 * 1024;
/// Bytes per connection the connector accepts from the edge before reading them.
pub const DEVICE_CONN_RECEIVE_WINDOW: u32 = 1024 * 1024;

/// Flow-control windows of one end.
#[derive(Debug, Clone, Copy)]
struct Windows {
    stream_receive: u32,
    conn_receive: u32,
    send: u32,
}

const DEVICE: Windows = Windows {
    stream_receive: DEVICE_STREAM_RECEIVE_WINDOW,
    conn_receive: DEVICE_CONN_RECEIVE_WINDOW,
    send: DEVICE_SEND_WINDOW,
};

const EDGE: Windows = Windows {
    stream_receive: STREAM_RECEIVE_WINDOW,
    conn_receive: CONN_RECEIVE_WINDOW,
    send: CONN_RECEIVE_WINDOW,
};

fn transport(
    keepalive: Duration,
    idle: Duration,
    peer_streams: u32,
    w: Windows,
) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(keepalive));
    // An idle timeout beyond QUIC's varint range is clamped to the largest it allows.
    t.max_idle_timeout(Some(
        IdleTimeout::try_from(idle).unwrap_or_else(|_| IdleTimeout::from(VarInt::MAX)),
    ));
    t.max_concurrent_bidi_streams(VarInt::from_u32(peer_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(w.stream_receive));
    t.receive_window(VarInt::from_u32(w.conn_receive));
    t.send_window(u64::from(w.send));
    t
}

/// Kernel buffer the connector asks for on its UDP socket, each way. The default
/// (208 KiB on most kernels) overflows when a burst of the edge's full window arrives
/// while the connector is busy, and every drop costs a congestion back-off. The kernel
/// caps it at `net.core.rmem_max`/`wmem_max`.
pub const DEVICE_SOCKET_BUFFER: usize = 1024 * 1024;
/// Kernel buffer the edge asks for on its UDP socket, each way (it serves many
/// connectors). Raise `net.core.rmem_max` and `wmem_max` to this for it to take effect.
pub const EDGE_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Sets the socket's kernel buffers to `bytes` each way where the kernel allows, and
/// returns the receive buffer it granted (Linux reports twice the usable size).
fn size_buffers(socket: &std::net::UdpSocket, bytes: usize) -> usize {
    let s = socket2::SockRef::from(socket);
    // Refusals leave the default in place: slower, never wrong.
    let _ = s.set_recv_buffer_size(bytes);
    let _ = s.set_send_buffer_size(bytes);
    s.recv_buffer_size().unwrap_or(0)
}

/// A client endpoint on an unspecified local address of `remote`'s family.
///
/// Receive offload (UDP GRO) stays on, but quinn reads into only
/// `DEVICE_RECEIVE_SLOTS` of its 32 batch slots (see `BoundedReceive`).
pub fn client_endpoint(remote: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let local: SocketAddr = if remote.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(local),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if local.is_ipv6() {
        // Reach IPv4 edges through a v6 socket where the system allows it.
        let _ = socket.set_only_v6(false);
    }
    socket.bind(&local.into())?;
    let socket = std::net::UdpSocket::from(socket);
    let granted = size_buffers(&socket, DEVICE_SOCKET_BUFFER);
    log::debug!("UDP socket buffers: {} KiB granted", granted / 1024);
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
    let wrapped = runtime.wrap_udp_socket(socket)?;
    quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        None,
        Arc::new(BoundedReceive(wrapped)),
        runtime,
    )
}

/// Batch slots the connector's quinn endpoint reads into per `recvmmsg` (each up to 64
/// coalesced datagrams, 94 KiB). Two moved downloads 7–14 % slower than eight (the edge's
/// ACK-sized datagrams do not coalesce); eight touch at most 750 KiB.
pub const DEVICE_RECEIVE_SLOTS: usize = 8;

/// A quinn socket that reads into the first `DEVICE_RECEIVE_SLOTS` slots of quinn's
/// receive buffer only. quinn sizes that buffer for 32 slots of 64 coalesced
/// datagrams (3 MiB with GRO); the slots never read stay untouched, so they cost
/// address space, not memory.
#[derive(Debug)]
struct BoundedReceive(Arc<dyn quinn::AsyncUdpSocket>);

impl quinn::AsyncUdpSocket for BoundedReceive {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.0.clone().create_io_poller()
    }
    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.0.try_send(transmit)
    }
    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = bufs.len().min(DEVICE_RECEIVE_SLOTS);
        self.0.poll_recv(cx, &mut bufs[..n], &mut meta[..n])
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
    fn max_transmit_segments(&self) -> usize {
        self.0.max_transmit_segments()
    }
    fn max_receive_segments(&self) -> usize {
        self.0.max_receive_segments()
    }
    fn may_fragment(&self) -> bool {
        self.0.may_fragment()
    }
}

/// Dials the edge and completes the QUIC handshake.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    remote: SocketAddr,
    server_name: &str,
    tls: rustls::ClientConfig,
    tuning: ClientTuning,
) -> Result<Session, TransportError> {
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| TransportError::backoff(format!("TLS setup: {e}")))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport(
        tuning.keepalive,
        tuning.idle_timeout,
        tuning.max_streams,
        DEVICE,
    )));
    let connecting = endpoint
        .connect_with(cfg, remote, server_name)
        .map_err(|e| TransportError::backoff(format!("cannot dial {remote}: {e}")))?;
    match tokio::time::timeout(tuning.handshake_timeout, connecting).await {
        Ok(Ok(conn)) => Ok(Session::Quic(conn)),
        Ok(Err(e)) => Err(TransportError {
            retry: match e {
                ConnectionError::TimedOut => Retry::Fallback,
                _ => Retry::Backoff,
            },
            message: describe_close(&e),
        }),
        Err(_) => Err(TransportError {
            retry: Retry::Fallback,
            message: format!(
                "no QUIC answer from {remote} within {:?}",
                tuning.handshake_timeout
            ),
        }),
    }
}

/// Server endpoint for the edge's tunnel listener, on an already-bound UDP socket.
pub fn server_endpoint(
    socket: std::net::UdpSocket,
    tls: rustls::ServerConfig,
    keepalive: Duration,
    idle: Duration,
) -> std::io::Result<quinn::Endpoint> {
    let crypto = QuicServerConfig::try_from(tls).map_err(std::io::Error::other)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // Connectors never open streams; the edge opens them all.
    cfg.transport_config(Arc::new(transport(keepalive, idle, 0, EDGE)));
    let granted = size_buffers(&socket, EDGE_SOCKET_BUFFER);
    if granted < EDGE_SOCKET_BUFFER {
        log::info!(
            "tunnel UDP socket: the kernel granted a {} KiB receive buffer; raise \
             net.core.rmem_max and net.core.wmem_max to {} for fast uploads from devices",
            granted / 1024,
            EDGE_SOCKET_BUFFER
        );
    }
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(cfg), socket, runtime)
}

/// An operator-readable reason for a closed or failed connection.
pub fn describe_close(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason);
            if reason.is_empty() {
                "closed by peer".into()
            } else {
                format!("closed by peer: {reason}")
            }
        }
        ConnectionError::LocallyClosed => "closed".into(),
        ConnectionError::TimedOut => "timed out (no packets from peer)".into(),
        ConnectionError::ConnectionClosed(c) => format!("closed by peer: {c}"),
        ConnectionError::TransportError(t) => format!("QUIC error: {t}"),
        ConnectionError::Reset => "reset by peer".into(),
        ConnectionError::VersionMismatch => "QUIC version mismatch".into(),
        ConnectionError::CidsExhausted => "connection ids exhausted".into(),
    }
}
