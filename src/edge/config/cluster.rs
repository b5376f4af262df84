//! The `cluster:` section of `edge.yml` as written and its checks, giving a
//! [`ClusterConfig`]. Parsing only: connecting and sharing belong to
//! [`crate::edge::cluster`].
//!
//! ```yaml
//! cluster:
//!   redis: redis://10.0.0.5:6379/0      # or unix:///run/redis/redis.sock, or a path
//!   secret-file: cluster.key            # or secret: <at least 32 characters>
//!   member: 10.0.0.1:7844               # where the other edges reach this one
//!   advertise: 203.0.113.7:7844         # optional: where connectors reach this one
//! ```
//!
//! Without the section the edge keeps its fleet in its embedded store, alone.

use std::path::PathBuf;

use serde::Deserialize;

/// Shortest cluster secret: 32 characters (`openssl rand -hex 32` gives 64).
pub(crate) const MIN_SECRET: usize = 32;
/// Longest cluster secret and longest secret file read.
pub(crate) const MAX_SECRET: usize = 1024;
/// Longest `member:` address (a DNS name and a port).
const MAX_MEMBER: usize = 255 + 6;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawCluster {
    redis: Option<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    member: Option<String>,
    advertise: Option<String>,
}

/// Where the shared Redis is: a `redis://` URL (host, port, database, password) or a
/// unix socket. Prints with its password masked.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisAddr(String);

impl RedisAddr {
    /// Takes `redis://[[user]:password@]host[:port][/db]`, `unix:///path[?db=N]`,
    /// `redis+unix:///path[?db=N]`, or an absolute socket path.
    pub fn parse(text: &str) -> Result<RedisAddr, String> {
        let t = text.trim();
        let url = if t.starts_with('/') {
            format!("unix://{t}")
        } else {
            t.to_string()
        };
        let ok = ["redis://", "unix://", "redis+unix://"]
            .iter()
            .any(|p| url.starts_with(p));
        if !ok {
            return Err(format!(
                "cluster.redis: {:?} is not redis://HOST:PORT/DB, unix:///PATH or a socket \
                 path (rediss:// is not supported: reach Redis on a private network or a \
                 unix socket)",
                RedisAddr(url).to_string()
            ));
        }
        redis::Client::open(url.as_str())
            .map_err(|e| format!("cluster.redis: {}: {e}", RedisAddr(url.clone())))?;
        Ok(RedisAddr(url))
    }

    /// The URL, password included: for the client only, never for a log line.
    pub(crate) fn url(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RedisAddr {
    /// The URL with any password replaced by `***`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let u = &self.0;
        let Some(scheme_end) = u.find("://").map(|i| i + 3) else {
            return f.write_str(u);
        };
        let rest = u.get(scheme_end..).unwrap_or_default();
        let host_end = rest.find('/').unwrap_or(rest.len());
        let authority = rest.get(..host_end).unwrap_or_default();
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = authority.get(..at).unwrap_or_default();
                let user = userinfo.split(':').next().unwrap_or_default();
                write!(
                    f,
                    "{}{user}:***{}",
                    u.get(..scheme_end).unwrap_or_default(),
                    rest.get(at..).unwrap_or_default()
                )
            }
            None => f.write_str(u),
        }
    }
}

impl std::fmt::Debug for RedisAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisAddr({self})")
    }
}

/// The secret every edge of the cluster holds, for authenticating edges to each other
/// (edge-to-edge forwarding). Prints masked.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(***)")
    }
}

impl ClusterSecret {
    fn new(text: &str, what: &str) -> Result<ClusterSecret, String> {
        let t = text.trim();
        if !(MIN_SECRET..=MAX_SECRET).contains(&t.len()) || !t.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "{what}: {MIN_SECRET} to {MAX_SECRET} printable characters without spaces \
                 (make one with: openssl rand -hex 32)"
            ));
        }
        Ok(ClusterSecret(t.as_bytes().to_vec()))
    }

    /// The secret's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The `cluster:` section: several edges sharing one fleet through Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Where the shared Redis is (`redis:`).
    pub redis: RedisAddr,
    /// What edges prove to each other (`secret:` or `secret-file:`).
    pub secret: ClusterSecret,
    /// This edge's address as the other members reach it (`member:`, `HOST:PORT`): the
    /// name it is known by in presence records.
    pub member: String,
    /// This edge's tunnel address as connectors reach it (`advertise:`, `IP:PORT`; port
    /// 0: the tunnel listener's port): told to connectors as a member of the cluster.
    /// `None`: this edge tells
    /// connectors nothing (they keep their own `edge:` entries).
    pub advertise: Option<std::net::SocketAddr>,
}

impl ClusterConfig {
    pub(super) fn from_raw(
        raw: RawCluster,
        abs: impl Fn(PathBuf) -> PathBuf,
    ) -> Result<ClusterConfig, String> {
        let redis = RedisAddr::parse(
            raw.redis
                .as_deref()
                .ok_or("cluster.redis: the shared Redis (redis://HOST:PORT/DB) is required")?,
        )?;
        let secret = match (raw.secret, raw.secret_file) {
            (Some(_), Some(_)) => {
                return Err("cluster: set secret or secret-file, not both".into());
            }
            (Some(s), None) => ClusterSecret::new(&s, "cluster.secret")?,
            (None, Some(f)) => {
                let f = abs(f);
                let text = read_small(&f).map_err(|e| {
                    format!("cluster.secret-file: cannot read {}: {e}", f.display())
                })?;
                ClusterSecret::new(&text, &format!("cluster.secret-file {}", f.display()))?
            }
            (None, None) => {
                return Err(
                    "cluster: secret-file (or secret) is required: the same one on every edge"
                        .into(),
                )
            }
        };
        let member = raw.member.ok_or(
            "cluster.member: this edge's HOST:PORT as the other edges reach it is required",
        )?;
        check_member(&member)?;
        let advertise = raw.advertise.as_deref().map(check_advertise).transpose()?;
        Ok(ClusterConfig {
            redis,
            secret,
            member,
            advertise,
        })
    }
}

/// `HOST:PORT` with a hostname, an IPv4 address or a bracketed IPv6 address.
fn check_member(m: &str) -> Result<(), String> {
    let bad = || format!("cluster.member: {m:?} is not HOST:PORT (like 10.0.0.1:7844)");
    if m.len() > MAX_MEMBER {
        return Err(bad());
    }
    if m.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = m.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let host_ok = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// `IP:PORT` that a connector can dial: an address, not a name (connectors are told
/// it as is and resolve nothing), not unspecified; port 0 stands for the port of
/// `tunnel-listen:`.
fn check_advertise(a: &str) -> Result<std::net::SocketAddr, String> {
    let bad = |why: &str| {
        format!(
            "cluster.advertise: {a:?} {why}: give this edge's tunnel address as connectors \
             reach it, IP:PORT (like 203.0.113.7:7844)"
        )
    };
    let addr: std::net::SocketAddr = a.trim().parse().map_err(|_| bad("is not IP:PORT"))?;
    if addr.ip().is_unspecified() {
        return Err(bad("cannot be dialled"));
    }
    Ok(addr)
}

fn read_small(path: &std::path::Path) -> Result<String, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_SECRET as u64 + 2 {
        return Err(format!("{len} bytes, more than a secret"));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(redis: Option<&str>, secret: Option<&str>, member: Option<&str>) -> RawCluster {
        RawCluster {
            redis: redis.map(Into::into),
            secret: secret.map(Into::into),
            secret_file: None,
            member: member.map(Into::into),
            advertise: None,
        }
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn redis_addresses_take_urls_and_socket_paths() {
        let a = RedisAddr::parse("redis://10.0.0.5:6379/2").unwrap();
        assert_eq!(a.url(), "redis://10.0.0.5:6379/2");
        let s = RedisAddr::parse("/run/redis/redis.sock").unwrap();
        assert_eq!(s.url(), "unix:///run/redis/redis.sock");
        assert!(RedisAddr::parse("unix:///tmp/r.sock?db=3").is_ok());
        for bad in [
            "10.0.0.5:6379",
            "rediss://h:1/0",
            "http://h/",
            "redis://h:notaport/0",
        ] {
            assert!(RedisAddr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_never_print() {
        let a = RedisAddr::parse("redis://edge:hunter2secret@10.0.0.5:6379/0").unwrap();
        let shown = format!("{a} {a:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("redis://edge:***@10.0.0.5:6379/0"),
            "{shown}"
        );
        let b = RedisAddr::parse("redis://:hunter2secret@h:1/0").unwrap();
        assert_eq!(b.to_string(), "redis://:***@h:1/0");
        let c = ClusterConfig::from_raw(
            raw(Some("redis://h:1/0"), Some(SECRET), Some("h:7844")),
            |p| p,
        )
        .unwrap();
        assert!(!format!("{c:?}").contains(SECRET));
    }

    #[test]
    fn every_setting_is_checked_with_the_reason() {
        let ok = ClusterConfig::from_raw(
            raw(
                Some("redis://h:1/0"),
                Some(SECRET),
                Some("edge-1.example.com:7844"),
            ),
            |p| p,
        )
        .unwrap();
        assert_eq!(ok.member, "edge-1.example.com:7844");
        assert_eq!(ok.secret.bytes(), SECRET.as_bytes());
        for (r, why) in [
            (raw(None, Some(SECRET), Some("h:1")), "cluster.redis"),
            (raw(Some("redis://h:1/0"), None, Some("h:1")), "secret-file"),
            (
                raw(Some("redis://h:1/0"), Some("short"), Some("h:1")),
                "32 to",
            ),
            (
                raw(Some("redis://h:1/0"), Some(SECRET), None),
                "cluster.member",
            ),
            (
                raw(Some("redis://h:1/0"), Some(SECRET), Some("h")),
                "HOST:PORT",
            ),
            (
                raw(Some("redis://h:1/0"), Some(SECRET), Some("a b:1")),
                "HOST:PORT",
            ),
            (
                raw(Some("redis://h:1/0"), Some(SECRET), Some("[::1]:1")),
                "",
            ),
        ] {
            match ClusterConfig::from_raw(r, |p| p) {
                Err(e) => assert!(!why.is_empty() && e.contains(why), "{e}"),
                Ok(_) => assert!(why.is_empty()),
            }
        }
    }

    #[test]
    fn advertise_takes_a_dialable_address_only() {
        let mut r = raw(Some("/run/r.sock"), Some(SECRET), Some("10.0.0.1:7845"));
        r.advertise = Some("203.0.113.7:7844".into());
        let c = ClusterConfig::from_raw(r, |p| p).unwrap();
        assert_eq!(c.advertise, Some("203.0.113.7:7844".parse().unwrap()));
        let c = ClusterConfig::from_raw(
            raw(Some("/run/r.sock"), Some(SECRET), Some("10.0.0.1:7845")),
            |p| p,
        )
        .unwrap();
        assert_eq!(c.advertise, None, "without the key: nothing told");
        for bad in [
            "edge.example.com:7844",
            "0.0.0.0:7844",
            "[::]:7844",
            "10.0.0.1",
        ] {
            let mut r = raw(Some("/run/r.sock"), Some(SECRET), Some("10.0.0.1:7845"));
            r.advertise = Some(bad.into());
            let e = ClusterConfig::from_raw(r, |p| p).unwrap_err();
            assert!(e.contains("cluster.advertise"), "{bad}: {e}");
        }
    }
}
