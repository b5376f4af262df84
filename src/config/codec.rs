//! The `config.bin` file format: every byte of it is written and read here.
//!
//! ```text
//!  0        4          6              10                    10+N        14+N
//!  +--------+----------+--------------+---------------------+-----------+
//!  | magic  | version  | payload len  | payload             | CRC-32    |
//!  | "MSLC" | u16 LE   | N, u32 LE    | N bytes of postcard | u32 LE    |
//!  +--------+----------+--------------+---------------------+-----------+
//!  |<------------- CRC-32 (IEEE, see [`crc32`]) covers these ---------->|
//! ```
//!
//! - `magic`: the 4 bytes `MSLC` ("mailslot config").
//! - `version`: the format version. This build writes version 1 for a config without
//!   `edge-pin`s, so that older mailslots keep reading it, version 2, whose payload
//!   appends the pins, for one with them, version 3, which appends `metered` after the
//!   pins (even none), for a metered config, and [`FORMAT_VERSION`] (4), which appends
//!   `data_cap` and `essential` after `metered`, for a config with a `data-cap` or an
//!   `essential` rule only. A reader refuses newer versions ("written by a newer
//!   mailslot: update") and reads every older one it knows.
//! - `payload len`: the postcard payload's length; the file must be exactly
//!   `14 + N` bytes.
//! - `payload`: the [`DeviceConfig`] encoded with postcard (varint integers,
//!   length-prefixed strings and lists, enum variants as varint indexes). Strings and
//!   lists have fixed capacities, so decoding never allocates.
//! - `CRC-32`: over the header and the payload.
//!
//! A decoder checks, in order: the file size against [`MAX_FILE_LEN`] (before reading
//! it), the magic, the version, the payload length against the file length, the
//! checksum, the payload, then the config's invariants ([`DeviceConfig::validate`]).

use super::{ConfigError, DeviceConfig};

/// The file's first 4 bytes.
pub const MAGIC: [u8; 4] = *b"MSLC";
/// The newest format version this build writes and reads (4: `data_cap` and
/// `essential` appended).
pub const FORMAT_VERSION: u16 = 4;
/// The version written for a metered config without a data cap or essential rules.
pub(crate) const METERED_VERSION: u16 = 3;
/// The version written for a config with edge pins that is not metered.
pub(crate) const PINNED_VERSION: u16 = 2;
/// The version written for a config without edge pins, which version 1 readers know.
pub(crate) const PINLESS_VERSION: u16 = 1;
/// Bytes before the payload: magic, version, payload length.
pub const HEADER_LEN: usize = 10;
/// Bytes after the payload: the CRC-32.
pub const CRC_LEN: usize = 4;
/// Largest file accepted or written. A config with every field and list at capacity
/// encodes to about 110 KiB (tested); anything larger is refused before it is read.
pub const MAX_FILE_LEN: usize = 160 * 1024;

/// Why bytes are not a usable config file.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The file is larger than any config can be.
    #[error("{len} bytes, larger than the {MAX_FILE_LEN}-byte limit of a config file")]
    TooLarge {
        /// The file's size.
        len: u64,
    },
    /// The file is shorter than a header and a checksum.
    #[error("truncated: {0} bytes, shorter than the {min}-byte minimum", min = HEADER_LEN + CRC_LEN)]
    TooShort(usize),
    /// The file does not start with the magic bytes.
    #[error("not a mailslot config file (no MSLC magic)")]
    BadMagic,
    /// The version field is 0, which no mailslot writes.
    #[error("format version 0 is not a mailslot config version")]
    BadVersion,
    /// The file was written in a format version newer than this build reads.
    #[error("format version {0} was written by a newer mailslot: update mailslot (this one reads up to version {FORMAT_VERSION})")]
    NewerVersion(u16),
    /// The payload length in the header does not match the file's length.
    #[error("truncated or padded: the header announces {announced} payload bytes, the file holds {actual}")]
    LengthMismatch {
        /// Payload length from the header.
        announced: u32,
        /// Payload bytes actually present.
        actual: usize,
    },
    /// The CRC-32 does not match the header and payload.
    #[error("corrupt: checksum {stored:08x} stored, {computed:08x} computed")]
    Checksum {
        /// CRC-32 read from the file.
        stored: u32,
        /// CRC-32 of the header and payload.
        computed: u32,
    },
    /// The payload does not decode into a config (bad varint, bad enum, over capacity).
    #[error("payload does not decode: {0}")]
    Payload(postcard::Error),
    /// The payload decoded but left bytes unread.
    #[error("payload has {0} unread bytes at its end")]
    TrailingBytes(usize),
    /// The payload decoded into a config that breaks an invariant.
    #[error("invalid config: {0}")]
    Invalid(#[from] ConfigError),
}

/// Why a config cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The config breaks an invariant, so no reader would accept the file.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// postcard could not serialize the config.
    #[error("cannot serialize: {0}")]
    Serialize(postcard::Error),
    /// The encoded file would exceed [`MAX_FILE_LEN`].
    #[error("encoded config is {0} bytes, above the {MAX_FILE_LEN}-byte limit")]
    TooLarge(usize),
}

/// The fixed-size header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Format version.
    pub(crate) version: u16,
    /// Payload length.
    pub(crate) payload_len: u32,
}

impl Header {
    /// Checks the magic and the version; the length is checked by [`decode`].
    pub(crate) fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header, DecodeError> {
        let [m0, m1, m2, m3, v0, v1, l0, l1, l2, l3] = *bytes;
        if [m0, m1, m2, m3] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = u16::from_le_bytes([v0, v1]);
        if version == 0 {
            return Err(DecodeError::BadVersion);
        }
        if version > FORMAT_VERSION {
            return Err(DecodeError::NewerVersion(version));
        }
        Ok(Header {
            version,
            payload_len: u32::from_le_bytes([l0, l1, l2, l3]),
        })
    }

    fn to_bytes(self) -> [u8; HEADER_LEN] {
        let [v0, v1] = self.version.to_le_bytes();
        let [l0, l1, l2, l3] = self.payload_len.to_le_bytes();
        let [m0, m1, m2, m3] = MAGIC;
        [m0, m1, m2, m3, v0, v1, l0, l1, l2, l3]
    }
}

/// Encodes a config as a complete `config.bin`, after checking its invariants.
pub fn encode(config: &DeviceConfig) -> Result<Vec<u8>, EncodeError> {
    config.validate()?;
    let mut payload = postcard::to_allocvec(config).map_err(EncodeError::Serialize)?;
    let version = if config.data_cap.is_some() || config.essential != 0 {
        FORMAT_VERSION
    } else if payload.pop() != Some(0) || payload.pop() != Some(0) {
        // `essential` (0) and `data_cap` (None) are the payload's last fields, one byte 0
        // each. Without them the payload is version 3's.
        return Err(EncodeError::Serialize(postcard::Error::SerdeSerCustom));
    } else if config.metered {
        METERED_VERSION
    } else if payload.pop() != Some(0) {
        // `metered` is the payload's last field; false, postcard writes it as one byte 0.
        // Without that byte the payload is version 2's.
        return Err(EncodeError::Serialize(postcard::Error::SerdeSerCustom));
    } else if config.edge_pins.is_empty() {
        // `edge_pins` is the payload's last field; empty, postcard writes it as one
        // length byte 0. Without that byte the payload is version 1's, to the byte.
        if payload.pop() != Some(0) {
            return Err(EncodeError::Serialize(postcard::Error::SerdeSerCustom));
        }
        PINLESS_VERSION
    } else {
        PINNED_VERSION
    };
    let total = HEADER_LEN + payload.len() + CRC_LEN;
    let payload_len = u32::try_from(payload.len()).map_err(|_| EncodeError::TooLarge(total))?;
    if total > MAX_FILE_LEN {
        return Err(EncodeError::TooLarge(total));
    }
    let header = Header {
        version,
        payload_len,
    };
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(&payload);
    let crc = crc32(CRC_INIT, &out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes and validates a complete `config.bin`. Never allocates more than the boxed
/// config, whatever the bytes.
pub fn decode(bytes: &[u8]) -> Result<Box<DeviceConfig>, DecodeError> {
    decode_with_version(bytes).map(|(config, _)| config)
}

/// [`decode`], also returning the format version the file was written in.
pub(crate) fn decode_with_version(bytes: &[u8]) -> Result<(Box<DeviceConfig>, u16), DecodeError> {
    if bytes.len() > MAX_FILE_LEN {
        return Err(DecodeError::TooLarge {
            len: bytes.len() as u64,
        });
    }
    let Some((header, rest)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(DecodeError::TooShort(bytes.len()));
    };
    let Some((payload, crc)) = rest.split_last_chunk::<CRC_LEN>() else {
        return Err(DecodeError::TooShort(bytes.len()));
    };
    let raw_header = header;
    let header = Header::parse(raw_header)?;
    if usize::try_from(header.payload_len).ok() != Some(payload.len()) {
        return Err(DecodeError::LengthMismatch {
            announced: header.payload_len,
            actual: payload.len(),
        });
    }
    let stored = u32::from_le_bytes(*crc);
    let computed = crc32(crc32(CRC_INIT, raw_header), payload);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    let config = read_payload(header.version, payload)?;
    config.validate()?;
    Ok((config, header.version))
}

/// The CRC-32 of an empty input, to start [`crc32`] with.
pub const CRC_INIT: u32 = 0;

/// CRC-32/ISO-HDLC (the IEEE 802.3 polynomial, reflected, as in zlib, PNG and
/// crc32fast): `crc32(CRC_INIT, b"123456789") == 0xcbf4_3926`. Continues from `crc`, the
/// CRC of the bytes before `bytes`, i.e. `crc32(crc32(CRC_INIT, a), b)` is the CRC of `a`
/// followed by `b`.
///
/// Byte-at-a-time with a 1 KiB table built at compile time: a config file is at most
/// [`MAX_FILE_LEN`] bytes and read once at start, so speed does not matter here and a
/// slice-by-16 implementation (crc32fast) would only add 28 KB to the device binary.
// A `u8` indexes the 256-entry table.
#[allow(clippy::indexing_slicing)]
pub fn crc32(crc: u32, bytes: &[u8]) -> u32 {
    let mut crc = !crc;
    for &b in bytes {
        crc = CRC_TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}

/// `CRC_TABLE[i]`: the CRC register after shifting the byte `i` through it.
static CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        // `i < 256`, the loop's bound (`get_mut` is not `const` on this MSRV).
        #[allow(clippy::indexing_slicing)]
        {
            table[i] = c;
        }
        i += 1;
    }
    table
};

/// One reader per format version this build knows: versions 1 to 4 differ only by
/// the fields versions 2 to 4 append, and share [`super::v1`]'s reader.
fn read_payload(version: u16, payload: &[u8]) -> Result<Box<DeviceConfig>, DecodeError> {
    let read = match version {
        1..=4 => super::v1::read(version, payload),
        // Header::parse admits only versions 1..=FORMAT_VERSION, all handled above.
        _ => return Err(DecodeError::NewerVersion(version)),
    };
    read.map_err(|e| match e {
        super::v1::ReadError::Payload(e) => DecodeError::Payload(e),
        super::v1::ReadError::Trailing(n) => DecodeError::TrailingBytes(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::{arb_config, max_config, sample_config};
    use proptest::prelude::*;

    /// Runs `f` on a thread with room for the derived decoder's stack temporaries.
    fn big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Box<T> {
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn(move || Box::new(f()))
            .unwrap()
            .join()
            .unwrap()
    }

    /// Rebuilds a file around `payload` with a correct length and checksum.
    fn wrap(version: u16, payload: &[u8]) -> Vec<u8> {
        let header = Header {
            version,
            payload_len: payload.len() as u32,
        };
        let mut out = header.to_bytes().to_vec();
        out.extend_from_slice(payload);
        let crc = crc32(CRC_INIT, &out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn header_bytes() {
        let bytes = encode(&sample_config()).unwrap();
        assert_eq!(&bytes[..4], b"MSLC");
        assert_eq!(&bytes[4..6], &[1, 0]);
        let len = u32::from_le_bytes(bytes[6..10].try_into().unwrap()) as usize;
        assert_eq!(bytes.len(), HEADER_LEN + len + CRC_LEN);
        let crc = crc32(CRC_INIT, &bytes[..bytes.len() - 4]);
        assert_eq!(&bytes[bytes.len() - 4..], &crc.to_le_bytes());
    }

    /// The sample config cut to tunnel "t", token "k", edge "e:1" and no rules or CAs:
    /// the fixed layout tests below spell out its bytes.
    fn minimal_config() -> Box<DeviceConfig> {
        let mut config = sample_config();
        config.ingress.clear();
        config.cas.clear();
        config.edge_ca = None;
        config.edges.clear();
        config.edges.push("e:1".try_into().unwrap()).unwrap();
        config.tunnel = "t".try_into().unwrap();
        config.token = "k".try_into().unwrap();
        config
    }

    /// A rule with default origin options.
    fn rule(hostname: Option<&str>, service: crate::config::Service) -> crate::config::IngressRule {
        crate::config::IngressRule {
            hostname: hostname.map(|h| h.try_into().unwrap()),
            path: None,
            service,
            origin: crate::config::OriginOptions::default(),
        }
    }

    #[test]
    fn minimal_config_bytes() {
        use crate::config::*;
        let mut config = minimal_config();
        config
            .ingress
            .push(rule(None, Service::HttpStatus(404)))
            .unwrap();
        let bytes = encode(&config).unwrap();
        #[rustfmt::skip]
        let payload: &[u8] = &[
            1, b't',                 // tunnel
            1, b'k',                 // token
            1, 3, b'e', b':', b'1',  // edges: ["e:1"]
            0,                       // edge_ca: None
            0,                       // cas: []
            0,                       // protocol: Auto
            4,                       // ha_connections
            15, 45, 30,              // keepalive, idle timeout, grace period
            1,                       // one rule
            0, 0,                    // hostname: None, path: None
            3, 0x94, 0x03,           // Service::HttpStatus(404)
            0, 0, 0,                 // no_tls_verify, http_host_header, origin_server_name
            0x90, 0x4e,              // connect_timeout_ms: 10000
            0,                       // ca_pool: None
        ];
        assert_eq!(bytes, wrap(1, payload));
        // The CRC as crc32fast (and zlib) computed it when this layout was fixed: files
        // written by earlier builds still verify.
        assert_eq!(bytes[bytes.len() - 4..], 0x20f4_b1d4_u32.to_le_bytes());
        assert_eq!(decode(&bytes).unwrap(), config);
    }

    /// Service variants are numbered by position: the raw unix stream, added after the
    /// first files were written, is appended as variant 4 so those files keep decoding.
    #[test]
    fn unix_stream_service_is_variant_4() {
        use crate::config::*;
        let mut config = minimal_config();
        let raw = Service::UnixStream {
            path: "/s".try_into().unwrap(),
        };
        config.ingress.push(rule(Some("a"), raw)).unwrap();
        let catch_all = rule(None, Service::HttpStatus(404));
        config.ingress.push(catch_all).unwrap();
        let bytes = encode(&config).unwrap();
        #[rustfmt::skip]
        let payload: &[u8] = &[
            1, b't', 1, b'k', 1, 3, b'e', b':', b'1', 0, 0, 0, 4, 15, 45, 30,
            2,                       // two rules
            1, 1, b'a', 0,           // hostname: Some("a"), path: None
            4, 2, b'/', b's',        // Service::UnixStream { path: "/s" }
            0, 0, 0, 0x90, 0x4e, 0,  // origin options
            0, 0,
            3, 0x94, 0x03,           // Service::HttpStatus(404), still variant 3
            0, 0, 0, 0x90, 0x4e, 0,
        ];
        assert_eq!(bytes, wrap(1, payload));
        assert_eq!(decode(&bytes).unwrap(), config);
    }

    #[test]
    fn crc32_check_values() {
        // The catalogue's check value of CRC-32/ISO-HDLC, and the empty input.
        assert_eq!(crc32(CRC_INIT, b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(CRC_INIT, b""), 0);
        assert_eq!(crc32(crc32(CRC_INIT, b"12345"), b"6789"), 0xcbf4_3926);
    }

    proptest! {
        /// Same output as crc32fast, which wrote the files of earlier builds, in one
        /// piece or continued at any split.
        #[test]
        fn crc32_matches_crc32fast(bytes in proptest::collection::vec(any::<u8>(), 0..2048), split in any::<prop::sample::Index>()) {
            let at = split.index(bytes.len() + 1);
            let (a, b) = bytes.split_at(at);
            prop_assert_eq!(crc32(CRC_INIT, &bytes), crc32fast::hash(&bytes));
            prop_assert_eq!(crc32(crc32(CRC_INIT, a), b), crc32fast::hash(&bytes));
        }
    }

    #[test]
    fn max_config_fits() {
        let config = max_config();
        let bytes = encode(&config).unwrap();
        assert!(bytes.len() <= MAX_FILE_LEN, "{} bytes", bytes.len());
        assert!(
            bytes.len() > MAX_FILE_LEN / 2,
            "limit far too loose: {} bytes",
            bytes.len()
        );
        assert_eq!(decode(&bytes).unwrap(), config);
    }

    #[test]
    fn every_truncation_fails() {
        let bytes = encode(&sample_config()).unwrap();
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len]).is_err(),
                "truncated to {len} bytes decoded"
            );
        }
    }

    #[test]
    fn every_bit_flip_fails() {
        let bytes = encode(&sample_config()).unwrap();
        let mut copy = bytes.clone();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                copy[i] ^= 1 << bit;
                assert!(decode(&copy).is_err(), "byte {i} bit {bit} flipped decoded");
                copy[i] ^= 1 << bit;
            }
        }
    }

    /// Pins make a version 2 file: version 1's payload, then the pins as a count and
    /// 32 bytes each. A version 1 file (no pins) keeps reading, and so does a version 2
    /// file with none.
    #[test]
    fn edge_pins_make_a_version_2_file() {
        use crate::config::*;
        let mut config = minimal_config();
        config
            .ingress
            .push(rule(None, Service::HttpStatus(404)))
            .unwrap();
        let v1 = encode(&config).unwrap();
        assert_eq!(&v1[4..6], &[1, 0]);
        let v1_payload = v1[HEADER_LEN..v1.len() - CRC_LEN].to_vec();
        assert_eq!(decode_with_version(&v1).unwrap(), (config.clone(), 1));

        config.edge_pins.push([7; 32]).unwrap();
        config.edge_pins.push([9; 32]).unwrap();
        let v2 = encode(&config).unwrap();
        let mut payload = v1_payload.clone();
        payload.push(2);
        payload.extend([7; 32]);
        payload.extend([9; 32]);
        assert_eq!(v2, wrap(2, &payload));
        assert_eq!(decode_with_version(&v2).unwrap(), (config.clone(), 2));

        // Version 2 without pins; version 1 with the pins' bytes is refused.
        let mut none = v1_payload.clone();
        none.push(0);
        let back = decode(&wrap(2, &none)).unwrap();
        assert!(back.edge_pins.is_empty());
        assert!(matches!(
            decode(&wrap(1, &payload)),
            Err(DecodeError::TrailingBytes(65))
        ));
        // A version 2 payload cut before its pins is refused, as is one with too many.
        assert!(matches!(
            decode(&wrap(2, &v1_payload)),
            Err(DecodeError::Payload(_))
        ));
        let mut five = v1_payload;
        five.push(5);
        five.extend([1; 5 * 32]);
        assert!(matches!(
            decode(&wrap(2, &five)),
            Err(DecodeError::Payload(_))
        ));
    }

    /// `metered: true` makes a version 3 file: version 2's payload (pins, even none),
    /// then the flag. Files without it stay version 1 or 2, to the byte.
    #[test]
    fn metered_makes_a_version_3_file() {
        use crate::config::*;
        let mut config = minimal_config();
        config
            .ingress
            .push(rule(None, Service::HttpStatus(404)))
            .unwrap();
        let v1 = encode(&config).unwrap();
        let v1_payload = v1[HEADER_LEN..v1.len() - CRC_LEN].to_vec();
        config.metered = true;
        let v3 = encode(&config).unwrap();
        let mut payload = v1_payload.clone();
        payload.extend([0, 1]);
        assert_eq!(v3, wrap(3, &payload));
        assert_eq!(decode_with_version(&v3).unwrap(), (config.clone(), 3));
        config.edge_pins.push([7; 32]).unwrap();
        let v3 = encode(&config).unwrap();
        assert_eq!(decode_with_version(&v3).unwrap(), (config.clone(), 3));
        config.metered = false;
        assert_eq!(&encode(&config).unwrap()[4..6], &[2, 0]);
        // A version 3 payload without its flag is refused; version 2 with it too.
        assert!(matches!(
            decode(&wrap(3, &[v1_payload.clone(), vec![0]].concat())),
            Err(DecodeError::Payload(_))
        ));
        assert!(matches!(
            decode(&wrap(2, &payload)),
            Err(DecodeError::TrailingBytes(1))
        ));
    }

    /// A data cap or an essential rule makes a version 4 file: version 3's payload
    /// (pins, `metered`), then the cap (an option of a varint) and the essential rules
    /// (a varint bit set). Files without them stay version 1 to 3, to the byte.
    #[test]
    fn data_cap_makes_a_version_4_file() {
        use crate::config::*;
        let mut config = minimal_config();
        config
            .ingress
            .push(rule(
                Some("ssh.example.com"),
                Service::Stream {
                    kind: StreamKind::Ssh,
                    host: "localhost".try_into().unwrap(),
                    port: 22,
                },
            ))
            .unwrap();
        config
            .ingress
            .push(rule(None, Service::HttpStatus(404)))
            .unwrap();
        let v1 = encode(&config).unwrap();
        assert_eq!(&v1[4..6], &[1, 0]);
        let v1_payload = v1[HEADER_LEN..v1.len() - CRC_LEN].to_vec();
        config.data_cap = Some(64 * 1024);
        config.essential = 0b1;
        let v4 = encode(&config).unwrap();
        let mut payload = v1_payload.clone();
        // no pins, not metered, Some(65536), essential 0b1
        payload.extend([0, 0, 1, 0x80, 0x80, 0x04, 1]);
        assert_eq!(v4, wrap(4, &payload));
        assert_eq!(decode_with_version(&v4).unwrap(), (config.clone(), 4));
        // An essential rule alone, or a cap alone, is version 4 too.
        config.data_cap = None;
        assert_eq!(
            decode_with_version(&encode(&config).unwrap()).unwrap(),
            (config.clone(), 4)
        );
        config.essential = 0;
        config.data_cap = Some(1);
        assert_eq!(
            decode_with_version(&encode(&config).unwrap()).unwrap(),
            (config.clone(), 4)
        );
        // Without them: versions 1 to 3 as before, to the byte.
        config.data_cap = None;
        assert_eq!(encode(&config).unwrap(), v1);
        config.metered = true;
        assert_eq!(&encode(&config).unwrap()[4..6], &[3, 0]);
        config.metered = false;
        config.edge_pins.push([7; 32]).unwrap();
        assert_eq!(&encode(&config).unwrap()[4..6], &[2, 0]);
        // A version 4 payload without its cap fields is refused; version 3 with them too.
        assert!(matches!(
            decode(&wrap(4, &[v1_payload.clone(), vec![0, 0]].concat())),
            Err(DecodeError::Payload(_))
        ));
        assert!(matches!(
            decode(&wrap(3, &payload)),
            Err(DecodeError::TrailingBytes(5))
        ));
        // What this build writes for a cap, a version 3 reader refuses in words.
        let mut newer = v4.clone();
        newer[4] = 5;
        let msg = decode(&newer).unwrap_err().to_string();
        assert!(msg.contains("written by a newer mailslot: update"), "{msg}");
    }

    /// A zero cap, one above the maximum and an essential mark past the last rule are
    /// refused, on encode and on decode.
    #[test]
    fn bad_caps_refused() {
        use crate::config::*;
        let mut config = minimal_config();
        config
            .ingress
            .push(rule(None, Service::HttpStatus(404)))
            .unwrap();
        for (cap, essential, field) in [
            (Some(0), 0, "data-cap"),
            (Some(MAX_DATA_CAP + 1), 0, "data-cap"),
            (Some(1), 0b10, "ingress[1].essential"),
            (None, 1 << 63, "ingress[63].essential"),
        ] {
            config.data_cap = cap;
            config.essential = essential;
            let err = encode(&config).unwrap_err().to_string();
            assert!(err.starts_with(field), "{err}");
            let payload = postcard::to_allocvec(&*config).unwrap();
            assert!(matches!(
                decode(&wrap(4, &payload)),
                Err(DecodeError::Invalid(_))
            ));
        }
        config.data_cap = Some(MAX_DATA_CAP);
        config.essential = 1;
        assert!(encode(&config).is_ok());
    }

    #[test]
    fn newer_version_refused() {
        let mut bytes = encode(&sample_config()).unwrap();
        bytes[4] = 5;
        let msg = decode(&bytes).unwrap_err().to_string();
        assert!(msg.contains("written by a newer mailslot: update"), "{msg}");
        bytes[4] = 0;
        assert!(matches!(decode(&bytes), Err(DecodeError::BadVersion)));
    }

    #[test]
    fn structural_errors() {
        let bytes = encode(&sample_config()).unwrap();
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(matches!(decode(&bad), Err(DecodeError::BadMagic)));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode(&long),
            Err(DecodeError::LengthMismatch { .. })
        ));
        let huge = vec![0u8; MAX_FILE_LEN + 1];
        assert!(matches!(decode(&huge), Err(DecodeError::TooLarge { .. })));
        // A header announcing 4 GiB in a short file is refused without allocating.
        let mut lying = bytes.clone();
        lying[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&lying),
            Err(DecodeError::LengthMismatch { .. })
        ));
        let payload = &bytes[HEADER_LEN..bytes.len() - CRC_LEN];
        let mut padded = payload.to_vec();
        padded.push(0);
        assert!(matches!(
            decode(&wrap(1, &padded)),
            Err(DecodeError::TrailingBytes(1))
        ));
        assert!(matches!(
            decode(&wrap(1, &payload[..payload.len() - 1])),
            Err(DecodeError::Payload(_))
        ));
    }

    #[test]
    fn over_capacity_string_refused() {
        // tunnel name announcing 64 bytes, one over MAX_TUNNEL_NAME_LEN.
        let mut payload = vec![64u8];
        payload.extend([b'a'; 64]);
        assert!(matches!(
            decode(&wrap(1, &payload)),
            Err(DecodeError::Payload(_))
        ));
    }

    #[test]
    fn invalid_config_refused() {
        let mut config = sample_config();
        config.ingress.pop();
        let payload = postcard::to_allocvec(&config).unwrap();
        let err = decode(&wrap(FORMAT_VERSION, &payload)).unwrap_err();
        assert!(
            matches!(err, DecodeError::Invalid(ConfigError::NoCatchAll(_))),
            "{err}"
        );
        assert!(encode(&config).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn round_trip(config in arb_config()) {
            let bytes = encode(&config).unwrap();
            let back = decode(&bytes).unwrap();
            prop_assert_eq!(&back, &config);
        }

        /// The in-place reader reads exactly what the derived `Deserialize` reads.
        #[test]
        fn reader_matches_derived(config in arb_config()) {
            let payload = postcard::to_allocvec(&config).unwrap();
            let ours = super::super::v1::read(FORMAT_VERSION, &payload).ok().unwrap();
            let derived = big_stack(move || postcard::from_bytes::<DeviceConfig>(&payload).unwrap());
            prop_assert_eq!(&*ours, &*derived);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let _ = decode(&wrap(1, &bytes));
        }
    }
}
