//! Any bytes given to the config decoder end in a config or an error, never a panic,
//! and the decoder checks what its layout documents, in that order: size, magic,
//! version, payload length, checksum, payload, invariants.
//!
//! Every input is decoded three ways:
//!
//! 1. as a whole file, exactly as given (seeded with real `config.bin` files, so the
//!    fuzzer starts from the magic and mutates the version, length and checksum);
//! 2. as given, with its last 4 bytes replaced by the right CRC-32, so a mutated file
//!    gets past the checksum to the version and length checks and to postcard;
//! 3. built from fields: the first byte picks which header field is wrong (none, the
//!    version, the length, the checksum), the rest is the payload. The decoder must
//!    refuse each wrong field with its own error, and reach the payload otherwise.
//!
//! A config that decodes must encode and decode back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailslot::config::codec::{
    self, DecodeError, CRC_INIT, CRC_LEN, FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_FILE_LEN,
};

/// Decodes `file`; whatever decodes must survive a round trip.
fn decode(file: &[u8]) -> Result<(), DecodeError> {
    let config = codec::decode(file)?;
    let bytes = codec::encode(&config).expect("a decoded config is valid");
    let again = codec::decode(&bytes).expect("an encoded config decodes");
    assert_eq!(again, config);
    Ok(())
}

/// `file` with its trailing CRC-32 recomputed over everything before it.
fn with_crc(file: &[u8]) -> Option<Vec<u8>> {
    if file.len() < HEADER_LEN + CRC_LEN || !file.starts_with(&MAGIC) {
        return None;
    }
    let mut file = file.to_vec();
    let body = file.len() - CRC_LEN;
    let crc = codec::crc32(CRC_INIT, &file[..body]);
    file[body..].copy_from_slice(&crc.to_le_bytes());
    Some(file)
}

/// Which field of a built file is wrong.
#[derive(Debug, Clone, Copy)]
enum Wrong {
    Nothing,
    /// Version 0 or one newer than this build reads.
    Version(u16),
    /// The announced payload length, off by a non-zero amount.
    Length(u32),
    /// The stored CRC-32, with these bits flipped (non-zero).
    Checksum(u32),
}

/// Reads the first byte (and up to 4 more) as the field to get wrong; returns the
/// payload that is left.
fn wrong_field(data: &[u8]) -> (Wrong, &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return (Wrong::Nothing, data);
    };
    let word = |rest: &[u8]| -> u32 {
        let mut b = [0u8; 4];
        let n = rest.len().min(4);
        b[..n].copy_from_slice(&rest[..n]);
        u32::from_le_bytes(b)
    };
    let arg = word(rest);
    let after = &rest[rest.len().min(4)..];
    match pick % 8 {
        // Most inputs are well-formed files, so the payload decoder gets most runs.
        0..=4 => (Wrong::Nothing, rest),
        5 => {
            let newer = (arg as u16).max(FORMAT_VERSION + 1);
            let version = if arg & 0x1_0000 != 0 { 0 } else { newer };
            (Wrong::Version(version), after)
        }
        6 => (Wrong::Length(arg.max(1)), after),
        _ => (Wrong::Checksum(arg.max(1)), after),
    }
}

/// magic + version + length + payload + CRC-32, with at most one field wrong.
fn build(wrong: Wrong, payload: &[u8]) -> Vec<u8> {
    let version = match wrong {
        Wrong::Version(v) => v,
        _ => FORMAT_VERSION,
    };
    let mut len = payload.len() as u32;
    if let Wrong::Length(delta) = wrong {
        len = len.wrapping_add(delta);
    }
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&version.to_le_bytes());
    file.extend_from_slice(&len.to_le_bytes());
    file.extend_from_slice(payload);
    let mut crc = codec::crc32(CRC_INIT, &file);
    if let Wrong::Checksum(flip) = wrong {
        crc ^= flip;
    }
    file.extend_from_slice(&crc.to_le_bytes());
    file
}

fuzz_target!(|data: &[u8]| {
    let _ = decode(data);
    if let Some(file) = with_crc(data) {
        let _ = decode(&file);
    }

    let (wrong, payload) = wrong_field(data);
    let file = build(wrong, payload);
    let result = decode(&file);
    if file.len() > MAX_FILE_LEN {
        assert!(
            matches!(result, Err(DecodeError::TooLarge { .. })),
            "{result:?}"
        );
        return;
    }
    match wrong {
        Wrong::Nothing => assert!(
            !matches!(
                result,
                Err(DecodeError::TooShort(_)
                    | DecodeError::BadMagic
                    | DecodeError::BadVersion
                    | DecodeError::NewerVersion(_)
                    | DecodeError::LengthMismatch { .. }
                    | DecodeError::Checksum { .. })
            ),
            "a well-formed header is refused: {result:?}"
        ),
        Wrong::Version(0) => assert!(matches!(result, Err(DecodeError::BadVersion)), "{result:?}"),
        Wrong::Version(v) => assert!(
            matches!(result, Err(DecodeError::NewerVersion(n)) if n == v),
            "{result:?}"
        ),
        Wrong::Length(_) => assert!(
            matches!(result, Err(DecodeError::LengthMismatch { .. })),
            "{result:?}"
        ),
        Wrong::Checksum(_) => assert!(
            matches!(result, Err(DecodeError::Checksum { .. })),
            "{result:?}"
        ),
    }
});
