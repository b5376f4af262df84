//! What the device and the edge agree on about a device's identity: its id, derived
//! from its Ed25519 public key, and the `{device}` placeholder of hostnames.
//!
//! A device id is the first 10 bytes of the SHA-256 of the public key in lowercase
//! base32 (RFC 4648 alphabet, no padding): 16 characters of `[a-z2-7]`, a valid DNS
//! label that never reads as a number, and 80 bits: a collision among a million
//! devices is about as likely as one in 2^40.
//!
//! The device's key lives beside its config ([`key_path`]: `/etc/mailslot/device.key`
//! on boards), PKCS#8 DER, mode 0600, made on first start and written once
//! ([`load_or_create_key`]): a key file is never replaced, and one that does not parse
//! is an error, never a reason to make a new key (that would be a new device).

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use ring::digest::{digest, SHA256};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// Placeholder in hostnames (enrolment keys, device configs) for the device id.
pub const DEVICE_PLACEHOLDER: &str = "{device}";

/// Length of a device id in characters.
pub const DEVICE_ID_LEN: usize = 16;

/// The device id of `public_key`.
pub fn device_id(public_key: &[u8; 32]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let hash = digest(&SHA256, public_key);
    let mut bits: u64 = 0;
    let mut nbits = 0u32;
    let mut out = String::with_capacity(DEVICE_ID_LEN);
    for &b in hash.as_ref().iter().take(10) {
        bits = (bits << 8) | u64::from(b);
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            let i = ((bits >> nbits) & 31) as usize;
            if let Some(&c) = ALPHABET.get(i) {
                out.push(char::from(c));
            }
        }
    }
    out
}

/// The tunnel id of an enrolled device: connections of one device are one tunnel on
/// every edge, whichever credential they present.
pub fn tunnel_id(public_key: &[u8; 32]) -> [u8; 16] {
    let mut ctx = ring::digest::Context::new(&SHA256);
    ctx.update(b"mailslot device tunnel\0");
    ctx.update(public_key);
    let hash = ctx.finish();
    let mut id = [0u8; 16];
    for (d, s) in id.iter_mut().zip(hash.as_ref()) {
        *d = *s;
    }
    id
}

/// Whether `s` has the form of a device id.
pub fn is_device_id(s: &str) -> bool {
    s.len() == DEVICE_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
}

/// `pattern` with every `{device}` replaced by `id`.
pub fn expand(pattern: &str, id: &str) -> String {
    pattern.replace(DEVICE_PLACEHOLDER, id)
}

/// File name of the device key, in the config's folder.
pub const KEY_FILE: &str = "device.key";

/// Largest key file read: a PKCS#8 Ed25519 key is 83 or 85 bytes.
const MAX_KEY_FILE: u64 = 1024;

/// Where the device key of the config at `config` lives: beside it.
pub fn key_path(config: &Path) -> PathBuf {
    beside(config, KEY_FILE)
}

/// `name` in the folder of `config` (the current folder for a bare file name).
pub fn beside(config: &Path, name: &str) -> PathBuf {
    match config.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(name),
        _ => PathBuf::from(name),
    }
}

/// The device's Ed25519 key pair, read from its file.
pub struct DeviceKey {
    pair: Ed25519KeyPair,
    public: [u8; 32],
    id: String,
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey({})", self.id)
    }
}

impl DeviceKey {
    fn from_pkcs8(der: &[u8]) -> Option<DeviceKey> {
        // "maybe unchecked": PKCS#8 v1 documents too (`openssl genpkey -algorithm
        // ed25519 -outform DER`), for keys made off the device.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).ok()?;
        let public: [u8; 32] = pair.public_key().as_ref().try_into().ok()?;
        Some(DeviceKey {
            id: device_id(&public),
            public,
            pair,
        })
    }

    /// The public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public
    }

    /// The device id ([`device_id`] of the public key).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// An Ed25519 signature of `msg`, 64 bytes.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }
}

/// Reads the device key at `path`; `None` when there is no file. A file that is not
/// a key is an error.
pub fn read_key(path: &Path) -> Result<Option<DeviceKey>, String> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(format!(
                "cannot read the device key {}: {e}",
                path.display()
            ))
        }
    };
    #[cfg(unix)]
    if let Ok(meta) = file.metadata() {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "the device key {} can be read by others: chmod 600 it",
                path.display()
            );
        }
    }
    let mut der = Vec::new();
    file.take(MAX_KEY_FILE)
        .read_to_end(&mut der)
        .map_err(|e| format!("cannot read the device key {}: {e}", path.display()))?;
    DeviceKey::from_pkcs8(&der).map(Some).ok_or_else(|| {
        format!(
            "{} is not a PKCS#8 Ed25519 key; it is never replaced on its own (a new key is \
             a new device): restore it, or delete it to make this board a new device that \
             enrols again",
            path.display()
        )
    })
}

/// Reads the device key at `path`, making it first when there is none: a new key goes
/// to a temp file (0600, fsynced) that is hard-linked to `path` (a link never replaces
/// a file, so of two processes starting at once one key wins and both read it), then
/// the folder is fsynced.
pub fn load_or_create_key(path: &Path) -> Result<DeviceKey, String> {
    if let Some(key) = read_key(path)? {
        return Ok(key);
    }
    let fail = |e: io::Error| format!("cannot make the device key {}: {e}", path.display());
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| fail(io::Error::other("no system randomness")))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".{KEY_FILE}.tmp.{}.{}",
        std::process::id(),
        crate::util::hex(&crate::util::random_bytes::<4>())
    ));
    let linked = (|| {
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(pkcs8.as_ref())?;
        file.sync_all()?;
        match fs::hard_link(&tmp, path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            r => r.map(|()| true),
        }
    })();
    let _ = fs::remove_file(&tmp);
    if linked.map_err(fail)? {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)?;
        log::info!("made the device key {}", path.display());
    }
    read_key(path)?.ok_or_else(|| fail(io::ErrorKind::NotFound.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_dns_labels_of_fixed_length() {
        let a = device_id(&[0; 32]);
        let b = device_id(&[1; 32]);
        assert_eq!(a.len(), DEVICE_ID_LEN);
        assert!(is_device_id(&a) && is_device_id(&b));
        assert_ne!(a, b);
        assert_eq!(a, device_id(&[0; 32]));
        assert!(crate::hostname::canonical(&format!("{a}.fleet.example.com")).is_ok());
    }

    #[test]
    fn expand_replaces_every_placeholder() {
        assert_eq!(expand("{device}.x.example.com", "abc"), "abc.x.example.com");
        assert_eq!(
            expand("ssh.{device}.{device}.example.com", "z"),
            "ssh.z.z.example.com"
        );
        assert_eq!(expand("plain.example.com", "z"), "plain.example.com");
    }

    #[test]
    fn a_key_is_made_once_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::config::testutil::TempDir::new();
        let config = dir.path().join("config.bin");
        let path = key_path(&config);
        assert_eq!(path, dir.path().join("device.key"));
        assert!(read_key(&path).unwrap().is_none());
        let a = load_or_create_key(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let bytes = fs::read(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.id(), device_id(a.public_key()));
        assert_eq!(fs::read(&path).unwrap(), bytes, "never rewritten");
        // The signature verifies with the public key.
        let msg = crate::wire::device_proof_message(&[7; 32]);
        let sig = a.sign(&msg);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, a.public_key())
            .verify(&msg, &sig)
            .unwrap();
        // No temp files left.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("device.key")]);
    }

    #[test]
    fn a_garbled_key_is_an_error_and_stays() {
        let dir = crate::config::testutil::TempDir::new();
        let path = dir.path().join(KEY_FILE);
        fs::write(&path, b"not a key").unwrap();
        let e = load_or_create_key(&path).unwrap_err();
        assert!(
            e.contains("not a PKCS#8 Ed25519 key") && e.contains("never replaced"),
            "{e}"
        );
        assert_eq!(fs::read(&path).unwrap(), b"not a key");
        fs::write(&path, b"").unwrap();
        assert!(load_or_create_key(&path).is_err());
    }

    #[test]
    fn processes_starting_at_once_end_with_one_key() {
        let dir = crate::config::testutil::TempDir::new();
        let path = dir.path().join(KEY_FILE);
        let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| *load_or_create_key(&path).unwrap().public_key()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.iter().all(|k| k == &keys[0]));
    }
}
