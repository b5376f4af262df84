//! Edge pins at the TLS layer: the pin of a public key, and the small DER walk that finds
//! that key in a certificate. The verifier that checks pins after the CA lives in
//! [`crate::tls`]; the written form (`sha256//BASE64`) in [`crate::config::pin`].

/// The pin of a public key given as DER SubjectPublicKeyInfo: its SHA-256.
pub(crate) fn pin_of_spki(spki: &[u8]) -> crate::config::EdgePin {
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    let mut pin = [0; 32];
    pin.copy_from_slice(digest.as_ref());
    pin
}

/// The DER SubjectPublicKeyInfo (tag and length included) of a DER certificate, or
/// `None` if it is not shaped like one:
///
/// ```text
///  Certificate SEQUENCE { tbsCertificate SEQUENCE { [0] version (optional),
///    serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, .. } .. }
/// ```
pub(crate) fn spki_of_cert(cert: &[u8]) -> Option<&[u8]> {
    let (_, cert_body, _) = der_element(cert, 0x30)?;
    let (_, mut tbs, _) = der_element(cert_body, 0x30)?;
    if tbs.first() == Some(&0xa0) {
        tbs = der_element(tbs, 0xa0)?.2;
    }
    for tag in [0x02, 0x30, 0x30, 0x30, 0x30] {
        tbs = der_element(tbs, tag)?.2;
    }
    der_element(tbs, 0x30).map(|(whole, _, _)| whole)
}

/// Splits the DER element of tag `tag` at the start of `bytes`: (the whole element, its
/// content, what follows). Not inlined: [`spki_of_cert`] calls it eight times.
#[inline(never)]
fn der_element(bytes: &[u8], tag: u8) -> Option<(&[u8], &[u8], &[u8])> {
    let (&t, rest) = bytes.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    if t != tag {
        return None;
    }
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (digits, after) = rest.split_at(n);
        rest = after;
        digits
            .iter()
            .fold(0usize, |acc, &d| (acc << 8) | usize::from(d))
    };
    let header = bytes.len() - rest.len();
    if rest.len() < len {
        return None;
    }
    let (content, after) = rest.split_at(len);
    Some((bytes.get(..header + len)?, content, after))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::pin::{parse_pin, pin_to_string};

    #[test]
    fn pins_written_and_read() {
        let pin = pin_of_spki(b"key");
        let text = pin_to_string(&pin);
        assert!(
            text.starts_with("sha256//") && text.len() == 8 + 44,
            "{text}"
        );
        assert_eq!(parse_pin(&text).unwrap(), pin);
        assert_eq!(parse_pin(&format!(" {text}\n")).unwrap(), pin);
        for bad in [
            "",
            "sha256/AAAA",
            &text[8..],
            "sha256//AAAA",
            "sha256//!!!!",
            "sha1//AAAA",
        ] {
            assert!(parse_pin(bad).is_err(), "{bad:?}");
        }
    }
}
