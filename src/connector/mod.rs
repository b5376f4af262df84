//! The device side: the supervisor keeps `ha-connections` tunnel connections to the
//! edges, each in its own slot that reconnects with backoff; streams the edge opens are
//! served by [`origin`].
//!
//! The connector listens on nothing: it only dials out.

pub mod origin;
pub mod runtime;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};

use crate::config::{DeviceConfig, Protocol};
use crate::transport::{quic, Retry, Session, TransportError};
use crate::wire::{self, ConnectorMsg, EdgeMsg, Register, PROTOCOL_VERSION};
pub use runtime::Runtime;

/// First reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that lived this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// First delay after the edge refused the tunnel for good (revoked, a bad or expired
/// token, rules it cannot take, a protocol version it does not speak): only its
/// operator or a new device config changes that, and every attempt costs a handshake
/// of cellular data. A reload of the device config retries at once.
const REFUSED_MIN: Duration = Duration::from_secs(60);
/// Longest delay after such refusals.
const REFUSED_MAX: Duration = Duration::from_secs(15 * 60);
/// Time allowed for the control handshake after the transport is up.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to resolve an edge name.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for a QUIC handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `protocol: auto` waits for a QUIC handshake before trying HTTP/2.
const AUTO_QUIC_WAIT: Duration = Duration::from_secs(3);
/// Time allowed to set up an HTTP/2 connection (TCP, TLS, preface).
const H2_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a slot on the HTTP/2 fallback checks whether QUIC works again.
const QUIC_REPROBE: Duration = Duration::from_secs(30);
/// After a registered connection ends (lost, or the edge went away), retry this long at
/// a quick pace before the exponential schedule: an edge that restarts is back within
/// seconds, and a fresh handshake every second finds it at once, where a long QUIC
/// handshake only retransmits its Initial at growing intervals (about 1, 3, 7 s).
const FAST_RETRY_FOR: Duration = Duration::from_secs(30);
/// Delay between quick retries, before jitter: each is drawn from [d/2, d].
const FAST_RETRY_DELAY: Duration = Duration::from_millis(300);
/// A slot whose own edge has been unreachable this long connects to another edge that
/// is up (one other slots are connected to) meanwhile, so the tunnel keeps its
/// `ha-connections`; it moves back once its own edge answers a probe again.
const BORROW_AFTER: Duration = FAST_RETRY_FOR;
/// QUIC handshake wait during quick retries.
const FAST_QUIC_WAIT: Duration = Duration::from_millis(800);
/// Concurrent streams the edge may open on one connection.
pub const MAX_STREAMS_PER_CONN: u32 = 128;

/// Public state of one connection slot, for status and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotState {
    pub connected: bool,
    pub edge: Option<SocketAddr>,
    /// Index of the `edge:` entry it is connected to.
    pub entry: Option<usize>,
    pub protocol: &'static str,
}

struct Shared {
    connector_id: [u8; 16],
    current: watch::Sender<Arc<Runtime>>,
    previous: Mutex<Option<Arc<Runtime>>>,
    draining: watch::Sender<bool>,
    active_streams: AtomicUsize,
    streams_done: Notify,
    slots: watch::Sender<Vec<SlotState>>,
    /// Last good addresses per edge entry, kept when DNS fails.
    resolved: Mutex<Vec<Vec<SocketAddr>>>,
    /// Per edge entry: resolving it fails now (said once, not per attempt).
    dns_failing: Mutex<Vec<bool>>,
    endpoints: Mutex<(Option<quinn::Endpoint>, Option<quinn::Endpoint>)>,
}

/// A running connector. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    shared: Arc<Shared>,
}

impl Connector {
    /// Prepares a connector for `config`; fails on unusable embedded certificates.
    pub fn new(config: Box<DeviceConfig>) -> Result<Self, String> {
        let rt = Arc::new(Runtime::new(config, 1)?);
        let slots = vec![SlotState::default(); usize::from(rt.config.ha_connections.max(1))];
        let edges = rt.config.edges.len();
        Ok(Connector {
            shared: Arc::new(Shared {
                connector_id: random_bytes(),
                current: watch::channel(rt).0,
                previous: Mutex::new(None),
                draining: watch::channel(false).0,
                active_streams: AtomicUsize::new(0),
                streams_done: Notify::new(),
                slots: watch::channel(slots).0,
                resolved: Mutex::new(vec![Vec::new(); edges]),
                dns_failing: Mutex::new(vec![false; edges]),
                endpoints: Mutex::new((None, None)),
            }),
        })
    }

    /// Applies a new config to new streams and sends its rules to the edges. Edge
    /// addresses and connection counts take effect on the next restart.
    pub fn reload(&self, config: Box<DeviceConfig>) -> Result<(), String> {
        let old = self.shared.current.borrow().clone();
        let rt = Arc::new(Runtime::new(config, old.generation.wrapping_add(1))?);
        *lock(&self.shared.previous) = Some(old);
        self.shared.current.send_replace(rt);
        Ok(())
    }

    /// Slot states, updated as connections come and go.
    pub fn slots(&self) -> watch::Receiver<Vec<SlotState>> {
        self.shared.slots.subscribe()
    }

    /// Runs until `shutdown` resolves, then drains: tells the edges, lets streams in
    /// flight finish within the grace period, and closes.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let n = self.shared.slots.borrow().len();
        let mut tasks = Vec::with_capacity(n);
        for slot in 0..n {
            let shared = self.shared.clone();
            tasks.push(tokio::spawn(async move { run_slot(shared, slot).await }));
        }
        if cfg!(target_env = "musl") {
            tasks.push(tokio::spawn(trim_heap_when_quiet()));
        }
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
        for ep in endpoints.into_iter().flatten() {
            ep.close(0u32.into(), b"connector shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
        log::info!("connector stopped");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave their data half-updated (every
    // critical section is a single assignment), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Random bytes from the system, or from the clock if it has none.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        // No system randomness: fall back to the clock, good enough for ids and jitter.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8;
        }
    }
    b
}

/// Exponential backoff with jitter: each delay is drawn from [d/2, d].
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            next: min,
            min,
            max,
        }
    }
    fn reset(&mut self) {
        self.next = self.min;
    }
    fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(d)
    }
}

/// Why a connection attempt or a connection failed.
#[derive(Debug)]
struct Failure {
    message: String,
    /// The edge refused the tunnel for a reason retrying cannot change.
    refused: bool,
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

/// A delay drawn from [d/2, d].
fn jitter(d: Duration) -> Duration {
    let r = u64::from(u32::from_le_bytes(random_bytes()));
    let half = d.as_millis() as u64 / 2;
    Duration::from_millis(half + r % (half + 1))
}

fn set_slot(shared: &Shared, slot: usize, state: SlotState) {
    shared.slots.send_modify(|s| {
        if let Some(x) = s.get_mut(slot) {
            *x = state;
        }
    });
}

/// A slot's own edge entry (`slot % edges`), and since when it has been unreachable.
struct Home {
    entry: usize,
    down_since: Option<Instant>,
}

async fn run_slot(shared: Arc<Shared>, slot: usize) {
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut refusals = Backoff::new(REFUSED_MIN, REFUSED_MAX);
    let mut config = shared.current.subscribe();
    let mut auto = AutoState::default();
    let mut draining = shared.draining.subscribe();
    let edges = shared.current.borrow().config.edges.len().max(1);
    let mut home = Home {
        entry: slot % edges,
        down_since: None,
    };
    // Until when retries go at the quick pace (after losing a registered connection).
    let mut fast_until: Option<Instant> = None;
    // The quick window's first failure was logged: the others go to debug.
    let mut told = false;
    loop {
        if *draining.borrow() {
            return;
        }
        // Reloads from here on wake the wait after this attempt.
        config.borrow_and_update();
        let started = Instant::now();
        let fast = fast_until.is_some_and(|t| started < t);
        let connected = || shared.slots.borrow().get(slot).is_some_and(|s| s.connected);
        let entry = home.entry;
        let mut result = connect_and_serve(&shared, slot, &mut auto, fast, entry, &mut home).await;
        let mut was_registered = connected();
        if !was_registered && result.is_err() {
            home.down_since.get_or_insert_with(Instant::now);
            // Its own edge just failed again: after long enough, another edge that is
            // up serves this slot meanwhile.
            if let Some(other) = borrow_entry(&shared, slot, &home) {
                if let Err(e) = &result {
                    log::debug!("connection {slot}: {e}; trying edge entry {other} meanwhile");
                }
                result = connect_and_serve(&shared, slot, &mut auto, fast, other, &mut home).await;
                was_registered = connected();
            }
        }
        set_slot(&shared, slot, SlotState::default());
        if was_registered {
            fast_until = Some(Instant::now() + FAST_RETRY_FOR);
            told = false;
        }
        let fast = fast_until.is_some_and(|t| Instant::now() < t);
        let lived = started.elapsed();
        if lived >= STABLE_AFTER {
            backoff.reset();
        }
        if was_registered {
            refusals.reset();
        }
        let delay = match result {
            Ok(reason) => {
                log::info!("connection {slot}: {reason}; reconnecting");
                // An orderly end (the edge going away) reconnects at once.
                if *draining.borrow() {
                    return;
                }
                Duration::from_millis(100)
            }
            Err(e) if e.refused => {
                let d = refusals.delay();
                log::warn!(
                    "connection {slot}: {e}; retrying in {:.0}s (at once when the device \
                     config is reloaded)",
                    d.as_secs_f32()
                );
                d
            }
            // One line per outage: the loss (or first failure) says what the quick
            // retries will do, and only their success is logged at info.
            Err(e) if fast && told => {
                let d = jitter(FAST_RETRY_DELAY);
                log::debug!(
                    "connection {slot}: {e}; retrying in {:.1}s",
                    d.as_secs_f32()
                );
                d
            }
            Err(e) if fast => {
                told = true;
                log::warn!(
                    "connection {slot}: {e}; retrying about every second for up to {}s",
                    FAST_RETRY_FOR.as_secs()
                );
                jitter(FAST_RETRY_DELAY)
            }
            Err(e) => {
                let d = backoff.delay();
                log::warn!(
                    "connection {slot}: {e}; retrying in {:.1}s",
                    d.as_secs_f32()
                );
                d
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            // A new config (a new token, say) is worth trying now.
            _ = config.changed() => {}
            _ = wait_true(&mut draining) => return,
        }
    }
}

/// The edge entry a slot tries after its own failed, once that has been unreachable
/// for [`BORROW_AFTER`]: among the entries other slots are connected to now (so they
/// are up), the one serving the fewest of them. `None`: keep to its own.
fn borrow_entry(shared: &Shared, slot: usize, home: &Home) -> Option<usize> {
    if home.down_since?.elapsed() < BORROW_AFTER {
        return None;
    }
    let slots = shared.slots.borrow();
    let mut counts: Vec<(usize, usize)> = Vec::new();
    for (i, s) in slots.iter().enumerate() {
        let Some(e) = s
            .entry
            .filter(|&e| i != slot && s.connected && e != home.entry)
        else {
            continue;
        };
        match counts.iter_mut().find(|(x, _)| *x == e) {
            Some(c) => c.1 += 1,
            None => counts.push((e, 1)),
        }
    }
    counts.into_iter().min_by_key(|&(_, n)| n).map(|(e, _)| e)
}

/// Resolves edge entry `idx` for `slot`. When DNS fails the last good addresses are
/// used; that is said once per failing spell, and once when the name resolves again.
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
    let pick = |addrs: &[SocketAddr]| addrs[(slot / edges.len()) % addrs.len()];
    let fresh = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    let why = match fresh {
        Ok(Ok(it)) => {
            let mut v: Vec<SocketAddr> = it.collect();
            v.sort_by_key(|a| a.is_ipv6()); // IPv4 first: the common case on cellular NAT
            if v.is_empty() {
                "it has no address".to_string()
            } else {
                if let Some(cache) = lock(&shared.resolved).get_mut(idx) {
                    cache.clone_from(&v);
                }
                if set_dns_failing(shared, idx, false) {
                    log::info!("edge {entry} resolves again ({})", addr_list(&v));
                }
                return Ok((pick(&v), host.to_string()));
            }
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {}s", RESOLVE_TIMEOUT.as_secs()),
    };
    let cached = lock(&shared.resolved).get(idx).cloned().unwrap_or_default();
    if cached.is_empty() {
        return Err(format!("cannot resolve edge {entry}: {why}"));
    }
    if !set_dns_failing(shared, idx, true) {
        log::warn!(
            "cannot resolve edge {entry} ({why}); using its last known addresses ({}) \
             until it resolves again",
            addr_list(&cached)
        );
    }
    Ok((pick(&cached), host.to_string()))
}

/// Records whether resolving edge entry `idx` fails; what it was before.
fn set_dns_failing(shared: &Shared, idx: usize, failing: bool) -> bool {
    lock(&shared.dns_failing)
        .get_mut(idx)
        .map(|f| std::mem::replace(f, failing))
        .unwrap_or(false)
}

fn addr_list(addrs: &[SocketAddr]) -> String {
    let v: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    v.join(", ")
}

fn endpoint_for(shared: &Shared, remote: SocketAddr) -> Result<quinn::Endpoint, String> {
    let mut eps = lock(&shared.endpoints);
    let slot = if remote.is_ipv6() {
        &mut eps.1
    } else {
        &mut eps.0
    };
    if let Some(ep) = slot {
        return Ok(ep.clone());
    }
    let ep = quic::client_endpoint(remote).map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    *slot = Some(ep.clone());
    Ok(ep)
}

/// How a slot in `protocol: auto` currently reaches its edge.
#[derive(Default)]
struct AutoState {
    /// QUIC seemed blocked: use HTTP/2 and probe QUIC now and then.
    on_h2: bool,
}

/// Everything needed to dial one edge address.
struct Dial {
    /// The edge entry (index in the config's `edge:` list) the address came from.
    entry: usize,
    addr: SocketAddr,
    server_name: String,
    tls: rustls::ClientConfig,
    tuning: quic::ClientTuning,
}

impl Dial {
    async fn quic(&self, shared: &Shared, handshake: Duration) -> Result<Session, TransportError> {
        let endpoint = endpoint_for(shared, self.addr).map_err(TransportError::backoff)?;
        let tuning = quic::ClientTuning {
            handshake_timeout: handshake,
            ..self.tuning
        };
        quic::connect(
            &endpoint,
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
            self.tuning.keepalive,
            self.tuning.idle_timeout,
            self.tuning.max_streams,
            H2_CONNECT_TIMEOUT,
        )
        .await
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
async fn prepare_dial(shared: &Shared, slot: usize, entry: usize) -> Result<Dial, String> {
    let (addr, server_name) = edge_for(shared, slot, entry).await?;
    let rt = shared.current.borrow().clone();
    let cfg = &rt.config;
    let tls = rt.edge_tls()?;
    Ok(Dial {
        entry,
        addr,
        server_name,
        tls,
        tuning: quic::ClientTuning {
            keepalive: Duration::from_secs(u64::from(cfg.keepalive_secs.max(1))),
            idle_timeout: Duration::from_secs(u64::from(cfg.idle_timeout_secs.max(2))),
            max_streams: MAX_STREAMS_PER_CONN,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            send_window: quic::device_send_window(cfg.ha_connections),
        },
    })
}

/// Opens a session to `dial` with `protocol`; in `auto`, QUIC first and HTTP/2 when
/// UDP seems blocked (remembered in `auto`).
async fn open_session(
    shared: &Shared,
    dial: &Dial,
    slot: usize,
    protocol: Protocol,
    auto: &mut AutoState,
    fast: bool,
) -> Result<Session, String> {
    let (quic_wait, auto_wait) = if fast {
        (FAST_QUIC_WAIT, FAST_QUIC_WAIT)
    } else {
        (HANDSHAKE_TIMEOUT, AUTO_QUIC_WAIT)
    };
    Ok(match protocol {
        Protocol::Quic => dial
            .quic(shared, quic_wait)
            .await
            .map_err(|e| dial.describe(e))?,
        Protocol::Http2 => dial.h2().await.map_err(|e| dial.describe(e))?,
        Protocol::Auto if !auto.on_h2 => match dial.quic(shared, auto_wait).await {
            Ok(s) => s,
            Err(e) if e.retry == Retry::Fallback => {
                // Said only once TCP works: when both fail, the edge is just down.
                let s = dial.h2().await.map_err(|e| dial.describe(e))?;
                // A quick retry's short QUIC wait proves little: its first packet may
                // have gone out while the edge was still down, and the resend comes
                // after about a second. The edge is up now (TCP answered): ask again.
                if fast {
                    if let Ok(q) = dial.quic(shared, AUTO_QUIC_WAIT).await {
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
                auto.on_h2 = true;
                s
            }
            Err(e) => return Err(dial.describe(e)),
        },
        Protocol::Auto => match dial.h2().await {
            Ok(s) => s,
            Err(e) => {
                // TCP fails too: the next attempt starts from QUIC again.
                auto.on_h2 = false;
                return Err(dial.describe(e));
            }
        },
    })
}

/// One connection's life: dial edge entry `entry`, register, serve. `Ok` is an orderly
/// end. Serving away from the slot's own edge, it tries its own now and then and moves
/// back (make before break) when it answers.
async fn connect_and_serve(
    shared: &Arc<Shared>,
    slot: usize,
    auto: &mut AutoState,
    fast: bool,
    entry: usize,
    home: &mut Home,
) -> Result<String, Failure> {
    let mut dial = prepare_dial(shared, slot, entry).await?;
    let rt = shared.current.borrow().clone();
    let protocol = rt.config.protocol;
    let session = open_session(shared, &dial, slot, protocol, auto, fast).await?;
    let registered = register(shared, slot, &session, rt.clone(), entry).await;
    let mut current = match registered {
        Ok(r) => (session, r),
        Err(e) => {
            session.close("connection ended");
            return Err(e);
        }
    };
    if entry == home.entry {
        home.down_since = None;
    } else {
        let own = rt.config.edges.get(home.entry).map_or("?", |e| e.as_str());
        log::warn!(
            "connection {slot}: its edge {own} has been unreachable for {}s; serving \
             through edge {} until it answers again",
            home.down_since.map_or(0, |t| t.elapsed().as_secs()),
            dial.server_name
        );
    }
    let auto_mode = protocol == Protocol::Auto;
    loop {
        let probe = if dial.entry != home.entry {
            Some(Probe::Home(home.entry))
        } else if auto_mode && auto.on_h2 {
            Some(Probe::Quic(&dial))
        } else {
            None
        };
        let (session, reg) = current;
        let ended = serve_session(shared, slot, session, reg, probe).await;
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
                    Some(to) => {
                        log::info!(
                            "connection {slot}: edge {} answers again; moved back from edge {}",
                            to.server_name,
                            dial.server_name
                        );
                        home.down_since = None;
                        auto.on_h2 = session.protocol() == "http2";
                        dial = to;
                    }
                    None => {
                        log::info!(
                            "connection {slot}: QUIC to the edge works again; moved back from HTTP/2"
                        );
                        auto.on_h2 = false;
                    }
                }
                current = (session, reg);
            }
            Ok(Ended::GoAway(why)) => return Ok(why),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Why a registered connection ended in an orderly way.
enum Ended {
    /// The edge asked its connectors to go elsewhere.
    GoAway(String),
    /// A probe found a better way: serve this registered connection instead.
    Moved(Box<Moved>),
}

/// A registered connection found by a probe; `dial` is set when it is to another edge.
struct Moved {
    session: Session,
    reg: Registered,
    dial: Option<Dial>,
}

/// What a registered connection tries now and then.
#[derive(Clone, Copy)]
enum Probe<'a> {
    /// On the HTTP/2 fallback: QUIC to the same edge.
    Quic(&'a Dial),
    /// Away from the slot's own edge entry: that entry.
    Home(usize),
}

/// Streams in flight on one session, for draining it.
struct SessionStreams {
    count: AtomicUsize,
    done: Notify,
    /// Set when the session drains: idle keep-alive streams then end early.
    draining: watch::Sender<bool>,
}

impl Default for SessionStreams {
    fn default() -> Self {
        SessionStreams {
            count: AtomicUsize::new(0),
            done: Notify::new(),
            draining: watch::channel(false).0,
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

async fn serve_session(
    shared: &Arc<Shared>,
    slot: usize,
    session: Session,
    reg: Registered,
    probe: Option<Probe<'_>>,
) -> Result<Ended, String> {
    let streams = Arc::new(SessionStreams::default());
    let result = serve_registered(shared, slot, &session, reg, probe, &streams).await;
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

/// A connection the edge accepted: its control stream and what it said.
struct Registered {
    control: crate::transport::TunnelStream,
    edge_name: String,
    generation: u32,
}

/// The control handshake: hello, register, registered. Marks the slot connected.
async fn register(
    shared: &Arc<Shared>,
    slot: usize,
    session: &Session,
    rt: Arc<Runtime>,
    entry: usize,
) -> Result<Registered, Failure> {
    let addr = session.remote_addr();
    let mut control = tokio::time::timeout(REGISTER_TIMEOUT, session.accept_stream())
        .await
        .map_err(|_| format!("edge {addr} opened no control stream"))?
        .map_err(|e| format!("edge {addr}: {e}"))?;
    let hello: EdgeMsg = tokio::time::timeout(REGISTER_TIMEOUT, wire::read_control(&mut control))
        .await
        .map_err(|_| format!("edge {addr} sent no hello"))?
        .map_err(|e| format!("edge {addr}: {e}"))?;
    let edge_name = match hello {
        EdgeMsg::Hello { version, edge } if version == PROTOCOL_VERSION => edge,
        // Only an upgrade of one side changes this.
        EdgeMsg::Hello { version, .. } => {
            return Err(Failure {
                message: version_mismatch(addr, version),
                refused: true,
            })
        }
        other => return Err(format!("edge {addr} sent {other:?} before hello").into()),
    };
    let generation = rt.generation;
    let register = ConnectorMsg::Register(Register {
        version: PROTOCOL_VERSION,
        token: rt.config.token.to_string(),
        connector_id: shared.connector_id,
        conn_index: slot as u8,
        rules_generation: generation,
        rules: rt.rule_infos.clone(),
        software: env!("CARGO_PKG_VERSION").into(),
    });
    wire::write_control(&mut control.send, &register)
        .await
        .map_err(|e| format!("edge {addr}: {e}"))?;
    let reply: EdgeMsg =
        tokio::time::timeout(REGISTER_TIMEOUT, wire::read_control(&mut control.recv))
            .await
            .map_err(|_| format!("edge {addr} did not answer the registration"))?
            .map_err(|e| format!("edge {addr}: {e}"))?;
    let tunnel_id = match reply {
        EdgeMsg::Registered { tunnel_id, .. } => tunnel_id,
        EdgeMsg::Refused { reason, permanent } => {
            return Err(Failure {
                message: format!("edge {edge_name} ({addr}) refused the tunnel: {reason}"),
                refused: permanent,
            })
        }
        other => return Err(format!("edge {addr} answered {other:?}").into()),
    };
    log::info!(
        "connection {slot} registered: tunnel {} ({}) at edge {edge_name} ({addr}) over {}",
        rt.config.tunnel,
        hex(&tunnel_id),
        session.protocol()
    );
    set_slot(
        shared,
        slot,
        SlotState {
            connected: true,
            edge: Some(addr),
            entry: Some(entry),
            protocol: session.protocol(),
        },
    );
    Ok(Registered {
        control,
        edge_name,
        generation,
    })
}

/// A QUIC connection to the probed edge, registered; `None` while QUIC still fails.
async fn probe_quic(shared: &Arc<Shared>, slot: usize, dial: &Dial) -> Option<Moved> {
    let session = dial.quic(shared, AUTO_QUIC_WAIT).await.ok()?;
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

/// A registered connection to edge entry `home`; `None` while it does not answer.
async fn probe_home(shared: &Arc<Shared>, slot: usize, home: usize) -> Option<Moved> {
    let dial = prepare_dial(shared, slot, home).await.ok()?;
    let rt = shared.current.borrow().clone();
    let mut auto = AutoState::default();
    let session =
        match open_session(shared, &dial, slot, rt.config.protocol, &mut auto, false).await {
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

async fn serve_registered(
    shared: &Arc<Shared>,
    slot: usize,
    session: &Session,
    reg: Registered,
    probe: Option<Probe<'_>>,
    streams: &Arc<SessionStreams>,
) -> Result<Ended, String> {
    let addr = session.remote_addr();
    let Registered {
        control,
        edge_name,
        mut generation,
    } = reg;

    // The control stream's reader runs apart, so no select! branch is cut mid-frame.
    let (msgs_tx, mut msgs) = mpsc::channel::<Result<EdgeMsg, String>>(4);
    let mut recv = control.recv;
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
    let _reader_guard = AbortOnDrop(reader);
    let mut send = control.send;
    let mut rules = shared.current.subscribe();
    let mut draining = shared.draining.subscribe();
    let mut drained = *draining.borrow();
    if drained {
        streams.draining.send_replace(true);
        let _ = wire::write_control(&mut send, &ConnectorMsg::Draining).await;
    }
    // Probes are spread over [QUIC_REPROBE/2, QUIC_REPROBE] so slots that fell back
    // (or moved to another edge) together do not move back together.
    let first_probe = jitter(QUIC_REPROBE);
    let mut probe_timer =
        tokio::time::interval_at(tokio::time::Instant::now() + first_probe, QUIC_REPROBE);
    type Probing<'a> =
        std::pin::Pin<Box<dyn std::future::Future<Output = Option<Moved>> + Send + 'a>>;
    let mut probing: Option<Probing<'_>> = None;
    loop {
        tokio::select! {
            stream = session.accept_stream() => {
                let stream = match stream {
                    Ok(s) => s,
                    Err(_) => return Err(format!("lost edge {edge_name} ({addr}): {}", session.closed().await)),
                };
                spawn_stream(shared, streams, stream);
            }
            msg = msgs.recv() => match msg {
                Some(Ok(EdgeMsg::GoAway { reason })) => {
                    let _ = wire::write_control(&mut send, &ConnectorMsg::Draining).await;
                    return Ok(Ended::GoAway(format!("edge {edge_name} ({addr}) is going away: {reason}")));
                }
                Some(Ok(EdgeMsg::RulesAccepted { generation })) => {
                    log::info!("connection {slot}: edge accepted rule table {generation}");
                }
                Some(Ok(EdgeMsg::Refused { reason, .. })) => {
                    log::error!("connection {slot}: edge refused the new rules: {reason}");
                }
                Some(Ok(other)) => log::debug!("connection {slot}: ignoring {other:?}"),
                Some(Err(e)) => {
                    return Err(format!("lost edge {edge_name} ({addr}): control stream: {e}"));
                }
                None => {
                    return Err(format!("lost edge {edge_name} ({addr}): control stream ended"));
                }
            },
            changed = rules.changed(), if !drained => {
                if changed.is_err() { continue; }
                let rt = rules.borrow_and_update().clone();
                if rt.generation != generation {
                    generation = rt.generation;
                    let m = ConnectorMsg::UpdateRules { generation, rules: rt.rule_infos.clone() };
                    if let Err(e) = wire::write_control(&mut send, &m).await {
                        return Err(format!("lost edge {edge_name} ({addr}): {e}"));
                    }
                }
            }
            _ = wait_true(&mut draining), if !drained => {
                drained = true;
                streams.draining.send_replace(true);
                let _ = wire::write_control(&mut send, &ConnectorMsg::Draining).await;
            }
            _ = probe_timer.tick(), if probe.is_some() && probing.is_none() && !drained => {
                probing = match probe {
                    Some(Probe::Quic(dial)) => Some(Box::pin(probe_quic(shared, slot, dial))),
                    Some(Probe::Home(home)) => Some(Box::pin(probe_home(shared, slot, home))),
                    None => None,
                };
            }
            next = async { match probing.as_mut() { Some(p) => p.await, None => std::future::pending().await } }, if probing.is_some() => {
                probing = None;
                match next {
                    Some(next) if !drained => {
                        let _ = wire::write_control(&mut send, &ConnectorMsg::Draining).await;
                        return Ok(Ended::Moved(Box::new(next)));
                    }
                    Some(next) => next.session.close("connector draining"),
                    None => log::debug!("connection {slot}: probe failed; staying"),
                }
            }
        }
    }
}

fn version_mismatch(addr: SocketAddr, version: u16) -> String {
    if version > PROTOCOL_VERSION {
        format!(
            "edge {addr} speaks tunnel protocol {version}, this mailslot speaks \
             {PROTOCOL_VERSION}: update mailslot"
        )
    } else {
        format!(
            "edge {addr} speaks tunnel protocol {version}, older than this mailslot's \
             {PROTOCOL_VERSION}: the edge needs an update"
        )
    }
}

/// Resolves once the flag is set (or its sender is gone).
async fn wait_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}

fn runtime_for(shared: &Shared, generation: u32) -> Option<Arc<Runtime>> {
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

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Lowercase hex of an id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let first = b.delay();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        for _ in 0..20 {
            let d = b.delay();
            assert!(d <= BACKOFF_MAX);
        }
        assert!(b.delay() >= BACKOFF_MAX / 2);
        b.reset();
        assert!(b.delay() <= BACKOFF_MIN);
    }
}
