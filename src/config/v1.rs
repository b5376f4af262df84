//! Format version 1's payload reader: postcard decoded straight into a boxed config.
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
//! When version 2 changes the model, this file keeps reading version 1 and converts.

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
];

/// Decodes a version 1 payload, which must be consumed exactly. The config is not
/// validated here.
pub(super) fn read(payload: &[u8]) -> Result<Box<DeviceConfig>, ReadError> {
    let mut config = DeviceConfig::blank();
    let mut de = postcard::Deserializer::from_bytes(payload);
    Fill(&mut config)
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

/// Fills a config's fields from a postcard struct.
struct Fill<'a>(&'a mut DeviceConfig);

impl<'de> DeserializeSeed<'de> for Fill<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_struct("DeviceConfig", FIELDS, self)
    }
}

fn missing<E: de::Error>(index: usize) -> E {
    E::invalid_length(index, &"the 11 fields of a DeviceConfig")
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
