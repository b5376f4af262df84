//! The device side: the supervisor keeps `ha-connections` tunnel connections to the
//! edges, each in its own slot that reconnects with backoff; streams the edge opens are
//! served by [`origin`].
//!
//! - `slot`: each slot's reconnection policy as a state machine without I/O (backoff,
//!   refusals, quick retries, borrowing another edge and moving back, the `auto`
//!   fallback and its probes, DNS memory), tested with explicit instants;
//! - `dial`: resolving edge names and opening a QUIC or HTTP/2 session;
//! - `handshake`: hello, register (with the device's proof), registered;
//! - `session`: registration, serving a registered session, probes and drains;
//! - [`active`]: a device config compiled for serving streams;
//! - [`device`]: an enrolled device's key, credential and facts;
//! - `health`: health reports, on one connection;
//! - `cap`: the daily data cap: the day's count, essential rules only past it;
//! - [`upgrade`]: binary updates: offer, download, trial, confirm or roll back;
//! - [`push`]: the keys the device pins, and pushed configs on trial (applied, or
//!   rolled back by the device alone);
//! - this module: the [`Connector`], and the driver that carries out what each slot's
//!   policy decides.
//!
//! The connector listens on nothing: it only dials out.

pub(crate) mod active;
mod cap;
pub mod device;
mod dial;
mod handshake;
pub mod health;
mod instance;
mod natlife;
pub(crate) mod origin;
pub mod push;
mod rendezvous;
mod session;
pub(crate) mod slot;
pub mod upgrade;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::config::DeviceConfig;
// `hex` stays reachable here for the edge, which named it by this path before `util`.
pub(crate) use crate::transport::Transport;
use crate::transport::{quic, Session};
use crate::util::{lock, random_bytes};
pub(crate) use active::ActiveConfig;
use session::{Ended, Failure, GoAway, Moved, Probe};
use slot::{Attempt, End, Next, ProbeFor, Say, Slot};

/// Concurrent streams the edge may open on one connection.
pub(crate) const MAX_STREAMS_PER_CONN: u32 = 128;

/// Public state of one connection slot, for status and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotState {
    pub(crate) connected: bool,
    pub(crate) edge: Option<SocketAddr>,
    /// Index of the `edge:` entry it is connected to.
    pub(crate) entry: Option<usize>,
    /// The transport it is connected over.
    pub(crate) protocol: Option<Transport>,
}

struct Shared {
    /// Random id of this process.
    connector_id: [u8; 16],
    /// Id of this connector instance, the same for its restart ([`instance`]).
    instance: Option<instance::Instance>,
    /// The enrolled device (a config with `enroll:`).
    device: Option<Arc<device::Device>>,
    /// Which connection carries health reports.
    health: Arc<health::Reporter>,
    current: watch::Sender<Arc<ActiveConfig>>,
    previous: Mutex<Option<Arc<ActiveConfig>>>,
    draining: watch::Sender<bool>,
    active_streams: AtomicUsize,
    streams_done: Notify,
    slots: watch::Sender<Vec<SlotState>>,
    /// Last good addresses per edge entry, kept when DNS fails.
    names: Mutex<slot::Names>,
    endpoints: Mutex<(Option<quic::DeviceEndpoint>, Option<quic::DeviceEndpoint>)>,
    /// The session each slot serves now, by slot (at most [`MAX_SLOTS`]): a flow's
    /// keeper pokes or closes its siblings through them ([`slot::Keeper`]).
    sessions: Mutex<Vec<Option<Session>>>,
    /// The generation of the config the latest registration (or rule table the edge
    /// accepted) was made with: what a pushed config's trial waits for.
    registered: watch::Sender<u32>,
    /// Why the latest connection attempt failed or ended, for a rollback's report.
    last_error: Mutex<Option<String>>,
    /// Reports of remote changes to send.
    reports: push::Reports,
    /// The config push on trial.
    trials: push::Trials,
    /// Bumped when a config changes the edges or the number of connections: the
    /// slots of the previous epoch end (draining) and new ones start.
    epoch: watch::Sender<u64>,
    /// What the start found of a trial a stopped process left, until `run` acts on it.
    start_trial: Mutex<Option<push::StartTrial>>,
    /// Binary updates: the download, the trial ([`upgrade`]).
    upgrade: Arc<upgrade::Upgrades>,
    /// Bumped when the members an edge told change, or a member skipped for failing is
    /// due again: each registered slot looks whether its share moved ([`misplaced`]).
    members: watch::Sender<u64>,
    /// Held by the slot moving to its share of the members: one at a time.
    moving: tokio::sync::Mutex<()>,
}

impl Shared {
    /// The config file of an enrolled device.
    fn config_path(&self) -> Option<PathBuf> {
        self.device.as_ref().map(|d| d.config_path().to_path_buf())
    }
}

/// Most connection slots (`ha-connections` is a u8): the health reporter's size.
const MAX_SLOTS: usize = u8::MAX as usize;

/// A config compiled to run as the next generation.
fn prepare(shared: &Shared, config: Box<DeviceConfig>) -> Result<Arc<ActiveConfig>, String> {
    let old = shared.current.borrow().clone();
    let device = shared.device.as_deref();
    Ok(Arc::new(ActiveConfig::new(
        config.metered_profile(),
        old.generation.wrapping_add(1),
        device.map(|d| d.id()),
    )?))
}

/// Puts `rt` in force (as a reload does); when it changes the edges or the number of
/// connections, the slots restart with it (streams in flight finish on the old ones).
fn install(shared: &Shared, rt: Arc<ActiveConfig>) {
    let old = shared.current.borrow().clone();
    let restart = old.config.edges != rt.config.edges
        || old.config.ha_connections != rt.config.ha_connections;
    *lock(&shared.previous) = Some(old);
    shared.current.send_replace(rt);
    if restart {
        log::info!("the edges or the number of connections changed: reconnecting");
        shared.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }
}

/// A running connector. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    shared: Arc<Shared>,
}

impl Connector {
    /// Prepares a connector for `config`; fails on unusable embedded certificates.
    pub fn new(config: Box<DeviceConfig>) -> Result<Self, String> {
        Self::with_device(config, None)
    }

    /// Prepares a connector for `config` on `device`, which a config with `enroll:`
    /// needs.
    pub fn with_device(
        config: Box<DeviceConfig>,
        device: Option<device::Device>,
    ) -> Result<Self, String> {
        let device = device.map(Arc::new);
        // A pushed config's trial that a stopped process left behind.
        let found = device
            .as_ref()
            .and_then(|d| push::at_start(d.config_path()));
        let config = match (&found, &device) {
            (
                Some(push::StartTrial::RolledBack {
                    config: Some(prev), ..
                }),
                Some(d),
            ) => {
                d.config_changed(d.config_path());
                prev.clone()
            }
            _ => config,
        };
        let config = config.metered_profile();
        let instance = instance::Instance::claim(&config.tunnel);
        match &instance {
            Some(i) => log::debug!("connector instance {}", crate::util::hex(&i.id[..4])),
            None => log::info!(
                "no connector instance id (no boot id, network namespace or free slot): \
                 after a crash, the edge keeps this connector's old connections until they \
                 time out"
            ),
        }
        let rt = Arc::new(ActiveConfig::new(
            config,
            1,
            device.as_ref().map(|d| d.id()),
        )?);
        let slots = vec![SlotState::default(); usize::from(rt.config.ha_connections.max(1))];
        let health = Arc::new(health::Reporter::new(MAX_SLOTS));
        let names = names_for(device.as_deref(), &rt.config);
        let generation = rt.generation;
        let connector = Connector {
            shared: Arc::new(Shared {
                connector_id: random_bytes(),
                instance,
                device,
                health,
                current: watch::channel(rt).0,
                previous: Mutex::new(None),
                draining: watch::channel(false).0,
                active_streams: AtomicUsize::new(0),
                streams_done: Notify::new(),
                slots: watch::channel(slots).0,
                names: Mutex::new(names),
                endpoints: Mutex::new((None, None)),
                sessions: Mutex::new(Vec::new()),
                registered: watch::channel(generation.wrapping_sub(1)).0,
                last_error: Mutex::new(None),
                reports: push::Reports::default(),
                trials: push::Trials::default(),
                epoch: watch::channel(0).0,
                start_trial: Mutex::new(None),
                upgrade: Arc::default(),
                members: watch::channel(0).0,
                moving: tokio::sync::Mutex::new(()),
            }),
        };
        *lock(&connector.shared.start_trial) = found;
        Ok(connector)
    }

    /// Applies a new config to new streams and sends its rules to the edges. Edge
    /// addresses and connection counts take effect on the next restart.
    pub fn reload(&self, config: Box<DeviceConfig>) -> Result<(), String> {
        let rt = prepare(&self.shared, config)?;
        let old = self.shared.current.borrow().clone();
        *lock(&self.shared.previous) = Some(old);
        self.shared.current.send_replace(rt);
        Ok(())
    }

    /// The enrolled device, when the config enrols it.
    pub fn device(&self) -> Option<&device::Device> {
        self.shared.device.as_deref()
    }

    /// Slot states, updated as connections come and go.
    pub fn slots(&self) -> watch::Receiver<Vec<SlotState>> {
        self.shared.slots.subscribe()
    }

    /// Runs until `shutdown` resolves, then drains: tells the edges, lets streams in
    /// flight finish within the grace period, and closes.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let mut tasks = Vec::new();
        if let Some(found) = lock(&self.shared.start_trial).take() {
            push::after_start(&self.shared, found);
        }
        tasks.push(tokio::spawn(run_slots(self.shared.clone())));
        if cfg!(target_env = "musl") {
            tasks.push(tokio::spawn(trim_heap_when_quiet()));
        }
        tasks.push(tokio::spawn(self.shared.health.clone().run()));
        tasks.push(tokio::spawn(cap::run(self.shared.current.subscribe())));
        tasks.push(tokio::spawn(members_due(self.shared.clone())));
        shutdown.await;
        let grace = Duration::from_secs(u64::from(
            self.shared.current.borrow().config.grace_period_secs,
        ));
        log::info!("draining: no new streams; waiting up to {grace:?} for streams in flight");
        self.shared.draining.send_replace(true);
        let wait_streams = async {
            loop {
                let notified = self.shared.streams_done.notified();
                if self.shared.active_streams.load(Ordering::Acquire) == 0 {
                    break;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(grace, wait_streams).await.is_err() {
            log::warn!(
                "grace period over with {} streams still open; closing",
                self.shared.active_streams.load(Ordering::Acquire)
            );
        }
        for t in &tasks {
            t.abort();
        }
        let endpoints = {
            let mut e = lock(&self.shared.endpoints);
            [e.0.take(), e.1.take()]
        };
        for ep in endpoints.into_iter().flatten().map(|d| d.quinn) {
            ep.close(0u32.into(), b"connector shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
        log::info!("connector stopped");
    }
}

fn set_slot(shared: &Shared, slot: usize, state: SlotState) {
    shared.slots.send_modify(|s| {
        if let Some(x) = s.get_mut(slot) {
            *x = state;
        }
    });
}

/// What the slots learn of the edge entries' names, their addresses ordered by
/// rendezvous hashing on the device id (an enrolled device) or the tunnel token.
fn names_for(device: Option<&device::Device>, config: &crate::config::DeviceConfig) -> slot::Names {
    let seed = rendezvous::seed_of(device.map_or(config.token.as_str(), |d| d.id()));
    slot::Names::new(config.edges.len())
        .seeded(seed)
        .for_slots(usize::from(config.ha_connections.max(1)))
}

/// Takes the members told in the registration of slot `slot`: the news when no other
/// slot is registered (they follow the members' changes, told alike by every edge; a
/// newer edge's registration may come before the others read the change, and would
/// move slots back and forth until they do).
fn told_at_registration(
    shared: &Shared,
    slot: usize,
    entry: usize,
    from: SocketAddr,
    members: &[String],
) {
    let others = shared
        .slots
        .borrow()
        .iter()
        .enumerate()
        .any(|(i, s)| i != slot && s.connected);
    if others && lock(&shared.names).has_told(entry) {
        return;
    }
    told_members(shared, entry, from, members);
}

/// Takes the members an edge reached through entry `entry` (at `from`) told: each an
/// `IP:PORT` a connection can dial, at most [`crate::wire::MAX_MEMBERS`]. A list that
/// breaks that is ignored whole (a broken or hostile edge), with a log line; one that
/// changes the entry's members wakes the slots to move to their share, one at a time.
fn told_members(shared: &Shared, entry: usize, from: SocketAddr, members: &[String]) {
    let parsed: Option<Vec<SocketAddr>> = (members.len() <= crate::wire::MAX_MEMBERS)
        .then(|| {
            members
                .iter()
                .map(|m| {
                    m.parse::<SocketAddr>()
                        .ok()
                        .filter(|a| !a.ip().is_unspecified() && !a.ip().is_multicast())
                        .filter(|a| a.port() != 0)
                })
                .collect()
        })
        .flatten();
    let Some(addrs) = parsed else {
        log::warn!(
            "edge {from} told {} members, not all of them IP:PORT addresses (or more than \
             {}): ignored",
            members.len(),
            crate::wire::MAX_MEMBERS
        );
        return;
    };
    if addrs.is_empty() {
        return;
    }
    let shown = dial::addr_list(&addrs);
    if lock(&shared.names).told(entry, addrs) {
        log::info!("edge {from} told the cluster's members: {shown}");
        shared.members.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Whether slot `slot`, registered at `current`, should move to another member: its
/// own entry's (the one it serves) share of the members told is elsewhere now. The
/// entry to move to (its own), or `None` to stay.
fn misplaced(shared: &Shared, slot: usize, current: SocketAddr) -> Option<usize> {
    let edges = shared.current.borrow().config.edges.len().max(1);
    let home = slot % edges;
    let entry = shared.slots.borrow().get(slot).and_then(|s| s.entry)?;
    if entry != home {
        return None;
    }
    let want = lock(&shared.names).member_for(home, slot, edges, Instant::now())?;
    (want != current).then_some(home)
}

/// A registered connection to slot `slot`'s share of the members, for a slot at
/// `current` (`on_h2`: on the HTTP/2 fallback, where the new connection goes too): one
/// slot at a time, and only while its share is still elsewhere.
async fn move_to_share(
    shared: &Arc<Shared>,
    slot: usize,
    current: SocketAddr,
    on_h2: bool,
) -> Option<session::Moved> {
    let _one = shared.moving.lock().await;
    let home = misplaced(shared, slot, current)?;
    let mut auto = slot::Auto::default();
    if on_h2 {
        auto.udp_blocked();
    }
    session::probe_home(shared, slot, home, auto).await
}

/// A connection to member `addr` of entry `entry` failed: it is skipped for a while,
/// and the other slots look whether their share moved with it (without it, a slot
/// whose share it was takes another's, and that one moves on).
fn member_failed(shared: &Shared, entry: usize, addr: SocketAddr) {
    if lock(&shared.names).member_failed(entry, addr, Instant::now()) {
        log::info!("edge {addr} of the cluster failed: skipping it for a while");
        shared.members.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Wakes the slots when a member skipped for failing is due to be tried again; idle
/// (no timer) until an edge tells members.
async fn members_due(shared: Arc<Shared>) {
    if shared.members.subscribe().changed().await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(slot::MEMBER_DOWN_FOR);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if lock(&shared.names).due(Instant::now()) {
            shared.members.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// Runs the slots of the config in force; when a config changes the edges or the
/// number of connections (a new epoch), lets them end and starts those of the new one.
async fn run_slots(shared: Arc<Shared>) {
    let mut epochs = shared.epoch.subscribe();
    loop {
        let epoch = *epochs.borrow_and_update();
        let (n, names) = {
            let rt = shared.current.borrow();
            (
                usize::from(rt.config.ha_connections.max(1)),
                names_for(shared.device.as_deref(), &rt.config),
            )
        };
        if epoch != 0 {
            *lock(&shared.names) = names;
            shared.slots.send_replace(vec![SlotState::default(); n]);
        }
        let tasks: Vec<_> = (0..n)
            .map(|slot| {
                let shared = shared.clone();
                tokio::spawn(async move { run_slot(shared, slot, epoch).await })
            })
            .collect();
        if epochs.changed().await.is_err() {
            return;
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Resolves once the slot epoch is no longer `epoch`.
async fn epoch_over(rx: &mut watch::Receiver<u64>, epoch: u64) {
    let _ = rx.wait_for(|e| *e != epoch).await;
}

/// Carries out slot `slot`'s policy until the connector drains or its epoch ends.
async fn run_slot(shared: Arc<Shared>, slot: usize, epoch: u64) {
    let edges = shared.current.borrow().config.edges.len();
    let mut policy = Slot::new(slot, edges, u64::from_le_bytes(random_bytes()));
    let mut config = shared.current.subscribe();
    let mut draining = shared.draining.subscribe();
    let mut epochs = shared.epoch.subscribe();
    loop {
        if *draining.borrow() || *epochs.borrow() != epoch {
            return;
        }
        let attempt = match policy.attempt(Instant::now()) {
            Ok(a) => a,
            Err(until) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    // A new config (a new token, say) is worth trying now.
                    _ = config.changed() => policy.reload(),
                    _ = wait_true(&mut draining) => return,
                    _ = epoch_over(&mut epochs, epoch) => return,
                }
                continue;
            }
        };
        // Reloads from here on wake the wait after this attempt.
        config.borrow_and_update();
        let mut result = connect_and_serve(&shared, slot, &mut policy, attempt, epoch).await;
        let (delay, say) = loop {
            let end = match &result {
                Ok(_) => End::Orderly,
                Err(e) if e.refused => End::Refused,
                Err(_) => End::Failed,
            };
            match policy.ended(Instant::now(), end, &up_entries(&shared, slot)) {
                // Its own edge has been unreachable for long: another edge that is up
                // serves this slot meanwhile.
                Next::Borrow(other) => {
                    if let Err(e) = &result {
                        log::debug!(
                            "connection {slot}: {e}; trying edge entry {} meanwhile",
                            other.entry
                        );
                    }
                    if *epochs.borrow() != epoch {
                        return;
                    }
                    result = connect_and_serve(&shared, slot, &mut policy, other, epoch).await;
                }
                Next::Wait { delay, say } => break (delay, say),
            }
        };
        set_slot(&shared, slot, SlotState::default());
        if let Err(e) = &result {
            *lock(&shared.last_error) = Some(e.message.clone());
        }
        let what: &dyn std::fmt::Display = match &result {
            Ok(why) => why,
            Err(e) => e,
        };
        tell(slot, say, delay, what);
    }
}

/// Says why slot `slot` waits `delay`, as its policy decided: one line per outage.
fn tell(slot: usize, say: Say, delay: Duration, what: &dyn std::fmt::Display) {
    match say {
        // An orderly end (the edge going away) reconnects at once.
        Say::Reconnecting => log::info!("connection {slot}: {what}; reconnecting"),
        Say::Refused => log::warn!(
            "connection {slot}: {what}; retrying in {:.0}s (at once when the device \
             config is reloaded)",
            delay.as_secs_f32()
        ),
        // The loss (or first failure) says what the quick retries will do, and only
        // their success is logged at info.
        Say::FastFirst => log::warn!(
            "connection {slot}: {what}; retrying about every second for up to {}s",
            slot::FAST_RETRY_FOR.as_secs()
        ),
        Say::FastQuiet => log::debug!(
            "connection {slot}: {what}; retrying in {:.1}s",
            delay.as_secs_f32()
        ),
        Say::Backoff => log::warn!(
            "connection {slot}: {what}; retrying in {:.1}s",
            delay.as_secs_f32()
        ),
    }
}

/// The edge entries the other slots are connected to now (so they are up), in slot
/// order. A connector of one connection (`ha-connections: 1`, and every metered one)
/// has no other slot to learn that from: its candidates are all the other entries, so
/// that it leaves an edge that stays down for another one, as a larger connector does.
fn up_entries(shared: &Shared, slot: usize) -> Vec<usize> {
    let slots = shared.slots.borrow();
    if slots.len() == 1 {
        return (0..shared.current.borrow().config.edges.len()).collect();
    }
    slots
        .iter()
        .enumerate()
        .filter(|&(i, s)| i != slot && s.connected)
        .filter_map(|(_, s)| s.entry)
        .collect()
}

/// One connection's life: dial the attempt's edge entry, register, serve. `Ok` is an
/// orderly end. Serving away from the slot's own edge, it tries its own now and then
/// and moves back (make before break) when it answers.
async fn connect_and_serve(
    shared: &Arc<Shared>,
    slot: usize,
    policy: &mut Slot,
    attempt: Attempt,
    epoch: u64,
) -> Result<GoAway, Failure> {
    let Attempt { entry, fast } = attempt;
    let rt = shared.current.borrow().clone();
    let protocol = rt.config.protocol;
    let mut epochs = shared.epoch.subscribe();
    // Dialing and registering stop when the epoch ends (nothing to drain yet).
    let established = async {
        let dial = dial::prepare(shared, slot, entry).await?;
        // A member told that fails is skipped for a while; one that works is kept.
        let failed = |e| {
            member_failed(shared, entry, dial.addr());
            e
        };
        let session = dial::open_session(shared, &dial, slot, protocol, &mut policy.auto, fast)
            .await
            .map_err(failed)?;
        match session::register(shared, slot, &session, rt.clone(), entry).await {
            Ok(r) => {
                lock(&shared.names).member_works(entry, dial.addr());
                Ok((dial, session, r))
            }
            Err(e) => {
                session.close("connection ended");
                if !e.refused {
                    member_failed(shared, entry, dial.addr());
                }
                Err(e)
            }
        }
    };
    let (mut dial, session, reg) = tokio::select! {
        r = established => r?,
        _ = epoch_over(&mut epochs, epoch) => {
            return Ok(GoAway::new("the config changed the edges"));
        }
    };
    let mut current = (session, reg);
    if let Some(away) = policy.registered(Instant::now(), entry) {
        let own = rt
            .config
            .edges
            .get(policy.home())
            .map_or("?", |e| e.as_str());
        log::warn!(
            "connection {slot}: its edge {own} has been unreachable for {}s; serving \
             through edge {} until it answers again",
            away.as_secs(),
            dial.server_name
        );
    }
    loop {
        let probe = policy.probe(Instant::now(), dial.entry, protocol).map(|p| {
            let target = match p.target {
                ProbeFor::Home(home) => Probe::Home(home),
                ProbeFor::Quic => Probe::Quic(&dial),
            };
            (target, (p.first, p.every))
        });
        let (session, reg) = current;
        let ended = session::serve_session(shared, slot, session, reg, probe, epoch).await;
        match ended {
            // Make before break: the new connection is already registered, and the old
            // one drains only now, so the edge always has this slot's connection.
            Ok(Ended::Moved(next)) => {
                let Moved {
                    session,
                    reg,
                    dial: to,
                } = *next;
                match to {
                    // Its share of the cluster's members moved (make before break too).
                    Some(to) if to.entry == dial.entry => {
                        log::info!(
                            "connection {slot}: moved from edge {} to edge {} (the cluster's \
                             members changed)",
                            dial.addr(),
                            to.addr()
                        );
                        // Over what the move could open (HTTP/2 for a slot on the fallback).
                        policy.moved_home(session.protocol());
                        dial = to;
                    }
                    Some(to) => {
                        log::info!(
                            "connection {slot}: edge {} answers again; moved back from edge {}",
                            to.server_name,
                            dial.server_name
                        );
                        policy.moved_home(session.protocol());
                        dial = to;
                    }
                    None => {
                        log::info!(
                            "connection {slot}: QUIC to the edge works again; moved back from HTTP/2"
                        );
                        policy.moved_to_quic();
                    }
                }
                current = (session, reg);
            }
            Ok(Ended::GoAway(why)) => return Ok(why),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Resolves once the flag is set (or its sender is gone).
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

fn runtime_for(shared: &Shared, generation: u32) -> Option<Arc<ActiveConfig>> {
    let cur = shared.current.borrow().clone();
    if cur.generation == generation {
        return Some(cur);
    }
    lock(&shared.previous)
        .as_ref()
        .filter(|p| p.generation == generation)
        .cloned()
}

/// How often the musl build looks whether its block cache ([`crate::heap`]) went quiet.
const HEAP_TRIM_EVERY: Duration = Duration::from_secs(20);

/// Hands the allocator's cached blocks of each size back once no transfer uses that
/// size any more: a look finds them not reused since the one before.
async fn trim_heap_when_quiet() {
    let mut tick = tokio::time::interval(HEAP_TRIM_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if crate::heap::HEAP.trim_if_quiet() {
            log::debug!("allocator cache returned to the system");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::sample_config;

    fn told(c: &Connector, members: &[&str]) {
        let list: Vec<String> = members.iter().map(|m| m.to_string()).collect();
        told_members(&c.shared, 0, "192.0.2.9:7844".parse().unwrap(), &list);
    }

    fn member(c: &Connector) -> Option<SocketAddr> {
        lock(&c.shared.names).member_for(0, 0, 1, Instant::now())
    }

    /// A list from an edge is taken only whole and only as addresses: names, port 0,
    /// unspecified addresses, junk or more than the bound leave the entry as it was.
    #[test]
    fn hostile_member_lists_are_ignored_whole() {
        let c = Connector::new(sample_config()).unwrap();
        let woken = c.shared.members.subscribe();
        let too_many: Vec<String> = (0..=crate::wire::MAX_MEMBERS)
            .map(|i| format!("192.0.2.{}:7844", i + 1))
            .collect();
        let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
        for bad in [
            &["192.0.2.1:7844", "evil.example.com:7844"][..],
            &["192.0.2.1:7844", "192.0.2.2:0"],
            &["0.0.0.0:7844"],
            &["[::]:7844"],
            &["224.0.0.1:7844"],
            &["\u{1b}[31m"],
            &[],
            &too_many,
        ] {
            told(&c, bad);
            assert_eq!(member(&c), None, "{bad:?}");
        }
        assert!(!woken.has_changed().unwrap(), "nothing to move for");
        told(&c, &["192.0.2.1:7844", "[2001:db8::1]:7844"]);
        assert!(member(&c).is_some());
        assert!(
            woken.has_changed().unwrap(),
            "the slots look at their share"
        );
    }
}
