//! The enrolled device's side of registration: its key ([`crate::identity`]), the
//! credential the edge issued (kept beside the config as `device.cred`, read once at
//! start and shared by every connection), the facts it tells the edge about itself,
//! and the [`DeviceTail`] that proves the key on each connection.
//!
//! ```text
//!  /etc/mailslot/config.bin    enroll: mse1.…  (the same file on every board)
//!  /etc/mailslot/device.key    PKCS#8 Ed25519, 0600, made on first start, written once
//!  /etc/mailslot/device.cred   msd1.… from the edge, 0600, replaced whole on renewal
//!  /etc/mailslot/device.pins   the keys remote changes are signed with, pinned the
//!                              first time an edge tells them; never replaced
//! ```

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::push::{read_small, Pins, PINS_FILE};
use crate::identity::{self, DeviceKey};
use crate::util::lock;
use crate::wire::{DeviceFacts, DeviceTail, KeysTail};

/// File name of the credential, in the config's folder.
pub const CRED_FILE: &str = "device.cred";
/// Prefix of a device credential.
const CRED_PREFIX: &str = "msd1.";
/// Longest credential kept (and read from its file).
const MAX_CREDENTIAL: usize = 4096;
/// Longest fact read from a file of the board.
const MAX_FACT: u64 = 256;

/// Where the credential of the config at `config` lives: beside it.
pub fn cred_path(config: &Path) -> PathBuf {
    identity::beside(config, CRED_FILE)
}

/// An enrolled device: its key, its credential and what it is.
pub struct Device {
    key: DeviceKey,
    /// The config file (`config.bin`): pushes replace it.
    config_path: PathBuf,
    cred_path: PathBuf,
    pins_path: PathBuf,
    /// The pinned keys, read at start; a key is added once, never replaced.
    pins: Mutex<Pins>,
    /// The credential in force: read from its file at start, replaced by the edge's.
    credential: Mutex<Option<String>>,
    facts: Mutex<DeviceFacts>,
}

impl Device {
    /// The device of the config at `config`: its key (made now when there is none),
    /// its stored credential, and its facts with the digest of `in_force` (the config
    /// file, or the `.prev` the loader fell back to).
    pub fn load(config: &Path, in_force: &Path) -> Result<Device, String> {
        let key = identity::load_or_create_key(&identity::key_path(config))?;
        let cred_path = cred_path(config);
        let credential = read_credential(&cred_path);
        let pins_path = identity::beside(config, PINS_FILE);
        let pins = match read_small(&pins_path)? {
            Some(text) => {
                Pins::parse(&text).map_err(|e| format!("{}: {e}", pins_path.display()))?
            }
            None => Pins::default(),
        };
        let facts = DeviceFacts {
            name: board_name(),
            arch: crate::release::arch().into(),
            board: read_fact("/proc/device-tree/model").unwrap_or_default(),
            config_digest: config_digest(in_force),
        };
        log::info!(
            "device {} ({}{}{}){}",
            key.id(),
            facts.name,
            if facts.board.is_empty() { "" } else { ", " },
            facts.board,
            if credential.is_some() {
                ""
            } else {
                ": not enrolled yet"
            }
        );
        Ok(Device {
            key,
            config_path: config.to_path_buf(),
            cred_path,
            pins_path,
            pins: Mutex::new(pins),
            credential: Mutex::new(credential),
            facts: Mutex::new(facts),
        })
    }

    /// The device id.
    pub fn id(&self) -> &str {
        self.key.id()
    }

    /// The config file (`config.bin`).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The keys this device pinned (`device.pins`): config pushes must be signed with
    /// `config_key`, release offers with `release_key`.
    pub fn pins(&self) -> Pins {
        *lock(&self.pins)
    }

    /// Pins the keys of `offered` this device has none of yet (one atomic write of
    /// `device.pins`); a pinned key is never replaced, and one offered in its place is
    /// logged and ignored.
    pub(super) fn pin(&self, offered: &KeysTail) -> Result<(), String> {
        let mut pins = lock(&self.pins);
        let (next, differ) = pins.merge(offered);
        for name in differ {
            log::warn!(
                "the edge offers another {name} key than the one pinned; keeping the pinned one"
            );
        }
        if next == *pins {
            return Ok(());
        }
        write_replace(&self.pins_path, next.to_text().as_bytes())
            .map_err(|e| format!("cannot store {}: {e}", self.pins_path.display()))?;
        *pins = next;
        log::info!(
            "pinned the keys of remote changes in {}",
            self.pins_path.display()
        );
        Ok(())
    }

    /// Takes the digest of the config file now in force (after a reload).
    pub fn config_changed(&self, in_force: &Path) {
        lock(&self.facts).config_digest = config_digest(in_force);
    }

    /// What a registration on a connection whose hello carried `nonce` appends.
    pub(super) fn tail(&self, nonce: &[u8; 32], enroll: &str) -> DeviceTail {
        DeviceTail {
            public_key: *self.key.public_key(),
            proof: self.key.sign(&crate::wire::device_proof_message(nonce)),
            credential: lock(&self.credential).clone(),
            enroll: Some(enroll.to_string()),
            facts: lock(&self.facts).clone(),
        }
    }

    /// Keeps a credential the edge issued: in memory for every connection, and in its
    /// file (one atomic write). The same credential again writes nothing.
    pub(super) fn store_credential(&self, credential: &str) -> Result<(), String> {
        if !is_credential(credential) {
            return Err("the edge sent a malformed device credential; not stored".into());
        }
        if lock(&self.credential).as_deref() == Some(credential) {
            return Ok(());
        }
        write_replace(&self.cred_path, credential.as_bytes())
            .map_err(|e| format!("cannot store {}: {e}", self.cred_path.display()))?;
        *lock(&self.credential) = Some(credential.to_string());
        log::info!(
            "stored a new device credential in {}",
            self.cred_path.display()
        );
        Ok(())
    }
}

fn is_credential(s: &str) -> bool {
    s.len() <= MAX_CREDENTIAL
        && s.starts_with(CRED_PREFIX)
        && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The stored credential; a missing, unreadable or malformed file is none (the device
/// enrols again with its key and the enrolment key).
fn read_credential(path: &Path) -> Option<String> {
    let mut text = String::new();
    let read = fs::File::open(path)
        .and_then(|f| f.take(MAX_CREDENTIAL as u64 + 1).read_to_string(&mut text));
    match read {
        Ok(_) if is_credential(text.trim()) => Some(text.trim().to_string()),
        Ok(_) => {
            log::warn!(
                "{} holds no device credential; enrolling again",
                path.display()
            );
            None
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            log::warn!("cannot read {}: {e}; enrolling again", path.display());
            None
        }
    }
}

/// Replaces `path` with `bytes` in one step: temp file (0600, fsynced), rename, fsync
/// of the folder.
pub(super) fn write_replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let written = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fs::File::open(dir)?.sync_all()
}

/// The first 8 bytes of the SHA-256 of the file at `path` (zeros when unreadable).
fn config_digest(path: &Path) -> [u8; 8] {
    let mut d = [0u8; 8];
    if let Ok(bytes) = crate::config::store::read_bounded(path) {
        let h = ring::digest::digest(&ring::digest::SHA256, &bytes);
        for (x, y) in d.iter_mut().zip(h.as_ref()) {
            *x = *y;
        }
    }
    d
}

/// The board's name: its serial number, else the start of the machine id, else the
/// host name.
fn board_name() -> String {
    read_fact("/proc/device-tree/serial-number")
        .or_else(|| read_fact("/etc/machine-id").map(|m| m.chars().take(12).collect()))
        .or_else(host_name)
        .unwrap_or_default()
}

/// A short text file of the board, trimmed of NULs and white space; `None` when
/// missing or empty.
fn read_fact(path: &str) -> Option<String> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_FACT).read_to_end(&mut bytes))
        .ok()?;
    clean_fact(&bytes)
}

/// Device-tree strings end in NUL; files end in a newline.
fn clean_fact(bytes: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!s.is_empty()).then(|| s.to_string())
}

fn host_name() -> Option<String> {
    let mut buf = [0u8; 65];
    // SAFETY: gethostname writes at most `len` bytes into the buffer it is given.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    clean_fact(buf.get(..end)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::TempDir;

    #[test]
    fn facts_are_trimmed() {
        assert_eq!(
            clean_fact(b"10000000abcdef\0").as_deref(),
            Some("10000000abcdef")
        );
        assert_eq!(
            clean_fact(b"Raspberry Pi 4 Model B Rev 1.4\0").as_deref(),
            Some("Raspberry Pi 4 Model B Rev 1.4")
        );
        assert_eq!(clean_fact(b"\0\n"), None);
        assert!(
            !board_name().is_empty(),
            "this machine has a machine id or a host name"
        );
    }

    #[test]
    fn credentials_are_stored_once_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new();
        let config = dir.path().join("config.bin");
        fs::write(&config, b"config bytes").unwrap();
        let dev = Device::load(&config, &config).unwrap();
        assert!(dir.path().join("device.key").exists());
        assert!(lock(&dev.credential).is_none());
        let digest = lock(&dev.facts).config_digest;
        assert_eq!(
            &digest[..],
            &ring::digest::digest(&ring::digest::SHA256, b"config bytes").as_ref()[..8]
        );
        assert!(dev.store_credential("not one").is_err());
        dev.store_credential("msd1.abc.def").unwrap();
        let path = dir.path().join(CRED_FILE);
        assert_eq!(fs::read(&path).unwrap(), b"msd1.abc.def");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = Device::load(&config, &config).unwrap();
        assert_eq!(again.id(), dev.id());
        let tail = again.tail(&[1; 32], "mse1.x");
        assert_eq!(tail.credential.as_deref(), Some("msd1.abc.def"));
        assert_eq!(tail.enroll.as_deref(), Some("mse1.x"));
        assert_eq!(tail.proof.len(), 64);
        assert_eq!(identity::device_id(&tail.public_key), dev.id());
        // A garbled credential file is no credential.
        fs::write(&path, b"\xff\xfe").unwrap();
        assert!(read_credential(&path).is_none());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }
}
