//! The written form of an edge pin (`edge-pin:` in the device config, what `config show`
//! and `mailslot-edge init` print): `sha256//BASE64`, the SHA-256 of the edge's public
//! key (DER SubjectPublicKeyInfo) in standard base64, as curl's `--pinnedpubkey` writes
//! it. Computing and checking pins is the job of `tls`.

use super::EdgePin;

/// The prefix of a written pin.
const PIN_PREFIX: &str = "sha256//";

/// Reads a pin written `sha256//BASE64` (44 characters of standard base64: 32 bytes).
pub fn parse_pin(text: &str) -> Result<EdgePin, String> {
    let b64 = text.trim().strip_prefix(PIN_PREFIX).ok_or_else(|| {
        format!("{text:?} is not a pin: write sha256//BASE64 (as `mailslot-edge init` prints it)")
    })?;
    let bytes =
        super::pem::base64_decode(b64).map_err(|e| format!("{text:?} is not a pin: {e}"))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{text:?} is not a pin: {} bytes, a SHA-256 has 32", b.len()))
}

/// A pin as written in the config: `sha256//BASE64`.
pub fn pin_to_string(pin: &EdgePin) -> String {
    format!("{PIN_PREFIX}{}", super::pem::base64_encode(pin))
}
