//! Every byte that crosses the tunnel: protocol version, control messages, stream
//! headers and their framing. Nothing else in mailslot encodes or decodes tunnel bytes.
//!
//! A tunnel connection (QUIC, or HTTP/2 over TLS) carries bidirectional streams, all
//! opened by the edge. The first is the control stream; every later one carries one
//! visitor connection to one local service.
//!
//! Control stream, both directions: a sequence of frames.
//!
//! ```text
//!  0       4                    4+len
//!  +-------+--------------------+
//!  |  len  | postcard message   |      len: u32 big-endian, 1..=MAX_CONTROL_FRAME
//!  +-------+--------------------+
//! ```
//!
//! The edge speaks first ([`EdgeMsg::Hello`]), the connector answers with
//! [`ConnectorMsg::Register`], the edge with [`EdgeMsg::Registered`] or
//! [`EdgeMsg::Refused`]. Both carry [`PROTOCOL_VERSION`], so a mismatch is reported in
//! words on both sides.
//!
//! The registration frame may carry a tail after the message: postcard structs have no
//! room for a field added later, but a decoder reads one message from the front of the
//! frame and leaves the rest, so edges that predate the tail read the message and
//! ignore it, and a connector that predates it sends none. Later parts are appended
//! after the tail the same way.
//!
//! ```text
//!  +-------+------------------------------+------------------------+
//!  |  len  | postcard ConnectorMsg::      | postcard RegisterTail  |
//!  |       | Register                     | (optional)             |
//!  +-------+------------------------------+------------------------+
//! ```
//!
//! A device enrolled in a fleet (see `identity` and the edge's `fleet` module) proves
//! its key on every registration. The edge's hello carries a [`HelloTail`]: a fresh
//! nonce. The registration carries, after its [`RegisterTail`], a [`DeviceTail`]: the
//! device's public key, its signature over [`device_proof_message`] of that nonce, its
//! credential or enrolment key and what it is (name, architecture, board). The edge's
//! [`EdgeMsg::Registered`] then carries a [`RegisteredTail`]: a new credential when one
//! was issued, and how often to send [`ConnectorMsg::Health`] (never to an edge that
//! did not say so: older edges do not know the message).
//!
//! ```text
//!  edge:      Hello      + HelloTail { nonce } + HelloClockTail { unix_secs, data_cap }
//!                         + HelloProbeTail { probe_max_ms }
//!  connector: Register   + RegisterTail { instance } + DeviceTail { key, proof, ... }
//!  edge:      Registered + RegisteredTail { credential?, health_every_secs }
//!  later:     ConnectorMsg::Health (device), EdgeMsg::Credential (renewal, edge),
//!             ConnectorMsg::DataCap (any connector, to an edge whose clock tail says so)
//! ```
//!
//! A health report may carry a [`HealthCostTail`] after the message: what the device's
//! tunnel carried and what it cost on the wire, today and yesterday. Edges that predate
//! it read the message and ignore the rest ([`read_control`]); connectors that predate
//! it send none, and the edge then shows no cost for the device.
//!
//! ```text
//!  connector: Health + HealthCostTail { day, today, yesterday } (optional)
//! ```
//!
//! Every edge's hello also carries a [`HelloClockTail`] after the nonce: its time (a
//! board whose clock is unset counts its data cap's days by it) and whether it
//! understands [`ConnectorMsg::DataCap`]; a connector never sends that message to an
//! edge that did not say so, since an edge ends a connection on a message it cannot
//! decode.
//!
//! The hello's last tail, [`HelloProbeTail`], says the edge holds *probe connections*:
//! a connector may answer the hello with [`ConnectorMsg::Probe`] instead of a
//! registration, and the edge then keeps that connection silent for the time asked
//! and answers [`EdgeMsg::ProbeReply`]. A probe connection never carries streams and
//! is never registered.
//!
//! ```text
//!  edge:      Hello + HelloTail + HelloClockTail + HelloProbeTail { probe_max_ms }
//!  connector: Probe { after_ms }                      (nothing else, either way)
//!  edge:      ... after_ms of silence ... ProbeReply { after_ms }, then closes
//! ```
//!
//! Data stream: the edge writes one [`StreamHeader`] frame, the connector dials the
//! service and answers one [`StreamReply`] frame; after an `Ok` reply the stream is a raw
//! byte pipe to the service in both directions.
//!
//! ```text
//!  edge -> connector:  [u16 len][postcard StreamHeader]  then raw bytes ...
//!  connector -> edge:  [u16 len][postcard StreamReply]   then raw bytes ...
//! ```
//!
//! postcard enums are encoded by variant index: variants are only ever appended.
//!
//! Access streams (operator's `mailslot access` to the edge, over QUIC with ALPN
//! [`ACCESS_ALPN`], or inside a WebSocket over HTTPS): the client writes one
//! [`AccessRequest`] frame, the edge answers one [`AccessReply`] frame; after an `Ok`
//! reply the stream is a raw byte pipe to the device's service.
//!
//! ```text
//!  client -> edge:  [u16 len][postcard AccessRequest]  then raw bytes ...
//!  edge -> client:  [u16 len][postcard AccessReply]    then raw bytes ...
//!                   len: 1..=MAX_ACCESS_FRAME
//! ```

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version of the tunnel protocol spoken by this build.
pub const PROTOCOL_VERSION: u16 = 1;
/// TLS ALPN of tunnel connections.
pub(crate) const ALPN: &[u8] = b"mailslot";
/// Largest control frame either side accepts.
pub(crate) const MAX_CONTROL_FRAME: usize = 128 * 1024;
/// Largest stream header or reply.
pub(crate) const MAX_STREAM_FRAME: usize = 2048;
/// TLS ALPN of access clients on the edge's tunnel (QUIC) port.
pub const ACCESS_ALPN: &[u8] = b"mailslot-access";
/// WebSocket subprotocol of access streams carried over HTTPS.
pub(crate) const ACCESS_WS_PROTOCOL: &str = "mailslot-access";
/// Largest access request or reply.
pub(crate) const MAX_ACCESS_FRAME: usize = 8192;

/// Longest reason text carried in a message.
const MAX_REASON: usize = 512;

/// What a rule asks the edge to do with a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleAction {
    /// Proxy HTTP through a tunnel stream to the rule's origin.
    Http,
    /// Answer with this status at the edge; nothing reaches the device.
    Status(u16),
    /// A raw byte stream (TCP, SSH, RDP, a unix socket): reached through access clients or
    /// TCP ports.
    Stream,
}

/// An ingress rule as the edge sees it: enough to match and route, nothing about the
/// origin's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    pub hostname: Option<String>,
    pub path: Option<String>,
    pub action: RuleAction,
    /// Host header sent to the origin instead of the visitor's.
    pub host_header: Option<String>,
}

/// Registration of one tunnel connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub version: u16,
    /// The signed tunnel token.
    pub token: String,
    /// Random id of this connector process (shared by its connections).
    pub connector_id: [u8; 16],
    /// Which of the connector's connections this is.
    pub conn_index: u8,
    /// Generation of the rule table; stream headers name it.
    pub rules_generation: u32,
    pub rules: Vec<RuleInfo>,
    /// Software version, for the fleet status.
    pub software: String,
}

/// What a connector appends to its registration frame (see the module doc): absent
/// from connectors that predate it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RegisterTail {
    /// Id of this connector instance: never shared by two live processes, and taken
    /// again by a connector started after its predecessor died (see
    /// `connector::instance`). With the per-process [`Register::connector_id`] it tells a
    /// connector that restarted (the same instance, another process) from a replica: the
    /// edge closes the connections the previous process of the instance left behind.
    /// All zeros: no instance id (a connector that has none still sends the tail when
    /// a [`DeviceTail`] follows it).
    pub instance: [u8; 16],
}

/// What the edge appends to its hello: absent from edges that predate device
/// identities (a device then cannot prove its key, and says so).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloTail {
    /// Fresh random bytes of this connection; the device signs them
    /// ([`device_proof_message`]), so a proof is never good for another connection.
    pub nonce: [u8; 32],
}

/// What the edge appends after its [`HelloTail`]: its clock (a device whose clock is
/// unset counts its data cap's days by it) and the messages it understands beyond the
/// first ones. Absent from edges that predate it; connectors that predate it ignore it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloClockTail {
    /// The edge's time, Unix seconds.
    pub unix_secs: u64,
    /// The edge understands [`ConnectorMsg::DataCap`].
    pub data_cap: bool,
}

/// What the edge appends after its [`HelloClockTail`]: that it holds probe connections
/// ([`ConnectorMsg::Probe`]) and for how long at most. Absent from edges that predate
/// it: a connector then sends no probe (an edge ends a connection on a message it
/// cannot decode) and keeps its fixed keep-alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloProbeTail {
    /// The longest `after_ms` this edge holds a probe for; 0: no probes.
    pub probe_max_ms: u32,
}

/// The longest silence an edge holds a probe connection for: 2 hours, past the 2 h 4 min
/// RFC 5382 asks of a NAT's established TCP mappings (a probe never needs more).
#[cfg_attr(not(feature = "edge"), allow(dead_code))]
pub(crate) const MAX_PROBE_MS: u32 = 2 * 3600 * 1000;

/// Whether a connector may send [`ConnectorMsg::Probe`] with `after_ms` to an edge
/// whose hello carried `tail`: never to an edge without the tail, nor beyond its bound.
pub(crate) fn probe_allowed(tail: Option<&HelloProbeTail>, after_ms: u32) -> bool {
    tail.is_some_and(|t| after_ms <= t.probe_max_ms && t.probe_max_ms > 0)
}

/// What an enrolled device appends after its [`RegisterTail`]: who it is and the proof
/// that it holds its key. The register message's `token` is empty then.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTail {
    /// The device's Ed25519 public key; its device id is derived from it
    /// ([`crate::identity::device_id`]).
    pub public_key: [u8; 32],
    /// Ed25519 signature over [`device_proof_message`] of the hello's nonce: 64 bytes
    /// (serde has no 64-byte arrays).
    pub proof: Vec<u8>,
    /// The device credential (`msd1.…`) the edge issued at enrolment, once stored.
    pub credential: Option<String>,
    /// The enrolment key (`mse1.…`) from the device config: used when there is no
    /// credential, or the credential is refused as expired.
    pub enroll: Option<String>,
    /// What the device is, for the inventory.
    pub facts: DeviceFacts,
}

impl std::fmt::Debug for DeviceTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceTail")
            .field("public_key", &crate::util::hex(&self.public_key))
            .field("credential", &self.credential.as_ref().map(|_| "***"))
            .field("enroll", &self.enroll.as_ref().map(|_| "***"))
            .field("facts", &self.facts)
            .finish_non_exhaustive()
    }
}

/// What a device tells the edge about itself at registration. Every text is cut by
/// the edge ([`bounded_reason`]) before it is kept or shown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceFacts {
    /// Human-friendly name: the board's serial number (`/proc/device-tree/serial-number`),
    /// else the first 12 characters of `/etc/machine-id`, else the host name.
    pub name: String,
    /// CPU architecture the binary was built for (`aarch64`, `arm`, `x86_64`).
    pub arch: String,
    /// Board model (`/proc/device-tree/model`), empty when unknown.
    pub board: String,
    /// First 8 bytes of the SHA-256 of the config file in force.
    pub config_digest: [u8; 8],
}

/// What the edge appends to [`EdgeMsg::Registered`] for an enrolled device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredTail {
    /// The device id the edge derived from the key (the connector checks it matches).
    pub device_id: String,
    /// A new credential to store (first enrolment, or renewal of one nearing expiry).
    pub credential: Option<String>,
    /// Send [`ConnectorMsg::Health`] this often, seconds; 0: never.
    pub health_every_secs: u32,
}

/// The device's state, sent on one of its connections at registration and then every
/// `health_every_secs`. Nothing in it is written on the device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Seconds since the board booted (`/proc/uptime`).
    pub uptime_secs: u64,
    /// Load averages over 1, 5 and 15 minutes, times 100 (`/proc/loadavg`).
    pub load_centi: [u32; 3],
    /// `MemAvailable` and `MemTotal` of `/proc/meminfo`, KiB.
    pub mem_available_kib: u64,
    pub mem_total_kib: u64,
    /// CPU temperature, millidegrees Celsius (`/sys/class/thermal/thermal_zone0/temp`).
    pub temp_millicelsius: Option<i32>,
    /// Free and total space of the file system holding `/`, KiB.
    pub root_free_kib: Option<u64>,
    pub root_total_kib: Option<u64>,
    /// Whether the system clock is set (false: the device runs on its last-known-good
    /// time, see `clock`).
    pub clock_set: bool,
    /// Bytes carried through the tunnel since the connector started: from visitors to
    /// the device's services, and back.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The last warning or error the connector logged, bounded.
    pub last_error: Option<String>,
}

/// What a connector appends to [`ConnectorMsg::Health`] (see the module doc): the bytes
/// its tunnel carried and put on the wire, per UTC day of the device's clock (the edge's
/// while the device's is unset), counted in memory. `wire` counts the tunnel
/// connections' bytes (UDP payloads of QUIC with the NAT keep-alives, TCP payloads
/// under TLS for HTTP/2, and an estimate of the DNS lookups of edge names); `carried`
/// the streams' payloads both ways. Overhead is `wire − carried` (saturating: the two
/// are counted at different layers, and a hostile sender may say anything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCostTail {
    /// The day counted as today, days since 1970-01-01 (UTC).
    pub day: u32,
    /// Seconds today's counts cover: since midnight, or since the connector started
    /// when that was later.
    pub today_secs: u32,
    pub today_carried: u64,
    pub today_wire: u64,
    /// Seconds yesterday's counts cover (86 400 for a whole day); 0: no count of
    /// yesterday (the connector started today, or its clock stepped).
    pub yesterday_secs: u32,
    pub yesterday_carried: u64,
    pub yesterday_wire: u64,
}

/// Messages the connector sends on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnectorMsg {
    Register(Register),
    /// A reloaded rule table for new streams.
    UpdateRules {
        generation: u32,
        rules: Vec<RuleInfo>,
    },
    /// The connector is shutting down: open no new streams on this connection.
    Draining,
    /// The device's state (only to an edge whose [`RegisteredTail`] asked for it).
    Health(Health),
    /// What became of a remote change: a config push ([`EdgeMsg::PushConfig`]) or a
    /// release offer ([`EdgeMsg::OfferRelease`]). Sent once the outcome is known, and
    /// again after the next registration when it was not acknowledged (a rollback
    /// happens while the edge is out of reach, by design).
    Change(ChangeReport),
    /// Send the bytes of release `version` from byte `offset` on a new data stream
    /// ([`StreamKind::Release`]): the device resumes a partial download from where its
    /// file ends.
    Fetch {
        version: String,
        offset: u64,
    },
    /// The device's daily data cap: crossed (serve only the essential rules) or reset.
    /// Sent only to an edge whose [`HelloClockTail`] says it understands it (an older
    /// edge ends the connection on a message it does not know).
    DataCap(DataCap),
    /// Send [`EdgeMsg::Members`] when the cluster's members change. Sent once, after
    /// registering, only to an edge whose `Registered` carried a [`MembersTail`] (an
    /// older edge ends the connection on a message it does not know).
    FollowMembers,
    /// Instead of a registration, on a connection of its own: hold this connection
    /// silent for `after_ms` and then answer [`EdgeMsg::ProbeReply`] (how long the
    /// NAT in front of the device keeps an idle mapping, see `connector::natlife`).
    /// Sent only to an edge whose [`HelloProbeTail`] allows that long, at most
    /// [`MAX_PROBE_MS`].
    Probe {
        after_ms: u32,
    },
}

/// The state of a device's daily data cap (`data-cap` in its config), sent on each of
/// its connections when it changes and after a registration while over the cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataCap {
    /// Over the cap: the edge answers requests for the other rules itself (503) and
    /// the device refuses their streams.
    pub over: bool,
    /// Seconds until the count resets (the device's midnight).
    pub resets_in_secs: u32,
    /// The rule table `essential` indexes (a stream header's `rules_generation`).
    pub rules_generation: u32,
    /// Indexes of the rules still served past the cap, ascending; at most one per rule
    /// of the table (the edge ignores a longer list).
    pub essential: Vec<u16>,
    /// Bytes counted today, and the cap.
    pub used: u64,
    pub cap: u64,
}

/// Messages the edge sends on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EdgeMsg {
    Hello {
        version: u16,
        edge: String,
    },
    Registered {
        tunnel_id: [u8; 16],
        edge: String,
    },
    /// Registration (or a rule update) refused; `permanent` when retrying cannot help
    /// until the operator changes something.
    Refused {
        reason: String,
        permanent: bool,
    },
    /// The edge is going away: reconnect (elsewhere, or here later).
    GoAway {
        reason: String,
    },
    RulesAccepted {
        generation: u32,
    },
    /// A renewed device credential to store (only to a device that registered with a
    /// [`DeviceTail`]).
    Credential {
        credential: String,
    },
    /// A config signed with the fleet's config key, to verify, store and apply (only to
    /// a device that registered with a [`DeviceTail`]). `push`: the postcard encoding of
    /// the signed push (see `push`), at most [`MAX_CONTROL_FRAME`] in all.
    PushConfig {
        push: Vec<u8>,
    },
    /// A release signed with the release key, to download ([`ConnectorMsg::Fetch`]),
    /// verify, install and confirm. `offer`: the postcard encoding of the signed offer
    /// (see `release`).
    OfferRelease {
        offer: Vec<u8>,
    },
    /// The cluster's members changed: the tunnel addresses its edges are reached at now
    /// (only to a connector that sent [`ConnectorMsg::FollowMembers`]).
    Members(MembersTail),
    /// The answer to [`ConnectorMsg::Probe`], after `after_ms` of silence on the
    /// probe connection; the edge closes it then.
    ProbeReply {
        after_ms: u32,
    },
}

/// Most members an edge tells a connector about; a longer list is refused whole by the
/// connector (a hostile or broken edge), which keeps its addresses.
pub(crate) const MAX_MEMBERS: usize = 16;

/// What an edge of a cluster appends after [`KeysTail`] (an edge that tells members
/// appends a `RegisteredTail` and a `KeysTail` for a tunnel token's connection too,
/// which such a connector ignores): the tunnel addresses (`IP:PORT`) of the cluster's
/// live edges, its own among them, at most [`MAX_MEMBERS`]. Absent from edges without
/// `cluster: advertise:`, and from those that predate it; connectors that predate it
/// read the two tails before it and ignore it.
///
/// ```text
///  edge: Registered + RegisteredTail + KeysTail + MembersTail { members }
///  then: EdgeMsg::Members(MembersTail) on change, after ConnectorMsg::FollowMembers
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersTail {
    /// `IP:PORT` of each live edge, as connectors dial it (`cluster: advertise:`).
    pub members: Vec<String>,
}

/// What the edge appends after [`RegisteredTail`] for an enrolled device: the public
/// keys remote changes must be signed with. The device pins each key the first time
/// it is told and never replaces a pinned key, so a later edge cannot swap them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysTail {
    /// The fleet's config key (Ed25519): [`EdgeMsg::PushConfig`] must be signed with it.
    pub config_key: Option<[u8; 32]>,
    /// The release key (Ed25519, kept offline): [`EdgeMsg::OfferRelease`] must be
    /// signed with it.
    pub release_key: Option<[u8; 32]>,
}

/// Which kind of remote change a [`ChangeReport`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// A config push; the change id is the push id.
    Config,
    /// A binary update; the change id is the release version.
    Release,
}

/// The outcome of a remote change on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeOutcome {
    /// In force, and the device registered with it.
    Applied,
    /// Applied, then undone by the device: it did not reach an edge with the change
    /// within the deadline, or (a binary) crashed or could not run.
    RolledBack { reason: String },
    /// Never applied: a bad signature, a config `config check` refuses, a metered link,
    /// a download that failed.
    Refused { reason: String },
}

/// The device's report of a remote change. Texts are cut by the edge
/// ([`bounded_reason`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeReport {
    pub kind: ChangeKind,
    /// The push id (hex) or the release version.
    pub id: String,
    pub outcome: ChangeOutcome,
    /// First 8 bytes of the SHA-256 of the config file in force after the outcome.
    pub config_digest: [u8; 8],
}

/// Domain separation of the device's proof of possession: a signature made for a
/// registration is never one for anything else the device key signs.
pub const DEVICE_PROOF_CONTEXT: &[u8] = b"mailslot device proof v1\0";

/// The bytes a device signs with its key to register on a connection whose hello
/// carried `nonce`.
pub fn device_proof_message(nonce: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DEVICE_PROOF_CONTEXT.len() + nonce.len());
    m.extend_from_slice(DEVICE_PROOF_CONTEXT);
    m.extend_from_slice(nonce);
    m
}

/// Kind of a data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    /// HTTP/1.1 spoken by the edge through the stream.
    Http,
    /// Raw bytes from an access client or a TCP port.
    Raw,
    /// Release bytes the device asked for ([`ConnectorMsg::Fetch`]), edge to device;
    /// the header's `hostname` carries the release version, and no reply is sent.
    Release,
}

/// First frame of every data stream, from the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub rules_generation: u32,
    pub rule: u16,
    pub kind: StreamKind,
    /// The hostname the visitor asked for; the connector checks it against the rule.
    pub hostname: String,
}

/// Why a connector could not serve a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamError {
    /// The header named a rule the connector does not have, or the hostname does not fit.
    UnknownRule,
    /// The origin refused or could not be reached.
    DialFailed,
    /// The origin did not answer within the rule's connect timeout.
    DialTimeout,
    /// The connector is at its stream limit or draining.
    Unavailable,
}

/// The connector's answer to a [`StreamHeader`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamReply {
    Ok,
    Err { error: StreamError, message: String },
}

/// What an access client shows the edge. `Debug` masks secrets.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessCredential {
    /// Nothing: enough only for `public` hostnames.
    None,
    /// A signed access token (`msa1.…`).
    Token(String),
    /// A service token: client id and secret.
    Service { id: String, secret: String },
}

impl std::fmt::Debug for AccessCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessCredential::None => f.write_str("None"),
            AccessCredential::Token(_) => f.write_str("Token(***)"),
            AccessCredential::Service { id, .. } => write!(f, "Service({id}, ***)"),
        }
    }
}

/// First frame of an access stream, from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    pub version: u16,
    /// The hostname of the device's service (a raw-stream ingress rule).
    pub hostname: String,
    pub credential: AccessCredential,
}

/// Why the edge refused an access stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessError {
    /// No credentials, or credentials that do not verify.
    Unauthorized,
    /// Valid credentials that this hostname's policy does not admit.
    Forbidden,
    /// No tunnel serves the hostname on this edge.
    NoTunnel,
    /// The tunnel is offline, or the device could not reach the service.
    Unavailable,
    /// The hostname is not a raw-stream (TCP) service.
    NotStream,
    /// The request was malformed or of another protocol version.
    BadRequest,
}

/// The edge's answer to an [`AccessRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccessReply {
    Ok,
    Err { error: AccessError, message: String },
}

/// Why reading or writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The underlying stream failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream where a frame was expected.
    #[error("stream closed by peer")]
    Closed,
    /// A length prefix beyond the limit; the peer is broken or hostile.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// The frame's bytes do not decode as the expected message.
    #[error("malformed frame: {0}")]
    Malformed(postcard::Error),
}

/// Cuts a peer-supplied or operator-facing reason to a bounded length, with control
/// characters (a terminal's escape sequences, line breaks) shown as `?`: it goes into
/// logs and onto an operator's terminal.
pub(crate) fn bounded_reason(s: impl Into<String>) -> String {
    let mut s = s.into();
    if s.chars().any(char::is_control) {
        s = printable(&s);
    }
    if s.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// `s` with control characters (a terminal's escape sequences, line breaks) shown as
/// `?`, whatever its length.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Writes one control frame.
pub async fn write_control<W, M>(w: &mut W, msg: &M) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin,
    M: Serialize,
{
    let body = postcard::to_allocvec(msg).map_err(WireError::Malformed)?;
    if body.is_empty() || body.len() > MAX_CONTROL_FRAME {
        return Err(WireError::TooLarge {
            len: body.len(),
            max: MAX_CONTROL_FRAME,
        });
    }
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Writes one control frame holding `msg` followed by `tail` (a registration and its
/// [`RegisterTail`]).
pub(crate) async fn write_control_with_tail<W, M, T>(
    w: &mut W,
    msg: &M,
    tail: &T,
) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin,
    M: Serialize,
    T: Serialize,
{
    write_control(w, &(msg, tail)).await
}

/// Reads one control frame; `Closed` on a clean end of stream before the frame. Bytes
/// after the message (a tail this build does not expect) are ignored.
pub async fn read_control<R, M>(r: &mut R) -> Result<M, WireError>
where
    R: AsyncRead + Unpin,
    M: DeserializeOwned,
{
    let body = read_control_frame(r).await?;
    postcard::from_bytes(&body).map_err(WireError::Malformed)
}

/// Reads one control frame holding a message and, when the sender appended one, a
/// tail; parts appended after the tail are ignored.
// The connector reads `Registered` and its `RegisteredTail` with it; the edge no longer.
#[allow(dead_code)]
pub(crate) async fn read_control_with_tail<R, M, T>(r: &mut R) -> Result<(M, Option<T>), WireError>
where
    R: AsyncRead + Unpin,
    M: DeserializeOwned,
    T: DeserializeOwned,
{
    let body = read_control_frame(r).await?;
    let (msg, rest) = postcard::take_from_bytes(&body).map_err(WireError::Malformed)?;
    if rest.is_empty() {
        return Ok((msg, None));
    }
    let (tail, _later) = postcard::take_from_bytes(rest).map_err(WireError::Malformed)?;
    Ok((msg, Some(tail)))
}

/// Writes one control frame holding `msg` followed by two tails (a registration, its
/// [`RegisterTail`] and a [`DeviceTail`]).
// Written by an enrolled device's connector (until it does, unused).
#[allow(dead_code)]
pub(crate) async fn write_control_with_tails<W, M, T, U>(
    w: &mut W,
    msg: &M,
    tail: &T,
    more: &U,
) -> Result<(), WireError>
where
    W: AsyncWrite + Unpin,
    M: Serialize,
    T: Serialize,
    U: Serialize,
{
    write_control(w, &(msg, tail, more)).await
}

/// Reads one control frame holding a message and up to two tails, each `None` when the
/// sender did not append it; parts appended after them are ignored.
#[cfg_attr(not(feature = "edge"), allow(dead_code))]
pub(crate) async fn read_control_with_tails<R, M, T, U>(
    r: &mut R,
) -> Result<(M, Option<T>, Option<U>), WireError>
where
    R: AsyncRead + Unpin,
    M: DeserializeOwned,
    T: DeserializeOwned,
    U: DeserializeOwned,
{
    let body = read_control_frame(r).await?;
    let (msg, rest) = postcard::take_from_bytes(&body).map_err(WireError::Malformed)?;
    let mut rest: &[u8] = rest;
    let tail = take_part(&mut rest)?;
    let more = take_part(&mut rest)?;
    Ok((msg, tail, more))
}

/// Reads one control frame from a connector: the message and, after a
/// [`ConnectorMsg::Health`], its [`HealthCostTail`] when one was appended. A tail that
/// does not decode is ignored (`None`): the report itself stands.
#[cfg_attr(not(feature = "edge"), allow(dead_code))]
pub(crate) async fn read_connector_msg<R>(
    r: &mut R,
) -> Result<(ConnectorMsg, Option<HealthCostTail>), WireError>
where
    R: AsyncRead + Unpin,
{
    let body = read_control_frame(r).await?;
    decode_connector_msg(&body)
}

/// The message in a connector's control frame `body`, and its health cost tail (see
/// [`read_connector_msg`]).
fn decode_connector_msg(body: &[u8]) -> Result<(ConnectorMsg, Option<HealthCostTail>), WireError> {
    let (msg, rest) =
        postcard::take_from_bytes::<ConnectorMsg>(body).map_err(WireError::Malformed)?;
    let tail = match (&msg, rest.is_empty()) {
        (ConnectorMsg::Health(_), false) => postcard::take_from_bytes(rest).ok().map(|(t, _)| t),
        _ => None,
    };
    Ok((msg, tail))
}

/// Reads one control frame holding a message and up to three tails (`Registered`,
/// its `RegisteredTail`, `KeysTail` and [`MembersTail`]), each `None` when the sender
/// did not append it; parts appended after them are ignored.
pub(crate) async fn read_control_with_three_tails<R, M, T, U, V>(
    r: &mut R,
) -> Result<(M, Option<T>, Option<U>, Option<V>), WireError>
where
    R: AsyncRead + Unpin,
    M: DeserializeOwned,
    T: DeserializeOwned,
    U: DeserializeOwned,
    V: DeserializeOwned,
{
    let body = read_control_frame(r).await?;
    let (msg, rest) = postcard::take_from_bytes(&body).map_err(WireError::Malformed)?;
    let mut rest: &[u8] = rest;
    let tail = take_part(&mut rest)?;
    let more = take_part(&mut rest)?;
    let last = take_part(&mut rest)?;
    Ok((msg, tail, more, last))
}

/// The next part of a frame's rest, `None` when nothing is left.
fn take_part<T: DeserializeOwned>(rest: &mut &[u8]) -> Result<Option<T>, WireError> {
    if rest.is_empty() {
        return Ok(None);
    }
    let (part, after) = postcard::take_from_bytes(rest).map_err(WireError::Malformed)?;
    *rest = after;
    Ok(Some(part))
}

/// Reads the edge's hello: the message and up to three tails ([`HelloTail`],
/// [`HelloClockTail`], [`HelloProbeTail`]), each `None` when the edge did not append
/// it; parts appended after them are ignored.
pub(crate) async fn read_hello<R>(
    r: &mut R,
) -> Result<
    (
        EdgeMsg,
        Option<HelloTail>,
        Option<HelloClockTail>,
        Option<HelloProbeTail>,
    ),
    WireError,
>
where
    R: AsyncRead + Unpin,
{
    read_control_with_three_tails(r).await
}

async fn read_control_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, WireError> {
    let mut len = [0u8; 4];
    read_prefix(r, &mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_CONTROL_FRAME {
        return Err(WireError::TooLarge {
            len,
            max: MAX_CONTROL_FRAME,
        });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// Encodes a stream header or reply frame (u16 length prefix).
pub fn encode_stream_frame<M: Serialize>(msg: &M) -> Result<Vec<u8>, WireError> {
    encode_short_frame(msg, MAX_STREAM_FRAME)
}

/// Reads a stream header or reply frame.
pub async fn read_stream_frame<R, M>(r: &mut R) -> Result<M, WireError>
where
    R: AsyncRead + Unpin,
    M: DeserializeOwned,
{
    read_short_frame(r, MAX_STREAM_FRAME).await
}

/// Encodes an access request or reply frame (u16 length prefix).
pub fn encode_access_frame<M: Serialize>(msg: &M) -> Result<Vec<u8>, WireError> {
    encode_short_frame(msg, MAX_ACCESS_FRAME)
}

/// Reads an access request or reply frame.
pub async fn read_access_frame<R, M>(r: &mut R) -> Result<M, WireError>
where
    R: AsyncRead + Unpin,
    M: DeserializeOwned,
{
    read_short_frame(r, MAX_ACCESS_FRAME).await
}

fn encode_short_frame<M: Serialize>(msg: &M, max: usize) -> Result<Vec<u8>, WireError> {
    let body = postcard::to_allocvec(msg).map_err(WireError::Malformed)?;
    if body.is_empty() || body.len() > max {
        return Err(WireError::TooLarge {
            len: body.len(),
            max,
        });
    }
    let mut frame = Vec::with_capacity(2 + body.len());
    frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

async fn read_short_frame<R, M>(r: &mut R, max: usize) -> Result<M, WireError>
where
    R: AsyncRead + Unpin,
    M: DeserializeOwned,
{
    let mut len = [0u8; 2];
    read_prefix(r, &mut len).await?;
    let len = u16::from_be_bytes(len) as usize;
    if len == 0 || len > max {
        return Err(WireError::TooLarge { len, max });
    }
    // Bounded by `max` (at most 64 KiB by the u16 prefix) before allocating.
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    postcard::from_bytes(&body).map_err(WireError::Malformed)
}

/// Reads a length prefix, telling a clean close apart from a cut-off frame.
async fn read_prefix<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), WireError> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        let n = r.read(rest).await?;
        if n == 0 {
            return Err(if filled == 0 {
                WireError::Closed
            } else {
                WireError::Io(std::io::ErrorKind::UnexpectedEof.into())
            });
        }
        filled += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn control_round_trip_over_tiny_pipe() {
        let (mut a, mut b) = tokio::io::duplex(7);
        let msg = ConnectorMsg::Register(Register {
            version: PROTOCOL_VERSION,
            token: "t".repeat(300),
            connector_id: [7; 16],
            conn_index: 2,
            rules_generation: 1,
            rules: vec![RuleInfo {
                hostname: Some("a.example.com".into()),
                path: Some("^/v1/".into()),
                action: RuleAction::Http,
                host_header: None,
            }],
            software: "0.1.0".into(),
        });
        let sent = msg.clone();
        let writer = tokio::spawn(async move { write_control(&mut a, &sent).await });
        let got: ConnectorMsg = read_control(&mut b).await.unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(got, msg);
    }

    fn register_msg() -> ConnectorMsg {
        ConnectorMsg::Register(Register {
            version: PROTOCOL_VERSION,
            token: "t".repeat(40),
            connector_id: [7; 16],
            conn_index: 1,
            rules_generation: 1,
            rules: vec![RuleInfo {
                hostname: None,
                path: None,
                action: RuleAction::Status(404),
                host_header: None,
            }],
            software: "0.1.0".into(),
        })
    }

    /// `DataCap` is appended as `ConnectorMsg`'s seventh variant (index 6), and the
    /// hello's clock tail is read by connectors that know it and skipped by those that
    /// read the nonce tail alone.
    #[tokio::test]
    async fn data_cap_is_variant_6_and_the_clock_tail_is_optional() {
        let cap = ConnectorMsg::DataCap(DataCap {
            over: true,
            resets_in_secs: 3600,
            rules_generation: 2,
            essential: vec![0, 3],
            used: 70_000,
            cap: 65_536,
        });
        let bytes = postcard::to_allocvec(&cap).unwrap();
        assert_eq!(bytes[..4], [6, 1, 0x90, 0x1c]);
        assert_eq!(postcard::from_bytes::<ConnectorMsg>(&bytes).unwrap(), cap);

        let hello = EdgeMsg::Hello {
            version: PROTOCOL_VERSION,
            edge: "e".into(),
        };
        let nonce = HelloTail { nonce: [5; 32] };
        let clock = HelloClockTail {
            unix_secs: 1_800_000_000,
            data_cap: true,
        };
        let mut framed = Vec::new();
        write_control_with_tails(&mut framed, &hello, &nonce, &clock)
            .await
            .unwrap();
        let (m, t): (EdgeMsg, Option<HelloTail>) =
            read_control_with_tail(&mut &framed[..]).await.unwrap();
        assert_eq!((m, t), (hello.clone(), Some(nonce.clone())));
        let got: (EdgeMsg, Option<HelloTail>, Option<HelloClockTail>) =
            read_control_with_tails(&mut &framed[..]).await.unwrap();
        assert_eq!(got, (hello.clone(), Some(nonce.clone()), Some(clock)));
        // From an edge without the clock tail: none.
        let mut framed = Vec::new();
        write_control_with_tail(&mut framed, &hello, &nonce)
            .await
            .unwrap();
        let got: (EdgeMsg, Option<HelloTail>, Option<HelloClockTail>) =
            read_control_with_tails(&mut &framed[..]).await.unwrap();
        assert_eq!(got, (hello, Some(nonce), None));
    }

    /// `FollowMembers` is `ConnectorMsg`'s eighth variant, `Members` `EdgeMsg`'s ninth;
    /// the members tail after `Registered`'s two tails is read by connectors that know it
    /// and ignored by those that read two tails, and every shorter answer still decodes.
    #[tokio::test]
    async fn members_tail_and_messages_keep_old_frames_decoding() {
        assert_eq!(
            postcard::to_allocvec(&ConnectorMsg::FollowMembers).unwrap(),
            [7]
        );
        let told = MembersTail {
            members: vec!["192.0.2.1:7844".into(), "[2001:db8::1]:7844".into()],
        };
        let m = EdgeMsg::Members(told.clone());
        let bytes = postcard::to_allocvec(&m).unwrap();
        assert_eq!(bytes[..3], [8, 2, 14]);
        assert_eq!(postcard::from_bytes::<EdgeMsg>(&bytes).unwrap(), m);

        let reg = EdgeMsg::Registered {
            tunnel_id: [3; 16],
            edge: "a".into(),
        };
        let tail = RegisteredTail {
            device_id: String::new(),
            credential: None,
            health_every_secs: 0,
        };
        let keys = KeysTail::default();
        let mut framed = Vec::new();
        write_control(&mut framed, &(&reg, &tail, &keys, &told))
            .await
            .unwrap();
        // A connector of the previous version reads two tails and ignores the members.
        let old: (EdgeMsg, Option<RegisteredTail>, Option<KeysTail>) =
            read_control_with_tails(&mut &framed[..]).await.unwrap();
        assert_eq!(old, (reg.clone(), Some(tail.clone()), Some(keys.clone())));
        type Three = (
            EdgeMsg,
            Option<RegisteredTail>,
            Option<KeysTail>,
            Option<MembersTail>,
        );
        let got: Three = read_control_with_three_tails(&mut &framed[..])
            .await
            .unwrap();
        assert_eq!(
            got,
            (
                reg.clone(),
                Some(tail.clone()),
                Some(keys.clone()),
                Some(told)
            )
        );
        // An edge without members (or an older one): two tails, or none at all.
        let mut two = Vec::new();
        write_control_with_tails(&mut two, &reg, &tail, &keys)
            .await
            .unwrap();
        let got: Three = read_control_with_three_tails(&mut &two[..]).await.unwrap();
        assert_eq!(got, (reg.clone(), Some(tail), Some(keys), None));
        let mut plain = Vec::new();
        write_control(&mut plain, &reg).await.unwrap();
        let got: Three = read_control_with_three_tails(&mut &plain[..])
            .await
            .unwrap();
        assert_eq!(got, (reg, None, None, None));
        // A cut members tail is an error, not a panic.
        let mut cut = framed.clone();
        cut.truncate(cut.len() - 3);
        let len = (cut.len() - 4) as u32;
        cut[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            read_control_with_three_tails::<_, EdgeMsg, RegisteredTail, KeysTail, MembersTail>(
                &mut &cut[..]
            )
            .await,
            Err(WireError::Malformed(_))
        ));
    }

    /// `Probe` and `ProbeReply` are appended (indexes 8 and 9); the hello's probe tail
    /// is optional, skipped by connectors that read two tails, and a connector sends
    /// no probe to an edge without it or beyond its bound.
    #[tokio::test]
    async fn probes_are_appended_and_gated_on_the_hello_tail() {
        let probe = ConnectorMsg::Probe { after_ms: 300_000 };
        let bytes = postcard::to_allocvec(&probe).unwrap();
        assert_eq!(bytes[0], 8);
        assert_eq!(postcard::from_bytes::<ConnectorMsg>(&bytes).unwrap(), probe);
        let reply = EdgeMsg::ProbeReply { after_ms: 300_000 };
        let bytes = postcard::to_allocvec(&reply).unwrap();
        assert_eq!(bytes[0], 9);
        assert_eq!(postcard::from_bytes::<EdgeMsg>(&bytes).unwrap(), reply);

        let hello = EdgeMsg::Hello {
            version: PROTOCOL_VERSION,
            edge: "e".into(),
        };
        let nonce = HelloTail { nonce: [5; 32] };
        let clock = HelloClockTail {
            unix_secs: 1_800_000_000,
            data_cap: true,
        };
        let tail = HelloProbeTail {
            probe_max_ms: MAX_PROBE_MS,
        };
        let mut framed = Vec::new();
        write_control(&mut framed, &(&hello, &nonce, &clock, &tail))
            .await
            .unwrap();
        let got = read_hello(&mut &framed[..]).await.unwrap();
        assert_eq!(
            got,
            (
                hello.clone(),
                Some(nonce.clone()),
                Some(clock.clone()),
                Some(tail.clone())
            )
        );
        // A connector that reads two tails ignores the third.
        let got: (EdgeMsg, Option<HelloTail>, Option<HelloClockTail>) =
            read_control_with_tails(&mut &framed[..]).await.unwrap();
        assert_eq!(
            got,
            (hello.clone(), Some(nonce.clone()), Some(clock.clone()))
        );
        // An edge that predates the tail: none, and no probe.
        let mut old = Vec::new();
        write_control_with_tails(&mut old, &hello, &nonce, &clock)
            .await
            .unwrap();
        let (_, _, _, none) = read_hello(&mut &old[..]).await.unwrap();
        assert_eq!(none, None);
        assert!(!probe_allowed(none.as_ref(), 1000));
        assert!(probe_allowed(Some(&tail), MAX_PROBE_MS));
        assert!(!probe_allowed(Some(&tail), MAX_PROBE_MS + 1));
        assert!(!probe_allowed(Some(&HelloProbeTail { probe_max_ms: 0 }), 0));
        // A cut probe tail is an error, not a panic.
        let mut cut = framed.clone();
        cut.pop();
        let len = (cut.len() - 4) as u32;
        cut[..4].copy_from_slice(&len.to_be_bytes());
        assert!(read_hello(&mut &cut[..]).await.is_err());
    }

    #[tokio::test]
    async fn a_registration_tail_is_read_by_new_edges_and_ignored_by_old_ones() {
        let msg = register_msg();
        let tail = RegisterTail { instance: [9; 16] };
        let mut framed = Vec::new();
        write_control_with_tail(&mut framed, &msg, &tail)
            .await
            .unwrap();
        // An edge of the previous version reads the message alone.
        let old: ConnectorMsg = read_control(&mut &framed[..]).await.unwrap();
        assert_eq!(old, msg);
        // This version reads both.
        let (got, got_tail) =
            read_control_with_tail::<_, ConnectorMsg, RegisterTail>(&mut &framed[..])
                .await
                .unwrap();
        assert_eq!((got, got_tail), (msg.clone(), Some(tail.clone())));
        // A connector of the previous version sends no tail.
        let mut plain = Vec::new();
        write_control(&mut plain, &msg).await.unwrap();
        let (got, got_tail) =
            read_control_with_tail::<_, ConnectorMsg, RegisterTail>(&mut &plain[..])
                .await
                .unwrap();
        assert_eq!((got, got_tail), (msg.clone(), None));
        // A later version's further parts after the tail are ignored.
        let mut later = Vec::new();
        write_control(&mut later, &(&msg, &tail, 77u32))
            .await
            .unwrap();
        let (_, got_tail) =
            read_control_with_tail::<_, ConnectorMsg, RegisterTail>(&mut &later[..])
                .await
                .unwrap();
        assert_eq!(got_tail, Some(tail));
        // A cut tail is an error, not a panic.
        let mut cut = plain.clone();
        cut.push(3);
        let len = (cut.len() - 4) as u32;
        cut[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            read_control_with_tail::<_, ConnectorMsg, RegisterTail>(&mut &cut[..]).await,
            Err(WireError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_allocating() {
        let bytes = (u32::MAX).to_be_bytes();
        let mut r = &bytes[..];
        let err = read_control::<_, EdgeMsg>(&mut r).await.unwrap_err();
        assert!(matches!(err, WireError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn clean_close_and_cut_frame_differ() {
        let mut empty: &[u8] = &[];
        assert!(matches!(
            read_control::<_, EdgeMsg>(&mut empty).await,
            Err(WireError::Closed)
        ));
        let mut cut: &[u8] = &[0, 0];
        assert!(matches!(
            read_control::<_, EdgeMsg>(&mut cut).await,
            Err(WireError::Io(_))
        ));
        let mut cut_body: &[u8] = &[0, 0, 0, 9, 1, 2];
        assert!(matches!(
            read_control::<_, EdgeMsg>(&mut cut_body).await,
            Err(WireError::Io(_))
        ));
    }

    #[tokio::test]
    async fn garbage_is_malformed_not_a_panic() {
        for seed in 0u8..=255 {
            let frame = [0, 4, seed, seed.wrapping_mul(7), 0xff, 0xff];
            let mut r = &frame[..];
            let _ = read_stream_frame::<_, StreamHeader>(&mut r).await;
        }
        let frame = [0, 2, 9, 9];
        let mut r = &frame[..];
        assert!(matches!(
            read_stream_frame::<_, StreamReply>(&mut r).await,
            Err(WireError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn stream_header_round_trip() {
        let h = StreamHeader {
            rules_generation: 3,
            rule: 1,
            kind: StreamKind::Http,
            hostname: "dev42.example.com".into(),
        };
        let frame = encode_stream_frame(&h).unwrap();
        assert_eq!(
            u16::from_be_bytes([frame[0], frame[1]]) as usize,
            frame.len() - 2
        );
        let mut r = &frame[..];
        let got: StreamHeader = read_stream_frame(&mut r).await.unwrap();
        assert_eq!(got, h);
    }

    #[tokio::test]
    async fn access_request_round_trip_and_limit() {
        let req = AccessRequest {
            version: PROTOCOL_VERSION,
            hostname: "ssh.dev42.example.com".into(),
            credential: AccessCredential::Service {
                id: "ci".into(),
                secret: "s".repeat(100),
            },
        };
        let frame = encode_access_frame(&req).unwrap();
        let (mut a, mut b) = tokio::io::duplex(5);
        let w = tokio::spawn(async move { a.write_all(&frame).await });
        let got: AccessRequest = read_access_frame(&mut b).await.unwrap();
        w.await.unwrap().unwrap();
        assert_eq!(got, req);
        assert!(!format!("{got:?}").contains("sss"), "secrets are masked");
        let big = AccessRequest {
            credential: AccessCredential::Token("t".repeat(MAX_ACCESS_FRAME)),
            ..req
        };
        assert!(matches!(
            encode_access_frame(&big),
            Err(WireError::TooLarge { .. })
        ));
        let mut r: &[u8] = &[0xff, 0xff];
        assert!(matches!(
            read_access_frame::<_, AccessRequest>(&mut r).await,
            Err(WireError::TooLarge { .. })
        ));
    }

    /// A health report with its cost tail is read whole by a new edge and as the bare
    /// report by an old one (`read_control`, which ignores what follows the message); a
    /// report without the tail (an old connector) has no cost; a tail that does not
    /// decode leaves the report standing; the tail after any other message is ignored.
    #[tokio::test]
    async fn the_health_cost_tail_is_optional_both_ways() {
        let health = ConnectorMsg::Health(Health {
            uptime_secs: 12,
            bytes_in: 5,
            last_error: Some("e".into()),
            ..Health::default()
        });
        let cost = HealthCostTail {
            day: 20_427,
            today_secs: 3600,
            today_carried: 1000,
            today_wire: u64::MAX,
            yesterday_secs: 86_400,
            yesterday_carried: 7,
            yesterday_wire: 9,
        };
        let mut framed = Vec::new();
        write_control_with_tail(&mut framed, &health, &cost)
            .await
            .unwrap();
        // A new edge.
        let got = read_connector_msg(&mut &framed[..]).await.unwrap();
        assert_eq!(got, (health.clone(), Some(cost.clone())));
        // An edge that predates the tail.
        let old: ConnectorMsg = read_control(&mut &framed[..]).await.unwrap();
        assert_eq!(old, health);
        // A connector that predates it.
        let mut plain = Vec::new();
        write_control(&mut plain, &health).await.unwrap();
        let got = read_connector_msg(&mut &plain[..]).await.unwrap();
        assert_eq!(got, (health.clone(), None));
        // A later part after the tail is ignored.
        let mut later = Vec::new();
        write_control(&mut later, &(&health, &cost, 77u32))
            .await
            .unwrap();
        let got = read_connector_msg(&mut &later[..]).await.unwrap();
        assert_eq!(got.1, Some(cost.clone()));
        // A cut or hostile tail: the report stands, without a cost.
        let body = postcard::to_allocvec(&(&health, &cost)).unwrap();
        let bare = postcard::to_allocvec(&health).unwrap().len();
        for cut in [bare + 1, bare + 3, body.len() - 1] {
            let got = decode_connector_msg(&body[..cut]).unwrap();
            assert_eq!(got, (health.clone(), None), "cut at {cut}");
        }
        let mut junk = postcard::to_allocvec(&health).unwrap();
        junk.extend_from_slice(&[0xff; 12]);
        assert_eq!(decode_connector_msg(&junk).unwrap(), (health.clone(), None));
        // Only a health report has one.
        let draining = postcard::to_allocvec(&(&ConnectorMsg::Draining, &cost)).unwrap();
        assert_eq!(
            decode_connector_msg(&draining).unwrap(),
            (ConnectorMsg::Draining, None)
        );
        // A message that does not decode is still an error.
        assert!(matches!(
            decode_connector_msg(&[0xee, 1, 2]),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn reasons_show_control_characters_as_question_marks() {
        let b = bounded_reason("\u{1b}[31mred\nline\u{7}");
        assert_eq!(b, "?[31mred?line?");
    }

    #[test]
    fn reasons_are_bounded_on_char_boundaries() {
        let s = "é".repeat(600);
        let b = bounded_reason(s);
        assert!(b.len() <= MAX_REASON);
        assert!(b.chars().all(|c| c == 'é'));
    }
}
