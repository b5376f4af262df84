//! Where the fleet's records survive a restart.
//!
//! The [`Store`] trait is small on purpose: records by device id, enrolment under a
//! quota as one atomic step, revocation. It says nothing of SQL or of files, so a shared
//! engine (Redis: a hash per device, a set per enrolment key, a `WATCH`/`MULTI` or Lua
//! step for the quota) implements it as well as the embedded one does.
//!
//! Calls block (a disk or a network round trip): call them from
//! `tokio::task::spawn_blocking`, or from a task that owns a blocking thread.

use serde::{Deserialize, Serialize};

use crate::wire::Health;

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
}
