//! Members: the tunnel addresses of the cluster's live edges, which an edge tells its
//! connectors so they need one bootstrap address and spread their connections over
//! the edges themselves (`connector::rendezvous`).
//!
//! ```text
//!  mailslot:members   sorted set   advertised tunnel address (IP:PORT) -> expiry (Unix ms);
//!                                  the key itself expires with its last entry
//! ```
//!
//! An edge with `cluster: advertise:` writes itself every [`REFRESH_EVERY`] for [`TTL`]
//! (the presence scheme: a dead edge's entry goes by itself), removes the expired
//! entries and reads the live ones back, at most [`READ_AT_MOST`]. What it tells
//! connectors is that list sorted and cut to [`MAX_MEMBERS`]: every edge tells the
//! same list (once each has refreshed), so a connector whose connections are at
//! several edges hears one story; in a cluster of more edges, connectors spread over
//! the first 16 by address. The list changes only when an edge joins or leaves, and
//! only then does each following connection get an `EdgeMsg::Members`. Redis
//! unreachable: the last list read stays (tried again every [`RETRY_WHILE_FAILING`]).
//!
//! ```text
//!  mailslot:members:changed   pub/sub channel   an edge joined, left or expired
//! ```
//!
//! Changes travel at once: an edge publishes on [`CHANGED`] when its refresh added its
//! own entry (it joined, or its entry had been lost) or removed expired ones, and when
//! it leaves; every edge subscribed reads the list again at the message, so all of them
//! tell connectors the new list within milliseconds of each other instead of up to
//! [`REFRESH_EVERY`] apart. Pub/sub keeps nothing for an edge that is away: the
//! periodic read stays as the fallback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::watch;

use super::presence::RETRY_WHILE_FAILING;
use crate::wire::MAX_MEMBERS;

/// How often this edge writes itself and reads the others.
pub(crate) const REFRESH_EVERY: Duration = super::presence::REFRESH_EVERY;
/// Most entries read back in one refresh (a cluster of more edges tells each connector
/// [`MAX_MEMBERS`] of the first this many, in address order).
const READ_AT_MOST: usize = 256;
/// Longest wait for one call (connecting included).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const KEY: &str = "mailslot:members";
/// Where edges say the list changed (the payload is the address that joined or left, for
/// logs; every message means "read again").
const CHANGED: &str = "mailslot:members:changed";
/// Wait before subscribing again after the subscription failed, doubling up to
/// [`RETRY_WHILE_FAILING`].
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// This edge's entry in the member list, and the list as last read.
pub(crate) struct Members {
    client: redis::Client,
    con: ConnectionManager,
    me: String,
    ttl: Duration,
    told: watch::Sender<Vec<String>>,
    /// Set by [`Members::leave`]: no refresh writes this edge again. Held by a
    /// refresh while it writes, so a leave waits for one in flight before removing.
    left: tokio::sync::Mutex<bool>,
}

impl Members {
    /// The members list through `client`, `me` being this edge's advertised address;
    /// until the first read, the list is this edge alone. Made inside the runtime.
    pub(crate) fn new(
        client: redis::Client,
        me: SocketAddr,
        ttl: Duration,
    ) -> Result<Members, String> {
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        let con = ConnectionManager::new_lazy_with_config(client.clone(), cfg)
            .map_err(|e| format!("redis: {e}"))?;
        let me = me.to_string();
        Ok(Members {
            client,
            con,
            told: watch::channel(vec![me.clone()]).0,
            me,
            ttl,
            left: tokio::sync::Mutex::new(false),
        })
    }

    /// The list to tell connectors, updated on change.
    pub(crate) fn watch(&self) -> watch::Receiver<Vec<String>> {
        self.told.subscribe()
    }

    /// Writes this edge for another [`TTL`](super::presence::TTL), drops the expired
    /// entries, and reads the live ones; says so on [`CHANGED`] when this edge's entry
    /// was new or expired ones went.
    /// `None` once this edge left.
    async fn refresh(&self) -> Result<Option<Vec<String>>, String> {
        let left = self.left.lock().await;
        if *left {
            return Ok(None);
        }
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        let mut pipe = redis::pipe();
        pipe.zadd(KEY, &self.me, now.saturating_add(ttl))
            .cmd("ZREMRANGEBYSCORE")
            .arg(KEY)
            .arg("-inf")
            .arg(now)
            .pexpire(KEY, i64::try_from(ttl).unwrap_or(i64::MAX))
            .ignore()
            .cmd("ZRANGEBYSCORE")
            .arg(KEY)
            .arg(now)
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(READ_AT_MOST);
        let mut con = self.con.clone();
        let (added, expired, live): (u64, u64, Vec<String>) =
            tokio::time::timeout(CALL_TIMEOUT * 2, pipe.query_async(&mut con))
                .await
                .map_err(|_| format!("no answer within {}s", (CALL_TIMEOUT * 2).as_secs()))?
                .map_err(|e| e.to_string())?;
        if added > 0 || expired > 0 {
            // The others read again at once; if this is lost, they read at their tick.
            let mut publish = redis::pipe();
            publish.publish(CHANGED, &self.me).ignore();
            let _ = tokio::time::timeout(CALL_TIMEOUT, publish.query_async::<()>(&mut con)).await;
        }
        Ok(Some(told_list(&self.me, live)))
    }

    /// Removes this edge from the list (an orderly shutdown): the others stop telling
    /// it at their next refresh instead of after [`TTL`].
    pub(crate) async fn leave(&self) {
        // Its own message below would otherwise wake this edge's keeper to write it back.
        *self.left.lock().await = true;
        let mut pipe = redis::pipe();
        pipe.zrem(KEY, &self.me)
            .ignore()
            .publish(CHANGED, &self.me)
            .ignore();
        let mut con = self.con.clone();
        let _ = tokio::time::timeout(CALL_TIMEOUT, pipe.query_async::<()>(&mut con)).await;
    }
}

/// What an edge tells: the live entries that are addresses (`me` among them even when
/// its entry was just lost), sorted, the first [`MAX_MEMBERS`]: the same list at every
/// edge.
fn told_list(me: &str, live: Vec<String>) -> Vec<String> {
    let mut addrs: Vec<SocketAddr> = live
        .iter()
        .map(String::as_str)
        .chain([me])
        .filter_map(|m| m.parse::<SocketAddr>().ok())
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    addrs.truncate(MAX_MEMBERS);
    addrs.iter().map(|a| a.to_string()).collect()
}

/// Keeps this edge in the list and the list read until the task is dropped.
pub(crate) async fn run(members: Arc<Members>) {
    keep(members, REFRESH_EVERY).await;
}

async fn keep(members: Arc<Members>, every: Duration) {
    let changed = Arc::new(tokio::sync::Notify::new());
    let follow = tokio::spawn(follow(members.client.clone(), changed.clone()));
    // The follower ends with its list keeper.
    let _stop_following = crate::util::AbortOnDrop(follow);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        if failing {
            tokio::time::sleep(RETRY_WHILE_FAILING).await;
        } else {
            tokio::select! {
                _ = tick.tick() => {}
                () = changed.notified() => {}
            }
        }
        match members.refresh().await {
            Ok(None) => return,
            Ok(Some(list)) => {
                if failing {
                    log::info!("cluster: member list read again");
                }
                failing = false;
                let changed = members.told.send_if_modified(|old| {
                    let new = *old != list;
                    if new {
                        old.clone_from(&list);
                    }
                    new
                });
                if changed {
                    log::info!("cluster: members told to connectors: {}", list.join(", "));
                }
            }
            Err(e) => {
                if !failing {
                    log::warn!("cluster: member list not written, trying again: {e}");
                }
                failing = true;
            }
        }
    }
}

/// Wakes `changed` at each message on [`CHANGED`], subscribing again whenever the
/// subscription ends or cannot be made.
async fn follow(client: redis::Client, changed: Arc<tokio::sync::Notify>) {
    use futures_util::StreamExt;
    let mut wait = RESUBSCRIBE_MIN;
    loop {
        if let Ok(pubsub) = super::changes::subscribe(&client, CHANGED).await {
            wait = RESUBSCRIBE_MIN;
            // What changed while this edge was not subscribed is read now.
            changed.notify_one();
            let mut messages = pubsub.into_on_message();
            while messages.next().await.is_some() {
                changed.notify_one();
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_WHILE_FAILING);
    }
}

#[cfg(test)]
mod tests {
    use super::super::presence::TTL;
    use super::*;
    use crate::edge::cluster::testing::RedisServer;

    #[test]
    fn the_list_told_is_sorted_bounded_and_the_same_at_every_edge() {
        let me = "10.0.0.9:7844";
        let mut live: Vec<String> = (1..=40).map(|i| format!("10.0.1.{i}:7844")).collect();
        live.push("not an address".into());
        live.push(me.into());
        live.push("10.0.1.1:7844".into());
        let told = told_list(me, live.clone());
        assert_eq!(told.len(), MAX_MEMBERS);
        assert_eq!(told, told_list("10.0.1.30:7844", live), "one story");
        let parsed: Vec<SocketAddr> = told.iter().map(|t| t.parse().unwrap()).collect();
        let mut sorted = parsed.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(parsed, sorted);
        assert_eq!(told_list(me, Vec::new()), vec![me.to_string()]);
    }

    /// Waits (at most 5 s) until `rx` holds `want`.
    async fn told(rx: &mut watch::Receiver<Vec<String>>, want: &[&str]) {
        let seen = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|l| l == want))
            .await
            .map(|r| r.map(|l| l.clone()));
        assert!(
            matches!(seen, Ok(Ok(_))),
            "not told {want:?} within 5 s (ticks are an hour apart: only the channel tells)"
        );
    }

    #[tokio::test]
    async fn an_edge_joining_or_leaving_is_told_at_once_not_at_the_next_tick() {
        let server = RedisServer::start("members-changed");
        let client = || redis::Client::open(server.addr().url()).unwrap();
        let hour = Duration::from_secs(3600);
        let a = Arc::new(Members::new(client(), "127.0.0.1:7001".parse().unwrap(), TTL).unwrap());
        let b = Arc::new(Members::new(client(), "127.0.0.1:7002".parse().unwrap(), TTL).unwrap());
        let mut at_a = a.watch();
        let mut at_b = b.watch();
        let keep_a = tokio::spawn(keep(a.clone(), hour));
        let keep_b = tokio::spawn(keep(b.clone(), hour));
        told(&mut at_a, &["127.0.0.1:7001", "127.0.0.1:7002"]).await;
        told(&mut at_b, &["127.0.0.1:7001", "127.0.0.1:7002"]).await;
        // B shuts down in order: A tells its connectors at once, long before B's entry
        // would expire (30 s) or A's next tick (an hour); B's keeper, woken by its own
        // message, stops instead of writing B back.
        b.leave().await;
        let stopped = tokio::time::timeout(Duration::from_secs(5), keep_b).await;
        assert!(
            matches!(stopped, Ok(Ok(()))),
            "B's keeper went on after it left"
        );
        told(&mut at_a, &["127.0.0.1:7001"]).await;
        // A third edge joins.
        let c = Arc::new(Members::new(client(), "127.0.0.1:7003".parse().unwrap(), TTL).unwrap());
        let keep_c = tokio::spawn(keep(c, hour));
        told(&mut at_a, &["127.0.0.1:7001", "127.0.0.1:7003"]).await;
        keep_a.abort();
        keep_c.abort();
    }

    #[tokio::test]
    async fn edges_see_each_other_and_a_dead_one_expires() {
        let server = RedisServer::start("members");
        let client = || redis::Client::open(server.addr().url()).unwrap();
        let a = Members::new(client(), "127.0.0.1:7001".parse().unwrap(), TTL).unwrap();
        let b = Members::new(
            client(),
            "127.0.0.1:7002".parse().unwrap(),
            Duration::from_millis(300),
        )
        .unwrap();
        assert_eq!(a.refresh().await.unwrap().unwrap(), ["127.0.0.1:7001"]);
        assert_eq!(
            b.refresh().await.unwrap().unwrap(),
            ["127.0.0.1:7001", "127.0.0.1:7002"]
        );
        assert_eq!(
            a.refresh().await.unwrap().unwrap(),
            ["127.0.0.1:7001", "127.0.0.1:7002"]
        );
        // B stops refreshing: its entry expires by itself.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(a.refresh().await.unwrap().unwrap(), ["127.0.0.1:7001"]);
        // An orderly leave goes at once.
        b.refresh().await.unwrap();
        b.leave().await;
        assert_eq!(a.refresh().await.unwrap().unwrap(), ["127.0.0.1:7001"]);
    }
}
