//! [`RedbStore`]: the embedded [`Store`](super::Store), one file (`fleet.redb` beside
//! `edge.yml` by default).
//!
//! Why redb rather than SQLite: it is pure Rust, so an edge built for musl or another
//! architecture needs no C toolchain; it is one file with ACID transactions whose
//! commits survive a crash or a power cut (copy-on-write pages, a checksummed commit
//! slot); and its model is a sorted key-value map, which is what Redis offers too:
//! everything the trait does maps one to one onto the Redis implementation, and nothing
//! leans on SQL that Redis cannot do.
//!
//! ```text
//!  devices:      device id            -> postcard DeviceRecord
//!  key_devices:  enrolment key id (16) -> devices enrolled with it (u32; the quota)
//!  meta:         "devices"             -> records in `devices` (u64; the edge's bound)
//!                "format"              -> FORMAT of the file
//!  changes:      device id + "/" + kind -> postcard ChangeRecord (the last change of
//!                                         each kind per device)
//!  rollouts:     rollout id            -> postcard RolloutRecord (at most MAX_ROLLOUTS)
//!  revoked_ids:  "tunnel:" or "access-token:" + id hex -> Unix seconds (at most
//!                                         MAX_REVOKED_IDS of each kind)
//! ```

use redb::ReadableTable;
use serde::Serialize;

use super::*;

/// Version of the embedded store's layout, kept in its `meta` table.
const FORMAT: u64 = 1;

const DEVICES: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("devices");
const KEY_DEVICES: redb::TableDefinition<&[u8], u32> = redb::TableDefinition::new("key_devices");
const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
const CHANGES: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("changes");
const ROLLOUTS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("rollouts");
const REVOKED_IDS: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("revoked_ids");

/// The embedded store: one redb file (see the module doc).
pub struct RedbStore {
    db: redb::Database,
    /// Most records kept: [`MAX_DEVICES`].
    max: u64,
}

fn engine(e: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(e.to_string())
}

fn decode(id: &str, bytes: &[u8]) -> Result<DeviceRecord, StoreError> {
    super::decode_record(bytes).map_err(|_| StoreError::Corrupt(crate::wire::bounded_reason(id)))
}

fn encode(record: &DeviceRecord) -> Result<Vec<u8>, StoreError> {
    super::encode_record(record).map_err(engine)
}

fn decode_any<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt(crate::wire::bounded_reason(key)))
}

fn encode_any<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(engine)
}

/// Every value of a table of postcard records.
fn read_all<T: serde::de::DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter().map_err(engine)? {
        let (k, bytes) = entry.map_err(engine)?;
        out.push(decode_any(k.value(), bytes.value())?);
    }
    Ok(out)
}

impl RedbStore {
    /// Opens the store at `path`, creating it when missing. Fails with a message that
    /// says why: in use by another edge process, unreadable, of a newer format.
    pub fn open(path: &std::path::Path) -> Result<RedbStore, StoreError> {
        let shown = path.display();
        let db = redb::Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Engine(format!(
                "{shown} is in use by another process (another mailslot-edge serving with \
                 the same store?)"
            )),
            other => StoreError::Engine(format!("cannot open {shown}: {other}")),
        })?;
        let tx = db.begin_write().map_err(engine)?;
        {
            let mut meta = tx.open_table(META).map_err(engine)?;
            let format = meta.get("format").map_err(engine)?.map(|v| v.value());
            match format {
                None => {
                    meta.insert("format", FORMAT).map_err(engine)?;
                }
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(StoreError::Engine(format!(
                        "{shown} has format {other}, this edge reads format {FORMAT}: \
                         update mailslot-edge"
                    )))
                }
            }
            tx.open_table(DEVICES).map_err(engine)?;
            tx.open_table(KEY_DEVICES).map_err(engine)?;
            tx.open_table(CHANGES).map_err(engine)?;
            tx.open_table(ROLLOUTS).map_err(engine)?;
            tx.open_table(REVOKED_IDS).map_err(engine)?;
        }
        tx.commit().map_err(engine)?;
        Ok(RedbStore {
            db,
            max: MAX_DEVICES,
        })
    }
}

/// Adds `delta` to a `u32` count kept under `key`, removing it at zero.
fn add_count(
    table: &mut redb::Table<&[u8], u32>,
    key: &[u8],
    delta: i64,
) -> Result<(), StoreError> {
    let now = table.get(key).map_err(engine)?.map_or(0, |v| v.value());
    let next = u32::try_from((i64::from(now) + delta).max(0)).unwrap_or(u32::MAX);
    if next == 0 {
        table.remove(key).map_err(engine)?;
    } else {
        table.insert(key, next).map_err(engine)?;
    }
    Ok(())
}

impl Store for RedbStore {
    fn enroll(
        &self,
        record: &DeviceRecord,
        max_devices: Option<u32>,
    ) -> Result<Enrolled, StoreError> {
        let tx = self.db.begin_write().map_err(engine)?;
        let outcome = {
            let mut devices = tx.open_table(DEVICES).map_err(engine)?;
            let mut keys = tx.open_table(KEY_DEVICES).map_err(engine)?;
            let mut meta = tx.open_table(META).map_err(engine)?;
            let existing = match devices.get(record.id.as_str()).map_err(engine)? {
                Some(bytes) => Some(decode(&record.id, bytes.value())?),
                None => None,
            };
            let count_of = |keys: &redb::Table<&[u8], u32>, key: &[u8; 16]| {
                keys.get(key.as_slice())
                    .map(|v| v.map_or(0, |v| v.value()))
                    .map_err(engine)
            };
            let full = |count: u32| max_devices.is_some_and(|max| count >= max);
            match existing {
                Some(old) if old.revoked.is_some() => Enrolled::Revoked,
                Some(old) => {
                    if old.key_id != record.key_id {
                        // Moving to another key takes a place under it.
                        let count = count_of(&keys, &record.key_id)?;
                        if full(count) {
                            return Ok(Enrolled::QuotaFull { count });
                        }
                        add_count(&mut keys, &old.key_id, -1)?;
                        add_count(&mut keys, &record.key_id, 1)?;
                    }
                    let mut next = record.clone();
                    next.enrolled = old.enrolled;
                    next.first_seen = old.first_seen;
                    devices
                        .insert(record.id.as_str(), encode(&next)?.as_slice())
                        .map_err(engine)?;
                    Enrolled::Again
                }
                None => {
                    let total = meta
                        .get("devices")
                        .map_err(engine)?
                        .map_or(0, |v| v.value());
                    let count = count_of(&keys, &record.key_id)?;
                    if total >= self.max {
                        return Ok(Enrolled::Full { max: self.max });
                    }
                    if full(count) {
                        return Ok(Enrolled::QuotaFull { count });
                    }
                    devices
                        .insert(record.id.as_str(), encode(record)?.as_slice())
                        .map_err(engine)?;
                    add_count(&mut keys, &record.key_id, 1)?;
                    meta.insert("devices", total + 1).map_err(engine)?;
                    Enrolled::New
                }
            }
        };
        tx.commit().map_err(engine)?;
        Ok(outcome)
    }

    fn get(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(engine)?;
        let devices = tx.open_table(DEVICES).map_err(engine)?;
        let found = devices.get(id).map_err(engine)?;
        found.map(|bytes| decode(id, bytes.value())).transpose()
    }

    fn list(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(engine)?;
        let devices = tx.open_table(DEVICES).map_err(engine)?;
        let mut out = Vec::new();
        for entry in devices.iter().map_err(engine)? {
            let (id, bytes) = entry.map_err(engine)?;
            out.push(decode(id.value(), bytes.value())?);
        }
        Ok(out)
    }

    fn update(&self, records: &[DeviceRecord]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(engine)?;
        {
            let mut devices = tx.open_table(DEVICES).map_err(engine)?;
            for r in records {
                let old = match devices.get(r.id.as_str()).map_err(engine)? {
                    Some(bytes) => decode(&r.id, bytes.value())?,
                    None => continue,
                };
                let mut next = r.clone();
                // A revocation recorded meanwhile (by another edge, or by `revoke` while
                // this batch was on its way) is never undone by an update.
                next.revoked = old.revoked.or(r.revoked);
                next.key_id = old.key_id;
                devices
                    .insert(r.id.as_str(), encode(&next)?.as_slice())
                    .map_err(engine)?;
            }
        }
        tx.commit().map_err(engine)
    }

    fn revoke(&self, id: &str, at: u64) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(engine)?;
        let found = {
            let mut devices = tx.open_table(DEVICES).map_err(engine)?;
            let old = match devices.get(id).map_err(engine)? {
                Some(bytes) => Some(decode(id, bytes.value())?),
                None => None,
            };
            match old {
                Some(mut r) => {
                    r.revoked.get_or_insert(at);
                    devices.insert(id, encode(&r)?.as_slice()).map_err(engine)?;
                    true
                }
                None => false,
            }
        };
        tx.commit().map_err(engine)?;
        Ok(found)
    }

    fn put_changes(&self, changes: &[ChangeRecord]) -> Result<Vec<bool>, StoreError> {
        let tx = self.db.begin_write().map_err(engine)?;
        let mut written = Vec::with_capacity(changes.len());
        {
            let mut table = tx.open_table(CHANGES).map_err(engine)?;
            for c in changes {
                let key = change_key(&c.device, c.kind);
                let old: Option<ChangeRecord> = match table.get(key.as_str()).map_err(engine)? {
                    Some(bytes) => decode_any(&key, bytes.value()).ok(),
                    None => None,
                };
                let write = change_replaces(old.as_ref(), c);
                if write {
                    table
                        .insert(key.as_str(), encode_any(c)?.as_slice())
                        .map_err(engine)?;
                }
                written.push(write);
            }
        }
        tx.commit().map_err(engine)?;
        Ok(written)
    }

    fn changes_of(&self, device: &str) -> Result<Vec<ChangeRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(engine)?;
        let table = tx.open_table(CHANGES).map_err(engine)?;
        let mut out = Vec::new();
        for kind in [ChangeKind::Config, ChangeKind::Release] {
            let key = change_key(device, kind);
            if let Some(bytes) = table.get(key.as_str()).map_err(engine)? {
                out.push(decode_any(&key, bytes.value())?);
            }
        }
        Ok(out)
    }

    fn list_changes(&self) -> Result<Vec<ChangeRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(engine)?;
        read_all(&tx.open_table(CHANGES).map_err(engine)?)
    }

    fn put_rollout(&self, rollout: &RolloutRecord) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(engine)?;
        {
            let mut table = tx.open_table(ROLLOUTS).map_err(engine)?;
            let kept: Vec<RolloutRecord> = read_all(&table)?;
            let Some((forget, merged)) = plan_rollout_write(&kept, rollout) else {
                return Ok(false);
            };
            for id in forget {
                table.remove(id.as_str()).map_err(engine)?;
            }
            table
                .insert(rollout.id.as_str(), encode_any(&merged)?.as_slice())
                .map_err(engine)?;
        }
        tx.commit().map_err(engine)?;
        Ok(true)
    }

    fn get_rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(engine)?;
        let table = tx.open_table(ROLLOUTS).map_err(engine)?;
        let found = table.get(id).map_err(engine)?;
        found.map(|bytes| decode_any(id, bytes.value())).transpose()
    }

    fn list_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(engine)?;
        read_all(&tx.open_table(ROLLOUTS).map_err(engine)?)
    }

    fn revoke_id(&self, revoked: &RevokedId) -> Result<bool, StoreError> {
        let key = revoked.key();
        let tx = self.db.begin_write().map_err(engine)?;
        {
            let mut table = tx.open_table(REVOKED_IDS).map_err(engine)?;
            if table.get(key.as_str()).map_err(engine)?.is_some() {
                return Ok(false);
            }
            let prefix = format!("{}:", revoked.kind.word());
            let mut of_kind = 0;
            for entry in table.range(prefix.as_str()..).map_err(engine)? {
                let (k, _) = entry.map_err(engine)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                of_kind += 1;
            }
            if of_kind >= MAX_REVOKED_IDS {
                return Err(too_many_revoked(revoked.kind));
            }
            table.insert(key.as_str(), revoked.at).map_err(engine)?;
        }
        tx.commit().map_err(engine)?;
        Ok(true)
    }

    fn revoked_ids(&self) -> Result<Vec<RevokedId>, StoreError> {
        let tx = self.db.begin_read().map_err(engine)?;
        let table = tx.open_table(REVOKED_IDS).map_err(engine)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(engine)? {
            let (k, at) = entry.map_err(engine)?;
            let r = RevokedId::of_key(k.value(), at.value())
                .ok_or_else(|| StoreError::Corrupt(crate::wire::bounded_reason(k.value())))?;
            out.push(r);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::suite::{self, record};
    use super::*;

    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "mailslot-store-{tag}-{}-{}",
                std::process::id(),
                crate::util::hex(&crate::util::random_bytes::<4>())
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        fn file(&self) -> std::path::PathBuf {
            self.0.join("fleet.redb")
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn enrol_new_again_revoked_and_quota() {
        let dir = Dir::new("enrol");
        suite::enrol_new_again_revoked_and_quota(&RedbStore::open(&dir.file()).unwrap());
    }

    #[test]
    fn moving_to_another_key_moves_the_quota() {
        let dir = Dir::new("move");
        suite::moving_to_another_key_moves_the_quota(&RedbStore::open(&dir.file()).unwrap());
    }

    #[test]
    fn updates_write_only_known_records() {
        let dir = Dir::new("update");
        suite::updates_write_only_known_records(&RedbStore::open(&dir.file()).unwrap());
    }

    #[test]
    fn the_store_refuses_new_devices_beyond_its_bound() {
        let dir = Dir::new("bound");
        let mut store = RedbStore::open(&dir.file()).unwrap();
        store.max = 2;
        suite::refuses_new_devices_beyond_its_bound(&store);
    }

    #[test]
    fn concurrent_enrolment_never_exceeds_the_quota() {
        let dir = Dir::new("race");
        let store = std::sync::Arc::new(RedbStore::open(&dir.file()).unwrap());
        suite::concurrent_enrolment_never_exceeds_the_quota(store);
    }

    #[test]
    fn revocations_are_kept_once() {
        let dir = Dir::new("revoked");
        crate::edge::fleet::revoked::suite::revocations_are_kept_once(
            &RedbStore::open(&dir.file()).unwrap(),
        );
    }

    #[test]
    fn running_rollouts_are_listed_until_they_end() {
        let dir = Dir::new("running");
        suite::running_rollouts_are_listed_until_they_end(&RedbStore::open(&dir.file()).unwrap());
    }

    #[test]
    fn changes_only_move_forward() {
        let dir = Dir::new("changes");
        suite::changes_only_move_forward(&RedbStore::open(&dir.file()).unwrap());
    }

    #[test]
    fn rollouts_are_bounded() {
        let dir = Dir::new("rollouts");
        suite::rollouts_are_bounded(&RedbStore::open(&dir.file()).unwrap());
    }

    #[test]
    fn records_survive_reopening() {
        let dir = Dir::new("reopen");
        {
            let store = RedbStore::open(&dir.file()).unwrap();
            store.enroll(&record(1, 7), Some(1)).unwrap();
            let mut r = record(1, 7);
            r.last_seen = 555;
            r.health = Some(crate::wire::Health {
                uptime_secs: 9,
                ..Default::default()
            });
            store.update(&[r, record(9, 9)]).unwrap();
            store.revoke(&record(1, 7).id, 600).unwrap();
        }
        let store = RedbStore::open(&dir.file()).unwrap();
        let all = store.list().unwrap();
        assert_eq!(all.len(), 1, "an update never creates a record");
        let r = &all[0];
        assert_eq!(r.last_seen, 555);
        assert_eq!(r.revoked, Some(600));
        assert_eq!(r.health.as_ref().unwrap().uptime_secs, 9);
        // The quota was counted in the file too.
        assert_eq!(
            store.enroll(&record(2, 7), Some(1)).unwrap(),
            Enrolled::QuotaFull { count: 1 }
        );
    }

    #[test]
    fn a_second_opener_is_told_the_store_is_in_use() {
        let dir = Dir::new("locked");
        let _first = RedbStore::open(&dir.file()).unwrap();
        let e = RedbStore::open(&dir.file()).err().unwrap().to_string();
        assert!(e.contains("in use by another process"), "{e}");
    }

    #[test]
    fn an_unreadable_record_is_reported_not_a_panic() {
        let dir = Dir::new("corrupt");
        let store = RedbStore::open(&dir.file()).unwrap();
        store.enroll(&record(1, 7), None).unwrap();
        let tx = store.db.begin_write().unwrap();
        tx.open_table(DEVICES)
            .unwrap()
            .insert("broken", [0xffu8; 3].as_slice())
            .unwrap();
        tx.commit().unwrap();
        assert!(matches!(store.get("broken"), Err(StoreError::Corrupt(id)) if id == "broken"));
        assert!(matches!(store.list(), Err(StoreError::Corrupt(_))));
        assert!(matches!(
            store.revoke("broken", 1),
            Err(StoreError::Corrupt(_))
        ));
        assert!(store.get(&record(1, 7).id).unwrap().is_some());
    }

    #[test]
    fn a_file_that_is_not_a_store_is_refused() {
        let dir = Dir::new("garbage");
        std::fs::write(dir.file(), vec![0x5au8; 4096]).unwrap();
        let e = RedbStore::open(&dir.file()).err().unwrap().to_string();
        assert!(e.contains("cannot open"), "{e}");
    }
}
