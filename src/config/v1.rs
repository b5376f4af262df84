//! The payload reader of format versions 1 to 4: postcard decoded straight into a boxed
//! config.
//!
//! A version 1 payload is exactly what the derived `Serialize` of [`DeviceConfig`]
//! writes with postcard: the struct's fields in order, lists as a varint count followed
//! by their entries. Reading it back with the derived `Deserialize` would build the
//! ~100 KiB config, and its ~80 KiB rule list, in stack temporaries several times
//! over: enough to overflow a 2 MiB thread stack in a debug build. This reader walks the
//! same fields in the same order and pushes each list entry straight into the box, so
//! the stack holds one rule at most. A count above a list's capacity fails at the entry
//! past it, before anything is allocated.
//!
//! Version 2 appended one field, `edge_pins`; a version 1 payload ends before it and
//! reads as a config without pins. Version 3 appended `metered`; a version 1 or 2
//! payload reads as `metered: false`. Version 4 appended `data_cap` and `essential`;
//! older payloads read as no cap and no essential rule. A version that changes more than appending would
//! get its own reader and keep this one, converting.

use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, SeqAccess, Visitor};

use super::DeviceConfig;

/// The fields of [`DeviceConfig`], in declaration (and wire) order.
const FIELDS: &[&str] = &[
    "tunnel",
    "token",
    "edges",
    "edge_ca",
    "cas",
    "protocol",
    "ha_connections",
    "keepalive_secs",
    "idle_timeout_secs",
    "grace_period_secs",
    "ingress",
    "edge_pins",
    "metered",
    "data_cap",
    "essential",
];

/// Fields of a version 1 payload: all but the last two.
const V1_FIELDS: usize = 11;
/// Fields of a version 2 payload: all but the last three.
const V2_FIELDS: usize = 12;
/// Fields of a version 3 payload: all but the last two.
const V3_FIELDS: usize = 13;

/// Decodes a version 1 to 4 payload, which must be consumed exactly. The config is not
/// validated here.
pub(super) fn read(version: u16, payload: &[u8]) -> Result<Box<DeviceConfig>, ReadError> {
    let mut config = DeviceConfig::blank();
    let mut de = postcard::Deserializer::from_bytes(payload);
    let fields = match version {
        1 => FIELDS.get(..V1_FIELDS).unwrap_or(FIELDS),
        2 => FIELDS.get(..V2_FIELDS).unwrap_or(FIELDS),
        3 => FIELDS.get(..V3_FIELDS).unwrap_or(FIELDS),
        _ => FIELDS,
    };
    Fill(&mut config, fields)
        .deserialize(&mut de)
        .map_err(ReadError::Payload)?;
    let rest = de.finalize().map_err(ReadError::Payload)?;
    if !rest.is_empty() {
        return Err(ReadError::Trailing(rest.len()));
    }
    Ok(config)
}

/// Why a payload did not read.
pub(super) enum ReadError {
    /// postcard refused it.
    Payload(postcard::Error),
    /// Bytes were left over.
    Trailing(usize),
}

/// Fills a config's fields from a postcard struct of the given fields.
struct Fill<'a>(&'a mut DeviceConfig, &'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Fill<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let fields = self.1;
        d.deserialize_struct("DeviceConfig", fields, self)
    }
}

fn missing<E: de::Error>(index: usize) -> E {
    E::invalid_length(index, &"the fields of a DeviceConfig")
}

impl<'de> Visitor<'de> for Fill<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a DeviceConfig")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let c = self.0;
        c.tunnel = seq.next_element()?.ok_or_else(|| missing(0))?;
        c.token = seq.next_element()?.ok_or_else(|| missing(1))?;
        seq.next_element_seed(Push(&mut c.edges))?
            .ok_or_else(|| missing(2))?;
        c.edge_ca = seq.next_element()?.ok_or_else(|| missing(3))?;
        seq.next_element_seed(Push(&mut c.cas))?
            .ok_or_else(|| missing(4))?;
        c.protocol = seq.next_element()?.ok_or_else(|| missing(5))?;
        c.ha_connections = seq.next_element()?.ok_or_else(|| missing(6))?;
        c.keepalive_secs = seq.next_element()?.ok_or_else(|| missing(7))?;
        c.idle_timeout_secs = seq.next_element()?.ok_or_else(|| missing(8))?;
        c.grace_period_secs = seq.next_element()?.ok_or_else(|| missing(9))?;
        seq.next_element_seed(Push(&mut c.ingress))?
            .ok_or_else(|| missing(10))?;
        if self.1.len() > V1_FIELDS {
            seq.next_element_seed(Push(&mut c.edge_pins))?
                .ok_or_else(|| missing(11))?;
        }
        if self.1.len() > V2_FIELDS {
            c.metered = seq.next_element()?.ok_or_else(|| missing(12))?;
        }
        if self.1.len() > V3_FIELDS {
            c.data_cap = seq.next_element()?.ok_or_else(|| missing(13))?;
            c.essential = seq.next_element()?.ok_or_else(|| missing(14))?;
        }
        Ok(())
    }
}

/// Appends a postcard list's entries to a fixed-capacity list, one at a time.
struct Push<'a, T, const N: usize>(&'a mut heapless::Vec<T, N>);

impl<'de, T: Deserialize<'de>, const N: usize> DeserializeSeed<'de> for Push<'_, T, N> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for Push<'_, T, N> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a list of at most {N} entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.0.clear();
        while let Some(item) = seq.next_element::<T>()? {
            if self.0.push(item).is_err() {
                return Err(de::Error::invalid_length(N + 1, &self));
            }
        }
        Ok(())
    }
}
