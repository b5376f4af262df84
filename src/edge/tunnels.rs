//! The tunnel listener: accepts connector connections, runs the control handshake
//! (hello, register, verify the token, claim hostnames) and keeps the registry current.
//!
//! A device of a fleet registers with its key instead of a tunnel token (see
//! `fleet::enroll`): the hello carries a fresh nonce, the registration the device's
//! proof over it and its credential or enrolment key; the edge admits it, records it
//! in the inventory, and answers with a `RegisteredTail` (a new credential when one was
//! issued). On its connections the edge keeps the inventory told (health reports, the
//! last connection's end) and renews the credential two thirds into its lifetime.
//!
//! A device's answer also carries a `KeysTail`: its fleet's config key
//! (`fleet::push`), which the device pins. Its connections are the way remote changes
//! reach it (`fleet::rollout`'s mailboxes: pending changes go when it registers) and
//! the way its reports come back (`ConnectorMsg::Change`, recorded in the store and
//! the inventory).
//!
//! An edge of a cluster with `cluster: advertise:` appends a `MembersTail` to every
//! `Registered` (after a `RegisteredTail` and a `KeysTail`, empty ones for a tunnel
//! token's connection): the tunnel addresses of the live edges. A connector that read
//! it answers `ConnectorMsg::FollowMembers`, and gets an `EdgeMsg::Members` whenever
//! the list changes (never unasked: an older connector ends the connection on a
//! message it cannot decode).
//!
//! A connection may also be a NAT probe (`ConnectorMsg::Probe` instead of a
//! registration, over HTTP/2 only): no credential, never registered, no streams; the
//! edge holds it silent for the time asked (at most `wire::MAX_PROBE_MS`), answers
//! `EdgeMsg::ProbeReply` and closes it. Probes pass the same handshake admission as
//! every tunnel connection, then take a probe slot: at most [`MAX_PROBES`] held at
//! once, [`MAX_PROBES_PER_ADDR`] per address.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::fleet::enroll::{self, DeviceClaims};
use super::fleet::rollout::Mailbox;
use super::flood::{log_limited, AddrSlot, LogLimit, PerAddr};
use super::live::Live;
use super::registry::{edge_clock_ms, Conn, Rules};
use super::token::verified::Verified;
use super::token::verify_tunnel_seen;
use super::EdgeState;
use crate::transport::quic::{describe_close, edge_keepalive, Listener};
use crate::transport::{RecvHalf, SendHalf, Session, TunnelStream};
use crate::util::hex;
use crate::wire::{
    self, ConnectorMsg, DeviceTail, EdgeMsg, HelloClockTail, HelloProbeTail, HelloTail, KeysTail,
    MembersTail, Register, RegisterTail, RegisteredTail, MAX_PROBE_MS, PROTOCOL_VERSION,
};

/// The cluster's member list as this edge tells it (`cluster: advertise:`).
type MembersRx = tokio::sync::watch::Receiver<Vec<String>>;

/// Time a connector has to register after connecting.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time from a TCP connection to the end of its TLS handshake, and from a QUIC
/// connection's first packet to the end of its handshake: a connector's hello arrives
/// at once, so a silent socket is closed early instead of holding a handshake slot.
const TLS_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections in the handshake at once.
const MAX_HANDSHAKES: usize = 256;
/// Most connections in the handshake at once from one address (IPv6: one /64). A
/// connector holds at most a few; many behind one carrier NAT rarely all at once, and
/// those refused try again after their backoff.
const MAX_HANDSHAKES_PER_ADDR: usize = 16;
/// Addresses tracked for [`MAX_HANDSHAKES_PER_ADDR`]: at most one per handshake.
const MAX_HANDSHAKE_ADDRS: usize = MAX_HANDSHAKES;
/// QUIC handshakes in flight above which a new one must first prove its address with
/// a Retry round trip (spoofed sources cannot answer it).
const RETRY_ABOVE: usize = MAX_HANDSHAKES / 4;

/// Most NAT probes held at once. Each holds an idle TLS connection and its HTTP/2
/// state (tens of KB): a few tens of MB at most. A device runs one probe at a time.
const MAX_PROBES: usize = 512;
/// Most NAT probes held at once from one address (IPv6: one /64): a carrier NAT's
/// address fronts many devices, each probing rarely.
const MAX_PROBES_PER_ADDR: usize = 32;
/// How long the edge waits for the device to close a probe after its answer.
const PROBE_LINGER: Duration = Duration::from_secs(5);

/// Probe slots: one pool, and a cap per address.
static PROBES: LazyLock<Handshakes> = LazyLock::new(|| Handshakes {
    all: Arc::new(Semaphore::new(MAX_PROBES)),
    per_addr: PerAddr::new(MAX_PROBES_PER_ADDR, MAX_PROBES),
});

/// The tunnel tokens whose signature verified lately (bounded, see [`Verified`]): a
/// connector's other connections present the same token.
static VERIFIED: LazyLock<Verified> = LazyLock::new(Verified::default);

/// Handshake failures and refusals are logged at most this often: a flood makes them
/// by the thousand.
static HANDSHAKE_LOG: LogLimit = LogLimit::new(10, Duration::from_secs(10));

/// Handshake slots: one pool, and a cap per address.
struct Handshakes {
    all: Arc<Semaphore>,
    per_addr: Arc<PerAddr>,
}

/// A connection's handshake slot, given back when dropped.
struct HandshakeSlot {
    _all: tokio::sync::OwnedSemaphorePermit,
    _addr: AddrSlot,
}

impl Handshakes {
    fn new() -> Handshakes {
        Handshakes {
            all: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            per_addr: PerAddr::new(MAX_HANDSHAKES_PER_ADDR, MAX_HANDSHAKE_ADDRS),
        }
    }

    /// A slot from this pool for `remote`, or why there is none.
    fn take(&self, remote: SocketAddr, what: &str) -> Result<HandshakeSlot, String> {
        let addr = self
            .per_addr
            .admit(remote.ip())
            .ok_or_else(|| format!("too many {what} from this address"))?;
        let all = self
            .all
            .clone()
            .try_acquire_owned()
            .map_err(|_| format!("too many {what} in progress"))?;
        Ok(HandshakeSlot {
            _all: all,
            _addr: addr,
        })
    }

    /// A slot for a handshake from `remote`; `None` (and a rate-limited log line saying
    /// why) when its address or the listener has too many in progress.
    fn admit(&self, remote: SocketAddr) -> Option<HandshakeSlot> {
        let slot = self.take(remote, "handshakes");
        match slot {
            Ok(slot) => Some(slot),
            Err(why) => {
                log_limited!(
                    HANDSHAKE_LOG,
                    Info,
                    "tunnel connection from {remote} refused: {why}"
                );
                None
            }
        }
    }

    fn in_flight(&self) -> usize {
        MAX_HANDSHAKES - self.all.available_permits()
    }
}

/// Accepts QUIC connections until the endpoint closes.
pub(crate) async fn accept_quic(listener: Arc<Listener>, state: Arc<EdgeState>) {
    let handshakes = Handshakes::new();
    while let Some(incoming) = listener.endpoint.accept().await {
        let remote = incoming.remote_address();
        // Under load, a handshake starts only from an address that proved it receives
        // packets sent to it (a spoofed flood cannot), at the cost of one round trip.
        if handshakes.in_flight() >= RETRY_ABOVE && !incoming.remote_address_validated() {
            if incoming.may_retry() {
                let _ = incoming.retry();
            } else {
                incoming.ignore();
            }
            continue;
        }
        let Some(permit) = handshakes.admit(remote) else {
            incoming.refuse();
            continue;
        };
        let state = state.clone();
        let listener = listener.clone();
        let watch = FlowWatch {
            keepalive: listener.keepalive,
            idle: listener.idle,
        };
        // Boxed before the task: captured by the task, the `Incoming` (384 bytes) would
        // stay part of it for the connection's life, though the handshake consumes it.
        let handshake = Box::pin(async move { listener.accept(incoming)?.await });
        tokio::spawn(async move {
            let conn = match tokio::time::timeout(TLS_TIMEOUT, handshake).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    log_limited!(
                        HANDSHAKE_LOG,
                        Info,
                        "tunnel handshake from {remote} failed: {}",
                        describe_close(&e)
                    );
                    return;
                }
                Err(_) => {
                    log_limited!(
                        HANDSHAKE_LOG,
                        Info,
                        "tunnel handshake from {remote} timed out"
                    );
                    return;
                }
            };
            if super::access::is_access_connection(&conn) {
                drop(permit);
                Box::pin(super::access::serve_quic(conn, state)).await;
                return;
            }
            serve_connection(Session::Quic(conn), state, Some(permit), Some(watch)).await;
        });
    }
}

/// Accepts HTTP/2-over-TLS tunnel connections (the fallback) until the task is dropped.
pub(crate) async fn accept_h2(
    listener: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    state: Arc<EdgeState>,
    keepalive: Duration,
    idle: Duration,
) {
    let handshakes = Handshakes::new();
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log_limited!(HANDSHAKE_LOG, Warn, "tunnel accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(permit) = handshakes.admit(remote) else {
            continue; // dropping the socket refuses it
        };
        let _ = tcp.set_nodelay(true);
        let (tls, state) = (tls.clone(), state.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(TLS_TIMEOUT, tls.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    log_limited!(
                        HANDSHAKE_LOG,
                        Info,
                        "tunnel TLS handshake from {remote} failed: {e}"
                    );
                    return;
                }
                Err(_) => {
                    log_limited!(
                        HANDSHAKE_LOG,
                        Info,
                        "tunnel TLS handshake from {remote} timed out"
                    );
                    return;
                }
            };
            let accepted = tokio::time::timeout(
                REGISTER_TIMEOUT,
                crate::transport::h2::accept(stream, remote, keepalive, idle),
            )
            .await;
            match accepted {
                Ok(Ok(session)) => serve_connection(session, state, Some(permit), None).await,
                Ok(Err(e)) => log_limited!(
                    HANDSHAKE_LOG,
                    Info,
                    "HTTP/2 tunnel handshake from {remote} failed: {e}"
                ),
                Err(_) => log_limited!(
                    HANDSHAKE_LOG,
                    Info,
                    "HTTP/2 tunnel handshake from {remote} timed out"
                ),
            }
        });
    }
}

/// The timing of the edge's watch over a connector's QUIC connections (the edge's
/// `keepalive` and `idle-timeout`; see [`watch_flow`]).
#[derive(Clone, Copy)]
struct FlowWatch {
    keepalive: Duration,
    idle: Duration,
}

/// The edge's watch over a registered QUIC connection for its connector, one look of
/// it every sixth of `idle` (from the connection's own task: a task of its own cost
/// every idle connection about half a KiB): notes when a packet from the connector
/// arrived ([`Conn::heard_ms`]), and closes the connection once the connector has sent
/// nothing on any of its connections here for `idle` (its keeper speaks for its quiet
/// siblings; QUIC's own idle timeout is long, see `transport::quic::LONG_IDLE`). The
/// keeper alone is pinged, after [`edge_keepalive`] of silence: a fallback for
/// connectors whose keep-alive exceeds the edge's idle timeout.
struct FlowLook {
    session: quinn::Connection,
    w: FlowWatch,
    /// The connection's packet count at the last look.
    seen: u64,
}

impl FlowWatch {
    /// Time between two looks.
    fn every(self) -> Duration {
        (self.idle / 6).max(Duration::from_secs(1))
    }
}

impl FlowLook {
    /// One look; `true` when it closed the connection.
    fn look(&mut self, conn: &Conn, state: &EdgeState, who: &str) -> bool {
        use std::sync::atomic::Ordering;
        let now = edge_clock_ms();
        let heard = conn.heard();
        if heard != self.seen {
            self.seen = heard;
            conn.heard_ms.store(now, Ordering::Relaxed);
        }
        let quiet =
            Duration::from_millis(now.saturating_sub(state.registry.connector_heard_ms(conn)));
        if quiet >= self.w.idle {
            log::info!(
                "{who}: nothing from the connector for {}s; closing",
                quiet.as_secs()
            );
            self.session.close(0u32.into(), b"timed out");
            return true;
        }
        if quiet >= edge_keepalive(self.w.keepalive, self.w.idle) && state.registry.is_keeper(conn)
        {
            crate::transport::quic::ping(
                &self.session,
                crate::transport::quic::CONN_RECEIVE_WINDOW,
            );
        }
        false
    }
}

/// Runs one tunnel connection: handshake, then its control stream until it ends.
async fn serve_connection(
    session: Session,
    state: Arc<EdgeState>,
    permit: Option<HandshakeSlot>,
    watch: Option<FlowWatch>,
) {
    let remote = session.remote_addr();
    // Boxed, here and for the rare branches of `serve_control`: a future held across an
    // await is part of the connection's task for as long as the connection lives, and
    // idle connections are most of an edge's memory. Registration's state is freed
    // once it is done instead of sizing every idle connection's task.
    let registered = Box::pin(register_in_time(&session, &state, permit)).await;
    let (conn, control, credential, members) = match registered {
        Some(Admitted::Tunnel(r)) => r,
        Some(Admitted::Probe(probe)) => return Box::pin(hold_probe(&session, &state, probe)).await,
        None => return,
    };
    let who = describe(&conn, remote, session.protocol());
    log::info!("{who}: registered");
    // A device's connection takes remote changes; those pending for it go now.
    let mut mailbox = None;
    if let (Some(id), Some(inventory)) = (&conn.device, state.fleet.get()) {
        mailbox = Some(inventory.rollouts().attach(id, session.id()).await);
    }
    let flow = match (&session, watch) {
        (Session::Quic(c), Some(w)) => Some(FlowLook {
            session: c.clone(),
            w,
            seen: conn.heard(),
        }),
        _ => None,
    };
    let ended = serve_control(
        &session, &state, &conn, control, credential, mailbox, members, flow, &who,
    )
    .await;
    state.registry.remove(&conn);
    session.close(&wire::bounded_reason(ended.close_reason()));
    log::info!("{who}: disconnected: {ended}");
    if let (Some(id), Some(inventory)) = (&conn.device, state.fleet.get()) {
        inventory.disconnected(id, &conn);
    }
}

/// Why a registered tunnel connection ended: the end of its `disconnected:` log line.
#[derive(Debug)]
enum Ended {
    /// The edge closed it (token expired, tunnel revoked), telling the connector why.
    ByEdge(String),
    /// A reply on the control stream could not be written.
    ControlLost,
    /// The connector sent a second registration.
    RegisteredTwice,
    /// The connector closed the control stream.
    ControlClosed,
    /// The control stream carried something unreadable.
    Control(wire::WireError),
    /// The connection closed, for the transport's reason.
    Closed(String),
}

impl Ended {
    /// The reason the connection is closed with.
    fn close_reason(&self) -> String {
        match self {
            Ended::ByEdge(reason) => reason.clone(),
            _ => "bye".to_string(),
        }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::ByEdge(reason) => write!(f, "closed by the edge: {reason}"),
            Ended::ControlLost => f.write_str("control stream lost"),
            Ended::RegisteredTwice => f.write_str("registered twice"),
            Ended::ControlClosed => f.write_str("control stream closed"),
            Ended::Control(e) => write!(f, "control stream: {e}"),
            Ended::Closed(reason) => f.write_str(reason),
        }
    }
}

/// A NAT probe admitted: hold the connection silent for `after`, then answer.
struct Probe {
    after_ms: u32,
    control: TunnelStream,
    _slot: HandshakeSlot,
}

/// What a connection's first message made of it.
enum Admitted {
    /// A registered tunnel connection.
    Tunnel(Registered),
    /// A NAT probe.
    Probe(Probe),
}

/// Admits a NAT probe of `after_ms` on `session`, or says why not.
fn admit_probe(
    session: &Session,
    state: &EdgeState,
    after_ms: u32,
) -> Result<HandshakeSlot, String> {
    check_probe(after_ms, matches!(session, Session::H2(_)))?;
    if *state.going_away.borrow() {
        return Err("this edge is shutting down".into());
    }
    PROBES.take(session.remote_addr(), "probes")
}

/// Whether a probe of `after_ms` may be held on a connection (`h2`: over HTTP/2).
fn check_probe(after_ms: u32, h2: bool) -> Result<(), String> {
    if after_ms > MAX_PROBE_MS {
        return Err(format!(
            "probe of {after_ms} ms refused: this edge holds probes {MAX_PROBE_MS} ms at most"
        ));
    }
    if !h2 {
        return Err("probes run over HTTP/2 only".into());
    }
    Ok(())
}

/// Holds a NAT probe: nothing either way for its time (this end's pings are off too),
/// then `ProbeReply`; the device closes it (or the edge after [`PROBE_LINGER`]).
async fn hold_probe(session: &Session, state: &EdgeState, probe: Probe) {
    if let Session::H2(h) = session {
        h.set_quiet(true);
    }
    let Probe {
        after_ms, control, ..
    } = probe;
    // The receiving half stays open (dropping it could send a reset).
    let TunnelStream {
        mut send,
        recv: _recv,
    } = control;
    let mut going_away = state.going_away.subscribe();
    let after = Duration::from_millis(u64::from(after_ms));
    tokio::select! {
        () = tokio::time::sleep(after) => {
            let reply = EdgeMsg::ProbeReply { after_ms };
            if wire::write_control(&mut send, &reply).await.is_ok() {
                let _ = tokio::time::timeout(PROBE_LINGER, session.closed()).await;
            }
            log::debug!("NAT probe from {}: answered after {after_ms} ms", session.remote_addr());
        }
        _ = session.closed() => {}
        _ = async { let _ = going_away.wait_for(|g| *g).await; } => {}
    }
    session.close("probe done");
}

/// Registers `session` within [`REGISTER_TIMEOUT`], then gives back its handshake slot.
/// `None`: refused or too slow (logged, and the connection closed).
async fn register_in_time(
    session: &Session,
    state: &Arc<EdgeState>,
    permit: Option<HandshakeSlot>,
) -> Option<Admitted> {
    let remote = session.remote_addr();
    let registered = tokio::time::timeout(REGISTER_TIMEOUT, register(session, state)).await;
    drop(permit);
    match registered {
        Ok(Ok(x)) => Some(x),
        Ok(Err(e)) => {
            log_limited!(
                HANDSHAKE_LOG,
                Warn,
                "tunnel connection from {remote} refused: {e}"
            );
            session.close(&wire::bounded_reason(e));
            None
        }
        Err(_) => {
            log_limited!(
                HANDSHAKE_LOG,
                Warn,
                "tunnel connection from {remote} did not register in time"
            );
            session.close("registration timed out");
            None
        }
    }
}

/// How a connection's log lines name it.
fn describe(conn: &Conn, remote: SocketAddr, protocol: impl std::fmt::Display) -> String {
    let mut connector = hex(&conn.connector_id);
    connector.truncate(8);
    let kind = if conn.device.is_some() {
        "device"
    } else {
        "tunnel"
    };
    format!(
        "{kind} {} ({}) connector {connector} #{} from {} over {}",
        conn.tunnel_name,
        hex(&conn.tunnel_id),
        conn.index,
        remote,
        protocol
    )
}

/// Reads the connector's next control frame; hands the stream back with it.
/// A health report comes with its cost tail when the connector appended one.
async fn read_next(
    mut recv: RecvHalf,
) -> (
    RecvHalf,
    Result<ConnectorMsg, wire::WireError>,
    Option<wire::HealthCostTail>,
) {
    match wire::read_connector_msg(&mut recv).await {
        Ok((msg, cost)) => (recv, Ok(msg), cost),
        Err(e) => (recv, Err(e), None),
    }
}

/// Serves a registered connection's control stream until the connection ends: the
/// connector's messages, its token's expiry (a device's credential: its renewal),
/// revocations by a reload, and the edge's own shutdown; the cluster's member list
/// when it changes, to a connector that follows it; on QUIC, the connector's flow
/// (`flow`, see [`FlowLook`]).
#[allow(clippy::too_many_arguments)]
async fn serve_control(
    session: &Session,
    state: &Arc<EdgeState>,
    conn: &Arc<Conn>,
    control: TunnelStream,
    mut credential: Option<DeviceClaims>,
    mailbox: Option<(tokio::sync::mpsc::Receiver<EdgeMsg>, Mailbox)>,
    mut members: Option<MembersRx>,
    mut flow: Option<FlowLook>,
    who: &str,
) -> Ended {
    // Set when the connector asks for changes (`FollowMembers`): the receiver has seen
    // the list told at registration, so a change since then is sent at once.
    let mut following = false;
    let (mut changes, _mailbox) = match mailbox {
        Some((rx, guard)) => (Some(rx), Some(guard)),
        None => (None, None),
    };
    let mut going_away = state.going_away.subscribe();
    // Registration read the revocations before this subscription: look once more.
    let mut live = state.live.subscribe();
    live.mark_changed();
    let mut live_open = true;
    // A device's credential renewed on this connection moves its expiry.
    let mut expires = conn.claims.expires;
    let expiry = tokio::time::sleep(until_expiry(expires).min(EXPIRY_RECHECK));
    tokio::pin!(expiry);
    let renewal = tokio::time::sleep(until_renewal(credential.as_ref()));
    tokio::pin!(renewal);
    let look_every = flow.as_ref().map_or(EXPIRY_RECHECK, |f| f.w.every());
    let next_look = tokio::time::sleep(look_every);
    tokio::pin!(next_look);
    // One read at a time lives across the loop's turns: a frame half read when another
    // branch fires is finished on the next turn, never dropped (which would put the
    // stream out of step with the connector).
    let TunnelStream { send, recv } = control;
    let mut send = send;
    let mut reading = Box::pin(read_next(recv));
    loop {
        tokio::select! {
            () = &mut expiry => {
                // The timer may fire a little early (clock steps): look at the clock.
                let left = until_expiry(expires);
                if !left.is_zero() {
                    expiry.as_mut().reset(tokio::time::Instant::now() + left.min(EXPIRY_RECHECK));
                    continue;
                }
                return Box::pin(expire(session, conn, expires, &mut send)).await;
            }
            () = &mut renewal, if credential.is_some() => {
                let left = until_renewal(credential.as_ref());
                if left.is_zero() {
                    match Box::pin(renew(state, conn, credential.as_ref(), &mut send, who)).await {
                        Ok(Some(renewed)) => {
                            expires = renewed.expires;
                            credential = Some(renewed);
                            expiry.as_mut().reset(
                                tokio::time::Instant::now()
                                    + until_expiry(expires).min(EXPIRY_RECHECK),
                            );
                        }
                        // No signing key: the credential runs out at its expiry.
                        Ok(None) => credential = None,
                        Err(ended) => return ended,
                    }
                }
                renewal
                    .as_mut()
                    .reset(tokio::time::Instant::now() + until_renewal(credential.as_ref()));
            }
            changed = live.changed(), if live_open => {
                if changed.is_err() {
                    live_open = false;
                    continue;
                }
                if live.borrow_and_update().revoked.contains(&conn.tunnel_id) {
                    return Ended::ByEdge(revoked_reason(&conn.tunnel_name, &conn.tunnel_id));
                }
            }
            Some(change) = async { match changes.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                if wire::write_control(&mut send, &change).await.is_err() {
                    return Ended::ControlLost;
                }
            }
            Some(list) = async { match members.as_mut() { Some(rx) if following => next_members(rx).await, _ => std::future::pending().await } } => {
                let msg = EdgeMsg::Members(MembersTail { members: list });
                if wire::write_control(&mut send, &msg).await.is_err() {
                    return Ended::ControlLost;
                }
            }
            (recv, msg, cost) = &mut reading => {
                reading = Box::pin(read_next(recv));
                if matches!(msg, Ok(ConnectorMsg::FollowMembers)) {
                    following = members.is_some();
                    continue;
                }
                if let Some(ended) = Box::pin(on_message(msg, cost, state, conn, expires, &mut send, who)).await {
                    return ended;
                }
            }
            () = &mut next_look, if flow.is_some() => {
                if flow.as_mut().is_some_and(|f| f.look(conn, state, who)) {
                    return Ended::Closed(session.closed().await);
                }
                next_look.as_mut().reset(tokio::time::Instant::now() + look_every);
            }
            reason = session.closed() => return Ended::Closed(reason),
            _ = async { let _ = going_away.wait_for(|g| *g).await; } => {
                let msg = EdgeMsg::GoAway { reason: "edge shutting down".into() };
                let _ = wire::write_control(&mut send, &msg).await;
                // Keep serving streams in flight until the connector leaves or the
                // edge's own shutdown closes the endpoint.
                conn.set_draining();
                return Ended::Closed(session.closed().await);
            }
        }
    }
}

/// The member list once it changes; never when the list's sender is gone.
async fn next_members(rx: &mut MembersRx) -> Option<Vec<String>> {
    match rx.changed().await {
        Ok(()) => Some(rx.borrow_and_update().clone()),
        Err(_) => std::future::pending().await,
    }
}

/// Time until a device's credential is due for renewal on its connection; a long wait
/// (read again after) without one.
fn until_renewal(credential: Option<&DeviceClaims>) -> Duration {
    let Some(c) = credential else {
        return EXPIRY_RECHECK;
    };
    let at = enroll::renewal_time(c.issued, c.expires);
    Duration::from_secs(at.saturating_sub(super::token::now_unix())).min(EXPIRY_RECHECK)
}

/// Sends a device a renewed credential (`EdgeMsg::Credential`) and records its
/// expiry; `Ok(None)` when this edge cannot issue one.
async fn renew(
    state: &EdgeState,
    conn: &Conn,
    old: Option<&DeviceClaims>,
    send: &mut SendHalf,
    who: &str,
) -> Result<Option<DeviceClaims>, Ended> {
    let (Some(old), Some(enroller)) = (old, state.enroller.get()) else {
        return Ok(None);
    };
    let Some((claims, text)) = enroller.renew(old) else {
        return Ok(None);
    };
    let msg = EdgeMsg::Credential { credential: text };
    if wire::write_control(send, &msg).await.is_err() {
        return Err(Ended::ControlLost);
    }
    if let (Some(id), Some(inventory)) = (&conn.device, state.fleet.get()) {
        inventory.renewed(id, claims.expires);
    }
    log::info!(
        "{who}: credential renewed, expires in {}s",
        claims.expires.saturating_sub(super::token::now_unix())
    );
    Ok(Some(claims))
}

/// The connection's token (or device credential) expired at `expires`: the connector
/// is told why and leaves on its own; the edge closes after a moment either way
/// (closing at once could overtake the message).
async fn expire(session: &Session, conn: &Conn, expires: u64, send: &mut SendHalf) -> Ended {
    let reason = expired_reason(conn, expires);
    let msg = EdgeMsg::GoAway {
        reason: wire::bounded_reason(reason.clone()),
    };
    conn.set_draining();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if wire::write_control(send, &msg).await.is_ok() {
            session.closed().await;
        }
    })
    .await;
    Ended::ByEdge(reason)
}

/// Acts on one message from the connector; `Some` when the connection ends. `expires`:
/// when the connection's token or credential expires.
async fn on_message(
    msg: Result<ConnectorMsg, wire::WireError>,
    cost: Option<wire::HealthCostTail>,
    state: &EdgeState,
    conn: &Arc<Conn>,
    expires: u64,
    send: &mut SendHalf,
    who: &str,
) -> Option<Ended> {
    match msg {
        Ok(ConnectorMsg::Draining) => {
            conn.set_draining();
            log::info!("{who}: draining");
            None
        }
        Ok(ConnectorMsg::UpdateRules { .. }) if until_expiry(expires).is_zero() => {
            let reason = expired_reason(conn, expires);
            log::warn!("{who}: rule table refused: {reason}");
            let reply = EdgeMsg::Refused {
                reason: wire::bounded_reason(reason.clone()),
                permanent: true,
            };
            let _ = wire::write_control(send, &reply).await;
            Some(Ended::ByEdge(reason))
        }
        Ok(ConnectorMsg::UpdateRules { generation, rules }) => {
            let reply = match Rules::compile(generation, &rules, &conn.claims)
                .and_then(|r| state.registry.update_rules(conn, r))
            {
                Ok(()) => {
                    log::info!("{who}: rule table {generation} applied");
                    EdgeMsg::RulesAccepted { generation }
                }
                Err(reason) => {
                    log::warn!("{who}: rule table {generation} refused: {reason}");
                    EdgeMsg::Refused {
                        reason: wire::bounded_reason(reason),
                        permanent: true,
                    }
                }
            };
            match wire::write_control(send, &reply).await {
                Ok(_) => None,
                Err(_) => Some(Ended::ControlLost),
            }
        }
        Ok(ConnectorMsg::Register(_)) => Some(Ended::RegisteredTwice),
        // Only as the first message of a connection of its own.
        Ok(ConnectorMsg::Probe { .. }) => Some(Ended::Control(wire::WireError::Io(
            std::io::Error::other("a probe on a registered connection"),
        ))),
        Ok(ConnectorMsg::Health(health)) => {
            // Asked of enrolled devices only; a tunnel token's connector has no record.
            if let (Some(id), Some(inventory)) = (&conn.device, state.fleet.get()) {
                inventory.health(id, health, cost);
            }
            None
        }
        Ok(ConnectorMsg::Fetch { version, offset }) => {
            let arch = conn
                .device
                .as_ref()
                .and_then(|id| state.fleet.get()?.get(id))
                .map(|v| v.record.arch);
            let releases = state.releases.get().cloned();
            super::fleet::release::serve_fetch(
                releases,
                conn.clone(),
                arch,
                version,
                offset,
                who.to_string(),
            );
            None
        }
        Ok(ConnectorMsg::Change(report)) => {
            if let (Some(id), Some(inventory)) = (&conn.device, state.fleet.get()) {
                on_change(inventory, id, &report, who).await;
            }
            None
        }
        Ok(ConnectorMsg::DataCap(report)) => {
            super::cap::on_report(&state.registry, conn, &report, who);
            None
        }
        // Taken by `serve_control` before it comes here.
        Ok(ConnectorMsg::FollowMembers) => None,
        Err(wire::WireError::Closed) => Some(Ended::ControlClosed),
        Err(e) => Some(Ended::Control(e)),
    }
}

/// A device's report of a remote change: its state in the store, its config digest in
/// the inventory, and one log line.
async fn on_change(
    inventory: &super::fleet::Inventory,
    id: &str,
    report: &wire::ChangeReport,
    who: &str,
) {
    inventory.config_digest(id, &report.config_digest);
    let kind = super::fleet::store::kind_name(report.kind);
    let change = wire::printable(&wire::bounded_reason(report.id.clone()));
    match inventory.rollouts().report(id, report).await {
        Ok(Some(state)) => match state.reason() {
            Some(why) => log::warn!("{who}: {kind} {change} {}: {why}", state.word()),
            None => log::info!("{who}: {kind} {change} {}", state.word()),
        },
        Ok(None) => log::info!("{who}: report of an unknown {kind} change {change} ignored"),
        Err(e) => log::error!("{who}: report of {kind} {change} not recorded: {e}"),
    }
}

/// What the edge appends after a device's `RegisteredTail`: the keys its remote
/// changes are signed with, for the device to pin.
fn keys_tail(state: &EdgeState, fleet: &str) -> KeysTail {
    let signing = state.enroller.get().and_then(|e| e.signing_key());
    KeysTail {
        config_key: signing.and_then(|k| super::fleet::push::fleet_config_public(k, fleet)),
        release_key: state.releases.get().and_then(|r| r.key),
    }
}

/// Longest single wait for a token's expiry; the clock is read again after it.
const EXPIRY_RECHECK: Duration = Duration::from_secs(3600);

/// Time until a token that expires at `expires` (Unix seconds) has expired; zero once
/// it has (a token is valid up to, not including, its expiry second).
fn until_expiry(expires: u64) -> Duration {
    let now = super::token::now_unix();
    Duration::from_secs(expires.saturating_sub(now))
}

/// Why a connection whose token (or device credential) expired at `expires` is closed,
/// for the connector's log and the edge's.
fn expired_reason(conn: &Conn, expires: u64) -> String {
    let ago = super::token::now_unix().saturating_sub(expires);
    match &conn.device {
        Some(id) => format!(
            "the credential of device {id} expired {ago} seconds ago: the device enrols \
             again with its enrolment key"
        ),
        None => format!(
            "tunnel token of tunnel {} expired {ago} seconds ago: issue a new token \
             (mailslot-edge token) and update the device",
            conn.tunnel_name
        ),
    }
}

/// Why a revoked tunnel is refused, for the connector's log and the edge's.
fn revoked_reason(tunnel: &str, id: &[u8; 16]) -> String {
    format!(
        "tunnel token refused: tunnel {tunnel} ({}) is revoked on this edge",
        hex(id)
    )
}

/// A registered connection: its registry entry, its control stream, for a device its
/// credential's claims, and the member list it was told.
type Registered = (
    Arc<Conn>,
    TunnelStream,
    Option<DeviceClaims>,
    Option<MembersRx>,
);

/// A connection registered, and for a device its credential and what to append to
/// `Registered`.
type Admission = (Arc<Conn>, Option<(DeviceClaims, RegisteredTail)>);

/// What a registration was admitted as: the tunnel's grant, and for a device its
/// credential and what to append to `Registered`.
struct Grant {
    claims: super::token::TunnelClaims,
    device: Option<(DeviceClaims, RegisteredTail)>,
}

/// Admits a registration by its tunnel token, or by the device's key and credential.
async fn admit(
    state: &EdgeState,
    live: &Live,
    nonce: &[u8; 32],
    reg: &Register,
    device: Option<&DeviceTail>,
    remote: SocketAddr,
) -> Result<Grant, String> {
    let Some(tail) = device else {
        let claims = verify_tunnel_seen(
            &reg.token,
            &live.verify_keys,
            super::token::now_unix(),
            &VERIFIED,
        )
        .map_err(|e| format!("tunnel token refused: {e}"))?;
        return Ok(Grant {
            claims,
            device: None,
        });
    };
    let (Some(inventory), Some(enroller)) = (state.fleet.get(), state.enroller.get()) else {
        return Err("this edge admits no enrolled devices (it keeps no fleet store)".into());
    };
    let admitted = enroller
        .admit(inventory, &live.verify_keys, nonce, reg, tail, remote)
        .await?;
    if admitted.tail.credential.is_some() {
        log::info!(
            "device {} of fleet {} from {remote}: credential issued, expires in {}s",
            admitted.credential.device,
            admitted.credential.fleet,
            admitted
                .credential
                .expires
                .saturating_sub(super::token::now_unix())
        );
    }
    Ok(Grant {
        claims: admitted.claims,
        device: Some((admitted.credential, admitted.tail)),
    })
}

async fn register(session: &Session, state: &Arc<EdgeState>) -> Result<Admitted, String> {
    let mut control = session
        .open_stream()
        .await
        .map_err(|e| format!("no control stream: {e}"))?;
    let nonce: [u8; 32] = crate::util::random_bytes();
    // The clock tail: the edge's time, and that it understands `DataCap` reports.
    let clock = HelloClockTail {
        unix_secs: super::token::now_unix(),
        data_cap: true,
    };
    // The probe tail: NAT probes are held over HTTP/2 (QUIC's own keep-alives would
    // break the silence).
    let probes = HelloProbeTail {
        probe_max_ms: match session {
            Session::H2(_) => MAX_PROBE_MS,
            Session::Quic(_) => 0,
        },
    };
    let hello = EdgeMsg::Hello {
        version: PROTOCOL_VERSION,
        edge: state.name.clone(),
    };
    wire::write_control(
        &mut control.send,
        &(&hello, &HelloTail { nonce }, &clock, &probes),
    )
    .await
    .map_err(|e| e.to_string())?;
    let (msg, tail, device): (ConnectorMsg, Option<RegisterTail>, Option<DeviceTail>) =
        wire::read_control_with_tails(&mut control.recv)
            .await
            .map_err(|e| e.to_string())?;
    let reg = match msg {
        ConnectorMsg::Register(reg) => reg,
        ConnectorMsg::Probe { after_ms } => {
            return match admit_probe(session, state, after_ms) {
                Ok(slot) => Ok(Admitted::Probe(Probe {
                    after_ms,
                    control,
                    _slot: slot,
                })),
                Err(reason) => {
                    let msg = EdgeMsg::Refused {
                        reason: wire::bounded_reason(reason.clone()),
                        permanent: false,
                    };
                    let _ = wire::write_control(&mut control.send, &msg).await;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut control.send).await;
                    Err(reason)
                }
            };
        }
        _ => return Err("first message was not a registration".into()),
    };
    let outcome: Result<Admission, (String, bool)> = async {
        if *state.going_away.borrow() {
            // Registering here would only earn a GoAway: send the connector elsewhere.
            return Err(("this edge is shutting down; try another edge".into(), false));
        }
        if reg.version != PROTOCOL_VERSION {
            let reason = if reg.version < PROTOCOL_VERSION {
                format!(
                    "this edge requires tunnel protocol {PROTOCOL_VERSION}; the connector speaks {}: update mailslot",
                    reg.version
                )
            } else {
                format!(
                    "the connector speaks tunnel protocol {}, this edge only {PROTOCOL_VERSION}: update the edge",
                    reg.version
                )
            };
            return Err((reason, true));
        }
        let live = state.live();
        let grant = admit(state, &live, &nonce, &reg, device.as_ref(), session.remote_addr())
            .await
            .map_err(|e| {
                // A store that does not answer (the cluster's Redis down) is no verdict.
                let permanent = !super::fleet::store::is_store_failure(&e);
                (e, permanent)
            })?;
        let claims = grant.claims;
        if live.revoked.contains(&claims.id) {
            return Err((revoked_reason(&claims.tunnel, &claims.id), true));
        }
        let rules = Rules::compile(reg.rules_generation, &reg.rules, &claims).map_err(|e| (e, true))?;
        let conn = Arc::new(Conn {
            session: session.clone(),
            tunnel_id: claims.id,
            tunnel_name: claims.tunnel.clone(),
            connector_id: reg.connector_id,
            // All zeros: a connector without an instance id that sent the tail for
            // the device tail after it.
            instance: tail.map(|t| t.instance).filter(|i| *i != [0; 16]),
            index: reg.conn_index,
            remote: session.remote_addr(),
            rules: std::sync::Mutex::new(Arc::new(rules)),
            draining: false.into(),
            streams: 0.into(),
            claims,
            device: grant.device.as_ref().map(|(c, _)| c.device.clone()),
            heard_ms: super::registry::edge_clock_ms().into(),
        });
        // One tunnel per hostname across a cluster, as on this edge.
        if let Some(cluster) = state.cluster.get() {
            if !state.registry.holds(&conn.tunnel_id) {
                cluster
                    .claim(&conn.tunnel_id, &conn.hostnames())
                    .await
                    .map_err(|e| (e, false))?;
            }
        }
        // First, so that a dead process's connections do not count against the limits.
        state.registry.supersede(&conn);
        state.registry.add(conn.clone()).map_err(|e| (e, false))?;
        // A revocation made while this registration was being admitted closed the
        // connections registered then, not this one.
        if let (Some(id), Some(inventory)) = (&conn.device, state.fleet.get()) {
            if inventory.is_revoked(id) {
                state.registry.remove(&conn);
                return Err((enroll::revoked(id), true));
            }
        }
        Ok((conn, grant.device))
    }
    .await;
    match outcome {
        Ok((conn, device)) => {
            let msg = EdgeMsg::Registered {
                tunnel_id: conn.tunnel_id,
                edge: state.name.clone(),
            };
            let mut members = state.cluster.get().and_then(|c| c.members());
            let written = match (&device, members.as_mut()) {
                (Some((claims, tail)), None) => {
                    let keys = keys_tail(state, &claims.fleet);
                    wire::write_control_with_tails(&mut control.send, &msg, tail, &keys).await
                }
                (None, None) => wire::write_control(&mut control.send, &msg).await,
                // The members go after both tails: empty ones for a tunnel token.
                (device, Some(rx)) => {
                    let told = MembersTail {
                        members: rx.borrow_and_update().clone(),
                    };
                    let (tail, keys) = match device {
                        Some((claims, tail)) => (tail.clone(), keys_tail(state, &claims.fleet)),
                        None => (
                            RegisteredTail {
                                device_id: String::new(),
                                credential: None,
                                health_every_secs: 0,
                            },
                            KeysTail::default(),
                        ),
                    };
                    wire::write_control(&mut control.send, &(&msg, &tail, &keys, &told)).await
                }
            };
            if let Err(e) = written {
                state.registry.remove(&conn);
                return Err(e.to_string());
            }
            Ok(Admitted::Tunnel((
                conn,
                control,
                device.map(|(c, _)| c),
                members,
            )))
        }
        Err((reason, permanent)) => {
            let msg = EdgeMsg::Refused {
                reason: wire::bounded_reason(reason.clone()),
                permanent,
            };
            let _ = wire::write_control(&mut control.send, &msg).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut control.send).await;
            // Give the refusal a moment to reach the connector before closing.
            let _ = tokio::time::timeout(Duration::from_secs(2), session.closed()).await;
            Err(reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe needs no credential, so what it may hold is bounded: its silence, and
    /// how many are held at once, per address and in all.
    #[test]
    fn hostile_probes_are_refused() {
        assert!(check_probe(MAX_PROBE_MS, true).is_ok());
        assert!(check_probe(0, true).is_ok());
        let e = check_probe(MAX_PROBE_MS + 1, true).unwrap_err();
        assert!(e.contains("at most"), "{e}");
        assert!(check_probe(u32::MAX, true).is_err());
        assert!(
            check_probe(1000, false).is_err(),
            "QUIC pings would break the silence"
        );

        let pool = Handshakes {
            all: Arc::new(Semaphore::new(3)),
            per_addr: PerAddr::new(2, 3),
        };
        let a: SocketAddr = "100.64.0.2:40000".parse().unwrap();
        let b: SocketAddr = "100.64.0.3:40000".parse().unwrap();
        let c: SocketAddr = "100.64.0.4:40000".parse().unwrap();
        let a1 = pool.take(a, "probes").unwrap();
        let _a2 = pool.take(a, "probes").unwrap();
        let e = pool.take(a, "probes").err().unwrap();
        assert_eq!(e, "too many probes from this address");
        let _b1 = pool.take(b, "probes").unwrap();
        let e = pool.take(c, "probes").err().unwrap();
        assert_eq!(e, "too many probes in progress");
        drop(a1);
        assert!(
            pool.take(c, "probes").is_ok(),
            "a slot comes back when its probe ends"
        );
    }

    #[test]
    fn end_reasons_read_as_the_log_lines_say() {
        let by_edge = Ended::ByEdge("tunnel token refused: revoked".into());
        assert_eq!(
            by_edge.to_string(),
            "closed by the edge: tunnel token refused: revoked"
        );
        assert_eq!(by_edge.close_reason(), "tunnel token refused: revoked");
        assert_eq!(Ended::ControlLost.to_string(), "control stream lost");
        assert_eq!(Ended::RegisteredTwice.to_string(), "registered twice");
        assert_eq!(Ended::ControlClosed.to_string(), "control stream closed");
        let closed = Ended::Closed("closed by peer: bye".into());
        assert_eq!(closed.to_string(), "closed by peer: bye");
        assert_eq!(closed.close_reason(), "bye");
    }
}
