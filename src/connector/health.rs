//! Health reports ([`Health`]): what the board's `/proc` and `/sys` say, the bytes
//! carried and the last problem logged, sent on one connection of the connector to an
//! edge that asked for them. Nothing is written on the device.
//!
//! One report goes out right after registration and then every `health_every_secs` of
//! the connection that carries them: the registered connection of the lowest slot among
//! those whose edge asked ([`Reporter`]); when it drops, the next one takes over. The
//! parsers are pure functions of the files' text; a file that is missing or does not
//! parse leaves its fields empty.
//!
//! Each report carries a [`HealthCostTail`]: the bytes the tunnel carried (the streams'
//! payloads, [`BYTES_IN`] and [`BYTES_OUT`]) and the bytes its connections put on the
//! wire ([`crate::transport::meter`]) today and yesterday, UTC days of the device's
//! clock (the edge's while the device's is unset, as the data cap counts them). The
//! counters run from the start of the process; [`Days`] keeps the totals at the start
//! of today and yesterday's figures: a few words of memory, rolled at each midnight
//! and whenever a report is built. Nothing is written.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::util::lock;
use crate::wire::{Health, HealthCostTail};

/// A health report and its cost tail, as one connection sends it.
pub(super) type Report = (Health, HealthCostTail);

/// Bytes carried from visitors to the device's services since the connector started.
pub(crate) static BYTES_IN: AtomicU64 = AtomicU64::new(0);
/// Bytes carried from the device's services back to visitors.
pub(crate) static BYTES_OUT: AtomicU64 = AtomicU64::new(0);
/// The last warning or error logged, at most [`MAX_LAST_ERROR`] bytes.
static LAST_ERROR: Mutex<Option<String>> = Mutex::new(None);
/// Longest last-error text kept.
const MAX_LAST_ERROR: usize = 200;
/// A connection that registers this soon after a report does not send another.
const FRESH_GAP: Duration = Duration::from_secs(10);
/// Largest `/proc` or `/sys` file read.
const MAX_PROC_FILE: u64 = 8192;

/// Keeps `record` as the last problem when it is a warning or an error (the logger
/// calls this for every record it prints).
pub fn note_log(record: &log::Record<'_>) {
    if record.level() > log::Level::Warn {
        return;
    }
    let mut text = record.args().to_string();
    if text.len() > MAX_LAST_ERROR {
        let mut cut = MAX_LAST_ERROR;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    *lock(&LAST_ERROR) = Some(text);
}

/// The device's state now.
pub(crate) fn gather() -> Health {
    let (mem_available_kib, mem_total_kib) = read("/proc/meminfo")
        .map(|t| parse_meminfo(&t))
        .unwrap_or_default();
    let (root_free_kib, root_total_kib) = root_space();
    Health {
        uptime_secs: read("/proc/uptime")
            .and_then(|t| parse_uptime(&t))
            .unwrap_or(0),
        load_centi: read("/proc/loadavg")
            .and_then(|t| parse_loadavg(&t))
            .unwrap_or_default(),
        mem_available_kib,
        mem_total_kib,
        temp_millicelsius: read("/sys/class/thermal/thermal_zone0/temp")
            .and_then(|t| t.trim().parse().ok()),
        root_free_kib,
        root_total_kib,
        clock_set: !crate::clock::unset(),
        bytes_in: BYTES_IN.load(Ordering::Relaxed),
        bytes_out: BYTES_OUT.load(Ordering::Relaxed),
        last_error: lock(&LAST_ERROR).clone(),
    }
}

/// Seconds in a day.
const DAY: u64 = 86_400;
/// Longest sleep between two looks at the day while reports run: a clock that steps is
/// noticed this late at most.
const DAY_RECHECK: Duration = Duration::from_secs(3600);

/// Bytes carried and on the wire, as counted since the process started (or over a
/// day, as differences of those).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) carried: u64,
    pub(crate) wire: u64,
}

impl Totals {
    /// The process's counters now.
    fn now() -> Totals {
        Totals {
            carried: BYTES_IN
                .load(Ordering::Relaxed)
                .saturating_add(BYTES_OUT.load(Ordering::Relaxed)),
            wire: crate::transport::meter::total(),
        }
    }

    fn since(self, start: Totals) -> Totals {
        Totals {
            carried: self.carried.saturating_sub(start.carried),
            wire: self.wire.saturating_sub(start.wire),
        }
    }
}

/// The daily split of the counters: the policy, without I/O. Times are the device's
/// Unix seconds (`now`) and monotonic seconds since the process started (`mono`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Days {
    /// Today, days since 1970.
    day: u64,
    /// The counters when today's count began.
    start: Totals,
    /// When today's count began, monotonic seconds.
    began: u64,
    /// Yesterday's counts and the seconds they cover.
    yesterday: Option<(Totals, u64)>,
}

impl Days {
    /// Counting from `now`, the counters reading `totals`.
    pub(crate) fn new(now: u64, mono: u64, totals: Totals) -> Days {
        Days {
            day: now / DAY,
            start: totals,
            began: mono,
            yesterday: None,
        }
    }

    /// Moves to `now`'s day. The next day after midnight: today's count becomes
    /// yesterday's (with what the counters took since midnight, a second's worth when
    /// rolled by the midnight timer). Any other change (a clock set or stepped): the
    /// count goes on under the new day, and yesterday is unknown.
    pub(crate) fn roll(&mut self, now: u64, mono: u64, totals: Totals) {
        let day = now / DAY;
        if day == self.day {
            return;
        }
        if day == self.day.saturating_add(1) {
            let since_midnight = now % DAY;
            let covered = mono
                .saturating_sub(self.began)
                .saturating_sub(since_midnight)
                .min(DAY);
            self.yesterday = Some((totals.since(self.start), covered));
            self.start = totals;
            self.began = mono.saturating_sub(since_midnight);
        } else {
            self.yesterday = None;
        }
        self.day = day;
    }

    /// The report's tail at `now`.
    pub(crate) fn tail(&mut self, now: u64, mono: u64, totals: Totals) -> HealthCostTail {
        self.roll(now, mono, totals);
        let today = totals.since(self.start);
        let (yesterday, yesterday_secs) = self.yesterday.unwrap_or_default();
        let secs = |s: u64| u32::try_from(s).unwrap_or(u32::MAX);
        HealthCostTail {
            day: u32::try_from(self.day).unwrap_or(u32::MAX),
            today_secs: secs(mono.saturating_sub(self.began)),
            today_carried: today.carried,
            today_wire: today.wire,
            yesterday_secs: secs(yesterday_secs),
            yesterday_carried: yesterday.carried,
            yesterday_wire: yesterday.wire,
        }
    }
}

/// The process's daily split, from its first look (the reporter's start).
static DAYS: Mutex<Option<Days>> = Mutex::new(None);
/// The process's start, for monotonic seconds.
static STARTED: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

/// Rolls the daily split to now and returns the cost tail of a report.
fn cost() -> HealthCostTail {
    let (now, mono, totals) = (
        super::cap::now(),
        STARTED.elapsed().as_secs(),
        Totals::now(),
    );
    let mut days = lock(&DAYS);
    days.get_or_insert_with(|| Days::new(now, mono, totals))
        .tail(now, mono, totals)
}

/// A report now: the board's state and what the tunnel cost.
fn report() -> Report {
    (gather(), cost())
}

fn read(path: &str) -> Option<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PROC_FILE).read_to_string(&mut text))
        .ok()?;
    Some(text)
}

/// Whole seconds of `/proc/uptime` (`12345.67 54321.00`).
fn parse_uptime(text: &str) -> Option<u64> {
    let first = text.split_whitespace().next()?;
    let whole = first.split('.').next()?;
    whole.parse().ok()
}

/// The three load averages of `/proc/loadavg`, times 100.
fn parse_loadavg(text: &str) -> Option<[u32; 3]> {
    let mut out = [0u32; 3];
    let mut fields = text.split_whitespace();
    for x in &mut out {
        *x = centi(fields.next()?)?;
    }
    Some(out)
}

/// `1.05` as 105.
fn centi(s: &str) -> Option<u32> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut frac: String = frac.chars().take(2).collect();
    while frac.len() < 2 {
        frac.push('0');
    }
    whole
        .parse::<u32>()
        .ok()?
        .checked_mul(100)?
        .checked_add(frac.parse().ok()?)
}

/// `MemAvailable` and `MemTotal` of `/proc/meminfo`, KiB; 0 when absent.
fn parse_meminfo(text: &str) -> (u64, u64) {
    let (mut available, mut total) = (0, 0);
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemAvailable" => &mut available,
            "MemTotal" => &mut total,
            _ => continue,
        };
        *slot = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
    }
    (available, total)
}

/// Free (for unprivileged users) and total KiB of the file system holding `/`.
// The field types differ by target (u32 on 32-bit ARM): `from` is needed there.
#[allow(clippy::useless_conversion)]
fn root_space() -> (Option<u64>, Option<u64>) {
    // SAFETY: statvfs is plain data; all zeros is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is a NUL-terminated string and `st` is a valid statvfs to fill.
    if unsafe { libc::statvfs(c"/".as_ptr(), &mut st) } != 0 {
        return (None, None);
    }
    let unit = u64::from(st.f_frsize).max(1);
    let kib = |blocks: u64| Some(blocks.saturating_mul(unit) / 1024);
    (kib(u64::from(st.f_bavail)), kib(u64::from(st.f_blocks)))
}

/// Which registered connections may carry health reports, and the task that sends
/// them on the lowest one. Holds one entry per slot (`ha-connections`, at most 16).
pub(super) struct Reporter {
    outlets: Mutex<Vec<Option<Outlet>>>,
    changed: Notify,
}

struct Outlet {
    tx: mpsc::Sender<Report>,
    every: Duration,
    /// Registered since the last report.
    fresh: bool,
}

/// A connection's place among the reporters; leaves when dropped.
pub(super) struct Attached {
    reporter: Arc<Reporter>,
    slot: usize,
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(o) = lock(&self.reporter.outlets).get_mut(self.slot) {
            *o = None;
        }
        self.reporter.changed.notify_one();
    }
}

impl Reporter {
    pub(super) fn new(slots: usize) -> Reporter {
        Reporter {
            outlets: Mutex::new((0..slots).map(|_| None).collect()),
            changed: Notify::new(),
        }
    }

    /// Connection `slot` registered with an edge that wants a report every
    /// `every_secs`: it receives the reports to send while the guard lives.
    pub(super) fn attach(
        self: &Arc<Self>,
        slot: usize,
        every_secs: u32,
    ) -> (mpsc::Receiver<Report>, Attached) {
        // One report waiting at most: a connection that cannot write skips the next.
        let (tx, rx) = mpsc::channel(1);
        if let Some(o) = lock(&self.outlets).get_mut(slot) {
            *o = Some(Outlet {
                tx,
                every: Duration::from_secs(u64::from(every_secs.max(1))),
                fresh: true,
            });
        }
        self.changed.notify_one();
        let guard = Attached {
            reporter: self.clone(),
            slot,
        };
        (rx, guard)
    }

    /// When the next report is due; `None` while no connection takes them.
    fn next_due(&self, last: Option<Instant>, now: Instant) -> Option<Instant> {
        let outlets = lock(&self.outlets);
        let lowest = outlets.iter().flatten().next()?;
        Some(match last {
            None => now,
            Some(l) if lowest.fresh && now.duration_since(l) >= FRESH_GAP => now,
            Some(l) => l + lowest.every,
        })
    }

    /// Hands `health` to the lowest connection that takes reports.
    fn send(&self, health: Report) {
        let mut outlets = lock(&self.outlets);
        for o in outlets.iter_mut().flatten() {
            o.fresh = false;
        }
        if let Some(lowest) = outlets.iter().flatten().next() {
            let _ = lowest.tx.try_send(health);
        }
    }

    /// Sends the reports until the connector stops.
    /// Sends the reports until the connector stops, and rolls the daily cost count at
    /// each midnight (a second after it) whether or not a connection takes reports.
    pub(super) async fn run(self: Arc<Self>) {
        let mut last: Option<Instant> = None;
        let _ = cost();
        loop {
            let changed = self.changed.notified();
            let midnight = Duration::from_secs(super::cap::until_reset(super::cap::now()) + 1)
                .min(DAY_RECHECK);
            let due = self.next_due(last, Instant::now());
            tokio::select! {
                _ = async { match due { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                    self.send(report());
                    last = Some(Instant::now());
                }
                _ = tokio::time::sleep(midnight) => {
                    let _ = cost();
                }
                _ = changed => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        assert_eq!(parse_uptime("350735.47 234388.90\n"), Some(350_735));
        assert_eq!(parse_uptime("12\n"), Some(12));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(
            parse_loadavg("0.20 1.05 12.5 1/1234 5678\n"),
            Some([20, 105, 1250])
        );
        assert_eq!(parse_loadavg("0.20 1.05\n"), None);
        assert_eq!(parse_loadavg("a b c"), None);
        let meminfo = "MemTotal:        3884096 kB\nMemFree:          911896 kB\n\
                       MemAvailable:    2749728 kB\nBuffers:           91924 kB\n";
        assert_eq!(parse_meminfo(meminfo), (2_749_728, 3_884_096));
        assert_eq!(parse_meminfo("MemTotal: 1000 kB\n"), (0, 1000));
        assert_eq!(parse_meminfo("garbage"), (0, 0));
    }

    #[test]
    fn this_machine_reports_what_it_has() {
        let h = gather();
        assert!(h.uptime_secs > 0 && h.mem_total_kib > 0, "{h:?}");
        assert!(h.root_total_kib.is_some(), "{h:?}");
    }

    #[test]
    fn the_last_problem_is_bounded() {
        let long = "é".repeat(300);
        note_log(
            &log::Record::builder()
                .level(log::Level::Warn)
                .args(format_args!("{long}"))
                .build(),
        );
        note_log(
            &log::Record::builder()
                .level(log::Level::Info)
                .args(format_args!("not a problem"))
                .build(),
        );
        let kept = lock(&LAST_ERROR).clone().unwrap();
        assert!(
            kept.len() <= MAX_LAST_ERROR && kept.starts_with('é'),
            "{kept}"
        );
    }

    fn t(carried: u64, wire: u64) -> Totals {
        Totals { carried, wire }
    }

    /// 2026-12-05T23:00:00Z.
    const LATE: u64 = 1_796_511_600;

    #[test]
    fn the_cost_of_today_and_of_yesterday() {
        // Started at 23:00, an hour before midnight, counters at zero.
        let mut d = Days::new(LATE, 0, t(0, 0));
        let tail = d.tail(LATE + 1800, 1800, t(1000, 5000));
        assert_eq!(tail.day, (LATE / DAY) as u32);
        assert_eq!(
            (tail.today_secs, tail.today_carried, tail.today_wire),
            (1800, 1000, 5000)
        );
        assert_eq!(tail.yesterday_secs, 0, "no yesterday yet");
        // A second past midnight (the timer): the hour becomes yesterday, today starts.
        d.roll(LATE + 3601, 3601, t(1200, 6000));
        let tail = d.tail(LATE + 3601, 3601, t(1200, 6000));
        assert_eq!(tail.day, (LATE / DAY + 1) as u32);
        assert_eq!(
            (tail.today_secs, tail.today_carried, tail.today_wire),
            (1, 0, 0)
        );
        assert_eq!(
            (
                tail.yesterday_secs,
                tail.yesterday_carried,
                tail.yesterday_wire
            ),
            (3600, 1200, 6000)
        );
        // Through the day.
        let noon = LATE + 3600 + 43_200;
        let tail = d.tail(noon, 3600 + 43_200, t(1300, 9000));
        assert_eq!(
            (tail.today_secs, tail.today_carried, tail.today_wire),
            (43_200, 100, 3000)
        );
        assert_eq!(tail.yesterday_wire, 6000, "yesterday stays");
        // The next midnight, rolled late (by a report): a whole day, with what came
        // since midnight.
        let next = LATE + 3600 + DAY;
        let tail = d.tail(next + 60, 3600 + DAY + 60, t(1400, 9500));
        assert_eq!(
            (
                tail.yesterday_secs,
                tail.yesterday_carried,
                tail.yesterday_wire
            ),
            (DAY as u32, 200, 3500)
        );
        assert_eq!(
            (tail.today_secs, tail.today_carried, tail.today_wire),
            (60, 0, 0)
        );
    }

    #[test]
    fn a_clock_that_steps_keeps_counting_and_forgets_yesterday() {
        // A board without an RTC starts in 1970, then learns the time.
        let mut d = Days::new(100, 0, t(0, 0));
        let tail = d.tail(LATE, 500, t(10, 700));
        assert_eq!(tail.day, (LATE / DAY) as u32);
        assert_eq!(
            (tail.today_secs, tail.today_carried, tail.today_wire),
            (500, 10, 700)
        );
        assert_eq!(tail.yesterday_secs, 0);
        // A step back: the same.
        let tail = d.tail(LATE - 3 * DAY, 600, t(20, 800));
        assert_eq!(
            (tail.today_carried, tail.today_wire, tail.yesterday_secs),
            (20, 800, 0)
        );
    }

    #[test]
    fn counts_saturate() {
        // Counters that wrap or go back (they never should) give zero, not a panic.
        let mut d = Days::new(LATE, 50, t(u64::MAX, 10));
        let tail = d.tail(LATE, 10, t(5, u64::MAX));
        assert_eq!(
            (tail.today_secs, tail.today_carried, tail.today_wire),
            (0, 0, u64::MAX - 10)
        );
        let tail = d.tail(LATE + 3600, u64::MAX, t(0, 0));
        assert_eq!(tail.yesterday_secs, DAY as u32);
        let tail = Days::new(LATE, 0, t(0, 0)).tail(LATE + 1, u64::MAX, t(0, 0));
        assert_eq!(tail.today_secs, u32::MAX);
        assert_eq!(t(3, 4).since(t(5, 1)), t(0, 3));
    }

    #[tokio::test]
    async fn reports_go_on_the_lowest_attached_connection_only() {
        let r = Arc::new(Reporter::new(4));
        let t0 = Instant::now();
        let every = Duration::from_secs(300);
        assert_eq!(r.next_due(None, t0), None, "no connection takes reports");
        let (mut rx2, g2) = r.attach(2, 300);
        // Right after registration.
        assert_eq!(r.next_due(None, t0), Some(t0));
        r.send(Default::default());
        assert!(rx2.try_recv().is_ok());
        // Slot 0 registers just after: no second report at once, and the next one
        // goes to slot 0 only.
        let (mut rx0, g0) = r.attach(0, 300);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(r.next_due(Some(t0), t1), Some(t0 + every));
        r.send(Default::default());
        assert!(rx0.try_recv().is_ok());
        assert!(rx2.try_recv().is_err());
        // Slot 0 drops: slot 2 takes over on the schedule.
        drop(g0);
        let t2 = t0 + every;
        assert_eq!(r.next_due(Some(t2), t2), Some(t2 + every));
        r.send(Default::default());
        assert!(rx2.try_recv().is_ok());
        // Slot 0 registers again long after the last report: one at once, on slot 0.
        let (mut rx0, _g0) = r.attach(0, 300);
        let t3 = t2 + Duration::from_secs(60);
        assert_eq!(r.next_due(Some(t2), t3), Some(t3));
        r.send(Default::default());
        assert!(rx0.try_recv().is_ok());
        // Not fresh any more: back on the schedule.
        assert_eq!(r.next_due(Some(t3), t3), Some(t3 + every));
        drop(g2);
    }
}
