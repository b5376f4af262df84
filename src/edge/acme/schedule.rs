//! When each name is ordered: a state machine fed with the names the tunnels serve, the
//! results of orders and the time (Unix seconds), returning the names to order now. No
//! I/O, so the tests drive time themselves.
//!
//! - A name with no certificate is ordered at once; one with a certificate at two
//!   thirds of its lifetime, less a jitter of up to a thirtieth of it (so that
//!   certificates issued together are not renewed together), or `renew-after` after it
//!   was issued when that is sooner.
//! - A failed order waits [`BACKOFF_BASE`], doubled at each failure up to
//!   [`BACKOFF_MAX`], per name.
//! - The table holds at most `max` names; past that, new names wait for room.

use std::collections::HashMap;

/// Wait after a first failure. From two minutes, doubling, a name failing over and
/// over is tried 5 times in its first hour (at 0, 2, 6, 14 and 30 minutes): Let's
/// Encrypt allows 5 failed validations per name and account per hour.
pub(crate) const BACKOFF_BASE: u64 = 120;
/// Longest wait between attempts for one name.
pub(crate) const BACKOFF_MAX: u64 = 6 * 3600;

#[derive(Debug, Default, Clone)]
struct Entry {
    /// When the current certificate should be replaced; 0: no certificate.
    renew_at: u64,
    /// Its expiry (for `/metrics`); 0: none.
    not_after: u64,
    /// Failed orders in a row.
    failures: u32,
    /// No order before this.
    next_try: u64,
    /// An order is in progress.
    in_flight: bool,
}

/// The per-name plan.
#[derive(Debug)]
pub(crate) struct Schedule {
    names: HashMap<String, Entry>,
    max: usize,
    renew_after: Option<u64>,
}

impl Schedule {
    /// At most `max` names; `renew_after` in seconds (`acme: renew-after`).
    pub(crate) fn new(max: usize, renew_after: Option<u64>) -> Schedule {
        Schedule {
            names: HashMap::new(),
            max,
            renew_after,
        }
    }

    /// Records a certificate for `name` valid from `not_before` to `not_after`, got at
    /// `now`; `jitter` in [0, 1) picks how early in the jitter window it is renewed.
    /// `false` when the table is full.
    pub(crate) fn issued(
        &mut self,
        name: &str,
        (not_before, not_after): (u64, u64),
        now: u64,
        jitter: f64,
    ) -> bool {
        let lifetime = not_after.saturating_sub(not_before);
        let early = (lifetime as f64 / 30.0 * jitter.clamp(0.0, 1.0)) as u64;
        let mut renew_at = not_before
            .saturating_add(lifetime / 3 * 2)
            .saturating_sub(early);
        if let Some(after) = self.renew_after {
            let early = (after as f64 / 30.0 * jitter.clamp(0.0, 1.0)) as u64;
            renew_at = renew_at.min(now.saturating_add(after).saturating_sub(early));
        }
        let Some(e) = self.entry(name) else {
            return false;
        };
        e.renew_at = renew_at.max(1);
        e.not_after = not_after;
        e.failures = 0;
        e.next_try = 0;
        e.in_flight = false;
        true
    }

    /// Records a failed order for `name` at `now`; returns the wait before the next.
    pub(crate) fn failed(&mut self, name: &str, now: u64) -> u64 {
        let Some(e) = self.entry(name) else {
            return BACKOFF_MAX;
        };
        e.failures = e.failures.saturating_add(1);
        let wait = BACKOFF_BASE
            .saturating_mul(1u64 << e.failures.saturating_sub(1).min(20))
            .min(BACKOFF_MAX);
        e.next_try = now.saturating_add(wait);
        e.in_flight = false;
        wait
    }

    /// Gives up an order of `name` that did not start: due again at once.
    pub(crate) fn cancel(&mut self, name: &str) {
        if let Some(e) = self.names.get_mut(name) {
            e.in_flight = false;
        }
    }

    /// Failed orders in a row for `name`.
    pub(crate) fn failures(&self, name: &str) -> u32 {
        self.names.get(name).map_or(0, |e| e.failures)
    }

    /// Of `wanted` (the names the tunnels serve), those to order now, marked in
    /// progress; at most `room` of them.
    pub(crate) fn due(&mut self, wanted: &[String], now: u64, room: usize) -> Vec<String> {
        // Names no tunnel serves any more leave once their certificate has expired.
        self.names.retain(|name, e| {
            e.in_flight || e.not_after == 0 || e.not_after > now || wanted.contains(name)
        });
        let mut out = Vec::new();
        for name in wanted {
            if out.len() >= room {
                break;
            }
            let Some(e) = self.entry(name) else {
                continue;
            };
            let needs = e.renew_at == 0 || now >= e.renew_at;
            if needs && !e.in_flight && now >= e.next_try {
                e.in_flight = true;
                out.push(name.clone());
            }
        }
        out
    }

    /// Expiry per name with a certificate, sorted by name.
    pub(crate) fn expiries(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .names
            .iter()
            .filter(|(_, e)| e.not_after > 0)
            .map(|(n, e)| (n.clone(), e.not_after))
            .collect();
        v.sort();
        v
    }

    /// The entry of `name`, made if there is room.
    fn entry(&mut self, name: &str) -> Option<&mut Entry> {
        if !self.names.contains_key(name) {
            if self.names.len() >= self.max {
                // Room is made by names no tunnel serves any more and with no
                // certificate (a certificate is kept for a device that comes back).
                let gone: Option<String> = self
                    .names
                    .iter()
                    .find(|(_, e)| e.not_after == 0 && !e.in_flight)
                    .map(|(n, _)| n.clone());
                match gone {
                    Some(g) => {
                        self.names.remove(&g);
                    }
                    None => return None,
                }
            }
            self.names.insert(name.to_string(), Entry::default());
        }
        self.names.get_mut(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn new_names_are_ordered_once_then_renewed_at_two_thirds() {
        let mut s = Schedule::new(10, None);
        let w = names(&["a.test", "b.test"]);
        assert_eq!(s.due(&w, 1000, 8), w);
        assert!(s.due(&w, 1001, 8).is_empty(), "in progress: not again");
        // 90 days from 1000.
        let life = 90 * 86400;
        assert!(s.issued("a.test", (1000, 1000 + life), 1000, 0.0));
        assert!(s.due(&w, 2000, 8).is_empty());
        assert!(s.due(&w, 1000 + life / 3 * 2 - 1, 8).is_empty());
        assert_eq!(s.due(&w, 1000 + life / 3 * 2, 8), names(&["a.test"]));
        assert_eq!(s.expiries(), vec![("a.test".to_string(), 1000 + life)]);
    }

    #[test]
    fn jitter_renews_up_to_a_thirtieth_of_the_lifetime_earlier() {
        let mut s = Schedule::new(10, None);
        let w = names(&["a.test"]);
        s.due(&w, 0, 8);
        let life = 3000;
        s.issued("a.test", (0, life), 0, 0.999);
        assert!(s.due(&w, 1899, 8).is_empty());
        assert_eq!(s.due(&w, 1901, 8), w);
    }

    #[test]
    fn renew_after_brings_renewal_forward() {
        let mut s = Schedule::new(10, Some(5));
        let w = names(&["a.test"]);
        s.due(&w, 100, 8);
        s.issued("a.test", (0, 1_000_000), 100, 0.0);
        assert!(s.due(&w, 104, 8).is_empty());
        assert_eq!(s.due(&w, 105, 8), w);
    }

    #[test]
    fn failures_back_off_per_name_doubling_to_the_cap() {
        let mut s = Schedule::new(10, None);
        let w = names(&["a.test", "b.test"]);
        s.due(&w, 0, 8);
        assert_eq!(s.failed("a.test", 0), BACKOFF_BASE);
        s.issued("b.test", (0, 1 << 30), 0, 0.0);
        assert!(s.due(&w, BACKOFF_BASE - 1, 8).is_empty());
        assert_eq!(s.due(&w, BACKOFF_BASE, 8), names(&["a.test"]));
        assert_eq!(s.failed("a.test", 100), 2 * BACKOFF_BASE);
        for _ in 0..40 {
            s.failed("a.test", 100);
        }
        assert_eq!(s.failed("a.test", 100), BACKOFF_MAX);
        assert!(s.failures("a.test") > 40);
        s.issued("a.test", (0, 1 << 30), 100, 0.0);
        assert_eq!(s.failures("a.test"), 0);
    }

    #[test]
    fn the_table_and_each_round_are_bounded() {
        let mut s = Schedule::new(2, None);
        let w = names(&["a.test", "b.test", "c.test"]);
        assert_eq!(s.due(&w, 0, 1), names(&["a.test"]));
        assert_eq!(s.due(&w, 0, 8), names(&["b.test"]), "c has no room");
        s.issued("a.test", (0, 1 << 30), 0, 0.0);
        s.failed("b.test", 0);
        // b has no certificate and is not in progress: it makes room for c.
        assert_eq!(s.due(&names(&["c.test"]), 0, 8), names(&["c.test"]));
        assert_eq!(s.names.len(), 2);
        // a's certificate expires while no tunnel serves it: it leaves, d gets room.
        s.issued("c.test", (0, 1 << 30), 0, 0.0);
        assert!(s.due(&names(&["d.test"]), 1 << 29, 8).is_empty());
        assert_eq!(
            s.due(&names(&["d.test"]), (1 << 30) + 1, 8),
            names(&["d.test"])
        );
        assert_eq!(s.expiries(), vec![]);
    }
}
