//! Tunnel and access tokens, as the edge reads them before anyone is authenticated: a
//! connector's `Register` token (`src/edge/token.rs` `verify_tunnel`) and a client's
//! `Authorization: Bearer` access token (`src/edge/policy.rs` `verify_access`, then
//! `AccessPolicy::check` with a policy that admits signed tokens and service tokens).
//!
//! - Any text ends in claims or an error, never a panic: splitting at the dots, the
//!   length bound, base64 of the payload and of the signature, the Ed25519 check, the
//!   postcard claims, the expiry, the revocation list, the host and user checks.
//! - A token that verifies has one text only: the one the edge's key signed (whitespace
//!   around it aside). Otherwise a revoked token, refused by the id of its text, could
//!   come back under another spelling.
//! - Claims the key did sign reach the claims decoder: the first input byte picks raw
//!   text (even) or a payload the harness signs with the test key (odd), under a prefix
//!   the next byte picks (tunnel, access, or another).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use mailslot::edge::config::EdgeConfig;
use mailslot::edge::policy::{
    access_token_id, sign_access_token, AccessClaims, AccessPolicy, HostKind,
};
use mailslot::edge::token::access::verify_access;
use mailslot::edge::token::{self, TokenError, ACCESS_PREFIX, TUNNEL_PREFIX};
use mailslot::wire::AccessCredential;
use ring::signature::{Ed25519KeyPair, KeyPair};

/// When the harness checks expiry: 2023-11-14, before the seeds' expiry.
const NOW: u64 = 1_700_000_000;

/// The edge's configuration for the policy check: signed tokens for users `ops` and
/// `alice` on `*.example.com`; a service token elsewhere.
const EDGE_YML: &str = r#"
cert: edge.crt
key: edge.key
signing-key: signing.key
service-tokens:
  - { id: ci, secret: "0123456789abcdef0123456789abcdef" }
access:
  - { hostname: "*.example.com", allow: [signed], users: [ops, alice] }
  - { hostname: "db.internal", allow: [service-token, signed] }
revoked-access-tokens: ["00000000000000000000000000000000"]
"#;

struct Edge {
    key: Ed25519KeyPair,
    public: [u8; 32],
    policy: AccessPolicy,
}

fn edge() -> &'static Edge {
    static EDGE: OnceLock<Edge> = OnceLock::new();
    EDGE.get_or_init(|| {
        // A fixed key, so that checked-in seeds hold tokens it signed.
        let key = Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).expect("a valid seed");
        let public = key.public_key().as_ref().try_into().expect("32 bytes");
        let cfg = EdgeConfig::parse(EDGE_YML, Path::new("/nonexistent")).expect("valid edge.yml");
        let policy = AccessPolicy::load(&cfg.access).expect("inline secrets only");
        Edge {
            key,
            public,
            policy,
        }
    })
}

/// Signs `payload` (claims bytes, well-formed or not) as the edge's key would.
fn sign_raw(key: &Ed25519KeyPair, prefix: &str, payload: &[u8]) -> String {
    let signed = format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(payload));
    let sig = key.sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// Every check the edge runs on `text`; `forged` when the harness did not sign it.
fn check(edge: &Edge, text: &str, forged: bool) {
    let keys = [edge.public];
    let tunnel = token::verify_tunnel(text, &keys, NOW);
    if let Ok(claims) = &tunnel {
        assert!(claims.expires > NOW);
        let again = token::sign(&edge.key, TUNNEL_PREFIX, claims).expect("claims encode");
        assert_eq!(
            token::verify_tunnel(&again, &keys, NOW).as_ref(),
            Ok(claims)
        );
        if forged {
            assert_eq!(
                text.trim(),
                again,
                "a tunnel token verifies under another text"
            );
        }
    }
    let access = verify_access(text, &keys, NOW);
    if let Ok(claims) = &access {
        assert!(claims.expires > NOW);
        let again = sign_access_token(&edge.key, claims).expect("claims encode");
        assert_eq!(verify_access(&again, &keys, NOW).as_ref(), Ok(claims));
        if forged {
            assert_eq!(
                text.trim(),
                again,
                "an access token verifies under another text"
            );
            assert_eq!(access_token_id(text), access_token_id(&again));
        }
    }
    assert!(
        tunnel.is_err() || access.is_err(),
        "one text verified as a tunnel token and as an access token"
    );
    // What the gate does with an `Authorization: Bearer` value, for an HTTP hostname
    // with a policy and for a TCP service.
    let cred = AccessCredential::Token(text.to_string());
    let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    for (host, kind) in [
        ("grafana.example.com", HostKind::Http),
        ("db.internal", HostKind::Stream),
    ] {
        let admitted = edge.policy.check(host, kind, peer, &cred, &keys, NOW);
        if admitted.is_ok() {
            let claims = access
                .as_ref()
                .expect("admitted with a token that verifies");
            assert!(claims.user == "ops" || claims.user == "alice" || host == "db.internal");
        }
    }
    let _ = access_token_id(text);
}

fuzz_target!(|data: &[u8]| {
    let edge = edge();
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    if pick & 1 == 0 {
        // Raw text, as a peer sends it.
        let text = String::from_utf8_lossy(rest);
        if text.len() <= 2 * token::MAX_TOKEN_LEN {
            check(edge, &text, true);
        }
        return;
    }
    // Claims the key signed: the payload decoder and the checks after it.
    let Some((&kind, payload)) = rest.split_first() else {
        return;
    };
    let prefix = match kind % 3 {
        0 => TUNNEL_PREFIX,
        1 => ACCESS_PREFIX,
        _ => "msx1",
    };
    let text = sign_raw(&edge.key, prefix, payload);
    check(edge, &text, false);
    if prefix == "msx1" {
        assert!(matches!(
            token::verify_tunnel(&text, &[edge.public], NOW),
            Err(TokenError::Malformed)
        ));
    }
    // The same claims, when they are access claims, signed the usual way.
    if let Ok(claims) = postcard::from_bytes::<AccessClaims>(payload) {
        let text = sign_access_token(&edge.key, &claims).expect("claims encode");
        check(edge, &text, false);
    }
});
