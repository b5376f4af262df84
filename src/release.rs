//! Releases of the device binary: what a build says it is, and the signed offer the
//! edge sends a device (`EdgeMsg::OfferRelease`).
//!
//! **Version marker.** Every build carries its version in a fixed 64-byte record in its
//! read-only data, so that the edge can tell a file's version without running it (an
//! aarch64 binary on an x86_64 edge) and a copy can be given another version by
//! rewriting the record:
//!
//! ```text
//!  0                 18                                   64
//!  +-----------------+------------------------------------+
//!  | prefix, 18 B    | version, NUL-padded (1..=46 bytes)  |
//!  +-----------------+------------------------------------+
//! ```
//!
//! The version is `MAILSLOT_VERSION` at build time, or the crate version. The running
//! binary reads its own record through a volatile read ([`version`]), so the version it
//! registers with is whatever the record holds.
//!
//! **Offer.** The release key (Ed25519, kept offline) signs [`signed_message`]:
//!
//! ```text
//!  RELEASE_CONTEXT || u16 len || version || u16 len || target || u64 size || sha256
//! ```
//!
//! (lengths and size big-endian). [`Offer::metered_ok`] is the edge's delivery flag (a
//! metered device may download this one), outside the signature: it decides when a
//! device downloads, never what it runs.

use serde::{Deserialize, Serialize};

/// Length of the version record's prefix.
const PREFIX_LEN: usize = 18;
/// The first bytes of the version record, masked (`^ MASK`): only the record itself
/// holds them in the clear, never the code that looks for records.
const MASKED_PREFIX: [u8; PREFIX_LEN] = mask(*b"\xffmailslot\x00version\x00");
const MASK: u8 = 0x5a;
/// Length of the version record.
pub const MARKER_LEN: usize = 64;
/// Longest version string.
pub const MAX_VERSION: usize = MARKER_LEN - PREFIX_LEN;
/// Longest target triple in an offer.
pub const MAX_TARGET: usize = 64;
/// Largest encoded offer a device decodes.
pub const MAX_OFFER: usize = 1024;
/// Largest release file (a device binary is about 2 MB).
pub const MAX_RELEASE_SIZE: u64 = 64 * 1024 * 1024;
/// Domain separation: a release signature is never a signature of anything else.
pub const RELEASE_CONTEXT: &[u8] = b"mailslot release v1\0";

/// The target triple this binary was built for.
pub const TARGET: &str = env!("MAILSLOT_TARGET");

// Compile-time loops over fixed arrays: the bounds are the arrays' own lengths.
#[allow(clippy::indexing_slicing)]
const fn mask(mut p: [u8; PREFIX_LEN]) -> [u8; PREFIX_LEN] {
    let mut i = 0;
    while i < PREFIX_LEN {
        p[i] ^= MASK;
        i += 1;
    }
    p
}

/// A version record: `prefix` (unmasked) then `version`, NUL-padded.
#[allow(clippy::indexing_slicing)]
const fn marker(prefix: [u8; PREFIX_LEN], version: &str) -> [u8; MARKER_LEN] {
    let mut m = [0u8; MARKER_LEN];
    let mut i = 0;
    while i < PREFIX_LEN {
        m[i] = prefix[i];
        i += 1;
    }
    let v = version.as_bytes();
    let mut j = 0;
    while j < v.len() && j < MAX_VERSION {
        m[PREFIX_LEN + j] = v[j];
        j += 1;
    }
    m
}

/// This build's version record (see the module doc).
#[used]
static VERSION_MARKER: [u8; MARKER_LEN] = marker(mask(MASKED_PREFIX), env!("MAILSLOT_VERSION"));

/// The CPU architecture this device reports, as releases tell them apart
/// ([`arch_of`] of the target it was built for).
pub fn arch() -> &'static str {
    match arch_of(TARGET) {
        "" => std::env::consts::ARCH,
        a => a,
    }
}

/// The architecture of a device built for `target`: the triple's first part, except
/// 32-bit ARM, which is `armv7` (armv7, thumbv7neon) or `armv6` (arm, armv6: Rust's
/// `arm-*` targets are ARMv6); an armv7 build stops with an illegal instruction on an
/// armv6 board (a Raspberry Pi Zero or 1), so the two never share a release.
pub fn arch_of(target: &str) -> &str {
    let first = target.split('-').next().unwrap_or("");
    match first {
        "arm" | "armv6" => "armv6",
        f if f.starts_with("armv7") || f.starts_with("thumbv7") => "armv7",
        f => f,
    }
}

/// Whether a release built for `target` runs on a device reporting `arch`. `arm` is what
/// devices reported before 32-bit ARM was split: any 32-bit ARM release fits it.
pub fn fits_arch(target: &str, arch: &str) -> bool {
    let built = arch_of(target);
    built == arch || (arch == "arm" && (built.starts_with("arm") || built.starts_with("thumb")))
}

/// The version of the running binary, as its version record says.
pub fn version() -> String {
    // SAFETY: a plain read of an initialised static of `Copy` bytes; volatile so that
    // the compiler reads the record in the file instead of the value it was built with.
    let record = unsafe { std::ptr::read_volatile(&VERSION_MARKER) };
    parse_record(&record).unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string())
}

/// The version held in a version record, when it is well formed.
fn parse_record(record: &[u8]) -> Option<String> {
    let rest = record.strip_prefix(&prefix()[..])?;
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let v = std::str::from_utf8(rest.get(..end)?).ok()?;
    valid_version(v).then(|| v.to_string())
}

/// Whether `v` may be a version: 1..=46 bytes of `[0-9A-Za-z.+_-]`, the first a
/// letter or digit (a version names a folder at the edge: never `.` or `..`).
pub fn valid_version(v: &str) -> bool {
    v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && v.len() <= MAX_VERSION
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-' | b'_'))
}

/// The record prefix in the clear, unmasked at run time (the mask goes through
/// `black_box`, so the compiler cannot store the result as a constant).
fn prefix() -> [u8; PREFIX_LEN] {
    let m = std::hint::black_box(MASK);
    let mut p = MASKED_PREFIX;
    for b in p.iter_mut() {
        *b ^= m;
    }
    p
}

/// The version records in `file` (a binary's bytes), distinct, in order of first
/// appearance.
pub fn versions_in(file: &[u8]) -> Vec<String> {
    let prefix = prefix();
    let mut found: Vec<String> = Vec::new();
    let mut at = 0;
    while let Some(pos) = find(file.get(at..).unwrap_or(&[]), &prefix) {
        let start = at + pos;
        if let Some(v) = file
            .get(start..start + MARKER_LEN)
            .and_then(parse_record)
            .filter(|v| !found.contains(v))
        {
            found.push(v);
        }
        at = start + 1;
    }
    found
}

/// The one version `file` says it is; an error when it has none or several.
pub fn version_of(file: &[u8]) -> Result<String, String> {
    let mut found = versions_in(file);
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(
            "it carries no mailslot version record (not a mailslot binary, or one \
                  from before releases): give --version"
                .into(),
        ),
        _ => Err(format!(
            "it carries several version records ({}): give --version",
            found.join(", ")
        )),
    }
}

/// `file` with its version record set to `version` (for making a release of a copy).
pub fn set_version(file: &mut [u8], version: &str) -> Result<(), String> {
    if !valid_version(version) {
        return Err(format!(
            "{version:?} is not a version (1..={MAX_VERSION} of [0-9A-Za-z.+_-])"
        ));
    }
    let prefix = prefix();
    let pos = find(file, &prefix).ok_or("no version record to rewrite")?;
    let record = marker(prefix, version);
    let slot = file
        .get_mut(pos..pos + MARKER_LEN)
        .ok_or("a truncated version record")?;
    slot.copy_from_slice(&record);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A release the edge offers a device (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub version: String,
    /// The target triple the binary was built for.
    pub target: String,
    pub size: u64,
    pub sha256: [u8; 32],
    /// Ed25519 signature of [`signed_message`] by the release key, 64 bytes.
    pub signature: Vec<u8>,
    /// A metered device may download it (the edge's choice; not signed).
    pub metered_ok: bool,
}

/// The bytes the release key signs for a release.
pub fn signed_message(version: &str, target: &str, size: u64, sha256: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(RELEASE_CONTEXT.len() + 4 + version.len() + target.len() + 40);
    m.extend_from_slice(RELEASE_CONTEXT);
    for part in [version, target] {
        m.extend_from_slice(&(part.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
        m.extend_from_slice(part.as_bytes());
    }
    m.extend_from_slice(&size.to_be_bytes());
    m.extend_from_slice(sha256);
    m
}

/// Why an offer is not one to act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OfferError {
    /// The bytes are not an offer.
    #[error("not a release offer: {0}")]
    Malformed(String),
    /// The signature does not verify against the pinned release key.
    #[error("release {0}: the signature does not verify against the pinned release key")]
    BadSignature(String),
}

impl Offer {
    /// The postcard bytes of the offer (`EdgeMsg::OfferRelease::offer`).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes an offer from at most [`MAX_OFFER`] bytes, checking each field's bounds.
    pub fn decode(bytes: &[u8]) -> Result<Offer, OfferError> {
        let bad = |m: &str| OfferError::Malformed(m.to_string());
        if bytes.len() > MAX_OFFER {
            return Err(bad("longer than any offer"));
        }
        let offer: Offer = postcard::from_bytes(bytes).map_err(|e| bad(&e.to_string()))?;
        if !valid_version(&offer.version) {
            return Err(bad("bad version"));
        }
        if offer.target.is_empty() || offer.target.len() > MAX_TARGET {
            return Err(bad("bad target"));
        }
        if offer.size == 0 || offer.size > MAX_RELEASE_SIZE {
            return Err(bad("size out of bounds"));
        }
        if offer.signature.len() != 64 {
            return Err(bad("signature is not 64 bytes"));
        }
        Ok(offer)
    }

    /// Checks the signature against the release key `key`.
    pub fn verify(&self, key: &[u8; 32]) -> Result<(), OfferError> {
        let msg = signed_message(&self.version, &self.target, self.size, &self.sha256);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
            .verify(&msg, &self.signature)
            .map_err(|_| OfferError::BadSignature(self.version.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap()
    }

    fn offer(k: &Ed25519KeyPair) -> Offer {
        let sha = [7u8; 32];
        let msg = signed_message("1.2.3", "aarch64-unknown-linux-musl", 1000, &sha);
        Offer {
            version: "1.2.3".into(),
            target: "aarch64-unknown-linux-musl".into(),
            size: 1000,
            sha256: sha,
            signature: k.sign(&msg).as_ref().to_vec(),
            metered_ok: false,
        }
    }

    #[test]
    fn offers_round_trip_and_verify_only_against_their_key() {
        let k = key();
        let o = offer(&k);
        let back = Offer::decode(&o.encode()).unwrap();
        assert_eq!(back, o);
        let public: [u8; 32] = k.public_key().as_ref().try_into().unwrap();
        back.verify(&public).unwrap();
        let other: [u8; 32] = key().public_key().as_ref().try_into().unwrap();
        assert!(matches!(
            back.verify(&other),
            Err(OfferError::BadSignature(_))
        ));
        // The delivery flag is outside the signature; every signed field is inside.
        let mut metered = back.clone();
        metered.metered_ok = true;
        metered.verify(&public).unwrap();
        for change in [
            |o: &mut Offer| o.version = "1.2.4".into(),
            |o: &mut Offer| o.target = "x86_64-unknown-linux-musl".into(),
            |o: &mut Offer| o.size += 1,
            |o: &mut Offer| o.sha256[0] ^= 1,
        ] {
            let mut o = back.clone();
            change(&mut o);
            assert!(o.verify(&public).is_err());
        }
    }

    #[test]
    fn hostile_offers_are_refused_without_panicking() {
        let o = offer(&key());
        let bytes = o.encode();
        for n in 0..bytes.len() {
            let _ = Offer::decode(&bytes[..n]);
        }
        assert!(Offer::decode(&vec![0xff; MAX_OFFER + 1]).is_err());
        let mut long = o.clone();
        long.version = "x".repeat(MAX_VERSION + 1);
        assert!(Offer::decode(&long.encode()).is_err());
        let mut short_sig = o.clone();
        short_sig.signature.truncate(10);
        assert!(Offer::decode(&short_sig.encode()).is_err());
        let mut huge = o;
        huge.size = MAX_RELEASE_SIZE + 1;
        assert!(Offer::decode(&huge.encode()).is_err());
    }

    #[test]
    fn version_records_are_found_and_rewritten() {
        assert!(valid_version(&version()));
        let mut file = vec![1u8; 100];
        file.extend_from_slice(&marker(prefix(), "0.9.1-test"));
        file.extend_from_slice(&[2u8; 50]);
        assert_eq!(version_of(&file).unwrap(), "0.9.1-test");
        set_version(&mut file, "2.0.0").unwrap();
        assert_eq!(version_of(&file).unwrap(), "2.0.0");
        assert!(set_version(&mut file, "bad version").is_err());
        for bad in ["", ".", "..", ".hidden", "-x", "a/b", "a\\b", "v 1"] {
            assert!(!valid_version(bad), "{bad:?}");
        }
        assert!(valid_version("0.2.0-rc.1+build_7"));
        assert!(version_of(&[0u8; 300]).is_err());
        // A prefix followed by garbage is no record.
        let mut junk = prefix().to_vec();
        junk.extend_from_slice(b"\x01\x02");
        assert!(version_of(&junk).is_err());
        file.extend_from_slice(&marker(prefix(), "3.0.0"));
        assert!(version_of(&file).unwrap_err().contains("several"));
    }

    #[test]
    fn this_test_binary_carries_one_record() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(versions_in(&exe), vec![version()]);
    }
}
