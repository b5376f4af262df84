//! What changes while the edge runs: on SIGHUP `edge.yml` is read again and the parts
//! that can change without dropping a tunnel are swapped in at once.
//!
//! | changes live | read at start only (a change is logged as needing a restart) |
//! |---|---|
//! | `access:`, `service-tokens:` (secret files are read again), `admin-token` (its file is read again), `revoked-access-tokens:`, `revoked-tunnels:`, `signing-key`, `verify-keys`, `cert`/`key`/`certs` (the files are read again) | listeners, `tcp-ports:`, `limits:`, `rate-limits:`, `hosts:`, `trusted-proxies:`, timers, `name`, `workers`, `fleet:`, `acme:` (and the signing key that issues device credentials) |
//!
//! What a reload does to what is already running:
//!
//! - a tunnel newly listed in `revoked-tunnels:` has its connections closed (the
//!   connector is told why) and cannot register again;
//! - every open access stream is checked again against the new policy, with the
//!   credentials it was admitted with and as of the time it was admitted (a token that
//!   expired during a session does not cut it; a removed service token, a user dropped
//!   from `users:`, a revoked token or a narrowed `ip-allow` does);
//! - HTTP requests are checked one by one, so the next request meets the new policy;
//! - TLS handshakes after the reload (visitors, connectors, access clients) get the
//!   certificates read again; connections already up keep theirs.
//!
//! A file that does not load (bad YAML, a missing secret file, an unreadable key) is
//! refused as a whole: the running config stays and the reason is logged.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use super::config::EdgeConfig;
use super::fleet::revoked::RevokedIds;
use super::policy::AccessPolicy;
use super::{init, token, Certs, EdgeState};

/// The part of the edge's config that a reload replaces.
#[derive(Debug, Default)]
pub(crate) struct Live {
    /// Public keys that tunnel and access tokens must verify against.
    pub(crate) verify_keys: Vec<[u8; 32]>,
    /// Tunnel ids refused although their tokens verify.
    pub(crate) revoked: HashSet<[u8; 16]>,
    /// Access policies, service tokens and revoked access tokens.
    pub(crate) policy: AccessPolicy,
    /// 0 at start, then one more per successful reload.
    pub(crate) generation: u64,
}

impl Live {
    /// Reads the key, secret and policy files `cfg` names.
    pub(crate) fn load(cfg: &EdgeConfig) -> Result<Live, String> {
        Ok(Live {
            verify_keys: load_verify_keys(cfg)?,
            revoked: cfg.revoked_tunnels.iter().copied().collect(),
            policy: AccessPolicy::load(&cfg.access)?,
            generation: 0,
        })
    }
}

impl Live {
    /// A copy to change and put in force.
    pub(crate) fn copy(&self) -> Live {
        Live {
            verify_keys: self.verify_keys.clone(),
            revoked: self.revoked.clone(),
            policy: self.policy.clone(),
            generation: self.generation,
        }
    }

    /// Adds the tunnels and access tokens revoked through the fleet store (to those
    /// `edge.yml` lists); how many tunnels and access tokens were not refused before.
    pub(crate) fn add_store_revocations(&mut self, ids: &RevokedIds) -> (usize, usize) {
        let tunnels = ids
            .tunnels
            .iter()
            .filter(|id| self.revoked.insert(**id))
            .count();
        (tunnels, self.policy.revoke_tokens(&ids.access_tokens))
    }
}

/// Puts the revocations made through the fleet store in force as they come (one edge's
/// admin API, or another edge's through Redis): tunnels newly revoked have their
/// connections closed, access sessions opened with a newly revoked token are cut (as a
/// reload does). Runs until `ids` closes.
pub(crate) async fn enforce_store_revocations(
    state: Arc<EdgeState>,
    mut ids: tokio::sync::watch::Receiver<Arc<RevokedIds>>,
) {
    loop {
        let now = ids.borrow_and_update().clone();
        let mut added = (0, 0);
        state.live.send_if_modified(|live| {
            let mut next = live.copy();
            added = next.add_store_revocations(&now);
            if added == (0, 0) {
                return false;
            }
            *live = Arc::new(next);
            true
        });
        if added != (0, 0) {
            log::info!(
                "edge {}: revoked through the fleet store, now in force: {} tunnels, {} access \
                 tokens",
                state.name,
                added.0,
                added.1
            );
        }
        if ids.changed().await.is_err() {
            return;
        }
    }
}

/// The public keys tokens are checked against: the signing key's, then `verify-keys`.
pub(crate) fn load_verify_keys(cfg: &EdgeConfig) -> Result<Vec<[u8; 32]>, String> {
    let mut keys = Vec::new();
    if let Some(path) = &cfg.signing_key {
        keys.push(init::public_key_of(&init::load_signing_key(path)?));
    }
    for path in &cfg.verify_keys {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        keys.push(token::parse_public_key(&text).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    Ok(keys)
}

/// Reloads `edge.yml` into a running edge (`mailslot-edge serve` calls it on SIGHUP).
pub struct Reloader {
    state: Arc<EdgeState>,
    path: PathBuf,
    /// The config whose restart-only parts are in force.
    running: EdgeConfig,
}

impl Reloader {
    pub(super) fn new(state: Arc<EdgeState>, path: PathBuf, running: EdgeConfig) -> Reloader {
        Reloader {
            state,
            path,
            running,
        }
    }

    /// Reads the file again and puts its live parts in force; logs what changed. On
    /// `Err` nothing changed.
    pub fn reload(&mut self) -> Result<(), String> {
        let cfg = EdgeConfig::load(&self.path)?;
        let mut live = Live::load(&cfg).map_err(|e| format!("{}: {e}", self.path.display()))?;
        if let Some(inventory) = self.state.fleet.get() {
            live.add_store_revocations(&inventory.revoked_ids());
        }
        let certs = Certs::load(&cfg)?;
        let old = self.state.live();
        live.generation = old.generation + 1;
        let newly_revoked = live
            .revoked
            .iter()
            .filter(|id| !old.revoked.contains(*id))
            .count();
        let (policies, service_tokens, revoked_tokens) = live.policy.counts();
        log::info!(
            "edge {}: {} reloaded (generation {}): {policies} access policies, \
             {service_tokens} service tokens, {revoked_tokens} revoked access tokens, \
             {} revoked tunnels ({newly_revoked} new), {} verify keys, {} certificates",
            self.state.name,
            self.path.display(),
            live.generation,
            live.revoked.len(),
            live.verify_keys.len(),
            1 + certs.others.len(),
        );
        self.state.live.send_replace(Arc::new(live));
        let admin_off_loopback = self
            .running
            .admin_listen
            .is_some_and(|a| !a.ip().is_loopback());
        if cfg.admin_token.is_none() && admin_off_loopback {
            // The listener stays where it was started: it keeps its token.
            log::warn!(
                "edge {}: admin-token removed, but the admin listener is not on loopback: \
                 the running token stays until a restart",
                self.state.name
            );
        } else {
            self.state.admin_token.send_replace(cfg.admin_token.clone());
        }
        self.state.certs.send_replace(Some(Arc::new(certs)));
        let changed: Vec<&str> = restart_only(&self.running)
            .into_iter()
            .zip(restart_only(&cfg))
            .filter(|(a, b)| a != b)
            .map(|((key, _), _)| key)
            .collect();
        if !changed.is_empty() {
            log::warn!(
                "edge {}: {} changed in {} but take effect only at a restart; they stay as \
                 they were",
                self.state.name,
                changed.join(", "),
                self.path.display()
            );
        }
        Ok(())
    }
}

/// The settings a reload cannot change, each with a text to compare.
fn restart_only(c: &EdgeConfig) -> Vec<(&'static str, String)> {
    let s = &c.shield;
    vec![
        ("name", c.name.clone()),
        ("tunnel-listen", format!("{:?}", c.tunnel_listen)),
        ("http-listen", format!("{:?}", c.http_listen)),
        ("https-listen", format!("{:?}", c.https_listen)),
        ("admin-listen", format!("{:?}", c.admin_listen)),
        ("keepalive", format!("{:?}", c.keepalive)),
        ("idle-timeout", format!("{:?}", c.idle_timeout)),
        (
            "origin-response-timeout",
            format!("{:?}", c.origin_response_timeout),
        ),
        ("tcp-ports", format!("{:?}", c.access.tcp_ports)),
        ("limits", format!("{:?}", s.limits)),
        ("rate-limits", format!("{:?}", s.rates)),
        ("hosts", format!("{:?}", s.hosts)),
        ("trusted-proxies", format!("{:?}", s.trusted_proxies)),
        ("fleet", format!("{:?}", c.fleet)),
        ("acme", format!("{:?}", c.acme)),
        ("workers", format!("{:?}", c.workers)),
    ]
}
