//! What the device and the edge agree on about a device's identity: its id, derived
//! from its Ed25519 public key, and the `{device}` placeholder of hostnames.
//!
//! A device id is the first 10 bytes of the SHA-256 of the public key in lowercase
//! base32 (RFC 4648 alphabet, no padding): 16 characters of `[a-z2-7]`, a valid DNS
//! label that never reads as a number, and 80 bits: a collision among a million
//! devices is about as likely as one in 2^40.

use ring::digest::{digest, SHA256};

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
}
