//! Where the ACME account key and the certificates are kept: the [`CertStore`] trait,
//! and [`FileStore`], the edge's folder (`acme: dir`, default `acme/` beside
//! `edge.yml`):
//!
//! ```text
//! acme/account.key         the account's key (PKCS#8 PEM, 0600), made once
//! acme/certs/NAME.crt      the chain the ACME server issued for NAME (PEM)
//! acme/certs/NAME.key      its key (PKCS#8 PEM, 0600)
//! ```
//!
//! Several edges behind one DNS name (a cluster) share one account and one certificate
//! per name through the Redis implementation (`edge::cluster::certs`):
//! [`CertStore::load`] lets an edge pick up what another issued, and
//! [`CertStore::lease`] lets one edge order a name while the others wait for it. A
//! shared store shares the challenge answers as well ([`CertStore::share_answer`]):
//! the ACME server's validation may reach any edge behind the name, not the one that
//! ordered. [`FileStore`] is one edge's: every lease is granted, nothing is shared.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};

/// A certificate chain and its key, as PEM texts.
#[derive(Clone)]
pub(crate) struct Stored {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

/// Largest file read back (a chain of a few certificates, or a key).
const MAX_FILE: u64 = 64 * 1024;

/// The answer to one challenge, as the edges of a cluster share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// TLS-ALPN-01 for `name`: the SHA-256 digest of the key authorization (each edge
    /// makes its own validation certificate from it).
    Alpn { name: String, digest: [u8; 32] },
    /// HTTP-01: the key authorization served at `/.well-known/acme-challenge/TOKEN`.
    Http { token: String, key_auth: String },
}

impl Answer {
    /// Its kind and key (`alpn` and the name, `http` and the token).
    pub(crate) fn kind_key(&self) -> (&'static str, &str) {
        match self {
            Answer::Alpn { name, .. } => ("alpn", name),
            Answer::Http { token, .. } => ("http", token),
        }
    }
}

/// Where account and certificates live. Implementations are shared between tasks.
/// Calls may block (a file, a network round trip).
pub(crate) trait CertStore: Send + Sync {
    /// The account key (PKCS#8 DER): made and kept the first time, then the same one.
    fn account_key(&self) -> Result<Vec<u8>, String>;
    /// The certificate kept for `name`, if any.
    fn load(&self, name: &str) -> Result<Option<Stored>, String>;
    /// The names with a kept certificate, at most `max`.
    fn names(&self, max: usize) -> Result<Vec<String>, String>;
    /// Keeps `cert` for `name`, replacing the one before.
    fn save(&self, name: &str, cert: &Stored) -> Result<(), String>;
    /// Takes the right to order `name` for `ttl`: `false` when another holder (another
    /// edge sharing the store) has it.
    fn lease(&self, name: &str, ttl: Duration) -> bool;
    /// Gives every edge sharing the store `answer` and waits, bounded, until they have
    /// put it in force; one edge's store has nothing to do.
    fn share_answer(&self, answer: &Answer) -> Result<(), String> {
        let _ = answer;
        Ok(())
    }
    /// Withdraws a shared answer (the order ended).
    fn withdraw_answer(&self, answer: &Answer) {
        let _ = answer;
    }
}

/// The edge's own folder.
pub(crate) struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// Makes `dir` and `dir/certs` (0700) when missing.
    pub(crate) fn open(dir: &Path) -> Result<FileStore, String> {
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).map_err(|e| format!("{}: {e}", certs.display()))?;
        for d in [dir, certs.as_path()] {
            set_mode(d, 0o700)?;
        }
        Ok(FileStore {
            dir: dir.to_path_buf(),
        })
    }

    fn cert_paths(&self, name: &str) -> Result<(PathBuf, PathBuf), String> {
        if !is_file_safe(name) {
            return Err(format!("{name:?} is not a hostname"));
        }
        let certs = self.dir.join("certs");
        Ok((
            certs.join(format!("{name}.crt")),
            certs.join(format!("{name}.key")),
        ))
    }
}

impl CertStore for FileStore {
    fn account_key(&self) -> Result<Vec<u8>, String> {
        let path = self.dir.join("account.key");
        if path.exists() {
            let text = read_small(&path)?;
            let key = PrivatePkcs8KeyDer::from_pem_slice(text.as_bytes())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            return Ok(key.secret_pkcs8_der().to_vec());
        }
        let (_, der) = instant_acme::Key::generate_pkcs8()
            .map_err(|e| format!("cannot make an account key: {e}"))?;
        let pem = pem_text("PRIVATE KEY", der.secret_pkcs8_der());
        write_private(&path, pem.as_bytes())?;
        log::info!("acme: new account key in {}", path.display());
        Ok(der.secret_pkcs8_der().to_vec())
    }

    fn load(&self, name: &str) -> Result<Option<Stored>, String> {
        let (crt, key) = self.cert_paths(name)?;
        if !crt.exists() || !key.exists() {
            return Ok(None);
        }
        Ok(Some(Stored {
            chain_pem: read_small(&crt)?,
            key_pem: read_small(&key)?,
        }))
    }

    fn names(&self, max: usize) -> Result<Vec<String>, String> {
        let certs = self.dir.join("certs");
        let rd = std::fs::read_dir(&certs).map_err(|e| format!("{}: {e}", certs.display()))?;
        let mut out = Vec::new();
        for entry in rd.flatten() {
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".crt")) else {
                continue;
            };
            if is_file_safe(name) {
                out.push(name.to_string());
            }
        }
        out.sort();
        out.truncate(max);
        Ok(out)
    }

    fn save(&self, name: &str, cert: &Stored) -> Result<(), String> {
        let (crt, key) = self.cert_paths(name)?;
        // The key first: a crash between the two leaves the old chain with a new key,
        // which loading refuses (they do not fit), and the name is ordered again.
        write_private(&key, cert.key_pem.as_bytes())?;
        write_private(&crt, cert.chain_pem.as_bytes())
    }

    fn lease(&self, _name: &str, _ttl: Duration) -> bool {
        true
    }
}

/// A canonical hostname: lower-case letters, digits, `-` and `.`, not starting with `.`.
fn is_file_safe(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn read_small(path: &Path) -> Result<String, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len > MAX_FILE {
        return Err(format!("{}: larger than {MAX_FILE} bytes", path.display()));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `data` to a new file (0600) beside `path`, then renames it over `path`.
fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `der` as PEM text with `label`.
pub(crate) fn pem_text(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The validity (`notBefore`, `notAfter`, Unix seconds) of the first certificate of a
/// PEM chain.
pub(crate) fn validity_of_pem(chain_pem: &str) -> Option<(u64, u64)> {
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()?
        .ok()?;
    validity(&leaf)
}

/// The validity of a DER certificate: Certificate ::= SEQUENCE { tbsCertificate
/// SEQUENCE { [0] version OPTIONAL, serial INTEGER, signature SEQUENCE, issuer
/// SEQUENCE, validity SEQUENCE { notBefore Time, notAfter Time }, ... }, ... }.
pub(crate) fn validity(der: &[u8]) -> Option<(u64, u64)> {
    let (tag, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, _, mut rest) = tlv(tbs)?;
    if tag == 0xa0 {
        rest = tlv(rest)?.2; // the serial
    }
    let rest = tlv(rest)?.2; // the signature algorithm
    let rest = tlv(rest)?.2; // the issuer
    let (tag, validity, _) = tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (t1, nb, rest) = tlv(validity)?;
    let (t2, na, _) = tlv(rest)?;
    Some((time(t1, nb)?, time(t2, na)?))
}

/// One DER element: tag, contents, and what follows.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 3 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        (
            bytes
                .iter()
                .fold(0usize, |acc, &x| (acc << 8) | usize::from(x)),
            rest,
        )
    };
    if rest.len() < len {
        return None;
    }
    let (content, after) = rest.split_at(len);
    Some((tag, content, after))
}

/// UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime (`YYYYMMDDHHMMSSZ`, 0x18)
/// as Unix seconds.
fn time(tag: u8, b: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(b).ok()?.strip_suffix('Z')?;
    if !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy: i64 = s.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, s.get(2..)?)
        }
        (0x18, 14) => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, h, m, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    u64::try_from(days * 86400 + h * 3600 + m * 60 + sec).ok()
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_both_forms() {
        assert_eq!(time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(time(0x17, b"250301120000Z"), Some(1_740_830_400));
        assert_eq!(time(0x18, b"20500101000000Z"), Some(2_524_608_000));
        assert_eq!(time(0x17, b"251301000000Z"), None);
        assert_eq!(time(0x17, b"2501010000Z"), None);
        assert_eq!(time(0x18, b"20500101000000"), None);
    }

    #[test]
    fn validity_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["a.example.test".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 2);
        params.not_after = rcgen::date_time_ymd(2061, 3, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (nb, na) = validity(cert.der()).unwrap();
        assert_eq!(nb, 1_767_312_000);
        assert_eq!(na, 2_877_120_000);
        assert_eq!(validity_of_pem(&cert.pem()), Some((nb, na)));
        // Truncated or garbage input gives nothing, never a panic.
        for n in 0..cert.der().len() {
            let _ = validity(&cert.der()[..n]);
        }
        assert_eq!(validity(b"\x30\x84\xff\xff\xff\xff"), None);
    }

    #[test]
    fn file_store_keeps_the_account_key_and_certificates_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("mailslot-acme-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = FileStore::open(&dir).unwrap();
        let k1 = store.account_key().unwrap();
        assert_eq!(store.account_key().unwrap(), k1, "made once");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.join("account.key")), 0o600);
        let s = Stored {
            chain_pem: "chain".into(),
            key_pem: "key".into(),
        };
        store.save("app.example.test", &s).unwrap();
        assert_eq!(mode(&dir.join("certs/app.example.test.key")), 0o600);
        assert_eq!(store.names(10).unwrap(), vec!["app.example.test"]);
        assert_eq!(
            store.load("app.example.test").unwrap().unwrap().chain_pem,
            "chain"
        );
        assert!(store.save("../escape", &s).is_err());
        assert!(store.load("nothing.example.test").unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
