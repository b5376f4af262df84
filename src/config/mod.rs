//! The device config: its model, its binary file format and its atomic store.
//!
//! The model types here are what the rest of mailslot reads. They are already validated:
//! a `DeviceConfig` that exists has a catch-all last rule, parsed services and bounded
//! fields. Every string and list has a fixed capacity (heapless), so decoding a file can
//! never allocate beyond the limits documented on each field.
//!
//! Submodules, one concern each:
//!
//! - [`codec`]: the `config.bin` layout (header, postcard payload, CRC-32), encode and a
//!   bounded decode, with the layout drawn in its doc.
//! - [`validate`]: the semantic invariants ([`DeviceConfig::validate`]), checked after
//!   every decode and before every encode.
//! - [`store`]: atomic writes that keep the last good file as `config.bin.prev`, and a
//!   loader that falls back to it.
//! - [`pem`]: the few lines of base64 and PEM the config needs (no `base64` crate on
//!   devices).
//! - [`yaml_out`]: a hand-written YAML emitter for `config show` (devices have no YAML
//!   crate).
//! - `yaml_in` (feature `yaml`): the YAML schema and `config compile`.
//! - [`cli`]: `mailslot config compile|show|check`.

use std::fmt;

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

/// Most edge key pins a config holds (`edge-pin`): the current key and the next ones,
/// for a key change without a gap.
pub(crate) const MAX_EDGE_PINS: usize = 4;
/// Most ingress rules a config holds.
pub(crate) const MAX_RULES: usize = 64;
/// Most edge addresses a config lists.
pub(crate) const MAX_EDGES: usize = 8;
/// Most CA certificates embedded (edge CA plus origin `ca-pool`s).
pub(crate) const MAX_CAS: usize = 4;
/// Largest DER certificate embedded.
pub(crate) const MAX_CERT_LEN: usize = 4096;
/// Largest tunnel token or enrolment key.
pub(crate) const MAX_TOKEN_LEN: usize = 2048;
/// The prefix of an enrolment key (`enroll:`), told apart from a tunnel token (`mst1.`)
/// in the config's one `token` field: no format change, and old connectors refuse it at
/// the edge rather than misread it.
pub(crate) const ENROLL_PREFIX: &str = "mse1.";
/// Longest hostname (DNS limit).
pub(crate) const MAX_HOSTNAME_LEN: usize = 253;
/// Longest path pattern.
pub(crate) const MAX_PATH_LEN: usize = 256;
/// Longest unix socket path (sun_path).
pub(crate) const MAX_SOCKET_PATH_LEN: usize = 108;
/// Longest edge address ("host:port").
pub(crate) const MAX_EDGE_ADDR_LEN: usize = 261;
/// Longest tunnel name.
pub(crate) const MAX_TUNNEL_NAME_LEN: usize = 63;
/// Most connections a connector may hold open (`ha-connections`).
pub(crate) const MAX_HA_CONNECTIONS: u8 = 16;

// The defaults are filled in by the YAML import (feature `yaml`).
/// Default `ha-connections`.
#[cfg_attr(not(feature = "yaml"), allow(dead_code))]
pub(crate) const DEFAULT_HA_CONNECTIONS: u8 = 4;
/// Default `keepalive`, seconds.
#[cfg_attr(not(feature = "yaml"), allow(dead_code))]
pub(crate) const DEFAULT_KEEPALIVE_SECS: u16 = 15;
/// Default `idle-timeout`, seconds.
#[cfg_attr(not(feature = "yaml"), allow(dead_code))]
pub(crate) const DEFAULT_IDLE_TIMEOUT_SECS: u16 = 45;
/// Default `grace-period`, seconds.
#[cfg_attr(not(feature = "yaml"), allow(dead_code))]
pub(crate) const DEFAULT_GRACE_PERIOD_SECS: u16 = 30;
/// Default origin `connect-timeout`, milliseconds.
pub(crate) const DEFAULT_CONNECT_TIMEOUT_MS: u32 = 10_000;
/// Port used for an edge address written without one.
#[cfg_attr(not(feature = "yaml"), allow(dead_code))]
pub(crate) const DEFAULT_EDGE_PORT: u16 = 7844;

/// A DNS name, `*.` wildcard or IP address, bounded to the DNS limit.
pub(crate) type Hostname = String<MAX_HOSTNAME_LEN>;

/// How the connector reaches the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(crate) enum Protocol {
    /// QUIC first, HTTP/2 over TLS when UDP seems blocked.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// HTTP/2 over TLS on TCP only.
    Http2,
}

/// The whole device configuration.
///
/// About 100 KiB inline because of the fixed capacities: keep it boxed
/// ([`store::load`] and [`codec::decode`] return a `Box`). `Debug` masks the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// Tunnel name, for logs (the token carries the identity).
    pub tunnel: String<MAX_TUNNEL_NAME_LEN>,
    /// Signed tunnel token, embedded at compile time (from `token` or `token-file`), or
    /// the fleet's enrolment key (`enroll`, starting with [`ENROLL_PREFIX`]): see
    /// [`DeviceConfig::enroll_key`].
    pub(crate) token: String<MAX_TOKEN_LEN>,
    /// Edge addresses, "host:port"; a name may resolve to several addresses.
    pub(crate) edges: Vec<String<MAX_EDGE_ADDR_LEN>, MAX_EDGES>,
    /// Index into `cas` of the CA that signs the edge certificate; `None` = the public web
    /// PKI (`tls::public_roots`).
    pub(crate) edge_ca: Option<u8>,
    /// Embedded DER certificates, referenced by index; each is used, none twice, listed
    /// in order of first use (edge CA, then rules in order).
    pub(crate) cas: Vec<Vec<u8, MAX_CERT_LEN>, MAX_CAS>,
    /// How to reach the edges (default [`Protocol::Auto`]).
    pub(crate) protocol: Protocol,
    /// Connections held open to the edges (default 4).
    pub(crate) ha_connections: u8,
    /// QUIC keep-alive interval, seconds (default 15).
    pub(crate) keepalive_secs: u16,
    /// Idle timeout after which a silent connection is dead, seconds (default 45).
    pub(crate) idle_timeout_secs: u16,
    /// Grace period for streams in flight at shutdown, seconds (default 30).
    pub(crate) grace_period_secs: u16,
    /// Ordered ingress rules; the last one is a catch-all.
    pub(crate) ingress: Vec<IngressRule, MAX_RULES>,
    /// SHA-256 digests of the edge public keys (SubjectPublicKeyInfo DER) the edge's
    /// certificate must carry, besides passing the CA check (`edge-pin`); empty: any key
    /// the CA vouches for. Format version 2; files without pins are written as version 1
    /// ([`codec`]).
    pub(crate) edge_pins: Vec<EdgePin, MAX_EDGE_PINS>,
    /// `metered: true`: the link is paid by the byte (see [`DeviceConfig::metered_profile`]).
    /// Format version 3; files without it are written as version 1 or 2 ([`codec`]).
    pub(crate) metered: bool,
    /// `data-cap`: bytes the tunnel may carry per day (1 ..= [`MAX_DATA_CAP`]); past it
    /// only the essential rules are served until the daily reset (`connector::cap`).
    /// `None`: no cap. Format version 4, with `essential`; files without either are
    /// written as an older version ([`codec`]).
    pub(crate) data_cap: Option<u64>,
    /// The rules marked `essential: true`: bit `i` for `ingress[i]` ([`MAX_RULES`] is
    /// at most 64). Format version 4.
    pub(crate) essential: u64,
}

/// The largest `data-cap`: 1 TiB a day, more than a board's link carries.
pub(crate) const MAX_DATA_CAP: u64 = 1 << 40;

// `DeviceConfig::essential` has one bit per rule.
const _: () = assert!(MAX_RULES <= 64);

/// Seconds between the HTTP/2 keep-alives of a metered connector until it has learnt how
/// long its NAT keeps an idle mapping (`connector::natlife`), and with edges that hold no
/// probes. TCP mappings of NATs last for hours (RFC 5382 asks at least 2 h 4 min of an
/// established connection), so the keep-alive refreshes them with a wide margin; it also
/// bounds how long a connection whose path died unseen stays up.
pub(crate) const METERED_KEEPALIVE_SECS: u16 = 300;

/// The environment variable that shortens [`METERED_KEEPALIVE_SECS`] (tests only: the
/// scenarios of a metered device need not wait minutes for a keep-alive): 1 to 300.
pub(crate) const TEST_METERED_KEEPALIVE_ENV: &str = "MAILSLOT_TEST_METERED_KEEPALIVE_SECS";

/// [`METERED_KEEPALIVE_SECS`], or what [`TEST_METERED_KEEPALIVE_ENV`] says.
fn metered_keepalive_secs() -> u16 {
    static SECS: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *SECS.get_or_init(|| {
        std::env::var(TEST_METERED_KEEPALIVE_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|s| (1..=METERED_KEEPALIVE_SECS).contains(s))
            .unwrap_or(METERED_KEEPALIVE_SECS)
    })
}

/// Seconds between the health reports of a metered connector, at least.
pub(crate) const METERED_HEALTH_SECS: u32 = 3600;

/// The longest QUIC keep-alive that holds a NAT's UDP mapping: Linux conntrack and many
/// carrier NATs drop one idle for 30 s.
pub(crate) const NAT_SAFE_KEEPALIVE_SECS: u16 = 25;

/// The SHA-256 of an edge's public key (its DER SubjectPublicKeyInfo), written
/// `sha256//BASE64` as curl's `--pinnedpubkey` and HPKP do ([`pin::pin_to_string`]).
pub(crate) type EdgePin = [u8; 32];

/// One ingress rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IngressRule {
    /// Exact hostname or `*.` wildcard; `None` matches every hostname.
    pub(crate) hostname: Option<Hostname>,
    /// Path regex (matched at the edge); `None` matches every path.
    pub(crate) path: Option<String<MAX_PATH_LEN>>,
    /// Where matching traffic goes.
    pub(crate) service: Service,
    /// How to reach the origin.
    pub(crate) origin: OriginOptions,
}

/// Where a rule's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Service {
    /// `http://host:port` or, with `tls`, `https://host:port`.
    Http {
        host: Hostname,
        port: u16,
        tls: bool,
    },
    /// `unix:/path` (HTTP over a unix socket) or `unix+tls:/path`.
    Unix {
        path: String<MAX_SOCKET_PATH_LEN>,
        tls: bool,
    },
    /// A raw byte stream: `tcp://`, `ssh://` or `rdp://host:port`.
    Stream {
        kind: StreamKind,
        host: Hostname,
        port: u16,
    },
    /// `http_status:NNN`, answered by the edge.
    HttpStatus(u16),
    /// `tcp+unix:/path`: a raw byte stream to a unix socket (a database or agent
    /// listening on a socket file), reached like `tcp://` rules. Appended last: postcard
    /// numbers variants by position, and older files must keep decoding.
    UnixStream { path: String<MAX_SOCKET_PATH_LEN> },
}

/// The scheme a raw stream rule was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum StreamKind {
    /// `tcp://`
    Tcp,
    /// `ssh://` (default port 22)
    Ssh,
    /// `rdp://` (default port 3389)
    Rdp,
}

/// Per-rule origin options (`origin-request`, or cloudflared's `originRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OriginOptions {
    /// Do not verify the origin's TLS certificate.
    pub(crate) no_tls_verify: bool,
    /// Host header sent to the origin instead of the visitor's.
    pub(crate) http_host_header: Option<Hostname>,
    /// Name checked in the origin's certificate (and sent as SNI).
    pub(crate) origin_server_name: Option<Hostname>,
    /// Dial timeout, milliseconds (default 10 000).
    pub(crate) connect_timeout_ms: u32,
    /// Index into `DeviceConfig::cas` of the CA that signs the origin's certificate.
    pub(crate) ca_pool: Option<u8>,
}

pub mod cli;
pub mod codec;
#[doc(hidden)] // pub for the fuzz targets (fuzz/fuzz_targets/pem.rs)
pub mod pem;
pub mod pin;
pub mod store;
mod v1;
pub(crate) mod validate;
#[cfg(feature = "yaml")]
pub(crate) mod yaml_in;
#[cfg(feature = "yaml")]
#[doc(hidden)] // for the fuzz target (fuzz/edge/fuzz_targets/device_yaml.rs)
pub use yaml_in::compile_str;
#[cfg(feature = "yaml")]
pub(crate) use yaml_in::parse_duration_ms;
/// Public for the fuzz target `fuzz/edge/fuzz_targets/device_yaml.rs`.
pub mod yaml_out;

pub(crate) use validate::ConfigError;

/// A secret that prints masked (`Display` and `Debug`): only its length shows.
#[derive(Clone, Copy)]
pub(crate) struct Masked<'a>(pub &'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<masked, {} bytes>", self.0.len())
    }
}

impl fmt::Debug for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for DeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceConfig")
            .field("tunnel", &self.tunnel)
            .field("token", &Masked(&self.token))
            .field("edges", &self.edges)
            .field("edge_ca", &self.edge_ca)
            .field("cas", &format_args!("[{} certificates]", self.cas.len()))
            .field("protocol", &self.protocol)
            .field("ha_connections", &self.ha_connections)
            .field("keepalive_secs", &self.keepalive_secs)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("grace_period_secs", &self.grace_period_secs)
            .field("ingress", &self.ingress)
            .field("edge_pins", &self.edge_pins.len())
            .field("metered", &self.metered)
            .field("data_cap", &self.data_cap)
            .field("essential", &format_args!("{:#x}", self.essential))
            .finish()
    }
}

impl DeviceConfig {
    /// An empty (and invalid) config, on the heap, for decoders and the compiler to fill
    /// in place.
    pub(crate) fn blank() -> Box<Self> {
        Box::new(DeviceConfig {
            tunnel: String::new(),
            token: String::new(),
            edges: Vec::new(),
            edge_ca: None,
            cas: Vec::new(),
            protocol: Protocol::Auto,
            ha_connections: 0,
            keepalive_secs: 0,
            idle_timeout_secs: 0,
            grace_period_secs: 0,
            ingress: Vec::new(),
            edge_pins: Vec::new(),
            metered: false,
            data_cap: None,
            essential: 0,
        })
    }

    /// Whether `ingress[rule]` is marked `essential: true`: served past the data cap.
    pub(crate) fn is_essential(&self, rule: usize) -> bool {
        rule < 64 && self.essential & (1u64 << rule) != 0
    }

    /// A warning when a data cap is set and no rule is essential: past the cap the
    /// device serves nothing (not even SSH) until the daily reset.
    pub(crate) fn cap_warning(&self) -> Option<std::string::String> {
        (self.data_cap.is_some() && self.essential == 0).then(|| {
            "warning: data-cap is set and no rule is `essential: true`: past the cap the \
             device serves nothing, not even SSH, until the daily reset"
                .to_string()
        })
    }

    /// The config as the connector runs it: under `metered: true`, one connection, and
    /// HTTP/2 over TCP unless `protocol: quic` (its keep-alives, every
    /// [`METERED_KEEPALIVE_SECS`], are what an idle connector sends; a QUIC path would
    /// need one every 25 s to hold the NAT's UDP mapping).
    pub(crate) fn metered_profile(mut self: Box<Self>) -> Box<Self> {
        if self.metered {
            self.ha_connections = 1;
            if self.protocol == Protocol::Auto {
                self.protocol = Protocol::Http2;
            }
        }
        self
    }

    /// Seconds between keep-alives on a connection over `protocol`.
    pub(crate) fn keepalive_secs_on(&self, protocol: Protocol) -> u16 {
        if self.metered && protocol == Protocol::Http2 {
            self.keepalive_secs.max(metered_keepalive_secs())
        } else {
            self.keepalive_secs
        }
    }

    /// A warning about settings that cannot hold the NAT's mapping, if any: a QUIC
    /// keep-alive over [`NAT_SAFE_KEEPALIVE_SECS`] loses the UDP mapping of most NATs
    /// between keep-alives, and the device is unreachable until its next one.
    pub(crate) fn nat_warning(&self) -> Option<std::string::String> {
        let quic = match self.protocol {
            Protocol::Auto => !self.metered,
            Protocol::Quic => true,
            Protocol::Http2 => false,
        };
        (quic && self.keepalive_secs > NAT_SAFE_KEEPALIVE_SECS).then(|| {
            format!(
                "warning: keepalive {}s over QUIC outlasts most NATs' 30 s UDP mappings: \
                     keep it at {NAT_SAFE_KEEPALIVE_SECS}s or less, or set `metered: true`",
                self.keepalive_secs
            )
        })
    }

    /// The token, for printing: masked.
    pub(crate) fn token_masked(&self) -> Masked<'_> {
        Masked(&self.token)
    }

    /// The enrolment key when the config enrols the device in a fleet (`enroll:`); its
    /// hostnames may then hold `{device}` ([`crate::identity::DEVICE_PLACEHOLDER`]).
    pub fn enroll_key(&self) -> Option<&str> {
        Some(self.token.as_str()).filter(|t| t.starts_with(ENROLL_PREFIX))
    }
}

impl Protocol {
    /// The name used in YAML (`auto`, `quic`, `http2`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::Auto => "auto",
            Protocol::Quic => "quic",
            Protocol::Http2 => "http2",
        }
    }
}

impl StreamKind {
    /// The URL scheme (`tcp`, `ssh`, `rdp`).
    pub(crate) fn scheme(self) -> &'static str {
        match self {
            StreamKind::Tcp => "tcp",
            StreamKind::Ssh => "ssh",
            StreamKind::Rdp => "rdp",
        }
    }

    /// The port used when the URL has none; `None` for `tcp://`, which needs one.
    pub(crate) fn default_port(self) -> Option<u16> {
        match self {
            StreamKind::Tcp => None,
            StreamKind::Ssh => Some(22),
            StreamKind::Rdp => Some(3389),
        }
    }
}

/// The scheme of a raw-stream unix socket service, `tcp+unix:/path` (read as "a TCP-like
/// stream over a unix socket", like the `http+unix://` of requests-unixsocket). `unix:`
/// alone means HTTP over the socket, as in cloudflared.
pub(crate) const UNIX_STREAM_SCHEME: &str = "tcp+unix";

impl Service {
    /// Is this a raw byte stream (reached through access clients and TCP ports) rather
    /// than HTTP or a status answered by the edge?
    pub(crate) fn is_raw_stream(&self) -> bool {
        matches!(self, Service::Stream { .. } | Service::UnixStream { .. })
    }
}

/// Writes `host:port` with brackets around IPv6 addresses, or just `host` when the
/// port is `default_port`.
struct HostPort<'a>(&'a str, u16, Option<u16>);

impl fmt::Display for HostPort<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let HostPort(host, port, default_port) = *self;
        if host.contains(':') {
            write!(f, "[{host}]")?;
        } else {
            f.write_str(host)?;
        }
        if default_port != Some(port) {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// The service as written in YAML: `http://localhost:8080`, `unix:/run/app.sock`,
/// `http_status:404`; default ports are left out.
impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Service::Http { host, port, tls } => {
                let (scheme, default) = if *tls { ("https", 443) } else { ("http", 80) };
                write!(f, "{scheme}://{}", HostPort(host, *port, Some(default)))
            }
            Service::Unix { path, tls } => {
                let scheme = if *tls { "unix+tls" } else { "unix" };
                write!(f, "{scheme}:{path}")
            }
            Service::Stream { kind, host, port } => {
                let hp = HostPort(host, *port, kind.default_port());
                write!(f, "{}://{hp}", kind.scheme())
            }
            Service::HttpStatus(code) => write!(f, "http_status:{code}"),
            Service::UnixStream { path } => write!(f, "{UNIX_STREAM_SCHEME}:{path}"),
        }
    }
}

impl Default for OriginOptions {
    fn default() -> Self {
        OriginOptions {
            no_tls_verify: false,
            http_host_header: None,
            origin_server_name: None,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            ca_pool: None,
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil;
