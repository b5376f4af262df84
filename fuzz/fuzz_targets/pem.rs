//! The PEM and base64 of configs (`src/config/pem.rs`: the `edge-ca` and `ca-pool`
//! certificates `config compile` reads, which devices carry as DER): any text ends in
//! bytes or an error, never a panic, and the decoder is strict:
//!
//! - base64 that decodes has exactly one encoding, the one `base64_encode` writes
//!   (whitespace aside), so no two texts stand for the same bytes;
//! - a PEM block that decodes is what `der_to_pem` writes, read back to the same DER;
//! - bytes encode and decode back to themselves.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailslot::config::pem::{base64_decode, base64_encode, der_to_pem, is_pem, pem_to_der};

fuzz_target!(|data: &[u8]| {
    // Bytes as bytes: encodings round-trip.
    let b64 = base64_encode(data);
    assert_eq!(base64_decode(&b64).expect("our base64 decodes"), data);
    assert_eq!(
        pem_to_der(&der_to_pem(data)).expect("our PEM decodes"),
        data
    );

    // Bytes as text: the decoders are strict.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(bytes) = base64_decode(text) {
        let canonical: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        assert_eq!(
            base64_encode(&bytes),
            canonical,
            "two encodings of one byte string"
        );
    }
    let _ = is_pem(text);
    if let Ok(der) = pem_to_der(text) {
        assert_eq!(pem_to_der(&der_to_pem(&der)).expect("our PEM decodes"), der);
    }
});
