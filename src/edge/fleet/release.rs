//! Releases of the device binary at the edge: the release key (made and kept offline),
//! signing a binary on a workstation, the releases folder beside `edge.yml`, and
//! serving release bytes to devices (`ConnectorMsg::Fetch`).
//!
//! ```text
//!  workstation:  release keygen --out release.key     (PKCS#8, 0600; prints the public key)
//!                release sign FILE --key release.key --target T [--version V]  -> FILE.sig
//!  edge:         release add FILE --target T --sig FILE.sig   (checked against fleet: release-key)
//!                releases/VERSION/TARGET        the binary
//!                releases/VERSION/TARGET.offer  the signed offer (src/release.rs)
//!  device:       Fetch { version, offset } -> a Release stream from offset
//! ```
//!
//! A signature file (`FILE.sig`) is text, one `key value` per line:
//!
//! ```text
//!  mailslot-release-signature v1
//!  version 0.2.0
//!  target aarch64-unknown-linux-musl
//!  size 1824824
//!  sha256 <64 hex>
//!  signature <128 hex>
//! ```

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::signature::{Ed25519KeyPair, KeyPair};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

use crate::edge::registry::Conn;
use crate::release::{self, Offer, MAX_RELEASE_SIZE, MAX_TARGET};
use crate::util::hex;
use crate::wire::StreamKind;

/// Downloads one edge serves at once; a device asking beyond it gets no stream and
/// asks again after its wait (30 s).
pub const MAX_DOWNLOADS: usize = 4;
/// Read buffer of one download.
const CHUNK: usize = 16 * 1024;
/// Largest signature or offer file read.
const MAX_SMALL: u64 = 4096;
const SIG_HEADER: &str = "mailslot-release-signature v1";

/// The releases an edge serves: its folder and the release key it checks them with.
pub struct Releases {
    pub dir: PathBuf,
    pub key: Option<[u8; 32]>,
    downloads: Arc<Semaphore>,
}

impl Releases {
    pub fn new(dir: PathBuf, key: Option<[u8; 32]>) -> Releases {
        Releases {
            dir,
            key,
            downloads: Arc::new(Semaphore::new(MAX_DOWNLOADS)),
        }
    }
}

/// A release as recorded: its offer and the file.
#[derive(Debug, Clone)]
pub struct Release {
    pub offer: Offer,
    pub file: PathBuf,
}

/// Makes a release key at `out` (PKCS#8, 0600, never replacing a file) and
/// `out.pub` (the public key in hex); the public key in hex.
pub fn keygen(out: &Path) -> Result<String, String> {
    let rng = ring::rand::SystemRandom::new();
    let der = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "no system randomness")?;
    let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).map_err(|_| "bad key")?;
    let public = hex(pair.public_key().as_ref());
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(out)
        .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    f.write_all(der.as_ref())
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let public_file = pub_path(out);
    fs::write(&public_file, format!("{public}\n"))
        .map_err(|e| format!("cannot write {}: {e}", public_file.display()))?;
    Ok(public)
}

fn pub_path(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

fn read_key(path: &Path) -> Result<Ed25519KeyPair, String> {
    let mut der = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_SMALL).read_to_end(&mut der))
        .map_err(|e| format!("cannot read the release key {}: {e}", path.display()))?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|_| format!("{} is not a PKCS#8 Ed25519 key", path.display()))
}

/// A public key: 64 hex characters, or a file holding them (`release keygen`'s
/// `.pub`).
pub fn parse_public_key(v: &str, base: &Path) -> Result<[u8; 32], String> {
    let text = match from_hex(v.trim()) {
        Some(_) => v.trim().to_string(),
        None => {
            let path = base.join(v.trim());
            let mut s = String::new();
            File::open(&path)
                .and_then(|f| f.take(MAX_SMALL).read_to_string(&mut s))
                .map_err(|e| format!("release-key: {v:?} is neither 64 hex characters nor a readable file ({}: {e})", path.display()))?;
            s.trim().to_string()
        }
    };
    from_hex(&text)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("release-key: {v:?} does not hold a public key (64 hex characters)"))
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.is_empty() {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| {
            s.get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// Size and SHA-256 of a file, read in chunks.
fn measure(path: &Path) -> Result<(u64, [u8; 32]), String> {
    let fail = |e: io::Error| format!("cannot read {}: {e}", path.display());
    let mut f = File::open(path).map_err(fail)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(fail)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        ctx.update(buf.get(..n).unwrap_or(&[]));
    }
    if size == 0 || size > MAX_RELEASE_SIZE {
        return Err(format!(
            "{}: {size} B is not the size of a release (1 B to {MAX_RELEASE_SIZE} B)",
            path.display()
        ));
    }
    let mut sha = [0u8; 32];
    sha.copy_from_slice(ctx.finish().as_ref());
    Ok((size, sha))
}

/// The version of `file`: `version` when given, else its version record.
fn version_for(file: &Path, version: Option<&str>) -> Result<String, String> {
    let v = match version {
        Some(v) => v.to_string(),
        None => {
            let bytes =
                fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            release::version_of(&bytes).map_err(|e| format!("{}: {e}", file.display()))?
        }
    };
    if !release::valid_version(&v) {
        return Err(format!(
            "{v:?} is not a version (1..={} of [0-9A-Za-z.+_-])",
            release::MAX_VERSION
        ));
    }
    Ok(v)
}

fn check_target(target: &str) -> Result<(), String> {
    // It names a file: never `.`, `..` or hidden.
    let ok = target
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && target.len() <= MAX_TARGET
        && target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    match ok {
        true => Ok(()),
        false => Err(format!("--target {target:?} is not a target triple")),
    }
}

/// An offer for `file` signed with `key` (metered devices not allowed).
fn sign_offer(
    file: &Path,
    key: &Ed25519KeyPair,
    target: &str,
    version: Option<&str>,
) -> Result<Offer, String> {
    check_target(target)?;
    // Measured first: the size is checked before the file is read whole for its version.
    let (size, sha256) = measure(file)?;
    let version = version_for(file, version)?;
    let msg = release::signed_message(&version, target, size, &sha256);
    Ok(Offer {
        version,
        target: target.to_string(),
        size,
        sha256,
        signature: key.sign(&msg).as_ref().to_vec(),
        metered_ok: false,
    })
}

/// `release sign`: writes `FILE.sig`; its path and the offer.
pub fn sign(
    file: &Path,
    key: &Path,
    target: &str,
    version: Option<&str>,
) -> Result<(PathBuf, Offer), String> {
    let offer = sign_offer(file, &read_key(key)?, target, version)?;
    let sig = sig_path(file);
    fs::write(&sig, sig_text(&offer))
        .map_err(|e| format!("cannot write {}: {e}", sig.display()))?;
    Ok((sig, offer))
}

fn sig_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".sig");
    PathBuf::from(p)
}

fn sig_text(o: &Offer) -> String {
    format!(
        "{SIG_HEADER}\nversion {}\ntarget {}\nsize {}\nsha256 {}\nsignature {}\n",
        o.version,
        o.target,
        o.size,
        hex(&o.sha256),
        hex(&o.signature)
    )
}

fn parse_sig(text: &str) -> Result<Offer, String> {
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(SIG_HEADER) {
        return Err(format!(
            "not a release signature (first line must be {SIG_HEADER:?})"
        ));
    }
    let (mut version, mut target, mut size, mut sha, mut sig) = (None, None, None, None, None);
    for line in lines {
        let Some((k, v)) = line.trim().split_once(' ') else {
            continue;
        };
        match k {
            "version" => version = Some(v.to_string()),
            "target" => target = Some(v.to_string()),
            "size" => size = v.parse::<u64>().ok(),
            "sha256" => sha = from_hex(v).and_then(|b| <[u8; 32]>::try_from(b).ok()),
            "signature" => sig = from_hex(v).filter(|b| b.len() == 64),
            _ => {}
        }
    }
    let missing = |what: &str| format!("the signature file has no valid {what} line");
    Ok(Offer {
        version: version.ok_or_else(|| missing("version"))?,
        target: target.ok_or_else(|| missing("target"))?,
        size: size.ok_or_else(|| missing("size"))?,
        sha256: sha.ok_or_else(|| missing("sha256"))?,
        signature: sig.ok_or_else(|| missing("signature"))?,
        metered_ok: false,
    })
}

/// How `release add` gets the signature.
pub enum Signer<'a> {
    /// A signature file made by `release sign`.
    Sig(&'a Path),
    /// The release key itself (an edge that holds it).
    Key(&'a Path),
}

/// `release add`: checks `file` against its signature and the configured release key
/// and records it in the releases folder.
pub fn add(
    releases: &Releases,
    file: &Path,
    target: &str,
    signer: Signer<'_>,
    version: Option<&str>,
) -> Result<Release, String> {
    check_target(target)?;
    let key = releases
        .key
        .ok_or("fleet: release-key: is not set in edge.yml: devices could not check any release")?;
    let offer = match signer {
        Signer::Key(k) => sign_offer(file, &read_key(k)?, target, version)?,
        Signer::Sig(s) => {
            let mut text = String::new();
            File::open(s)
                .and_then(|f| f.take(MAX_SMALL).read_to_string(&mut text))
                .map_err(|e| format!("cannot read {}: {e}", s.display()))?;
            let offer = parse_sig(&text).map_err(|e| format!("{}: {e}", s.display()))?;
            let (size, sha256) = measure(file)?;
            if (size, sha256) != (offer.size, offer.sha256) {
                return Err(format!(
                    "{} is not the file {} signed (size or SHA-256 differ)",
                    file.display(),
                    s.display()
                ));
            }
            if offer.target != target {
                return Err(format!(
                    "{} was signed for target {}, not {target}",
                    s.display(),
                    offer.target
                ));
            }
            if let Some(v) = version.filter(|v| *v != offer.version) {
                return Err(format!(
                    "{} was signed as version {}, not {v}",
                    s.display(),
                    offer.version
                ));
            }
            offer
        }
    };
    offer.verify(&key).map_err(|_| {
        format!(
            "the signature of {} does not verify against fleet: release-key ({}): signed \
             with another key?",
            file.display(),
            hex(&key)
        )
    })?;
    let folder = releases.dir.join(&offer.version);
    fs::create_dir_all(&folder).map_err(|e| format!("cannot make {}: {e}", folder.display()))?;
    let dest = folder.join(target);
    copy_atomic(file, &dest)?;
    let offer_file = folder.join(format!("{target}.offer"));
    let tmp = folder.join(format!(".{target}.offer.tmp"));
    fs::write(&tmp, offer.encode())
        .and_then(|()| fs::rename(&tmp, &offer_file))
        .map_err(|e| format!("cannot write {}: {e}", offer_file.display()))?;
    Ok(Release { offer, file: dest })
}

fn copy_atomic(from: &Path, to: &Path) -> Result<(), String> {
    let tmp = to.with_extension("tmp");
    let done = fs::copy(from, &tmp)
        .and_then(|_| File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, to));
    done.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot copy {} to {}: {e}", from.display(), to.display())
    })
}

/// Every release recorded, by version then target.
pub fn list(dir: &Path) -> Vec<Release> {
    let mut out = Vec::new();
    let Ok(versions) = fs::read_dir(dir) else {
        return out;
    };
    for v in versions.flatten() {
        out.extend(releases_in(&v.path()));
    }
    out.sort_by(|a, b| {
        (&a.offer.version, &a.offer.target).cmp(&(&b.offer.version, &b.offer.target))
    });
    out
}

/// The releases of one version's folder (one per target).
fn releases_in(folder: &Path) -> Vec<Release> {
    let Ok(files) = fs::read_dir(folder) else {
        return Vec::new();
    };
    files
        .flatten()
        .map(|f| f.path())
        .filter(|p| p.extension().is_some_and(|e| e == "offer"))
        .filter_map(|p| read_release(&p))
        .collect()
}

fn read_release(offer_file: &Path) -> Option<Release> {
    let mut bytes = Vec::new();
    File::open(offer_file)
        .ok()?
        .take(MAX_SMALL)
        .read_to_end(&mut bytes)
        .ok()?;
    let offer = Offer::decode(&bytes).ok()?;
    let file = offer_file.with_extension("");
    file.exists().then_some(Release { offer, file })
}

/// The release of `version` for a device of architecture `arch` (as the device reports
/// it, `connector::device::ARCH`: the target triple's first part, with 32-bit ARM as
/// `armv7` or `armv6`; `arm`, from older devices, takes the one 32-bit ARM release of
/// the version); the only one of that version when `arch` is unknown. `None` when there
/// is none or the choice is ambiguous.
pub fn find(dir: &Path, version: &str, arch: Option<&str>) -> Option<Release> {
    if !release::valid_version(version) {
        return None;
    }
    // Only that version's folder is read (a valid version names no other path).
    let all: Vec<Release> = releases_in(&dir.join(version))
        .into_iter()
        .filter(|r| r.offer.version == version)
        .collect();
    let fits: Vec<Release> = match arch {
        Some(a) => all
            .into_iter()
            .filter(|r| release::fits_arch(&r.offer.target, a))
            .collect(),
        None => all,
    };
    match <[Release; 1]>::try_from(fits) {
        Ok([r]) => Some(r),
        Err(_) => None,
    }
}

/// Serves `Fetch { version, offset }` from a device's connection: a Release stream
/// with the file from `offset`, through one buffer. Spawned; errors are logged here.
pub(crate) fn serve_fetch(
    releases: Option<Arc<Releases>>,
    conn: Arc<Conn>,
    arch: Option<String>,
    version: String,
    offset: u64,
    who: String,
) {
    let Some(releases) = releases else {
        return log::warn!("{who}: asked for release {version}: this edge has no releases");
    };
    let Ok(permit) = releases.downloads.clone().try_acquire_owned() else {
        return log::warn!(
            "{who}: release {version}: {MAX_DOWNLOADS} downloads running; it will ask again"
        );
    };
    tokio::spawn(async move {
        let _permit = permit;
        match send_release(&releases, &conn, arch.as_deref(), &version, offset).await {
            Ok(n) => log::info!("{who}: sent release {version} from byte {offset} ({n} B)"),
            Err(e) => log::warn!("{who}: release {version} from byte {offset}: {e}"),
        }
    });
}

async fn send_release(
    releases: &Releases,
    conn: &Conn,
    arch: Option<&str>,
    version: &str,
    offset: u64,
) -> Result<u64, String> {
    let r = find(&releases.dir, version, arch)
        .ok_or_else(|| format!("no release {version} for this device's architecture"))?;
    let mut file = File::open(&r.file).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if offset > len {
        return Err(format!("offset beyond the file's {len} B"));
    }
    file.seek(SeekFrom::Start(offset))
        .map_err(|e| e.to_string())?;
    log::info!("sending release {version} from byte {offset} of {len}");
    let header = crate::wire::StreamHeader {
        rules_generation: 0,
        rule: 0,
        kind: StreamKind::Release,
        hostname: version.to_string(),
    };
    let frame = crate::wire::encode_stream_frame(&header).map_err(|e| e.to_string())?;
    let mut stream = conn
        .session
        .open_stream()
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(&frame).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        let Some(chunk) = buf.get(..n).filter(|_| n > 0) else {
            break;
        };
        stream
            .write_all(chunk)
            .await
            .map_err(|e| format!("after {sent} B: {e}"))?;
        sent += n as u64;
    }
    stream.shutdown().await.map_err(|e| e.to_string())?;
    Ok(sent)
}

/// Largest body of `POST /api/v1/upgrade`: device ids and a few words.
pub const MAX_UPGRADE_BODY: usize = 1024 * 1024;
/// How long a device may take to report a release by default: the download, the
/// restart, the trial's deadline (120 s by default) and a reconnection.
pub const UPGRADE_WAIT: u64 = 900;

/// The body of `POST /api/v1/upgrade` (`devices upgrade`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpgradeRequest {
    /// Device ids; or empty with `fleet`.
    #[serde(default)]
    pub devices: Vec<String>,
    #[serde(default)]
    pub fleet: Option<String>,
    pub version: String,
    #[serde(default)]
    pub canary: Option<u8>,
    /// Devices on a metered link may download it.
    #[serde(default)]
    pub metered_ok: bool,
    /// How long a device may take to report, seconds ([`UPGRADE_WAIT`] by default).
    #[serde(default)]
    pub wait_secs: Option<u64>,
}

/// One rollout of an upgrade: the devices of one target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpgradeRollout {
    pub rollout: String,
    pub target: String,
    pub devices: usize,
    pub canaries: usize,
}

/// The answer of `POST /api/v1/upgrade`: one rollout per target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UpgradeAnswer {
    pub version: String,
    pub rollouts: Vec<UpgradeRollout>,
}

/// `POST /api/v1/upgrade`: offers release `version` to the devices, the build for each
/// device's architecture, through the rollout engine (one rollout per target). Errors
/// carry the HTTP status to answer.
pub async fn upgrade(
    inv: &super::Inventory,
    releases: Option<&Releases>,
    body: &[u8],
) -> Result<UpgradeAnswer, (u16, String)> {
    let bad = |e: String| (400u16, e);
    let req: UpgradeRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("not an upgrade request: {e}")))?;
    let releases = releases.ok_or((409, "this edge serves no releases".to_string()))?;
    if releases.key.is_none() {
        return Err((
            409,
            "fleet: release-key: is not set: devices have no key to check a release with".into(),
        ));
    }
    if !release::valid_version(&req.version) {
        return Err(bad(format!(
            "{:?} is not a version",
            crate::wire::printable(&req.version)
        )));
    }
    let all = inv.list();
    let mut chosen =
        super::api::chosen_devices(&all, &req.devices, req.fleet.as_deref()).map_err(bad)?;
    if chosen.is_empty() {
        return Err(bad("no devices to upgrade".into()));
    }
    // Online devices make the canaries: an offline canary would hold the rest back.
    chosen.sort_by_key(|v| !v.online);
    // One offer per target: group the devices by the release their architecture takes.
    let mut groups: Vec<(Release, Vec<String>)> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    for v in chosen {
        match find(&releases.dir, &req.version, Some(&v.record.arch)) {
            Some(r) => match groups
                .iter_mut()
                .find(|(g, _)| g.offer.target == r.offer.target)
            {
                Some((_, ids)) => ids.push(v.record.id.clone()),
                None => groups.push((r, vec![v.record.id.clone()])),
            },
            None => missing.push(format!(
                "{} ({})",
                v.record.id,
                crate::wire::printable(&v.record.arch)
            )),
        }
    }
    if !missing.is_empty() {
        return Err(bad(format!(
            "no release {} for the architecture of {} (release add it first; release ls lists them)",
            req.version,
            missing.join(", ")
        )));
    }
    let wait =
        std::time::Duration::from_secs(req.wait_secs.unwrap_or(UPGRADE_WAIT).clamp(1, 86_400));
    let mut rollouts = Vec::with_capacity(groups.len());
    for (r, targets) in groups {
        let mut offer = r.offer;
        offer.metered_ok = req.metered_ok;
        let change = super::rollout::Change {
            kind: crate::wire::ChangeKind::Release,
            id: offer.version.clone(),
            message: crate::wire::EdgeMsg::OfferRelease {
                offer: offer.encode(),
            },
            wait,
        };
        let devices = targets.len();
        let canaries = super::rollout::canary_count(devices, req.canary);
        let rollout = inv
            .rollouts()
            .start(change, targets, req.canary)
            .await
            .map_err(|e| (503u16, e))?;
        rollouts.push(UpgradeRollout {
            rollout,
            target: offer.target,
            devices,
            canaries,
        });
    }
    Ok(UpgradeAnswer {
        version: req.version,
        rollouts,
    })
}

/// Whether `devices ARGS` is `devices upgrade ...` (its first word, options and
/// their values skipped).
pub fn is_upgrade(args: &[std::ffi::OsString]) -> bool {
    let mut skip = false;
    for a in args {
        let a = a.to_string_lossy();
        if skip {
            skip = false;
        } else if matches!(
            &*a,
            "--config" | "-c" | "--fleet" | "--version" | "--canary"
        ) {
            skip = true;
        } else if !a.starts_with('-') {
            return a == "upgrade";
        }
    }
    false
}

/// `mailslot-edge devices upgrade --config edge.yml (ID... | --fleet F) --version V
/// [--canary N%] [--metered-ok] [--no-wait] [--json]`: starts the rollouts through the
/// running edge's admin API and follows them as `push-config` does.
pub fn upgrade_cli(args: Vec<std::ffi::OsString>, usage: &str) -> Result<(), String> {
    use lexopt::prelude::*;
    let mut parser = lexopt::Parser::from_args(args);
    let err = |e: lexopt::Error| e.to_string();
    let mut req = UpgradeRequest {
        devices: Vec::new(),
        fleet: None,
        version: String::new(),
        canary: None,
        metered_ok: false,
        wait_secs: None,
    };
    let (mut config, mut wait, mut json, mut sub) = (None::<PathBuf>, true, false, false);
    while let Some(arg) = parser.next().map_err(err)? {
        match arg {
            Long("help") | Short('h') => {
                print!("{usage}");
                return Ok(());
            }
            Long("config") | Short('c') => config = Some(parser.value().map_err(err)?.into()),
            Long("fleet") => req.fleet = Some(parser.value().map_err(err)?.string().map_err(err)?),
            Long("version") => req.version = parser.value().map_err(err)?.string().map_err(err)?,
            Long("canary") => {
                let v = parser.value().map_err(err)?.string().map_err(err)?;
                req.canary = Some(super::cli::parse_canary(&v)?);
            }
            Long("canary-wait") => {
                let v = parser.value().map_err(err)?.string().map_err(err)?;
                req.wait_secs = Some(super::cli::parse_canary_wait(&v)?);
            }
            Long("metered-ok") => req.metered_ok = true,
            Long("no-wait") => wait = false,
            Long("json") => json = true,
            Value(v) if !sub => sub = v == "upgrade",
            Value(v) if (req.devices.len() as u64) < super::MAX_DEVICES => {
                req.devices.push(v.string().map_err(err)?)
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    let config =
        config.ok_or("devices upgrade: --config edge.yml is required (the running edge's)")?;
    if req.version.is_empty() {
        return Err("devices upgrade: --version V is required (`release ls` lists them)".into());
    }
    match (&req.fleet, req.devices.is_empty()) {
        (Some(_), false) => {
            return Err("devices upgrade: name device IDs or --fleet F, not both".into())
        }
        (None, true) => return Err("devices upgrade: name the device IDs or --fleet F".into()),
        _ => {}
    }
    let admin = super::cli::Admin::from_config(&config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async {
        let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
        let answer = admin
            .ok_with(
                http::Method::POST,
                "/api/v1/upgrade",
                None,
                bytes::Bytes::from(body),
            )
            .await?;
        let a: UpgradeAnswer = serde_json::from_slice(&answer)
            .map_err(|e| format!("the edge's answer is not an upgrade: {e}"))?;
        if json && !wait {
            println!("{}", String::from_utf8_lossy(&answer));
            return Ok(());
        }
        for r in &a.rollouts {
            println!(
                "rollout {}: release {} for {} to {} device(s){}",
                r.rollout,
                a.version,
                r.target,
                r.devices,
                if r.canaries < r.devices {
                    format!(", {} canary device(s) first", r.canaries)
                } else {
                    String::new()
                }
            );
        }
        if !wait {
            return Ok(());
        }
        for r in &a.rollouts {
            super::cli::follow(&admin, &r.rollout, json).await?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::TempDir;

    #[test]
    fn devices_upgrade_is_told_apart_from_the_other_devices_commands() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert!(is_upgrade(&args(&["upgrade", "abc", "--version", "1"])));
        assert!(is_upgrade(&args(&[
            "--config", "e.yml", "upgrade", "--fleet", "f"
        ])));
        assert!(!is_upgrade(&args(&["--config", "upgrade", "ls"])));
        assert!(!is_upgrade(&args(&["ls", "--fleet", "upgrade"])));
        assert!(!is_upgrade(&args(&["push-config", "upgrade"])));
        assert!(!is_upgrade(&args(&[])));
    }

    #[test]
    fn signed_releases_are_added_and_found_and_foreign_signatures_refused() {
        let tmp = TempDir::new();
        let d = tmp.path();
        let key = d.join("release.key");
        let public = keygen(&key).unwrap();
        assert!(keygen(&key).is_err(), "a key is never replaced");
        let pk = parse_public_key(&public, d).unwrap();
        assert_eq!(parse_public_key("release.key.pub", d).unwrap(), pk);
        let bin = d.join("mailslot");
        fs::write(&bin, b"not really a binary").unwrap();
        let (sig, offer) = sign(&bin, &key, "aarch64-unknown-linux-musl", Some("1.0.0")).unwrap();
        assert_eq!(
            parse_sig(&fs::read_to_string(&sig).unwrap()).unwrap(),
            offer
        );

        let releases = Releases::new(d.join("releases"), Some(pk));
        let r = add(
            &releases,
            &bin,
            "aarch64-unknown-linux-musl",
            Signer::Sig(&sig),
            None,
        )
        .unwrap();
        assert_eq!(r.offer.version, "1.0.0");
        assert_eq!(
            find(&releases.dir, "1.0.0", Some("aarch64")).unwrap().offer,
            offer
        );
        assert!(find(&releases.dir, "1.0.0", Some("x86_64")).is_none());
        assert!(find(&releases.dir, "../x", None).is_none());
        assert_eq!(list(&releases.dir).len(), 1);

        // Another key's signature, a changed file, the wrong target: refused.
        let other = d.join("other.key");
        keygen(&other).unwrap();
        let (bad_sig, _) = sign(&bin, &other, "aarch64-unknown-linux-musl", Some("1.0.1")).unwrap();
        let e = add(
            &releases,
            &bin,
            "aarch64-unknown-linux-musl",
            Signer::Sig(&bad_sig),
            None,
        )
        .unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        assert!(add(
            &releases,
            &bin,
            "aarch64-unknown-linux-musl",
            Signer::Key(&other),
            Some("1.0.2")
        )
        .is_err());
        assert!(find(&releases.dir, "1.0.1", None).is_none());
        fs::write(&bin, b"changed").unwrap();
        assert!(add(
            &releases,
            &bin,
            "aarch64-unknown-linux-musl",
            Signer::Sig(&sig),
            None
        )
        .unwrap_err()
        .contains("not the file"));
        assert!(add(
            &releases,
            &bin,
            "x86_64-unknown-linux-musl",
            Signer::Key(&key),
            Some("2.0")
        )
        .is_ok());
        assert!(Releases::new(d.join("r2"), None).key.is_none());
        use crate::release::{arch_of, fits_arch};
        assert_eq!(arch_of("armv7-unknown-linux-musleabihf"), "armv7");
        assert_eq!(arch_of("arm-unknown-linux-musleabihf"), "armv6");
        assert_eq!(arch_of("aarch64-unknown-linux-musl"), "aarch64");
        assert!(fits_arch("armv7-unknown-linux-musleabihf", "armv7"));
        assert!(!fits_arch("armv7-unknown-linux-musleabihf", "armv6"));
        assert!(!fits_arch("arm-unknown-linux-musleabihf", "armv7"));
        assert!(fits_arch("arm-unknown-linux-musleabihf", "arm"));
        assert!(!fits_arch("aarch64-unknown-linux-musl", "arm"));
        for bad in ["..", ".", "a/b", ""] {
            assert!(check_target(bad).is_err(), "{bad}");
        }
        assert!(add(
            &releases,
            &bin,
            "x86_64-unknown-linux-musl",
            Signer::Key(&key),
            Some("..")
        )
        .is_err());
    }
}
