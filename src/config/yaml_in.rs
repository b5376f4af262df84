//! `config compile`: the YAML schema, read with `yaml_serde`, turned into a validated
//! [`DeviceConfig`]. Workstation and edge builds only (feature `yaml`).
//!
//! Keys are kebab-case; the origin options also take cloudflared's camelCase names
//! (`originRequest`, `noTLSVerify`, ...) so ingress rules can be pasted verbatim.
//! Unknown keys are errors, with their line. Files named in the YAML (`token-file`,
//! `edge-ca`, `ca-pool`) are relative to the YAML file's folder; `edge-ca` and `ca-pool`
//! also take inline PEM.

use std::fmt;
use std::io::Read;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::codec::EncodeError;
use super::pem::{is_pem, pem_to_der};
use super::validate::is_der_sequence;
use super::yaml_out::MASKED_TOKEN;
use super::*;

/// Largest YAML, token or certificate file read.
const MAX_INPUT_FILE_LEN: u64 = 1024 * 1024;

/// Why a YAML config does not compile.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML does not parse or does not fit the schema (unknown key, wrong type).
    #[error("{0}")]
    Yaml(std::string::String),
    /// A string is longer than its fixed capacity.
    #[error("{field}: {len} bytes, limit {limit}")]
    TooLong {
        /// The YAML path of the field.
        field: std::string::String,
        /// The value's length.
        len: usize,
        /// The capacity.
        limit: usize,
    },
    /// A list has more entries than its fixed capacity.
    #[error("{field}: {count} entries, limit {limit}")]
    TooMany {
        /// The YAML path of the list.
        field: std::string::String,
        /// The number of entries.
        count: usize,
        /// The capacity.
        limit: usize,
    },
    /// A value is not allowed.
    #[error("{field}: {reason}")]
    Invalid {
        /// The YAML path of the field.
        field: std::string::String,
        /// What is wrong with it.
        reason: std::string::String,
    },
    /// The config breaks an invariant.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The config does not encode.
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

fn invalid(
    field: impl Into<std::string::String>,
    reason: impl Into<std::string::String>,
) -> CompileError {
    CompileError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The YAML document.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Doc {
    tunnel: std::string::String,
    token: Option<std::string::String>,
    token_file: Option<std::string::String>,
    /// A fleet's enrolment key (`mse1.…`) in place of a token.
    enroll: Option<std::string::String>,
    edge: OneOrMany,
    edge_ca: Option<std::string::String>,
    edge_pin: Option<OneOrMany>,
    protocol: Option<YamlProtocol>,
    ha_connections: Option<u64>,
    keepalive: Option<Duration>,
    idle_timeout: Option<Duration>,
    grace_period: Option<Duration>,
    /// `metered: true`: see [`DeviceConfig::metered_profile`].
    #[serde(default)]
    metered: bool,
    /// `data-cap: 50MiB`: see [`DeviceConfig::data_cap`].
    data_cap: Option<Size>,
    #[serde(alias = "originRequest")]
    origin_request: Option<Origin>,
    ingress: std::vec::Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum YamlProtocol {
    Auto,
    Quic,
    Http2,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Rule {
    hostname: Option<std::string::String>,
    path: Option<std::string::String>,
    service: std::string::String,
    #[serde(alias = "originRequest")]
    origin_request: Option<Origin>,
    /// Served past the `data-cap` (SSH, say).
    #[serde(default)]
    essential: bool,
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Origin {
    #[serde(alias = "noTLSVerify")]
    no_tls_verify: Option<bool>,
    #[serde(alias = "httpHostHeader")]
    http_host_header: Option<std::string::String>,
    #[serde(alias = "originServerName")]
    origin_server_name: Option<std::string::String>,
    #[serde(alias = "connectTimeout")]
    connect_timeout: Option<Duration>,
    #[serde(alias = "caPool")]
    ca_pool: Option<std::string::String>,
}

impl Origin {
    /// `self`, with unset options taken from `defaults`.
    fn or(self, defaults: &Origin) -> Origin {
        let d = defaults.clone();
        Origin {
            no_tls_verify: self.no_tls_verify.or(d.no_tls_verify),
            http_host_header: self.http_host_header.or(d.http_host_header),
            origin_server_name: self.origin_server_name.or(d.origin_server_name),
            connect_timeout: self.connect_timeout.or(d.connect_timeout),
            ca_pool: self.ca_pool.or(d.ca_pool),
        }
    }
}

/// A list of strings, or one string.
struct OneOrMany(std::vec::Vec<std::string::String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = std::vec::Vec::new();
                while let Some(s) = seq.next_element::<std::string::String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration in milliseconds, written `500ms`, `15s`, `2m`, `1h`, `1m30s`, or a bare
/// number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Duration(u64);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 500ms, 15s, 2m, 1h or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                v.checked_mul(1000)
                    .map(Duration)
                    .ok_or_else(|| E::custom("duration too long"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("negative duration"))?;
                self.visit_u64(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration_ms(v).map(Duration).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes, written `64KiB`, `50MiB`, `1GiB`, `1000B` or a bare number of bytes
/// (the units of the edge's sizes: `K`, `KB`, `M`, `MB`, `G`, `GB` too, all powers of
/// 1024).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 64KiB, 50MiB, 1GiB or a number of bytes")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom("negative size"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Bytes in `64KiB`, `50MiB`, `1GiB`, `1000B` or `1000`.
pub(crate) fn parse_size(text: &str) -> Result<u64, std::string::String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size {text:?}: expected e.g. 64KiB, 50MiB, 1GiB or a number of bytes")
    })?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}: use B, KiB, MiB or GiB"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Milliseconds in `500ms`, `15s`, `2m`, `1h`, `1m30s` or `15` (seconds).
pub(crate) fn parse_duration_ms(text: &str) -> Result<u64, std::string::String> {
    let bad = || {
        format!(
            "invalid duration {text:?}: expected e.g. 500ms, 15s, 2m, 1h or a number of seconds"
        )
    };
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return secs.checked_mul(1000).ok_or_else(bad);
    }
    let mut rest = t;
    let mut total: u64 = 0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let (num, tail) = rest.split_at(digits);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(scale)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        rest = tail;
    }
    Ok(total)
}

/// Copies `s` into a fixed-capacity string, or names the field, the limit and the size.
fn bounded<const N: usize>(field: &str, s: &str) -> Result<heapless::String<N>, CompileError> {
    heapless::String::try_from(s).map_err(|_| CompileError::TooLong {
        field: field.to_string(),
        len: s.len(),
        limit: N,
    })
}

/// Copies `items` into a fixed-capacity list, or names the field, the limit and the count.
fn bounded_list<T, const N: usize>(
    field: &str,
    items: std::vec::Vec<T>,
) -> Result<heapless::Vec<T, N>, CompileError> {
    let count = items.len();
    if count > N {
        return Err(CompileError::TooMany {
            field: field.to_string(),
            count,
            limit: N,
        });
    }
    let mut out = heapless::Vec::new();
    for item in items {
        // count <= N was checked above, so every push fits.
        if out.push(item).is_err() {
            return Err(CompileError::TooMany {
                field: field.to_string(),
                count,
                limit: N,
            });
        }
    }
    Ok(out)
}

/// Reads a file named in the YAML, at most [`MAX_INPUT_FILE_LEN`] bytes.
fn read_file(path: &Path) -> Result<std::vec::Vec<u8>, CompileError> {
    let err = |source| CompileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(err)?;
    let mut data = std::vec::Vec::new();
    file.take(MAX_INPUT_FILE_LEN + 1)
        .read_to_end(&mut data)
        .map_err(err)?;
    if data.len() as u64 > MAX_INPUT_FILE_LEN {
        return Err(err(std::io::Error::other(format!(
            "larger than {MAX_INPUT_FILE_LEN} bytes"
        ))));
    }
    Ok(data)
}

fn read_text(path: &Path) -> Result<std::string::String, CompileError> {
    let data = read_file(path)?;
    std::string::String::from_utf8(data).map_err(|_| CompileError::Read {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

/// Compiles the YAML file at `input`; relative file names in it are taken from its folder.
pub(crate) fn compile_file(input: &Path) -> Result<Box<DeviceConfig>, CompileError> {
    let text = read_text(input)?;
    let base = input.parent().unwrap_or(Path::new("."));
    compile_str(&text, base)
}

/// Compiles YAML text; relative file names in it are taken from `base`.
pub fn compile_str(yaml: &str, base: &Path) -> Result<Box<DeviceConfig>, CompileError> {
    let doc: Doc = yaml_serde::from_str(yaml).map_err(|e| CompileError::Yaml(e.to_string()))?;
    Compiler { base, cas: vec![] }.compile(doc)
}

struct Compiler<'a> {
    base: &'a Path,
    /// Distinct CAs in order of first use.
    cas: std::vec::Vec<std::vec::Vec<u8>>,
}

impl Compiler<'_> {
    fn compile(mut self, doc: Doc) -> Result<Box<DeviceConfig>, CompileError> {
        let tunnel = bounded("tunnel", &doc.tunnel)?;
        let (field, token) = match (&doc.token, &doc.token_file, &doc.enroll) {
            (Some(t), None, None) => ("token", t.trim().to_string()),
            (None, Some(f), None) => ("token", read_text(&self.base.join(f))?.trim().to_string()),
            (None, None, Some(k)) => ("enroll", k.trim().to_string()),
            _ => {
                return Err(invalid(
                    "token",
                    "give exactly one of `token`, `token-file` and `enroll`",
                ))
            }
        };
        if token == MASKED_TOKEN {
            return Err(invalid(
                field,
                "this is the mask `config show` prints; use `config show --show-secrets` or `token-file`",
            ));
        }
        match (field, token.starts_with(ENROLL_PREFIX)) {
            ("enroll", false) => {
                return Err(invalid(
                    field,
                    format!("not an enrolment key (they start with `{ENROLL_PREFIX}`: `mailslot-edge enroll-key` prints one)"),
                ))
            }
            ("token", true) => {
                return Err(invalid(
                    field,
                    "this is an enrolment key: write it as `enroll:`",
                ))
            }
            _ => {}
        }
        let token = bounded(field, &token)?;
        let mut edges = std::vec::Vec::new();
        for (i, edge) in doc.edge.0.iter().enumerate() {
            edges.push(bounded(&format!("edge[{i}]"), &normalize_edge(edge))?);
        }
        let edges = bounded_list("edge", edges)?;
        let edge_ca = match &doc.edge_ca {
            Some(v) => Some(self.ca("edge-ca", v)?),
            None => None,
        };
        let mut edge_pins = heapless::Vec::<EdgePin, MAX_EDGE_PINS>::new();
        let pin_list = doc.edge_pin.map(|p| p.0).unwrap_or_default();
        for (i, pin) in pin_list.iter().enumerate() {
            let pin =
                super::pin::parse_pin(pin).map_err(|e| invalid(format!("edge-pin[{i}]"), e))?;
            edge_pins.push(pin).map_err(|_| CompileError::TooMany {
                field: "edge-pin".into(),
                count: pin_list.len(),
                limit: MAX_EDGE_PINS,
            })?;
        }
        let protocol = match doc.protocol {
            None | Some(YamlProtocol::Auto) => Protocol::Auto,
            Some(YamlProtocol::Quic) => Protocol::Quic,
            Some(YamlProtocol::Http2) => Protocol::Http2,
        };
        let ha_connections = match doc.ha_connections {
            None => DEFAULT_HA_CONNECTIONS,
            Some(n) => u8::try_from(n).map_err(|_| {
                invalid(
                    "ha-connections",
                    format!("{n} is out of range 1..={MAX_HA_CONNECTIONS}"),
                )
            })?,
        };
        let keepalive_secs = secs("keepalive", doc.keepalive, DEFAULT_KEEPALIVE_SECS)?;
        let idle_timeout_secs = secs("idle-timeout", doc.idle_timeout, DEFAULT_IDLE_TIMEOUT_SECS)?;
        let grace_period_secs = secs("grace-period", doc.grace_period, DEFAULT_GRACE_PERIOD_SECS)?;
        let defaults = doc.origin_request.unwrap_or_default();
        // Built in place: the config is ~100 KiB, too big to move around on the stack.
        let mut config = DeviceConfig::blank();
        let rule_count = doc.ingress.len();
        for (i, rule) in doc.ingress.into_iter().enumerate() {
            if rule.essential {
                // Past bit 63 the list is over MAX_RULES, refused just below.
                config.essential |= 1u64.checked_shl(i as u32).unwrap_or(0);
            }
            let rule = self.rule(i, rule, &defaults)?;
            config
                .ingress
                .push(rule)
                .map_err(|_| CompileError::TooMany {
                    field: "ingress".into(),
                    count: rule_count,
                    limit: MAX_RULES,
                })?;
        }
        let ca_count = self.cas.len();
        for der in &self.cas {
            let der = heapless::Vec::from_slice(der).map_err(|_| CompileError::TooLong {
                field: "edge-ca or ca-pool".into(),
                len: der.len(),
                limit: MAX_CERT_LEN,
            })?;
            config.cas.push(der).map_err(|_| CompileError::TooMany {
                field: "edge-ca and ca-pool (distinct certificates)".into(),
                count: ca_count,
                limit: MAX_CAS,
            })?;
        }
        config.tunnel = tunnel;
        config.token = token;
        config.edges = edges;
        config.edge_ca = edge_ca;
        config.protocol = protocol;
        config.ha_connections = ha_connections;
        config.keepalive_secs = keepalive_secs;
        config.idle_timeout_secs = idle_timeout_secs;
        config.grace_period_secs = grace_period_secs;
        config.edge_pins = edge_pins;
        config.metered = doc.metered;
        config.data_cap = doc.data_cap.map(|Size(b)| b);
        config.validate()?;
        Ok(config)
    }

    fn rule(
        &mut self,
        i: usize,
        rule: Rule,
        defaults: &Origin,
    ) -> Result<IngressRule, CompileError> {
        let field = |name: &str| format!("ingress[{i}].{name}");
        let hostname = match rule.hostname.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(h) => Some(bounded(&field("hostname"), &h.to_ascii_lowercase())?),
        };
        let path = match rule.path.as_deref() {
            None | Some("") => None,
            Some(p) => {
                let path = bounded(&field("path"), p)?;
                regex::Regex::new(p).map_err(|e| {
                    invalid(field("path"), format!("{p:?} is not a valid regex: {e}"))
                })?;
                Some(path)
            }
        };
        let service = parse_service(&field("service"), &rule.service)?;
        let o = rule.origin_request.unwrap_or_default().or(defaults);
        let ofield = |name: &str| format!("ingress[{i}].origin-request.{name}");
        let connect_timeout_ms = match o.connect_timeout {
            None => DEFAULT_CONNECT_TIMEOUT_MS,
            Some(Duration(ms)) => u32::try_from(ms).map_err(|_| {
                invalid(
                    ofield("connect-timeout"),
                    format!("{ms}ms is above the limit of {}ms", u32::MAX),
                )
            })?,
        };
        let origin = OriginOptions {
            no_tls_verify: o.no_tls_verify.unwrap_or(false),
            http_host_header: match &o.http_host_header {
                Some(h) => Some(bounded(&ofield("http-host-header"), h)?),
                None => None,
            },
            origin_server_name: match &o.origin_server_name {
                Some(n) => Some(bounded(
                    &ofield("origin-server-name"),
                    &n.to_ascii_lowercase(),
                )?),
                None => None,
            },
            connect_timeout_ms,
            ca_pool: match &o.ca_pool {
                Some(v) => Some(self.ca(&ofield("ca-pool"), v)?),
                None => None,
            },
        };
        Ok(IngressRule {
            hostname,
            path,
            service,
            origin,
        })
    }

    /// Loads a CA given as inline PEM or a file (PEM or DER) and returns its index,
    /// sharing the index with an identical CA seen before.
    fn ca(&mut self, field: &str, value: &str) -> Result<u8, CompileError> {
        let der = if is_pem(value) {
            pem_to_der(value).map_err(|e| invalid(field, e.to_string()))?
        } else {
            let path = self.base.join(value);
            let data = read_file(&path)?;
            match std::str::from_utf8(&data) {
                Ok(text) if text.contains("-----BEGIN") => pem_to_der(text)
                    .map_err(|e| invalid(field, format!("{}: {e}", path.display())))?,
                _ => data,
            }
        };
        if der.len() > MAX_CERT_LEN {
            return Err(CompileError::TooLong {
                field: field.to_string(),
                len: der.len(),
                limit: MAX_CERT_LEN,
            });
        }
        if !is_der_sequence(&der) {
            return Err(invalid(field, "not a certificate (neither PEM nor DER)"));
        }
        let index = match self.cas.iter().position(|c| *c == der) {
            Some(i) => i,
            None => {
                self.cas.push(der);
                self.cas.len() - 1
            }
        };
        u8::try_from(index).map_err(|_| CompileError::TooMany {
            field: "edge-ca and ca-pool (distinct certificates)".into(),
            count: index + 1,
            limit: MAX_CAS,
        })
    }
}

/// Whole seconds of a duration field, or its default.
fn secs(field: &str, d: Option<Duration>, default: u16) -> Result<u16, CompileError> {
    let Some(Duration(ms)) = d else {
        return Ok(default);
    };
    if ms % 1000 != 0 {
        return Err(invalid(
            field,
            format!("{ms}ms is not a whole number of seconds"),
        ));
    }
    u16::try_from(ms / 1000).map_err(|_| {
        invalid(
            field,
            format!("{}s is above the limit of {}s", ms / 1000, u16::MAX),
        )
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address, lowercased, with
/// the default port added when missing. Anything else is left for validation to name.
fn normalize_edge(edge: &str) -> std::string::String {
    let e = edge.trim().to_ascii_lowercase();
    if e.starts_with('[') && e.ends_with(']') || !e.contains(':') {
        format!("{e}:{DEFAULT_EDGE_PORT}")
    } else if e.parse::<Ipv6Addr>().is_ok() {
        format!("[{e}]:{DEFAULT_EDGE_PORT}")
    } else {
        e
    }
}

/// Parses a service: `http://host[:port]`, `https://`, `tcp://host:port`, `ssh://`,
/// `rdp://`, `unix:/path`, `unix+tls:/path`, `tcp+unix:/path` or `http_status:NNN`.
fn parse_service(field: &str, s: &str) -> Result<Service, CompileError> {
    let err = |reason: std::string::String| invalid(field, format!("{s:?}: {reason}"));
    if let Some(code) = s.strip_prefix("http_status:") {
        let code = code
            .parse::<u16>()
            .map_err(|_| err("expected http_status:NNN".into()))?;
        return Ok(Service::HttpStatus(code));
    }
    // `unix+tcp:` is accepted too for those who guess that order; it prints as
    // `tcp+unix:`.
    for prefix in ["tcp+unix:", "unix+tcp:"] {
        if let Some(path) = strip_prefix_ci(s, prefix) {
            return Ok(Service::UnixStream {
                path: bounded(field, path)?,
            });
        }
    }
    for (prefix, tls) in [("unix+tls:", true), ("unix:", false)] {
        if let Some(path) = s.strip_prefix(prefix) {
            return Ok(Service::Unix {
                path: bounded(field, path)?,
                tls,
            });
        }
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(err(
            "expected scheme://host[:port], unix:/path, unix+tls:/path, tcp+unix:/path or http_status:NNN".into(),
        ));
    };
    enum Kind {
        Http(bool),
        Stream(StreamKind),
    }
    let (kind, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "http" => (Kind::Http(false), Some(80)),
        "https" => (Kind::Http(true), Some(443)),
        "tcp" => (Kind::Stream(StreamKind::Tcp), None),
        "ssh" => (Kind::Stream(StreamKind::Ssh), Some(22)),
        "rdp" => (Kind::Stream(StreamKind::Rdp), Some(3389)),
        other => {
            return Err(err(format!(
                "unsupported scheme {other:?} (use http, https, tcp, ssh, rdp, unix, unix+tls, tcp+unix or http_status)"
            )))
        }
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if !(path.is_empty() || path == "/") {
        return Err(err(format!(
            "a service URL cannot have a path ({path:?}); match paths with the rule's `path`"
        )));
    }
    if authority.contains('@') {
        return Err(err("user names in service URLs are not supported".into()));
    }
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| err("missing ']'".into()))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| err("expected :port after ']'".into()))?,
            ),
        };
        (host, port)
    } else if authority.matches(':').count() > 1 {
        return Err(err("write IPv6 addresses in brackets: [::1]:8080".into()));
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(err("no host".into()));
    }
    let port = match (port, default_port) {
        (Some(p), _) => p
            .parse::<u16>()
            .map_err(|_| err(format!("invalid port {p:?}")))?,
        (None, Some(p)) => p,
        (None, None) => return Err(err("a port is required".into())),
    };
    let host = bounded(field, &host.to_ascii_lowercase())?;
    Ok(match kind {
        Kind::Http(tls) => Service::Http { host, port, tls },
        Kind::Stream(kind) => Service::Stream { kind, host, port },
    })
}

/// `s` without `prefix`, compared ignoring ASCII case (schemes are case-insensitive).
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests;
