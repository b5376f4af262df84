//! mailslot: publish services that live on small devices through an outbound tunnel.
//!
//! - [`config`]: the device config model, its bounded binary format and atomic store.
pub mod config;
