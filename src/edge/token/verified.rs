//! The tunnel tokens whose signature this edge verified lately, so that a connector's
//! second connection (and its reconnections) cost no second Ed25519 verification.
//!
//! Each entry is the SHA-256 of a whole token (its claims and its signature: another
//! token, or the same claims with another signature, is another entry) and the public
//! key that verified it. A token found here counts as signed only while that key is
//! still trusted; its expiry and revocation are checked every time by the caller, as
//! for a token verified anew.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Most tokens remembered: the oldest is forgotten first. 4096 entries of two 32-byte
/// digests each, about 0.4 MiB with the map's overhead.
pub(crate) const MAX_VERIFIED: usize = 4096;

/// Tokens whose signature verified (see the module docs), at most [`MAX_VERIFIED`].
#[derive(Default)]
pub(crate) struct Verified {
    inner: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Token digest → the key that verified it.
    keys: HashMap<[u8; 32], [u8; 32]>,
    /// The digests in the order they were added, oldest first.
    order: VecDeque<[u8; 32]>,
}

impl Verified {
    /// Whether the token of `digest` verified with a key that is among `keys`.
    pub(crate) fn signed_by_one_of(&self, digest: &[u8; 32], keys: &[[u8; 32]]) -> bool {
        let Ok(seen) = self.inner.lock() else {
            return false;
        };
        seen.keys.get(digest).is_some_and(|k| keys.contains(k))
    }

    /// Remembers that the token of `digest` verified with `key`.
    pub(crate) fn insert(&self, digest: [u8; 32], key: [u8; 32]) {
        let Ok(mut seen) = self.inner.lock() else {
            return;
        };
        if seen.keys.insert(digest, key).is_some() {
            return;
        }
        seen.order.push_back(digest);
        while seen.order.len() > MAX_VERIFIED {
            if let Some(old) = seen.order.pop_front() {
                seen.keys.remove(&old);
            }
        }
    }

    /// Tokens remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().map_or(0, |s| s.keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{sign, verify_tunnel_seen, TokenError, TunnelClaims, TUNNEL_PREFIX};
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key() -> (Ed25519KeyPair, [u8; 32]) {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public: [u8; 32] = pair.public_key().as_ref().try_into().unwrap();
        (pair, public)
    }

    fn token(key: &Ed25519KeyPair, expires: u64) -> String {
        let claims = TunnelClaims {
            tunnel: "t".into(),
            id: [7; 16],
            hosts: vec!["t.example.com".into()],
            issued: 1000,
            expires,
        };
        sign(key, TUNNEL_PREFIX, &claims).unwrap()
    }

    #[test]
    fn a_token_seen_counts_only_while_its_key_is_trusted() {
        let seen = Verified::default();
        let ((a, a_pub), (_, b_pub)) = (key(), key());
        let t = token(&a, 2000);
        assert!(verify_tunnel_seen(&t, &[a_pub], 1500, &seen).is_ok());
        assert_eq!(seen.len(), 1);
        // Seen, and its key no longer trusted (a reload dropped it): refused.
        assert_eq!(
            verify_tunnel_seen(&t, &[b_pub], 1500, &seen),
            Err(TokenError::BadSignature)
        );
        assert!(verify_tunnel_seen(&t, &[b_pub, a_pub], 1500, &seen).is_ok());
    }

    #[test]
    fn a_token_seen_still_expires() {
        let seen = Verified::default();
        let (a, a_pub) = key();
        let t = token(&a, 2000);
        assert!(verify_tunnel_seen(&t, &[a_pub], 1500, &seen).is_ok());
        assert_eq!(
            verify_tunnel_seen(&t, &[a_pub], 2005, &seen),
            Err(TokenError::Expired(5))
        );
    }

    #[test]
    fn another_signature_on_the_same_claims_is_verified_anew() {
        let seen = Verified::default();
        let (a, a_pub) = key();
        let t = token(&a, 2000);
        assert!(verify_tunnel_seen(&t, &[a_pub], 1500, &seen).is_ok());
        // The same claims with a forged signature (one bit off) are another token.
        let (signed, sig) = t.rsplit_once('.').unwrap();
        let mut bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, sig).unwrap();
        bytes[0] ^= 1;
        let forged = format!(
            "{signed}.{}",
            base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
        );
        assert_eq!(
            verify_tunnel_seen(&forged, &[a_pub], 1500, &seen),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn the_oldest_are_forgotten_past_the_limit() {
        let seen = Verified::default();
        for i in 0..MAX_VERIFIED + 10 {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_le_bytes());
            seen.insert(d, [1; 32]);
        }
        assert_eq!(seen.len(), MAX_VERIFIED);
        assert!(!seen.signed_by_one_of(&[0; 32], &[[1; 32]]));
        let mut last = [0u8; 32];
        last[..8].copy_from_slice(&((MAX_VERIFIED + 9) as u64).to_le_bytes());
        assert!(seen.signed_by_one_of(&last, &[[1; 32]]));
    }
}
