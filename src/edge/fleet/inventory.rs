//! The inventory: every device this edge knows, as records (kept in the [`Store`]) and
//! what the registry says of it now (online, connections, protocol, round trip).
//!
//! [`DeviceView`] is what every reader gets: the admin API (`/api/v1/devices`), the
//! `devices` commands, the fleet page and the per-fleet metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{DeviceRecord, Store};
use crate::edge::registry::{Conn, Registry};
use crate::util::lock;

/// One live connection of a device, as the registry sees it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnView {
    /// `quic` or `http2`.
    pub protocol: String,
    /// The address the connection comes from now (after NAT rebinding, the new one).
    pub address: String,
    /// Smoothed round-trip time, milliseconds.
    pub rtt_ms: u32,
}

impl ConnView {
    fn of(conn: &Conn) -> ConnView {
        ConnView {
            protocol: conn.session.protocol().to_string(),
            address: conn.session.remote_addr().to_string(),
            rtt_ms: u32::try_from(conn.session.rtt().as_millis()).unwrap_or(u32::MAX),
        }
    }
}

/// A device as the readers of the inventory see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    #[serde(flatten)]
    pub record: DeviceRecord,
    /// At least one connection registered now.
    pub online: bool,
    pub connections: Vec<ConnView>,
}

/// Every device this edge knows: the records in memory (loaded from the store at start,
/// written through to it), joined with the registry's live connections when read.
pub struct Inventory {
    records: Mutex<HashMap<String, DeviceRecord>>,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
}

impl Inventory {
    /// The inventory of the records in `store`.
    pub fn load(store: Arc<dyn Store>, registry: Arc<Registry>) -> Result<Inventory, String> {
        let records = store
            .list()
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|r| (r.id.clone(), r))
            .collect();
        Ok(Inventory {
            records: Mutex::new(records),
            store,
            registry,
        })
    }

    /// The store behind the inventory.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Every device, ordered by id.
    pub fn list(&self) -> Vec<DeviceView> {
        let records: Vec<DeviceRecord> = lock(&self.records).values().cloned().collect();
        let mut live = self.live_conns();
        let mut out: Vec<DeviceView> = records
            .into_iter()
            .map(|record| {
                let tunnel = crate::identity::tunnel_id(&record.public_key);
                let connections = live.remove(&tunnel).unwrap_or_default();
                DeviceView {
                    online: !connections.is_empty(),
                    record,
                    connections,
                }
            })
            .collect();
        out.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        out
    }

    /// One device.
    pub fn get(&self, id: &str) -> Option<DeviceView> {
        let record = lock(&self.records).get(id).cloned()?;
        let tunnel = crate::identity::tunnel_id(&record.public_key);
        let connections: Vec<ConnView> = self
            .registry
            .all_conns()
            .iter()
            .filter(|c| c.tunnel_id == tunnel)
            .map(|c| ConnView::of(c))
            .collect();
        Some(DeviceView {
            online: !connections.is_empty(),
            record,
            connections,
        })
    }

    /// Revokes a device for good: recorded in the store first, then its connections are
    /// closed at once. `Ok(false)` when no such device is known.
    pub async fn revoke(&self, id: &str) -> Result<bool, String> {
        let now = crate::edge::token::now_unix();
        let store = self.store.clone();
        let owned = id.to_string();
        let found = tokio::task::spawn_blocking(move || store.revoke(&owned, now))
            .await
            .map_err(|e| format!("fleet store: {e}"))?
            .map_err(|e| e.to_string())?;
        if !found {
            return Ok(false);
        }
        let key = {
            let mut records = lock(&self.records);
            let Some(r) = records.get_mut(id) else {
                return Ok(true);
            };
            r.revoked.get_or_insert(now);
            r.public_key
        };
        let tunnel = crate::identity::tunnel_id(&key);
        for c in self.registry.all_conns() {
            if c.tunnel_id == tunnel {
                c.session.close(&format!("device {id} is revoked"));
            }
        }
        Ok(true)
    }

    /// Live connections by tunnel id.
    fn live_conns(&self) -> HashMap<[u8; 16], Vec<ConnView>> {
        let mut by_tunnel: HashMap<[u8; 16], Vec<ConnView>> = HashMap::new();
        for c in self.registry.all_conns() {
            by_tunnel
                .entry(c.tunnel_id)
                .or_default()
                .push(ConnView::of(&c));
        }
        by_tunnel
    }
}
