//! Tunnels and access tokens revoked through the running edge
//! (`mailslot-edge revoke tunnel|access-token ID`, `POST /api/v1/tunnels/ID/revoke`,
//! `POST /api/v1/access-tokens/ID/revoke`), kept in the fleet's [`Store`](super::Store):
//! the embedded file on one edge, Redis in a cluster, where a revocation made at one
//! edge is published to the others and enforced by all of them within a round trip.
//!
//! They add to the `revoked-tunnels:` and `revoked-access-tokens:` lists of `edge.yml`
//! (which keep working): the edge enforces the union. A revocation is for good: a
//! tunnel or an access token is replaced by issuing a new one, which has a new id.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

/// Most revoked ids of each kind the store keeps: a revocation beyond it is refused
/// (the same bound as each list of `edge.yml`). At 16 bytes an id, both sets stay under
/// 4 MiB in memory.
pub const MAX_REVOKED_IDS: usize = 65_536;

/// Published on the cluster's changes channel (where device ids are published) when a
/// tunnel or access token is revoked: the edges read the revocations again. Device ids
/// are hex, so it is never one.
pub const CHANGED_MARK: &str = "~revoked";

/// What a revoked id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RevokedKind {
    /// A tunnel (the id `mailslot-edge token` printed): its connections are closed and
    /// it cannot register again.
    Tunnel,
    /// An access token (`mailslot-edge access-token`): refused from now on, and the
    /// access sessions it opened are cut.
    AccessToken,
}

impl RevokedKind {
    /// The word for it in commands, API paths and store keys.
    pub fn word(self) -> &'static str {
        match self {
            RevokedKind::Tunnel => "tunnel",
            RevokedKind::AccessToken => "access-token",
        }
    }

    /// The kind a word names.
    pub fn of_word(word: &str) -> Option<RevokedKind> {
        match word {
            "tunnel" | "tunnels" => Some(RevokedKind::Tunnel),
            "access-token" | "access-tokens" => Some(RevokedKind::AccessToken),
            _ => None,
        }
    }
}

/// One revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedId {
    pub kind: RevokedKind,
    pub id: [u8; 16],
    /// When it was revoked, Unix seconds (the first revocation's time stays).
    pub at: u64,
}

impl RevokedId {
    /// Its key in the store: `tunnel:<hex id>` or `access-token:<hex id>`.
    pub fn key(&self) -> String {
        key_of(self.kind, &self.id)
    }

    /// The revocation a store key and time describe; `None` for a key that is not one.
    pub fn of_key(key: &str, at: u64) -> Option<RevokedId> {
        let (word, hex) = key.split_once(':')?;
        Some(RevokedId {
            kind: RevokedKind::of_word(word)?,
            id: parse_id(hex)?,
            at,
        })
    }
}

/// The store key of an id of `kind`.
pub fn key_of(kind: RevokedKind, id: &[u8; 16]) -> String {
    format!("{}:{}", kind.word(), crate::util::hex(id))
}

/// A 16-byte id written as 32 hex digits.
pub fn parse_id(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

/// The ids revoked through the store, by kind, as the edge enforces them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokedIds {
    pub tunnels: HashSet<[u8; 16]>,
    pub access_tokens: HashSet<[u8; 16]>,
}

impl RevokedIds {
    /// The sets of a list read from the store.
    pub fn of(list: &[RevokedId]) -> RevokedIds {
        let mut ids = RevokedIds::default();
        for r in list {
            ids.insert(r.kind, r.id);
        }
        ids
    }

    /// Adds one; `false` when it was there already.
    pub fn insert(&mut self, kind: RevokedKind, id: [u8; 16]) -> bool {
        match kind {
            RevokedKind::Tunnel => self.tunnels.insert(id),
            RevokedKind::AccessToken => self.access_tokens.insert(id),
        }
    }

    /// How many of each kind: tunnels, access tokens.
    pub fn counts(&self) -> (usize, usize) {
        (self.tunnels.len(), self.access_tokens.len())
    }
}

/// A revocation as the admin API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationJson {
    /// `tunnel` or `access-token`.
    pub kind: String,
    /// 32 hex digits.
    pub id: String,
    /// When it was revoked, Unix seconds.
    pub at: u64,
    /// `false` when it had been revoked before (the earlier time stays in the list).
    #[serde(default = "yes")]
    pub new: bool,
}

fn yes() -> bool {
    true
}

impl RevocationJson {
    fn of(r: &RevokedId, new: bool) -> RevocationJson {
        RevocationJson {
            kind: r.kind.word().into(),
            id: crate::util::hex(&r.id),
            at: r.at,
            new,
        }
    }
}

/// `POST /api/v1/tunnels/ID/revoke` and `POST /api/v1/access-tokens/ID/revoke`.
pub(crate) async fn revoke(
    inv: &super::Inventory,
    kind: RevokedKind,
    id: &str,
) -> Result<RevocationJson, (u16, String)> {
    let Some(bytes) = parse_id(id) else {
        return Err((
            400,
            format!(
                "{:?} is not a {} id (32 hex digits)",
                crate::wire::bounded_reason(id),
                kind.word()
            ),
        ));
    };
    match inv.revoke_id(kind, bytes).await {
        Ok((new, written)) => {
            let at = if new {
                log::info!("{} {id} revoked through the admin API", kind.word());
                written
            } else {
                // Revoked before: the first time stays, as the store keeps it.
                inv.list_revoked()
                    .await
                    .ok()
                    .and_then(|l| {
                        l.iter()
                            .find(|r| r.kind == kind && r.id == bytes)
                            .map(|r| r.at)
                    })
                    .unwrap_or(written)
            };
            let r = RevokedId {
                kind,
                id: bytes,
                at,
            };
            Ok(RevocationJson::of(&r, new))
        }
        Err(e) => {
            log::error!("{} {id} not revoked: {e}", kind.word());
            Err((500, format!("not revoked: {e}")))
        }
    }
}

/// `GET /api/v1/revocations`: every tunnel and access token revoked through the store,
/// oldest first (`edge.yml`'s own lists are not in it).
pub(crate) async fn list(inv: &super::Inventory) -> Result<Vec<RevocationJson>, (u16, String)> {
    let list = inv.list_revoked().await.map_err(|e| (500, e))?;
    Ok(list.iter().map(|r| RevocationJson::of(r, true)).collect())
}

/// The store behaviour every implementation shows, run over redb and Redis.
#[cfg(test)]
pub(crate) mod suite {
    use super::*;
    use crate::edge::fleet::Store;

    fn revoked(kind: RevokedKind, n: u8, at: u64) -> RevokedId {
        RevokedId {
            kind,
            id: [n; 16],
            at,
        }
    }

    /// Revocations are kept, listed, idempotent (the first time stays), and of two kinds
    /// that do not mix.
    pub(crate) fn revocations_are_kept_once(store: &dyn Store) {
        assert!(store.revoked_ids().unwrap().is_empty());
        assert!(store
            .revoke_id(&revoked(RevokedKind::Tunnel, 1, 100))
            .unwrap());
        assert!(!store
            .revoke_id(&revoked(RevokedKind::Tunnel, 1, 200))
            .unwrap());
        assert!(store
            .revoke_id(&revoked(RevokedKind::AccessToken, 1, 300))
            .unwrap());
        let mut list = store.revoked_ids().unwrap();
        list.sort_by_key(|r| r.at);
        assert_eq!(
            list,
            vec![
                revoked(RevokedKind::Tunnel, 1, 100),
                revoked(RevokedKind::AccessToken, 1, 300)
            ]
        );
        let ids = RevokedIds::of(&list);
        assert!(ids.tunnels.contains(&[1; 16]));
        assert!(ids.access_tokens.contains(&[1; 16]));
        assert_eq!(ids.counts(), (1, 1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_ones_are_refused() {
        let r = RevokedId {
            kind: RevokedKind::AccessToken,
            id: [0xab; 16],
            at: 7,
        };
        assert_eq!(r.key(), format!("access-token:{}", "ab".repeat(16)));
        assert_eq!(RevokedId::of_key(&r.key(), 7), Some(r));
        for bad in [
            "tunnel:abc",
            "user:abababababababababababababababab",
            "tunnel",
            "tunnel:zzababababababababababababababab",
            "tunnel:éabababababababababababababababa",
        ] {
            assert_eq!(RevokedId::of_key(bad, 1), None, "{bad}");
        }
    }
}
