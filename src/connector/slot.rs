//! The reconnection policy of one connection slot, without I/O.
//!
//! [`Slot`] is fed what happened (an attempt registered, ended in order, failed, was
//! refused for good; the config was reloaded) together with the current [`Instant`],
//! and answers what to do: dial which edge entry and how, wait how long and what to
//! log, probe what and when. The driver in [`super`] carries that out with sockets and
//! timers; the tests here drive time by hand.
//!
//! The timings, as the documentation promises them:
//!
//! - failures back off exponentially with jitter, 1 s to 30 s, reset after 60 s of
//!   stable service;
//! - a refusal retrying cannot change (revoked, bad token, protocol version) waits
//!   30–60 s at first, up to 15 min later; a reload of the device config retries at once;
//! - after losing a registered connection (or a GoAway) a slot retries every 150–300 ms
//!   (plus a handshake wait of 0.8 s: about every second) for 30 s, said once per
//!   outage;
//! - a slot whose own edge entry stays unreachable for 30 s connects meanwhile to an
//!   entry other slots are connected to, and probes its own every 30 s (first after
//!   15–30 s) to move back;
//! - `protocol: auto` waits 3 s for QUIC before HTTP/2, and on HTTP/2 probes QUIC on
//!   the same schedule;
//! - [`Names`]: when an edge name stops resolving, its last good addresses are used,
//!   said once, and once when it resolves again; the members an edge of a cluster
//!   told take the place of its entry's addresses, shared out over the slots
//!   ([`super::rendezvous::assign`]); a member that failed is skipped for
//!   [`MEMBER_DOWN_FOR`], twice as long after each failure that follows (at most
//!   [`MEMBER_DOWN_MAX`]), and when every member told failed the entry's own addresses
//!   serve again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::Protocol;
use crate::transport::Transport;

/// First reconnect delay.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest reconnect delay.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that lived this long resets the backoff.
pub(crate) const STABLE_AFTER: Duration = Duration::from_secs(60);
/// First delay after the edge refused the tunnel for good (revoked, a bad or expired
/// token, rules it cannot take, a protocol version it does not speak): only its
/// operator or a new device config changes that, and every attempt costs a handshake
/// of cellular data. A reload of the device config retries at once.
pub(crate) const REFUSED_MIN: Duration = Duration::from_secs(60);
/// Longest delay after such refusals.
pub(crate) const REFUSED_MAX: Duration = Duration::from_secs(15 * 60);
/// Time allowed for a QUIC handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `protocol: auto` waits for a QUIC handshake before trying HTTP/2.
pub(crate) const AUTO_QUIC_WAIT: Duration = Duration::from_secs(3);
/// How often a slot on the HTTP/2 fallback (or away from its own edge) probes for the
/// better way; the first probe comes after a jittered part of it.
pub(crate) const QUIC_REPROBE: Duration = Duration::from_secs(30);
/// After a registered connection ends (lost, or the edge went away), retry this long at
/// a quick pace before the exponential schedule: an edge that restarts is back within
/// seconds, and a fresh handshake every second finds it at once, where a long QUIC
/// handshake only retransmits its Initial at growing intervals (about 1, 3, 7 s).
pub(crate) const FAST_RETRY_FOR: Duration = Duration::from_secs(30);
/// Delay between quick retries, before jitter: each is drawn from [d/2, d].
pub(crate) const FAST_RETRY_DELAY: Duration = Duration::from_millis(300);
/// A slot whose own edge has been unreachable this long connects to another edge that
/// is up (one other slots are connected to) meanwhile, so the tunnel keeps its
/// `ha-connections`; it moves back once its own edge answers a probe again.
pub(crate) const BORROW_AFTER: Duration = FAST_RETRY_FOR;
/// QUIC handshake wait during quick retries.
pub(crate) const FAST_QUIC_WAIT: Duration = Duration::from_millis(800);
/// Delay before reconnecting after an orderly end (the edge going away).
pub(crate) const AFTER_GOAWAY: Duration = Duration::from_millis(100);

/// A small xorshift generator for jitter: spreading retries needs no cryptographic
/// quality, and tests seed it.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        // xorshift never leaves zero.
        Rng(seed | 1)
    }

    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u32
    }

    /// A delay drawn from [d/2, d].
    pub(crate) fn jitter(&mut self, d: Duration) -> Duration {
        let half = d.as_millis() as u64 / 2;
        Duration::from_millis(half + u64::from(self.next()) % (half + 1))
    }
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
    fn delay(&mut self, rng: &mut Rng) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        rng.jitter(d)
    }
}

/// How to open a session, from `protocol:` and what the slot learned about the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// QUIC only, waiting this long for the handshake.
    Quic { wait: Duration },
    /// HTTP/2 only.
    Http2,
    /// `auto`: QUIC for `wait`, HTTP/2 when UDP seems blocked. With `recheck`, once TCP
    /// answered, QUIC is asked once more for that long before falling back: a quick
    /// retry's short wait proves little, its first packet may have gone out while the
    /// edge was still down.
    QuicFirst {
        wait: Duration,
        recheck: Option<Duration>,
    },
    /// `auto` after UDP seemed blocked: HTTP/2; when TCP fails too, the next attempt
    /// starts from QUIC again.
    Http2Fallback,
}

/// How a slot in `protocol: auto` currently reaches its edge.
#[derive(Debug, Default)]
pub(crate) struct Auto {
    /// QUIC seemed blocked: use HTTP/2 and probe QUIC now and then.
    on_h2: bool,
}

impl Auto {
    /// How to open the next session; `fast` during quick retries.
    pub(crate) fn plan(&self, protocol: Protocol, fast: bool) -> Plan {
        let (quic_wait, auto_wait) = if fast {
            (FAST_QUIC_WAIT, FAST_QUIC_WAIT)
        } else {
            (HANDSHAKE_TIMEOUT, AUTO_QUIC_WAIT)
        };
        match protocol {
            Protocol::Quic => Plan::Quic { wait: quic_wait },
            Protocol::Http2 => Plan::Http2,
            Protocol::Auto if !self.on_h2 => Plan::QuicFirst {
                wait: auto_wait,
                recheck: fast.then_some(AUTO_QUIC_WAIT),
            },
            Protocol::Auto => Plan::Http2Fallback,
        }
    }

    /// QUIC got no answer where TCP did: stay on HTTP/2 (and probe QUIC).
    pub(crate) fn udp_blocked(&mut self) {
        self.on_h2 = true;
    }

    /// TCP failed on the fallback too (the edge is down), or QUIC answers again: start
    /// from QUIC.
    pub(crate) fn quic_again(&mut self) {
        self.on_h2 = false;
    }
}

/// How soon after a keeper's QUIC ping it looks whether the edge validated a new path
/// (a NAT rebinding shows as the edge's PATH_CHALLENGE, answered on the new path).
pub(crate) const KEEPER_CHECK_AFTER: Duration = Duration::from_secs(1);

/// The keep-alive duty of one registered QUIC connection, without I/O.
///
/// The QUIC connections of a connector to one edge address share one UDP socket, so
/// the NAT holds one mapping for all of them. The lowest connected slot on that flow is
/// its keeper; the others (siblings) stay quiet, on quinn's rare
/// [`crate::transport::quic::SIBLING_KEEPALIVE`], and the edge routes to the keeper
/// when a sibling was left at an old address.
///
/// The keeper refreshes the mapping every `keepalive`. Most of those refreshes are NAT
/// keep-alives (one byte of UDP, nothing answers); every [`Keeper::probe_every`] it is
/// a QUIC ping instead, which the edge acknowledges: the proof that the path works
/// (nothing heard for `idle` declares it dead) and what moves the connection at the
/// edge after a NAT rebinding. When the keeper then answers a PATH_CHALLENGE (the NAT
/// gave the flow a new port and the edge followed the keeper there), it pokes its
/// siblings so they move too. The driver feeds [`Keeper::tick`] the connection's
/// counters at the times it asks for.
pub(crate) struct Keeper {
    keepalive: Duration,
    idle: Duration,
    /// Packets received so far, and when that count last changed.
    rx: u64,
    heard_at: Instant,
    /// PATH_CHALLENGE frames received so far.
    challenges: u64,
    /// The role at the last tick.
    keeper: bool,
    next_ping: Instant,
    next_probe: Instant,
}

/// How the keeper refreshes the NAT's mapping now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// A NAT keep-alive: one byte of UDP from the shared socket, unanswered.
    Nat,
    /// A QUIC ping, acknowledged by the edge.
    Quic,
}

/// How often a connection proves its path with a ping the edge answers: the most
/// `keepalive` periods that leave one more before `idle` (30 s at the defaults, 15 s
/// and 45 s), at least one. Over QUIC the keeper's other refreshes are NAT keep-alives;
/// over HTTP/2, whose TCP mapping lasts hours at a NAT, the keeper pings this often and
/// nothing more.
pub(crate) fn probe_every(keepalive: Duration, idle: Duration) -> Duration {
    let k = keepalive.as_millis().max(1);
    let n = (idle.as_millis().saturating_sub(k) / k).max(1);
    keepalive.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
}

/// What the driver does at a keeper tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeeperTick {
    /// Refresh the NAT's mapping now, this way.
    pub(crate) refresh: Option<Refresh>,
    /// The edge moved this keeper to a new path: ping the siblings so they follow.
    pub(crate) poke: bool,
    /// A keeper that heard nothing for `idle`: the path is dead (close it, and its
    /// siblings: they share it).
    pub(crate) timed_out: bool,
    /// When to tick again.
    pub(crate) next: Instant,
}

impl Keeper {
    /// For a connection registered at `now`; `rx` and `challenges` as counted then.
    pub(crate) fn new(
        now: Instant,
        keepalive: Duration,
        idle: Duration,
        rx: u64,
        challenges: u64,
    ) -> Keeper {
        Keeper {
            keepalive,
            idle,
            rx,
            heard_at: now,
            challenges,
            keeper: false,
            next_ping: now,
            next_probe: now,
        }
    }

    /// How often the keeper's refresh is a QUIC ping: the most keep-alive periods that
    /// leave one more before `idle` (30 s at the defaults, 15 s and 45 s), so a live
    /// path is always heard from within `idle`, and at least once per `keepalive`
    /// where `idle` leaves no room.
    pub(crate) fn probe_every(&self) -> Duration {
        probe_every(self.keepalive, self.idle)
    }

    /// Whether it was the flow's keeper at the last tick.
    pub(crate) fn is_keeper(&self) -> bool {
        self.keeper
    }

    /// A tick at `now`: `keeper` says whether the connection keeps its flow now; `rx`
    /// and `challenges` are the connection's received packets and PATH_CHALLENGEs.
    pub(crate) fn tick(
        &mut self,
        now: Instant,
        keeper: bool,
        rx: u64,
        challenges: u64,
    ) -> KeeperTick {
        if rx != self.rx {
            self.rx = rx;
            self.heard_at = now;
        }
        let moved = challenges != self.challenges;
        self.challenges = challenges;
        let mut t = KeeperTick {
            refresh: None,
            poke: false,
            timed_out: false,
            next: now + self.keepalive,
        };
        if !keeper {
            self.keeper = false;
            return t;
        }
        if !self.keeper {
            // A new keeper (the first, or the old one went): it pings at once, and the
            // path has `idle` from now to answer.
            self.keeper = true;
            self.heard_at = now;
            self.next_ping = now;
            self.next_probe = now;
        }
        t.poke = moved;
        if now.saturating_duration_since(self.heard_at) >= self.idle {
            t.timed_out = true;
            return t;
        }
        if now >= self.next_ping {
            self.next_ping = now + self.keepalive;
            t.next = self.next_ping;
            if now >= self.next_probe {
                self.next_probe = now + self.probe_every();
                t.refresh = Some(Refresh::Quic);
                t.next = now + KEEPER_CHECK_AFTER.min(self.keepalive);
            } else {
                t.refresh = Some(Refresh::Nat);
            }
        } else {
            t.next = self.next_ping;
        }
        // A path that stays silent is declared dead at `idle`, not at the tick after.
        t.next = t.next.min(self.heard_at + self.idle);
        t
    }
}

/// Which edge entry to dial next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// Index in the config's `edge:` list.
    pub(crate) entry: usize,
    /// During quick retries: shorter handshake waits.
    pub(crate) fast: bool,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The edge went away in order (GoAway).
    Orderly,
    /// The edge refused the tunnel for a reason retrying cannot change.
    Refused,
    /// It failed: no connection, no registration, or a registered connection lost.
    Failed,
}

/// What to say about a failure before waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Say {
    /// An orderly end: reconnecting at once (info).
    Reconnecting,
    /// A lasting refusal: the delay, and that a reload retries at once (warn).
    Refused,
    /// The first failure of a quick-retry window: what the retries will do (warn).
    FastFirst,
    /// Later failures in the window (debug: one line per outage).
    FastQuiet,
    /// A failure on the exponential schedule, with its delay (warn).
    Backoff,
}

/// What the driver does after an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Its own edge has been unreachable long enough: dial this other entry at once.
    Borrow(Attempt),
    /// Wait this long (a reload cuts it short, see [`Slot::reload`]), having said this.
    Wait { delay: Duration, say: Say },
}

/// What a registered connection probes now and then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeFor {
    /// Away from the slot's own edge entry: that entry.
    Home(usize),
    /// On the HTTP/2 fallback: QUIC to the same edge.
    Quic,
}

/// When and what to probe while a connection is registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbePlan {
    pub(crate) target: ProbeFor,
    /// The first probe, spread so slots that fell back together do not move together.
    pub(crate) first: Instant,
    /// Then this often.
    pub(crate) every: Duration,
}

/// The attempt in progress.
#[derive(Debug, Clone, Copy)]
struct Current {
    started: Instant,
    fast: bool,
    entry: usize,
    registered: bool,
}

/// The policy of one connection slot. See the module doc.
pub(crate) struct Slot {
    /// Its own edge entry: `slot % edges`.
    home: usize,
    /// Since when its own edge has been unreachable.
    down_since: Option<Instant>,
    backoff: Backoff,
    refusals: Backoff,
    /// Until when retries go at the quick pace (after losing a registered connection).
    fast_until: Option<Instant>,
    /// The quick window's first failure was said: the others go to debug.
    told: bool,
    /// No attempt before this (a reload clears it).
    retry_at: Option<Instant>,
    current: Option<Current>,
    /// The `protocol: auto` state.
    pub(crate) auto: Auto,
    rng: Rng,
}

impl Slot {
    /// Slot `slot` of a connector with `edges` edge entries; `seed` for the jitter.
    pub(crate) fn new(slot: usize, edges: usize, seed: u64) -> Slot {
        Slot {
            home: slot % edges.max(1),
            down_since: None,
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            refusals: Backoff::new(REFUSED_MIN, REFUSED_MAX),
            fast_until: None,
            told: false,
            retry_at: None,
            current: None,
            auto: Auto::default(),
            rng: Rng::new(seed),
        }
    }

    /// Its own edge entry.
    pub(crate) fn home(&self) -> usize {
        self.home
    }

    /// The next attempt, to its own edge entry; `Err(when)` while waiting.
    pub(crate) fn attempt(&mut self, now: Instant) -> Result<Attempt, Instant> {
        if let Some(at) = self.retry_at.filter(|&at| now < at) {
            return Err(at);
        }
        self.retry_at = None;
        let fast = self.fast_until.is_some_and(|t| now < t);
        self.current = Some(Current {
            started: now,
            fast,
            entry: self.home,
            registered: false,
        });
        Ok(Attempt {
            entry: self.home,
            fast,
        })
    }

    /// The device config was reloaded (a new token, say): worth trying now.
    pub(crate) fn reload(&mut self) {
        self.retry_at = None;
    }

    /// The attempt registered at `entry`. Away from its own entry, for how long that
    /// has been unreachable (to say so).
    pub(crate) fn registered(&mut self, now: Instant, entry: usize) -> Option<Duration> {
        if let Some(c) = self.current.as_mut() {
            c.registered = true;
        }
        if entry == self.home {
            self.down_since = None;
            return None;
        }
        Some(
            self.down_since
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
        )
    }

    /// What to probe while serving through edge entry `serving` with `protocol`.
    pub(crate) fn probe(
        &mut self,
        now: Instant,
        serving: usize,
        protocol: Protocol,
    ) -> Option<ProbePlan> {
        let target = if serving != self.home {
            ProbeFor::Home(self.home)
        } else if protocol == Protocol::Auto && self.auto.on_h2 {
            ProbeFor::Quic
        } else {
            return None;
        };
        Some(ProbePlan {
            target,
            first: now + self.rng.jitter(QUIC_REPROBE),
            every: QUIC_REPROBE,
        })
    }

    /// A probe found its own edge answering again and the slot moved there over
    /// `transport` (make before break).
    pub(crate) fn moved_home(&mut self, transport: Transport) {
        self.down_since = None;
        self.auto.on_h2 = transport == Transport::Http2;
    }

    /// A probe found QUIC working again and the slot moved back from HTTP/2.
    pub(crate) fn moved_to_quic(&mut self) {
        self.auto.quic_again();
    }

    /// The attempt ended with `end`. `up`: the edge entries the other slots are
    /// connected to now, in slot order.
    pub(crate) fn ended(&mut self, now: Instant, end: End, up: &[usize]) -> Next {
        let cur = self.current.take().unwrap_or(Current {
            started: now,
            fast: false,
            entry: self.home,
            registered: false,
        });
        if !cur.registered && end != End::Orderly {
            let since = *self.down_since.get_or_insert(now);
            // Its own edge just failed again: after long enough, another edge that is
            // up serves this slot meanwhile (once per attempt).
            if cur.entry == self.home && now.saturating_duration_since(since) >= BORROW_AFTER {
                if let Some(other) = least_used(up, self.home) {
                    self.current = Some(Current {
                        entry: other,
                        ..cur
                    });
                    return Next::Borrow(Attempt {
                        entry: other,
                        fast: cur.fast,
                    });
                }
            }
        }
        if cur.registered {
            self.fast_until = Some(now + FAST_RETRY_FOR);
            self.told = false;
            self.refusals.reset();
        }
        if now.saturating_duration_since(cur.started) >= STABLE_AFTER {
            self.backoff.reset();
        }
        let fast = self.fast_until.is_some_and(|t| now < t);
        let (delay, say) = match end {
            End::Orderly => (AFTER_GOAWAY, Say::Reconnecting),
            End::Refused => (self.refusals.delay(&mut self.rng), Say::Refused),
            End::Failed if fast && self.told => (self.rng.jitter(FAST_RETRY_DELAY), Say::FastQuiet),
            End::Failed if fast => {
                self.told = true;
                (self.rng.jitter(FAST_RETRY_DELAY), Say::FastFirst)
            }
            End::Failed => (self.backoff.delay(&mut self.rng), Say::Backoff),
        };
        self.retry_at = Some(now + delay);
        Next::Wait { delay, say }
    }
}

/// Among the entries in `up` other than `home`, the one serving the fewest slots (the
/// first of those in `up`'s order); `None` when there is none.
fn least_used(up: &[usize], home: usize) -> Option<usize> {
    let mut counts: Vec<(usize, usize)> = Vec::new();
    for &e in up.iter().filter(|&&e| e != home) {
        match counts.iter_mut().find(|(x, _)| *x == e) {
            Some(c) => c.1 += 1,
            None => counts.push((e, 1)),
        }
    }
    counts.into_iter().min_by_key(|&(_, n)| n).map(|(e, _)| e)
}

/// How long a member an edge told is skipped after a connection to it failed; twice as
/// long after each failure that follows, until one works or a new list comes.
pub(crate) const MEMBER_DOWN_FOR: Duration = Duration::from_secs(30);
/// Longest a failing member is skipped: a member the device can never reach (a wrong
/// `advertise:`) costs a handshake per slot this often, not every 30 s.
pub(crate) const MEMBER_DOWN_MAX: Duration = Duration::from_secs(15 * 60);

/// What the slots learned about each edge entry's name, shared by all of them: its last
/// good addresses, and whether resolving it fails now (said once, not per attempt);
/// the members its edges told, and which of them failed lately.
pub(crate) struct Names {
    entries: Vec<Name>,
    /// The connector's seed for ordering an entry's addresses ([`super::rendezvous`]).
    seed: [u8; 16],
    /// Connections per entry (`ha-connections` over the entries, rounded up): what the
    /// members told are shared out over.
    per_entry: usize,
}

#[derive(Default, Clone)]
struct Name {
    last_good: Vec<SocketAddr>,
    failing: bool,
    /// The members an edge reached through this entry told, sorted; at most
    /// [`crate::wire::MAX_MEMBERS`] (checked by the caller of [`Names::told`]).
    told: Vec<SocketAddr>,
    /// Members whose connection failed; at most one per member told.
    down: Vec<Down>,
}

/// A member told whose connection failed.
#[derive(Clone, Copy)]
struct Down {
    addr: SocketAddr,
    /// Skipped until then.
    until: Instant,
    /// How long the last failure skips it for.
    skip: Duration,
    /// Its time is up and the slots were told so ([`Names::due`]).
    due_told: bool,
}

/// What resolving an edge entry gave.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// Dial `addr` (one of `addrs`); `again`: the name resolves again after failing
    /// (say so).
    Fresh {
        addr: SocketAddr,
        again: bool,
        addrs: Vec<SocketAddr>,
    },
    /// The name does not resolve: dial a last good address; `first`: the first failure
    /// of this spell (say so).
    Cached {
        addr: SocketAddr,
        first: bool,
        addrs: Vec<SocketAddr>,
    },
    /// The name does not resolve, and never did.
    Unknown,
}

impl Names {
    /// For `edges` edge entries.
    pub(crate) fn new(edges: usize) -> Names {
        Names {
            entries: vec![Name::default(); edges],
            seed: [0; 16],
            per_entry: 1,
        }
    }

    /// The same, ordering each entry's addresses by rendezvous hashing on `seed`.
    pub(crate) fn seeded(self, seed: [u8; 16]) -> Names {
        Names { seed, ..self }
    }

    /// The same, for `slots` connections (`ha-connections`).
    pub(crate) fn for_slots(self, slots: usize) -> Names {
        let per_entry = slots.div_ceil(self.entries.len().max(1)).max(1);
        Names { per_entry, ..self }
    }

    /// An edge reached through entry `idx` told these members (checked addresses);
    /// `true` when that changes the entry's list. A new list forgets which members
    /// failed: it is news worth trying.
    pub(crate) fn told(&mut self, idx: usize, mut members: Vec<SocketAddr>) -> bool {
        members.sort_unstable();
        members.dedup();
        let Some(n) = self.entries.get_mut(idx) else {
            return false;
        };
        if n.told == members {
            return false;
        }
        n.told = members;
        n.down.clear();
        true
    }

    /// Whether an edge of entry `idx` told members.
    pub(crate) fn has_told(&self, idx: usize) -> bool {
        self.entries.get(idx).is_some_and(|n| !n.told.is_empty())
    }

    /// The member slot `slot` dials for entry `idx` now: its share of the members told
    /// that did not fail lately. `None`: nothing told, or every member failed (the
    /// entry's own addresses serve then).
    pub(crate) fn member_for(
        &mut self,
        idx: usize,
        slot: usize,
        edges: usize,
        now: Instant,
    ) -> Option<SocketAddr> {
        let n = self.entries.get(idx)?;
        let live: Vec<SocketAddr> = n
            .told
            .iter()
            .copied()
            .filter(|a| !n.down.iter().any(|d| d.addr == *a && now < d.until))
            .collect();
        let shares = super::rendezvous::assign(&live, &self.seed, self.per_entry);
        shares
            .get((slot / edges.max(1)) % self.per_entry.max(1))
            .copied()
    }

    /// A connection to `addr` through entry `idx` failed: skip that member for a while,
    /// longer after each failure that follows (no effect on an address that is not a
    /// member told). `true` when it was not skipped until now: the shares of the other
    /// slots may have moved.
    pub(crate) fn member_failed(&mut self, idx: usize, addr: SocketAddr, now: Instant) -> bool {
        let Some(n) = self.entries.get_mut(idx) else {
            return false;
        };
        if !n.told.contains(&addr) {
            return false;
        }
        match n.down.iter_mut().find(|d| d.addr == addr) {
            // Skipped already: a slot that picked it before it was.
            Some(d) if now < d.until => false,
            Some(d) => {
                d.skip = d.skip.saturating_mul(2).min(MEMBER_DOWN_MAX);
                d.until = now + d.skip;
                d.due_told = false;
                true
            }
            None => {
                n.down.push(Down {
                    addr,
                    until: now + MEMBER_DOWN_FOR,
                    skip: MEMBER_DOWN_FOR,
                    due_told: false,
                });
                true
            }
        }
    }

    /// A connection to `addr` through entry `idx` registered: the member works.
    pub(crate) fn member_works(&mut self, idx: usize, addr: SocketAddr) {
        if let Some(n) = self.entries.get_mut(idx) {
            n.down.retain(|d| d.addr != addr);
        }
    }

    /// Whether a member skipped for failing became due to be tried again by `now`
    /// (each time up, once).
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        let mut due = false;
        for d in self.entries.iter_mut().flat_map(|n| n.down.iter_mut()) {
            if now >= d.until && !d.due_told {
                d.due_told = true;
                due = true;
            }
        }
        due
    }

    /// Entry `idx` resolved to `addrs` (IPv4 first, then in the connector's rendezvous
    /// order); an empty answer counts as a failure. `slot` and `edges` spread the slots
    /// sharing an entry over its addresses.
    pub(crate) fn resolved(
        &mut self,
        idx: usize,
        mut addrs: Vec<SocketAddr>,
        slot: usize,
        edges: usize,
    ) -> Resolved {
        if addrs.is_empty() {
            return self.failed(idx, slot, edges);
        }
        super::rendezvous::order(&mut addrs, &self.seed);
        let Some(addr) = pick(&addrs, slot, edges) else {
            return Resolved::Unknown;
        };
        let mut again = false;
        if let Some(n) = self.entries.get_mut(idx) {
            again = std::mem::replace(&mut n.failing, false);
            n.last_good.clone_from(&addrs);
        }
        Resolved::Fresh { addr, again, addrs }
    }

    /// Resolving entry `idx` failed.
    pub(crate) fn failed(&mut self, idx: usize, slot: usize, edges: usize) -> Resolved {
        let Some(n) = self.entries.get_mut(idx) else {
            return Resolved::Unknown;
        };
        let Some(addr) = pick(&n.last_good, slot, edges) else {
            return Resolved::Unknown;
        };
        let first = !std::mem::replace(&mut n.failing, true);
        Resolved::Cached {
            addr,
            first,
            addrs: n.last_good.clone(),
        }
    }
}

/// The address slot `slot` uses among `addrs`: slots sharing an entry spread over them.
fn pick(addrs: &[SocketAddr], slot: usize, edges: usize) -> Option<SocketAddr> {
    if addrs.is_empty() {
        return None;
    }
    addrs.get((slot / edges.max(1)) % addrs.len()).copied()
}

#[cfg(test)]
mod tests;
