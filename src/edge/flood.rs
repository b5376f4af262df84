//! Defences against connection floods shared by the edge's listeners: the address a
//! client is counted under (IPv6 per /64), bounded per-address counts of connections
//! in a phase (handshake, unauthenticated), and rate-limited logging of what a flood
//! makes happen over and over.

use crate::util::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The address a client is counted under: an IPv4 address as is (also when it arrives
/// as an IPv4-mapped IPv6 address), an IPv6 address by its /64, the prefix one
/// subscriber gets and can fill with addresses at will.
pub(crate) fn addr_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        },
    }
}

/// Counts connections per client address (see [`addr_key`]) with a cap per address and
/// one on the addresses tracked; a slot is given back when its [`AddrSlot`] drops.
pub(crate) struct PerAddr {
    per_addr: usize,
    max_addrs: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in a [`PerAddr`] count.
pub(crate) struct AddrSlot {
    table: Arc<PerAddr>,
    key: IpAddr,
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.table.counts);
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl PerAddr {
    /// At most `per_addr` connections per address, and `max_addrs` addresses.
    pub(crate) fn new(per_addr: usize, max_addrs: usize) -> Arc<PerAddr> {
        Arc::new(PerAddr {
            per_addr,
            max_addrs,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `ip`, or `None` when its address holds all it may.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddrSlot> {
        let key = addr_key(ip);
        let mut counts = lock(&self.counts);
        let n = counts.get(&key).copied().unwrap_or(0);
        if n >= self.per_addr || (n == 0 && counts.len() >= self.max_addrs) {
            return None;
        }
        counts.insert(key, n + 1);
        Some(AddrSlot {
            table: self.clone(),
            key,
        })
    }

    /// Connections counted for `ip`'s address.
    #[cfg(test)]
    pub(crate) fn count(&self, ip: IpAddr) -> usize {
        lock(&self.counts).get(&addr_key(ip)).copied().unwrap_or(0)
    }
}

/// Logs one kind of event at most `burst` times, then once per `every`, each of those
/// lines saying how many were left out since the last one.
pub(crate) struct LogLimit {
    every: Duration,
    burst: u32,
    state: Mutex<LogState>,
}

struct LogState {
    window: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogLimit {
    pub(crate) const fn new(burst: u32, every: Duration) -> LogLimit {
        LogLimit {
            every,
            burst,
            state: Mutex::new(LogState {
                window: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether to log this event now: `Some(n)` with the count suppressed before it
    /// (to append as "n more suppressed"), `None` to stay silent.
    pub(crate) fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Option<u64> {
        let mut s = lock(&self.state);
        let fresh = s
            .window
            .is_none_or(|start| now.saturating_duration_since(start) >= self.every);
        if fresh {
            s.window = Some(now);
            s.logged = 0;
        }
        if s.logged < self.burst {
            s.logged += 1;
            return Some(std::mem::take(&mut s.suppressed));
        }
        s.suppressed += 1;
        None
    }
}

/// Logs at `level` through `limit`: `log_limited!(LIMIT, Info, "x {y}")`.
macro_rules! log_limited {
    ($limit:expr, $level:ident, $($arg:tt)+) => {
        if log::log_enabled!(log::Level::$level) {
            if let Some(n) = $limit.check() {
                if n > 0 {
                    log::log!(log::Level::$level, "{} ({n} more suppressed)", format_args!($($arg)+));
                } else {
                    log::log!(log::Level::$level, $($arg)+);
                }
            }
        }
    };
}
pub(crate) use log_limited;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_per_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(addr_key(a), addr_key(b));
        assert_ne!(addr_key(a), addr_key(c));
        assert_eq!(addr_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(addr_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(addr_key(v4), v4);
    }

    #[test]
    fn per_address_caps_release_on_drop() {
        let t = PerAddr::new(2, 2);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let a2: IpAddr = "2001:db8::2".parse().unwrap();
        let s1 = t.admit(a).unwrap();
        let _s2 = t.admit(a2).unwrap();
        assert!(t.admit(a).is_none(), "the /64 holds two already");
        let _o = t.admit("192.0.2.1".parse().unwrap()).unwrap();
        assert!(
            t.admit("192.0.2.2".parse().unwrap()).is_none(),
            "two addresses tracked at most"
        );
        drop(s1);
        assert_eq!(t.count(a), 1);
        assert!(t.admit(a).is_some());
    }

    #[test]
    fn log_limit_counts_what_it_left_out() {
        let l = LogLimit::new(2, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(l.check_at(t0 + Duration::from_millis(10)), None);
        }
        assert_eq!(l.check_at(t0 + Duration::from_secs(1)), Some(5));
    }
}
