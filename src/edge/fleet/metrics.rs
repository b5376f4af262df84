//! The fleet's families on `/metrics` (Prometheus text format 0.0.4), labelled by fleet
//! only: at most [`MAX_FLEETS`] label values, the fleets with the most devices by name
//! and the rest summed up as `fleet="_other"`.
//!
//! - `mailslot_edge_fleet_devices_enrolled`, `_online`, `_offline`, `_revoked`: devices
//!   recorded (revoked ones too), connected now, neither connected nor revoked, revoked.
//! - `mailslot_edge_fleet_offline_last_seen_max_age_seconds`: how long the device dark
//!   the longest has been dark (0 when none is). A gauge rather than a histogram of
//!   last-seen ages: a Prometheus histogram counts observations over time and `rate()`
//!   and `histogram_quantile()` would misread a snapshot of ages, and format 0.0.4 has
//!   no gauge histogram. "Devices that went dark" is `_offline`, "since when" this one.
//! - `mailslot_edge_fleet_cpu_temperature_max_celsius`: the hottest CPU among the
//!   fleet's online devices that report a temperature (absent when none does).
//! - `mailslot_edge_fleet_wire_bytes_today`, `_today_max`: the bytes the fleet's
//!   devices' tunnels put on the wire today, as their last health reports said (summed,
//!   and the costliest device's); absent when no device reports it. Per fleet, not per
//!   device: a label per device would be a series per board.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::api::state;
use super::DeviceView;
use crate::edge::EdgeState;

/// Most `fleet` label values in one family, `_other` included.
pub const MAX_FLEETS: usize = 32;
/// The label value of the fleets past [`MAX_FLEETS`].
pub const OTHER: &str = "_other";

#[derive(Default)]
struct Fleet {
    enrolled: u64,
    online: u64,
    offline: u64,
    revoked: u64,
    /// Oldest last seen of an offline device, Unix seconds.
    oldest_offline: Option<u64>,
    /// Hottest online CPU, millidegrees.
    temp_max: Option<i32>,
    /// Today's wire bytes of the devices that report them: summed, and the largest.
    wire_today: Option<u64>,
    wire_today_max: Option<u64>,
}

impl Fleet {
    fn add(&mut self, v: &DeviceView) {
        self.enrolled += 1;
        match state(v) {
            "online" => self.online += 1,
            "offline" => {
                self.offline += 1;
                let seen = v.record.last_seen;
                self.oldest_offline = Some(self.oldest_offline.map_or(seen, |o| o.min(seen)));
            }
            _ => self.revoked += 1,
        }
        let temp = v.record.health.as_ref().and_then(|h| h.temp_millicelsius);
        if let (true, Some(t)) = (v.online, temp) {
            self.temp_max = Some(self.temp_max.map_or(t, |m| m.max(t)));
        }
        if let Some(w) = v.record.health_cost.as_ref().map(|c| c.today_wire) {
            self.wire_today = Some(self.wire_today.unwrap_or(0).saturating_add(w));
            self.wire_today_max = Some(self.wire_today_max.map_or(w, |m| m.max(w)));
        }
    }

    fn merge(&mut self, o: &Fleet) {
        self.enrolled += o.enrolled;
        self.online += o.online;
        self.offline += o.offline;
        self.revoked += o.revoked;
        self.oldest_offline = match (self.oldest_offline, o.oldest_offline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.temp_max = match (self.temp_max, o.temp_max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.wire_today = match (self.wire_today, o.wire_today) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            (a, b) => a.or(b),
        };
        self.wire_today_max = match (self.wire_today_max, o.wire_today_max) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Appends the fleet families for the edge's inventory (nothing before it is loaded).
pub(crate) fn append(out: &mut String, state: &EdgeState) {
    if let Some(inv) = state.fleet.get() {
        render(out, &inv.list(), crate::edge::token::now_unix());
    }
}

/// Per-fleet counts, at most [`MAX_FLEETS`] of them.
fn per_fleet(views: &[DeviceView]) -> Vec<(String, Fleet)> {
    let mut fleets: BTreeMap<&str, Fleet> = BTreeMap::new();
    for v in views {
        fleets.entry(v.record.fleet.as_str()).or_default().add(v);
    }
    let mut list: Vec<(String, Fleet)> = fleets
        .into_iter()
        .map(|(name, f)| (name.to_string(), f))
        .collect();
    if list.len() <= MAX_FLEETS {
        return list;
    }
    // The largest fleets keep their names (ties by name); the rest become one.
    list.sort_by(|a, b| b.1.enrolled.cmp(&a.1.enrolled).then_with(|| a.0.cmp(&b.0)));
    let mut other = Fleet::default();
    for (_, f) in list.iter().skip(MAX_FLEETS - 1) {
        other.merge(f);
    }
    list.truncate(MAX_FLEETS - 1);
    list.sort_by(|a, b| a.0.cmp(&b.0));
    list.push((OTHER.to_string(), other));
    list
}

/// Writes the families for `views` at `now` (Unix seconds).
pub fn render(out: &mut String, views: &[DeviceView], now: u64) {
    let fleets = per_fleet(views);
    type Value = fn(&Fleet, u64) -> Option<String>;
    let families: [(&str, &str, Value); 8] = [
        (
            "mailslot_edge_fleet_devices_enrolled",
            "Devices recorded in the fleet, revoked ones included.",
            |f, _| Some(f.enrolled.to_string()),
        ),
        (
            "mailslot_edge_fleet_devices_online",
            "Devices with at least one connection now.",
            |f, _| Some(f.online.to_string()),
        ),
        (
            "mailslot_edge_fleet_devices_offline",
            "Devices neither connected nor revoked.",
            |f, _| Some(f.offline.to_string()),
        ),
        (
            "mailslot_edge_fleet_devices_revoked",
            "Devices revoked.",
            |f, _| Some(f.revoked.to_string()),
        ),
        (
            "mailslot_edge_fleet_offline_last_seen_max_age_seconds",
            "Seconds since the offline device dark the longest was last seen (0: none offline).",
            |f, now| {
                Some(
                    f.oldest_offline
                        .map_or(0, |s| now.saturating_sub(s))
                        .to_string(),
                )
            },
        ),
        (
            "mailslot_edge_fleet_cpu_temperature_max_celsius",
            "Highest CPU temperature reported by an online device.",
            |f, _| f.temp_max.map(|t| format!("{}", f64::from(t) / 1000.0)),
        ),
        (
            "mailslot_edge_fleet_wire_bytes_today",
            "Bytes the devices' tunnels put on the wire today (UTC, by each device's clock), as last reported.",
            |f, _| f.wire_today.map(|w| w.to_string()),
        ),
        (
            "mailslot_edge_fleet_wire_bytes_today_max",
            "Bytes on the wire today of the fleet's costliest device, as last reported.",
            |f, _| f.wire_today_max.map(|w| w.to_string()),
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (fleet, f) in &fleets {
            if let Some(v) = value(f, now) {
                let _ = writeln!(out, "{name}{{fleet=\"{}\"}} {v}", label(fleet));
            }
        }
    }
}

/// A label value escaped as the text format wants (`\`, `"`, newline).
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::fleet::api::tests::view;

    #[test]
    fn families_per_fleet() {
        let now = 1_700_010_000;
        let mut views = vec![
            view(1, "a", "shop", true),
            view(2, "b", "shop", false),
            view(3, "c", "shop", false),
            view(4, "d", "home", true),
            view(5, "e", "home", false),
        ];
        views[4].record.revoked = Some(now);
        let mut out = String::new();
        render(&mut out, &views, now);
        // A fleet whose devices report no cost has no such series.
        let mut bare = view(6, "f", "old", true);
        bare.record.health_cost = None;
        let mut old = String::new();
        render(&mut old, &[bare], now);
        assert!(!old.contains("wire_bytes_today{"), "{old}");
        for line in [
            "# TYPE mailslot_edge_fleet_devices_enrolled gauge",
            "mailslot_edge_fleet_devices_enrolled{fleet=\"shop\"} 3",
            "mailslot_edge_fleet_devices_online{fleet=\"shop\"} 1",
            "mailslot_edge_fleet_devices_offline{fleet=\"shop\"} 2",
            "mailslot_edge_fleet_devices_revoked{fleet=\"home\"} 1",
            "mailslot_edge_fleet_devices_offline{fleet=\"home\"} 0",
            // b last seen at base + 120 s.
            "mailslot_edge_fleet_offline_last_seen_max_age_seconds{fleet=\"shop\"} 9880",
            "mailslot_edge_fleet_offline_last_seen_max_age_seconds{fleet=\"home\"} 0",
            // Only online devices count: a (41 °C) in shop, d (44 °C) in home.
            "mailslot_edge_fleet_cpu_temperature_max_celsius{fleet=\"shop\"} 41",
            "mailslot_edge_fleet_cpu_temperature_max_celsius{fleet=\"home\"} 44",
            // 1.5 MiB per n: a, b and c in shop (1 + 2 + 3), d and e in home (4 + 5).
            "mailslot_edge_fleet_wire_bytes_today{fleet=\"shop\"} 9437184",
            "mailslot_edge_fleet_wire_bytes_today_max{fleet=\"shop\"} 4718592",
            "mailslot_edge_fleet_wire_bytes_today{fleet=\"home\"} 14155776",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} not in\n{out}");
        }
    }

    #[test]
    fn fleets_past_the_cap_are_other_and_labels_are_escaped() {
        let views: Vec<DeviceView> = (0..100u8)
            .map(|n| view(n, "x", &format!("f{n:03}\"\\"), true))
            .chain((0..3).map(|n| view(200 + n, "y", "big", false)))
            .collect();
        let mut out = String::new();
        render(&mut out, &views, 1_800_000_000);
        let enrolled: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("mailslot_edge_fleet_devices_enrolled{"))
            .collect();
        assert_eq!(enrolled.len(), MAX_FLEETS);
        assert!(enrolled.contains(&"mailslot_edge_fleet_devices_enrolled{fleet=\"big\"} 3"));
        assert!(enrolled.contains(&"mailslot_edge_fleet_devices_enrolled{fleet=\"_other\"} 70"));
        assert!(
            enrolled.contains(&"mailslot_edge_fleet_devices_enrolled{fleet=\"f000\\\"\\\\\"} 1")
        );
        let no_devices = {
            let mut out = String::new();
            render(&mut out, &[], 0);
            out
        };
        assert!(!no_devices.lines().any(|l| !l.starts_with('#')));
    }
}
