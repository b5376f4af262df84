//! Health reports ([`Health`]): what the board's `/proc` and `/sys` say, the bytes
//! carried and the last problem logged, sent on one connection of the connector to an
//! edge that asked for them. Nothing is written on the device.
//!
//! One report goes out right after registration and then every `health_every_secs` of
//! the connection that carries them: the registered connection of the lowest slot among
//! those whose edge asked ([`Reporter`]); when it drops, the next one takes over. The
//! parsers are pure functions of the files' text; a file that is missing or does not
//! parse leaves its fields empty.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::util::lock;
use crate::wire::Health;

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
    tx: mpsc::Sender<Health>,
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
    ) -> (mpsc::Receiver<Health>, Attached) {
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
    fn send(&self, health: Health) {
        let mut outlets = lock(&self.outlets);
        for o in outlets.iter_mut().flatten() {
            o.fresh = false;
        }
        if let Some(lowest) = outlets.iter().flatten().next() {
            let _ = lowest.tx.try_send(health);
        }
    }

    /// Sends the reports until the connector stops.
    pub(super) async fn run(self: Arc<Self>) {
        let mut last: Option<Instant> = None;
        loop {
            let changed = self.changed.notified();
            let Some(due) = self.next_due(last, Instant::now()) else {
                changed.await;
                continue;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {
                    self.send(gather());
                    last = Some(Instant::now());
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

    #[tokio::test]
    async fn reports_go_on_the_lowest_attached_connection_only() {
        let r = Arc::new(Reporter::new(4));
        let t0 = Instant::now();
        let every = Duration::from_secs(300);
        assert_eq!(r.next_due(None, t0), None, "no connection takes reports");
        let (mut rx2, g2) = r.attach(2, 300);
        // Right after registration.
        assert_eq!(r.next_due(None, t0), Some(t0));
        r.send(Health::default());
        assert!(rx2.try_recv().is_ok());
        // Slot 0 registers just after: no second report at once, and the next one
        // goes to slot 0 only.
        let (mut rx0, g0) = r.attach(0, 300);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(r.next_due(Some(t0), t1), Some(t0 + every));
        r.send(Health::default());
        assert!(rx0.try_recv().is_ok());
        assert!(rx2.try_recv().is_err());
        // Slot 0 drops: slot 2 takes over on the schedule.
        drop(g0);
        let t2 = t0 + every;
        assert_eq!(r.next_due(Some(t2), t2), Some(t2 + every));
        r.send(Health::default());
        assert!(rx2.try_recv().is_ok());
        // Slot 0 registers again long after the last report: one at once, on slot 0.
        let (mut rx0, _g0) = r.attach(0, 300);
        let t3 = t2 + Duration::from_secs(60);
        assert_eq!(r.next_due(Some(t2), t3), Some(t3));
        r.send(Health::default());
        assert!(rx0.try_recv().is_ok());
        // Not fresh any more: back on the schedule.
        assert_eq!(r.next_due(Some(t3), t3), Some(t3 + every));
        drop(g2);
    }
}
