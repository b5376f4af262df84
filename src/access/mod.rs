//! The operator's side of TCP and SSH access (`mailslot access`), in the same binary
//! as the device connector and just as lean: QUIC and rustls, which the connector has
//! anyway, and a hand-written WebSocket for networks that only let HTTPS out.
//!
//! - [`client`]: reaching the edge (QUIC, HTTPS, auto) and opening access streams.
//! - [`ws`]: WebSocket framing and the client handshake (the edge uses the framing too).
//! - [`cli`]: `mailslot access ssh|tcp|ssh-config`.

pub mod cli;
pub mod client;
pub mod ws;

/// Random bytes from the system, or from the clock if it has none.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; N];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8;
        }
    }
    b
}
