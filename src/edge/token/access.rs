//! Signed access tokens (kind `msa1`, `ACCESS_PREFIX`): what an operator or a visitor
//! shows to reach a hostname with an access policy. Issued by `mailslot-edge
//! access-token`, verified by any edge holding the public key; a tunnel token never
//! verifies as one. Deciding who gets in is `edge::policy`'s job, not this
//! module's.

use ring::signature::Ed25519KeyPair;
use serde::{Deserialize, Serialize};

use super::{sha256, TokenError, ACCESS_PREFIX};
use crate::hostname::HostPattern;

/// Most hostname patterns in one access token.
pub(crate) const MAX_TOKEN_HOSTS: usize = 16;
/// Longest user name in an access token.
pub(crate) const MAX_USER_LEN: usize = 64;
/// Longest lifetime of an access token, seconds (31 days): they are meant to be short.
pub(crate) const MAX_ACCESS_TTL: u64 = 31 * 86400;
/// The id of an access token: the first 16 bytes of the SHA-256 of its text, printed in
/// hex by `mailslot-edge access-token` and listed in `revoked-access-tokens:` to refuse
/// the token before it expires.
pub fn access_token_id(token: &str) -> [u8; 16] {
    let digest = sha256(token.trim().as_bytes());
    let mut id = [0u8; 16];
    for (out, byte) in id.iter_mut().zip(digest) {
        *out = byte;
    }
    id
}

/// What a signed access token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Who the token was issued to, for policies and logs.
    pub user: String,
    /// Hostname patterns the token is good for (see [`HostPattern`]).
    pub hosts: Vec<String>,
    /// Issue time, Unix seconds.
    pub issued: u64,
    /// Expiry time, Unix seconds.
    pub expires: u64,
}

/// Signs an access token for `user` and `hosts`, valid for `ttl_secs` from now.
pub fn issue_access_token(
    key: &Ed25519KeyPair,
    user: &str,
    hosts: &[String],
    ttl_secs: u64,
) -> Result<String, String> {
    if user.is_empty() || user.len() > MAX_USER_LEN || user.chars().any(|c| c.is_control()) {
        return Err(format!("--user: 1 to {MAX_USER_LEN} printable characters"));
    }
    if hosts.is_empty() || hosts.len() > MAX_TOKEN_HOSTS {
        return Err(format!(
            "an access token names 1 to {MAX_TOKEN_HOSTS} --hostname patterns"
        ));
    }
    let hosts = hosts
        .iter()
        .map(|h| {
            HostPattern::parse(h)
                .map(|p| p.as_str().to_string())
                .map_err(|e| format!("--hostname {h:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ttl_secs == 0 || ttl_secs > MAX_ACCESS_TTL {
        return Err("--ttl: access tokens live from 1 second to 31 days".into());
    }
    let now = super::now_unix();
    sign_access_token(
        key,
        &AccessClaims {
            user: user.to_string(),
            hosts,
            issued: now,
            expires: now.saturating_add(ttl_secs),
        },
    )
}

/// Signs exactly these claims (tests use it for tokens that are already expired).
pub fn sign_access_token(key: &Ed25519KeyPair, claims: &AccessClaims) -> Result<String, String> {
    super::sign(key, ACCESS_PREFIX, claims)
}

/// Verifies an access token and its expiry at `now` (Unix seconds).
pub fn verify_access(token: &str, keys: &[[u8; 32]], now: u64) -> Result<AccessClaims, TokenError> {
    let claims: AccessClaims = super::verify(token, ACCESS_PREFIX, keys)?;
    if claims.expires <= now {
        return Err(TokenError::Expired(now - claims.expires));
    }
    Ok(claims)
}
