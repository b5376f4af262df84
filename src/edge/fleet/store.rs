//! Where the fleet's records survive a restart.
//!
//! The [`Store`] trait is small on purpose: records by device id, enrolment under a
//! quota as one atomic step, revocation. It says nothing of SQL or of files, so a shared
//! engine (Redis: a hash per device, a set per enrolment key, a `WATCH`/`MULTI` or Lua
//! step for the quota) implements it as well as the embedded one does.
//!
//! Calls block (a disk or a network round trip): call them from
//! `tokio::task::spawn_blocking`, or from a task that owns a blocking thread.
//!
//! [`RedbStore`] is the embedded implementation, one file (`fleet.redb` beside
//! `edge.yml` by default). Why redb rather than SQLite: it is pure Rust, so an edge
//! built for musl or another architecture needs no C toolchain; it is one file with
//! ACID transactions whose commits survive a crash or a power cut (copy-on-write
//! pages, a checksummed commit slot); and its model is a sorted key-value map, which
//! is what Redis offers too: everything the trait does maps one to one onto the Redis
//! implementation to come, and nothing leans on SQL that Redis cannot do.
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
//!
//! Remote changes (config pushes, release offers) keep per-device state apart from the
//! device records, so a record's layout (and its batched updates) stays as it was: a
//! [`ChangeRecord`] per device and kind, written through [`Store::put_changes`], which
//! never moves a change back (a `Sent` written late never hides the `Applied` another
//! edge wrote first), and a [`RolloutRecord`] per rollout, which carries the signed
//! message so that any edge sharing the store can deliver a pending change.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::revoked::{RevokedId, RevokedKind, MAX_REVOKED_IDS};
use crate::wire::{ChangeKind, Health};

/// Everything the edge keeps about one device. Texts are bounded before they get here
/// (`wire::bounded_reason`); `hostnames` holds at most as many names as the enrolment
/// key had patterns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Device id (`identity::device_id` of `public_key`).
    pub id: String,
    pub public_key: [u8; 32],
    /// Human-friendly name the device reported.
    pub name: String,
    pub fleet: String,
    /// Id of the enrolment key it enrolled with (quotas count per key).
    pub key_id: [u8; 16],
    /// Hostnames of its credential (patterns expanded).
    pub hostnames: Vec<String>,
    /// Software version, architecture, board model, config digest (hex) as last reported.
    pub version: String,
    pub arch: String,
    pub board: String,
    pub config_digest: String,
    /// Unix seconds.
    pub enrolled: u64,
    pub first_seen: u64,
    pub last_seen: u64,
    /// Expiry of the newest credential issued to it, Unix seconds.
    pub credential_expires: u64,
    /// When it was revoked, Unix seconds; a revoked device never registers again.
    pub revoked: Option<u64>,
    /// The address it connected from, last seen.
    pub address: String,
    /// Latest health report, and when it came (Unix seconds).
    pub health: Option<Health>,
    pub health_at: u64,
}

/// Most devices one edge's store keeps: enrolment beyond it is refused
/// ([`Enrolled::Full`]). At a few hundred bytes a record, the records in memory
/// (`Inventory`) stay within a few tens of MiB.
pub const MAX_DEVICES: u64 = 100_000;

/// What enrolling a device under a quota did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// A new device, recorded.
    New,
    /// A device already recorded under this key (re-enrolment: a lost credential, an
    /// expired one); its record was updated, the quota is unchanged.
    Again,
    /// The device is revoked; nothing changed.
    Revoked,
    /// The key's quota is full: `count` devices already enrolled with it.
    QuotaFull { count: u32 },
    /// The store holds [`MAX_DEVICES`] records already; nothing changed.
    Full { max: u64 },
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed or is unreachable; the message says which and why.
    #[error("fleet store: {0}")]
    Engine(String),
    /// A record that does not decode (written by a newer edge, or damaged).
    #[error("fleet store: record {0} is unreadable")]
    Corrupt(String),
}

/// Whether a refusal's `reason` is a store that failed (unreachable, timing out, as a
/// [`StoreError`] says it) rather than a decision: the device may try again later.
pub(crate) fn is_store_failure(reason: &str) -> bool {
    reason.starts_with("fleet store: ")
}

/// Most rollouts a store keeps: starting one more forgets the oldest that ended (a
/// rollout still running is never forgotten; starting a rollout beyond the bound with
/// all of them running is refused).
pub const MAX_ROLLOUTS: usize = 64;

/// Where one device stands with one remote change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeState {
    /// In a later wave of its rollout: waits for the canaries.
    Waiting,
    /// To be sent as soon as an edge holds a connection of the device (it is offline,
    /// or no edge has sent it yet).
    Pending,
    /// Sent down one of the device's connections at `at` (Unix seconds); no report yet.
    Sent { at: u64 },
    /// In force on the device, which registered with it.
    Applied,
    /// Applied, then undone by the device.
    RolledBack { reason: String },
    /// Never applied: the device refused it.
    Refused { reason: String },
    /// Never sent: its rollout stopped first.
    Skipped,
}

impl ChangeState {
    /// Order of the states of one change: a write never lowers it. Every end (applied,
    /// rolled back, refused, skipped) is final.
    pub fn rank(&self) -> u8 {
        match self {
            ChangeState::Waiting => 0,
            ChangeState::Pending => 1,
            ChangeState::Sent { .. } => 2,
            _ => 3,
        }
    }

    /// Whether the change is over for this device.
    pub fn is_final(&self) -> bool {
        self.rank() == 3
    }

    /// One word, for the CLI, the JSON and the page.
    pub fn word(&self) -> &'static str {
        match self {
            ChangeState::Waiting => "waiting",
            ChangeState::Pending => "pending",
            ChangeState::Sent { .. } => "sent",
            ChangeState::Applied => "applied",
            ChangeState::RolledBack { .. } => "rolled back",
            ChangeState::Refused { .. } => "refused",
            ChangeState::Skipped => "skipped",
        }
    }

    /// Why, for a rollback or a refusal.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ChangeState::RolledBack { reason } | ChangeState::Refused { reason } => Some(reason),
            _ => None,
        }
    }
}

/// A device's last change of one kind. Texts are bounded (`wire::bounded_reason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub device: String,
    pub kind: ChangeKind,
    /// The push id (hex) or the release version.
    pub id: String,
    /// The rollout it belongs to.
    pub rollout: String,
    pub state: ChangeState,
    /// When the state was written, Unix seconds.
    pub at: u64,
}

/// One rollout of one change to a list of devices, canaries first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// 16 hex digits.
    pub id: String,
    pub kind: ChangeKind,
    /// The push id (hex) or the release version.
    pub change: String,
    /// The postcard `wire::EdgeMsg` to send each device (at most a control frame).
    pub message: Vec<u8>,
    /// How long a sent change may go without a report (a canary's silence stops the
    /// rollout after it), seconds.
    pub wait_secs: u64,
    /// The devices, canaries first (at most [`MAX_DEVICES`]).
    pub targets: Vec<String>,
    /// How many of `targets` are canaries (all of them without a canary share).
    pub canaries: u32,
    /// Unix seconds.
    pub created: u64,
    /// Set once the canaries all applied and the rest were made pending.
    pub rest_started: bool,
    /// Why it stopped early (a rollback, a refusal, a silent canary).
    pub stopped: Option<String>,
    /// When it ended (stopped, or every device applied), Unix seconds.
    pub ended: Option<u64>,
}

fn no_changes() -> StoreError {
    StoreError::Engine("this store keeps no remote changes".into())
}

/// Where fleet records live. Implementations are shared between threads.
pub trait Store: Send + Sync {
    /// Records `record` if its id is new and its key's quota (`max_devices`, `None`:
    /// unlimited) has room, or updates the record of a device enrolled before; one
    /// atomic step, so two edges or two connections never both take the last place.
    fn enroll(
        &self,
        record: &DeviceRecord,
        max_devices: Option<u32>,
    ) -> Result<Enrolled, StoreError>;
    /// The record of one device.
    fn get(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError>;
    /// Every record.
    fn list(&self) -> Result<Vec<DeviceRecord>, StoreError>;
    /// Writes records that exist already (last seen, health, address): a batch, in one
    /// transaction where the engine has them. Records not in the store are skipped.
    fn update(&self, records: &[DeviceRecord]) -> Result<(), StoreError>;
    /// Marks a device revoked at `at`; `false` when no such device is recorded.
    fn revoke(&self, id: &str, at: u64) -> Result<bool, StoreError>;

    /// Writes each change record as the device's last change of its kind, unless the
    /// stored one is the same change at a later state ([`ChangeState::rank`]; an end
    /// is never replaced by another for the same change). Which ones were written.
    fn put_changes(&self, changes: &[ChangeRecord]) -> Result<Vec<bool>, StoreError> {
        let _ = changes;
        Err(no_changes())
    }
    /// The last change of each kind of one device (at most one per kind).
    fn changes_of(&self, device: &str) -> Result<Vec<ChangeRecord>, StoreError> {
        let _ = device;
        Err(no_changes())
    }
    /// Every device's last changes.
    fn list_changes(&self) -> Result<Vec<ChangeRecord>, StoreError> {
        Err(no_changes())
    }
    /// Writes a rollout (new, or its new state). A new one beyond [`MAX_ROLLOUTS`]
    /// forgets the oldest ended one; `Ok(false)` when all of them are still running.
    fn put_rollout(&self, rollout: &RolloutRecord) -> Result<bool, StoreError> {
        let _ = rollout;
        Err(no_changes())
    }
    /// One rollout.
    fn get_rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        let _ = id;
        Err(no_changes())
    }
    /// Every rollout kept (at most [`MAX_ROLLOUTS`]).
    fn list_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        Err(no_changes())
    }
    /// The rollouts still running (not ended). Every edge asks every second: a store
    /// where reading every rollout costs a round trip of all their targets and
    /// messages keeps an index of the running ones.
    fn running_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        Ok(self
            .list_rollouts()?
            .into_iter()
            .filter(|r| r.ended.is_none())
            .collect())
    }

    /// Revokes a tunnel or an access token for good (the first time stays); `false`
    /// when it was revoked already. Beyond [`MAX_REVOKED_IDS`] of its kind: an error.
    fn revoke_id(&self, revoked: &RevokedId) -> Result<bool, StoreError> {
        let _ = revoked;
        Err(no_revocations())
    }
    /// Every tunnel and access token revoked through the store (none, for a store
    /// that keeps none).
    fn revoked_ids(&self) -> Result<Vec<RevokedId>, StoreError> {
        Ok(Vec::new())
    }
}

fn no_revocations() -> StoreError {
    StoreError::Engine("this store keeps no revoked tunnels or access tokens".into())
}

/// The error of a revocation beyond [`MAX_REVOKED_IDS`] of its kind.
pub(crate) fn too_many_revoked(kind: RevokedKind) -> StoreError {
    StoreError::Engine(format!(
        "{MAX_REVOKED_IDS} {}s are revoked already, the most the store keeps",
        kind.word()
    ))
}

/// Whether a change may be written over `old` (see [`Store::put_changes`]).
pub(crate) fn change_replaces(old: Option<&ChangeRecord>, new: &ChangeRecord) -> bool {
    match old {
        Some(old) if old.id == new.id && old.rollout == new.rollout => {
            let (o, n) = (old.state.rank(), new.state.rank());
            n > o || (n == o && n < 3)
        }
        _ => true,
    }
}

/// How writing `new` over the rollouts `kept` goes: the rollouts to forget so that it
/// fits within [`MAX_ROLLOUTS`] (the oldest that ended), and the record to write:
/// `new` merged with the one kept, so that a rollout never goes back (another edge's
/// late write never undoes a stop, an end or the start of the rest). `None` when there
/// is no room (all running).
pub(crate) fn plan_rollout_write(
    kept: &[RolloutRecord],
    new: &RolloutRecord,
) -> Option<(Vec<String>, RolloutRecord)> {
    if let Some(old) = kept.iter().find(|r| r.id == new.id) {
        let mut merged = new.clone();
        merged.rest_started |= old.rest_started;
        merged.stopped = old.stopped.clone().or(merged.stopped);
        merged.ended = old.ended.or(merged.ended);
        return Some((Vec::new(), merged));
    }
    let forget = rollouts_to_forget(kept)?;
    Some((forget, new.clone()))
}

/// The rollouts to forget so that one more fits within [`MAX_ROLLOUTS`]: the oldest
/// that ended; `None` when there is no room (all running).
fn rollouts_to_forget(kept: &[RolloutRecord]) -> Option<Vec<String>> {
    if kept.len() < MAX_ROLLOUTS {
        return Some(Vec::new());
    }
    let mut ended: Vec<&RolloutRecord> = kept.iter().filter(|r| r.ended.is_some()).collect();
    ended.sort_by_key(|r| (r.created, r.id.clone()));
    let over = kept.len() + 1 - MAX_ROLLOUTS;
    if ended.len() < over {
        return None;
    }
    Some(ended.iter().take(over).map(|r| r.id.clone()).collect())
}

fn change_key(device: &str, kind: ChangeKind) -> String {
    format!("{device}/{}", kind_name(kind))
}

/// `config` or `release`.
pub fn kind_name(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Config => "config",
        ChangeKind::Release => "release",
    }
}

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
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt(crate::wire::bounded_reason(id)))
}

fn encode(record: &DeviceRecord) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(record).map_err(engine)
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

/// The behaviour every [`Store`] shows, as test steps over any implementation: the
/// embedded one's tests run them, and so do the Redis one's (`edge::cluster::store`).
#[cfg(test)]
pub(crate) mod suite {
    use super::*;

    /// A record of device `n` enrolled with key `key`.
    pub(crate) fn record(n: u8, key: u8) -> DeviceRecord {
        let public_key = [n; 32];
        DeviceRecord {
            id: crate::identity::device_id(&public_key),
            public_key,
            name: format!("board{n}"),
            fleet: "shops".into(),
            key_id: [key; 16],
            hostnames: vec![format!("d{n}.shops.example.com")],
            version: "0.1.0".into(),
            arch: "aarch64".into(),
            board: "Raspberry Pi 4".into(),
            config_digest: "0011223344556677".into(),
            enrolled: 100,
            first_seen: 100,
            last_seen: 100,
            credential_expires: 1000,
            revoked: None,
            address: "192.0.2.1:4000".into(),
            health: None,
            health_at: 0,
        }
    }

    /// New, again, quota full, another key, revoked; updates never undo a revocation.
    pub(crate) fn enrol_new_again_revoked_and_quota(store: &dyn Store) {
        assert_eq!(store.enroll(&record(1, 7), Some(2)).unwrap(), Enrolled::New);
        let mut again = record(1, 7);
        again.last_seen = 200;
        again.first_seen = 200;
        again.enrolled = 200;
        assert_eq!(store.enroll(&again, Some(2)).unwrap(), Enrolled::Again);
        let kept = store.get(&again.id).unwrap().unwrap();
        assert_eq!(
            (kept.enrolled, kept.first_seen, kept.last_seen),
            (100, 100, 200)
        );
        assert_eq!(store.enroll(&record(2, 7), Some(2)).unwrap(), Enrolled::New);
        assert_eq!(
            store.enroll(&record(3, 7), Some(2)).unwrap(),
            Enrolled::QuotaFull { count: 2 }
        );
        assert_eq!(store.get(&record(3, 7).id).unwrap(), None);
        // Another key has its own quota; no quota is no limit.
        assert_eq!(store.enroll(&record(3, 8), None).unwrap(), Enrolled::New);
        assert!(store.revoke(&record(1, 7).id, 300).unwrap());
        assert!(!store.revoke("nosuchdevice", 300).unwrap());
        // A second revocation keeps the first time.
        assert!(store.revoke(&record(1, 7).id, 400).unwrap());
        assert_eq!(
            store.enroll(&record(1, 7), Some(2)).unwrap(),
            Enrolled::Revoked
        );
        // An update does not undo a revocation.
        store.update(&[record(1, 7)]).unwrap();
        assert_eq!(
            store.get(&record(1, 7).id).unwrap().unwrap().revoked,
            Some(300)
        );
        assert_eq!(store.list().unwrap().len(), 3);
    }

    /// A device moving to another key takes a place under it and frees its old one.
    pub(crate) fn moving_to_another_key_moves_the_quota(store: &dyn Store) {
        assert_eq!(store.enroll(&record(1, 1), Some(1)).unwrap(), Enrolled::New);
        assert_eq!(store.enroll(&record(2, 2), Some(1)).unwrap(), Enrolled::New);
        assert_eq!(
            store.enroll(&record(1, 2), Some(1)).unwrap(),
            Enrolled::QuotaFull { count: 1 }
        );
        assert_eq!(
            store.enroll(&record(1, 3), Some(1)).unwrap(),
            Enrolled::Again
        );
        assert_eq!(
            store.get(&record(1, 3).id).unwrap().unwrap().key_id,
            [3; 16]
        );
        // Key 1 has room again.
        assert_eq!(store.enroll(&record(4, 1), Some(1)).unwrap(), Enrolled::New);
    }

    /// Updates write what exists, skip what does not, keep the key and the revocation.
    pub(crate) fn updates_write_only_known_records(store: &dyn Store) {
        store.enroll(&record(1, 7), Some(1)).unwrap();
        let mut r = record(1, 7);
        r.last_seen = 555;
        r.key_id = [9; 16];
        r.health = Some(crate::wire::Health {
            uptime_secs: 9,
            ..Default::default()
        });
        store.update(&[r, record(9, 9)]).unwrap();
        store.revoke(&record(1, 7).id, 600).unwrap();
        let all = store.list().unwrap();
        assert_eq!(all.len(), 1, "an update never creates a record");
        let r = &all[0];
        assert_eq!(r.last_seen, 555);
        assert_eq!(r.key_id, [7; 16], "the quota's key stays");
        assert_eq!(r.revoked, Some(600));
        assert_eq!(r.health.as_ref().unwrap().uptime_secs, 9);
        assert_eq!(
            store.enroll(&record(2, 7), Some(1)).unwrap(),
            Enrolled::QuotaFull { count: 1 }
        );
    }

    /// `store` holds at most 2 records: the third new device is refused.
    pub(crate) fn refuses_new_devices_beyond_its_bound(store: &dyn Store) {
        assert_eq!(store.enroll(&record(1, 1), None).unwrap(), Enrolled::New);
        assert_eq!(store.enroll(&record(2, 2), None).unwrap(), Enrolled::New);
        assert_eq!(
            store.enroll(&record(3, 3), None).unwrap(),
            Enrolled::Full { max: 2 }
        );
        assert_eq!(store.enroll(&record(1, 1), None).unwrap(), Enrolled::Again);
        assert_eq!(store.list().unwrap().len(), 2);
    }

    fn change(device: &str, id: &str, state: ChangeState) -> ChangeRecord {
        ChangeRecord {
            device: device.into(),
            kind: ChangeKind::Config,
            id: id.into(),
            rollout: format!("r-{id}"),
            state,
            at: 7,
        }
    }

    pub(crate) fn rollout(n: u32, ended: bool) -> RolloutRecord {
        RolloutRecord {
            id: format!("{n:016x}"),
            kind: ChangeKind::Config,
            change: format!("{n:016x}"),
            message: vec![1, 2, 3],
            wait_secs: 60,
            targets: vec!["a".into(), "b".into()],
            canaries: 1,
            created: u64::from(n),
            rest_started: false,
            stopped: None,
            ended: ended.then_some(u64::from(n)),
        }
    }

    /// A change never moves back for the same push; a new push replaces the last one;
    /// the kinds are kept apart.
    pub(crate) fn changes_only_move_forward(store: &dyn Store) {
        let pending = change("d1", "p1", ChangeState::Pending);
        let sent = change("d1", "p1", ChangeState::Sent { at: 9 });
        let applied = change("d1", "p1", ChangeState::Applied);
        assert_eq!(
            store.put_changes(std::slice::from_ref(&pending)).unwrap(),
            vec![true]
        );
        assert_eq!(
            store.put_changes(std::slice::from_ref(&applied)).unwrap(),
            vec![true]
        );
        // A late `Sent` (another edge) and a second end do not undo the end.
        assert_eq!(
            store
                .put_changes(&[sent, change("d1", "p1", ChangeState::Skipped)])
                .unwrap(),
            vec![false, false]
        );
        assert_eq!(store.changes_of("d1").unwrap(), vec![applied]);
        // The next push replaces it, whatever its state.
        assert_eq!(
            store
                .put_changes(&[change("d1", "p2", ChangeState::Waiting)])
                .unwrap(),
            vec![true]
        );
        let mut release = change("d1", "1.2.0", ChangeState::Pending);
        release.kind = ChangeKind::Release;
        store
            .put_changes(&[release.clone(), change("d2", "p2", ChangeState::Pending)])
            .unwrap();
        let of_d1 = store.changes_of("d1").unwrap();
        assert_eq!(of_d1.len(), 2);
        assert_eq!(of_d1[0].id, "p2");
        assert_eq!(of_d1[1], release);
        assert_eq!(store.list_changes().unwrap().len(), 3);
        assert!(store.changes_of("nosuchdevice").unwrap().is_empty());
    }

    /// Rollouts are kept up to MAX_ROLLOUTS: the oldest ended one makes room; when all
    /// are running, a new one is refused.
    pub(crate) fn running_rollouts_are_listed_until_they_end(store: &dyn Store) {
        assert!(store.running_rollouts().unwrap().is_empty());
        let (a, b) = (rollout(1, false), rollout(2, false));
        assert!(store.put_rollout(&a).unwrap());
        assert!(store.put_rollout(&b).unwrap());
        let mut ids: Vec<String> = store
            .running_rollouts()
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        assert_eq!(ids, vec![a.id.clone(), b.id.clone()]);
        let mut ended = a.clone();
        ended.ended = Some(900);
        assert!(store.put_rollout(&ended).unwrap());
        let running = store.running_rollouts().unwrap();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].id, b.id);
        assert_eq!(store.list_rollouts().unwrap().len(), 2);
    }

    pub(crate) fn rollouts_are_bounded(store: &dyn Store) {
        for n in 0..MAX_ROLLOUTS as u32 {
            assert!(store.put_rollout(&rollout(n, n < 2)).unwrap());
        }
        let mut updated = rollout(5, false);
        updated.rest_started = true;
        assert!(
            store.put_rollout(&updated).unwrap(),
            "an update always fits"
        );
        assert_eq!(
            store.get_rollout(&updated.id).unwrap(),
            Some(updated.clone())
        );
        assert!(store.put_rollout(&rollout(100, false)).unwrap());
        assert_eq!(
            store.get_rollout(&rollout(0, true).id).unwrap(),
            None,
            "oldest ended forgotten"
        );
        assert!(store.get_rollout(&rollout(1, true).id).unwrap().is_some());
        assert!(store.put_rollout(&rollout(101, false)).unwrap());
        assert!(
            !store.put_rollout(&rollout(102, false)).unwrap(),
            "all running: refused"
        );
        assert_eq!(store.list_rollouts().unwrap().len(), MAX_ROLLOUTS);
        // A late write of an older state (another edge) never goes back.
        let mut stopped = updated.clone();
        stopped.stopped = Some("device a rolled back".into());
        stopped.ended = Some(9);
        store.put_rollout(&stopped).unwrap();
        store.put_rollout(&rollout(5, false)).unwrap();
        assert_eq!(store.get_rollout(&updated.id).unwrap(), Some(stopped));
    }

    /// Twenty devices enrolling at once under a quota of five (two edges, or many
    /// connections): exactly five get in.
    pub(crate) fn concurrent_enrolment_never_exceeds_the_quota(store: std::sync::Arc<dyn Store>) {
        let handles: Vec<_> = (1..=20u8)
            .map(|n| {
                let store = store.clone();
                std::thread::spawn(move || store.enroll(&record(n, 5), Some(5)).unwrap())
            })
            .collect();
        let outcomes: Vec<Enrolled> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let new = outcomes.iter().filter(|o| **o == Enrolled::New).count();
        assert_eq!(new, 5, "{outcomes:?}");
        assert!(outcomes
            .iter()
            .all(|o| matches!(o, Enrolled::New | Enrolled::QuotaFull { count: 5 })));
        assert_eq!(store.list().unwrap().len(), 5);
    }
}

#[cfg(test)]
mod tests {
    use super::suite::{self, record};
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
