//! Config pushes at the edge: the fleet's config key, the checks a config passes before
//! it is signed, and the push itself ([`crate::push::SignedPush`]).
//!
//! **The fleet's config key is derived, not stored.** Its Ed25519 seed is
//!
//! ```text
//!  seed = SHA-256( CONTEXT || Ed25519-sign(signing key, CONTEXT || fleet name) )
//! ```
//!
//! An Ed25519 signature is deterministic (RFC 8032), so every edge holding the token
//! signing key (every edge of a cluster must hold the same one to admit the same
//! devices) derives the same key for a fleet, with nothing new to copy, back up or
//! rotate; and nobody without the signing key can derive it (the signature is never
//! shown: only its hash is used, under a context no other signature of the edge
//! starts with). Each fleet has its own key, so a push signed for one fleet is refused
//! by the devices of another. The device pins the public half the first time an edge
//! tells it (`wire::KeysTail`); rotating the signing key therefore means re-pinning,
//! i.e. re-provisioning the boards: docs/remote.md says so.

use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::config::{codec, DeviceConfig};
use crate::push::SignedPush;

/// Domain separation of the fleet key derivation.
const CONTEXT: &[u8] = b"mailslot fleet config key v1\0";

/// The fleet's config key, derived from the edge's signing key (see the module doc).
pub fn fleet_config_key(signing: &Ed25519KeyPair, fleet: &str) -> Result<Ed25519KeyPair, String> {
    let mut msg = CONTEXT.to_vec();
    msg.extend_from_slice(fleet.as_bytes());
    let sig = signing.sign(&msg);
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(CONTEXT);
    ctx.update(sig.as_ref());
    let seed = ctx.finish();
    Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
        .map_err(|_| format!("cannot derive the config key of fleet {fleet}"))
}

/// The public half of the fleet's config key, as a device pins it.
pub fn fleet_config_public(signing: &Ed25519KeyPair, fleet: &str) -> Option<[u8; 32]> {
    let key = fleet_config_key(signing, fleet).ok()?;
    key.public_key().as_ref().try_into().ok()
}

/// Compiles the YAML at `path` as `mailslot config compile` does, to `config.bin`
/// bytes (`{device}` hostnames need `enroll:`; relative file names are taken from the
/// YAML's folder).
pub fn compile_yaml(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let config = crate::config::yaml_in::compile_file(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let bytes = codec::encode(&config).map_err(|e| format!("{}: {e}", path.display()))?;
    check_config(&bytes)?;
    Ok(bytes)
}

/// Decodes and validates `bytes` as `mailslot config check` does, and refuses a config
/// that would leave a device unreachable for good: without `enroll:` (a pushed config
/// keeps the device enrolled, or it loses its identity and its credential) or without
/// an edge.
pub fn check_config(bytes: &[u8]) -> Result<Box<DeviceConfig>, String> {
    if bytes.len() > crate::push::MAX_PUSH_CONFIG {
        return Err(format!(
            "config is {} bytes; a push carries at most {}",
            bytes.len(),
            crate::push::MAX_PUSH_CONFIG
        ));
    }
    let config = codec::decode(bytes).map_err(|e| format!("not a valid config: {e}"))?;
    orphan_check(&config)?;
    Ok(config)
}

/// Why a config would orphan a device, if it would.
pub fn orphan_check(config: &DeviceConfig) -> Result<(), String> {
    if config.enroll_key().is_none() {
        return Err(
            "the config has no enroll: key: a device given it would lose its fleet identity \
             (a pushed config must keep `enroll:`)"
                .into(),
        );
    }
    if config.edges.is_empty() {
        return Err("the config names no edge: a device given it could reach none".into());
    }
    Ok(())
}

/// Checks `bytes` and signs them with fleet `fleet`'s config key.
pub fn sign_push(
    signing: &Ed25519KeyPair,
    fleet: &str,
    bytes: Vec<u8>,
) -> Result<SignedPush, String> {
    check_config(&bytes)?;
    let key = fleet_config_key(signing, fleet)?;
    SignedPush::sign(&key, bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::sample_config;

    fn signing(seed: u8) -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap()
    }

    fn enrolled() -> Vec<u8> {
        let mut config = sample_config();
        config.token = "mse1.fleet-key".try_into().unwrap();
        codec::encode(&config).unwrap()
    }

    #[test]
    fn fleet_keys_are_the_same_on_every_edge_and_differ_by_fleet_and_signing_key() {
        let a = fleet_config_public(&signing(1), "shops").unwrap();
        assert_eq!(a, fleet_config_public(&signing(1), "shops").unwrap());
        assert_ne!(a, fleet_config_public(&signing(1), "homes").unwrap());
        assert_ne!(a, fleet_config_public(&signing(2), "shops").unwrap());
        assert_ne!(a.as_slice(), signing(1).public_key().as_ref());
    }

    #[test]
    fn a_push_verifies_against_its_fleets_key_only() {
        let push = sign_push(&signing(1), "shops", enrolled()).unwrap();
        let shops = fleet_config_public(&signing(1), "shops").unwrap();
        let homes = fleet_config_public(&signing(1), "homes").unwrap();
        push.verify(Some(&shops)).unwrap();
        assert!(push.verify(Some(&homes)).is_err());
    }

    #[test]
    fn configs_that_would_orphan_a_device_are_refused() {
        let plain = codec::encode(&sample_config()).unwrap();
        let e = sign_push(&signing(1), "shops", plain).unwrap_err();
        assert!(e.contains("no enroll: key"), "{e}");
        let mut no_edge = sample_config();
        no_edge.token = "mse1.fleet-key".try_into().unwrap();
        no_edge.edges.clear();
        // The codec itself may refuse a config without edges; either way it is refused.
        let e = match codec::encode(&no_edge) {
            Ok(bytes) => check_config(&bytes).unwrap_err(),
            Err(e) => e.to_string(),
        };
        assert!(!e.is_empty());
        let e = check_config(b"not a config").unwrap_err();
        assert!(e.starts_with("not a valid config"), "{e}");
    }
}
