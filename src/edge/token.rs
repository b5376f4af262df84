//! Signed, self-contained tokens (Ed25519): any edge holding the public key verifies
//! them without a database.
//!
//! ```text
//!  mst1.<base64url(postcard Claims)>.<base64url(signature)>
//!  ^^^^ kind and format: "mst1" tunnel token; other kinds use other prefixes
//! ```
//!
//! The signature covers the prefix and the payload text, so a token of one kind never
//! verifies as another.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

use crate::hostname::HostPattern;

pub mod access;
pub(crate) mod verified;

/// Prefix of tunnel tokens.
pub const TUNNEL_PREFIX: &str = "mst1";
/// Prefix of access tokens for operators and visitors.
pub const ACCESS_PREFIX: &str = "msa1";
/// Prefix of fleet enrolment keys (`mailslot-edge enroll-key`, see `fleet::enroll`).
pub const ENROLL_PREFIX: &str = "mse1";
/// Prefix of device credentials, issued at enrolment (see `fleet::enroll`).
pub const DEVICE_PREFIX: &str = "msd1";
/// Longest token accepted for verification.
pub const MAX_TOKEN_LEN: usize = 4096;

/// What a tunnel token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelClaims {
    /// Tunnel name chosen by the operator.
    pub tunnel: String,
    /// Tunnel identity: connectors holding the same token are replicas of one tunnel.
    pub id: [u8; 16],
    /// Hostname patterns (exact or `*.` wildcard) the tunnel may serve.
    pub hosts: Vec<String>,
    /// Issue time, Unix seconds.
    pub issued: u64,
    /// Expiry time, Unix seconds.
    pub expires: u64,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not of the form prefix.payload.signature, or too long.
    #[error("not a mailslot token")]
    Malformed,
    /// A valid token of another kind (e.g. a tunnel token used as an access token).
    #[error("wrong kind of token: {0} token where a {1} token is required")]
    WrongKind(String, &'static str),
    /// No trusted key made this signature.
    #[error(
        "token signature is not valid for this edge (forged, or signed by another edge's key)"
    )]
    BadSignature,
    /// Past its expiry time.
    #[error("token expired {0} seconds ago")]
    Expired(u64),
    /// Claims that do not decode.
    #[error("token payload is malformed")]
    BadClaims,
}

/// Signs claims into a token of the given kind.
pub fn sign<C: Serialize>(
    key: &Ed25519KeyPair,
    prefix: &str,
    claims: &C,
) -> Result<String, String> {
    let payload = postcard::to_allocvec(claims).map_err(|e| e.to_string())?;
    let signed = format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(payload));
    let sig = key.sign(signed.as_bytes());
    Ok(format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
}

/// Verifies a token's kind and signature, then decodes its claims.
pub fn verify<C: for<'de> Deserialize<'de>>(
    token: &str,
    prefix: &'static str,
    keys: &[[u8; 32]],
) -> Result<C, TokenError> {
    let (signed, payload, sig) = split(token.trim(), prefix)?;
    signer(signed, &sig, keys).ok_or(TokenError::BadSignature)?;
    decode(payload)
}

/// A token of kind `prefix` taken apart: the signed text, its payload, the signature.
fn split<'a>(
    token: &'a str,
    prefix: &'static str,
) -> Result<(&'a str, &'a str, Vec<u8>), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (kind, payload) = signed.split_once('.').ok_or(TokenError::Malformed)?;
    if kind != prefix {
        let known = [TUNNEL_PREFIX, ACCESS_PREFIX, ENROLL_PREFIX, DEVICE_PREFIX];
        return Err(if known.contains(&kind) {
            TokenError::WrongKind(kind_name(kind).into(), kind_name(prefix))
        } else {
            TokenError::Malformed
        });
    }
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| TokenError::Malformed)?;
    Ok((signed, payload, sig))
}

/// The key among `keys` whose signature `sig` over `signed` is.
fn signer(signed: &str, sig: &[u8], keys: &[[u8; 32]]) -> Option<[u8; 32]> {
    keys.iter().copied().find(|k| {
        UnparsedPublicKey::new(&ED25519, k)
            .verify(signed.as_bytes(), sig)
            .is_ok()
    })
}

/// The claims of a token's payload text.
fn decode<C: for<'de> Deserialize<'de>>(payload: &str) -> Result<C, TokenError> {
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    postcard::from_bytes(&payload).map_err(|_| TokenError::BadClaims)
}

fn kind_name(prefix: &str) -> &'static str {
    match prefix {
        TUNNEL_PREFIX => "tunnel",
        ACCESS_PREFIX => "access",
        ENROLL_PREFIX => "enrolment key",
        DEVICE_PREFIX => "device credential",
        _ => "unknown",
    }
}

/// Verifies a tunnel token and its expiry at `now` (Unix seconds).
pub fn verify_tunnel(token: &str, keys: &[[u8; 32]], now: u64) -> Result<TunnelClaims, TokenError> {
    unexpired(verify(token, TUNNEL_PREFIX, keys)?, now)
}

/// Tunnel claims that have not expired at `now`.
fn unexpired(claims: TunnelClaims, now: u64) -> Result<TunnelClaims, TokenError> {
    if claims.expires <= now {
        return Err(TokenError::Expired(now - claims.expires));
    }
    Ok(claims)
}

/// [`verify_tunnel`] for the tunnel listener, remembering the tokens whose signature
/// verified in `seen` (see [`verified::Verified`]): a connector presents its token on
/// each of its connections, and a token seen before is not verified again as long as
/// the key that signed it is still among `keys`. Its expiry is checked every time (and
/// revocations by the caller, as for any token).
pub(crate) fn verify_tunnel_seen(
    token: &str,
    keys: &[[u8; 32]],
    now: u64,
    seen: &verified::Verified,
) -> Result<TunnelClaims, TokenError> {
    let token = token.trim();
    let (signed, payload, sig) = split(token, TUNNEL_PREFIX)?;
    let digest = sha256(token.as_bytes());
    if !seen.signed_by_one_of(&digest, keys) {
        let key = signer(signed, &sig, keys).ok_or(TokenError::BadSignature)?;
        seen.insert(digest, key);
    }
    unexpired(decode(payload)?, now)
}

/// Does a token's hostname pattern allow this rule hostname (itself exact or `*.`)?
/// A pattern that does not parse allows nothing.
pub(crate) fn pattern_allows(pattern: &str, hostname: &HostPattern) -> bool {
    HostPattern::parse(pattern).is_ok_and(|p| p.covers(hostname))
}

/// The public half of a signing key, as written to `.pub` files.
pub(crate) fn public_key_text(key: &Ed25519KeyPair) -> String {
    format!("ed25519 {}\n", STANDARD.encode(key.public_key().as_ref()))
}

/// Parses a `.pub` file's text.
pub(crate) fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let b64 = text
        .trim()
        .strip_prefix("ed25519 ")
        .ok_or("public key must start with \"ed25519 \"")?;
    let raw = STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("public key: {e}"))?;
    raw.try_into()
        .map_err(|_| "public key must be 32 bytes".to_string())
}

/// The SHA-256 of `data` (access token ids, service token secrets).
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Current Unix time in seconds.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn key() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn claims() -> TunnelClaims {
        TunnelClaims {
            tunnel: "dev42".into(),
            id: [1; 16],
            hosts: vec!["dev42.example.com".into(), "*.dev42.example.com".into()],
            issued: 100,
            expires: 200,
        }
    }

    fn pubkey(k: &Ed25519KeyPair) -> [u8; 32] {
        k.public_key().as_ref().try_into().unwrap()
    }

    #[test]
    fn sign_and_verify() {
        let k = key();
        let t = sign(&k, TUNNEL_PREFIX, &claims()).unwrap();
        assert_eq!(verify_tunnel(&t, &[pubkey(&k)], 150).unwrap(), claims());
        assert_eq!(
            verify_tunnel(&t, &[pubkey(&k)], 250),
            Err(TokenError::Expired(50))
        );
        assert_eq!(
            verify_tunnel(&t, &[pubkey(&key())], 150),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let k = key();
        let t = sign(&k, TUNNEL_PREFIX, &claims()).unwrap();
        let mut other = claims();
        other.hosts.push("bank.example.com".into());
        let forged_payload = sign(&key(), TUNNEL_PREFIX, &other).unwrap();
        let mid = forged_payload.split('.').nth(1).unwrap();
        let sig = t.rsplit('.').next().unwrap();
        let forged = format!("{TUNNEL_PREFIX}.{mid}.{sig}");
        assert_eq!(
            verify_tunnel(&forged, &[pubkey(&k)], 150),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify_tunnel("garbage", &[pubkey(&k)], 150),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn kinds_do_not_mix() {
        let k = key();
        let t = sign(&k, ACCESS_PREFIX, &claims()).unwrap();
        assert!(matches!(
            verify_tunnel(&t, &[pubkey(&k)], 150),
            Err(TokenError::WrongKind(..))
        ));
        // Relabelling an access token as a tunnel token breaks its signature.
        let relabelled = t.replacen(ACCESS_PREFIX, TUNNEL_PREFIX, 1);
        assert_eq!(
            verify_tunnel(&relabelled, &[pubkey(&k)], 150),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn patterns() {
        let allows = |p: &str, h: &str| pattern_allows(p, &HostPattern::parse(h).unwrap());
        assert!(allows("dev42.example.com", "dev42.example.com"));
        assert!(allows("*.dev42.example.com", "api.dev42.example.com"));
        assert!(allows("*.dev42.example.com", "*.api.dev42.example.com"));
        assert!(!allows("*.dev42.example.com", "dev42.example.com"));
        assert!(!allows("*.dev42.example.com", "*.dev42.example.com.evil"));
        assert!(!allows("dev42.example.com", "*.dev42.example.com"));
        assert!(!allows("*.dev42.example.com", "evildev42.example.com"));
        assert!(!allows("x..b", "x.b"));
    }

    #[test]
    fn public_key_text_round_trip() {
        let k = key();
        assert_eq!(parse_public_key(&public_key_text(&k)).unwrap(), pubkey(&k));
        assert!(parse_public_key("rsa AAAA").is_err());
    }
}
