//! The signed config push: what `mailslot-edge devices push-config` sends down a
//! device's tunnel ([`crate::wire::EdgeMsg::PushConfig`]), and how the device checks it.
//!
//! ```text
//!  SignedPush (postcard)
//!  +---------+----------------------------------+---------------------+
//!  | id: 8 B | config: varint len + config.bin  | signature: len + 64 |
//!  +---------+----------------------------------+---------------------+
//!
//!  signed message: "mailslot config push v1\0" || id || config.bin bytes
//! ```
//!
//! The signature is Ed25519 (ring) with the fleet's config key, over a message that
//! starts with a context string of its own: no other signature mailslot makes (tokens,
//! credentials, device proofs, release offers) can be replayed as a push, nor a push as
//! one of them. The id is 8 random bytes, shown as 16 hex digits: the change id of the
//! device's report and of the inventory.
//!
//! A push carries at most [`MAX_PUSH_CONFIG`] bytes of config: the config file's own
//! limit (`config::codec::MAX_FILE_LEN`) cut to what fits in one control frame
//! (`wire::MAX_CONTROL_FRAME`) with the id and signature around it. Decoding checks the
//! length before anything else, then the shape; [`SignedPush::verify`] checks the
//! signature against the key the device pinned.

use serde::{Deserialize, Serialize};

use crate::config::codec::MAX_FILE_LEN;

/// The context string every push signature covers first.
pub const CONTEXT: &[u8] = b"mailslot config push v1\0";
/// Room in a control frame for the push's id, signature and framing.
const OVERHEAD: usize = 256;
/// Most config bytes one push carries: `MAX_FILE_LEN`, or less when a control frame
/// is smaller.
pub const MAX_PUSH_CONFIG: usize = min(MAX_FILE_LEN, crate::wire::MAX_CONTROL_FRAME - OVERHEAD);
/// Most bytes of an encoded push.
pub const MAX_PUSH_LEN: usize = MAX_PUSH_CONFIG + OVERHEAD;
/// Length of an Ed25519 signature.
const SIGNATURE_LEN: usize = 64;

const fn min(a: usize, b: usize) -> usize {
    if a < b {
        a
    } else {
        b
    }
}

/// A config push: its id, the `config.bin` bytes, and the fleet key's signature.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPush {
    /// Random; the change id (hex) in reports and the inventory.
    pub id: [u8; 8],
    /// The compiled config file, as `mailslot config compile` writes it.
    pub config: Vec<u8>,
    /// Ed25519 over [`message`]`(id, config)`.
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for SignedPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedPush")
            .field("id", &self.id_hex())
            .field("config_len", &self.config.len())
            .finish_non_exhaustive()
    }
}

/// Why a push was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// More bytes than a push may have.
    #[error("config push of {0} bytes is above the {MAX_PUSH_LEN}-byte limit")]
    TooLarge(usize),
    /// The bytes are not a push (truncated, damaged, another format).
    #[error("config push is malformed")]
    Malformed,
    /// The config inside is larger than a push may carry.
    #[error("config of {0} bytes is above the {MAX_PUSH_CONFIG}-byte limit of a push")]
    ConfigTooLarge(usize),
    /// No config key is pinned on this device: nothing may be pushed to it.
    #[error("no config key pinned on this device: pushes are refused")]
    NoPinnedKey,
    /// The signature is not the pinned key's over this push.
    #[error("config push {0} is not signed by this device's pinned config key")]
    BadSignature(String),
}

/// The bytes the signature covers: context, id, config.
pub fn message(id: &[u8; 8], config: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + id.len() + config.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(id);
    m.extend_from_slice(config);
    m
}

impl SignedPush {
    /// The id as 16 hex digits.
    pub fn id_hex(&self) -> String {
        crate::util::hex(&self.id)
    }

    /// Signs `config` with `key` under a new random id.
    pub fn sign(
        key: &ring::signature::Ed25519KeyPair,
        config: Vec<u8>,
    ) -> Result<SignedPush, PushError> {
        if config.len() > MAX_PUSH_CONFIG {
            return Err(PushError::ConfigTooLarge(config.len()));
        }
        let id: [u8; 8] = crate::util::random_bytes();
        let signature = key.sign(&message(&id, &config)).as_ref().to_vec();
        Ok(SignedPush {
            id,
            config,
            signature,
        })
    }

    /// The postcard bytes carried by `EdgeMsg::PushConfig`.
    pub fn encode(&self) -> Result<Vec<u8>, PushError> {
        let bytes = postcard::to_allocvec(self).map_err(|_| PushError::Malformed)?;
        if bytes.len() > MAX_PUSH_LEN {
            return Err(PushError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Decodes a push from the wire: the length first, then the shape. The signature
    /// is not checked here ([`SignedPush::verify`]).
    pub fn decode(bytes: &[u8]) -> Result<SignedPush, PushError> {
        if bytes.len() > MAX_PUSH_LEN {
            return Err(PushError::TooLarge(bytes.len()));
        }
        let (push, rest): (SignedPush, _) =
            postcard::take_from_bytes(bytes).map_err(|_| PushError::Malformed)?;
        if !rest.is_empty() || push.signature.len() != SIGNATURE_LEN {
            return Err(PushError::Malformed);
        }
        if push.config.len() > MAX_PUSH_CONFIG {
            return Err(PushError::ConfigTooLarge(push.config.len()));
        }
        Ok(push)
    }

    /// Checks the signature against the pinned config key.
    pub fn verify(&self, pinned: Option<&[u8; 32]>) -> Result<(), PushError> {
        let key = pinned.ok_or(PushError::NoPinnedKey)?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
            .verify(&message(&self.id, &self.config), &self.signature)
            .map_err(|_| PushError::BadSignature(self.id_hex()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
    }

    fn public(k: &Ed25519KeyPair) -> [u8; 32] {
        k.public_key().as_ref().try_into().unwrap()
    }

    #[test]
    fn a_signed_push_round_trips_and_verifies() {
        let k = key(1);
        let push = SignedPush::sign(&k, b"config bytes".to_vec()).unwrap();
        let bytes = push.encode().unwrap();
        let back = SignedPush::decode(&bytes).unwrap();
        assert_eq!(back, push);
        back.verify(Some(&public(&k))).unwrap();
        assert_eq!(back.id_hex().len(), 16);
        // Two pushes of the same config have their own ids.
        assert_ne!(SignedPush::sign(&k, b"x".to_vec()).unwrap().id, push.id);
    }

    #[test]
    fn another_fleets_key_a_forged_config_or_id_and_no_pin_are_refused() {
        let k = key(1);
        let push = SignedPush::sign(&k, b"config bytes".to_vec()).unwrap();
        assert_eq!(
            push.verify(Some(&public(&key(2)))),
            Err(PushError::BadSignature(push.id_hex()))
        );
        let mut forged = push.clone();
        forged.config = b"config bytez".to_vec();
        assert!(matches!(
            forged.verify(Some(&public(&k))),
            Err(PushError::BadSignature(_))
        ));
        let mut other_id = push.clone();
        other_id.id[0] ^= 1;
        assert!(other_id.verify(Some(&public(&k))).is_err());
        assert_eq!(push.verify(None), Err(PushError::NoPinnedKey));
        // A signature over the bare config (no context) is not a push signature.
        let mut bare = push.clone();
        bare.signature = k.sign(&bare.config).as_ref().to_vec();
        assert!(bare.verify(Some(&public(&k))).is_err());
    }

    #[test]
    fn truncated_padded_and_oversized_bytes_are_refused() {
        let push = SignedPush::sign(&key(1), vec![7; 1000]).unwrap();
        let bytes = push.encode().unwrap();
        for cut in [0, 1, 8, 9, 500, bytes.len() - 1] {
            assert_eq!(
                SignedPush::decode(&bytes[..cut]),
                Err(PushError::Malformed),
                "{cut}"
            );
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert_eq!(SignedPush::decode(&padded), Err(PushError::Malformed));
        assert_eq!(
            SignedPush::decode(&vec![0; MAX_PUSH_LEN + 1]),
            Err(PushError::TooLarge(MAX_PUSH_LEN + 1))
        );
        assert_eq!(
            SignedPush::sign(&key(1), vec![0; MAX_PUSH_CONFIG + 1]),
            Err(PushError::ConfigTooLarge(MAX_PUSH_CONFIG + 1))
        );
        // The largest config fits in a control frame.
        let big = SignedPush::sign(&key(1), vec![0xff; MAX_PUSH_CONFIG]).unwrap();
        let bytes = big.encode().unwrap();
        let frame = crate::wire::EdgeMsg::PushConfig { push: bytes };
        assert!(postcard::to_allocvec(&frame).unwrap().len() <= crate::wire::MAX_CONTROL_FRAME);
        // A short signature is malformed, not a panic.
        let mut short = push.clone();
        short.signature.truncate(10);
        let bytes = postcard::to_allocvec(&short).unwrap();
        assert_eq!(SignedPush::decode(&bytes), Err(PushError::Malformed));
    }
}
