//! The tunnels connected to this edge, the hostnames they serve and their connections.
//!
//! A tunnel is identified by its token's id: connectors holding the same token are
//! replicas of one tunnel and share its hostnames. A hostname belongs to at most one
//! tunnel at a time; another tunnel claiming it is refused until the first is gone.
//! Each connection carries its own rule table (replicas may run different configs
//! for a while), so routing picks a connection first, then matches its rules.
//! Compiled path patterns are shared among all tables with the same patterns, within a
//! budget per tunnel and per edge (`PathTable`). A connection's table is checked and
//! matched in `registry/rules.rs`.

use crate::util::lock;
use rustc_hash::FxHashMap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::edge::token::TunnelClaims;
use crate::hostname;
use crate::transport::Session;
use crate::util::hex;

mod paths;
mod rules;
pub(crate) use paths::{PathTable, TUNNEL_BUDGET};
pub(crate) use rules::Rules;

/// Most tunnels one edge holds. An idle tunnel of two QUIC connections costs the edge
/// about 70 KiB (`bench/scale.py`: quinn's per-connection state, TLS keys, the
/// connection's task and its registry record), so the cap is about 3.5 GiB; a smaller
/// host is bounded by its memory first (bench/README.md, "Scale", for sizing).
pub(crate) const MAX_TUNNELS: usize = 50_000;
/// Most connections one tunnel holds (all replicas together).
pub(crate) const MAX_CONNS_PER_TUNNEL: usize = 64;
/// Silence from a connector that counts as gone: at least this...
const SILENCE_BASE: Duration = Duration::from_secs(1);
/// ...plus eight round trips, at most this.
const SILENCE_MAX: Duration = Duration::from_secs(5);

/// One live tunnel connection.
pub struct Conn {
    pub(crate) session: Session,
    pub tunnel_id: [u8; 16],
    pub(crate) tunnel_name: String,
    pub connector_id: [u8; 16],
    /// The connector's instance id (stable across its restarts), when it sent one.
    pub instance: Option<[u8; 16]>,
    pub index: u8,
    pub remote: SocketAddr,
    pub(crate) rules: Mutex<Arc<Rules>>,
    /// The connector said it is draining: no new streams.
    pub draining: AtomicBool,
    /// Tunnel streams the edge has opened on it: origin connections for HTTP (each
    /// carries many requests) and access sessions.
    pub streams: AtomicU64,
    /// What the connection's token granted at registration.
    pub claims: TunnelClaims,
    /// The id of the enrolled device it belongs to, when it registered with a device
    /// key and credential (see `fleet`) rather than a tunnel token.
    pub device: Option<String>,
    /// When the edge last saw a packet from the connector on this connection, in
    /// milliseconds of [`edge_clock_ms`] (the flow watch in `tunnels` keeps it; see
    /// [`Registry::connector_heard_ms`]).
    pub(crate) heard_ms: AtomicU64,
}

/// Milliseconds since this edge process first asked: the clock of [`Conn::heard_ms`].
pub(crate) fn edge_clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The keeper of `c`'s flow among `conns` (one tunnel's): the QUIC connection with the
/// lowest index from the same connector process. The connector keeps the NAT mapping
/// of its connections to one edge address (one UDP flow: they share a socket) open
/// with the keeper's keep-alives alone; the others (siblings) stay quiet for minutes.
/// `None` over HTTP/2, where each connection is a flow of its own.
fn keeper_among<'a>(conns: &'a [Arc<Conn>], c: &Conn) -> Option<&'a Arc<Conn>> {
    if !matches!(c.session, Session::Quic(_)) {
        return None;
    }
    conns
        .iter()
        .filter(|k| k.connector_id == c.connector_id && matches!(k.session, Session::Quic(_)))
        .min_by_key(|k| k.index)
}

/// Whether `c` is a quiet sibling the NAT moved away from: its keeper now comes from
/// another address (QUIC followed the keeper across a NAT rebinding), and packets to
/// `c`'s old address reach nobody until `c` sends again. Requests go to the keeper.
fn moved_away(conns: &[Arc<Conn>], c: &Conn) -> bool {
    keeper_among(conns, c).is_some_and(|k| {
        k.session.id() != c.session.id() && k.session.remote_addr() != c.session.remote_addr()
    })
}

impl Conn {
    /// What the edge has received from the connector so far: datagrams over QUIC,
    /// bytes over HTTP/2. A connector that is alive adds to it within a round trip of
    /// a request or of the ping [`Conn::nudge`] sends, whatever its origin is doing.
    pub(crate) fn heard(&self) -> u64 {
        match &self.session {
            Session::Quic(c) => c.stats().udp_rx.datagrams,
            Session::H2(h) => h.heard(),
        }
    }

    /// Asks the connector for an answer now: a ping on either transport. QUIC
    /// acknowledges what it receives by itself, but a request may have sent nothing
    /// yet: one waiting for a stream while every stream the connector allows is busy
    /// (long polls, slow origins) leaves a live connector nothing to acknowledge.
    pub(crate) fn nudge(&self) {
        match &self.session {
            Session::H2(h) => h.nudge(),
            Session::Quic(c) => {
                crate::transport::quic::ping(c, crate::transport::quic::CONN_RECEIVE_WINDOW)
            }
        }
    }

    /// How long a connector that is alive may stay silent while the edge waits on it:
    /// a round trip or a few (retransmissions on a lossy path) and then some.
    pub(crate) fn silence_limit(&self) -> Duration {
        (SILENCE_BASE + self.session.rtt() * 8).min(SILENCE_MAX)
    }

    pub(crate) fn rules(&self) -> Arc<Rules> {
        lock(&self.rules).clone()
    }

    /// The hostnames (exact or `*.`) its rule table names.
    pub(crate) fn hostnames(&self) -> Vec<String> {
        self.rules().hostnames().map(str::to_string).collect()
    }

    /// Stops new streams on this connection. Its idle pooled streams are never handed
    /// out again: routing skips draining connections, and pooled streams are keyed by
    /// connection.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

struct Tunnel {
    name: String,
    conns: Vec<Arc<Conn>>,
    next: AtomicUsize,
    /// Requests in flight through this tunnel.
    permits: Arc<Semaphore>,
    /// Its device's daily data cap, as the connector last reported it.
    cap: Arc<super::cap::TunnelCap>,
}

#[derive(Default)]
struct Inner {
    /// Tunnel id → tunnel. This table and the two keyed by connection ids hash with
    /// `rustc_hash` (ids the edge or its signed tokens chose, not visitors); `hosts`
    /// keeps std's keyed hash.
    tunnels: FxHashMap<[u8; 16], Tunnel>,
    /// Hostname (exact, or `*.suffix`) → tunnel id.
    hosts: HashMap<String, [u8; 16]>,
    /// Connection id → connection.
    conns: FxHashMap<usize, Arc<Conn>>,
    /// Connections whose connector stopped answering: id → what [`Conn::heard`] said
    /// then. Routing avoids them until they hear from the connector again.
    silent: FxHashMap<usize, u64>,
}

/// Whether `c` is in `silent` and has not been heard from since it was put there.
fn still_silent(silent: &FxHashMap<usize, u64>, c: &Conn) -> bool {
    silent
        .get(&c.session.id())
        .is_some_and(|&at| c.heard() == at)
}

/// All tunnels on this edge.
pub struct Registry {
    inner: Mutex<Inner>,
    changed: tokio::sync::Notify,
    streams_per_tunnel: usize,
}

/// Where a visitor's request goes.
pub(crate) enum Route {
    /// No tunnel serves this hostname here.
    NoTunnel,
    /// The tunnel has no live connection that takes new streams.
    Offline,
    /// Forward through `conn` under rule `rule`; `permits` caps the tunnel's requests.
    Rule {
        conn: Arc<Conn>,
        rules: Arc<Rules>,
        permits: Arc<Semaphore>,
        rule: u16,
    },
}

impl Registry {
    /// An empty registry; each tunnel carries at most `streams_per_tunnel` requests at once.
    pub fn new(streams_per_tunnel: usize) -> Registry {
        Registry {
            inner: Mutex::new(Inner::default()),
            changed: tokio::sync::Notify::new(),
            streams_per_tunnel: streams_per_tunnel.clamp(1, Semaphore::MAX_PERMITS),
        }
    }

    /// Adds a registered connection, claiming its hostnames for its tunnel.
    pub fn add(&self, conn: Arc<Conn>) -> Result<(), String> {
        let streams_per_tunnel = self.streams_per_tunnel;
        let mut inner = lock(&self.inner);
        let rules = conn.rules();
        check_claims(&inner, conn.tunnel_id, &rules)?;
        check_budget(&inner, conn.tunnel_id, None, &rules)?;
        if !inner.tunnels.contains_key(&conn.tunnel_id) && inner.tunnels.len() >= MAX_TUNNELS {
            return Err("this edge is full (tunnel limit reached); try another edge".into());
        }
        let tunnel = inner
            .tunnels
            .entry(conn.tunnel_id)
            .or_insert_with(|| Tunnel {
                name: conn.tunnel_name.clone(),
                conns: Vec::new(),
                next: AtomicUsize::new(0),
                permits: Arc::new(Semaphore::new(streams_per_tunnel)),
                cap: Arc::default(),
            });
        if tunnel.conns.len() >= MAX_CONNS_PER_TUNNEL {
            return Err(format!(
                "tunnel already has {MAX_CONNS_PER_TUNNEL} connections"
            ));
        }
        tunnel.conns.push(conn.clone());
        inner.conns.insert(conn.session.id(), conn.clone());
        for h in rules.hostnames() {
            inner.hosts.insert(h.to_string(), conn.tunnel_id);
        }
        drop(inner);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Closes what a connector process that is gone left behind: the connections of
    /// `conn`'s tunnel with `conn`'s instance id but another process id. A connector
    /// killed without a goodbye (`kill -9`, a crash, power loss of a board that keeps
    /// its boot) and started again reaches this as soon as its new process registers,
    /// instead of the old connections lingering (and taking requests) until their idle
    /// timeout. Connections of the registering process and of other instances (replicas)
    /// stay. Returns how many went.
    pub(crate) fn supersede(&self, conn: &Arc<Conn>) -> usize {
        let Some(instance) = conn.instance else {
            return 0;
        };
        // Taken out of the table under the lock that found them, so that the new
        // process's connections, registering at the same time, close each one once.
        let old: Vec<Arc<Conn>> = {
            let mut inner = lock(&self.inner);
            let Some(t) = inner.tunnels.get(&conn.tunnel_id) else {
                return 0;
            };
            let old: Vec<Arc<Conn>> = t
                .conns
                .iter()
                .filter(|c| c.instance == Some(instance) && c.connector_id != conn.connector_id)
                .cloned()
                .collect();
            for c in &old {
                c.set_draining();
                remove_locked(&mut inner, c);
            }
            old
        };
        if !old.is_empty() {
            self.changed.notify_waiters();
        }
        for c in &old {
            log::info!(
                "tunnel {} ({}) connector {} #{} from {}: superseded by connector {}, the \
                 same instance started again; closing",
                c.tunnel_name,
                hex(&c.tunnel_id),
                &hex(&c.connector_id)[..8],
                c.index,
                c.remote,
                &hex(&conn.connector_id)[..8],
            );
            c.session
                .close("superseded: this connector instance registered again from a new process");
        }
        old.len()
    }

    /// Replaces a connection's rule table (after a reload on the device).
    pub(crate) fn update_rules(&self, conn: &Conn, rules: Rules) -> Result<(), String> {
        let mut inner = lock(&self.inner);
        check_claims(&inner, conn.tunnel_id, &rules)?;
        check_budget(&inner, conn.tunnel_id, Some(conn), &rules)?;
        *lock(&conn.rules) = Arc::new(rules);
        rebuild_hosts(&mut inner, conn.tunnel_id);
        Ok(())
    }

    /// Removes a connection; the tunnel and its hostnames go with its last connection.
    /// What the edge last heard on it counts for the connector's other connections (a
    /// sibling that becomes the keeper has the keeper's time to be heard from).
    pub(crate) fn remove(&self, conn: &Arc<Conn>) {
        let mut inner = lock(&self.inner);
        let heard = conn.heard_ms.load(Ordering::Relaxed);
        if let Some(t) = inner.tunnels.get(&conn.tunnel_id) {
            for c in t
                .conns
                .iter()
                .filter(|c| c.connector_id == conn.connector_id)
            {
                c.heard_ms.fetch_max(heard, Ordering::Relaxed);
            }
        }
        remove_locked(&mut inner, conn);
        drop(inner);
        self.changed.notify_waiters();
    }

    /// When the edge last heard from `conn`'s connector on any of its QUIC connections
    /// here ([`Conn::heard_ms`]): its keeper speaks for all of them.
    pub(crate) fn connector_heard_ms(&self, conn: &Conn) -> u64 {
        let inner = lock(&self.inner);
        let own = conn.heard_ms.load(Ordering::Relaxed);
        inner.tunnels.get(&conn.tunnel_id).map_or(own, |t| {
            t.conns
                .iter()
                .filter(|c| c.connector_id == conn.connector_id)
                .map(|c| c.heard_ms.load(Ordering::Relaxed))
                .fold(own, u64::max)
        })
    }

    /// Whether `conn` is its flow's keeper (see [`keeper_among`]).
    pub(crate) fn is_keeper(&self, conn: &Conn) -> bool {
        let inner = lock(&self.inner);
        inner.tunnels.get(&conn.tunnel_id).is_some_and(|t| {
            keeper_among(&t.conns, conn).is_some_and(|k| k.session.id() == conn.session.id())
        })
    }

    /// Notes that `conn`'s connector has sent nothing since [`Conn::heard`] said `heard`
    /// (a request on it waited [`Conn::silence_limit`] without a packet back): new
    /// requests go to the tunnel's other connections until it is heard from again, or
    /// its idle timeout ends it.
    pub(crate) fn set_silent(&self, conn: &Conn, heard: u64) {
        let id = conn.session.id();
        let mut inner = lock(&self.inner);
        if inner.conns.contains_key(&id) {
            inner.silent.insert(id, heard);
        }
    }

    /// Whether the tunnel serving `host` has a connection besides those in `avoid` that
    /// takes new streams and is not silent: somewhere a retry can go.
    pub(crate) fn has_answering(&self, host: &str, avoid: &[usize]) -> bool {
        let inner = lock(&self.inner);
        let Some(t) = lookup_host(&inner.hosts, host).and_then(|id| inner.tunnels.get(&id)) else {
            return false;
        };
        t.conns.iter().any(|c| {
            let id = c.session.id();
            !c.draining.load(Ordering::Acquire)
                && !avoid.contains(&id)
                && !still_silent(&inner.silent, c)
                && !moved_away(&t.conns, c)
        })
    }

    /// Every tunnel held here, with the hostnames it serves (the cluster's presence).
    pub(crate) fn held(&self) -> Vec<([u8; 16], Vec<String>)> {
        let inner = lock(&self.inner);
        let mut by: HashMap<[u8; 16], Vec<String>> =
            inner.tunnels.keys().map(|t| (*t, Vec::new())).collect();
        for (host, t) in &inner.hosts {
            if let Some(hosts) = by.get_mut(t) {
                hosts.push(host.clone());
            }
        }
        by.into_iter().collect()
    }

    /// Whether a tunnel is held here.
    pub(crate) fn holds(&self, tunnel: &[u8; 16]) -> bool {
        lock(&self.inner).tunnels.contains_key(tunnel)
    }

    /// The connections of one tunnel (empty when it is not held here).
    pub(crate) fn tunnel_conns(&self, tunnel: &[u8; 16]) -> Vec<Arc<Conn>> {
        lock(&self.inner)
            .tunnels
            .get(tunnel)
            .map(|t| t.conns.clone())
            .unwrap_or_default()
    }

    /// The data cap state of a tunnel held here.
    pub(crate) fn tunnel_cap(&self, tunnel: &[u8; 16]) -> Option<Arc<super::cap::TunnelCap>> {
        lock(&self.inner).tunnels.get(tunnel).map(|t| t.cap.clone())
    }

    /// The live connection with this id.
    pub fn conn(&self, id: usize) -> Option<Arc<Conn>> {
        lock(&self.inner).conns.get(&id).cloned()
    }

    /// Picks a live connection for `host` (round robin) and the rule for `path`.
    pub(crate) fn route(&self, host: &str, path: &str) -> Route {
        self.pick(host, path, &[], true)
    }

    /// As [`route`](Self::route), avoiding the listed connections (a retry).
    pub(crate) fn route_excluding(&self, host: &str, path: &str, avoid: &[usize]) -> Route {
        self.pick(host, path, avoid, true)
    }

    /// As [`route`](Self::route) without turning the round robin: a look at what
    /// would serve the request, when the connection is picked later. (Turning it
    /// twice per request would, with an even number of connections, leave every
    /// other one idle.)
    pub(crate) fn peek(&self, host: &str, path: &str) -> Route {
        self.pick(host, path, &[], false)
    }

    fn pick(&self, host: &str, path: &str, avoid: &[usize], turn: bool) -> Route {
        let mut inner = lock(&self.inner);
        let inner = &mut *inner;
        let Some(id) = lookup_host(&inner.hosts, host) else {
            return Route::NoTunnel;
        };
        let Some(t) = inner.tunnels.get(&id) else {
            return Route::NoTunnel;
        };
        if !inner.silent.is_empty() {
            // A silent connection heard from again is back in the rotation.
            let conns = &inner.conns;
            inner
                .silent
                .retain(|id, at| conns.get(id).is_some_and(|c| c.heard() == *at));
        }
        let silent = &inner.silent;
        let usable = |c: &Arc<Conn>, answering_only: bool| {
            let skipped = answering_only && (still_silent(silent, c) || moved_away(&t.conns, c));
            !c.draining.load(Ordering::Acquire) && !avoid.contains(&c.session.id()) && !skipped
        };
        // Counted, then picked round-robin by position: no list is built per request.
        let count = |answering_only| t.conns.iter().filter(|c| usable(c, answering_only)).count();
        // While some connections stay silent or were left behind by a NAT rebinding,
        // the others take the requests (none left: try them anyway).
        let answering_only = count(true) > 0;
        let n = count(answering_only);
        if n == 0 {
            return Route::Offline;
        }
        let pick = if turn {
            t.next.fetch_add(1, Ordering::Relaxed)
        } else {
            t.next.load(Ordering::Relaxed)
        } % n;
        let chosen = t
            .conns
            .iter()
            .filter(|c| usable(c, answering_only))
            .nth(pick);
        let Some(conn) = chosen.cloned() else {
            return Route::Offline;
        };
        let rules = conn.rules();
        match rules.matching(host, path) {
            Some((rule, _)) => Route::Rule {
                conn,
                rules: rules.clone(),
                rule,
                permits: t.permits.clone(),
            },
            None => Route::NoTunnel,
        }
    }

    /// Number of live connections of the tunnel serving `host`.
    pub(crate) fn connections_for(&self, host: &str) -> usize {
        let inner = lock(&self.inner);
        lookup_host(&inner.hosts, host)
            .and_then(|id| inner.tunnels.get(&id))
            .map_or(0, |t| t.conns.len())
    }

    /// Waits until the tunnel serving `host` has at least `n` connections.
    pub async fn wait_for(&self, host: &str, n: usize) {
        loop {
            let changed = self.changed.notified();
            if self.connections_for(host) >= n {
                return;
            }
            changed.await;
        }
    }

    /// One line per tunnel: name, id, connections and hostnames.
    pub fn summary(&self) -> Vec<String> {
        let inner = lock(&self.inner);
        let mut out: Vec<String> = inner
            .tunnels
            .iter()
            .map(|(id, t)| {
                let mut hosts: Vec<&str> = inner
                    .hosts
                    .iter()
                    .filter(|(_, v)| *v == id)
                    .map(|(h, _)| h.as_str())
                    .collect();
                hosts.sort();
                format!(
                    "{} {} connections={} hosts={}",
                    t.name,
                    hex(id),
                    t.conns.len(),
                    hosts.join(",")
                )
            })
            .collect();
        out.sort();
        out
    }

    /// One line per live connection, sorted: tunnel, id, connector, index, protocol,
    /// connector address and the hostnames of its rules.
    pub(crate) fn connection_lines(&self) -> Vec<String> {
        let inner = lock(&self.inner);
        let mut out: Vec<String> = inner
            .tunnels
            .iter()
            .flat_map(|(id, t)| {
                let cap = if t.cap.is_over() {
                    " data_cap=over"
                } else {
                    ""
                };
                t.conns.iter().map(move |c| {
                    let hosts: Vec<String> = c.rules().hostnames().map(String::from).collect();
                    let packet = c
                        .session
                        .packet_size()
                        .map_or_else(|| "-".to_string(), |p| p.to_string());
                    format!(
                        "tunnel={} id={} connector={} index={} protocol={} from={} rtt_ms={:.1} \
                         packet={} draining={} streams={} hosts={}{cap}",
                        t.name,
                        hex(id),
                        &hex(&c.connector_id)[..8],
                        c.index,
                        c.session.protocol(),
                        // Where it is now: QUIC follows the connector across NAT
                        // rebindings, and `remote` is where it registered from.
                        c.session.remote_addr(),
                        c.session.rtt().as_secs_f64() * 1000.0,
                        packet,
                        c.draining.load(Ordering::Acquire),
                        c.streams.load(Ordering::Relaxed),
                        hosts.join(",")
                    )
                })
            })
            .collect();
        out.sort();
        out
    }

    /// Up to `max` exact hostnames (no `*.` pattern) that a registered tunnel serves and
    /// that a token or credential of one of its connections allows, sorted: the names
    /// the edge may get certificates for (`acme`).
    pub(crate) fn served_names(&self, max: usize) -> Vec<String> {
        let inner = lock(&self.inner);
        let mut names: Vec<String> = inner
            .hosts
            .iter()
            .filter(|(h, _)| !h.starts_with("*."))
            .filter(|(h, id)| {
                inner.tunnels.get(*id).is_some_and(|t| {
                    t.conns.iter().any(|c| {
                        c.claims
                            .hosts
                            .iter()
                            .any(|p| hostname::covers(p, h.as_str()))
                    })
                })
            })
            .map(|(h, _)| h.clone())
            .collect();
        names.sort();
        names.truncate(max);
        names
    }

    /// Told when a tunnel's hostnames may have changed (a connection came or went).
    pub(crate) fn changed(&self) -> &tokio::sync::Notify {
        &self.changed
    }

    /// Every live connection (for going away at shutdown).
    pub(crate) fn all_conns(&self) -> Vec<Arc<Conn>> {
        let inner = lock(&self.inner);
        inner
            .tunnels
            .values()
            .flat_map(|t| t.conns.iter().cloned())
            .collect()
    }
}

/// Takes `conn` out of the tables (a no-op when it is already out).
fn remove_locked(inner: &mut Inner, conn: &Arc<Conn>) {
    if inner
        .conns
        .get(&conn.session.id())
        .is_some_and(|c| Arc::ptr_eq(c, conn))
    {
        inner.conns.remove(&conn.session.id());
        inner.silent.remove(&conn.session.id());
    }
    if let Some(t) = inner.tunnels.get_mut(&conn.tunnel_id) {
        t.conns.retain(|c| !Arc::ptr_eq(c, conn));
        if t.conns.is_empty() {
            inner.tunnels.remove(&conn.tunnel_id);
        }
    }
    rebuild_hosts(inner, conn.tunnel_id);
}

/// The tunnel claiming canonical `host`: exact name first, then the most specific
/// wildcard. A name not in canonical form has none.
fn lookup_host(hosts: &HashMap<String, [u8; 16]>, host: &str) -> Option<[u8; 16]> {
    // The keys are canonical names and `*.` patterns: a host equal to a key without
    // `*` is canonical, and found without checking it first.
    if !host.contains('*') {
        if let Some(id) = hosts.get(host) {
            return Some(*id);
        }
    }
    if !hostname::is_canonical(host) {
        return None;
    }
    // Most specific wildcard first: a.b.c.d tries *.b.c.d, then *.c.d, ...
    let mut rest = host;
    while let Some((_, tail)) = rest.split_once('.') {
        if let Some(id) = hosts.get(&format!("*.{tail}")) {
            return Some(*id);
        }
        rest = tail;
    }
    None
}

fn check_claims(inner: &Inner, tunnel: [u8; 16], rules: &Rules) -> Result<(), String> {
    for h in rules.hostnames() {
        if let Some(owner) = inner.hosts.get(h) {
            if *owner != tunnel {
                let name = inner.tunnels.get(owner).map_or("?", |t| t.name.as_str());
                return Err(format!(
                    "hostname {h} is already served by tunnel {name} ({}); a hostname \
                     belongs to one tunnel (connectors sharing a token are replicas)",
                    hex(owner)
                ));
            }
        }
    }
    Ok(())
}

/// Refuses `rules` when the distinct path tables of the tunnel's connections (`replaced`
/// giving up its own) and `rules`' would together exceed [`TUNNEL_BUDGET`].
fn check_budget(
    inner: &Inner,
    tunnel: [u8; 16],
    replaced: Option<&Conn>,
    rules: &Rules,
) -> Result<(), String> {
    let mut seen: Vec<Arc<PathTable>> = vec![rules.paths.clone()];
    if let Some(t) = inner.tunnels.get(&tunnel) {
        for c in &t.conns {
            if replaced.is_some_and(|r| std::ptr::eq(r, &**c)) {
                continue;
            }
            let p = c.rules().paths.clone();
            if !seen.iter().any(|s| Arc::ptr_eq(s, &p)) {
                seen.push(p);
            }
        }
    }
    let charge: usize = seen.iter().map(|p| p.charge()).sum();
    if charge > TUNNEL_BUDGET {
        return Err(paths::too_big(charge));
    }
    Ok(())
}

fn rebuild_hosts(inner: &mut Inner, tunnel: [u8; 16]) {
    inner.hosts.retain(|_, v| *v != tunnel);
    let names: Vec<String> = inner
        .tunnels
        .get(&tunnel)
        .map(|t| {
            t.conns
                .iter()
                .flat_map(|c| c.rules().hostnames().map(String::from).collect::<Vec<_>>())
                .collect()
        })
        .unwrap_or_default();
    for h in names {
        inner.hosts.insert(h, tunnel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_lookup_prefers_the_most_specific() {
        let mut hosts = HashMap::new();
        hosts.insert("*.example.com".to_string(), [1; 16]);
        hosts.insert("*.dev42.example.com".to_string(), [2; 16]);
        hosts.insert("dev42.example.com".to_string(), [3; 16]);
        assert_eq!(lookup_host(&hosts, "a.dev42.example.com"), Some([2; 16]));
        assert_eq!(lookup_host(&hosts, "dev42.example.com"), Some([3; 16]));
        assert_eq!(lookup_host(&hosts, "x.example.com"), Some([1; 16]));
        assert_eq!(lookup_host(&hosts, "example.com"), None);
        // A pattern's own text, or a name in another spelling, is no host.
        assert_eq!(lookup_host(&hosts, "*.example.com"), None);
        assert_eq!(lookup_host(&hosts, "Dev42.example.com"), None);
    }
}
