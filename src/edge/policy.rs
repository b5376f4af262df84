//! Access policies: who may reach which hostname through the edge, decided from
//! `edge.yml` and the credentials a client shows, without a database.
//!
//! ```yaml
//! service-tokens:
//!   - id: ci
//!     secret-file: ci.secret          # or secret: inline
//! access:
//!   - hostname: "ssh.*.example.com"   # exact, `*.` (one or more labels) or `*` labels
//!     allow: [signed, service-token]  # public | service-token | signed
//!     users: [alice]                  # optional: signed tokens of these users only
//!     service-tokens: [ci]            # optional: these service tokens only
//!     ip-allow: [203.0.113.0/24]      # optional: client addresses (CIDR)
//! tcp-ports:
//!   - listen: 0.0.0.0:2222
//!     hostname: ssh.dev42.example.com
//!     ip-allow: [203.0.113.0/24]      # required
//! ```
//!
//! The first entry whose pattern matches the hostname decides. Without a matching entry
//! a raw-stream (TCP, SSH, RDP) hostname is **closed**, so a TCP service is never exposed
//! by accident, and an HTTP hostname is public.
//!
//! This module holds the checked model ([`AccessConfig`]) and the decisions
//! (`AccessPolicy::check`). The sections are parsed in `config/access.rs`,
//! address ranges are [`super::cidr`], and signed access tokens (kind `msa1`, which a
//! tunnel token never verifies as) are [`super::token::access`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::cidr::{any_contains, canonical, Cidr};
use super::token::access::verify_access;
use super::token::{sha256, TokenError};
use crate::wire::{AccessCredential, AccessError};

pub use super::token::access::{
    access_token_id, issue_access_token, sign_access_token, AccessClaims,
};

/// Longest service token secret read from a file.
const MAX_SECRET_LEN: usize = 1024;
/// Shortest service token secret accepted in `edge.yml`.
const MIN_SECRET_LEN: usize = 16;

/// Hostname patterns: the grammar of [`crate::hostname`] (exact, `*.rest`, `*` labels,
/// `*` alone).
pub use crate::hostname::HostPattern;

/// A way to be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Method {
    /// Anyone (within the IP allow-list).
    Public,
    /// A service token defined in `service-tokens`.
    ServiceToken,
    /// A signed access token from `mailslot-edge access-token`.
    Signed,
}

/// An access policy for the hostnames its pattern covers.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub hostname: HostPattern,
    pub allow: Vec<Method>,
    /// Signed tokens of these users only (empty: any user).
    pub users: Vec<String>,
    /// These service tokens only (empty: any defined one).
    pub(crate) service_tokens: Vec<String>,
    /// Client addresses admitted (empty: any).
    pub(crate) ip_allow: Vec<Cidr>,
}

/// Where a service token's secret comes from.
#[derive(Clone)]
pub(crate) enum SecretSource {
    Inline(String),
    File(PathBuf),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(***)"),
            SecretSource::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// A public TCP port on the edge that leads to one raw-stream hostname.
#[derive(Debug, Clone)]
pub struct TcpPortSpec {
    pub listen: SocketAddr,
    pub hostname: String,
    pub(crate) ip_allow: Vec<Cidr>,
}

impl TcpPortSpec {
    /// Is a client at `ip` let in?
    pub fn admits(&self, ip: IpAddr) -> bool {
        any_contains(&self.ip_allow, ip)
    }
}

/// The access sections of `edge.yml`, checked; secret files are read when the policy
/// is loaded (at start and at each reload).
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    pub(crate) policies: Vec<Policy>,
    pub(crate) service_tokens: Vec<(String, SecretSource)>,
    pub tcp_ports: Vec<TcpPortSpec>,
    /// Ids ([`access_token_id`]) of signed access tokens refused before they expire.
    pub(crate) revoked_tokens: Vec<[u8; 16]>,
}

/// Checks a service token secret's length.
pub(crate) fn check_secret(s: &str) -> Result<(), String> {
    if s.len() < MIN_SECRET_LEN || s.len() > MAX_SECRET_LEN {
        return Err(format!(
            "a secret has {MIN_SECRET_LEN} to {MAX_SECRET_LEN} characters"
        ));
    }
    Ok(())
}

/// What kind of service a hostname is, for the default when no policy matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// HTTP: public without a policy.
    Http,
    /// A raw stream (TCP, SSH, RDP): closed without a policy.
    Stream,
}

/// Who was admitted, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user, `service:<id>`, or `anonymous`.
    pub(crate) who: String,
    /// How: `signed token`, `service token`, `public`.
    pub how: &'static str,
}

/// Why a client was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// `Unauthorized` (no or bad credentials) or `Forbidden` (valid but not admitted).
    pub error: AccessError,
    pub message: String,
}

fn unauthorized(message: String) -> Denied {
    Denied {
        error: AccessError::Unauthorized,
        message,
    }
}

fn forbidden(message: String) -> Denied {
    Denied {
        error: AccessError::Forbidden,
        message,
    }
}

/// The policies in force, with service token secrets loaded (as SHA-256 digests).
#[derive(Debug, Default, Clone)]
pub struct AccessPolicy {
    policies: Vec<Policy>,
    service_tokens: Vec<(String, [u8; 32])>,
    /// Ids of revoked access tokens.
    revoked_tokens: std::collections::HashSet<[u8; 16]>,
}

/// Compares digests without an early exit.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AccessPolicy {
    /// Reads the secret files `cfg` names.
    pub fn load(cfg: &AccessConfig) -> Result<AccessPolicy, String> {
        let mut service_tokens = Vec::new();
        for (id, source) in &cfg.service_tokens {
            let secret = match source {
                SecretSource::Inline(s) => s.clone(),
                SecretSource::File(p) => read_secret(p)?,
            };
            service_tokens.push((id.clone(), sha256(secret.as_bytes())));
        }
        Ok(AccessPolicy {
            policies: cfg.policies.clone(),
            service_tokens,
            revoked_tokens: cfg.revoked_tokens.iter().copied().collect(),
        })
    }

    /// Refuses the access tokens of `ids` too (revoked through the fleet store); how
    /// many were not refused before.
    pub(crate) fn revoke_tokens<'a>(
        &mut self,
        ids: impl IntoIterator<Item = &'a [u8; 16]>,
    ) -> usize {
        ids.into_iter()
            .filter(|id| self.revoked_tokens.insert(**id))
            .count()
    }

    /// `(access policies, service tokens, revoked access tokens)`, for logs.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.policies.len(),
            self.service_tokens.len(),
            self.revoked_tokens.len(),
        )
    }

    /// The policy deciding for `host`, if any.
    pub(crate) fn policy_for(&self, host: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.hostname.matches(host))
    }

    /// Decides whether a client at `peer` showing `cred` may reach `host`.
    pub fn check(
        &self,
        host: &str,
        kind: HostKind,
        peer: IpAddr,
        cred: &AccessCredential,
        keys: &[[u8; 32]],
        now: u64,
    ) -> Result<Identity, Denied> {
        let anonymous = Identity {
            who: "anonymous".into(),
            how: "public",
        };
        let Some(policy) = self.policy_for(host) else {
            return match kind {
                HostKind::Http => Ok(anonymous),
                HostKind::Stream => Err(forbidden(format!(
                    "{host} is a TCP service without an access policy on this edge, so it is \
                     closed; the edge operator opens it with an `access:` entry in edge.yml"
                ))),
            };
        };
        let peer = canonical(peer);
        if !policy.ip_allow.is_empty() && !any_contains(&policy.ip_allow, peer) {
            return Err(forbidden(format!(
                "your address {peer} is not in the allow-list for {host}"
            )));
        }
        let outcome = match cred {
            AccessCredential::None => Err(unauthorized(format!(
                "{host} requires {}; none was presented",
                requirement(&policy.allow)
            ))),
            AccessCredential::Token(t) => self.check_token(policy, host, t, keys, now),
            AccessCredential::Service { id, secret } => {
                self.check_service(policy, host, id, secret)
            }
        };
        match outcome {
            Err(_) if policy.allow.contains(&Method::Public) => Ok(anonymous),
            other => other,
        }
    }

    fn check_token(
        &self,
        policy: &Policy,
        host: &str,
        token: &str,
        keys: &[[u8; 32]],
        now: u64,
    ) -> Result<Identity, Denied> {
        let claims = verify_access(token, keys, now).map_err(|e| {
            unauthorized(match e {
                TokenError::WrongKind(..) => {
                    "a tunnel token is not an access token: ask the edge operator for one \
                     (`mailslot-edge access-token`)"
                        .into()
                }
                TokenError::Expired(secs) => {
                    format!("the access token expired {secs} seconds ago: get a new one")
                }
                TokenError::BadSignature => {
                    "the access token's signature is not valid for this edge".into()
                }
                TokenError::Malformed | TokenError::BadClaims => {
                    "that is not a mailslot access token".into()
                }
            })
        })?;
        let user = claims.user;
        if !self.revoked_tokens.is_empty() {
            let id = access_token_id(token);
            if self.revoked_tokens.contains(&id) {
                return Err(unauthorized(format!(
                    "the access token {} of {user} is revoked on this edge: ask for a new one",
                    crate::util::hex(&id)
                )));
            }
        }
        let covered = |p: &String| HostPattern::parse(p).is_ok_and(|p| p.matches(host));
        if !claims.hosts.iter().any(covered) {
            return Err(forbidden(format!(
                "the access token of {user} does not cover {host} (it covers {})",
                claims.hosts.join(", ")
            )));
        }
        if !policy.allow.contains(&Method::Signed) {
            return Err(forbidden(format!(
                "{host} does not accept signed access tokens"
            )));
        }
        if !policy.users.is_empty() && !policy.users.contains(&user) {
            return Err(forbidden(format!("{user} is not allowed on {host}")));
        }
        Ok(Identity {
            who: user,
            how: "signed token",
        })
    }

    fn check_service(
        &self,
        policy: &Policy,
        host: &str,
        id: &str,
        secret: &str,
    ) -> Result<Identity, Denied> {
        let given = sha256(secret.as_bytes());
        let known = self
            .service_tokens
            .iter()
            .find(|(t, _)| t == id)
            .is_some_and(|(_, digest)| same_digest(digest, &given));
        if !known {
            return Err(unauthorized(format!(
                "service token {id:?} is unknown or its secret is wrong"
            )));
        }
        if !policy.allow.contains(&Method::ServiceToken)
            || (!policy.service_tokens.is_empty() && !policy.service_tokens.iter().any(|t| t == id))
        {
            return Err(forbidden(format!(
                "service token {id} is not allowed on {host}"
            )));
        }
        Ok(Identity {
            who: format!("service:{id}"),
            how: "service token",
        })
    }
}

fn requirement(allow: &[Method]) -> &'static str {
    match (
        allow.contains(&Method::Signed),
        allow.contains(&Method::ServiceToken),
    ) {
        (true, true) => "a signed access token or a service token",
        (true, false) => "a signed access token",
        (false, true) => "a service token",
        (false, false) => "credentials",
    }
}

fn read_secret(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_SECRET_LEN as u64 + 2 {
        return Err(format!(
            "{}: a secret file holds one short line",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let s = text.trim().to_string();
    check_secret(&s).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::token;
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn pubkey(k: &Ed25519KeyPair) -> [u8; 32] {
        k.public_key().as_ref().try_into().unwrap()
    }

    #[test]
    fn patterns_with_inner_and_leading_wildcards() {
        let p = HostPattern::parse("ssh.*.Example.com").unwrap();
        assert!(p.matches("ssh.dev42.example.com"));
        assert!(!p.matches("ssh.a.b.example.com"));
        assert!(!p.matches("ssh.example.com"));
        assert!(!p.matches("db.dev42.example.com"));
        let p = HostPattern::parse("*.dev42.example.com").unwrap();
        assert!(p.matches("ssh.dev42.example.com"));
        assert!(p.matches("a.b.dev42.example.com"));
        assert!(!p.matches("dev42.example.com"));
        assert!(!p.matches("xdev42.example.com"));
        assert!(HostPattern::parse("*").unwrap().matches("anything.example"));
        assert!(HostPattern::parse("a..b").is_err());
        assert!(HostPattern::parse("a.b*.c").is_err());
        assert!(!HostPattern::parse("a.*.c").unwrap().matches("a..c"));
        assert!(HostPattern::parse("a_b.example.com").is_err());
    }

    fn policy(yaml_allow: &[Method], users: &[&str], ip: &[&str]) -> AccessPolicy {
        AccessPolicy {
            policies: vec![Policy {
                hostname: HostPattern::parse("ssh.*.example.com").unwrap(),
                allow: yaml_allow.to_vec(),
                users: users.iter().map(|s| s.to_string()).collect(),
                service_tokens: Vec::new(),
                ip_allow: ip.iter().map(|s| Cidr::parse(s).unwrap()).collect(),
            }],
            service_tokens: vec![("ci".into(), sha256(b"0123456789abcdef"))],
            revoked_tokens: Default::default(),
        }
    }

    const HOST: &str = "ssh.dev42.example.com";

    #[test]
    fn defaults_close_streams_and_open_http() {
        let p = AccessPolicy::default();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let none = AccessCredential::None;
        assert!(p
            .check("web.example.com", HostKind::Http, lo, &none, &[], 0)
            .is_ok());
        let e = p
            .check("db.example.com", HostKind::Stream, lo, &none, &[], 0)
            .unwrap_err();
        assert_eq!(e.error, AccessError::Forbidden);
        assert!(e.message.contains("closed"), "{}", e.message);
    }

    #[test]
    fn signed_tokens_are_checked_for_kind_expiry_host_and_user() {
        let k = key();
        let keys = [pubkey(&k)];
        let p = policy(&[Method::Signed], &["alice"], &[]);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let now = 1_000_000;
        let tok = |user: &str, host: &str, expires: u64| {
            AccessCredential::Token(
                sign_access_token(
                    &k,
                    &AccessClaims {
                        user: user.into(),
                        hosts: vec![host.into()],
                        issued: now - 10,
                        expires,
                    },
                )
                .unwrap(),
            )
        };
        let check = |c: &AccessCredential| p.check(HOST, HostKind::Stream, lo, c, &keys, now);
        assert_eq!(
            check(&tok("alice", "ssh.*.example.com", now + 60))
                .unwrap()
                .who,
            "alice"
        );
        let e = check(&tok("alice", HOST, now - 5)).unwrap_err();
        assert_eq!(e.error, AccessError::Unauthorized);
        assert!(e.message.contains("expired 5 seconds"), "{}", e.message);
        let e = check(&tok("alice", "web.dev42.example.com", now + 60)).unwrap_err();
        assert_eq!(e.error, AccessError::Forbidden);
        let e = check(&tok("mallory", HOST, now + 60)).unwrap_err();
        assert_eq!(e.error, AccessError::Forbidden);
        let e = check(&AccessCredential::None).unwrap_err();
        assert_eq!(e.error, AccessError::Unauthorized);
        // A tunnel token signed by the same key is the wrong kind.
        let tunnel = token::sign(
            &k,
            token::TUNNEL_PREFIX,
            &AccessClaims {
                user: "alice".into(),
                hosts: vec![HOST.into()],
                issued: 0,
                expires: u64::MAX,
            },
        )
        .unwrap();
        let e = check(&AccessCredential::Token(tunnel)).unwrap_err();
        assert!(e.message.contains("tunnel token"), "{}", e.message);
        let other_key = [pubkey(&key())];
        let e = p
            .check(
                HOST,
                HostKind::Stream,
                lo,
                &tok("alice", HOST, now + 60),
                &other_key,
                now,
            )
            .unwrap_err();
        assert_eq!(e.error, AccessError::Unauthorized);
    }

    #[test]
    fn revoked_access_tokens_are_refused() {
        let k = key();
        let keys = [pubkey(&k)];
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let sign = |user: &str| {
            sign_access_token(
                &k,
                &AccessClaims {
                    user: user.into(),
                    hosts: vec![HOST.into()],
                    issued: 0,
                    expires: u64::MAX,
                },
            )
            .unwrap()
        };
        let (alice, bob) = (sign("alice"), sign("bob"));
        let mut p = policy(&[Method::Signed], &[], &[]);
        p.revoked_tokens.insert(access_token_id(&alice));
        let check = |t: &str| {
            p.check(
                HOST,
                HostKind::Stream,
                lo,
                &AccessCredential::Token(t.into()),
                &keys,
                1,
            )
        };
        let e = check(&alice).unwrap_err();
        assert_eq!(e.error, AccessError::Unauthorized);
        assert!(e.message.contains("revoked"), "{}", e.message);
        assert_eq!(check(&bob).unwrap().who, "bob");
        // The id ignores the whitespace a token file adds.
        assert_eq!(
            access_token_id(&format!("{alice}\n")),
            access_token_id(&alice)
        );
    }

    #[test]
    fn service_tokens_and_ip_lists() {
        let p = policy(&[Method::ServiceToken], &[], &["10.0.0.0/8"]);
        let inside: IpAddr = "10.1.1.1".parse().unwrap();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        let good = AccessCredential::Service {
            id: "ci".into(),
            secret: "0123456789abcdef".into(),
        };
        let bad = AccessCredential::Service {
            id: "ci".into(),
            secret: "0123456789abcdeX".into(),
        };
        assert_eq!(
            p.check(HOST, HostKind::Stream, inside, &good, &[], 0)
                .unwrap()
                .who,
            "service:ci"
        );
        assert_eq!(
            p.check(HOST, HostKind::Stream, inside, &bad, &[], 0)
                .unwrap_err()
                .error,
            AccessError::Unauthorized
        );
        assert_eq!(
            p.check(HOST, HostKind::Stream, outside, &good, &[], 0)
                .unwrap_err()
                .error,
            AccessError::Forbidden
        );
        let public = policy(&[Method::Public], &[], &[]);
        assert_eq!(
            public
                .check(
                    HOST,
                    HostKind::Stream,
                    outside,
                    &AccessCredential::None,
                    &[],
                    0
                )
                .unwrap()
                .how,
            "public"
        );
    }
}
