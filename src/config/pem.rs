//! The little PEM and base64 the config needs: embedded CAs are read from PEM at
//! compile time and printed as PEM by `config show`. Kept here so device builds need
//! no `base64` crate.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// Why a PEM text or base64 body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// No `-----BEGIN CERTIFICATE-----` line.
    #[error("no \"-----BEGIN CERTIFICATE-----\" line")]
    NoBegin,
    /// A BEGIN line without its END line.
    #[error("no \"-----END CERTIFICATE-----\" line")]
    NoEnd,
    /// More than one certificate; the config embeds one per CA.
    #[error("holds {0} certificates; put one CA certificate per file")]
    Several(usize),
    /// A character outside the base64 alphabet.
    #[error("invalid base64 character {0:?}")]
    BadChar(char),
    /// Base64 whose length or padding is wrong.
    #[error("invalid base64 length or padding")]
    BadPadding,
}

/// Standard base64 with padding.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            *chunk.first().unwrap_or(&0),
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let sextet = ((n >> (18 - 6 * i)) & 63) as usize;
                out.push(char::from(*ALPHABET.get(sextet).unwrap_or(&b'=')));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn sextet(c: u8) -> Result<u32, PemError> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return Err(PemError::BadChar(char::from(c))),
    };
    Ok(u32::from(v))
}

/// Standard base64; ASCII whitespace is skipped, padding is required, and bits left
/// over in the last character must be zero (one encoding per byte string).
pub fn base64_decode(text: &str) -> Result<Vec<u8>, PemError> {
    let chars: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if chars.len() % 4 != 0 {
        return Err(PemError::BadPadding);
    }
    let mut out = Vec::with_capacity(chars.len() / 4 * 3);
    let quads = chars.len() / 4;
    for (q, quad) in chars.chunks_exact(4).enumerate() {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && q + 1 != quads) {
            return Err(PemError::BadPadding);
        }
        let mut n = 0u32;
        for &c in quad.iter().take(4 - pad) {
            n = (n << 6) | sextet(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let keep = 3 - pad;
        let (kept, dropped) = bytes.split_at(keep);
        if dropped.iter().any(|&b| b != 0) {
            return Err(PemError::BadPadding);
        }
        out.extend_from_slice(kept);
    }
    Ok(out)
}

/// True when `text` looks like PEM rather than a file name (it starts with `-----BEGIN`).
#[cfg_attr(not(feature = "yaml"), allow(dead_code))]
pub fn is_pem(text: &str) -> bool {
    text.trim_start().starts_with("-----BEGIN")
}

/// The DER bytes of the single certificate in a PEM text. Text outside the
/// BEGIN/END lines (comments such as `openssl x509 -text` writes) is ignored.
pub fn pem_to_der(text: &str) -> Result<Vec<u8>, PemError> {
    let count = text.matches(BEGIN).count();
    if count > 1 {
        return Err(PemError::Several(count));
    }
    let (_, rest) = text.split_once(BEGIN).ok_or(PemError::NoBegin)?;
    let (body, _) = rest.split_once(END).ok_or(PemError::NoEnd)?;
    base64_decode(body)
}

/// A certificate as PEM: BEGIN line, base64 in 64-column lines, END line, each ending
/// with a newline.
pub fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str(BEGIN);
    out.push('\n');
    // base64 is ASCII, so every 64-byte chunk is valid UTF-8.
    for line in b64.as_bytes().chunks(64) {
        out.extend(line.iter().map(|&b| char::from(b)));
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base64_vectors() {
        // RFC 4648 section 10.
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in cases {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(base64_decode(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64_decode("Zm9v\r\nYmFy\n").unwrap(), b"foobar");
        assert!(base64_decode("Zm9").is_err());
        assert!(base64_decode("Zg=a").is_err());
        assert!(base64_decode("Zg==Zg==").is_err());
        assert!(base64_decode("Zh==").is_err(), "non-zero trailing bits");
        assert!(base64_decode("Z===").is_err());
        assert!(base64_decode("Zm9*").is_err());
    }

    #[test]
    fn pem() {
        let der = [0x30u8, 0x03, 1, 2, 3];
        let pem = der_to_pem(&der);
        assert_eq!(
            pem,
            "-----BEGIN CERTIFICATE-----\nMAMBAgM=\n-----END CERTIFICATE-----\n"
        );
        assert!(is_pem(&pem));
        assert_eq!(pem_to_der(&format!("subject: x\n{pem}")).unwrap(), der);
        assert_eq!(
            pem_to_der(&format!("{pem}{pem}")),
            Err(PemError::Several(2))
        );
        assert_eq!(
            pem_to_der("-----BEGIN CERTIFICATE-----\nMAMB"),
            Err(PemError::NoEnd)
        );
        assert_eq!(pem_to_der("hello"), Err(PemError::NoBegin));
    }

    proptest! {
        #[test]
        fn base64_round_trip(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(base64_decode(&base64_encode(&data)).unwrap(), data.clone());
            prop_assert_eq!(pem_to_der(&der_to_pem(&data)).unwrap(), data);
        }

        #[test]
        fn base64_decode_never_panics(text in "[A-Za-z0-9+/= \n*]{0,40}") {
            let _ = base64_decode(&text);
        }
    }
}
