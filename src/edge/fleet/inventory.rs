//! The inventory: every device this edge knows, as records (kept in the [`Store`]) and
//! what the registry says of it now (online, connections, protocol, round trip).
//!
//! [`DeviceView`] is what every reader gets: the admin API (`/api/v1/devices`), the
//! `devices` commands, the fleet page and the per-fleet metrics.

use serde::Serialize;

#[allow(unused_imports)]
use super::Store;
use super::DeviceRecord;

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

/// A device as the readers of the inventory see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    #[serde(flatten)]
    pub record: DeviceRecord,
    /// At least one connection registered now.
    pub online: bool,
    pub connections: Vec<ConnView>,
}
