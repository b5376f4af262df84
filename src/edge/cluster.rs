//! Several edges sharing one fleet through Redis (`cluster:` in `edge.yml`).
//!
//! Why Redis, and why the `redis` crate: the state edges share is small, hot and
//! keyed (device records, quota sets, revocations; presence with expiry to come), which
//! is what Redis does, with `WATCH`/`MULTI` and Lua for the atomic steps, pub/sub for
//! telling the others, TTLs for what must expire by itself, and an append-only file
//! for what must survive its restart. The `redis` crate (redis-rs) is the most used
//! Rust client, kept by a team with regular releases; it has blocking connections (the
//! fleet store's calls run on blocking threads already) and tokio ones (pub/sub, the
//! connection manager that reconnects by itself), builds with rust-version 1.85 (the
//! 1.2 line) and, without its TLS features, pulls neither openssl nor aws-lc. `fred`
//! is async only (the `Store` trait is blocking) and larger.
//!
//! - [`store`]: [`RedisStore`], the fleet's `Store` in Redis (the layout is drawn there).
//! - `changes`: the subscription through which each edge learns what the others
//!   enrolled and revoked.
//! - `conn`: blocking connections with bounded timeouts, reconnecting by themselves.
//!
//! Redis unreachable: the edge keeps serving the tunnels and devices it holds, admits
//! devices it knows by their credential, and refuses what needs Redis (an enrolment, a
//! revocation, a device it has never seen) with a message naming Redis; when Redis is
//! back, the next call reconnects and the subscription reads every record again.

mod changes;
mod conn;
pub mod store;
#[cfg(test)]
pub(crate) mod testing;

use std::sync::Arc;

pub use store::RedisStore;

use super::config::ClusterConfig;
use super::fleet::Inventory;

/// This edge's place in a cluster: the shared Redis and who this edge is.
pub struct Cluster {
    redis: Arc<conn::Redis>,
    member: String,
}

impl Cluster {
    /// A cluster as `cfg` describes it; connects on first use.
    pub fn new(cfg: &ClusterConfig) -> Result<Cluster, String> {
        Ok(Cluster {
            redis: Arc::new(conn::Redis::new(&cfg.redis)?),
            member: cfg.member.clone(),
        })
    }

    /// The fleet store all the edges share.
    pub fn store(&self) -> RedisStore {
        RedisStore::new(self.redis.clone())
    }

    /// The Redis address as logs show it (password masked).
    pub fn shown(&self) -> &str {
        self.redis.shown()
    }

    /// This edge's member address.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// Follows what the other edges enrol and revoke, into `inventory`, until the task
    /// is dropped.
    pub(crate) fn spawn_follower(&self, inventory: Arc<Inventory>) -> tokio::task::JoinHandle<()> {
        let client = self.redis.client().clone();
        let shown = self.redis.shown().to_string();
        tokio::spawn(changes::follow(client, shown, inventory))
    }
}
