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
//! [`RedbStore`] (`store/embedded.rs`) is the embedded implementation, one file
//! (`fleet.redb` beside `edge.yml` by default); `edge::cluster::store` is the Redis one.
//! `suite` holds the behaviour tests both pass.
//!
//! Remote changes (config pushes, release offers) keep per-device state apart from the
//! device records, so a record's layout (and its batched updates) stays as it was: a
//! [`ChangeRecord`] per device and kind, written through [`Store::put_changes`], which
//! never moves a change back (a `Sent` written late never hides the `Applied` another
//! edge wrote first), and a [`RolloutRecord`] per rollout, which carries the signed
//! message so that any edge sharing the store can deliver a pending change.

use serde::{Deserialize, Serialize};

use super::revoked::{RevokedId, RevokedKind, MAX_REVOKED_IDS};
use crate::wire::{ChangeKind, Health, HealthCostTail};

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
    /// The cost tail of the latest health report (`None` from a connector that sends
    /// none). Stored after the record ([`encode_record`]), so that records written
    /// before it existed decode, and edges that predate it read records written after.
    #[serde(skip)]
    pub health_cost: Option<HealthCostTail>,
}

/// A record as both stores keep it: the postcard record, then its health cost tail
/// when it has one (an edge that predates the tail reads the record and ignores it).
pub(crate) fn encode_record(record: &DeviceRecord) -> Result<Vec<u8>, postcard::Error> {
    let mut bytes = postcard::to_allocvec(record)?;
    if let Some(cost) = &record.health_cost {
        bytes.extend_from_slice(&postcard::to_allocvec(cost)?);
    }
    Ok(bytes)
}

/// A record written by [`encode_record`] (or before the tail existed: none). A tail
/// that does not decode is dropped; the record stands.
pub(crate) fn decode_record(bytes: &[u8]) -> Result<DeviceRecord, postcard::Error> {
    let (mut record, rest): (DeviceRecord, _) = postcard::take_from_bytes(bytes)?;
    if !rest.is_empty() {
        record.health_cost = postcard::take_from_bytes(rest).ok().map(|(c, _)| c);
    }
    Ok(record)
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

mod embedded;
pub use self::embedded::RedbStore;

/// The behaviour every [`Store`] shows, as test steps over any implementation: the
/// embedded one's tests run them, and so do the Redis one's (`edge::cluster::store`).
#[cfg(test)]
pub(crate) mod suite;

#[cfg(test)]
mod record_tests {
    use super::*;
    use crate::wire::HealthCostTail;

    /// Records written before the health cost tail decode (without a cost); records
    /// written with it decode whole here and as the bare record by an edge that
    /// predates it; a damaged tail leaves the record standing.
    #[test]
    fn the_health_cost_tail_of_a_record_is_optional_both_ways() {
        let mut r = suite::record(1, 7);
        r.health = Some(Health {
            uptime_secs: 9,
            ..Default::default()
        });
        let old = postcard::to_allocvec(&r).unwrap();
        assert_eq!(decode_record(&old).unwrap(), r);
        assert_eq!(encode_record(&r).unwrap(), old, "no cost, no tail");
        r.health_cost = Some(HealthCostTail {
            day: 20_427,
            today_secs: 60,
            today_carried: 1,
            today_wire: u64::MAX,
            yesterday_secs: 0,
            yesterday_carried: 0,
            yesterday_wire: 0,
        });
        let new = encode_record(&r).unwrap();
        assert_eq!(decode_record(&new).unwrap(), r);
        let read_by_old: DeviceRecord = postcard::from_bytes(&new).unwrap();
        assert_eq!(read_by_old.health_cost, None);
        assert_eq!(read_by_old.health, r.health);
        let mut damaged = old.clone();
        damaged.extend_from_slice(&[0xff; 7]);
        assert_eq!(decode_record(&damaged).unwrap().health_cost, None);
        assert!(decode_record(&old[..old.len() - 1]).is_err());
    }
}
