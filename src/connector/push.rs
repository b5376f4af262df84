//! Config pushes on the device: the keys it pins, and a pushed config's trial that
//! ends applied or rolled back by the device alone.
//!
//! ```text
//!  PushConfig ─▶ decode, verify (pinned config key; no pin: refused),
//!                check as `config check` does, keep enrol: and an edge
//!             ─▶ config.bin.trial (push id, deadline, digest)   written first
//!             ─▶ config.bin = push, config.bin.prev = the old one (config::store)
//!             ─▶ applied as a reload does; new edges or counts restart the slots
//!  a connection registers (or the edge accepts the rules) with it  ─▶ Applied
//!  nothing within the deadline ─▶ config.bin = config.bin.prev, reload ─▶ RolledBack
//! ```
//!
//! The deadline is [`DEFAULT_ROLLBACK_AFTER`] (120 s); the environment variable
//! [`ROLLBACK_AFTER_ENV`] (`MAILSLOT_ROLLBACK_AFTER=SECONDS`, 5 to 3600) shortens or
//! lengthens it. A process that stops during a trial (crash, power loss) finds the
//! marker at its next start: past its deadline the previous config is restored before
//! anything connects; before it, the trial goes on for what is left of it (at most the
//! full deadline, whatever the clock says). Nothing is written periodically: the
//! marker once before the swap, removed once at the end.
//!
//! Pins (`device.pins`, beside the config, 0600):
//!
//! ```text
//!  config <64 hex digits>     the fleet's config key, pinned the first time an edge
//!  release <64 hex digits>    told it (`wire::KeysTail`); never replaced
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use crate::push::SignedPush;
use crate::util::lock;
use crate::wire::{ChangeKind, ChangeOutcome, ChangeReport};

/// File name of the pinned keys, in the config's folder.
pub const PINS_FILE: &str = "device.pins";
/// How long a pushed config has to register with an edge before it is rolled back.
pub const DEFAULT_ROLLBACK_AFTER: Duration = Duration::from_secs(120);
/// The environment variable that sets the rollback deadline, in seconds.
pub const ROLLBACK_AFTER_ENV: &str = "MAILSLOT_ROLLBACK_AFTER";
/// Longest pins or trial marker file read.
const MAX_SMALL_FILE: u64 = 512;
/// Times a report is sent: once when known, once more after the next registration
/// (the connection it went on may have been lost before the edge read it).
const REPORT_SENDS: u8 = 2;

/// The keys a device pinned: remote changes must be signed with them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pins {
    /// The fleet's config key: config pushes.
    pub config_key: Option<[u8; 32]>,
    /// The release key: release offers.
    pub release_key: Option<[u8; 32]>,
}

impl Pins {
    /// The text of `device.pins`.
    pub(super) fn to_text(self) -> String {
        let mut out = String::new();
        for (name, key) in [("config", self.config_key), ("release", self.release_key)] {
            if let Some(k) = key {
                out.push_str(name);
                out.push(' ');
                out.push_str(&crate::util::hex(&k));
                out.push('\n');
            }
        }
        out
    }

    /// Reads `device.pins` text; an unknown line is ignored, a malformed key is an error.
    pub(super) fn parse(text: &str) -> Result<Pins, String> {
        let mut pins = Pins::default();
        for line in text.lines() {
            let Some((name, hex)) = line.trim().split_once(' ') else {
                continue;
            };
            let key = unhex32(hex.trim()).ok_or_else(|| format!("malformed {name} key"))?;
            match name {
                "config" => pins.config_key = Some(key),
                "release" => pins.release_key = Some(key),
                _ => {}
            }
        }
        Ok(pins)
    }

    /// `self` with the keys of `offered` it has none of; a pinned key is never replaced.
    /// Also says which offered keys differ from a pinned one.
    pub(super) fn merge(self, offered: &crate::wire::KeysTail) -> (Pins, Vec<&'static str>) {
        let mut next = self;
        let mut differ = Vec::new();
        for (name, mine, theirs) in [
            ("config", &mut next.config_key, offered.config_key),
            ("release", &mut next.release_key, offered.release_key),
        ] {
            match (*mine, theirs) {
                (None, Some(k)) => *mine = Some(k),
                (Some(m), Some(k)) if m != k => differ.push(name),
                _ => {}
            }
        }
        (next, differ)
    }
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Reads a small text file; `Ok(None)` when missing.
pub(super) fn read_small(path: &Path) -> Result<Option<String>, String> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_SMALL_FILE)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Some(text))
}

/// The rollback deadline: [`ROLLBACK_AFTER_ENV`] when set and sensible, else
/// [`DEFAULT_ROLLBACK_AFTER`].
pub(super) fn rollback_after() -> Duration {
    std::env::var(ROLLBACK_AFTER_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| (5..=3600).contains(s))
        .map_or(DEFAULT_ROLLBACK_AFTER, Duration::from_secs)
}

/// The trial marker of the config at `config`: `config.bin.trial`.
pub(super) fn marker_path(config: &Path) -> PathBuf {
    let mut name = config.as_os_str().to_os_string();
    name.push(".trial");
    PathBuf::from(name)
}

/// A pushed config on trial: its push id, deadline (Unix seconds) and the digest of
/// the pushed file (hex), which tells whether the swap happened before a stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Marker {
    pub(super) id: String,
    pub(super) deadline: u64,
    pub(super) digest: String,
}

impl Marker {
    fn to_text(&self) -> String {
        format!(
            "push {}\ndeadline {}\ndigest {}\n",
            self.id, self.deadline, self.digest
        )
    }

    fn parse(text: &str) -> Option<Marker> {
        let hex = |v: &str, n: usize| v.len() == n && v.bytes().all(|b| b.is_ascii_hexdigit());
        let (mut id, mut deadline, mut digest) = (None, None, None);
        for line in text.lines() {
            match line.trim().split_once(' ') {
                Some(("push", v)) if hex(v, 16) => id = Some(v.to_string()),
                Some(("deadline", v)) => deadline = v.parse().ok(),
                Some(("digest", v)) if hex(v, 16) => digest = Some(v.to_string()),
                _ => {}
            }
        }
        Some(Marker {
            id: id?,
            deadline: deadline?,
            digest: digest?,
        })
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reports of remote changes waiting for a connection to carry them.
#[derive(Default)]
pub(super) struct Reports {
    /// The latest report, how many more times to send it, and whether to send it now
    /// (else: after the next registration). One report at most: a newer one replaces.
    latest: std::sync::Mutex<Option<(ChangeReport, u8, bool)>>,
    /// Bumped when a report is to be sent now.
    pub(super) bump: tokio::sync::watch::Sender<u64>,
}

impl Reports {
    /// Queues `report`: sent now by a registered connection, and again after the next
    /// registration.
    pub(super) fn push(&self, report: ChangeReport) {
        *lock(&self.latest) = Some((report, REPORT_SENDS, true));
        self.bump.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The report to send now, if any (one connection takes it).
    pub(super) fn take_now(&self) -> Option<ChangeReport> {
        let mut latest = lock(&self.latest);
        let (report, left, now) = latest.as_mut()?;
        if !*now || *left == 0 {
            return None;
        }
        *now = false;
        *left -= 1;
        Some(report.clone())
    }

    /// The report to send on a connection that has just registered, if any.
    pub(super) fn take_on_register(&self) -> Option<ChangeReport> {
        let mut latest = lock(&self.latest);
        let (report, left, now) = latest.as_mut()?;
        if *left == 0 {
            return None;
        }
        *now = false;
        *left -= 1;
        Some(report.clone())
    }

    /// The id of the latest report of a config push, and the report.
    fn latest_config(&self, id: &str) -> Option<ChangeReport> {
        lock(&self.latest)
            .as_ref()
            .filter(|(r, _, _)| r.kind == ChangeKind::Config && r.id == id)
            .map(|(r, _, _)| r.clone())
    }
}

/// The trial in progress, if any.
#[derive(Default)]
pub(super) struct Trials {
    current: std::sync::Mutex<Option<String>>,
}

/// The digest of the config file now in force (first 8 bytes of its SHA-256; zeros
/// when unreadable).
fn digest_of(path: &Path) -> [u8; 8] {
    crate::config::store::read_bounded(path).map_or([0; 8], |b| digest_bytes(&b))
}

/// The first 8 bytes of the SHA-256 of `bytes`.
fn digest_bytes(bytes: &[u8]) -> [u8; 8] {
    let mut d = [0u8; 8];
    let h = ring::digest::digest(&ring::digest::SHA256, bytes);
    for (x, y) in d.iter_mut().zip(h.as_ref()) {
        *x = *y;
    }
    d
}

fn report(shared: &Shared, path: &Path, id: &str, outcome: ChangeOutcome) {
    shared.reports.push(ChangeReport {
        kind: ChangeKind::Config,
        id: id.to_string(),
        outcome,
        config_digest: digest_of(path),
    });
}

/// A `PushConfig` from the edge: verified, checked, stored and applied on trial; or
/// refused, and the refusal reported.
pub(super) fn received(shared: &Arc<Shared>, bytes: &[u8]) {
    let (Some(device), Some(path)) = (&shared.device, shared.config_path()) else {
        log::warn!("config push ignored: this connector is not an enrolled device");
        return;
    };
    let push = match SignedPush::decode(bytes) {
        Ok(p) => p,
        Err(e) => {
            log::error!("config push refused: {e}");
            report(
                shared,
                &path,
                "",
                ChangeOutcome::Refused {
                    reason: e.to_string(),
                },
            );
            return;
        }
    };
    let id = push.id_hex();
    if lock(&shared.trials.current).as_deref() == Some(id.as_str()) {
        return; // sent again while on trial: its report comes when the trial ends
    }
    if let Some(done) = shared.reports.latest_config(&id) {
        shared.reports.push(done);
        return;
    }
    match accept(shared, device, &path, &push) {
        Ok(generation) => {
            let wait = rollback_after();
            log::info!(
                "config {id} applied on trial: rolled back unless an edge registers it within {}s",
                wait.as_secs()
            );
            tokio::spawn(trial(shared.clone(), id, generation, wait));
        }
        Err(reason) => {
            log::error!("config push {id} refused: {reason}");
            report(shared, &path, &id, ChangeOutcome::Refused { reason });
        }
    }
}

/// Verifies, checks, stores and applies `push`; the generation it runs as.
fn accept(
    shared: &Arc<Shared>,
    device: &super::device::Device,
    path: &Path,
    push: &SignedPush,
) -> Result<u32, String> {
    let id = push.id_hex();
    if let Some(other) = lock(&shared.trials.current).as_ref() {
        return Err(format!("config {other} is still on trial"));
    }
    push.verify(device.pins().config_key.as_ref())
        .map_err(|e| e.to_string())?;
    let config =
        crate::config::codec::decode(&push.config).map_err(|e| format!("config check: {e}"))?;
    if config.enroll_key().is_none() {
        return Err("the config has no enroll: key: the device would lose its identity".into());
    }
    if config.edges.is_empty() {
        return Err("the config names no edge".into());
    }
    let rt = super::prepare(shared, config)?;
    let marker = Marker {
        id: id.clone(),
        deadline: now_unix().saturating_add(rollback_after().as_secs()),
        digest: crate::util::hex(&digest_bytes(&push.config)),
    };
    super::device::write_replace(&marker_path(path), marker.to_text().as_bytes())
        .map_err(|e| format!("cannot write the trial marker: {e}"))?;
    if let Err(e) = crate::config::store::write_atomic(path, &push.config) {
        let _ = std::fs::remove_file(marker_path(path));
        return Err(format!("cannot store {}: {e}", path.display()));
    }
    *lock(&shared.trials.current) = Some(id);
    // Only what fails with the new config is its rollback's reason.
    *lock(&shared.last_error) = None;
    let generation = rt.generation;
    super::install(shared, rt);
    device.config_changed(path);
    Ok(generation)
}

/// Waits for a registration with the config of `generation`; rolls back without one
/// within `wait`.
pub(super) async fn trial(shared: Arc<Shared>, id: String, generation: u32, wait: Duration) {
    let mut registered = shared.registered.subscribe();
    let ok = tokio::time::timeout(wait, registered.wait_for(|g| *g >= generation))
        .await
        .is_ok_and(|r| r.is_ok());
    let Some(path) = shared.config_path() else {
        return;
    };
    if ok {
        let _ = std::fs::remove_file(marker_path(&path));
        *lock(&shared.trials.current) = None;
        log::info!("config {id} applied: an edge registered it");
        report(&shared, &path, &id, ChangeOutcome::Applied);
        return;
    }
    let why = lock(&shared.last_error).clone().unwrap_or_else(|| {
        let edges: Vec<String> = shared
            .current
            .borrow()
            .config
            .edges
            .iter()
            .map(|e| e.to_string())
            .collect();
        format!(
            "no connection to {} registered within {}s",
            edges.join(", "),
            wait.as_secs()
        )
    });
    rollback(&shared, &path, &id, &why);
}

/// Restores the previous config, applies it, and reports why.
fn rollback(shared: &Arc<Shared>, path: &Path, id: &str, why: &str) {
    let reason = crate::wire::bounded_reason(format!("config {id} rolled back: {why}"));
    match restore(shared, path) {
        Ok(()) => log::error!("{reason}"),
        Err(e) => log::error!("{reason}; but restoring it failed: {e}"),
    }
    *lock(&shared.trials.current) = None;
    report(shared, path, id, ChangeOutcome::RolledBack { reason });
}

fn restore(shared: &Arc<Shared>, path: &Path) -> Result<(), String> {
    let bytes = crate::config::store::restore_prev(path)
        .map_err(|e| format!("cannot restore {}: {e}", path.display()))?;
    let _ = std::fs::remove_file(marker_path(path));
    let config = crate::config::codec::decode(&bytes).map_err(|e| e.to_string())?;
    let rt = super::prepare(shared, config)?;
    super::install(shared, rt);
    if let Some(d) = &shared.device {
        d.config_changed(path);
    }
    Ok(())
}

/// At start, before anything connects: a trial a stopped process left behind. Past
/// its deadline (or unreadable) the previous config is restored and the config to run
/// is returned; before it, the trial goes on once the connector runs.
pub(super) fn at_start(path: &Path) -> Option<StartTrial> {
    let text = match read_small(&marker_path(path)) {
        Ok(Some(t)) => t,
        Ok(None) => return None,
        Err(e) => {
            log::error!("{e}");
            String::new()
        }
    };
    let now = now_unix();
    let marker = Marker::parse(&text);
    let stored = crate::util::hex(&digest_of(path));
    if let Some(m) = marker.as_ref().filter(|m| m.digest != stored) {
        // Stopped between the marker and the swap: the pushed config never ran.
        let _ = std::fs::remove_file(marker_path(path));
        let reason = format!(
            "config {} rolled back: the connector stopped before it was stored",
            m.id
        );
        log::error!("{reason}");
        return Some(StartTrial::RolledBack {
            id: m.id.clone(),
            reason,
            config: None,
        });
    }
    match marker {
        Some(m) if now < m.deadline => {
            let left = Duration::from_secs(m.deadline - now).min(rollback_after());
            Some(StartTrial::Resume { id: m.id, left })
        }
        m => {
            let id = m.map(|m| m.id).unwrap_or_default();
            let why = "the connector stopped during the trial and its deadline passed";
            let restored = crate::config::store::restore_prev(path);
            let _ = std::fs::remove_file(marker_path(path));
            match restored {
                Ok(bytes) => {
                    let reason = format!("config {id} rolled back: {why}");
                    log::error!("{reason}");
                    Some(StartTrial::RolledBack {
                        id,
                        reason,
                        config: crate::config::codec::decode(&bytes).ok(),
                    })
                }
                Err(e) => {
                    log::error!("config {id} not rolled back ({why}): {e}");
                    None
                }
            }
        }
    }
}

/// What [`at_start`] found.
pub(super) enum StartTrial {
    /// A trial to go on with for `left`.
    Resume { id: String, left: Duration },
    /// The trial was rolled back now: run `config`, and report it.
    RolledBack {
        id: String,
        reason: String,
        config: Option<Box<crate::config::DeviceConfig>>,
    },
}

/// Carries out what [`at_start`] found, once the connector exists.
pub(super) fn after_start(shared: &Arc<Shared>, found: StartTrial) {
    let Some(path) = shared.config_path() else {
        return;
    };
    match found {
        StartTrial::Resume { id, left } => {
            log::info!(
                "config {id} is on trial: rolled back unless an edge registers it within {}s",
                left.as_secs()
            );
            *lock(&shared.trials.current) = Some(id.clone());
            let generation = shared.current.borrow().generation;
            tokio::spawn(trial(shared.clone(), id, generation, left));
        }
        StartTrial::RolledBack { id, reason, .. } => {
            report(shared, &path, &id, ChangeOutcome::RolledBack { reason });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::KeysTail;

    #[test]
    fn pins_round_trip_and_are_never_replaced() {
        let none = Pins::default();
        let offered = KeysTail {
            config_key: Some([1; 32]),
            release_key: None,
        };
        let (pins, differ) = none.merge(&offered);
        assert_eq!(pins.config_key, Some([1; 32]));
        assert!(differ.is_empty());
        assert_eq!(Pins::parse(&pins.to_text()).unwrap(), pins);
        // Another config key is not taken; a first release key is.
        let other = KeysTail {
            config_key: Some([2; 32]),
            release_key: Some([3; 32]),
        };
        let (next, differ) = pins.merge(&other);
        assert_eq!(next.config_key, Some([1; 32]));
        assert_eq!(next.release_key, Some([3; 32]));
        assert_eq!(differ, ["config"]);
        assert_eq!(Pins::parse(&next.to_text()).unwrap(), next);
        assert!(Pins::parse("config 00zz").is_err());
        assert_eq!(Pins::parse("").unwrap(), Pins::default());
    }

    /// `config.bin` (the pushed config) and `config.bin.prev` (the one before) in a
    /// folder, and a trial marker with `deadline`.
    fn trial_dir(deadline: u64) -> (crate::config::testutil::TempDir, PathBuf, Vec<u8>) {
        use crate::config::{codec, testutil};
        let dir = testutil::TempDir::new();
        let path = dir.path().join("config.bin");
        let old = codec::encode(&testutil::sample_config()).unwrap();
        let mut pushed = testutil::sample_config();
        pushed.tunnel = "pushed".try_into().unwrap();
        std::fs::write(&path, &old).unwrap();
        crate::config::store::write_atomic(&path, &codec::encode(&pushed).unwrap()).unwrap();
        let m = Marker {
            id: "0011223344556677".into(),
            deadline,
            digest: crate::util::hex(&digest_of(&path)),
        };
        std::fs::write(marker_path(&path), m.to_text()).unwrap();
        (dir, path, old)
    }

    #[test]
    fn a_trial_cut_by_a_stop_past_its_deadline_rolls_back_at_start() {
        let (_dir, path, old) = trial_dir(now_unix() - 1);
        let Some(StartTrial::RolledBack { id, reason, config }) = at_start(&path) else {
            panic!("not rolled back")
        };
        assert_eq!(id, "0011223344556677");
        assert!(
            reason.contains("rolled back: the connector stopped"),
            "{reason}"
        );
        assert_eq!(config.unwrap().tunnel.as_str(), "dev42");
        assert_eq!(std::fs::read(&path).unwrap(), old);
        assert!(!marker_path(&path).exists());
        assert!(at_start(&path).is_none(), "done once");
    }

    #[test]
    fn a_trial_cut_by_a_stop_before_its_deadline_goes_on_for_at_most_the_deadline() {
        let (_dir, path, old) = trial_dir(now_unix() + 1_000_000);
        let Some(StartTrial::Resume { id, left }) = at_start(&path) else {
            panic!("not resumed")
        };
        assert_eq!(id, "0011223344556677");
        assert!(left <= rollback_after(), "{left:?}");
        assert_ne!(
            std::fs::read(&path).unwrap(),
            old,
            "the pushed config stays"
        );
        // A marker that is not one rolls back too.
        std::fs::write(marker_path(&path), b"garbage").unwrap();
        assert!(matches!(
            at_start(&path),
            Some(StartTrial::RolledBack { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), old);
    }

    #[test]
    fn a_stop_between_the_marker_and_the_swap_restores_nothing() {
        let (_dir, path, _) = trial_dir(now_unix() + 1000);
        let text = std::fs::read_to_string(marker_path(&path)).unwrap();
        let mut m = Marker::parse(&text).unwrap();
        m.digest = "0000000000000000".into();
        std::fs::write(marker_path(&path), m.to_text()).unwrap();
        let running = std::fs::read(&path).unwrap();
        let Some(StartTrial::RolledBack { reason, config, .. }) = at_start(&path) else {
            panic!("not reported")
        };
        assert!(reason.contains("stopped before it was stored"), "{reason}");
        assert!(config.is_none(), "the config in force stays");
        assert_eq!(std::fs::read(&path).unwrap(), running);
        assert!(!marker_path(&path).exists());
    }

    #[test]
    fn markers_round_trip_and_garbage_is_none() {
        let m = Marker {
            id: "0011223344556677".into(),
            deadline: 1_800_000_000,
            digest: "8899aabbccddeeff".into(),
        };
        assert_eq!(Marker::parse(&m.to_text()), Some(m));
        assert_eq!(Marker::parse("push 12\ndeadline 5\n"), None);
        assert_eq!(Marker::parse(""), None);
    }

    #[test]
    fn a_report_goes_now_and_once_more_after_a_registration() {
        let r = Reports::default();
        assert!(r.take_now().is_none());
        let report = ChangeReport {
            kind: ChangeKind::Config,
            id: "00".into(),
            outcome: ChangeOutcome::Applied,
            config_digest: [0; 8],
        };
        r.push(report.clone());
        assert_eq!(r.take_now(), Some(report.clone()));
        assert!(r.take_now().is_none(), "one connection takes it");
        assert_eq!(r.take_on_register(), Some(report));
        assert!(r.take_on_register().is_none());
    }
}
