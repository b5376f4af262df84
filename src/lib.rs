//! mailslot: publish services that live on small devices through an outbound tunnel.
//!
//! - [`wire`]: every byte that crosses the tunnel: version, messages, framing.
//! - [`config`]: the device config model, its bounded binary format and atomic store.
//! - [`hostname`]: the canonical form of hostnames and the one hostname-pattern grammar.
//! - [`identity`]: a device's id, derived from its key, and the `{device}` placeholder.
//! - [`tls`]: TLS client settings, tolerant of a device clock that is not set yet.
//! - [`clock`]: the time certificates are checked against, and the last-known-good time.
//! - [`transport`]: QUIC (and HTTP/2) sessions behind one interface.
//! - [`connector`]: the device side: supervisor, streams, origins.
//! - [`access`]: the operator's client for SSH and TCP services (`mailslot access`).
//! - [`push`]: the signed config push, its bounded format and its signature check.
//! - [`provision`]: first boot: a `config.bin` on the boot partition is installed.
//! - [`release`]: a build's version record and the signed release offer.
//! - [`launch`]: the launcher: the installed (or trial) binary in the state folder.
//! - [`runas`]: dropping root for an unprivileged user.
//! - [`sdnotify`]: systemd readiness, watchdog and stop notifications.
//! - [`heap`]: the device binary's allocator on musl.
//! - [`util`]: helpers owned by neither side: hex, random bytes, a poison-tolerant lock.
//! - `edge` (feature `edge`): the server visitors and connectors reach.
pub mod access;
pub mod clock;
pub mod config;
pub mod connector;
#[cfg(feature = "edge")]
pub mod demo;
#[cfg(feature = "edge")]
pub mod edge;
pub mod heap;
pub mod hostname;
pub mod identity;
pub mod launch;
pub mod provision;
pub mod push;
pub mod release;
pub(crate) mod runas;
pub mod sdnotify;
pub mod tls;
pub(crate) mod transport;
pub mod util;
pub mod wire;

/// The runtime of everything the `mailslot` binary runs (connector, access client,
/// `demo`, `provision`): one thread. A device's tunnel is a few connections and the
/// streams they carry, which one core keeps up with; more worker threads only hand
/// wake-ups between cores (a futex call per request or so) and give glibc an arena per
/// thread, while the board's own services want the other cores. On two cores under
/// `wrk` this cut the connector's CPU per request by a quarter and its peak RSS by
/// 0.8 MiB, at the same bulk throughput.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}
