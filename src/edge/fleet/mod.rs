//! The fleet: devices that enrol with their own key from one golden image, and the
//! edge's record of every device it has seen, online or not.
//!
//! - `enroll`: enrolment keys (`mse1.…`, `mailslot-edge enroll-key`) and device
//!   credentials (`msd1.…`), both signed with the edge's token key; the check of a
//!   device's proof of possession at registration.
//! - `inventory`: the records in memory, what registrations, health reports and
//!   disconnections change, written to the store behind the scenes.
//! - [`store`]: where records survive a restart: the [`Store`] interface and its
//!   embedded implementation (redb); a shared engine (Redis) implements the same trait.
//! - [`release`]: the release key, signed releases in the releases folder, and
//!   serving their bytes to devices.
//! - [`push`]: the fleet's config keys (derived from the signing key), the checks a
//!   pushed config passes, the signed push.
//! - [`rollout`]: remote changes (config pushes, release offers) taken to devices,
//!   canaries first, stopped on the first rollback; state in the store.
//! - `api`, `page`, `metrics`, `cli`: what people see of it: the admin API's JSON
//!   (`/api/v1/devices`), the fleet page (`/fleet`), the per-fleet families on
//!   `/metrics`, and `mailslot-edge devices ls|show|revoke|push-config`.
//!
//! A device registers with an empty tunnel token and a `wire::DeviceTail`: its public
//! key, a signature over the connection's nonce, and its credential or its enrolment
//! key. Enrolment checks the key's signature, expiry and quota, records the device and
//! issues a credential bound to the device's key: its hostnames (the key's patterns with
//! `{device}` expanded), fleet and expiry. The connection then serves as one of a tunnel
//! whose id is derived from the device's key.

pub mod api;
pub mod cli;
pub mod enroll;
pub mod inventory;
pub mod metrics;
pub mod page;
pub mod push;
pub mod release;
pub mod revoke_cli;
pub mod revoked;
pub mod rollout;
pub mod store;

pub use enroll::Enroller;
pub use inventory::{ConnView, DeviceView, Inventory};
pub use store::{
    ChangeRecord, ChangeState, DeviceRecord, Enrolled, RedbStore, RolloutRecord, Store, StoreError,
    MAX_DEVICES, MAX_ROLLOUTS,
};
