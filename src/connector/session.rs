//! One registered connection: the control handshake (hello, register, registered),
//! serving the streams the edge opens, the probes that find a better way (its own edge
//! again, QUIC again) and the drain of a session that is replaced or told to go.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};

use super::active::ActiveConfig;
use super::dial::{self, Dial};
use super::handshake::{self, Handshake};
use super::slot::{self, Auto};
use super::{origin, runtime_for, set_slot, wait_true, Shared, SlotState};
use crate::transport::quic::DEVICE_CONN_RECEIVE_WINDOW;
use crate::transport::Session;
use crate::util::{hex, lock, AbortOnDrop};
use crate::wire::{self, ConnectorMsg, EdgeMsg};

/// Time allowed for the control handshake after the transport is up.
pub(super) const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection attempt or a connection failed.
#[derive(Debug)]
pub(super) struct Failure {
    pub(super) message: String,
    /// The edge refused the tunnel for a reason retrying cannot change.
    pub(super) refused: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            refused: false,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A connection the edge accepted: its control stream and what it said.
pub(super) struct Registered {
    control: crate::transport::TunnelStream,
    edge_name: String,
    generation: u32,
    /// Health reports asked for, seconds between them; 0: none.
    health_every_secs: u32,
    /// The edge understands data cap reports.
    data_cap: bool,
    /// The edge tells the cluster's members: follow their changes.
    members: bool,
    /// The edge holds NAT probes, this long at most.
    probes: Option<wire::HelloProbeTail>,
    /// The edge entry it was dialed through.
    entry: usize,
}

/// The control handshake: hello, register, registered. Marks the slot connected.
pub(super) async fn register(
    shared: &Arc<Shared>,
    slot: usize,
    session: &Session,
    rt: Arc<ActiveConfig>,
    entry: usize,
) -> Result<Registered, Failure> {
    let addr = session.remote_addr();
    let mut control = tokio::time::timeout(REGISTER_TIMEOUT, session.accept_stream())
        .await
        .map_err(|_| format!("edge {addr} opened no control stream"))?
        .map_err(|e| format!("edge {addr}: {e}"))?;
    let shook = handshake::handshake(
        shared,
        slot,
        &rt,
        addr,
        &mut control.recv,
        &mut control.send,
    )
    .await?;
    let Handshake {
        edge_name,
        tunnel_id,
        health_every_secs,
        data_cap,
        members,
        probes,
    } = shook;
    if let Some(m) = &members {
        super::told_at_registration(shared, slot, entry, addr, &m.members);
    }
    let generation = rt.generation;
    let device = match (&shared.device, rt.config.enroll_key()) {
        (Some(d), Some(_)) => format!("device {}, ", d.id()),
        _ => String::new(),
    };
    log::info!(
        "connection {slot} registered: {device}tunnel {} ({}) at edge {edge_name} ({addr}) over {}",
        rt.config.tunnel,
        hex(&tunnel_id),
        session.protocol()
    );
    super::upgrade::registered(shared);
    set_slot(
        shared,
        slot,
        SlotState {
            connected: true,
            edge: Some(addr),
            entry: Some(entry),
            protocol: Some(session.protocol()),
        },
    );
    note_registered(shared, generation);
    // A quiet sibling on this flow may hold a connection its edge no longer knows (the
    // edge restarted while this slot was away, and the keeper's poke at its loss went
    // out before the edge was back): asked for an answer now, it hears a reset at once
    // instead of at its own rare keep-alive. Registrations are rare: a ping each.
    for s in siblings(shared, slot) {
        poke(&s);
    }
    Ok(Registered {
        control,
        edge_name,
        generation,
        health_every_secs,
        data_cap,
        members: members.is_some(),
        probes,
        entry,
    })
}

/// An edge registered (or accepted the rules of) config `generation`: a pushed
/// config's trial waits for it.
fn note_registered(shared: &Shared, generation: u32) {
    shared.registered.send_if_modified(|g| {
        let newer = generation > *g;
        if newer {
            *g = generation;
        }
        newer
    });
}

/// Why a registered connection ended in an orderly way.
pub(super) enum Ended {
    /// The edge asked its connectors to go elsewhere.
    GoAway(GoAway),
    /// A probe found a better way: serve this registered connection instead.
    Moved(Box<Moved>),
}

/// The orderly end of a registered connection: which edge is going away, and why.
#[derive(Debug)]
pub(super) struct GoAway(String);

impl GoAway {
    pub(super) fn new(why: &str) -> GoAway {
        GoAway(why.to_string())
    }
}

impl std::fmt::Display for GoAway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A registered connection found by a probe; `dial` is set when it is to another edge.
pub(super) struct Moved {
    pub(super) session: Session,
    pub(super) reg: Registered,
    pub(super) dial: Option<Dial>,
}

/// What a registered connection tries now and then.
#[derive(Clone, Copy)]
pub(super) enum Probe<'a> {
    /// On the HTTP/2 fallback: QUIC to the same edge.
    Quic(&'a Dial),
    /// Away from the slot's own edge entry: that entry.
    Home(usize),
}

/// A QUIC connection to the probed edge, registered; `None` while QUIC still fails.
async fn probe_quic(shared: &Arc<Shared>, slot: usize, dial: &Dial) -> Option<Moved> {
    let session = dial.quic(shared, slot::AUTO_QUIC_WAIT).await.ok()?;
    let rt = shared.current.borrow().clone();
    match register(shared, slot, &session, rt, dial.entry).await {
        Ok(reg) => Some(Moved {
            session,
            reg,
            dial: None,
        }),
        Err(e) => {
            log::debug!("connection {slot}: QUIC answers but registering failed: {e}");
            session.close("registration failed");
            None
        }
    }
}

/// A registered connection to edge entry `home`, opened as `auto` plans (a slot on
/// the HTTP/2 fallback moving to its share of the members stays on HTTP/2, and probes
/// QUIC there); `None` while it does not answer.
pub(super) async fn probe_home(
    shared: &Arc<Shared>,
    slot: usize,
    home: usize,
    mut auto: Auto,
) -> Option<Moved> {
    let dial = dial::prepare(shared, slot, home).await.ok()?;
    let rt = shared.current.borrow().clone();
    let session =
        match dial::open_session(shared, &dial, slot, rt.config.protocol, &mut auto, false).await {
            Ok(s) => s,
            Err(e) => {
                log::debug!("connection {slot}: its own edge is still unreachable: {e}");
                return None;
            }
        };
    match register(shared, slot, &session, rt, home).await {
        Ok(reg) => Some(Moved {
            session,
            reg,
            dial: Some(dial),
        }),
        Err(e) => {
            log::debug!("connection {slot}: its own edge answers but registering failed: {e}");
            session.close("registration failed");
            None
        }
    }
}

/// When to probe, as [`super::slot::Slot::probe`] decided.
pub(super) type ProbeAt = (Instant, Duration);

/// Serves a registered session until it ends; an orderly end (or a move) drains it in
/// the background, a loss closes it.
pub(super) async fn serve_session(
    shared: &Arc<Shared>,
    slot: usize,
    session: Session,
    reg: Registered,
    probe: Option<(Probe<'_>, ProbeAt)>,
    epoch: u64,
) -> Result<Ended, String> {
    let streams = Arc::new(SessionStreams::default());
    let result = serve_registered(shared, slot, &session, reg, probe, &streams, epoch).await;
    match &result {
        // Orderly: new streams go elsewhere; those in flight finish here first.
        Ok(_) => {
            let grace =
                Duration::from_secs(u64::from(shared.current.borrow().config.grace_period_secs));
            drain_in_background(shared.clone(), session, streams, grace);
        }
        Err(_) => session.close("connection ended"),
    }
    result
}

type Probing<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Moved>> + Send + 'a>>;

async fn serve_registered(
    shared: &Arc<Shared>,
    slot: usize,
    session: &Session,
    reg: Registered,
    probe: Option<(Probe<'_>, ProbeAt)>,
    streams: &Arc<SessionStreams>,
    epoch: u64,
) -> Result<Ended, String> {
    let addr = session.remote_addr();
    let Registered {
        control,
        edge_name,
        mut generation,
        health_every_secs,
        data_cap,
        members: follow,
        probes,
        entry,
    } = reg;
    // Health reports, when this edge asked for them, on whichever connection the
    // reporter picks; the guard leaves when this session ends.
    let (mut health, _attached) = match health_every_secs {
        0 => (None, None),
        every => {
            // A metered link pays for every report: one an hour at most.
            let every = match shared.current.borrow().config.metered {
                true => every.max(crate::config::METERED_HEALTH_SECS),
                false => every,
            };
            let (rx, guard) = shared.health.attach(slot, every);
            (Some(rx), Some(guard))
        }
    };
    let (mut msgs, reader_guard) = read_control_apart(control.recv);
    let mut send = control.send;
    let mut rules = shared.current.subscribe();
    let mut draining = shared.draining.subscribe();
    let mut drained = *draining.borrow();
    if drained {
        streams.draining.send_replace(true);
        let _ = wire::write_control(&mut send, &ConnectorMsg::Draining).await;
    }
    let mut epochs = shared.epoch.subscribe();
    // A report of a remote change not yet sent goes on a connection that registers.
    let mut reports = shared.reports.bump.subscribe();
    if let Some(report) = shared.reports.take_on_register() {
        if let Err(e) = wire::write_control(&mut send, &ConnectorMsg::Change(report)).await {
            return Err(format!("lost edge {edge_name} ({addr}): {e}"));
        }
    }
    // The data cap's state, to an edge that understands it: now if over, then on change.
    let mut cap = super::cap::subscribe();
    if data_cap && super::cap::is_over() {
        let m = super::cap::message(&shared.current.borrow().clone());
        if let Err(e) = wire::write_control(&mut send, &m).await {
            return Err(format!("lost edge {edge_name} ({addr}): {e}"));
        }
    }
    // The cluster's members: their changes, from an edge that tells them; each change
    // (the list told at registration too) looks whether this slot's share moved.
    if follow {
        if let Err(e) = wire::write_control(&mut send, &ConnectorMsg::FollowMembers).await {
            return Err(format!("lost edge {edge_name} ({addr}): {e}"));
        }
    }
    let mut members = shared.members.subscribe();
    members.mark_changed();
    // The keep-alive duty: the flow's keeper pings, its siblings stay quiet.
    let _listed = Listed::new(shared, slot, session);
    let (keepalive, idle) = {
        let cfg = &shared.current.borrow().config;
        let proto = match session.protocol() {
            crate::transport::Transport::Quic => crate::config::Protocol::Quic,
            crate::transport::Transport::Http2 => crate::config::Protocol::Http2,
        };
        (
            Duration::from_secs(u64::from(cfg.keepalive_secs_on(proto).max(1))),
            Duration::from_secs(u64::from(cfg.idle_timeout_secs.max(2))),
        )
    };
    let (rx, challenges) = quic_counts(session);
    let mut keeper = slot::Keeper::new(Instant::now(), keepalive, idle, rx, challenges);
    // A metered HTTP/2 connection learns the NAT's mapping lifetime for its keep-alive.
    let registered_at = Instant::now();
    // Polled in the loop below (never ends by itself), dropped with the session.
    let mut nat = learn_nat(shared, slot, session, entry, probes.as_ref());
    let mut keep_at = tokio::time::Instant::now();
    let (first, every) = probe.map_or((Instant::now(), Duration::from_secs(30)), |p| p.1);
    let mut probe_timer = tokio::time::interval_at(first.into(), every);
    let probe = probe.map(|p| p.0);
    let mut probing: Option<Probing<'_>> = None;
    loop {
        tokio::select! {
            stream = session.accept_stream() => {
                let stream = match stream {
                    Ok(s) => s,
                    Err(_) => {
                        if keeper.is_keeper() {
                            // Its siblings share the path: those of an edge that
                            // restarted hear a reset at once, the others just answer.
                            for s in siblings(shared, slot) {
                                poke(&s);
                            }
                        }
                        if let (Some(_), Session::H2(h)) = (&nat, session) {
                            super::natlife::lost(slot, h, registered_at.elapsed());
                        }
                        return Err(format!("lost edge {edge_name} ({addr}): {}", session.closed().await));
                    }
                };
                spawn_stream(shared, streams, stream);
            }
            () = async { match nat.as_mut() { Some(n) => n.await, None => std::future::pending().await } } => {}
            _ = tokio::time::sleep_until(keep_at) => {
                let is_keeper = keeps_flow(shared, slot);
                let (rx, challenges) = quic_counts(session);
                let t = keeper.tick(Instant::now(), is_keeper, rx, challenges);
                keep_at = t.next.into();
                match session {
                    Session::H2(h) => h.set_quiet(!is_keeper),
                    Session::Quic(c) => {
                        if t.timed_out {
                            // The path is dead, and its siblings share it.
                            for s in siblings(shared, slot) {
                                s.close("the path timed out");
                            }
                            return Err(format!(
                                "lost edge {edge_name} ({addr}): timed out (nothing from the \
                                 edge for {}s)",
                                idle.as_secs()
                            ));
                        }
                        match t.refresh {
                            Some(slot::Refresh::Quic) => {
                                crate::transport::quic::ping(c, DEVICE_CONN_RECEIVE_WINDOW);
                            }
                            Some(slot::Refresh::Nat) => {
                                if let Ok(ep) = super::dial::endpoint_for(shared, addr) {
                                    ep.nat_keepalive(c.remote_address());
                                }
                            }
                            None => {}
                        }
                        if t.poke {
                            log::debug!("connection {slot}: the edge moved to a new path; its siblings follow");
                            for s in siblings(shared, slot) {
                                poke(&s);
                            }
                        }
                    }
                }
            }
            _ = reports.changed() => {
                if let Some(report) = shared.reports.take_now() {
                    if let Err(e) = wire::write_control(&mut send, &ConnectorMsg::Change(report)).await {
                        return Err(format!("lost edge {edge_name} ({addr}): {e}"));
                    }
                }
            }
            _ = super::epoch_over(&mut epochs, epoch), if !drained => {
                let _ = wire::write_control(&mut send, &ConnectorMsg::Draining).await;
                streams.keep_control(send, reader_guard);
                return Ok(Ended::GoAway(GoAway::new("the config changed the edges")));
            }
            msg = msgs.recv() => {
                if let Some(end) = on_control(shared, slot, msg, &mut send, &edge_name, addr).await {
                    if end.is_ok() {
                        streams.keep_control(send, reader_guard);
                    }
                    return end;
                }
            }
            Ok(()) = cap.changed(), if data_cap => {
                let m = super::cap::message(&shared.current.borrow().clone());
                if let Err(e) = wire::write_control(&mut send, &m).await {
                    return Err(format!("lost edge {edge_name} ({addr}): {e}"));
                }
            }
            Some(m) = shared.upgrade.next_out() => {
                if let Err(e) = wire::write_control(&mut send, &m).await {
                    return Err(format!("lost edge {edge_name} ({addr}): {e}"));
                }
            }
            Some((report, cost)) = async { match health.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                if let Err(e) = wire::write_control_with_tail(&mut send, &ConnectorMsg::Health(report), &cost).await {
                    return Err(format!("lost edge {edge_name} ({addr}): {e}"));
                }
            }
            changed = rules.changed(), if !drained => {
                if changed.is_err() { continue; }
                let rt = rules.borrow_and_update().clone();
                if rt.generation != generation {
                    generation = rt.generation;
                    let m = ConnectorMsg::UpdateRules { generation, rules: rt.rule_infos.clone() };
                    if let Err(e) = wire::write_control(&mut send, &m).await {
                        return Err(format!("lost edge {edge_name} ({addr}): {e}"));
                    }
                    // The essential rules' indexes are the new table's.
                    if data_cap && super::cap::is_over() {
                        if let Err(e) = wire::write_control(&mut send, &super::cap::message(&rt)).await {
                            return Err(format!("lost edge {edge_name} ({addr}): {e}"));
                        }
                    }
                }
            }
            _ = wait_true(&mut draining), if !drained => {
                drained = true;
                streams.draining.send_replace(true);
                let _ = wire::write_control(&mut send, &ConnectorMsg::Draining).await;
            }
            // A slot serving away from its own entry goes home first (its probe); one on
            // the HTTP/2 fallback follows the members too.
            Ok(()) = members.changed(), if !matches!(probe, Some(Probe::Home(_))) && probing.is_none() && !drained => {
                if super::misplaced(shared, slot, addr).is_some() {
                    let on_h2 = matches!(probe, Some(Probe::Quic(_)));
                    probing = Some(Box::pin(super::move_to_share(shared, slot, addr, on_h2)));
                }
            }
            _ = probe_timer.tick(), if probe.is_some() && probing.is_none() && !drained => {
                probing = match probe {
                    Some(Probe::Quic(dial)) => Some(Box::pin(probe_quic(shared, slot, dial))),
                    Some(Probe::Home(home)) => Some(Box::pin(probe_home(shared, slot, home, Auto::default()))),
                    None => None,
                };
            }
            next = async { match probing.as_mut() { Some(p) => p.await, None => std::future::pending().await } }, if probing.is_some() => {
                probing = None;
                match next {
                    Some(next) if !drained => {
                        let _ = wire::write_control(&mut send, &ConnectorMsg::Draining).await;
                        streams.keep_control(send, reader_guard);
                        return Ok(Ended::Moved(Box::new(next)));
                    }
                    Some(next) => next.session.close("connector draining"),
                    None => log::debug!("connection {slot}: probe failed; staying"),
                }
            }
        }
    }
}

/// Learning the NAT's mapping lifetime for `session` when it is a metered connector's
/// HTTP/2 connection to an edge that holds probes (boxed: its probe's TLS handshake is
/// large, and most sessions have none; polled in the session's loop rather than spawned,
/// which costs the device binary a task type).
fn learn_nat(
    shared: &Arc<Shared>,
    slot: usize,
    session: &Session,
    entry: usize,
    probes: Option<&wire::HelloProbeTail>,
) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>> {
    let Session::H2(h) = session else {
        return None;
    };
    let unproven = {
        let cfg = &shared.current.borrow().config;
        if !cfg.metered || !wire::probe_allowed(probes, 0) {
            return None;
        }
        let secs = cfg.keepalive_secs_on(crate::config::Protocol::Http2);
        Duration::from_secs(u64::from(secs))
    };
    let dial = match dial::again(shared, entry, session.remote_addr()) {
        Ok(d) => d,
        Err(e) => {
            log::debug!("connection {slot}: no NAT probes: {e}");
            return None;
        }
    };
    Some(Box::pin(super::natlife::drive(
        slot,
        dial,
        h.clone(),
        unproven,
    )))
}

/// What a QUIC session received so far: packets, and PATH_CHALLENGE frames (zero over
/// HTTP/2).
fn quic_counts(session: &Session) -> (u64, u64) {
    match session {
        Session::Quic(c) => {
            let st = c.stats();
            (st.udp_rx.datagrams, st.frame_rx.path_challenge)
        }
        Session::H2(_) => (0, 0),
    }
}

/// Whether `slot` keeps its flow: no lower slot is connected to the same edge address
/// over the same transport (over QUIC they share the socket, hence the NAT mapping).
fn keeps_flow(shared: &Shared, slot: usize) -> bool {
    let slots = shared.slots.borrow();
    let Some(me) = slots.get(slot) else {
        return true;
    };
    !slots
        .iter()
        .take(slot)
        .any(|s| s.connected && s.edge == me.edge && s.protocol == me.protocol)
}

/// The sessions of the other slots on `slot`'s flow (same edge address and transport).
fn siblings(shared: &Shared, slot: usize) -> Vec<Session> {
    let slots = shared.slots.borrow().clone();
    let Some(me) = slots.get(slot) else {
        return Vec::new();
    };
    let sessions = lock(&shared.sessions);
    slots
        .iter()
        .enumerate()
        .filter(|&(i, s)| {
            i != slot && s.connected && s.edge == me.edge && s.protocol == me.protocol
        })
        .filter_map(|(i, _)| sessions.get(i).cloned().flatten())
        .collect()
}

/// Asks the edge for an answer on `session` now: a QUIC ping (which also moves the
/// connection to the NAT's current port at the edge), or an HTTP/2 ping.
fn poke(session: &Session) {
    match session {
        Session::Quic(c) => crate::transport::quic::ping(c, DEVICE_CONN_RECEIVE_WINDOW),
        Session::H2(h) => h.nudge(),
    }
}

/// A slot's entry in [`Shared::sessions`] while it serves a session; cleared on drop
/// (unless another session of the slot took it meanwhile).
struct Listed<'a> {
    shared: &'a Shared,
    slot: usize,
    id: usize,
}

impl<'a> Listed<'a> {
    fn new(shared: &'a Shared, slot: usize, session: &Session) -> Listed<'a> {
        let mut sessions = lock(&shared.sessions);
        if slot < super::MAX_SLOTS {
            if sessions.len() <= slot {
                sessions.resize(slot + 1, None);
            }
            if let Some(s) = sessions.get_mut(slot) {
                *s = Some(session.clone());
            }
        }
        Listed {
            shared,
            slot,
            id: session.id(),
        }
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        let mut sessions = lock(&self.shared.sessions);
        if let Some(s) = sessions.get_mut(self.slot) {
            if s.as_ref().is_some_and(|s| s.id() == self.id) {
                *s = None;
            }
        }
    }
}

/// The control stream's reader runs apart, so no select! branch is cut mid-frame.
fn read_control_apart(
    mut recv: crate::transport::RecvHalf,
) -> (mpsc::Receiver<Result<EdgeMsg, String>>, AbortOnDrop) {
    let (msgs_tx, msgs) = mpsc::channel::<Result<EdgeMsg, String>>(4);
    let reader = tokio::spawn(async move {
        loop {
            let m = wire::read_control::<_, EdgeMsg>(&mut recv)
                .await
                .map_err(|e| e.to_string());
            let end = m.is_err();
            if msgs_tx.send(m).await.is_err() || end {
                return;
            }
        }
    });
    (msgs, AbortOnDrop(reader))
}

/// Acts on a message from the edge's control stream; `Some` ends the session.
async fn on_control(
    shared: &Arc<Shared>,
    slot: usize,
    msg: Option<Result<EdgeMsg, String>>,
    send: &mut crate::transport::SendHalf,
    edge_name: &str,
    addr: SocketAddr,
) -> Option<Result<Ended, String>> {
    match msg {
        Some(Ok(EdgeMsg::GoAway { reason })) => {
            let _ = wire::write_control(send, &ConnectorMsg::Draining).await;
            return Some(Ok(Ended::GoAway(GoAway(format!(
                "edge {edge_name} ({addr}) is going away: {}",
                wire::bounded_reason(reason)
            )))));
        }
        Some(Ok(EdgeMsg::RulesAccepted { generation })) => {
            log::info!("connection {slot}: edge accepted rule table {generation}");
            note_registered(shared, generation);
        }
        Some(Ok(EdgeMsg::Refused { reason, .. })) => {
            let why = format!(
                "edge {edge_name} refused the new rules: {}",
                wire::bounded_reason(reason)
            );
            log::error!("connection {slot}: {why}");
            *crate::util::lock(&shared.last_error) = Some(why);
        }
        Some(Ok(EdgeMsg::PushConfig { push })) => super::push::received(shared, &push),
        Some(Ok(EdgeMsg::Credential { credential })) => match &shared.device {
            Some(device) => {
                if let Err(e) = device.store_credential(&credential) {
                    log::error!("connection {slot}: renewal: {e}");
                }
            }
            None => log::debug!("connection {slot}: ignoring a credential: not enrolled"),
        },
        Some(Ok(EdgeMsg::OfferRelease { offer })) => {
            super::upgrade::offered(shared, &offer, super::upgrade::pinned_release_key(shared))
        }
        Some(Ok(EdgeMsg::Members(m))) => {
            let entry = shared.slots.borrow().get(slot).and_then(|s| s.entry);
            if let Some(entry) = entry {
                super::told_members(shared, entry, addr, &m.members);
            }
        }
        Some(Ok(other)) => log::debug!("connection {slot}: ignoring {other:?}"),
        Some(Err(e)) => {
            return Some(Err(format!(
                "lost edge {edge_name} ({addr}): control stream: {e}"
            )));
        }
        None => {
            return Some(Err(format!(
                "lost edge {edge_name} ({addr}): control stream ended"
            )));
        }
    }
    None
}

/// Streams in flight on one session, for draining it.
struct SessionStreams {
    count: AtomicUsize,
    done: Notify,
    /// Set when the session drains: idle keep-alive streams then end early.
    draining: watch::Sender<bool>,
    /// The control stream of a session that drains: kept open until the session
    /// closes, as the edge closes a connection whose control stream ends (and with it
    /// the streams in flight).
    control: std::sync::Mutex<Option<(crate::transport::SendHalf, AbortOnDrop)>>,
}

impl SessionStreams {
    fn keep_control(&self, send: crate::transport::SendHalf, reader: AbortOnDrop) {
        *crate::util::lock(&self.control) = Some((send, reader));
    }
}

impl Default for SessionStreams {
    fn default() -> Self {
        SessionStreams {
            count: AtomicUsize::new(0),
            done: Notify::new(),
            draining: watch::channel(false).0,
            control: std::sync::Mutex::new(None),
        }
    }
}

/// How long a draining session still accepts streams: the edge may have opened some
/// before it read our `Draining`.
const LAME_DUCK: Duration = Duration::from_secs(2);

/// Lets a replaced session finish its streams in the background, then closes it.
fn drain_in_background(
    shared: Arc<Shared>,
    session: Session,
    streams: Arc<SessionStreams>,
    grace: Duration,
) {
    streams.draining.send_replace(true);
    tokio::spawn(async move {
        let accept = async {
            while let Ok(stream) = session.accept_stream().await {
                spawn_stream(&shared, &streams, stream);
            }
        };
        let _ = tokio::time::timeout(LAME_DUCK, accept).await;
        let wait = async {
            loop {
                let notified = streams.done.notified();
                if streams.count.load(Ordering::Acquire) == 0 {
                    break;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(grace.saturating_sub(LAME_DUCK), wait).await;
        session.close("drained");
        crate::util::lock(&streams.control).take();
    });
}

/// Serves one stream the edge opened, counted for drains.
fn spawn_stream(
    shared: &Arc<Shared>,
    streams: &Arc<SessionStreams>,
    stream: crate::transport::TunnelStream,
) {
    let shared2 = shared.clone();
    shared.active_streams.fetch_add(1, Ordering::AcqRel);
    streams.count.fetch_add(1, Ordering::AcqRel);
    let guard = StreamGuard(shared.clone(), streams.clone());
    let drain = streams.draining.subscribe();
    tokio::spawn(async move {
        origin::serve_stream(stream, |gen| runtime_for(&shared2, gen), drain).await;
        drop(guard);
    });
}

/// Counts a stream in flight, for the shutdown grace period and session drains.
struct StreamGuard(Arc<Shared>, Arc<SessionStreams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.active_streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.streams_done.notify_waiters();
        }
        if self.1.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.1.done.notify_waiters();
        }
    }
}
