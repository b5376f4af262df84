//! The device config: its model, its binary file format and its atomic store.
//!
//! The model types here are what the rest of mailslot reads. They are already validated:
//! a `DeviceConfig` that exists has a catch-all last rule, parsed services and bounded
//! fields. Every string and list has a fixed capacity (heapless), so decoding a file can
//! never allocate beyond the limits documented on each field.

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

/// Most ingress rules a config holds.
pub const MAX_RULES: usize = 64;
/// Most edge addresses a config lists.
pub const MAX_EDGES: usize = 8;
/// Most CA certificates embedded (edge CA plus origin `ca-pool`s).
pub const MAX_CAS: usize = 4;
/// Largest DER certificate embedded.
pub const MAX_CERT_LEN: usize = 4096;
/// Largest tunnel token.
pub const MAX_TOKEN_LEN: usize = 2048;
/// Longest hostname (DNS limit).
pub const MAX_HOSTNAME_LEN: usize = 253;
/// Longest path pattern.
pub const MAX_PATH_LEN: usize = 256;
/// Longest unix socket path (sun_path).
pub const MAX_SOCKET_PATH_LEN: usize = 108;
/// Longest edge address ("host:port").
pub const MAX_EDGE_ADDR_LEN: usize = 261;
/// Longest tunnel name.
pub const MAX_TUNNEL_NAME_LEN: usize = 63;

pub type Hostname = String<MAX_HOSTNAME_LEN>;

/// How the connector reaches the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Protocol {
    /// QUIC first, HTTP/2 over TLS when UDP seems blocked.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// HTTP/2 over TLS on TCP only.
    Http2,
}

/// The whole device configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceConfig {
    /// Tunnel name, for logs (the token carries the identity).
    pub tunnel: String<MAX_TUNNEL_NAME_LEN>,
    /// Signed tunnel token, embedded at compile time (from `token` or `token-file`).
    pub token: String<MAX_TOKEN_LEN>,
    /// Edge addresses, "host:port"; a name may resolve to several addresses.
    pub edges: Vec<String<MAX_EDGE_ADDR_LEN>, MAX_EDGES>,
    /// Index into `cas` of the CA that signs the edge certificate; `None` = webpki roots.
    pub edge_ca: Option<u8>,
    /// Embedded DER certificates, referenced by index.
    pub cas: Vec<Vec<u8, MAX_CERT_LEN>, MAX_CAS>,
    pub protocol: Protocol,
    /// Connections held open to the edges (default 4).
    pub ha_connections: u8,
    /// QUIC keep-alive interval, seconds (default 15).
    pub keepalive_secs: u16,
    /// Idle timeout after which a silent connection is dead, seconds (default 45).
    pub idle_timeout_secs: u16,
    /// Grace period for streams in flight at shutdown, seconds (default 30).
    pub grace_period_secs: u16,
    /// Ordered ingress rules; the last one is a catch-all.
    pub ingress: Vec<IngressRule, MAX_RULES>,
}

/// One ingress rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressRule {
    /// Exact hostname or `*.` wildcard; `None` matches every hostname.
    pub hostname: Option<Hostname>,
    /// Path regex (matched at the edge); `None` matches every path.
    pub path: Option<String<MAX_PATH_LEN>>,
    pub service: Service,
    pub origin: OriginOptions,
}

/// Where a rule's traffic goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Service {
    /// `http://host:port` or, with `tls`, `https://host:port`.
    Http { host: Hostname, port: u16, tls: bool },
    /// `unix:/path` (HTTP over a unix socket) or `unix+tls:/path`.
    Unix { path: String<MAX_SOCKET_PATH_LEN>, tls: bool },
    /// A raw byte stream: `tcp://`, `ssh://` or `rdp://host:port`.
    Stream { kind: StreamKind, host: Hostname, port: u16 },
    /// `http_status:NNN`, answered by the edge.
    HttpStatus(u16),
}

/// The scheme a raw stream rule was written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    Tcp,
    Ssh,
    Rdp,
}

/// Per-rule origin options (`origin-request`, or cloudflared's `originRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OriginOptions {
    /// Do not verify the origin's TLS certificate.
    pub no_tls_verify: bool,
    /// Host header sent to the origin instead of the visitor's.
    pub http_host_header: Option<Hostname>,
    /// Name checked in the origin's certificate (and sent as SNI).
    pub origin_server_name: Option<Hostname>,
    /// Dial timeout, milliseconds (default 10 000).
    pub connect_timeout_ms: u32,
    /// Index into `DeviceConfig::cas` of the CA that signs the origin's certificate.
    pub ca_pool: Option<u8>,
}

pub mod cli;
