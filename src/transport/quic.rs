//! QUIC (quinn) endpoints for both ends of the tunnel, and their memory bounds.
//!
//! Per connection, the connector buffers at most `DEVICE_CONN_RECEIVE_WINDOW` bytes received
//! from the edge (`DEVICE_STREAM_RECEIVE_WINDOW` per stream) and its share of
//! `DEVICE_SEND_BUDGET` unacknowledged towards it ([`device_send_window`]), and the edge
//! may open at most `max_streams` concurrent streams on it.
//!
//! Packet size: QUIC starts at 1200-byte packets and discovers the path's MTU by probing
//! (PLPMTUD). quinn probes up to 1452 bytes, an Ethernet MTU's worth. Where the route
//! to the peer has a larger MTU (loopback, jumbo-frame LANs) both ends probe up to
//! [`MAX_PACKET`] instead, as TCP sizes its segments from the interface MTU: far fewer
//! packets to encrypt, acknowledge and reassemble for the same bytes. On a route of
//! 1500 bytes or less nothing changes, so no probe costs a byte of cellular data.
// The edge-side half is unused in the device build (see the parent module).
#![cfg_attr(not(feature = "edge"), allow(dead_code))]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, IdleTimeout, TransportConfig, VarInt};

use super::{Retry, Session, TransportError};

/// Bytes one stream may have in flight towards its receiver.
pub(crate) const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;
/// Bytes all streams of a connection may have in flight towards its receiver.
pub(crate) const CONN_RECEIVE_WINDOW: u32 = 4 * 1024 * 1024;

/// Timing and limits of the connector's QUIC connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientTuning {
    pub(crate) keepalive: Duration,
    pub(crate) idle_timeout: Duration,
    /// Concurrent streams the edge may open on one connection.
    pub(crate) max_streams: u32,
    /// How long a handshake may take before the path counts as blocked.
    pub(crate) handshake_timeout: Duration,
    /// Bytes kept in flight towards the edge (see [`device_send_window`]).
    pub(crate) send_window: u32,
}

/// Bytes the connector keeps in flight towards the edge (its retransmission buffers),
/// all its connections together: under many concurrent responses every connection
/// fills its send window, so the windows' sum is most of the connector's peak memory.
pub(crate) const DEVICE_SEND_BUDGET: u32 = 1024 * 1024;
/// The smallest send window a connection gets: about 20 Mbit/s at a 100 ms round trip.
pub(crate) const MIN_DEVICE_SEND_WINDOW: u32 = 256 * 1024;

/// One connection's share of [`DEVICE_SEND_BUDGET`] among `connections`: 256 KiB each
/// for the default four (20 Mbit/s per connection at a 100 ms round trip), 1 MiB for
/// a single one.
pub(crate) fn device_send_window(connections: u8) -> u32 {
    (DEVICE_SEND_BUDGET / u32::from(connections.max(1))).max(MIN_DEVICE_SEND_WINDOW)
}

/// Bytes per stream the connector accepts from the edge before reading them.
pub(crate) const DEVICE_STREAM_RECEIVE_WINDOW: u32 = 512 * 1024;
/// Bytes per connection the connector accepts from the edge before reading them.
pub(crate) const DEVICE_CONN_RECEIVE_WINDOW: u32 = 1024 * 1024;

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
    // Each connection gets its share of the budget instead (`ClientTuning::send_window`).
    send: MIN_DEVICE_SEND_WINDOW,
};

const EDGE: Windows = Windows {
    stream_receive: STREAM_RECEIVE_WINDOW,
    conn_receive: CONN_RECEIVE_WINDOW,
    send: CONN_RECEIVE_WINDOW,
};

/// Largest UDP payload either end sends or accepts, on routes that allow it. quinn hands
/// the kernel up to ten packets in one segmentation-offload (GSO) send, and one such
/// send carries at most `GSO_MAX_BYTES`, so ten of these fit.
///
/// Measured on loopback (100 MiB through the tunnel as in `bench/run.py`, medians of 8,
/// interleaved A/B): 1452 → 6540-byte packets moved uploads 370 → 543 MiB/s and
/// downloads 485 → 699 MiB/s, and cut the CPU time of each end by 35–40 %. Without
/// the batch cap, 8192-byte packets collapsed to 241 and 328 MiB/s.
pub(crate) const MAX_PACKET: u16 = 6540;

/// The most bytes one UDP datagram carries over IPv4, the limit of a GSO batch.
const GSO_MAX_BYTES: usize = 65_507;

// quinn batches ten packets per send: ten of the largest must fit one batch.
const _: () = assert!(GSO_MAX_BYTES / MAX_PACKET as usize >= 10);

/// The largest UDP payload the route to `remote` carries without fragmenting, from the
/// MTU of the route the kernel would pick (no packet is sent), or `None` where the
/// kernel cannot tell.
fn route_payload(remote: SocketAddr) -> Option<u16> {
    // An IPv4 peer seen through a dual-stack socket is routed as IPv4.
    let remote = match remote {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => remote,
        },
        v4 => v4,
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(remote),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .ok()?;
    socket.connect(&remote.into()).ok()?;
    let (mtu, headers) = route_mtu(&socket, remote.is_ipv6())?;
    u16::try_from(mtu.checked_sub(headers)?).ok()
}

/// The MTU of a connected socket's route and the IP and UDP header bytes within it.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn route_mtu(socket: &socket2::Socket, v6: bool) -> Option<(u32, u32)> {
    use std::os::fd::AsRawFd;
    let (level, name, headers) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU, 40 + 8)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU, 20 + 8)
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `mtu` and `len` are valid for writes of the sizes given, and the
    // descriptor is open for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0 && mtu > 0).then_some((mtu as u32, headers))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn route_mtu(_: &socket2::Socket, _: bool) -> Option<(u32, u32)> {
    None
}

/// The packet size MTU discovery may probe up to towards `remote`: `None` (quinn's
/// default, 1452 bytes) unless the route carries more than an Ethernet MTU's 1472-byte
/// payload, then up to [`MAX_PACKET`].
fn probe_limit(remote: SocketAddr) -> Option<u16> {
    route_payload(remote)
        .filter(|&p| p > 1472)
        .map(|p| p.min(MAX_PACKET))
}

/// The idle timeout a connection advertises: [`LONG_IDLE`] or more, beyond `idle` and
/// twice `keepalive`.
pub(crate) fn long_idle(idle: Duration, keepalive: Duration) -> Duration {
    idle.max(LONG_IDLE).max(keepalive.saturating_mul(2))
}

fn transport(
    keepalive: Option<Duration>,
    idle: Duration,
    peer_streams: u32,
    w: Windows,
    probe_limit: Option<u16>,
) -> TransportConfig {
    let mut t = TransportConfig::default();
    if let Some(limit) = probe_limit {
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(limit);
        t.mtu_discovery_config(Some(mtu));
    }
    t.keep_alive_interval(keepalive);
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
pub(crate) const DEVICE_SOCKET_BUFFER: usize = 1024 * 1024;
/// Kernel buffer the edge asks for on its UDP socket, each way (it serves many
/// connectors). Raise `net.core.rmem_max` and `wmem_max` to this for it to take effect.
pub(crate) const EDGE_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Sets the socket's kernel buffers to `bytes` each way where the kernel allows, and
/// returns the receive buffer it granted (Linux reports twice the usable size).
fn size_buffers(socket: &std::net::UdpSocket, bytes: usize) -> usize {
    let s = socket2::SockRef::from(socket);
    // Refusals leave the default in place: slower, never wrong.
    let _ = s.set_recv_buffer_size(bytes);
    let _ = s.set_send_buffer_size(bytes);
    s.recv_buffer_size().unwrap_or(0)
}

/// Endpoint settings of both ends: packets of up to [`MAX_PACKET`] are accepted (what
/// the peer's MTU discovery may probe up to). `reset_key` signs stateless resets; a
/// random one (the connector's) when `None`.
fn endpoint_config(reset_key: Option<Arc<ring::hmac::Key>>) -> quinn::EndpointConfig {
    let mut cfg = match reset_key {
        Some(key) => {
            let mut cfg = quinn::EndpointConfig::new(key);
            // quinn's default generator signs its ids with a key made per process and
            // drops packets whose ids it did not sign: the packets of connections from
            // before a restart would be dropped without a reset.
            cfg.cid_generator(|| Box::new(RandomCids));
            cfg
        }
        None => {
            let mut cfg = quinn::EndpointConfig::default();
            cfg.cid_generator(|| Box::new(DeviceCids));
            cfg
        }
    };
    // MAX_PACKET lies within the range quinn accepts (1200..=65527).
    let _ = cfg.max_udp_payload_size(MAX_PACKET);
    cfg
}

/// A client endpoint on an unspecified local address of `remote`'s family.
///
/// Receive offload (UDP GRO) stays on, but quinn reads into only
/// `DEVICE_RECEIVE_SLOTS` of its 32 batch slots (see `Offload`).
pub(crate) fn client_endpoint(remote: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    device_endpoint(remote).map(|d| d.quinn)
}

/// The payload of a NAT keep-alive: one byte, as IPsec's NAT-T keep-alive (RFC 3948).
/// No QUIC packet is this short: the edge's endpoint drops it unanswered, and sends no
/// stateless reset (its header does not even parse).
const NAT_KEEPALIVE: [u8; 1] = [0xff];

/// The connector's QUIC endpoint and its UDP socket, which also sends the flow keeper's
/// NAT keep-alives (see `connector::slot::Keeper`).
#[derive(Clone)]
pub(crate) struct DeviceEndpoint {
    pub(crate) quinn: quinn::Endpoint,
    socket: Arc<std::net::UdpSocket>,
}

impl DeviceEndpoint {
    /// Sends a NAT keep-alive to `remote` from the endpoint's socket: the 29 bytes (IPv4)
    /// that refresh the NAT's mapping of the flow, where a QUIC PING and its
    /// acknowledgement cost about 135. Nothing answers it; a socket that cannot take it
    /// now (full) skips it.
    pub(crate) fn nat_keepalive(&self, remote: SocketAddr) {
        let remote = match (remote, self.socket.local_addr()) {
            // A v6 socket reaches IPv4 edges at their mapped address.
            (SocketAddr::V4(v4), Ok(SocketAddr::V6(_))) => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            _ => remote,
        };
        match self.socket.send_to(&NAT_KEEPALIVE, remote) {
            Ok(n) => super::meter::sent(n),
            Err(e) => log::debug!("NAT keep-alive to {remote}: {e}"),
        }
    }
}

/// The connector's endpoint for `remote`'s address family (see [`DeviceEndpoint`]).
pub(crate) fn device_endpoint(remote: SocketAddr) -> std::io::Result<DeviceEndpoint> {
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
    // The same socket (a second descriptor of it, non-blocking like quinn's).
    let keep = socket.try_clone()?;
    keep.set_nonblocking(true)?;
    let keep = Arc::new(keep);
    Ok(DeviceEndpoint {
        quinn: endpoint(socket, None, DEVICE_RECEIVE_SLOTS, None, true)?,
        socket: keep,
    })
}

/// Random 8-byte connection ids that any process of the edge accepts as its own, so
/// that a packet of a connection from before a restart earns a stateless reset. A
/// packet with an unknown id gets at most one reset, smaller than itself, per 20 ms
/// (quinn's `min_reset_interval`): no amplification.
struct RandomCids;

/// The connector's connection ids: random, [`DEVICE_CID_LEN`] bytes. Every packet
/// from the edge carries one, and an idle tunnel's packets are mostly acknowledgements
/// of about 60 bytes: four bytes fewer than quinn's default eight is 6 % of them. A
/// connector holds a handful of connections, so four random bytes never collide.
struct DeviceCids;

/// Bytes in a connection id the connector hands out: four on 64-bit boards, five on
/// 32-bit ones (armv7, armv6). quinn checks whether ids of four bytes or fewer run out
/// with `2usize.pow(8 × len)`, which overflows a 32-bit `usize` at four bytes and
/// refuses every connection ("CIDs exhausted"); from five bytes on it does not check.
const DEVICE_CID_LEN: usize = if usize::BITS >= 64 { 4 } else { 5 };

impl quinn::ConnectionIdGenerator for DeviceCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut id = [0u8; DEVICE_CID_LEN];
        // A failing system RNG leaves the id zero; quinn asks for another on a clash.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        DEVICE_CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Bytes in a connection id the edge hands out (quinn's default length).
const CID_LEN: usize = 8;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut id = [0u8; CID_LEN];
        // The system RNG does not fail on the systems the edge runs on; if it ever did,
        // the id would repeat and quinn would ask for another.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The label the edge's stateless-reset key is derived under.
const RESET_KEY_LABEL: &[u8] = b"mailslot edge QUIC stateless reset key v1";

/// The key that signs the edge's QUIC stateless resets, derived from its private key
/// (`secret`, the key file's DER bytes) with HMAC-SHA256 under a fixed label.
///
/// A stateless reset tells a peer that the edge lost its connection (a crash, a kill,
/// a restart): the peer believes it only when the reset's token matches the one the
/// edge handed out for that connection, which is an HMAC of the connection id under
/// this key. With a random key per process (quinn's default), an edge restarted after
/// SIGKILL sends resets its connectors ignore, and they hold on to dead connections
/// until their idle timeout. Derived from the key material, every restart and every
/// replica of one edge identity signs with the same key; the private key itself never
/// leaves the HMAC.
pub(crate) fn reset_key(secret: &[u8]) -> Arc<ring::hmac::Key> {
    let kdf = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let derived = ring::hmac::sign(&kdf, RESET_KEY_LABEL);
    Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        derived.as_ref(),
    ))
}

fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
    receive_slots: usize,
    reset_key: Option<Arc<ring::hmac::Key>>,
    metered: bool,
) -> std::io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for QUIC"))?;
    let socket = Offload {
        udp: Udp::new(socket)?,
        receive_slots,
        metered,
    };
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(reset_key),
        server,
        Arc::new(socket),
        runtime,
    )
}

/// Batch slots the connector's quinn endpoint reads into per `recvmmsg` (each up to one
/// 64 KiB run of coalesced datagrams). Two moved downloads 7–14 % slower than eight (the
/// edge's ACK-sized datagrams do not coalesce); eight touch at most 576 KiB.
pub(crate) const DEVICE_RECEIVE_SLOTS: usize = 8;

/// Batch slots the edge's endpoint reads into: all of quinn's.
const EDGE_RECEIVE_SLOTS: usize = 32;

/// The kernel coalesces received datagrams (UDP GRO) into runs of at most this many
/// bytes, the size of one UDP datagram.
const GRO_MAX_BYTES: usize = 65_535;

/// The UDP socket under quinn, holding its segmentation offload to what one datagram
/// carries and its receive batches to `receive_slots`.
///
/// - Sends: quinn hands the kernel up to ten packets per GSO send; the wrapper caps the
///   count so that a batch of [`MAX_PACKET`]-sized packets fits in [`GSO_MAX_BYTES`]
///   (the kernel refuses a larger batch with an error quinn takes for a failed MTU
///   probe, and drops it silently).
/// - Receives: quinn sizes each of its 32 receive slots for 64 coalesced datagrams of
///   the largest packet accepted; the kernel never coalesces more than 64 KiB, so the
///   wrapper reports the segment count that covers exactly that. Reading into only the
///   first `receive_slots` slots leaves the rest untouched: address space, not memory.
/// - The connector's socket (`metered`) counts the bytes it sends and receives
///   ([`super::meter`]).
#[derive(Debug)]
struct Offload {
    udp: Udp,
    receive_slots: usize,
    metered: bool,
}

impl quinn::AsyncUdpSocket for Offload {
    fn create_io_poller(self: Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(Writable(self))
    }
    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        let r = self.udp.try_send(transmit);
        if self.metered && r.is_ok() {
            super::meter::sent(transmit.contents.len());
        }
        r
    }
    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let n = bufs.len().min(meta.len()).min(self.receive_slots);
        let (bufs, _) = bufs.split_at_mut(n);
        let (meta, _) = meta.split_at_mut(n);
        let r = self.udp.poll_recv(cx, bufs, meta);
        if let (true, std::task::Poll::Ready(Ok(k))) = (self.metered, &r) {
            let got = meta.iter().take(*k).map(|m| m.len).sum();
            super::meter::received(got);
        }
        r
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.io.get_ref().local_addr()
    }
    fn max_transmit_segments(&self) -> usize {
        self.udp
            .state
            .max_gso_segments()
            .min(GSO_MAX_BYTES / usize::from(MAX_PACKET))
    }
    fn max_receive_segments(&self) -> usize {
        self.udp
            .state
            .gro_segments()
            .min(GRO_MAX_BYTES.div_ceil(usize::from(MAX_PACKET)))
    }
    fn may_fragment(&self) -> bool {
        self.udp.state.may_fragment()
    }
}

/// The UDP socket itself: quinn-udp's system calls (batches, GSO, GRO, ECN) on a
/// socket the runtime watches.
///
/// A read that fills fewer batch slots than it offered has drained the socket (the
/// kernel's `recvmmsg` stops only when no datagram is left, or at an error, which the
/// runtime reports as readiness anyway): the socket's readiness is cleared then, and
/// the next read waits for the next datagram instead of making a system call that
/// finds nothing. (quinn's own wrapper reads until a read fails with `EAGAIN`: two
/// `recvmmsg` per datagram on a connection that sends one at a time, as a request's
/// answer does.) A datagram that arrives between the read and the clearing is not
/// missed: the runtime clears readiness only when no event came after the one the
/// read answered.
#[derive(Debug)]
struct Udp {
    io: tokio::io::unix::AsyncFd<std::net::UdpSocket>,
    state: quinn::udp::UdpSocketState,
}

impl Udp {
    fn new(socket: std::net::UdpSocket) -> std::io::Result<Udp> {
        socket.set_nonblocking(true)?;
        let state = quinn::udp::UdpSocketState::new((&socket).into())?;
        // SAFETY: the AsyncFd owns the socket, so its descriptor stays open and the same
        // until the AsyncFd is dropped. (Called within the runtime: `endpoint` found it.)
        let io =
            unsafe { tokio::io::unix::AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)?;
        Ok(Udp { io, state })
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit) -> std::io::Result<()> {
        self.io.try_io(tokio::io::Interest::WRITABLE, |s| {
            self.state.send(s.into(), transmit)
        })
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let offered = bufs.len().min(quinn::udp::BATCH_SIZE);
        loop {
            let mut ready = std::task::ready!(self.io.poll_read_ready(cx))?;
            match ready.try_io(|s| self.state.recv(s.get_ref().into(), bufs, meta)) {
                Ok(Ok(n)) => {
                    if n < offered {
                        ready.clear_ready();
                    }
                    return std::task::Poll::Ready(Ok(n));
                }
                Ok(Err(e)) => return std::task::Poll::Ready(Err(e)),
                // Nothing there after all: readiness was cleared; wait again.
                Err(_would_block) => {}
            }
        }
    }
}

/// Waits until the socket takes datagrams again after a send found it full.
#[derive(Debug)]
struct Writable(Arc<Offload>);

impl quinn::UdpPoller for Writable {
    fn poll_writable(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context,
    ) -> std::task::Poll<std::io::Result<()>> {
        // The guard is dropped without clearing: the send that follows clears the
        // readiness if the socket is full again.
        self.0.udp.io.poll_write_ready(cx).map_ok(|_| ())
    }
}

/// Dials the edge and completes the QUIC handshake.
pub(crate) async fn connect(
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
        Some(tuning.keepalive),
        tuning.idle_timeout,
        tuning.max_streams,
        Windows {
            send: tuning.send_window,
            ..DEVICE
        },
        probe_limit(remote),
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

/// The keep-alive of a connection that is not its flow's keeper: the QUIC connections
/// of one connector to one edge address share one UDP socket, hence one NAT mapping,
/// which the keeper's `keepalive` holds open for all of them (see
/// `connector::slot::Keeper`). The others only have to outlive QUIC's idle timeout.
pub(crate) const SIBLING_KEEPALIVE: Duration = Duration::from_secs(20 * 60);
/// The idle timeout both ends advertise on QUIC (at least; a longer configured one
/// stays): longer than [`SIBLING_KEEPALIVE`], so a quiet sibling lives on. A dead path
/// is found sooner than this by the ends' own watches on the flow's keeper, with the
/// configured `idle-timeout` (the connector's keeper, the edge's flow watch).
pub(crate) const LONG_IDLE: Duration = Duration::from_secs(30 * 60);

/// Asks the peer for an acknowledgement now: one small ack-eliciting packet, as a
/// QUIC PING. quinn 0.11 has no call for a PING, so this raises the connection's
/// receive window by one byte (a MAX_DATA frame goes out) and takes the byte back at
/// once (owed, repaid by the next credit): the window stays as it was. Nothing on the
/// wire is new, so any edge or connector answers it.
pub(crate) fn ping(conn: &quinn::Connection, receive_window: u32) {
    conn.set_receive_window(VarInt::from_u32(receive_window.saturating_add(1)));
    conn.set_receive_window(VarInt::from_u32(receive_window));
}

/// The edge's keep-alive on QUIC: a fallback that never fires while the connector keeps
/// the path alive.
///
/// Only the connector needs to send keep-alives: it is the end behind the NAT, and its
/// packets (and the edge's acknowledgements of them) refresh the mapping. When both ends
/// ran the same 15 s timer, their PINGs crossed in most cycles and the path carried two
/// PINGs and two acknowledgements instead of one of each. So the edge runs no quinn
/// keep-alive at all; its flow watch (`edge::tunnels`) pings a connector's keeper
/// connection only after hearing nothing from the connector for this long: three
/// quarters of `idle` (and not under `keepalive`). A current connector's keeper is
/// heard from at least every `idle-timeout` less one `keepalive` of its own (30 s at
/// its defaults), so this keeps only connectors whose keep-alive exceeds the edge's idle
/// timeout alive, as before, and never pings the keeper's quiet siblings.
pub(crate) fn edge_keepalive(keepalive: Duration, idle: Duration) -> Duration {
    (idle / 4 * 3).max(keepalive)
}

/// The edge's tunnel listener: a QUIC endpoint and the settings it accepts with.
pub(crate) struct Listener {
    pub(crate) endpoint: quinn::Endpoint,
    config: quinn::ServerConfig,
    /// The edge's `keepalive` (its flow watch's period, see [`edge_keepalive`]).
    pub(crate) keepalive: Duration,
    /// The edge's `idle-timeout`: a connector heard from on none of its connections
    /// for this long is gone.
    pub(crate) idle: Duration,
    /// The settings for routes that probe past an Ethernet MTU, and their probe limit:
    /// made once and shared (one entry: a host's routes that allow more than 1472
    /// bytes mostly allow the same), where a copy per connection cost each of them
    /// 0.45 KB for its life (heaptrack).
    probing: std::sync::Mutex<Option<(u16, Arc<quinn::ServerConfig>)>>,
}

impl Listener {
    /// A listener on an already-bound UDP socket; `reset_key` (see [`reset_key`]) signs
    /// its stateless resets.
    pub(crate) fn new(
        socket: std::net::UdpSocket,
        tls: rustls::ServerConfig,
        keepalive: Duration,
        idle: Duration,
        reset_key: Arc<ring::hmac::Key>,
    ) -> std::io::Result<Self> {
        let mut tls = tls;
        // No TLS session tickets. rustls sent two per connection, each made, stored in
        // its session store and sent at every registration; a connector could resume
        // only while that store (256 sessions) still held its session, which an edge
        // of thousands of connectors, or one just restarted (when most reconnect at
        // once), rarely does.
        tls.send_tls13_tickets = 0;
        let crypto = QuicServerConfig::try_from(tls).map_err(std::io::Error::other)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        // Connectors never open streams; the edge opens them all.
        config.transport_config(Arc::new(transport(
            None,
            long_idle(idle, keepalive),
            0,
            EDGE,
            None,
        )));
        let granted = size_buffers(&socket, EDGE_SOCKET_BUFFER);
        if granted < EDGE_SOCKET_BUFFER {
            log::info!(
                "tunnel UDP socket: the kernel granted a {} KiB receive buffer; raise \
                 net.core.rmem_max and net.core.wmem_max to {} for fast uploads from devices",
                granted / 1024,
                EDGE_SOCKET_BUFFER
            );
        }
        let endpoint = endpoint(
            socket,
            Some(config.clone()),
            EDGE_RECEIVE_SLOTS,
            Some(reset_key),
            false,
        )?;
        Ok(Self {
            endpoint,
            config,
            keepalive,
            idle,
            probing: std::sync::Mutex::new(None),
        })
    }

    /// Starts the handshake of `incoming`, with packet-size probing fit for the route
    /// back to its sender.
    pub(crate) fn accept(
        &self,
        incoming: quinn::Incoming,
    ) -> Result<quinn::Connecting, ConnectionError> {
        match probe_limit(incoming.remote_address()) {
            None => incoming.accept(),
            Some(limit) => incoming.accept_with(self.probing_config(limit)),
        }
    }

    /// The settings for a route that probes up to `limit` (see `probing`).
    fn probing_config(&self, limit: u16) -> Arc<quinn::ServerConfig> {
        let mut probing = match self.probing.lock() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((l, config)) = probing.as_ref() {
            if *l == limit {
                return config.clone();
            }
        }
        let mut config = self.config.clone();
        config.transport_config(Arc::new(transport(
            None,
            long_idle(self.idle, self.keepalive),
            0,
            EDGE,
            Some(limit),
        )));
        let config = Arc::new(config);
        *probing = Some((limit, config.clone()));
        config
    }
}

/// An operator-readable reason for a closed or failed connection.
pub(crate) fn describe_close(e: &ConnectionError) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_send_budget_is_shared_by_the_connections() {
        assert_eq!(device_send_window(1), 1024 * 1024);
        assert_eq!(
            device_send_window(0),
            1024 * 1024,
            "a zero count is taken as one"
        );
        assert_eq!(device_send_window(2), 512 * 1024);
        assert_eq!(device_send_window(4), 256 * 1024);
        // Past four connections each keeps the floor: the sum grows again.
        assert_eq!(device_send_window(16), MIN_DEVICE_SEND_WINDOW);
    }

    #[test]
    fn the_reset_key_depends_on_the_key_material_only() {
        let tag = |k: &ring::hmac::Key| ring::hmac::sign(k, b"cid").as_ref().to_vec();
        assert_eq!(tag(&reset_key(b"edge key")), tag(&reset_key(b"edge key")));
        assert_ne!(tag(&reset_key(b"edge key")), tag(&reset_key(b"other key")));
        // The key is not the private key itself.
        let raw = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"edge key");
        assert_ne!(tag(&reset_key(b"edge key")), tag(&raw));
    }

    #[test]
    fn loopback_routes_allow_large_packets() {
        // Loopback's MTU is 64 KiB: the probe limit is MAX_PACKET, for both families.
        let Some(payload) = route_payload("127.0.0.1:9".parse().unwrap()) else {
            // qemu-user, which runs the ARM builds' tests in CI, does not emulate IP_MTU:
            // without a route MTU, quinn's default limit stays. Native runs must read it.
            #[cfg(target_arch = "x86_64")]
            panic!("no route MTU for loopback");
            #[cfg(not(target_arch = "x86_64"))]
            {
                assert_eq!(probe_limit("127.0.0.1:9".parse().unwrap()), None);
                eprintln!("SKIPPED: this system reports no route MTU (qemu-user)");
                return;
            }
        };
        assert!(
            payload > 65_000,
            "loopback carries {payload}-byte UDP payloads"
        );
        assert_eq!(
            probe_limit("127.0.0.1:9".parse().unwrap()),
            Some(MAX_PACKET)
        );
        assert_eq!(
            probe_limit("[::ffff:127.0.0.1]:9".parse().unwrap()),
            Some(MAX_PACKET)
        );
        if std::net::UdpSocket::bind("[::1]:0").is_ok() {
            assert_eq!(probe_limit("[::1]:9".parse().unwrap()), Some(MAX_PACKET));
        }
    }
}
