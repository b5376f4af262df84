//! Presence: which edges hold connections for which tunnel, and which tunnel owns each
//! hostname across the cluster, in Redis with expiry, so that a dead edge's entries go
//! by themselves.
//!
//! ```text
//!  mailslot:at:<tunnel id hex>   sorted set  member address -> expiry (Unix ms); the
//!                                            key itself expires with its last entry
//!  mailslot:host:<hostname>      string      "<tunnel id hex> <member>", expiring
//! ```
//!
//! Every [`REFRESH_EVERY`] an edge writes the tunnels it holds, with their hostnames,
//! for [`TTL`], and removes itself from the tunnels it let go. A registration that would
//! start a tunnel here first claims its hostnames ([`Presence::claim`]): a hostname held
//! by another tunnel anywhere in the cluster is refused, as one edge refuses it today.
//! A hostname let go is free for another tunnel once its entry expires (at most
//! [`TTL`]). Redis unreachable: claims are allowed (each edge still keeps one tunnel
//! per hostname itself) and the entries are written again when it is back (tried every
//! [`RETRY_WHILE_FAILING`] meanwhile).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::edge::flood::{log_limited, LogLimit};
use crate::edge::registry::Registry;
use crate::util::hex;

/// How long an entry lives without being refreshed.
pub(crate) const TTL: Duration = Duration::from_secs(30);
/// How often the entries of what this edge holds are refreshed.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// How soon a refresh that failed is tried again: a Redis that comes back after more
/// than [`TTL`] holds none of this edge's entries, and until they are written again
/// the other edges cannot forward to this one (their visitors get 404 or 502).
pub(crate) const RETRY_WHILE_FAILING: Duration = Duration::from_secs(1);
/// Longest wait for one call (connecting included).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Tunnels written per round trip.
const CHUNK: usize = 500;

/// Claims `KEYS[1]` (a hostname) for the tunnel `ARGV[1]` at member `ARGV[2]` for
/// `ARGV[3]` ms; returns the holder's value when another tunnel holds it.
const CLAIM: &str = "local v = redis.call('GET', KEYS[1]) \
                     if v and string.sub(v, 1, 32) ~= ARGV[1] then return v end \
                     redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ARGV[3]) \
                     return false";

static CONFLICT_LOG: LogLimit = LogLimit::new(10, Duration::from_secs(60));

fn at_key(tunnel: &[u8; 16]) -> String {
    format!("mailslot:at:{}", hex(tunnel))
}

fn host_key(host: &str) -> String {
    format!("mailslot:host:{host}")
}

/// A tunnel id from its 32 hex digits.
fn unhex16(text: &str) -> Option<[u8; 16]> {
    let b = text.as_bytes();
    if b.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (o, pair) in out.iter_mut().zip(b.chunks_exact(2)) {
        let s = std::str::from_utf8(pair).ok()?;
        *o = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// This edge's presence in the cluster.
pub(crate) struct Presence {
    con: ConnectionManager,
    member: String,
    ttl: Duration,
}

impl Presence {
    /// Presence of `member` through `client`; connects on first use, and again by
    /// itself after a failure. Must be made inside the runtime.
    pub(crate) fn new(
        client: redis::Client,
        member: String,
        ttl: Duration,
    ) -> Result<Presence, String> {
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        let con = ConnectionManager::new_lazy_with_config(client, cfg)
            .map_err(|e| format!("redis: {e}"))?;
        Ok(Presence { con, member, ttl })
    }

    async fn run<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, String> {
        let mut con = self.con.clone();
        tokio::time::timeout(CALL_TIMEOUT * 2, pipe.query_async(&mut con))
            .await
            .map_err(|_| format!("no answer within {}s", (CALL_TIMEOUT * 2).as_secs()))?
            .map_err(|e| e.to_string())
    }

    /// Queues this edge's presence for `tunnel` and the claims of `hosts` into `pipe`.
    fn queue(&self, pipe: &mut redis::Pipeline, tunnel: &[u8; 16], hosts: &[String]) {
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let key = at_key(tunnel);
        pipe.zadd(&key, &self.member, now_ms().saturating_add(ttl))
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now_ms())
            .ignore()
            .pexpire(&key, i64::try_from(ttl).unwrap_or(i64::MAX))
            .ignore();
        for h in hosts {
            pipe.cmd("EVAL")
                .arg(CLAIM)
                .arg(1)
                .arg(host_key(h))
                .arg(hex(tunnel))
                .arg(&self.member)
                .arg(ttl);
        }
    }

    /// Claims `hosts` for `tunnel` across the cluster and notes this edge holds it.
    /// `Ok(Some(why))`: a hostname belongs to another tunnel; `Err`: Redis failed.
    pub(crate) async fn claim(
        &self,
        tunnel: &[u8; 16],
        hosts: &[String],
    ) -> Result<Option<String>, String> {
        let mut pipe = redis::pipe();
        self.queue(&mut pipe, tunnel, hosts);
        let holders: Vec<Option<String>> = self.run(&pipe).await?;
        Ok(hosts.iter().zip(holders).find_map(|(h, holder)| {
            let holder = holder?;
            let edge = holder.split_once(' ').map_or("", |(_, m)| m);
            Some(format!(
                "hostname {h} is served by another tunnel in the cluster (at edge {edge})"
            ))
        }))
    }

    /// Refreshes the entries of the tunnels in `held` (with their hostnames) and
    /// removes this edge from those in `gone`.
    pub(crate) async fn refresh(
        &self,
        held: &[([u8; 16], Vec<String>)],
        gone: &[[u8; 16]],
    ) -> Result<(), String> {
        for chunk in held.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for (tunnel, hosts) in chunk {
                self.queue(&mut pipe, tunnel, hosts);
            }
            let holders: Vec<Option<String>> = self.run(&pipe).await?;
            let hosts = chunk
                .iter()
                .flat_map(|(t, hs)| hs.iter().map(move |h| (t, h)));
            for ((tunnel, h), holder) in hosts.zip(holders) {
                if let Some(holder) = holder {
                    log_limited!(
                        CONFLICT_LOG,
                        Warn,
                        "cluster: hostname {h} of tunnel {} is also held by {holder}",
                        hex(tunnel)
                    );
                }
            }
        }
        for chunk in gone.chunks(CHUNK) {
            let mut pipe = redis::pipe();
            for tunnel in chunk {
                pipe.zrem(at_key(tunnel), &self.member).ignore();
            }
            self.run::<()>(&pipe).await?;
        }
        Ok(())
    }

    /// The members holding connections for `tunnel` now.
    pub(crate) async fn holders(&self, tunnel: &[u8; 16]) -> Result<Vec<String>, String> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGEBYSCORE")
            .arg(at_key(tunnel))
            .arg(now_ms())
            .arg("+inf");
        let (members,): (Vec<String>,) = self.run(&pipe).await?;
        Ok(members)
    }
}

/// Finds `KEYS[1]` (a hostname's entry) and the live holders of its tunnel (members
/// scoring at least `ARGV[1]`, now in Unix ms), in one round trip: `[tunnel hex,
/// member...]`, or nil when no tunnel claims the hostname.
const LOCATE: &str = "local v = redis.call('GET', KEYS[1]) \
                      if not v then return false end \
                      local t = string.sub(v, 1, 32) \
                      local m = redis.call('ZRANGEBYSCORE', 'mailslot:at:' .. t, ARGV[1], '+inf') \
                      table.insert(m, 1, t) \
                      return m";

impl Presence {
    /// The tunnel that serves `host` across the cluster and the members holding
    /// connections for it now; `None` when no tunnel claims it.
    pub(crate) async fn locate(
        &self,
        host: &str,
    ) -> Result<Option<([u8; 16], Vec<String>)>, String> {
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(LOCATE)
            .arg(1)
            .arg(host_key(host))
            .arg(now_ms());
        let (found,): (Option<Vec<String>>,) = self.run(&pipe).await?;
        let Some(mut found) = found else {
            return Ok(None);
        };
        if found.is_empty() {
            return Ok(None);
        }
        let tunnel = found.remove(0);
        let tunnel = unhex16(&tunnel)
            .ok_or_else(|| format!("redis: hostname {host} names tunnel {tunnel:?}"))?;
        Ok(Some((tunnel, found)))
    }
}

/// Keeps this edge's presence current until the task is dropped.
pub(crate) async fn run(presence: Arc<Presence>, registry: Arc<Registry>) {
    keep(presence, move || registry.held(), REFRESH_EVERY).await;
}

/// Writes the tunnels `held` names every `every`, and every [`RETRY_WHILE_FAILING`]
/// while writing fails.
async fn keep(
    presence: Arc<Presence>,
    held: impl Fn() -> Vec<([u8; 16], Vec<String>)>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before: HashSet<[u8; 16]> = HashSet::new();
    let mut failing = false;
    loop {
        if failing {
            tokio::time::sleep(RETRY_WHILE_FAILING).await;
        } else {
            tick.tick().await;
        }
        let held = held();
        let now: HashSet<[u8; 16]> = held.iter().map(|(t, _)| *t).collect();
        let gone: Vec<[u8; 16]> = before.difference(&now).copied().collect();
        match presence.refresh(&held, &gone).await {
            Ok(()) => {
                if failing {
                    log::info!("cluster: presence written again ({} tunnels)", held.len());
                }
                failing = false;
                before = now;
            }
            Err(e) => {
                if !failing {
                    log::warn!("cluster: presence not written, trying again: {e}");
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::cluster::testing::RedisServer;

    fn presence(server: &RedisServer, member: &str, ttl: Duration) -> Presence {
        let client = redis::Client::open(server.addr().url()).unwrap();
        Presence::new(client, member.into(), ttl).unwrap()
    }

    #[tokio::test]
    async fn one_tunnel_per_hostname_across_edges_and_dead_edges_expire() {
        let server = RedisServer::start("presence");
        let a = presence(&server, "edge-a:7844", Duration::from_millis(400));
        let b = presence(&server, "edge-b:7844", Duration::from_secs(30));
        let host = vec!["d1.example.com".to_string()];
        assert_eq!(a.claim(&[1; 16], &host).await.unwrap(), None);
        // The same tunnel at another edge (a device's connections spread over two).
        assert_eq!(b.claim(&[1; 16], &host).await.unwrap(), None);
        a.refresh(&[([1; 16], host.clone())], &[]).await.unwrap();
        let mut at = b.holders(&[1; 16]).await.unwrap();
        at.sort();
        assert_eq!(at, ["edge-a:7844", "edge-b:7844"]);
        // Another tunnel is refused the hostname, wherever it asks.
        let why = a.claim(&[2; 16], &host).await.unwrap().unwrap();
        assert_eq!(
            why,
            "hostname d1.example.com is served by another tunnel in the cluster (at edge edge-a:7844)"
        );
        // B lets the tunnel go: only A holds it.
        b.refresh(&[], &[[1; 16]]).await.unwrap();
        assert_eq!(b.holders(&[1; 16]).await.unwrap(), ["edge-a:7844"]);
        // A dies (stops refreshing): its entries expire by themselves.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(b.holders(&[1; 16]).await.unwrap().is_empty());
        // And so do its hostname claims (the last refresh of the tunnel's was A's):
        // another tunnel may have the hostname now.
        assert_eq!(b.claim(&[2; 16], &host).await.unwrap(), None);
        assert!(a.claim(&[1; 16], &host).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_hostname_is_located_with_its_tunnels_live_holders_in_one_call() {
        let server = RedisServer::start("presence-locate");
        let a = presence(&server, "10.0.0.1:7844", Duration::from_millis(400));
        let b = presence(&server, "10.0.0.2:7844", Duration::from_secs(30));
        let host = vec!["d1.example.com".to_string()];
        assert_eq!(b.locate("d1.example.com").await.unwrap(), None);
        assert_eq!(a.claim(&[3; 16], &host).await.unwrap(), None);
        assert_eq!(
            b.locate("d1.example.com").await.unwrap(),
            Some(([3; 16], vec!["10.0.0.1:7844".to_string()]))
        );
        assert_eq!(b.locate("d2.example.com").await.unwrap(), None);
        // A's presence expires before the hostname's entry (B claimed it too, later).
        assert_eq!(b.claim(&[3; 16], &host).await.unwrap(), None);
        b.refresh(&[], &[[3; 16]]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            b.locate("d1.example.com").await.unwrap(),
            Some(([3; 16], Vec::new())),
            "claimed, but held nowhere"
        );
    }

    #[tokio::test]
    async fn entries_are_written_again_within_a_retry_of_redis_coming_back() {
        let mut server = RedisServer::start("presence-back");
        let a = Arc::new(presence(&server, "edge-a:7844", TTL));
        let b = presence(&server, "edge-b:7844", TTL);
        server.stop();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let held = move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            vec![([4; 16], vec!["d4.example.com".to_string()])]
        };
        // A period far longer than the test: only the retry while failing can write.
        let task = tokio::spawn(keep(a, held, Duration::from_secs(600)));
        let start = std::time::Instant::now();
        while calls.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            assert!(
                start.elapsed() < RETRY_WHILE_FAILING + CALL_TIMEOUT * 2,
                "a failed write is not tried again soon"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.restart();
        let back = std::time::Instant::now();
        loop {
            if let Ok(Some((tunnel, members))) = b.locate("d4.example.com").await {
                assert_eq!(
                    (tunnel, members),
                    ([4; 16], vec!["edge-a:7844".to_string()])
                );
                break;
            }
            assert!(
                back.elapsed() < RETRY_WHILE_FAILING * 2 + CALL_TIMEOUT,
                "not written again within {:?} of Redis coming back",
                back.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        task.abort();
    }

    #[tokio::test]
    async fn redis_down_is_an_error_within_the_timeout_and_redis_back_works() {
        let mut server = RedisServer::start("presence-down");
        let a = presence(&server, "edge-a:7844", Duration::from_secs(30));
        assert_eq!(a.claim(&[1; 16], &[]).await.unwrap(), None);
        server.stop();
        let start = std::time::Instant::now();
        assert!(a.claim(&[1; 16], &[]).await.is_err());
        assert!(start.elapsed() < CALL_TIMEOUT * 3, "{:?}", start.elapsed());
        server.restart();
        let mut back = false;
        for _ in 0..50 {
            if a.claim(&[1; 16], &[]).await.is_ok() {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(back, "the connection manager reconnects by itself");
    }
}
