//! Enrolment keys, device credentials and the admission of a device at registration.
//!
//! Both are signed with the edge's token key, as tunnel tokens are (`token::sign`,
//! `token::verify`), under their own prefixes, so neither ever verifies as the other
//! or as a tunnel token:
//!
//! ```text
//!  mse1.<EnrollClaims>.<sig>   enrolment key: fleet, key id, hostname patterns
//!                              (`{device}` as a whole label), quota, expiry
//!  msd1.<DeviceClaims>.<sig>   device credential: the device's public key and id,
//!                              fleet, key id, hostnames expanded, tunnel id, expiry
//! ```
//!
//! A device proves it holds its key on every registration: an Ed25519 signature over
//! `wire::device_proof_message` of the nonce the edge sent in this connection's hello.
//! A credential or enrolment key copied to another board is useless without the key:
//! the proof fails, or the credential names another public key.
//!
//! Credentials live [`DEFAULT_CREDENTIAL_LIFETIME`] (`fleet: credential-lifetime:`)
//! and are renewed online once two thirds of the lifetime have passed
//! ([`renewal_time`]): at registration ([`needs_renewal`], the new one in
//! `RegisteredTail`), and on a connection that stays up that long
//! (`EdgeMsg::Credential`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use super::{DeviceRecord, Enrolled, Inventory};
use crate::edge::token::{self, TokenError, TunnelClaims, DEVICE_PREFIX, ENROLL_PREFIX};
use crate::identity;
use crate::wire::{self, DeviceTail, Register, RegisteredTail};

/// Lifetime of a device credential unless `fleet: credential-lifetime:` says otherwise.
pub const DEFAULT_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(90 * 86400);
/// How often devices report their health unless `fleet: health-every:` says otherwise.
pub const DEFAULT_HEALTH_EVERY: Duration = Duration::from_secs(300);
/// Most hostname patterns in one enrolment key.
pub const MAX_PATTERNS: usize = 16;
/// Longest fleet name (a DNS label's length).
pub const MAX_FLEET_NAME: usize = 63;

/// What an enrolment key (`mse1.…`) grants: enrolment into `fleet`, under a quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollClaims {
    pub fleet: String,
    /// Random id of this key; quotas count per key.
    pub key_id: [u8; 16],
    /// Hostname patterns, canonical, possibly with `{device}` labels.
    pub hostnames: Vec<String>,
    /// Most devices that may enrol with it; `None`: no limit.
    pub max_devices: Option<u32>,
    /// Unix seconds.
    pub issued: u64,
    pub expires: u64,
}

/// What a device credential (`msd1.…`) grants: one device's tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceClaims {
    /// The device's Ed25519 public key: only its holder can use the credential.
    pub public_key: [u8; 32],
    /// `identity::device_id(public_key)`.
    pub device: String,
    pub fleet: String,
    /// The enrolment key it enrolled with.
    pub key_id: [u8; 16],
    /// The key's patterns with `{device}` expanded.
    pub hostnames: Vec<String>,
    /// `identity::tunnel_id(public_key)`.
    pub tunnel: [u8; 16],
    /// Unix seconds.
    pub issued: u64,
    pub expires: u64,
}

/// Checks a fleet name: a DNS label (lowercase letters, digits, `-` inside).
pub fn check_fleet_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_FLEET_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "fleet name {name:?}: 1 to {MAX_FLEET_NAME} lowercase letters, digits and \
             inner '-'"
        ))
    }
}

/// Checks an enrolment key's hostname pattern and gives its canonical form: `{device}`
/// only as a whole label, and with it expanded to a device id, an exact hostname or a
/// `*.` wildcard.
pub fn check_hostname_pattern(pattern: &str) -> Result<String, String> {
    let bad = |why: &str| format!("--hostname {pattern:?}: {why}");
    let p = pattern.trim();
    let p = p.strip_suffix('.').unwrap_or(p).to_ascii_lowercase();
    if p.split('.').any(|label| {
        label.contains(identity::DEVICE_PLACEHOLDER) && label != identity::DEVICE_PLACEHOLDER
    }) {
        return Err(bad(
            "{device} must be a whole label, as in {device}.fleet.example.com",
        ));
    }
    let sample = identity::expand(&p, &identity::device_id(&[0; 32]));
    match crate::hostname::HostPattern::parse(&sample) {
        Ok(parsed) if parsed.is_routable() && parsed.as_str() == sample => Ok(p),
        _ => Err(bad(
            "not a hostname or *.wildcard pattern (with {device} for the device id)",
        )),
    }
}

/// Signs an enrolment key for `fleet` valid from now for `ttl_secs`.
pub fn issue_enroll_key(
    key: &Ed25519KeyPair,
    fleet: &str,
    patterns: &[String],
    max_devices: Option<u32>,
    ttl_secs: u64,
) -> Result<String, String> {
    check_fleet_name(fleet)?;
    if patterns.is_empty() || patterns.len() > MAX_PATTERNS {
        return Err(format!(
            "1 to {MAX_PATTERNS} --hostname patterns, not {}",
            patterns.len()
        ));
    }
    let hostnames = patterns
        .iter()
        .map(|p| check_hostname_pattern(p))
        .collect::<Result<Vec<_>, _>>()?;
    if max_devices == Some(0) {
        return Err("--max-devices must be at least 1".into());
    }
    let issued = token::now_unix();
    let claims = EnrollClaims {
        fleet: fleet.to_string(),
        key_id: crate::util::random_bytes(),
        hostnames,
        max_devices,
        issued,
        expires: issued.saturating_add(ttl_secs),
    };
    token::sign(key, ENROLL_PREFIX, &claims)
}

/// Verifies an enrolment key at `now`; the error says why in words for the device.
pub fn verify_enroll_key(text: &str, keys: &[[u8; 32]], now: u64) -> Result<EnrollClaims, String> {
    let claims: EnrollClaims = token::verify(text, ENROLL_PREFIX, keys)
        .map_err(|e| format!("enrolment key refused: {e}"))?;
    if claims.expires <= now {
        return Err(format!(
            "enrolment key of fleet {} expired {} seconds ago: issue a new one \
             (mailslot-edge enroll-key) and update the device config",
            claims.fleet,
            now - claims.expires
        ));
    }
    Ok(claims)
}

/// Signs a device credential.
pub fn issue_credential(key: &Ed25519KeyPair, claims: &DeviceClaims) -> Result<String, String> {
    token::sign(key, DEVICE_PREFIX, claims)
}

/// Verifies a device credential's signature and expiry at `now`.
pub fn verify_credential(
    text: &str,
    keys: &[[u8; 32]],
    now: u64,
) -> Result<DeviceClaims, TokenError> {
    let claims: DeviceClaims = token::verify(text, DEVICE_PREFIX, keys)?;
    if claims.expires <= now {
        return Err(TokenError::Expired(now - claims.expires));
    }
    Ok(claims)
}

/// Does `proof` (64 bytes) sign the proof message of `nonce` with `public_key`?
pub fn verify_proof(public_key: &[u8; 32], nonce: &[u8; 32], proof: &[u8]) -> bool {
    proof.len() == 64
        && UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&wire::device_proof_message(nonce), proof)
            .is_ok()
}

/// Has a credential a third of its lifetime left or less at `now` (is it past its
/// [`renewal_time`])?
pub fn needs_renewal(issued: u64, expires: u64, now: u64) -> bool {
    now >= renewal_time(issued, expires)
}

/// When a connection renews its credential: two thirds into its lifetime.
pub fn renewal_time(issued: u64, expires: u64) -> u64 {
    issued.saturating_add(expires.saturating_sub(issued) / 3 * 2)
}

/// Why a registration without a good proof of possession is refused.
const PROOF_FAILED: &str = "proof of possession failed: the device key did not sign this \
                            connection's nonce (a credential copied without its device key?)";

/// What the edge needs to admit devices: its settings and its signing key.
pub struct Enroller {
    /// The token key; without it (an edge with `verify-keys` only) devices with a
    /// credential are admitted, but none enrols and none is renewed.
    signing: Option<Arc<Ed25519KeyPair>>,
    credential_lifetime: Duration,
    health_every: Duration,
}

/// A device connection admitted: what to register and what to answer.
pub(crate) struct Admitted {
    pub(crate) claims: TunnelClaims,
    pub(crate) credential: DeviceClaims,
    pub(crate) tail: RegisteredTail,
}

impl Enroller {
    /// The token signing key, when this edge has one: the fleets' config keys derive
    /// from it (`fleet::push`).
    pub(crate) fn signing_key(&self) -> Option<&Ed25519KeyPair> {
        self.signing.as_deref()
    }

    pub fn new(
        signing: Option<Arc<Ed25519KeyPair>>,
        credential_lifetime: Duration,
        health_every: Duration,
    ) -> Enroller {
        Enroller {
            signing,
            credential_lifetime,
            health_every,
        }
    }

    /// Admits a device registering with `tail` on a connection whose hello carried
    /// `nonce`, or says why not (every refusal is permanent: retrying cannot help).
    pub(crate) async fn admit(
        &self,
        inventory: &Inventory,
        keys: &[[u8; 32]],
        nonce: &[u8; 32],
        reg: &Register,
        tail: &DeviceTail,
        remote: SocketAddr,
    ) -> Result<Admitted, String> {
        if !verify_proof(&tail.public_key, nonce, &tail.proof) {
            return Err(PROOF_FAILED.into());
        }
        let id = identity::device_id(&tail.public_key);
        if inventory.is_revoked(&id) {
            return Err(revoked(&id));
        }
        let now = token::now_unix();
        let mut record = self.record_of(&id, reg, tail, remote, now);
        let (claims, issued) = match self.credential_of(&id, keys, tail, now)? {
            Some(mut claims) => {
                let mut issued = None;
                if needs_renewal(claims.issued, claims.expires, now) {
                    if let Some(key) = &self.signing {
                        claims = self.claims_for(
                            &tail.public_key,
                            &claims.fleet,
                            claims.key_id,
                            claims.hostnames,
                            now,
                        );
                        issued = Some(issue_credential(key, &claims)?);
                    }
                }
                self.fill(&mut record, &claims);
                if !inventory.connected(&record) {
                    // Known to the credential's edge but not to this store (a store
                    // lost or not shared): recorded again, outside any quota.
                    self.enroll(inventory, &record, None, &claims.fleet).await?;
                }
                (claims, issued)
            }
            None => {
                let key = self
                    .signing
                    .as_ref()
                    .ok_or("this edge has no signing-key: it cannot enrol devices")?;
                let text = tail.enroll.as_deref().ok_or_else(|| {
                    format!("device {id} has neither a credential nor an enrolment key")
                })?;
                let grant = verify_enroll_key(text, keys, now)?;
                let hostnames = grant
                    .hostnames
                    .iter()
                    .map(|p| identity::expand(p, &id))
                    .collect();
                let claims =
                    self.claims_for(&tail.public_key, &grant.fleet, grant.key_id, hostnames, now);
                self.fill(&mut record, &claims);
                self.enroll(inventory, &record, grant.max_devices, &grant.fleet)
                    .await?;
                let text = issue_credential(key, &claims)?;
                (claims, Some(text))
            }
        };
        Ok(Admitted {
            claims: TunnelClaims {
                tunnel: id.clone(),
                id: claims.tunnel,
                hosts: claims.hostnames.clone(),
                issued: claims.issued,
                expires: claims.expires,
            },
            tail: RegisteredTail {
                device_id: id,
                credential: issued,
                health_every_secs: u32::try_from(self.health_every.as_secs()).unwrap_or(u32::MAX),
            },
            credential: claims,
        })
    }

    /// A new credential for a connection that stays up past [`renewal_time`]: the same
    /// grant, from now.
    pub(crate) fn renew(&self, old: &DeviceClaims) -> Option<(DeviceClaims, String)> {
        let key = self.signing.as_ref()?;
        let claims = self.claims_for(
            &old.public_key,
            &old.fleet,
            old.key_id,
            old.hostnames.clone(),
            token::now_unix(),
        );
        let text = issue_credential(key, &claims).ok()?;
        Some((claims, text))
    }

    /// The device's credential when it presented a good one; `None` when it should
    /// enrol with its enrolment key instead.
    fn credential_of(
        &self,
        id: &str,
        keys: &[[u8; 32]],
        tail: &DeviceTail,
        now: u64,
    ) -> Result<Option<DeviceClaims>, String> {
        let Some(text) = &tail.credential else {
            return Ok(None);
        };
        match verify_credential(text, keys, now) {
            Ok(c) if c.public_key != tail.public_key || c.device != id => Err(format!(
                "the credential of device {} was presented with another device key \
                 (device {id}): refused",
                wire::bounded_reason(c.device)
            )),
            Ok(c) => Ok(Some(c)),
            // An expired or foreign credential: enrol again when the config has a key.
            Err(_) if tail.enroll.is_some() => Ok(None),
            Err(TokenError::Expired(ago)) => Err(format!(
                "the credential of device {id} expired {ago} seconds ago and the device \
                 config has no enrolment key: give it one (enroll:)"
            )),
            Err(e) => Err(format!("device credential refused: {e}")),
        }
    }

    async fn enroll(
        &self,
        inventory: &Inventory,
        record: &DeviceRecord,
        max_devices: Option<u32>,
        fleet: &str,
    ) -> Result<(), String> {
        let enrolled = inventory.enroll(record, max_devices).await.map_err(|e| {
            format!(
                "{e}: device {} is not enrolled until it answers; try again later",
                record.id
            )
        })?;
        match enrolled {
            Enrolled::New | Enrolled::Again => Ok(()),
            Enrolled::Revoked => Err(revoked(&record.id)),
            Enrolled::QuotaFull { count } => Err(format!(
                "enrolment key of fleet {fleet} is full: {count} devices enrolled, \
                 --max-devices {}",
                max_devices.unwrap_or(count)
            )),
            Enrolled::Full { max } => Err(format!(
                "this edge's fleet store is full: {max} devices, the most one edge keeps"
            )),
        }
    }

    fn claims_for(
        &self,
        public_key: &[u8; 32],
        fleet: &str,
        key_id: [u8; 16],
        hostnames: Vec<String>,
        now: u64,
    ) -> DeviceClaims {
        DeviceClaims {
            public_key: *public_key,
            device: identity::device_id(public_key),
            fleet: fleet.to_string(),
            key_id,
            hostnames,
            tunnel: identity::tunnel_id(public_key),
            issued: now,
            expires: now.saturating_add(self.credential_lifetime.as_secs()),
        }
    }

    /// The record of what the device says of itself on this registration.
    fn record_of(
        &self,
        id: &str,
        reg: &Register,
        tail: &DeviceTail,
        remote: SocketAddr,
        now: u64,
    ) -> DeviceRecord {
        let facts = &tail.facts;
        DeviceRecord {
            id: id.to_string(),
            public_key: tail.public_key,
            name: wire::bounded_reason(facts.name.clone()),
            fleet: String::new(),
            key_id: [0; 16],
            hostnames: Vec::new(),
            version: wire::bounded_reason(reg.software.clone()),
            arch: wire::bounded_reason(facts.arch.clone()),
            board: wire::bounded_reason(facts.board.clone()),
            config_digest: crate::util::hex(&facts.config_digest),
            enrolled: now,
            first_seen: now,
            last_seen: now,
            credential_expires: 0,
            revoked: None,
            address: remote.to_string(),
            health: None,
            health_at: 0,
            health_cost: None,
        }
    }

    /// Puts the credential's grant into `record`.
    fn fill(&self, record: &mut DeviceRecord, claims: &DeviceClaims) {
        record.fleet = claims.fleet.clone();
        record.key_id = claims.key_id;
        record.hostnames = claims.hostnames.clone();
        record.credential_expires = claims.expires;
    }
}

/// Why a revoked device is refused.
pub(crate) fn revoked(id: &str) -> String {
    format!("device {id} is revoked")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair;

    fn key() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn pubkey(k: &Ed25519KeyPair) -> [u8; 32] {
        k.public_key().as_ref().try_into().unwrap()
    }

    #[test]
    fn patterns_take_device_as_a_whole_label_only() {
        assert_eq!(
            check_hostname_pattern("{device}.Shops.example.com.").unwrap(),
            "{device}.shops.example.com"
        );
        assert!(check_hostname_pattern("ssh.{device}.shops.example.com").is_ok());
        assert!(check_hostname_pattern("*.{device}.shops.example.com").is_ok());
        assert!(check_hostname_pattern("plain.example.com").is_ok());
        for bad in [
            "x{device}.example.com",
            "{device}x.example.com",
            "{device.example.com",
            "*",
            "a.*.example.com",
            "a..example.com",
            "{device}.*.example.com",
        ] {
            assert!(check_hostname_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fleet_names_are_dns_labels() {
        for ok in ["shops", "f-1", "a"] {
            assert!(check_fleet_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Shops", "a.b", &"a".repeat(64)] {
            assert!(check_fleet_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn enrolment_keys_verify_expire_and_do_not_pass_as_credentials() {
        let k = key();
        let text = issue_enroll_key(
            &k,
            "shops",
            &["{device}.shops.example.com".into()],
            Some(20),
            60,
        )
        .unwrap();
        assert!(text.starts_with("mse1."));
        let now = token::now_unix();
        let c = verify_enroll_key(&text, &[pubkey(&k)], now).unwrap();
        assert_eq!((c.fleet.as_str(), c.max_devices), ("shops", Some(20)));
        let e = verify_enroll_key(&text, &[pubkey(&k)], now + 100).unwrap_err();
        assert!(e.starts_with("enrolment key of fleet shops expired"), "{e}");
        assert!(verify_enroll_key(&text, &[pubkey(&key())], now).is_err());
        assert!(matches!(
            verify_credential(&text, &[pubkey(&k)], now),
            Err(TokenError::WrongKind(..))
        ));
        assert!(issue_enroll_key(&k, "shops", &[], None, 60).is_err());
        assert!(issue_enroll_key(&k, "shops", &["a.example.com".into()], Some(0), 60).is_err());
    }

    #[test]
    fn proofs_bind_the_nonce_and_the_key() {
        let device = key();
        let nonce = [7u8; 32];
        let proof = device.sign(&wire::device_proof_message(&nonce));
        assert!(verify_proof(&pubkey(&device), &nonce, proof.as_ref()));
        assert!(!verify_proof(&pubkey(&device), &[8u8; 32], proof.as_ref()));
        assert!(!verify_proof(&pubkey(&key()), &nonce, proof.as_ref()));
        assert!(!verify_proof(
            &pubkey(&device),
            &nonce,
            &proof.as_ref()[..63]
        ));
    }

    #[test]
    fn renewal_starts_in_the_last_third() {
        assert!(!needs_renewal(0, 90, 59));
        assert!(needs_renewal(0, 90, 60));
        assert!(needs_renewal(100, 106, 104));
        assert!(!needs_renewal(100, 106, 103));
        assert_eq!(renewal_time(0, 90), 60);
        assert_eq!(renewal_time(100, 100), 100);
    }
}
