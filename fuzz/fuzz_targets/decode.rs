//! Any bytes given to the config decoder end in a config or an error, never a panic.
//!
//! Half the inputs are taken as whole files; the other half as a payload wrapped in a
//! valid header and checksum, so the fuzzer gets past the CRC to postcard and the
//! validation. A config that decodes must encode and decode back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailslot::config::codec;

/// The documented layout: magic, version 1, payload length, payload, CRC-32.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut file = b"MSLC".to_vec();
    file.extend_from_slice(&1u16.to_le_bytes());
    file.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    file.extend_from_slice(payload);
    let crc = crc32fast::hash(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    file
}

fuzz_target!(|data: &[u8]| {
    let decoded = match data.split_first() {
        Some((selector, payload)) if selector & 1 == 1 => codec::decode(&frame(payload)),
        _ => codec::decode(data),
    };
    if let Ok(config) = decoded {
        let bytes = codec::encode(&config).expect("a decoded config is valid");
        let again = codec::decode(&bytes).expect("an encoded config decodes");
        assert_eq!(again, config);
    }
});
