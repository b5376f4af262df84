//! Access at the edge: operators' `mailslot access` clients (QUIC on the tunnel port
//! with ALPN `mailslot-access`, or a WebSocket on the HTTPS port), public TCP ports
//! (`tcp-ports:`), and the credential gate in front of HTTP hostnames with a policy.
//!
//! Every way in is checked against [`policy`](super::policy) before anything reaches a
//! tunnel, so a refused client never causes a connection on the device. An admitted
//! client gets a raw tunnel stream ([`StreamKind::Raw`](crate::wire::StreamKind::Raw)) to the hostname's stream rule,
//! and one log line when it ends: who, which hostname, from where, when, how long and
//! how many bytes.
//!
//! - `quic.rs`: access clients over QUIC, their caps and idle close.
//! - `gate.rs`: the gate for HTTP hostnames, and access clients over WebSocket.
//! - `tcp_ports.rs`: the public TCP ports.
//! - `pipe.rs`: an admitted stream's copy, its re-check on reload, its log line.
//! - `admit.rs`: the caps and the one way in they all share: the policy check, then
//!   the raw tunnel stream.

mod admit;
mod gate;
mod pipe;
mod quic;
mod tcp_ports;

pub(crate) use admit::open_raw;
pub use admit::AccessState;
pub(crate) use gate::gate;
pub(crate) use quic::{is_access_connection, serve_quic};
pub(crate) use tcp_ports::serve_tcp_port;
pub use tcp_ports::{bind_tcp_ports, BoundTcpPort};
