//! The daily data cap (`data-cap` in the config): the bytes the tunnel carries today,
//! counted in memory (nothing is written), and what happens past the cap.
//!
//! - Counting: every byte a stream carries, both ways, plus an estimate of what
//!   carrying it cost on the link ([`charge`]: 1/16 more for the packets' headers and
//!   acknowledgements, and [`STREAM_OVERHEAD`] per stream for its header, reply and
//!   opening). Keep-alives and health reports are not counted: they are the fixed
//!   daily budget the README publishes.
//! - The day: midnight UTC by the device's clock. A board without an RTC boots in 1970;
//!   while its clock reads before 2020 ([`CLOCK_SET_AFTER`]), the day is the edge's
//!   (each edge's hello carries its time, [`edge_time`]).
//! - Past the cap: only the rules marked `essential: true` get new streams
//!   ([`refuses`]); streams of the others in flight end at their next bytes. The
//!   device logs it once, and tells the edges that understand it
//!   ([`crate::wire::ConnectorMsg::DataCap`], [`message`]), which answer the other
//!   hostnames with a 503 page without sending anything down the tunnel. At the reset
//!   both return to normal.
//!
//! The policy is [`Count`], a state machine fed with byte counts and the time; the
//! process's one count sits behind the functions here, and [`run`] settles it at each
//! midnight (and every [`RECHECK`], for clocks that step).
//!
//! Tests set the clock through [`TEST_CLOCK_ENV`]: a file holding the Unix seconds the
//! count takes as the system clock, read every [`TEST_RECHECK`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::active::ActiveConfig;
use crate::config::DeviceConfig;
use crate::util::lock;
use crate::wire::{ConnectorMsg, DataCap};

/// Seconds in a day.
const DAY: u64 = 86_400;
/// A system clock earlier than this (2020-01-01T00:00:00Z) is unset: the day is the
/// edge's.
pub(crate) const CLOCK_SET_AFTER: u64 = 1_577_836_800;
/// Bytes charged per stream besides its payload: its header and reply frames and the
/// packets that open and close it.
pub(crate) const STREAM_OVERHEAD: u64 = 200;
/// Longest sleep between two looks at the clock while a cap is set: a clock that steps
/// (NTP's first answer) is noticed this late at most.
const RECHECK: Duration = Duration::from_secs(600);
/// The environment variable naming a test clock file (tests only): it holds the Unix
/// seconds the count takes as the system clock's, read every [`TEST_RECHECK`].
pub(crate) const TEST_CLOCK_ENV: &str = "MAILSLOT_TEST_CLOCK_FILE";
/// How often a test clock file is read.
const TEST_RECHECK: Duration = Duration::from_millis(100);
/// Largest test clock file read.
const MAX_CLOCK_FILE: usize = 32;

/// The bytes charged for `payload` bytes carried: the payload, and 1/16 for the
/// packets' headers (IP, UDP or TCP, QUIC or TLS and HTTP/2 frames: 3–5 % of full
/// packets) and acknowledgements.
pub(crate) fn charge(payload: u64) -> u64 {
    payload.saturating_add(payload / 16)
}

/// Today's count: the policy, without I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Count {
    /// The day counted (days since 1970).
    day: u64,
    /// Bytes charged on that day.
    used: u64,
    /// Over the cap (only essential rules served).
    over: bool,
}

/// What a step of the count changed, for the log and the edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing worth telling.
    None,
    /// The count reached the cap.
    Crossed,
    /// Back to serving every rule: `reset` by a new day, else the cap was raised or
    /// removed.
    Cleared { reset: bool },
}

impl Count {
    pub(crate) const fn new() -> Count {
        Count {
            day: 0,
            used: 0,
            over: false,
        }
    }

    /// Charges `bytes` at `now` (Unix seconds) against `cap`.
    pub(crate) fn add(&mut self, bytes: u64, cap: Option<u64>, now: u64) -> Change {
        let rolled = self.roll(now);
        self.used = self.used.saturating_add(bytes);
        match self.settle_over(cap) {
            Change::None => rolled,
            c => c,
        }
    }

    /// Moves to `now`'s day and applies `cap` (a reload may change it).
    pub(crate) fn settle(&mut self, cap: Option<u64>, now: u64) -> Change {
        let rolled = self.roll(now);
        match self.settle_over(cap) {
            Change::None => rolled,
            c => c,
        }
    }

    /// A new day starts from zero.
    fn roll(&mut self, now: u64) -> Change {
        let day = now / DAY;
        if day == self.day {
            return Change::None;
        }
        let was_over = self.over;
        *self = Count {
            day,
            used: 0,
            over: false,
        };
        match was_over {
            true => Change::Cleared { reset: true },
            false => Change::None,
        }
    }

    fn settle_over(&mut self, cap: Option<u64>) -> Change {
        let over = cap.is_some_and(|c| self.used >= c);
        match (self.over, over) {
            (false, true) => {
                self.over = true;
                Change::Crossed
            }
            (true, false) => {
                self.over = false;
                Change::Cleared { reset: false }
            }
            _ => Change::None,
        }
    }
}

/// Seconds from `now` to the next midnight UTC.
pub(crate) fn until_reset(now: u64) -> u64 {
    DAY - now % DAY
}

/// `now` by the device: `system` (Unix seconds), or, while that reads before
/// [`CLOCK_SET_AFTER`], moved by `edge_offset` (the edge's clock minus the system's,
/// when an edge told it).
pub(crate) fn device_now(system: u64, edge_offset: Option<i64>) -> u64 {
    match edge_offset {
        Some(off) if system < CLOCK_SET_AFTER => system.saturating_add_signed(off),
        _ => system,
    }
}

/// The process's count.
static COUNT: Mutex<Count> = Mutex::new(Count::new());
/// Over the cap, for the per-stream check.
static OVER: AtomicBool = AtomicBool::new(false);
/// The edge's clock minus the system's, seconds; `i64::MIN`: unknown.
static EDGE_OFFSET: AtomicI64 = AtomicI64::new(i64::MIN);
/// The test clock's time ([`TEST_CLOCK_ENV`]); 0: the system clock.
static TEST_NOW: AtomicU64 = AtomicU64::new(0);
/// Over the cap or not, for the sessions to tell their edges.
static STATE: LazyLock<watch::Sender<bool>> = LazyLock::new(|| watch::channel(false).0);

/// The system clock (or the test clock), Unix seconds.
fn system_now() -> u64 {
    match TEST_NOW.load(Ordering::Relaxed) {
        0 => crate::clock::system_secs(),
        t => t,
    }
}

/// The device's time now (Unix seconds): its clock, or the edge's while it is unset.
pub(crate) fn now() -> u64 {
    let off = EDGE_OFFSET.load(Ordering::Relaxed);
    device_now(system_now(), (off != i64::MIN).then_some(off))
}

/// An edge's hello said its time is `edge_unix`: while the system clock is unset, the
/// day is counted by it.
pub(super) fn edge_time(edge_unix: u64) {
    let system = system_now();
    if system >= CLOCK_SET_AFTER || edge_unix < CLOCK_SET_AFTER {
        return;
    }
    let off = i64::try_from(edge_unix.saturating_sub(system)).unwrap_or(i64::MAX - 1);
    if EDGE_OFFSET.swap(off, Ordering::Relaxed) == i64::MIN {
        log::info!("the clock is unset: the data cap's days follow the edge's clock");
    }
}

/// Charges `payload` bytes carried under `config`'s cap; true when over it.
pub(crate) fn add(payload: u64, config: &DeviceConfig) -> bool {
    let Some(cap) = config.data_cap else {
        return false;
    };
    let change = lock(&COUNT).add(charge(payload), Some(cap), now());
    tell(change, Some(cap));
    OVER.load(Ordering::Relaxed)
}

/// Charges a new stream's overhead; true when past the cap `config` would not serve
/// rule `rule` (not essential).
pub(crate) fn refuses(config: &DeviceConfig, rule: usize) -> bool {
    if config.data_cap.is_none() {
        return false;
    }
    add(STREAM_OVERHEAD, config) && !config.is_essential(rule)
}

/// Logs a change and tells the sessions.
fn tell(change: Change, cap: Option<u64>) {
    let (used, _) = snapshot();
    match change {
        Change::None => return,
        Change::Crossed => log::warn!(
            "data cap: {used} bytes carried today, over the daily cap of {} bytes: serving \
             essential rules only until the daily reset (midnight UTC) in {}s",
            cap.unwrap_or(0),
            until_reset(now())
        ),
        Change::Cleared { reset: true } => {
            log::info!("data cap: the daily count was reset: serving every rule again")
        }
        Change::Cleared { reset: false } => {
            log::info!("data cap: the cap was raised or removed: serving every rule again")
        }
    }
    let over = change == Change::Crossed;
    OVER.store(over, Ordering::Relaxed);
    STATE.send_replace(over);
}

/// Bytes charged today, and whether over the cap.
fn snapshot() -> (u64, bool) {
    let c = lock(&COUNT);
    (c.used, c.over)
}

/// Whether the device is over its cap now.
pub(super) fn is_over() -> bool {
    OVER.load(Ordering::Relaxed)
}

/// Told of every change of the cap's state.
pub(super) fn subscribe() -> watch::Receiver<bool> {
    STATE.subscribe()
}

/// The report for an edge, under the config in force.
pub(super) fn message(rt: &ActiveConfig) -> ConnectorMsg {
    let (used, over) = snapshot();
    let essential = (0..rt.config.ingress.len())
        .filter(|&i| rt.config.is_essential(i))
        .filter_map(|i| u16::try_from(i).ok())
        .collect();
    ConnectorMsg::DataCap(DataCap {
        over,
        resets_in_secs: u32::try_from(until_reset(now())).unwrap_or(u32::MAX),
        rules_generation: rt.generation,
        essential,
        used,
        cap: rt.config.data_cap.unwrap_or(0),
    })
}

/// Settles the count at each midnight and when the config changes, until the
/// connector stops.
pub(super) async fn run(mut current: watch::Receiver<Arc<ActiveConfig>>) {
    let test_clock = std::env::var_os(TEST_CLOCK_ENV).map(std::path::PathBuf::from);
    loop {
        if let Some(t) = test_clock.as_deref().and_then(read_test_clock) {
            TEST_NOW.store(t.max(1), Ordering::Relaxed);
        }
        let cap = current.borrow_and_update().config.data_cap;
        let change = lock(&COUNT).settle(cap, now());
        tell(change, cap);
        let wait = match (cap, &test_clock) {
            (None, _) => None,
            (Some(_), Some(_)) => Some(TEST_RECHECK),
            // A second past midnight, so that the day has changed when it wakes.
            (Some(_), None) => Some(Duration::from_secs(until_reset(now()) + 1).min(RECHECK)),
        };
        tokio::select! {
            changed = current.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = async { match wait { Some(w) => tokio::time::sleep(w).await, None => std::future::pending().await } } => {}
        }
    }
}

/// The Unix seconds in a test clock file.
fn read_test_clock(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut buf = [0u8; MAX_CLOCK_FILE];
    let n = std::fs::File::open(path).ok()?.read(&mut buf).ok()?;
    std::str::from_utf8(buf.get(..n)?).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-05T23:00:00Z.
    const LATE: u64 = 1_796_511_600;

    #[test]
    fn crossing_the_cap_and_the_daily_reset() {
        let mut c = Count::new();
        let cap = Some(1000);
        assert_eq!(c.settle(cap, LATE), Change::None);
        assert_eq!(c.add(600, cap, LATE), Change::None);
        assert_eq!(c.add(399, cap, LATE + 1), Change::None);
        assert_eq!(c.add(1, cap, LATE + 2), Change::Crossed);
        assert_eq!(c.add(5000, cap, LATE + 3), Change::None, "told once");
        // Still the same day a second before midnight; the next one resets.
        assert_eq!(c.settle(cap, LATE + 3599), Change::None);
        assert_eq!(c.settle(cap, LATE + 3600), Change::Cleared { reset: true });
        assert_eq!((c.used, c.over), (0, false));
        // Bytes on a new day first reset the count, then count.
        assert_eq!(c.add(2000, cap, LATE + 3601), Change::Crossed);
        assert_eq!(
            c.add(1, cap, LATE + 3600 + DAY),
            Change::Cleared { reset: true }
        );
        assert_eq!(c.used, 1);
    }

    #[test]
    fn a_reload_raising_or_removing_the_cap_clears_it() {
        let mut c = Count::new();
        assert_eq!(c.add(2000, Some(1000), LATE), Change::Crossed);
        assert_eq!(c.settle(Some(4000), LATE), Change::Cleared { reset: false });
        assert_eq!(c.settle(Some(1500), LATE), Change::Crossed);
        assert_eq!(c.settle(None, LATE), Change::Cleared { reset: false });
        // Without a cap, bytes only count.
        assert_eq!(c.add(10_000, None, LATE), Change::None);
    }

    #[test]
    fn the_day_of_a_board_without_a_clock_is_the_edges() {
        // A set clock is the day, whatever the edge says.
        assert_eq!(device_now(LATE, Some(-5000)), LATE);
        assert_eq!(device_now(LATE, None), LATE);
        // 1970 plus the edge's offset is the edge's time.
        let boot = 120;
        let offset = (LATE - boot) as i64;
        assert_eq!(device_now(boot, Some(offset)), LATE);
        assert_eq!(device_now(boot + 3600, Some(offset)), LATE + 3600);
        // No edge yet: 1970's days (the count resets when the edge's time arrives).
        assert_eq!(device_now(boot, None), boot);
        let mut c = Count::new();
        assert_eq!(c.add(2000, Some(1000), boot), Change::Crossed);
        assert_eq!(
            c.settle(Some(1000), device_now(boot, Some(offset))),
            Change::Cleared { reset: true }
        );
    }

    #[test]
    fn resets_at_midnight_utc_and_charges_overhead() {
        assert_eq!(until_reset(LATE), 3600);
        assert_eq!(until_reset(LATE + 3600), DAY);
        assert_eq!(charge(16_000), 17_000);
        assert_eq!(charge(0), 0);
        assert_eq!(charge(u64::MAX), u64::MAX);
    }
}
