//! The inventory: every device this edge knows, as records (kept in the [`Store`]) and
//! what the registry says of it now (online, connections, protocol, round trip).
//!
//! Registrations, health reports and disconnections change the records in memory and
//! mark them changed; a writer task ([`Inventory::spawn_writer`]) writes the changed
//! ones to the store in one batch every [`WRITE_EVERY`]. Enrolment and revocation go
//! to the store at once.
//!
//! [`DeviceView`] is what every reader gets: the admin API (`/api/v1/devices`), the
//! `devices` commands, the fleet page and the per-fleet metrics.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::revoked::{RevokedId, RevokedIds, RevokedKind, CHANGED_MARK};
use super::rollout::{Rollouts, SWEEP_EVERY};
use super::{DeviceRecord, Enrolled, Store};
use crate::edge::registry::{Conn, Registry};
use crate::util::lock;

/// How often changed records are written to the store.
pub const WRITE_EVERY: Duration = Duration::from_secs(3);

/// `new` as the latest registration tells it, onto `old`: what the device said and its
/// grant; first seen, enrolment, health and revocation stay.
fn merge(old: &mut DeviceRecord, new: &DeviceRecord) {
    old.name.clone_from(&new.name);
    old.fleet.clone_from(&new.fleet);
    old.key_id = new.key_id;
    old.hostnames.clone_from(&new.hostnames);
    old.version.clone_from(&new.version);
    old.arch.clone_from(&new.arch);
    old.board.clone_from(&new.board);
    old.config_digest.clone_from(&new.config_digest);
    old.address.clone_from(&new.address);
    old.last_seen = old.last_seen.max(new.last_seen);
    old.credential_expires = new.credential_expires;
}

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
    /// The device's last remote change of each kind (as this edge last read them).
    #[serde(skip)]
    pub changes: Vec<super::ChangeRecord>,
}

/// Every device this edge knows: the records in memory (loaded from the store at start,
/// written through to it), joined with the registry's live connections when read.
///
/// Bounds: `records` holds at most what the store holds (`store::MAX_DEVICES` for the
/// embedded one); `changed` names at most every record once.
pub struct Inventory {
    records: Mutex<HashMap<String, DeviceRecord>>,
    /// Ids of records changed in memory since the writer last wrote them.
    changed: Mutex<HashSet<String>>,
    /// Held while a batch is written.
    writing: Mutex<()>,
    /// What each device connection had been heard from ([`Conn::heard`]) when the
    /// writer last looked, and when it last changed (Unix seconds): a connection that
    /// ends tells from it when its device was last heard, whatever ended it. One entry
    /// per registered device connection (bounded by the registry), removed when it ends.
    heard: Mutex<HashMap<usize, Heard>>,
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    /// Remote changes on their way to devices.
    rollouts: Rollouts,
    /// The tunnels and access tokens revoked through the store (bounded by
    /// `revoked::MAX_REVOKED_IDS` of each kind); the edge enforces them with
    /// `edge.yml`'s lists.
    revoked: tokio::sync::watch::Sender<Arc<RevokedIds>>,
}

/// A device connection's traffic count when last looked at, and when it last grew.
#[derive(Clone, Copy)]
struct Heard {
    count: u64,
    at: u64,
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
        let revoked = RevokedIds::of(&store.revoked_ids().map_err(|e| e.to_string())?);
        let rollouts = Rollouts::new(store.clone());
        rollouts.load_cache();
        Ok(Inventory {
            revoked: tokio::sync::watch::channel(Arc::new(revoked)).0,
            records: Mutex::new(records),
            changed: Mutex::default(),
            writing: Mutex::default(),
            heard: Mutex::default(),
            rollouts,
            store,
            registry,
        })
    }

    /// The store behind the inventory.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The rollout engine of remote changes.
    pub fn rollouts(&self) -> &Rollouts {
        &self.rollouts
    }

    /// A device reported the digest of the config in force (a change report).
    pub(crate) fn config_digest(&self, id: &str, digest: &[u8; 8]) {
        if let Some(r) = lock(&self.records).get_mut(id) {
            r.config_digest = crate::util::hex(digest);
        }
        self.mark(id);
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
                    changes: self.rollouts.cached(&record.id),
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
            .tunnel_conns(&tunnel)
            .iter()
            .map(|c| ConnView::of(c))
            .collect();
        Some(DeviceView {
            online: !connections.is_empty(),
            changes: self.rollouts.cached(&record.id),
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
        self.cut(id, &key);
        Ok(true)
    }

    /// Closes every connection of the device with public key `key`: it is revoked.
    fn cut(&self, id: &str, key: &[u8; 32]) -> usize {
        let tunnel = crate::identity::tunnel_id(key);
        let conns = self.registry.tunnel_conns(&tunnel);
        for c in &conns {
            c.session.close(&format!("device {id} is revoked"));
        }
        conns.len()
    }

    /// What another edge sharing the store recorded (`edge::cluster`): a device this
    /// edge did not know is added; a revocation is taken over, and the device's
    /// connections here are closed at once. What this edge holds of a known device
    /// otherwise stays (its own last seen, health and address are newer).
    pub(crate) fn learn(&self, record: DeviceRecord) {
        let id = record.id.clone();
        let newly_revoked = {
            let mut records = lock(&self.records);
            match records.get_mut(&id) {
                Some(old) => match (old.revoked, record.revoked) {
                    (None, Some(at)) => {
                        old.revoked = Some(at);
                        Some(old.public_key)
                    }
                    _ => None,
                },
                None => {
                    let revoked = record.revoked.map(|_| record.public_key);
                    records.insert(id.clone(), record);
                    revoked
                }
            }
        };
        if let Some(key) = newly_revoked {
            let cut = self.cut(&id, &key);
            log::info!("fleet: device {id} was revoked at another edge; {cut} connections cut");
        }
    }

    /// The tunnels and access tokens revoked through the store, as known now.
    pub fn revoked_ids(&self) -> Arc<RevokedIds> {
        self.revoked.borrow().clone()
    }

    /// Follows [`Inventory::revoked_ids`] as it grows.
    pub(crate) fn watch_revoked(&self) -> tokio::sync::watch::Receiver<Arc<RevokedIds>> {
        self.revoked.subscribe()
    }

    /// Revokes a tunnel or an access token in the store at once (in a cluster the other
    /// edges are told), then here; whether it is new (`false`: revoked already), and the
    /// time a new one was written with.
    pub(crate) async fn revoke_id(
        &self,
        kind: RevokedKind,
        id: [u8; 16],
    ) -> Result<(bool, u64), String> {
        let store = self.store.clone();
        let revoked = RevokedId {
            kind,
            id,
            at: crate::edge::token::now_unix(),
        };
        let new = tokio::task::spawn_blocking(move || store.revoke_id(&revoked))
            .await
            .map_err(|e| format!("fleet store: {e}"))?
            .map_err(|e| e.to_string())?;
        self.learn_revoked(&[revoked]);
        Ok((new, revoked.at))
    }

    /// Every revocation in the store, oldest first.
    pub(crate) async fn list_revoked(&self) -> Result<Vec<RevokedId>, String> {
        let store = self.store.clone();
        let mut list = tokio::task::spawn_blocking(move || store.revoked_ids())
            .await
            .map_err(|e| format!("fleet store: {e}"))?
            .map_err(|e| e.to_string())?;
        list.sort_by_key(|r| (r.at, r.kind.word(), r.id));
        Ok(list)
    }

    /// Reads the revocations from the store again and enforces the new ones.
    async fn reload_revoked(&self) -> Result<(), String> {
        let list = self.list_revoked().await?;
        self.learn_revoked(&list);
        Ok(())
    }

    /// Adds revocations to those enforced. A revocation is for good: one missing from
    /// the store (a Redis that lost its data) stays enforced here.
    fn learn_revoked(&self, list: &[RevokedId]) {
        self.revoked.send_if_modified(|ids| {
            let fresh: Vec<&RevokedId> = list
                .iter()
                .filter(|r| match r.kind {
                    RevokedKind::Tunnel => !ids.tunnels.contains(&r.id),
                    RevokedKind::AccessToken => !ids.access_tokens.contains(&r.id),
                })
                .collect();
            if fresh.is_empty() {
                return false;
            }
            let next = Arc::make_mut(ids);
            for r in fresh {
                next.insert(r.kind, r.id);
            }
            true
        });
    }

    /// Reads the records of `ids` from the store and [`learn`](Self::learn)s them
    /// ([`CHANGED_MARK`] among them: the revocations too).
    pub(crate) async fn refresh(&self, mut ids: Vec<String>) -> Result<(), String> {
        let before = ids.len();
        ids.retain(|id| id != CHANGED_MARK);
        if ids.len() != before {
            self.reload_revoked().await?;
        }
        let store = self.store.clone();
        let records = tokio::task::spawn_blocking(move || {
            ids.iter()
                .filter_map(|id| store.get(id).transpose())
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| format!("fleet store: {e}"))?
        .map_err(|e| e.to_string())?;
        for r in records {
            self.learn(r);
        }
        Ok(())
    }

    /// Reads every record from the store and [`learn`](Self::learn)s them (after
    /// changes may have been missed); how many there are.
    pub(crate) async fn resync(&self) -> Result<usize, String> {
        let store = self.store.clone();
        let records = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| format!("fleet store: {e}"))?
            .map_err(|e| e.to_string())?;
        let n = records.len();
        for r in records {
            self.learn(r);
        }
        self.reload_revoked().await?;
        Ok(n)
    }

    /// Whether the device is revoked here.
    pub(crate) fn is_revoked(&self, id: &str) -> bool {
        lock(&self.records)
            .get(id)
            .is_some_and(|r| r.revoked.is_some())
    }

    /// Enrols a device (or records again one enrolled before) in the store at once,
    /// then in memory.
    pub(crate) async fn enroll(
        &self,
        record: &DeviceRecord,
        max_devices: Option<u32>,
    ) -> Result<Enrolled, String> {
        let store = self.store.clone();
        let owned = record.clone();
        let enrolled = tokio::task::spawn_blocking(move || store.enroll(&owned, max_devices))
            .await
            .map_err(|e| format!("fleet store: {e}"))?
            .map_err(|e| e.to_string())?;
        if matches!(enrolled, Enrolled::New | Enrolled::Again) {
            let mut records = lock(&self.records);
            match records.get_mut(&record.id) {
                Some(old) => merge(old, record),
                None => {
                    records.insert(record.id.clone(), record.clone());
                }
            }
        }
        Ok(enrolled)
    }

    /// A known device registered a connection: what it said of itself and its grant
    /// replace the record's (first seen, enrolment, health and revocation stay).
    /// `false` when the device is not known.
    pub(crate) fn connected(&self, record: &DeviceRecord) -> bool {
        let mut records = lock(&self.records);
        let Some(old) = records.get_mut(&record.id) else {
            return false;
        };
        merge(old, record);
        drop(records);
        self.mark(&record.id);
        true
    }

    /// Notes which device connections were heard from since the last look: called
    /// every [`WRITE_EVERY`] by the writer, so a last-heard time is at most that late.
    pub(crate) fn observe(&self) {
        let now = crate::edge::token::now_unix();
        let conns: Vec<(usize, u64)> = self
            .registry
            .all_conns()
            .iter()
            .filter(|c| c.device.is_some())
            .map(|c| (c.session.id(), c.heard()))
            .collect();
        let mut heard = lock(&self.heard);
        let mut next = HashMap::with_capacity(conns.len());
        for (id, count) in conns {
            let seen = match heard.remove(&id) {
                Some(h) if h.count == count => h,
                _ => Heard { count, at: now },
            };
            next.insert(id, seen);
        }
        *heard = next;
    }

    /// When the device of `conn`, which has just ended, was last heard from (Unix
    /// seconds): now if it was heard since the last look, else when it last was.
    fn last_heard(&self, conn: &Conn) -> u64 {
        let now = crate::edge::token::now_unix();
        match lock(&self.heard).remove(&conn.session.id()) {
            Some(h) if h.count == conn.heard() => h.at,
            _ => now,
        }
    }

    /// A device's connection ended; when it was its last, the device was last seen
    /// when that connection was last heard from.
    pub(crate) fn disconnected(&self, id: &str, conn: &Conn) {
        self.disconnected_at(id, self.last_heard(conn));
    }

    /// A device's connection ended; when it was its last, the device was last seen at
    /// `last_heard` (Unix seconds).
    fn disconnected_at(&self, id: &str, last_heard: u64) {
        let Some(key) = lock(&self.records).get(id).map(|r| r.public_key) else {
            return;
        };
        if self.registry.holds(&crate::identity::tunnel_id(&key)) {
            return;
        }
        if let Some(r) = lock(&self.records).get_mut(id) {
            r.last_seen = r.last_seen.max(last_heard);
        }
        self.mark(id);
    }

    /// A device's health report, kept with the time it came, and its cost tail (none
    /// from a connector that predates it: then none is shown).
    pub(crate) fn health(
        &self,
        id: &str,
        mut health: crate::wire::Health,
        cost: Option<crate::wire::HealthCostTail>,
    ) {
        health.last_error = health.last_error.map(crate::wire::bounded_reason);
        let now = crate::edge::token::now_unix();
        if let Some(r) = lock(&self.records).get_mut(id) {
            r.health = Some(health);
            r.health_cost = cost;
            r.health_at = now;
            r.last_seen = now;
        }
        self.mark(id);
    }

    /// A device got a renewed credential that expires at `expires`.
    pub(crate) fn renewed(&self, id: &str, expires: u64) {
        if let Some(r) = lock(&self.records).get_mut(id) {
            r.credential_expires = expires;
            r.last_seen = crate::edge::token::now_unix();
        }
        self.mark(id);
    }

    fn mark(&self, id: &str) {
        lock(&self.changed).insert(id.to_string());
    }

    /// Writes the records changed since the last write to the store, in one batch.
    /// Batches are written one at a time and in order, on a blocking thread that
    /// finishes its batch even when the task that asked for it is dropped (the writer
    /// task at shutdown), so a later batch never lands before an earlier one.
    pub async fn flush(self: &Arc<Self>) -> Result<(), String> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.write_changed())
            .await
            .map_err(|e| format!("fleet store: {e}"))?
    }

    fn write_changed(&self) -> Result<(), String> {
        let _one_at_a_time = lock(&self.writing);
        let ids: Vec<String> = lock(&self.changed).drain().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let batch: Vec<DeviceRecord> = {
            let records = lock(&self.records);
            ids.iter()
                .filter_map(|id| records.get(id).cloned())
                .collect()
        };
        let written = self.store.update(&batch).map_err(|e| e.to_string());
        if written.is_err() {
            // Written with the next batch.
            lock(&self.changed).extend(ids);
        }
        written
    }

    /// Writes changed records every [`WRITE_EVERY`], and carries running rollouts on
    /// every [`SWEEP_EVERY`], until the task is dropped.
    pub fn spawn_writer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let sweeper = self.clone();
        let sweep = async move {
            let mut tick = tokio::time::interval(SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                match sweeper.rollouts.sweep().await {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        log::error!("fleet: rollouts not carried on, trying again: {e}");
                    }
                    Err(_) => {}
                }
            }
        };
        let write = async move {
            let mut tick = tokio::time::interval(WRITE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Logged once per outage of the store (a shared Redis down), not every tick.
            let mut failing = false;
            loop {
                tick.tick().await;
                me.observe();
                match me.flush().await {
                    Ok(()) if failing => {
                        failing = false;
                        log::info!("fleet: records written again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        log::error!("fleet: records not written, trying again: {e}");
                    }
                    Err(_) => {}
                }
            }
        };
        tokio::spawn(async move {
            tokio::join!(sweep, write);
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::fleet::RedbStore;

    fn record(name: &str, seen: u64) -> DeviceRecord {
        let public_key = [9; 32];
        DeviceRecord {
            id: crate::identity::device_id(&public_key),
            public_key,
            name: name.into(),
            fleet: "shops".into(),
            key_id: [1; 16],
            hostnames: vec!["a.example.com".into()],
            version: "1".into(),
            arch: "aarch64".into(),
            board: String::new(),
            config_digest: String::new(),
            enrolled: seen,
            first_seen: seen,
            last_seen: seen,
            credential_expires: seen + 100,
            revoked: None,
            address: "192.0.2.1:1".into(),
            health: None,
            health_at: 0,
            health_cost: None,
        }
    }

    #[tokio::test]
    async fn changes_reach_the_store_in_a_batch_and_first_seen_stays() {
        let dir = std::env::temp_dir().join(format!(
            "mailslot-inventory-{}-{}",
            std::process::id(),
            crate::util::hex(&crate::util::random_bytes::<4>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.join("f.redb")).unwrap());
        let registry = Arc::new(Registry::new(8));
        let inv = Arc::new(Inventory::load(store.clone(), registry.clone()).unwrap());
        let first = record("old-name", 100);
        assert_eq!(inv.enroll(&first, Some(1)).await.unwrap(), Enrolled::New);
        let mut again = record("new-name", 200);
        again.first_seen = 200;
        assert!(inv.connected(&again));
        inv.health(
            &first.id,
            crate::wire::Health {
                last_error: Some("\u{1b}[31m".repeat(1000)),
                ..Default::default()
            },
            Some(crate::wire::HealthCostTail {
                today_carried: 77,
                ..Default::default()
            }),
        );
        // Nothing written until the batch.
        assert_eq!(store.get(&first.id).unwrap().unwrap().name, "old-name");
        inv.flush().await.unwrap();
        let stored = store.get(&first.id).unwrap().unwrap();
        assert_eq!((stored.name.as_str(), stored.first_seen), ("new-name", 100));
        assert_eq!(
            stored.health_cost.as_ref().map(|c| c.today_carried),
            Some(77)
        );
        let text = stored.health.unwrap().last_error.unwrap();
        assert!(text.len() <= 512 && !text.contains('\u{1b}'), "{text}");
        // The last connection of a device gone: last seen when it was last heard.
        inv.disconnected_at(&first.id, u64::MAX - 1);
        inv.flush().await.unwrap();
        assert_eq!(
            store.get(&first.id).unwrap().unwrap().last_seen,
            u64::MAX - 1
        );
        assert!(!inv.connected(&record("x", 1).clone_with_id("unknown")));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn what_another_edge_enrols_and_revokes_is_learned() {
        let dir = std::env::temp_dir().join(format!(
            "mailslot-inventory-learn-{}-{}",
            std::process::id(),
            crate::util::hex(&crate::util::random_bytes::<4>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // Two edges' inventories over one store.
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.join("f.redb")).unwrap());
        let a = Inventory::load(store.clone(), Arc::new(Registry::new(8))).unwrap();
        let b = Inventory::load(store.clone(), Arc::new(Registry::new(8))).unwrap();
        let r = record("board", 100);
        assert_eq!(a.enroll(&r, None).await.unwrap(), Enrolled::New);
        assert!(b.get(&r.id).is_none());
        b.refresh(vec![r.id.clone(), "unknown".into()])
            .await
            .unwrap();
        assert_eq!(b.get(&r.id).unwrap().record.name, "board");
        // B's own view of a known device stays; a revocation is taken over.
        b.health(&r.id, crate::wire::Health::default(), None);
        assert!(a.revoke(&r.id).await.unwrap());
        assert!(!b.is_revoked(&r.id));
        assert_eq!(b.resync().await.unwrap(), 1);
        assert!(b.is_revoked(&r.id));
        assert!(b.get(&r.id).unwrap().record.health.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    impl DeviceRecord {
        fn clone_with_id(mut self, id: &str) -> DeviceRecord {
            self.id = id.into();
            self
        }
    }
}
