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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// This edge's entry in the member list, and the list as last read.
pub(crate) struct Members {
    con: ConnectionManager,
    me: String,
    ttl: Duration,
    told: watch::Sender<Vec<String>>,
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
        let con = ConnectionManager::new_lazy_with_config(client, cfg)
            .map_err(|e| format!("redis: {e}"))?;
        let me = me.to_string();
        Ok(Members {
            con,
            told: watch::channel(vec![me.clone()]).0,
            me,
            ttl,
        })
    }

    /// The list to tell connectors, updated on change.
    pub(crate) fn watch(&self) -> watch::Receiver<Vec<String>> {
        self.told.subscribe()
    }

    /// Writes this edge for another [`TTL`], drops the expired entries, and reads the
    /// live ones.
    async fn refresh(&self) -> Result<Vec<String>, String> {
        let ttl = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let now = now_ms();
        let mut pipe = redis::pipe();
        pipe.zadd(KEY, &self.me, now.saturating_add(ttl))
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(KEY)
            .arg("-inf")
            .arg(now)
            .ignore()
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
        let (live,): (Vec<String>,) =
            tokio::time::timeout(CALL_TIMEOUT * 2, pipe.query_async(&mut con))
                .await
                .map_err(|_| format!("no answer within {}s", (CALL_TIMEOUT * 2).as_secs()))?
                .map_err(|e| e.to_string())?;
        Ok(told_list(&self.me, live))
    }

    /// Removes this edge from the list (an orderly shutdown): the others stop telling
    /// it at their next refresh instead of after [`TTL`].
    pub(crate) async fn leave(&self) {
        let mut pipe = redis::pipe();
        pipe.zrem(KEY, &self.me).ignore();
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
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        if failing {
            tokio::time::sleep(RETRY_WHILE_FAILING).await;
        } else {
            tick.tick().await;
        }
        match members.refresh().await {
            Ok(list) => {
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
        assert_eq!(a.refresh().await.unwrap(), ["127.0.0.1:7001"]);
        assert_eq!(
            b.refresh().await.unwrap(),
            ["127.0.0.1:7001", "127.0.0.1:7002"]
        );
        assert_eq!(
            a.refresh().await.unwrap(),
            ["127.0.0.1:7001", "127.0.0.1:7002"]
        );
        // B stops refreshing: its entry expires by itself.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(a.refresh().await.unwrap(), ["127.0.0.1:7001"]);
        // An orderly leave goes at once.
        b.refresh().await.unwrap();
        b.leave().await;
        assert_eq!(a.refresh().await.unwrap(), ["127.0.0.1:7001"]);
    }
}
