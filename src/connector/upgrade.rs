//! Binary updates on the device: a release the edge offers is checked, downloaded over
//! the tunnel, installed for trial and restarted into; the trial confirms itself at its
//! first registration or rolls itself back (the file steps are [`crate::launch`]'s).
//!
//! ```text
//!  edge: OfferRelease { offer }      -> decode, verify against the pinned release key,
//!                                       this binary's target, metered link allowed?
//!  device: Fetch { version, offset } -> edge opens a Release stream, sends from offset
//!          ... the stream ends early: Fetch again from the file's length (resume)
//!  complete: SHA-256 of the file     -> mailslot.trial, drain, exec the launcher
//!  trial binary registers            -> confirm; Change { Release, Applied }
//!  trial misses its deadline         -> roll back, exec the launcher (the old binary);
//!                                       Change { Release, RolledBack { reason } } later
//! ```
//!
//! Memory: one download at a time, through one fixed buffer of [`CHUNK`] bytes; the
//! outgoing messages wait in a queue of [`OUTBOX`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Connector, Shared};
use crate::launch::{self, Report, Role};
use crate::release::{self, Offer};
use crate::transport::TunnelStream;
use crate::util::lock;
use crate::wire::{ChangeKind, ChangeOutcome, ChangeReport, ConnectorMsg, StreamHeader};

/// Read buffer of a download.
const CHUNK: usize = 16 * 1024;
/// Messages waiting for a control stream (fetches, reports).
const OUTBOX: usize = 8;
/// How long the edge has to open the stream a fetch asked for.
const STREAM_WAIT: Duration = Duration::from_secs(30);
/// Longest silence within a release stream.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Fetches of one download (each resumes where the file ends, after a wait of 1 s more
/// each time up to 10 s) before it is given up: about two and a half minutes.
const MAX_FETCHES: u32 = 20;
/// The version a `.part` file belongs to.
const PART_VERSION: &str = "part.version";

/// Where the state folder is and how long a trial has; set once at start.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub trial_deadline: Duration,
    /// The config file, whose digest the reports carry.
    pub config: PathBuf,
}

/// A connector's binary-update state.
pub(super) struct Upgrades {
    settings: OnceLock<Settings>,
    /// A download is running.
    busy: AtomicBool,
    /// A trial confirmed, or reports queued, at the first registration only.
    registered: AtomicBool,
    out_tx: mpsc::Sender<ConnectorMsg>,
    out_rx: tokio::sync::Mutex<mpsc::Receiver<ConnectorMsg>>,
    /// Set once a new binary is installed, or a trial rolled back: drain and relaunch.
    restart: watch::Sender<bool>,
}

impl Default for Upgrades {
    fn default() -> Self {
        let (out_tx, out_rx) = mpsc::channel(OUTBOX);
        Upgrades {
            settings: OnceLock::new(),
            busy: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            out_tx,
            out_rx: tokio::sync::Mutex::new(out_rx),
            restart: watch::channel(false).0,
        }
    }
}

impl Upgrades {
    fn settings(&self) -> Settings {
        self.settings.get().cloned().unwrap_or_else(|| Settings {
            state_dir: PathBuf::from(launch::DEFAULT_STATE_DIR),
            trial_deadline: launch::DEFAULT_TRIAL_DEADLINE,
            config: PathBuf::new(),
        })
    }

    /// The next message for the edge; whichever session asks first sends it.
    pub(super) async fn next_out(&self) -> Option<ConnectorMsg> {
        self.out_rx.lock().await.recv().await
    }

    fn send(&self, msg: ConnectorMsg) {
        if self.out_tx.try_send(msg).is_err() {
            log::warn!("release: too many messages for the edge waiting; one dropped");
        }
    }

    fn report(&self, id: &str, outcome: ChangeOutcome) {
        self.send(ConnectorMsg::Change(ChangeReport {
            kind: ChangeKind::Release,
            id: id.to_string(),
            outcome,
            config_digest: digest_of(&self.settings().config),
        }));
    }
}

impl Connector {
    /// Where updates are kept and how long a trial binary has to register (before
    /// [`Connector::run`]).
    pub fn set_upgrades(&self, settings: Settings) {
        let _ = self.shared.upgrade.settings.set(settings);
    }

    /// Resolves when the connector wants to be restarted into another binary (a new
    /// one installed for trial, or a trial rolled back): drain, then
    /// [`launch::relaunch`].
    pub async fn restart_wanted(&self) {
        let mut rx = self.shared.upgrade.restart.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Set once [`Connector::restart_wanted`] resolved.
    pub fn restart_flag(&self) -> watch::Receiver<bool> {
        self.shared.upgrade.restart.subscribe()
    }

    /// For a trial binary: rolls it back when no connection registered within its
    /// deadline. Runs until then (forever otherwise).
    pub async fn watch_trial(&self) {
        if launch::role() != Role::Trial {
            return std::future::pending().await;
        }
        let up = self.shared.upgrade.clone();
        let settings = up.settings();
        tokio::time::sleep(settings.trial_deadline).await;
        if up.registered.load(Ordering::Acquire) {
            return std::future::pending().await;
        }
        let reason = format!(
            "it did not register with an edge within {}s",
            settings.trial_deadline.as_secs()
        );
        match launch::roll_back(&settings.state_dir, &reason) {
            Ok(()) => {
                up.restart.send_replace(true);
            }
            Err(e) => log::error!("release: cannot roll back: {e}"),
        }
        std::future::pending().await
    }
}

/// A connection registered: a trial binary confirms itself, and an outcome not yet
/// reported is queued for the edge. Once per process.
pub(super) fn registered(shared: &Shared) {
    let up = &shared.upgrade;
    if up.registered.swap(true, Ordering::AcqRel) {
        return;
    }
    let state = up.settings().state_dir;
    if launch::role() == Role::Trial {
        match launch::confirm(&state) {
            Ok(Some(v)) => log::info!("release {v} confirmed: it is the installed binary now"),
            Ok(None) => {}
            Err(e) => log::error!("release: cannot confirm the trial binary: {e}"),
        }
    }
    match launch::pending_report(&state) {
        Some(Report::Applied { version }) => up.report(&version, ChangeOutcome::Applied),
        Some(Report::RolledBack { version, reason }) => {
            up.report(&version, ChangeOutcome::RolledBack { reason })
        }
        None => return,
    }
    // Queued for the first connection that sends: a loss now loses one report.
    if let Err(e) = launch::reported(&state) {
        log::warn!("release: cannot clear the report: {e}");
    }
}

/// `EdgeMsg::OfferRelease`: checks the offer and starts its download, or reports why
/// not.
pub(super) fn offered(shared: &Shared, bytes: &[u8], release_key: Option<[u8; 32]>) {
    let up = &shared.upgrade;
    let offer = match Offer::decode(bytes) {
        Ok(o) => o,
        Err(e) => {
            log::warn!("release offer refused: {e}");
            return up.report("?", refused(e.to_string()));
        }
    };
    let metered = shared.current.borrow().config.metered;
    if let Err(why) = check(&offer, release_key, metered) {
        log::warn!("release {} refused: {why}", offer.version);
        return up.report(&offer.version, refused(why));
    }
    if offer.version == release::version() {
        return up.report(&offer.version, ChangeOutcome::Applied);
    }
    let state = up.settings().state_dir;
    // The edge offers a change again until it hears the outcome: say it again.
    if let Some((version, reason)) = launch::failed_release(&state) {
        if version == offer.version {
            log::info!("release {version} was rolled back here before: not taken again");
            return up.report(&version, ChangeOutcome::RolledBack { reason });
        }
    }
    if launch::role() == Role::Trial && state.join(launch::TRIAL).exists() {
        return up.report(
            &offer.version,
            refused("a release is on trial; offer again once it is confirmed".into()),
        );
    }
    if up.busy.swap(true, Ordering::AcqRel) {
        log::debug!("release {}: a download is running already", offer.version);
        return;
    }
    log::info!(
        "release {} offered ({} B): downloading into {}",
        offer.version,
        offer.size,
        state.display()
    );
    let up = shared.upgrade.clone();
    tokio::spawn(async move {
        let result = download(&up, &state, &offer).await;
        let result = result.and_then(|part| {
            launch::install_trial(&state, &part, &offer.version)
                .map_err(|e| format!("cannot install it for trial: {e}"))
        });
        match result {
            Ok(()) => {
                log::info!(
                    "release {} installed for trial; restarting into it",
                    offer.version
                );
                up.restart.send_replace(true);
            }
            Err(why) => {
                log::error!("release {}: {why}", offer.version);
                up.report(&offer.version, refused(why));
            }
        }
        up.busy.store(false, Ordering::Release);
    });
}

/// The release key this device pinned (`device.pins`); none without enrolment.
pub(super) fn pinned_release_key(shared: &Shared) -> Option<[u8; 32]> {
    shared.device.as_ref().and_then(|d| d.pins().release_key)
}

fn refused(reason: String) -> ChangeOutcome {
    ChangeOutcome::Refused { reason }
}

/// Whether this device takes `offer`: signed by its pinned key, for its target, and
/// allowed on its link.
fn check(offer: &Offer, release_key: Option<[u8; 32]>, metered: bool) -> Result<(), String> {
    let key = release_key.ok_or("no release key pinned (the edge has none configured)")?;
    offer.verify(&key).map_err(|e| e.to_string())?;
    if offer.target != release::TARGET {
        return Err(format!(
            "it is built for {}, this device runs {}",
            offer.target,
            release::TARGET
        ));
    }
    if metered && !offer.metered_ok {
        return Err("the link is metered and the offer does not allow downloading on one".into());
    }
    Ok(())
}

/// The stream the running download waits for: its version and where to hand it.
type Waiter = (String, oneshot::Sender<TunnelStream>);

/// One download at a time waits for its stream here (origin.rs hands Release streams
/// over with [`release_stream`]).
static WAITING: Mutex<Option<Waiter>> = Mutex::new(None);

/// A Release stream the edge opened: to the download waiting for it, or dropped.
pub(crate) fn release_stream(header: StreamHeader, mut stream: TunnelStream) {
    let waiter = lock(&WAITING).take();
    match waiter {
        Some((version, tx)) if version == header.hostname => {
            let _ = tx.send(stream);
        }
        other => {
            *lock(&WAITING) = other;
            log::debug!("release stream for {} nobody waits for", header.hostname);
            stream.abort();
        }
    }
}

/// Downloads `offer` into the state folder's `.part` file, resuming from its length,
/// and checks its SHA-256; the complete file's path.
async fn download(up: &Upgrades, state: &Path, offer: &Offer) -> Result<PathBuf, String> {
    let fail = |what: &str, e: io::Error| format!("{what}: {e}");
    fs::create_dir_all(state).map_err(|e| fail(&format!("cannot make {}", state.display()), e))?;
    let part = state.join(launch::PART);
    let marker = state.join(PART_VERSION);
    // A part of another version starts over.
    if fs::read_to_string(&marker).ok().as_deref() != Some(offer.version.as_str()) {
        let _ = fs::remove_file(&part);
        launch::write_small(&marker, offer.version.as_bytes())
            .map_err(|e| fail("cannot start the download", e))?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .map_err(|e| fail(&format!("cannot open {}", part.display()), e))?;
    let mut buf = vec![0u8; CHUNK];
    let mut fetches = 0;
    loop {
        let have = file.metadata().map_err(|e| fail("download", e))?.len();
        if have >= offer.size {
            break;
        }
        if fetches == MAX_FETCHES {
            return Err(format!(
                "download stopped at {have} of {} B after {MAX_FETCHES} tries",
                offer.size
            ));
        }
        if fetches > 0 {
            // A stream that ended early: the connection may be coming back; wait a
            // little longer each time (1 s, 2 s, ... 10 s).
            tokio::time::sleep(Duration::from_secs(u64::from(fetches.min(10)))).await;
        }
        fetches += 1;
        if have > 0 {
            log::info!("release {}: resuming at byte {have}", offer.version);
        }
        let (tx, rx) = oneshot::channel();
        *lock(&WAITING) = Some((offer.version.clone(), tx));
        up.send(ConnectorMsg::Fetch {
            version: offer.version.clone(),
            offset: have,
        });
        let mut stream = match tokio::time::timeout(STREAM_WAIT, rx).await {
            Ok(Ok(s)) => s,
            _ => {
                lock(&WAITING).take();
                log::warn!(
                    "release {}: no stream from the edge; asking again",
                    offer.version
                );
                continue;
            }
        };
        let mut left = offer.size - have;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
            let Some(slice) = buf.get_mut(..want) else {
                break;
            };
            let n = match tokio::time::timeout(READ_TIMEOUT, stream.read(slice)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(n)) => n,
            };
            let Some(data) = buf.get(..n) else { break };
            file.write_all(data)
                .map_err(|e| fail("cannot write the download", e))?;
            left -= n as u64;
        }
        stream.abort();
        file.sync_data()
            .map_err(|e| fail("cannot write the download", e))?;
    }
    drop(file);
    let digest = sha256_of(&part, &mut buf).map_err(|e| fail("cannot read the download", e))?;
    if digest != offer.sha256 {
        let _ = fs::remove_file(&part);
        return Err("the download does not match the release's SHA-256; deleted".into());
    }
    let _ = fs::remove_file(&marker);
    Ok(part)
}

/// The first 8 bytes of the SHA-256 of the config file (zeros when unreadable), as
/// registrations carry it.
fn digest_of(path: &Path) -> [u8; 8] {
    let mut d = [0u8; 8];
    if let Ok(bytes) = crate::config::store::read_bounded(path) {
        let h = ring::digest::digest(&ring::digest::SHA256, &bytes);
        for (x, y) in d.iter_mut().zip(h.as_ref()) {
            *x = *y;
        }
    }
    d
}

/// The SHA-256 of a file, read through `buf`.
fn sha256_of(path: &Path, buf: &mut [u8]) -> io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            break;
        }
        ctx.update(buf.get(..n).unwrap_or(&[]));
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn signed(target: &str, metered_ok: bool) -> (Offer, [u8; 32]) {
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let k = Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
        let sha = [1u8; 32];
        let msg = release::signed_message("9.9.9", target, 10, &sha);
        let offer = Offer {
            version: "9.9.9".into(),
            target: target.into(),
            size: 10,
            sha256: sha,
            signature: k.sign(&msg).as_ref().to_vec(),
            metered_ok,
        };
        (offer, k.public_key().as_ref().try_into().unwrap())
    }

    #[test]
    fn offers_are_checked_for_key_target_and_metered_links() {
        let (offer, key) = signed(release::TARGET, false);
        check(&offer, Some(key), false).unwrap();
        assert!(check(&offer, None, false)
            .unwrap_err()
            .contains("no release key"));
        let (_, other) = signed(release::TARGET, false);
        assert!(check(&offer, Some(other), false)
            .unwrap_err()
            .contains("does not verify"));
        assert!(check(&offer, Some(key), true)
            .unwrap_err()
            .contains("metered"));
        let (allowed, key2) = signed(release::TARGET, true);
        check(&allowed, Some(key2), true).unwrap();
        let (wrong, key3) = signed("mips-unknown-linux-musl", false);
        assert!(check(&wrong, Some(key3), false)
            .unwrap_err()
            .contains("built for mips"));
    }
}
