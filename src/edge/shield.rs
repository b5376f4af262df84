//! The edge as a shield: limits, timeouts, rate limits and rejection counters, so junk
//! traffic dies at the edge and never reaches a device.
//!
//! Every table here has a cap: connection counts per client IP and token buckets are
//! bounded maps that shed idle entries when full.

use crate::util::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use regex::Regex;
use serde::Deserialize;

use super::cidr::in_cidr;
use crate::hostname::HostPattern;

/// Most client IPs tracked for connection counts.
const MAX_TRACKED_IPS: usize = 100_000;
/// Most token buckets kept (client IP × rule).
const MAX_BUCKETS: usize = 200_000;

/// Limits and timeouts for visitors (`limits:` in `edge.yml`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub(crate) tls_handshake_timeout: Duration,
    /// Time to receive a whole request head (slowloris), and idle time between
    /// keep-alive requests.
    pub(crate) request_head_timeout: Duration,
    /// Longest time a visitor connection stays open without a request in flight,
    /// after its first request (HTTP/2 above all: HTTP/1.1 waits for a next request
    /// head at most `request_head_timeout`).
    pub(crate) conn_idle_timeout: Duration,
    /// Time to receive the first `body_buffer` bytes of a body (slow POST).
    pub(crate) body_timeout: Duration,
    /// Longest silence in a body after the buffered part.
    pub(crate) body_idle_timeout: Duration,
    /// Body bytes buffered at the edge before a tunnel stream is opened.
    pub(crate) body_buffer: usize,
    pub(crate) max_head_bytes: usize,
    pub(crate) max_headers: usize,
    pub(crate) max_url_bytes: usize,
    /// Default largest request body (413 beyond); per-hostname overrides below.
    pub(crate) max_body_bytes: u64,
    pub(crate) max_conns: usize,
    pub(crate) max_conns_per_ip: usize,
    /// Requests in flight per tunnel; more wait in a queue.
    pub(crate) max_streams_per_tunnel: usize,
    /// Longest wait in that queue before 503.
    pub(crate) queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            tls_handshake_timeout: Duration::from_secs(10),
            request_head_timeout: Duration::from_secs(10),
            conn_idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(30),
            body_buffer: 64 * 1024,
            max_head_bytes: 32 * 1024,
            max_headers: 100,
            max_url_bytes: 8 * 1024,
            max_body_bytes: 100 * 1024 * 1024,
            max_conns: 16_384,
            max_conns_per_ip: 256,
            max_streams_per_tunnel: 512,
            queue_timeout: Duration::from_secs(5),
        }
    }
}

/// A rate limit: `rate` requests per second per client IP, bursts up to `burst`.
#[derive(Debug, Clone)]
pub struct RateRule {
    pub hostname: Option<HostPattern>,
    pub path: Option<Regex>,
    pub rate: f64,
    pub burst: f64,
}

impl RateRule {
    fn matches(&self, host: &str, path: &str) -> bool {
        self.hostname.as_ref().is_none_or(|p| p.matches(host))
            && self.path.as_ref().is_none_or(|re| re.is_match(path))
    }
}

/// Per-hostname overrides: body size and security headers.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    pub hostname: HostPattern,
    pub(crate) max_body_bytes: Option<u64>,
    /// Response headers added when the origin did not set them.
    pub(crate) add_headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

/// What the shield counted, for metrics.
#[derive(Default, Debug)]
pub struct Counters {
    pub(crate) conn_limit: AtomicU64,
    pub(crate) ip_conn_limit: AtomicU64,
    pub(crate) tls_timeout: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) body_too_large: AtomicU64,
    pub(crate) url_too_long: AtomicU64,
    pub(crate) slow_body: AtomicU64,
    pub(crate) bad_request: AtomicU64,
    pub(crate) tunnel_busy: AtomicU64,
}

impl Counters {
    /// `name value` pairs.
    pub(crate) fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("conn_limit", g(&self.conn_limit)),
            ("ip_conn_limit", g(&self.ip_conn_limit)),
            ("tls_timeout", g(&self.tls_timeout)),
            ("rate_limited", g(&self.rate_limited)),
            ("body_too_large", g(&self.body_too_large)),
            ("url_too_long", g(&self.url_too_long)),
            ("slow_body", g(&self.slow_body)),
            ("bad_request", g(&self.bad_request)),
            ("tunnel_busy", g(&self.tunnel_busy)),
        ]
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Shared shield state.
pub struct Shield {
    pub limits: Limits,
    pub(crate) rates: Vec<RateRule>,
    pub hosts: Vec<HostPolicy>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub(crate) trusted_proxies: Vec<(IpAddr, u8)>,
    pub counters: Counters,
    conns: Mutex<HashMap<IpAddr, usize>>,
    buckets: Mutex<HashMap<(usize, IpAddr), Bucket>>,
    log: Mutex<LogBudget>,
}

/// A visitor connection's slot in the per-IP count; released on drop.
pub(crate) struct ConnSlot {
    shield: Arc<Shield>,
    ip: IpAddr,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut conns = lock(&self.shield.conns);
        if let Some(n) = conns.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                conns.remove(&self.ip);
            }
        }
    }
}

/// Logs at most a few lines per second, so an attack cannot fill the disk.
struct LogBudget {
    tokens: f64,
    at: Instant,
    suppressed: u64,
}

const LOG_RATE: f64 = 5.0;
const LOG_BURST: f64 = 20.0;

impl Shield {
    pub fn new(
        limits: Limits,
        rates: Vec<RateRule>,
        hosts: Vec<HostPolicy>,
        trusted_proxies: Vec<(IpAddr, u8)>,
    ) -> Shield {
        Shield {
            limits,
            rates,
            hosts,
            trusted_proxies,
            counters: Counters::default(),
            conns: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
            log: Mutex::new(LogBudget {
                tokens: LOG_BURST,
                at: Instant::now(),
                suppressed: 0,
            }),
        }
    }

    /// Admits a new connection from `ip`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, &'static str> {
        let mut conns = lock(&self.conns);
        let n = conns.get(&ip).copied().unwrap_or(0);
        if n >= self.limits.max_conns_per_ip {
            self.counters.ip_conn_limit.fetch_add(1, Ordering::Relaxed);
            return Err("too many connections from this address");
        }
        if n == 0 && conns.len() >= MAX_TRACKED_IPS {
            self.counters.conn_limit.fetch_add(1, Ordering::Relaxed);
            return Err("too many client addresses");
        }
        conns.insert(ip, n + 1);
        Ok(ConnSlot {
            shield: self.clone(),
            ip,
        })
    }

    /// Takes a token for a request; `Err(retry_after_secs)` when over the limit.
    pub(crate) fn rate_check(&self, ip: IpAddr, host: &str, path: &str) -> Result<(), u64> {
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        for (i, rule) in self.rates.iter().enumerate() {
            if !rule.matches(host, path) {
                continue;
            }
            if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&(i, ip)) {
                // Shed buckets that have refilled: they hold no state worth keeping.
                buckets.retain(|(r, _), b| {
                    self.rates.get(*r).is_some_and(|rule| {
                        b.tokens + now.duration_since(b.at).as_secs_f64() * rule.rate < rule.burst
                    })
                });
                if buckets.len() >= MAX_BUCKETS {
                    self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                    return Err(1);
                }
            }
            let b = buckets.entry((i, ip)).or_insert(Bucket {
                tokens: rule.burst,
                at: now,
            });
            b.tokens =
                (b.tokens + now.duration_since(b.at).as_secs_f64() * rule.rate).min(rule.burst);
            b.at = now;
            if b.tokens < 1.0 {
                self.counters.rate_limited.fetch_add(1, Ordering::Relaxed);
                let wait = ((1.0 - b.tokens) / rule.rate.max(f64::MIN_POSITIVE)).ceil();
                return Err((wait as u64).max(1));
            }
            b.tokens -= 1.0;
        }
        Ok(())
    }

    /// The policy for `host`, if any.
    pub(crate) fn host_policy(&self, host: &str) -> Option<&HostPolicy> {
        self.hosts.iter().find(|h| h.hostname.matches(host))
    }

    /// The largest body accepted for `host`.
    pub(crate) fn max_body(&self, host: &str) -> u64 {
        self.host_policy(host)
            .and_then(|h| h.max_body_bytes)
            .unwrap_or(self.limits.max_body_bytes)
    }

    /// The client's address: the socket peer, or the last untrusted hop of
    /// `X-Forwarded-For` when the peer is a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, xff: Option<&str>) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let Some(xff) = xff else { return peer };
        for hop in xff.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                return peer;
            };
            if !self.is_trusted(ip) {
                return ip;
            }
        }
        peer
    }

    /// Is `ip` a proxy whose forwarding headers are believed?
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|(net, bits)| in_cidr(ip, *net, *bits))
    }

    /// Logs a rejection unless the log budget is spent.
    pub(crate) fn log_rejection(&self, what: std::fmt::Arguments<'_>) {
        let mut b = lock(&self.log);
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * LOG_RATE).min(LOG_BURST);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            let suppressed = std::mem::take(&mut b.suppressed);
            drop(b);
            if suppressed > 0 {
                log::warn!("rejected: {what} ({suppressed} similar lines suppressed)");
            } else {
                log::warn!("rejected: {what}");
            }
        } else {
            b.suppressed += 1;
        }
    }
}

/// `rate-limits:` entries in `edge.yml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawRate {
    pub hostname: Option<String>,
    pub path: Option<String>,
    /// "10/s", "300/m", "1000/h".
    pub rate: String,
    pub burst: Option<u32>,
}

impl RawRate {
    pub(crate) fn build(self) -> Result<RateRule, String> {
        let (n, per) = self
            .rate
            .split_once('/')
            .ok_or_else(|| format!("rate {:?}: write it like 10/s", self.rate))?;
        let n: f64 = n
            .trim()
            .parse()
            .map_err(|_| format!("rate {:?}: not a number", self.rate))?;
        let secs = match per.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(format!(
                    "rate {:?}: unit {other:?} is not s, m or h",
                    self.rate
                ))
            }
        };
        if !(n > 0.0 && n.is_finite()) {
            return Err(format!("rate {:?} must be positive", self.rate));
        }
        let path = match self.path {
            None => None,
            Some(p) => Some(Regex::new(&p).map_err(|e| format!("rate-limits path {p:?}: {e}"))?),
        };
        let hostname = self
            .hostname
            .map(|h| HostPattern::parse(&h).map_err(|e| format!("rate-limits hostname {h:?}: {e}")))
            .transpose()?;
        Ok(RateRule {
            hostname,
            path,
            rate: n / secs,
            burst: f64::from(self.burst.unwrap_or((n.ceil() as u32).max(1))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::cidr::parse_cidr;

    fn shield(rates: Vec<RateRule>) -> Arc<Shield> {
        Arc::new(Shield::new(
            Limits {
                max_conns_per_ip: 2,
                ..Limits::default()
            },
            rates,
            Vec::new(),
            vec![parse_cidr("10.0.0.0/8").unwrap()],
        ))
    }

    #[test]
    fn per_ip_connection_cap_releases_on_drop() {
        let s = shield(Vec::new());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = s.admit(ip).unwrap();
        let _b = s.admit(ip).unwrap();
        assert!(s.admit(ip).is_err());
        assert!(s.admit("192.0.2.2".parse().unwrap()).is_ok());
        drop(a);
        assert!(s.admit(ip).is_ok());
    }

    #[test]
    fn token_bucket_limits_one_client_not_another() {
        let rule = RawRate {
            hostname: Some("*.example.com".into()),
            path: Some("^/login".into()),
            rate: "2/s".into(),
            burst: Some(3),
        }
        .build()
        .unwrap();
        let s = shield(vec![rule]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(s.rate_check(a, "x.example.com", "/login").is_ok());
        }
        assert_eq!(s.rate_check(a, "x.example.com", "/login"), Err(1));
        assert!(s.rate_check(b, "x.example.com", "/login").is_ok());
        assert!(
            s.rate_check(a, "x.example.com", "/home").is_ok(),
            "other paths are not limited"
        );
        assert_eq!(s.counters.rate_limited.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let s = shield(Vec::new());
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(s.client_ip(stranger, Some("1.2.3.4")), stranger);
        assert_eq!(
            s.client_ip(proxy, Some("1.2.3.4, 10.0.0.7")),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(s.client_ip(proxy, Some("garbage")), proxy);
    }
}
