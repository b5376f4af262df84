//! How long the NAT in front of a metered device keeps an idle TCP mapping, learnt
//! instead of guessed, and the keep-alive that follows from it.
//!
//! A metered connector (`metered: true`) holds one HTTP/2 connection and refreshes the
//! NAT's mapping with a keep-alive. Too long a keep-alive and the NAT forgets the
//! mapping between two of them: the edge's next bytes (a visitor's request) die at the
//! NAT, and the device notices at its next keep-alive only. Too short and every one is
//! paid for. Only the edge sending after a silence proves a mapping outlived it (a
//! packet from the device creates a new mapping, often on the same port, and proves
//! nothing), so the connector asks the edge: a *probe* is a connection of its own to
//! the same edge, on which it sends [`ConnectorMsg::Probe`] instead of registering;
//! the edge stays silent for the time asked, then answers. An answer means the mapping
//! outlived that silence; no answer within the silence and a grace, that it did not.
//!
//! [`Learner`] is the policy, without I/O (the tests drive time by hand):
//!
//! - `lo`: the longest silence proven to survive; `hi`: the shortest proven to fail;
//! - the next probe doubles `lo` (from [`FIRST_PROBE`]) while `hi` is unknown, then
//!   bisects until `hi` is within 25 % of `lo`; it never goes past [`TOP`] (the
//!   silence that earns the longest keep-alive) nor below [`BOTTOM`];
//! - the keep-alive in force is ¾ of `lo` (½ of `hi` while only `hi` is known, and
//!   [`UNPROVEN`], today's 300 s, before anything is), clamped to
//!   [[`KEEPALIVE_MIN`], [`KEEPALIVE_MAX`]];
//! - a new local address (a new network, hence a new NAT) starts over; once a day `lo`
//!   is proven again (one probe); the main connection lost while idle (its keep-alive
//!   outlived the mapping: the NAT changed) sets `hi` to that keep-alive at once;
//! - a probe that could not run (no connection, the edge busy) is tried again later,
//!   from [`RETRY`] doubling up to an hour.
//!
//! All of it lives in memory; nothing is written on the device. One probe runs at a
//! time and costs one TLS handshake (about 5 KB at the NAT).
//!
//! Test-only: `MAILSLOT_TEST_NAT_PROBE_SCALE=N` (1 to 1000) divides every duration here
//! by N, so a scenario learns in minutes what takes an hour.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::dial::Dial;
use crate::transport::h2::H2Session;
use crate::util::lock;
use crate::wire::{self, ConnectorMsg, EdgeMsg, PROTOCOL_VERSION};

/// The shortest keep-alive the learner sets: under it, a NAT's TCP mapping is shorter
/// than any UDP one and probing further gains nothing.
pub(crate) const KEEPALIVE_MIN: Duration = Duration::from_secs(25);
/// The longest keep-alive the learner sets, whatever the NAT keeps: a mapping lost
/// without anyone noticing (the NAT rebooted, the carrier moved the device) leaves the
/// board unreachable until its next keep-alive, so this bounds that outage to 15
/// minutes; it costs about 96 keep-alives a day (20 KB).
pub(crate) const KEEPALIVE_MAX: Duration = Duration::from_secs(900);
/// The keep-alive before anything is proven: the metered default
/// ([`crate::config::METERED_KEEPALIVE_SECS`], or `keepalive` if longer; RFC 5382 asks a
/// NAT to keep an established TCP mapping 2 h 4 min, and most keep it 5 minutes or more).
pub(crate) const UNPROVEN: Duration =
    Duration::from_secs(crate::config::METERED_KEEPALIVE_SECS as u64);
/// The first probe's silence: short enough that a NAT with short TCP mappings is
/// found out within minutes, long enough that the doubling reaches [`TOP`] in five
/// probes (75, 150, 300, 600, 1200 s).
pub(crate) const FIRST_PROBE: Duration = Duration::from_secs(75);
/// The longest probe: the silence whose ¾ is [`KEEPALIVE_MAX`].
pub(crate) const TOP: Duration = Duration::from_secs(1200);
/// The shortest probe: the silence whose ¾ is [`KEEPALIVE_MIN`].
pub(crate) const BOTTOM: Duration = Duration::from_millis(33_334);
/// Time allowed for the edge's answer after the silence (round trip, a slow link).
pub(crate) const GRACE: Duration = Duration::from_secs(10);
/// Proven values are proven again this often.
pub(crate) const RELEARN: Duration = Duration::from_secs(24 * 3600);
/// First wait after a probe that could not run; it doubles, up to an hour.
pub(crate) const RETRY: Duration = Duration::from_secs(60);
/// Longest wait after probes that could not run.
const RETRY_MAX: Duration = Duration::from_secs(3600);

/// The learner's durations (all of the above, divided by the test scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    pub(crate) keepalive_min: Duration,
    pub(crate) keepalive_max: Duration,
    pub(crate) unproven: Duration,
    pub(crate) first: Duration,
    pub(crate) top: Duration,
    pub(crate) bottom: Duration,
    pub(crate) grace: Duration,
    pub(crate) relearn: Duration,
    pub(crate) retry: Duration,
    pub(crate) retry_max: Duration,
}

impl Timing {
    /// Every duration divided by `scale` (1: the real ones).
    pub(crate) fn scaled(scale: u32) -> Timing {
        let s = scale.max(1);
        Timing {
            keepalive_min: KEEPALIVE_MIN / s,
            keepalive_max: KEEPALIVE_MAX / s,
            unproven: UNPROVEN / s,
            first: FIRST_PROBE / s,
            top: TOP / s,
            bottom: BOTTOM / s,
            grace: GRACE / s,
            relearn: RELEARN / s,
            retry: RETRY / s,
            retry_max: RETRY_MAX / s,
        }
    }

    /// The real durations, or scaled by `MAILSLOT_TEST_NAT_PROBE_SCALE` (tests only);
    /// `unproven`: the configured metered keep-alive (5 minutes, or `keepalive` if longer).
    fn from_env(unproven: Duration) -> Timing {
        let scale = std::env::var("MAILSLOT_TEST_NAT_PROBE_SCALE")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|s| (1..=1000).contains(s))
            .unwrap_or(1);
        Timing {
            unproven: unproven / scale,
            ..Timing::scaled(scale)
        }
    }
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The edge's answer arrived: the mapping outlived the silence.
    Survived,
    /// No answer within the silence and the grace: the mapping died.
    Died,
    /// The probe could not run (no connection, refused, the edge went away early).
    Unknown,
}

/// The policy. See the module doc.
#[derive(Debug)]
pub(crate) struct Learner {
    t: Timing,
    /// Longest silence proven to survive.
    lo: Option<Duration>,
    /// Shortest silence proven to fail.
    hi: Option<Duration>,
    /// The daily check: the next probe proves `lo` again.
    verify: bool,
    /// No probe before this.
    next_at: Instant,
    /// When proven values are proven again.
    relearn_at: Instant,
    /// The local address the values were learnt on.
    local: Option<IpAddr>,
    /// Probes in a row that could not run.
    failures: u32,
}

impl Learner {
    pub(crate) fn new(now: Instant, t: Timing) -> Learner {
        Learner {
            t,
            lo: None,
            hi: None,
            verify: false,
            next_at: now,
            relearn_at: now + t.relearn,
            local: None,
            failures: 0,
        }
    }

    /// The keep-alive to use now: the configured one until something is proven (as
    /// configured, even under the learner's floor), then one sized from the proof.
    pub(crate) fn keepalive(&self) -> Duration {
        let k = match (self.lo, self.hi) {
            (Some(lo), _) => lo * 3 / 4,
            (None, Some(hi)) => hi / 2,
            (None, None) => return self.t.unproven,
        };
        k.clamp(self.t.keepalive_min, self.t.keepalive_max)
    }

    /// What is proven: (longest survived, shortest failed).
    pub(crate) fn bounds(&self) -> (Option<Duration>, Option<Duration>) {
        (self.lo, self.hi)
    }

    /// Whether nothing is left to probe until the daily check.
    pub(crate) fn settled(&self) -> bool {
        !self.verify && self.target().is_none()
    }

    /// When to call [`Learner::poll`] next.
    pub(crate) fn wake_at(&self) -> Instant {
        if self.settled() {
            self.relearn_at.max(self.next_at)
        } else {
            self.next_at
        }
    }

    /// The silence to probe now, if one is due. A probe that never reports (its
    /// connection went away with the session) is asked for again.
    pub(crate) fn poll(&mut self, now: Instant) -> Option<Duration> {
        if now >= self.relearn_at {
            self.relearn_at = now + self.t.relearn;
            // What the NAT kept yesterday it may not today: prove `lo` again, and
            // look above it once more.
            self.hi = None;
            self.verify = self.lo.is_some();
        }
        if now < self.next_at {
            return None;
        }
        if self.verify {
            return self.lo;
        }
        self.target()
    }

    /// The next silence worth probing, `None` when settled.
    fn target(&self) -> Option<Duration> {
        let (top, bottom) = (self.t.top, self.t.bottom);
        match (self.lo, self.hi) {
            (Some(lo), _) if lo >= top => None,
            (lo, None) => Some(lo.map_or(self.t.first, |l| (l * 2).clamp(self.t.first, top))),
            (lo, Some(hi)) => {
                let lo = lo.unwrap_or(bottom);
                // Within 25 %: ¾ of `lo` is as good a keep-alive as any in between.
                if hi <= lo + lo / 4 {
                    None
                } else {
                    Some((lo + hi) / 2)
                }
            }
        }
    }

    /// A probe of `after` of silence ended at `now` with `outcome`.
    pub(crate) fn probed(&mut self, now: Instant, after: Duration, outcome: Outcome) {
        match outcome {
            Outcome::Survived => {
                self.failures = 0;
                self.verify = false;
                self.lo = Some(self.lo.map_or(after, |l| l.max(after)));
                // A survival at or past a failure: the NAT changed; forget the failure.
                if self.hi.is_some_and(|h| h <= after) {
                    self.hi = None;
                }
                self.next_at = now;
            }
            Outcome::Died => {
                self.failures = 0;
                self.verify = false;
                self.hi = Some(self.hi.map_or(after, |h| h.min(after)));
                if self.lo.is_some_and(|l| l >= after) {
                    self.lo = None;
                }
                self.next_at = now;
            }
            Outcome::Unknown => {
                let wait = self
                    .t
                    .retry
                    .saturating_mul(1 << self.failures.min(8))
                    .min(self.t.retry_max);
                self.failures = self.failures.saturating_add(1);
                self.next_at = now + wait;
            }
        }
    }

    /// The main connection was lost at `now` while `keepalive` was in force, having
    /// lived at least that long: its keep-alive outlived the mapping (or the edge went
    /// down, which the next probes tell apart). Shortens at once.
    pub(crate) fn lost(&mut self, now: Instant, keepalive: Duration) {
        if keepalive <= self.t.keepalive_min {
            return;
        }
        self.hi = Some(self.hi.map_or(keepalive, |h| h.min(keepalive)));
        if self.lo.is_some_and(|l| l >= keepalive) {
            self.lo = None;
        }
        self.verify = false;
        self.next_at = self.next_at.min(now);
    }

    /// The main connection's local address at `now`: a new one is a new network, with
    /// a NAT of its own: start over. `true` when it was new.
    pub(crate) fn network(&mut self, now: Instant, local: IpAddr) -> bool {
        let known = self.local.replace(local);
        if known.is_none_or(|k| k == local) {
            return false;
        }
        self.lo = None;
        self.hi = None;
        self.verify = false;
        self.failures = 0;
        self.next_at = now;
        self.relearn_at = now + self.t.relearn;
        true
    }
}

/// The connector's learner: one per process, kept across connections, in memory.
static LEARNER: Mutex<Option<Learner>> = Mutex::new(None);

fn with_learner<T>(f: impl FnOnce(&mut Learner) -> T) -> T {
    let mut l = lock(&LEARNER);
    let learner = l.get_or_insert_with(|| Learner::new(Instant::now(), Timing::from_env(UNPROVEN)));
    f(learner)
}

/// How a duration reads in the log: seconds, one decimal under a minute.
fn secs(d: Duration) -> String {
    if d < Duration::from_secs(60) {
        // f32: the connector formats f32 already (a device binary has room for one).
        format!("{:.1}s", d.as_secs_f32())
    } else {
        format!("{}s", d.as_secs())
    }
}

fn describe(l: &Learner) -> String {
    let (lo, hi) = l.bounds();
    let lo = lo.map_or("-".into(), secs);
    let hi = hi.map_or("-".into(), secs);
    format!(
        "idle TCP mapping survives {lo}, dies {hi}: keep-alive {}",
        secs(l.keepalive())
    )
}

/// Learns the NAT's mapping lifetime for the metered HTTP/2 connection `session`
/// (registered at `dial`'s edge, whose hello allowed probes) and keeps its keep-alive
/// set from it. Runs until the session ends (the caller aborts it).
///
/// `unproven`: the keep-alive before anything is proven (the configured one).
pub(super) async fn drive(slot: usize, dial: Dial, session: H2Session, unproven: Duration) {
    with_learner(|l| l.t = Timing::from_env(unproven));
    if let Some(local) = session.local_addr() {
        if with_learner(|l| l.network(Instant::now(), local.ip())) {
            log::info!("connection {slot}: new local address {}: learning the NAT's mapping lifetime again", local.ip());
        }
    }
    loop {
        let (wake, keepalive) = with_learner(|l| (l.wake_at(), l.keepalive()));
        session.set_keepalive(keepalive);
        tokio::time::sleep_until(wake.into()).await;
        let Some(after) = with_learner(|l| l.poll(Instant::now())) else {
            continue;
        };
        let grace = with_learner(|l| l.t.grace);
        log::debug!(
            "connection {slot}: probing the NAT with {} of silence",
            secs(after)
        );
        let outcome = probe(&dial, after, grace).await;
        let (line, settled) = with_learner(|l| {
            l.probed(Instant::now(), after, outcome);
            (describe(l), l.settled())
        });
        match outcome {
            Outcome::Unknown => log::debug!(
                "connection {slot}: NAT probe of {} could not run",
                secs(after)
            ),
            _ if settled => log::info!("connection {slot}: NAT learnt: {line}"),
            _ => log::info!(
                "connection {slot}: NAT probe of {} {}: {line}",
                secs(after),
                if outcome == Outcome::Survived {
                    "answered"
                } else {
                    "unanswered"
                }
            ),
        }
    }
}

/// The metered HTTP/2 connection `session`, which lived `lived` with `keepalive` in
/// force, was lost: shorten at once when that says the mapping died.
pub(super) fn lost(slot: usize, session: &H2Session, lived: Duration) {
    let keepalive = session.keepalive();
    if lived < keepalive {
        return;
    }
    let line = with_learner(|l| {
        l.lost(Instant::now(), keepalive);
        describe(l)
    });
    log::info!(
        "connection {slot}: lost after {} idle at most: {line}",
        secs(keepalive)
    );
}

/// One probe: a connection of its own to the edge, the hello, [`ConnectorMsg::Probe`],
/// and the edge's answer after `after` of silence (or none within `grace` more).
async fn probe(dial: &Dial, after: Duration, grace: Duration) -> Outcome {
    let after_ms = u32::try_from(after.as_millis()).unwrap_or(u32::MAX);
    let Ok(session) = dial.h2_probe(after + grace).await else {
        return Outcome::Unknown;
    };
    let outcome = probe_on(&session, after, after_ms, grace).await;
    session.close("probe done");
    outcome
}

async fn probe_on(
    session: &crate::transport::Session,
    after: Duration,
    after_ms: u32,
    grace: Duration,
) -> Outcome {
    let wait = super::session::REGISTER_TIMEOUT;
    let Ok(Ok(mut control)) = tokio::time::timeout(wait, session.accept_stream()).await else {
        return Outcome::Unknown;
    };
    let hello = tokio::time::timeout(wait, wire::read_hello(&mut control.recv)).await;
    let Ok(Ok((EdgeMsg::Hello { version, .. }, _, _, tail))) = hello else {
        return Outcome::Unknown;
    };
    // An edge that does not know probes ends a connection on one: none is sent.
    if version != PROTOCOL_VERSION || !wire::probe_allowed(tail.as_ref(), after_ms) {
        return Outcome::Unknown;
    }
    let m = ConnectorMsg::Probe { after_ms };
    if wire::write_control(&mut control.send, &m).await.is_err() {
        return Outcome::Unknown;
    }
    let sent = Instant::now();
    let reply = tokio::time::timeout(
        after + grace,
        wire::read_control::<_, EdgeMsg>(&mut control.recv),
    )
    .await;
    match reply {
        Ok(Ok(EdgeMsg::ProbeReply { after_ms: a })) if a == after_ms => Outcome::Survived,
        // Silence past the time asked: the answer died at the NAT (which resets the
        // edge's side, not this one).
        Err(_) => Outcome::Died,
        Ok(Err(_)) if sent.elapsed() >= after => Outcome::Died,
        // Refused (the edge is busy), or it went away early.
        Ok(_) => Outcome::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn learner() -> (Learner, Instant) {
        let now = Instant::now();
        (Learner::new(now, Timing::scaled(1)), now)
    }

    /// Runs probes against a NAT that keeps mappings `nat` long until settled; the
    /// silences probed.
    fn converge(l: &mut Learner, mut now: Instant, nat: Duration) -> (Vec<u64>, Instant) {
        let mut probed = Vec::new();
        while let Some(after) = l.poll(now) {
            assert!(probed.len() < 20, "does not settle: {probed:?}");
            now += after;
            probed.push(after.as_secs());
            let o = if after < nat {
                Outcome::Survived
            } else {
                Outcome::Died
            };
            l.probed(now, after, o);
        }
        assert!(l.settled());
        (probed, now)
    }

    #[test]
    fn before_any_proof_the_keepalive_is_the_metered_default() {
        let (l, now) = learner();
        assert_eq!(l.keepalive(), S(300));
        assert_eq!(l.wake_at(), now);
        // A configured keep-alive under the learner's floor stays as configured until
        // something is proven (a test's, or an operator's choice).
        let short = Learner::new(
            now,
            Timing {
                unproven: S(10),
                ..Timing::scaled(1)
            },
        );
        assert_eq!(short.keepalive(), S(10));
    }

    #[test]
    fn grows_by_doubling_to_the_cap_behind_a_long_lived_nat() {
        let (mut l, now) = learner();
        let (probed, _) = converge(&mut l, now, S(7440));
        assert_eq!(probed, [75, 150, 300, 600, 1200]);
        assert_eq!(l.keepalive(), S(900), "the cap");
    }

    #[test]
    fn bisects_below_a_short_nat_and_keeps_a_safe_fraction() {
        let (mut l, now) = learner();
        let (probed, _) = converge(&mut l, now, S(200));
        assert_eq!(probed[..3], [75, 150, 300]);
        let (lo, hi) = l.bounds();
        let (lo, hi) = (lo.unwrap(), hi.unwrap());
        assert!(lo < S(200) && hi >= S(200), "{lo:?} {hi:?}");
        assert!(hi <= lo + lo / 4);
        assert_eq!(l.keepalive(), lo * 3 / 4);
        assert!(l.keepalive() < S(200) * 3 / 4 + S(1));
        // A NAT shorter than the first probe: ½ of the failure, then bisection.
        let (mut l, now) = learner();
        l.probed(now, S(75), Outcome::Died);
        assert_eq!(l.keepalive(), S(37) + Duration::from_millis(500));
        let (_, _) = converge(&mut l, now, S(50));
        assert!(l.keepalive() < S(50));
    }

    #[test]
    fn clamps_to_the_floor_and_stops_probing_under_it() {
        let (mut l, now) = learner();
        let (probed, _) = converge(&mut l, now, S(20));
        assert_eq!(probed[0], 75);
        assert!(probed.iter().all(|&p| p >= 33), "{probed:?}");
        assert_eq!(l.keepalive(), S(25));
    }

    #[test]
    fn a_lost_main_connection_shortens_at_once_and_probes_again() {
        let (mut l, now) = learner();
        let (_, now) = converge(&mut l, now, S(7440));
        assert_eq!(l.keepalive(), S(900));
        // The NAT now keeps 10 minutes: the connection dies under a 900 s keep-alive.
        l.lost(now, S(900));
        assert_eq!(l.keepalive(), S(450));
        assert_eq!(l.wake_at(), now);
        let (_, _) = converge(&mut l, now, S(600));
        assert!(l.keepalive() < S(600) * 3 / 4 + S(1), "{:?}", l.keepalive());
        assert!(l.keepalive() >= S(600) * 3 / 5, "{:?}", l.keepalive());
        // A loss at the floor says nothing.
        let (mut l, now) = learner();
        l.lost(now, S(25));
        assert_eq!(l.bounds(), (None, None));
    }

    #[test]
    fn a_new_network_starts_over_and_the_daily_check_proves_lo_again() {
        let (mut l, now) = learner();
        assert!(
            !l.network(now, "10.0.0.2".parse().unwrap()),
            "the first is not new"
        );
        let (_, now) = converge(&mut l, now, S(7440));
        assert!(!l.network(now, "10.0.0.2".parse().unwrap()));
        assert_eq!(l.wake_at(), l.relearn_at);
        // The daily check: one probe of `lo`, then settled again.
        let day = l.relearn_at;
        assert_eq!(l.poll(day), Some(S(1200)));
        l.probed(day + S(1200), S(1200), Outcome::Survived);
        assert!(l.settled());
        assert_eq!(l.keepalive(), S(900));
        // The NAT shrank overnight: the check fails and learning resumes below.
        let day = l.relearn_at;
        assert_eq!(l.poll(day), Some(S(1200)));
        l.probed(day + S(1200), S(1200), Outcome::Died);
        assert_eq!(l.bounds(), (None, Some(S(1200))));
        assert_eq!(l.keepalive(), S(600));
        // Another network: everything learnt is forgotten.
        assert!(l.network(day, "192.168.1.9".parse().unwrap()));
        assert_eq!(l.bounds(), (None, None));
        assert_eq!(l.keepalive(), S(300));
        assert_eq!(l.poll(day), Some(S(75)));
    }

    #[test]
    fn probes_that_cannot_run_back_off_without_learning_anything() {
        let (mut l, now) = learner();
        assert_eq!(l.poll(now), Some(S(75)));
        l.probed(now, S(75), Outcome::Unknown);
        assert_eq!(l.poll(now), None);
        assert_eq!(l.wake_at(), now + S(60));
        l.probed(now, S(75), Outcome::Unknown);
        assert_eq!(l.wake_at(), now + S(120));
        for _ in 0..20 {
            l.probed(now, S(75), Outcome::Unknown);
        }
        assert_eq!(l.wake_at(), now + S(3600));
        assert_eq!(l.bounds(), (None, None));
        assert_eq!(l.poll(now + S(3600)), Some(S(75)));
    }

    #[test]
    fn scaled_timings_divide_every_duration() {
        let t = Timing::scaled(20);
        assert_eq!(t.keepalive_max, S(45));
        assert_eq!(t.unproven, S(15));
        assert_eq!(t.first, Duration::from_millis(3750));
        assert_eq!(Timing::scaled(0), Timing::scaled(1));
    }
}
