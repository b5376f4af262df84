//! The operator's side of TCP and SSH access (`mailslot access`), in the same binary
//! as the device connector and just as lean: QUIC and rustls, which the connector has
//! anyway, and a hand-written WebSocket for networks that only let HTTPS out.
//!
//! - [`client`]: reaching the edge (QUIC, HTTPS, auto) and opening access streams.
//! - [`ws`]: WebSocket framing and the client handshake (the edge uses the framing too).
//! - [`cli`]: `mailslot access ssh|tcp|ssh-config`.

pub mod cli;
pub(crate) mod client;
pub mod ws;

pub(crate) use crate::util::random_bytes;
