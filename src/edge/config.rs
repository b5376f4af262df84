//! `edge.yml`: the edge's settings, read at start and again on SIGHUP (see
//! `edge::live` for what a reload changes). Relative paths resolve against the file's
//! folder. The access sections (`access:`, `service-tokens:`, `tcp-ports:`) are parsed
//! in `config/access.rs`, `acme:` in `config/acme.rs`, `cluster:` in
//! `config/cluster.rs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use serde::Deserialize;

use super::cidr::parse_cidr;
use super::shield::{self, HostPolicy, Limits, Shield};

mod access;
mod acme;
mod cluster;
pub use acme::{AcmeConfig, Challenge};
pub use cluster::{ClusterConfig, ClusterSecret, RedisAddr};

/// Default tunnel listener (QUIC on UDP; HTTP/2 fallback on TCP).
pub(crate) const DEFAULT_TUNNEL_LISTEN: &str = "0.0.0.0:7844";
pub(crate) const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:80";
pub(crate) const DEFAULT_HTTPS_LISTEN: &str = "0.0.0.0:443";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raw {
    name: Option<String>,
    tunnel_listen: Option<String>,
    /// `none` disables.
    http_listen: Option<String>,
    https_listen: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    certs: Vec<RawCert>,
    signing_key: Option<PathBuf>,
    #[serde(default)]
    verify_keys: Vec<PathBuf>,
    origin_response_timeout: Option<RawDuration>,
    keepalive: Option<RawDuration>,
    idle_timeout: Option<RawDuration>,
    #[serde(default)]
    access: Vec<access::RawPolicy>,
    #[serde(default)]
    service_tokens: Vec<access::RawServiceToken>,
    #[serde(default)]
    tcp_ports: Vec<access::RawTcpPort>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    rate_limits: Vec<shield::RawRate>,
    #[serde(default)]
    hosts: Vec<RawHost>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    admin_listen: Option<String>,
    /// Bearer token the admin listener requires, inline or in a file.
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    #[serde(default)]
    revoked_tunnels: Vec<String>,
    #[serde(default)]
    revoked_access_tokens: Vec<String>,
    #[serde(default)]
    fleet: RawFleet,
    acme: Option<acme::RawAcme>,
    cluster: Option<cluster::RawCluster>,
    workers: Option<RawWorkers>,
}

/// `workers:`: a number of threads, or `auto`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawWorkers {
    Count(u64),
    Word(String),
    /// Anything else (a negative or fractional number, a list): refused with the
    /// key's own message rather than serde's.
    Other(serde::de::IgnoredAny),
}

/// Most worker threads `workers:` takes.
pub(crate) const MAX_WORKERS: usize = 256;

/// `workers:` read: `None` for `auto` (one per CPU the edge may use).
fn workers(raw: Option<RawWorkers>) -> Result<Option<std::num::NonZeroUsize>, String> {
    let n = match raw {
        None => return Ok(None),
        Some(RawWorkers::Word(w)) if w == "auto" => return Ok(None),
        Some(RawWorkers::Count(n)) => n,
        Some(_) => {
            return Err(format!(
                "workers: takes `auto` or a number of threads from 1 to {MAX_WORKERS}"
            ))
        }
    };
    usize::try_from(n)
        .ok()
        .filter(|n| *n <= MAX_WORKERS)
        .and_then(std::num::NonZeroUsize::new)
        .map(Some)
        .ok_or_else(|| format!("workers: {n} is not a number of threads from 1 to {MAX_WORKERS}"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFleet {
    store: Option<PathBuf>,
    health_every: Option<RawDuration>,
    credential_lifetime: Option<RawDuration>,
    releases: Option<PathBuf>,
    release_key: Option<String>,
}

/// Default file of the fleet's store, beside `edge.yml`.
pub const DEFAULT_FLEET_STORE: &str = "fleet.redb";

/// The `fleet:` section: where device records are kept and what devices are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// The embedded store's file (`store:`, default `fleet.redb` beside `edge.yml`).
    pub store: PathBuf,
    /// How often devices send their health (`health-every:`, default 5m; 0: never).
    pub health_every: Duration,
    /// Lifetime of the device credentials issued (`credential-lifetime:`, default 90d).
    pub credential_lifetime: Duration,
}

/// The releases of the device binary (`fleet: releases:` and `fleet: release-key:`),
/// kept apart from [`FleetConfig`] so that code building one by hand is unaffected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleasesConfig {
    /// The releases folder (`releases:`, default `releases` beside `edge.yml`).
    pub dir: PathBuf,
    /// The release key's public half (`release-key:`: 64 hex characters, or a file
    /// holding them); devices pin it, and only releases it signed are recorded.
    pub key: Option<[u8; 32]>,
}

impl ReleasesConfig {
    fn from_raw(
        raw: &RawFleet,
        abs: impl Fn(PathBuf) -> PathBuf,
    ) -> Result<ReleasesConfig, String> {
        let key = match &raw.release_key {
            None => None,
            Some(v) => Some(super::fleet::release::parse_public_key(
                v,
                &abs(PathBuf::from(".")),
            )?),
        };
        Ok(ReleasesConfig {
            dir: abs(raw.releases.clone().unwrap_or_else(|| "releases".into())),
            key,
        })
    }
}

impl FleetConfig {
    fn from_raw(raw: RawFleet, abs: impl Fn(PathBuf) -> PathBuf) -> Result<FleetConfig, String> {
        use super::fleet::enroll::{DEFAULT_CREDENTIAL_LIFETIME, DEFAULT_HEALTH_EVERY};
        let health_every =
            days_or_duration(raw.health_every, DEFAULT_HEALTH_EVERY, "fleet.health-every")?;
        if !health_every.is_zero() && health_every < Duration::from_secs(10) {
            return Err("fleet.health-every: at least 10s (or 0: never)".into());
        }
        let credential_lifetime = days_or_duration(
            raw.credential_lifetime,
            DEFAULT_CREDENTIAL_LIFETIME,
            "fleet.credential-lifetime",
        )?;
        if credential_lifetime < Duration::from_secs(3) {
            return Err("fleet.credential-lifetime: at least 3s".into());
        }
        Ok(FleetConfig {
            store: abs(raw.store.unwrap_or_else(|| DEFAULT_FLEET_STORE.into())),
            health_every,
            credential_lifetime,
        })
    }
}

/// A duration as [`duration`] takes it, or a number of days ("90d").
fn days_or_duration(
    v: Option<RawDuration>,
    default: Duration,
    key: &str,
) -> Result<Duration, String> {
    if let Some(RawDuration::Text(t)) = &v {
        if let Some(days) = t.trim().strip_suffix('d') {
            let d: u64 = days
                .parse()
                .map_err(|_| format!("{key}: {t:?} is not a duration like 90d or 12h"))?;
            let d = Duration::from_secs(d.saturating_mul(86400));
            if d > MAX_DURATION {
                return Err(format!("{key}: {t} is too long (at most 365 days)"));
            }
            return Ok(d);
        }
    }
    duration(v, default, key)
}

/// Largest `edge.yml` read.
const MAX_FILE_LEN: u64 = 4 * 1024 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimits {
    tls_handshake_timeout: Option<RawDuration>,
    request_head_timeout: Option<RawDuration>,
    conn_idle_timeout: Option<RawDuration>,
    body_timeout: Option<RawDuration>,
    body_idle_timeout: Option<RawDuration>,
    body_buffer: Option<RawSize>,
    max_head_bytes: Option<RawSize>,
    max_headers: Option<usize>,
    max_url_bytes: Option<RawSize>,
    max_body_bytes: Option<RawSize>,
    max_conns: Option<usize>,
    max_conns_per_ip: Option<usize>,
    max_streams_per_tunnel: Option<usize>,
    queue_timeout: Option<RawDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHost {
    hostname: String,
    max_body_bytes: Option<RawSize>,
    /// Strict-Transport-Security value, e.g. "max-age=31536000".
    hsts: Option<String>,
    /// Adds `X-Content-Type-Options: nosniff`.
    #[serde(default)]
    nosniff: bool,
    frame_options: Option<String>,
    referrer_policy: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

/// Parses a tunnel id: 32 hex digits, as `token` and the logs print it.
pub fn parse_tunnel_id(s: &str) -> Result<[u8; 16], String> {
    parse_id(s, "revoked-tunnels", "a tunnel id")
}

/// Parses the 32 hex digits of an id listed under `key`.
fn parse_id(s: &str, key: &str, what: &str) -> Result<[u8; 16], String> {
    let s = s.trim();
    super::fleet::revoked::parse_id(s)
        .ok_or_else(|| format!("{key}: {s:?} is not {what} (32 hex digits)"))
}

/// Parses "64KiB", "10MiB", "1GiB", "1000" (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64KiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1024,
        "MiB" | "M" | "MB" => 1024 * 1024,
        "GiB" | "G" | "GB" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn size(v: Option<RawSize>, default: u64, key: &str) -> Result<u64, String> {
    match v {
        None => Ok(default),
        Some(RawSize::Bytes(b)) => Ok(b),
        Some(RawSize::Text(t)) => parse_size(&t).map_err(|e| format!("{key}: {e}")),
    }
}

fn build_limits(r: RawLimits) -> Result<Limits, String> {
    let d = Limits::default();
    let usize_of = |v: u64, key: &str| usize::try_from(v).map_err(|_| format!("{key}: too large"));
    let limits = Limits {
        tls_handshake_timeout: duration(
            r.tls_handshake_timeout,
            d.tls_handshake_timeout,
            "limits.tls-handshake-timeout",
        )?,
        request_head_timeout: duration(
            r.request_head_timeout,
            d.request_head_timeout,
            "limits.request-head-timeout",
        )?,
        conn_idle_timeout: duration(
            r.conn_idle_timeout,
            d.conn_idle_timeout,
            "limits.conn-idle-timeout",
        )?,
        body_timeout: duration(r.body_timeout, d.body_timeout, "limits.body-timeout")?,
        body_idle_timeout: duration(
            r.body_idle_timeout,
            d.body_idle_timeout,
            "limits.body-idle-timeout",
        )?,
        body_buffer: usize_of(
            size(r.body_buffer, d.body_buffer as u64, "limits.body-buffer")?,
            "limits.body-buffer",
        )?,
        max_head_bytes: usize_of(
            size(
                r.max_head_bytes,
                d.max_head_bytes as u64,
                "limits.max-head-bytes",
            )?,
            "limits.max-head-bytes",
        )?,
        max_headers: r.max_headers.unwrap_or(d.max_headers),
        max_url_bytes: usize_of(
            size(
                r.max_url_bytes,
                d.max_url_bytes as u64,
                "limits.max-url-bytes",
            )?,
            "limits.max-url-bytes",
        )?,
        max_body_bytes: size(r.max_body_bytes, d.max_body_bytes, "limits.max-body-bytes")?,
        max_conns: r.max_conns.unwrap_or(d.max_conns),
        max_conns_per_ip: r.max_conns_per_ip.unwrap_or(d.max_conns_per_ip),
        max_streams_per_tunnel: r.max_streams_per_tunnel.unwrap_or(d.max_streams_per_tunnel),
        queue_timeout: duration(r.queue_timeout, d.queue_timeout, "limits.queue-timeout")?,
    };
    if limits.max_head_bytes < 8192 {
        return Err("limits.max-head-bytes must be at least 8KiB".into());
    }
    if limits.max_conns == 0
        || limits.max_conns_per_ip == 0
        || limits.max_streams_per_tunnel == 0
        || limits.max_headers == 0
    {
        return Err("limits: counts must be at least 1".into());
    }
    Ok(limits)
}

fn build_host(h: RawHost) -> Result<HostPolicy, String> {
    use http::{HeaderName, HeaderValue};
    let mut add = Vec::new();
    let mut push = |name: &str, value: &str| -> Result<(), String> {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("hosts: bad header name {name:?}"))?;
        let v = HeaderValue::from_str(value)
            .map_err(|_| format!("hosts: bad value for {name}: {value:?}"))?;
        add.push((n, v));
        Ok(())
    };
    if let Some(v) = &h.hsts {
        push("strict-transport-security", v)?;
    }
    if h.nosniff {
        push("x-content-type-options", "nosniff")?;
    }
    if let Some(v) = &h.frame_options {
        push("x-frame-options", v)?;
    }
    if let Some(v) = &h.referrer_policy {
        push("referrer-policy", v)?;
    }
    for (k, v) in &h.headers {
        push(k, v)?;
    }
    let hostname = crate::hostname::HostPattern::parse(&h.hostname)
        .map_err(|e| format!("hosts: hostname {:?}: {e}", h.hostname))?;
    Ok(HostPolicy {
        hostname,
        max_body_bytes: h
            .max_body_bytes
            .map(|s| size(Some(s), 0, "hosts.max-body-bytes"))
            .transpose()?,
        add_headers: add,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCert {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Secs(u64),
    Text(String),
}

/// A certificate chain and key, by path.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The edge's settings.
#[derive(Clone)]
pub struct EdgeConfig {
    /// Name told to connectors in logs.
    pub name: String,
    pub(crate) tunnel_listen: SocketAddr,
    pub(crate) http_listen: Option<SocketAddr>,
    pub(crate) https_listen: Option<SocketAddr>,
    /// The edge's own certificate: tunnel listener, and default for HTTPS visitors.
    pub cert: CertPaths,
    /// More certificates for visitors, chosen by SNI.
    pub(crate) certs: Vec<CertPaths>,
    pub signing_key: Option<PathBuf>,
    pub verify_keys: Vec<PathBuf>,
    /// How long the origin may take to start its response (then 504).
    pub(crate) origin_response_timeout: Duration,
    pub keepalive: Duration,
    pub idle_timeout: Duration,
    /// Visitor limits, rate limits and per-hostname policies.
    pub shield: Arc<Shield>,
    /// Loopback address for `/metrics` and `/tunnels`; `None` = off.
    pub(crate) admin_listen: Option<SocketAddr>,
    /// SHA-256 of the bearer token the admin listener requires (`admin-token` or
    /// `admin-token-file`); `None` = none required (loopback only).
    pub admin_token: Option<AdminToken>,
    /// Tunnel ids refused although their tokens verify.
    pub(crate) revoked_tunnels: Vec<[u8; 16]>,
    /// `access:`, `service-tokens:`, `tcp-ports:` and `revoked-access-tokens:`.
    pub access: super::policy::AccessConfig,
    /// `fleet:`: the device store and what devices are told.
    pub fleet: FleetConfig,
    /// `fleet: releases:` and `fleet: release-key:`.
    pub releases: ReleasesConfig,
    /// `acme:`: certificates from an ACME server; `None` = off.
    pub acme: Option<AcmeConfig>,
    /// `cluster:`: several edges sharing one fleet through Redis; `None` = this edge
    /// alone, on its embedded store.
    pub cluster: Option<ClusterConfig>,
    /// `workers:`: threads serving visitors and tunnels; `None` = one per CPU.
    pub workers: Option<std::num::NonZeroUsize>,
}

/// The admin listener's bearer token, kept as its SHA-256 only and compared in constant
/// time.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

impl AdminToken {
    /// Shortest and longest token accepted, as for service-token secrets.
    const MIN_LEN: usize = 16;
    const MAX_LEN: usize = 1024;

    pub fn new(token: &str) -> Result<AdminToken, String> {
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&token.len())
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(format!(
                "a token has {} to {} printable characters without spaces",
                Self::MIN_LEN,
                Self::MAX_LEN
            ));
        }
        Ok(AdminToken(Self::digest(token.as_bytes())))
    }

    fn digest(b: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, b).as_ref());
        out
    }

    /// Does `presented` match? Time depends on neither value (both are hashed first).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let d = Self::digest(presented);
        d.iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Parses "500ms", "15s", "2m", "1h", "1m30s" or a number of seconds, as the device
/// config does.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration_ms(s).map(Duration::from_millis)
}

/// Longest duration any setting takes: timers are deadlines (`now + duration`), which
/// must stay far from the clock's range.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86400);

fn duration(v: Option<RawDuration>, default: Duration, key: &str) -> Result<Duration, String> {
    let d = match v {
        None => return Ok(default),
        Some(RawDuration::Secs(s)) => Duration::from_secs(s),
        Some(RawDuration::Text(t)) => parse_duration(&t).map_err(|e| format!("{key}: {e}"))?,
    };
    if d > MAX_DURATION {
        return Err(format!("{key}: {d:?} is too long (at most 365 days)"));
    }
    Ok(d)
}

fn listen(v: Option<String>, default: &str, key: &str) -> Result<Option<SocketAddr>, String> {
    let v = v.unwrap_or_else(|| default.to_string());
    if v == "none" || v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| format!("{key}: {v:?} is not an address like 0.0.0.0:443"))
}

impl EdgeConfig {
    /// Reads and checks `edge.yml`.
    pub fn load(path: &Path) -> Result<EdgeConfig, String> {
        let len = std::fs::metadata(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .len();
        if len > MAX_FILE_LEN {
            return Err(format!(
                "{}: {len} bytes, above the {MAX_FILE_LEN}-byte limit of edge.yml",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses `edge.yml` text, resolving relative paths against `dir`.
    pub fn parse(text: &str, dir: &Path) -> Result<EdgeConfig, String> {
        let raw: Raw = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
        let abs = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
        let cert = CertPaths {
            cert: abs(raw
                .cert
                .ok_or("cert: the edge's certificate file is required")?),
            key: abs(raw
                .key
                .ok_or("key: the edge's certificate key file is required")?),
        };
        let tunnel_listen = listen(raw.tunnel_listen, DEFAULT_TUNNEL_LISTEN, "tunnel-listen")?
            .ok_or("tunnel-listen cannot be disabled")?;
        let verify_keys: Vec<PathBuf> = raw.verify_keys.into_iter().map(abs).collect();
        let signing_key = raw.signing_key.map(abs);
        if signing_key.is_none() && verify_keys.is_empty() {
            return Err("signing-key or verify-keys is required to check tunnel tokens".into());
        }
        let keepalive = duration(raw.keepalive, Duration::from_secs(15), "keepalive")?;
        let idle_timeout = duration(raw.idle_timeout, Duration::from_secs(60), "idle-timeout")?;
        if keepalive >= idle_timeout {
            return Err("keepalive must be shorter than idle-timeout".into());
        }
        let mut access = super::policy::AccessConfig::from_raw(
            raw.access,
            raw.service_tokens,
            raw.tcp_ports,
            abs,
        )?;
        let max = access::MAX_REVOKED;
        for (key, len) in [
            ("revoked-tunnels", raw.revoked_tunnels.len()),
            ("revoked-access-tokens", raw.revoked_access_tokens.len()),
        ] {
            if len > max {
                return Err(format!("{key}: at most {max} entries, not {len}"));
            }
        }
        access.revoked_tokens = raw
            .revoked_access_tokens
            .iter()
            .map(|id| parse_id(id, "revoked-access-tokens", "an access token id"))
            .collect::<Result<_, _>>()?;
        let releases = ReleasesConfig::from_raw(&raw.fleet, abs)?;
        let fleet = FleetConfig::from_raw(raw.fleet, abs)?;
        let acme = raw.acme.map(|a| AcmeConfig::from_raw(a, abs)).transpose()?;
        let cluster = raw
            .cluster
            .map(|c| ClusterConfig::from_raw(c, abs))
            .transpose()?;
        let admin_listen = listen(raw.admin_listen, "none", "admin-listen")?;
        let admin_token = match (raw.admin_token, raw.admin_token_file) {
            (Some(_), Some(_)) => {
                return Err("admin-token and admin-token-file: set one, not both".into())
            }
            (Some(t), None) => Some(AdminToken::new(&t).map_err(|e| format!("admin-token: {e}"))?),
            (None, Some(f)) => {
                let f = abs(f);
                let text = std::fs::read_to_string(&f)
                    .map_err(|e| format!("admin-token-file: cannot read {}: {e}", f.display()))?;
                Some(
                    AdminToken::new(text.trim())
                        .map_err(|e| format!("admin-token-file {}: {e}", f.display()))?,
                )
            }
            (None, None) => None,
        };
        if let Some(a) = admin_listen {
            if !a.ip().is_loopback() && admin_token.is_none() {
                return Err(format!(
                    "admin-listen {a} is not a loopback address: the fleet status it serves \
                     needs admin-token (or admin-token-file) there, or listen on 127.0.0.1"
                ));
            }
        }
        Ok(EdgeConfig {
            name: raw.name.unwrap_or_else(|| "edge".into()),
            tunnel_listen,
            http_listen: listen(raw.http_listen, DEFAULT_HTTP_LISTEN, "http-listen")?,
            https_listen: listen(raw.https_listen, DEFAULT_HTTPS_LISTEN, "https-listen")?,
            cert,
            certs: raw
                .certs
                .into_iter()
                .map(|c| CertPaths {
                    cert: abs(c.cert),
                    key: abs(c.key),
                })
                .collect(),
            signing_key,
            verify_keys,
            origin_response_timeout: duration(
                raw.origin_response_timeout,
                Duration::from_secs(100),
                "origin-response-timeout",
            )?,
            keepalive,
            idle_timeout,
            shield: Arc::new(Shield::new(
                build_limits(raw.limits)?,
                raw.rate_limits
                    .into_iter()
                    .map(|r| r.build())
                    .collect::<Result<_, _>>()?,
                raw.hosts
                    .into_iter()
                    .map(build_host)
                    .collect::<Result<_, _>>()?,
                raw.trusted_proxies
                    .iter()
                    .map(|c| parse_cidr(c))
                    .collect::<Result<_, _>>()?,
            )),
            admin_listen,
            admin_token,
            revoked_tunnels: raw
                .revoked_tunnels
                .iter()
                .map(|id| parse_tunnel_id(id))
                .collect::<Result<_, _>>()?,
            access,
            fleet,
            releases,
            acme,
            cluster,
            workers: workers(raw.workers)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("12").unwrap(), 12);
        assert!(parse_size("1XB").is_err());
    }

    #[test]
    fn the_fleet_section_has_defaults_and_takes_days() {
        let base = "cert: a\nkey: b\nsigning-key: c\n";
        let c = EdgeConfig::parse(base, Path::new("/etc/edge")).unwrap();
        assert_eq!(c.fleet.store, Path::new("/etc/edge/fleet.redb"));
        assert_eq!(c.fleet.health_every, Duration::from_secs(300));
        assert_eq!(c.fleet.credential_lifetime, Duration::from_secs(90 * 86400));
        let c = EdgeConfig::parse(
            &format!(
                "{base}fleet:\n  store: /var/lib/edge/f.redb\n  health-every: 1m\n  \
                 credential-lifetime: 30d\n"
            ),
            Path::new("/etc/edge"),
        )
        .unwrap();
        assert_eq!(c.fleet.store, Path::new("/var/lib/edge/f.redb"));
        assert_eq!(c.fleet.health_every, Duration::from_secs(60));
        assert_eq!(c.fleet.credential_lifetime, Duration::from_secs(30 * 86400));
        for bad in [
            "fleet:\n  health-every: 1s\n",
            "fleet:\n  credential-lifetime: 400d\n",
            "fleet:\n  credential-lifetime: xd\n",
            "fleet:\n  nope: 1\n",
        ] {
            let e = EdgeConfig::parse(&format!("{base}{bad}"), Path::new("."));
            assert!(e.is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_beyond_a_year_are_refused() {
        for v in ["18446744073709551615", "100000000000h", "400d"] {
            let e = EdgeConfig::parse(
                &format!("cert: a\nkey: b\nsigning-key: c\nlimits:\n  body-idle-timeout: {v}\n"),
                Path::new("."),
            )
            .err()
            .unwrap_or_default();
            assert!(e.contains("body-idle-timeout"), "{v}: {e:?}");
        }
    }

    #[test]
    fn limits_rates_and_hosts_parse() {
        let c = EdgeConfig::parse(
            "cert: a\nkey: b\nsigning-key: c\nlimits:\n  max-body-bytes: 1MiB\n  request-head-timeout: 2s\n\
             rate-limits:\n  - rate: 10/s\n  - hostname: '*.example.com'\n    path: ^/login\n    rate: 5/m\n    burst: 5\n\
             hosts:\n  - hostname: a.example.com\n    hsts: max-age=600\n    nosniff: true\n    max-body-bytes: 2KiB\n\
             trusted-proxies: [10.0.0.0/8]\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.shield.limits.max_body_bytes, 1 << 20);
        assert_eq!(c.shield.rates.len(), 2);
        assert_eq!(c.shield.max_body("a.example.com"), 2048);
        assert_eq!(
            c.shield
                .host_policy("a.example.com")
                .unwrap()
                .add_headers
                .len(),
            2
        );
        let e = EdgeConfig::parse(
            "cert: a\nkey: b\nsigning-key: c\nlimits:\n  max-body: 1\n",
            Path::new("."),
        )
        .err()
        .unwrap();
        assert!(e.contains("max-body"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn minimal_file_with_defaults_and_relative_paths() {
        let c = EdgeConfig::parse(
            "cert: edge.crt\nkey: edge.key\nsigning-key: signing.key\n",
            Path::new("/etc/mailslot-edge"),
        )
        .unwrap();
        assert_eq!(c.tunnel_listen, "0.0.0.0:7844".parse().unwrap());
        assert_eq!(c.http_listen, Some("0.0.0.0:80".parse().unwrap()));
        assert_eq!(c.cert.cert, Path::new("/etc/mailslot-edge/edge.crt"));
        assert_eq!(c.origin_response_timeout, Duration::from_secs(100));
        assert_eq!(c.workers, None);
    }

    #[test]
    fn workers_take_a_count_or_auto() {
        let base = "cert: edge.crt\nkey: edge.key\nsigning-key: signing.key\n";
        let parse = |w: &str| EdgeConfig::parse(&format!("{base}workers: {w}\n"), Path::new("."));
        assert_eq!(parse("1").unwrap().workers.map(|n| n.get()), Some(1));
        assert_eq!(parse("256").unwrap().workers.map(|n| n.get()), Some(256));
        assert_eq!(parse("auto").unwrap().workers, None);
        for bad in ["0", "257", "-1", "many", "1.5"] {
            let Err(e) = parse(bad) else {
                panic!("workers: {bad} was taken")
            };
            assert!(e.contains("workers"), "{bad}: {e}");
        }
    }

    #[test]
    fn admin_token_is_required_off_loopback() {
        let base = "cert: a\nkey: b\nsigning-key: c\n";
        let e = EdgeConfig::parse(
            &format!("{base}admin-listen: 0.0.0.0:7845\n"),
            Path::new("."),
        )
        .err()
        .unwrap();
        assert!(e.contains("admin-token"), "{e}");
        let c = EdgeConfig::parse(
            &format!("{base}admin-listen: 0.0.0.0:7845\nadmin-token: 0123456789abcdef\n"),
            Path::new("."),
        )
        .unwrap();
        let t = c.admin_token.unwrap();
        assert!(t.matches(b"0123456789abcdef"));
        assert!(!t.matches(b"0123456789abcdeF"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "AdminToken(***)");
        let c = EdgeConfig::parse(
            &format!("{base}admin-listen: 127.0.0.1:7845\n"),
            Path::new("."),
        )
        .unwrap();
        assert!(c.admin_token.is_none());
        let e = EdgeConfig::parse(&format!("{base}admin-token: short\n"), Path::new("."))
            .err()
            .unwrap();
        assert!(e.contains("16"), "{e}");
    }

    #[test]
    fn conn_idle_timeout_parses() {
        let c = EdgeConfig::parse(
            "cert: a\nkey: b\nsigning-key: c\nlimits:\n  conn-idle-timeout: 5s\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.shield.limits.conn_idle_timeout, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let e = EdgeConfig::parse(
            "cert: a\nkey: b\nsigning-key: c\nhttps-lisen: x\n",
            Path::new("."),
        )
        .err()
        .unwrap();
        assert!(e.contains("https-lisen") && e.contains("line 4"), "{e}");
    }
}
