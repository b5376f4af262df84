//! Several edges sharing one fleet through Redis (`cluster:` in `edge.yml`).
//!
//! Why Redis, and why the `redis` crate: the state edges share is small, hot and
//! keyed (device records, quota sets, revocations, presence with expiry), which
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
//! - `presence`: which edges hold which tunnel, and which tunnel owns each hostname
//!   across the cluster, with expiry (the layout is drawn there).
//! - `conn`: blocking connections with bounded timeouts, reconnecting by themselves.
//! - `peer`: the authenticated QUIC connections between edges (why QUIC, why an HMAC
//!   of the TLS exporter, the protocol and its bounds are written there).
//! - `members`: the tunnel addresses of the live edges (`advertise:`), told to
//!   connectors so they spread over the edges from one bootstrap address.
//! - `forward`: visitors reach every device through any edge: presence look-ups
//!   cached briefly, and the serving of requests another edge forwarded.
//! - `streams`: keep-alive HTTP/1.1 connections to the other edges, in peer streams.
//! - `certs`: the ACME account, certificates, leases and challenge answers shared by
//!   the edges (the layout and the protocol are drawn there).
//!
//! Redis unreachable: the edge keeps serving the tunnels and devices it holds, admits
//! devices it knows by their credential, and refuses what needs Redis (an enrolment, a
//! revocation, a device it has never seen) with a message naming Redis; when Redis is
//! back, the next call reconnects and the subscription reads every record again.

pub(crate) mod certs;
mod changes;
mod conn;
pub(crate) mod forward;
mod members;
mod peer;
mod presence;
pub mod store;
mod streams;
#[cfg(test)]
pub(crate) mod testing;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use store::RedisStore;

use super::config::ClusterConfig;
use super::fleet::Inventory;
use super::flood::{log_limited, LogLimit};
use super::registry::Registry;

/// Claims let through because Redis did not answer are logged at most this often.
static UNCLAIMED_LOG: LogLimit = LogLimit::new(5, Duration::from_secs(60));

/// This edge's place in a cluster: the shared Redis, who this edge is, and its
/// connections to the other edges.
pub struct Cluster {
    redis: Arc<conn::Redis>,
    /// `member:` as configured.
    member: String,
    /// The member address announced, when the port was 0 (set by [`Cluster::serve_peers`]).
    announced: OnceLock<String>,
    secret: Vec<u8>,
    /// Set when serving starts ([`Cluster::spawn_presence`]).
    presence: OnceLock<Arc<presence::Presence>>,
    /// Set when serving starts ([`Cluster::serve_peers`]).
    peers: OnceLock<Arc<peer::Peers>>,
    /// `advertise:` as configured (port 0: the tunnel port).
    advertise: Option<SocketAddr>,
    /// Set when serving starts, with `advertise:` ([`Cluster::spawn_presence`]).
    members: OnceLock<Arc<members::Members>>,
    /// Presence of hostnames, cached for forwarding.
    located: forward::Located,
    /// Idle HTTP/1.1 connections to the other edges.
    pool: Arc<streams::PeerPool>,
    /// The ACME state the edges share.
    certs: Arc<certs::RedisCertStore>,
}

impl Cluster {
    /// A cluster as `cfg` describes it; connects on first use.
    pub fn new(cfg: &ClusterConfig) -> Result<Cluster, String> {
        let redis = Arc::new(conn::Redis::new(&cfg.redis)?);
        Ok(Cluster {
            certs: Arc::new(certs::RedisCertStore::new(
                redis.clone(),
                cfg.member.clone(),
            )),
            redis,
            member: cfg.member.clone(),
            announced: OnceLock::new(),
            secret: cfg.secret.bytes().to_vec(),
            presence: OnceLock::new(),
            peers: OnceLock::new(),
            advertise: cfg.advertise,
            members: OnceLock::new(),
            located: forward::Located::default(),
            pool: Arc::default(),
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

    /// This edge's member address (with the port it got, when `member:` asked for 0).
    pub fn member(&self) -> &str {
        self.announced.get().unwrap_or(&self.member)
    }

    /// Where the peer listener binds: `member:` when it is an IP address and port,
    /// else every address at its port (a name: the other edges resolve it).
    fn peer_bind(&self) -> Vec<SocketAddr> {
        if let Ok(a) = self.member.parse::<SocketAddr>() {
            return vec![a];
        }
        let port = self
            .member
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(0);
        vec![
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
        ]
    }

    /// Binds the peer listener and serves the requests other edges forward here until
    /// the task is dropped. Called inside the runtime, before
    /// [`Cluster::spawn_presence`] (which announces the member address it settles).
    pub(crate) fn serve_peers(
        &self,
        state: Arc<super::EdgeState>,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let mut last = String::new();
        let mut bound = None;
        for addr in self.peer_bind() {
            match std::net::UdpSocket::bind(addr) {
                Ok(s) => {
                    bound = Some(s);
                    break;
                }
                Err(e) => last = format!("cluster: cannot listen for peers on udp {addr}: {e}"),
            }
        }
        let socket = bound.ok_or(last)?;
        let peers = Arc::new(peer::Peers::new(socket, &self.secret)?);
        let local = peers.local_addr()?;
        if self.member.ends_with(":0") {
            let ip = self
                .member
                .parse::<SocketAddr>()
                .map_or(local.ip(), |a| a.ip());
            let _ = self
                .announced
                .set(SocketAddr::new(ip, local.port()).to_string());
        }
        log::info!("cluster: peers on udp {local} as member {}", self.member());
        let _ = self.peers.set(peers.clone());
        let sweep = self.pool.clone().sweep();
        let accept = peers.accept(move |stream, from| {
            tokio::spawn(forward::serve_stream(state.clone(), stream, from));
        });
        Ok(tokio::spawn(async move {
            tokio::join!(sweep, accept);
        }))
    }

    /// Closes the connections to the other edges (shutdown).
    pub(crate) fn close_peers(&self) {
        if let Some(p) = self.peers.get() {
            p.close();
        }
    }

    /// Follows what the other edges enrol and revoke, into `inventory`, until the task
    /// is dropped.
    pub(crate) fn spawn_follower(&self, inventory: Arc<Inventory>) -> tokio::task::JoinHandle<()> {
        let client = self.redis.client().clone();
        let shown = self.redis.shown().to_string();
        tokio::spawn(changes::follow(client, shown, inventory))
    }

    /// The ACME account, certificates and answers the edges share.
    pub(crate) fn cert_store(&self) -> Arc<certs::RedisCertStore> {
        self.certs.clone()
    }

    /// Puts in force what the other edges publish for ACME (answers to challenges,
    /// certificates), until the task is dropped.
    pub(crate) fn spawn_cert_follower(
        &self,
        acme: Arc<super::acme::Acme>,
    ) -> tokio::task::JoinHandle<()> {
        let client = self.redis.client().clone();
        tokio::spawn(certs::follow(client, self.certs.clone(), acme))
    }

    /// Keeps this edge's presence (the tunnels it holds, their hostnames) current in
    /// Redis until the task is dropped, and with `advertise:` its place in the member
    /// list (`tunnel_port`: the port an `advertise:` of port 0 stands for). Called
    /// inside the runtime.
    pub(crate) fn spawn_presence(
        &self,
        registry: Arc<Registry>,
        tunnel_port: u16,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        let p = Arc::new(presence::Presence::new(
            self.redis.client().clone(),
            self.member().to_string(),
            presence::TTL,
        )?);
        let _ = self.presence.set(p.clone());
        let members = match self.advertise {
            Some(mut me) => {
                if me.port() == 0 {
                    me.set_port(tunnel_port);
                }
                log::info!("cluster: telling connectors the members, this edge as {me}");
                let m = Arc::new(members::Members::new(
                    self.redis.client().clone(),
                    me,
                    presence::TTL,
                )?);
                let _ = self.members.set(m.clone());
                Some(m)
            }
            None => None,
        };
        Ok(tokio::spawn(async move {
            match members {
                Some(m) => {
                    tokio::join!(presence::run(p, registry), members::run(m));
                }
                None => presence::run(p, registry).await,
            }
        }))
    }

    /// The members to tell connectors (updated on change), with `advertise:` once
    /// serving started; `None`: tell them nothing.
    pub(crate) fn members(&self) -> Option<tokio::sync::watch::Receiver<Vec<String>>> {
        self.members.get().map(|m| m.watch())
    }

    /// Leaves the member list (an orderly shutdown).
    pub(crate) async fn leave_members(&self) {
        if let Some(m) = self.members.get() {
            m.leave().await;
        }
    }

    /// The members holding connections for `tunnel` now, by their presence entries
    /// (forwarding looks them up with the hostname, in one call: `forward`); empty
    /// before serving starts.
    pub async fn holders(&self, tunnel: &[u8; 16]) -> Result<Vec<String>, String> {
        match self.presence.get() {
            Some(p) => p.holders(tunnel).await,
            None => Ok(Vec::new()),
        }
    }

    /// Before a connection starts a tunnel here: claims its `hosts` across the
    /// cluster. `Err(why)`: another tunnel serves one of them. Redis unreachable: let
    /// through (this edge still keeps one tunnel per hostname itself), logged.
    pub(crate) async fn claim(&self, tunnel: &[u8; 16], hosts: &[String]) -> Result<(), String> {
        let Some(p) = self.presence.get() else {
            return Ok(());
        };
        match p.claim(tunnel, hosts).await {
            Ok(None) => Ok(()),
            Ok(Some(why)) => Err(why),
            Err(e) => {
                log_limited!(
                    UNCLAIMED_LOG,
                    Warn,
                    "cluster: hostnames of tunnel {} not claimed in redis {} ({e}): \
                     admitted on this edge's own table",
                    crate::util::hex(tunnel),
                    self.redis.shown()
                );
                Ok(())
            }
        }
    }
}
