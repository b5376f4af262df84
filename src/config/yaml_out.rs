//! `config show`: a [`DeviceConfig`] written back as the YAML `config compile` reads.
//!
//! Hand-written so device builds, which have no YAML crate, can show their config.
//! Strings are written plain only when they are unmistakably strings, and double-quoted
//! with escapes otherwise; embedded CAs are PEM block scalars. Compiling the output
//! of `show --show-secrets` gives back the same `config.bin`, byte for byte.

use std::borrow::Cow;
use std::fmt::Write;

use super::pem::der_to_pem;
use super::{DeviceConfig, OriginOptions, DEFAULT_CONNECT_TIMEOUT_MS};

/// What `show` prints in place of the token unless asked for secrets; `compile`
/// refuses it.
pub(crate) const MASKED_TOKEN: &str = "********";

/// The config as YAML; the token is [`MASKED_TOKEN`] unless `show_secrets`.
pub fn to_yaml(config: &DeviceConfig, show_secrets: bool) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results of writeln! are ignored below.
    let o = &mut out;
    let _ = writeln!(o, "tunnel: {}", scalar(&config.tunnel));
    let key = match config.enroll_key() {
        Some(_) => "enroll",
        None => "token",
    };
    if show_secrets {
        let _ = writeln!(o, "{key}: {}", scalar(&config.token));
    } else {
        let _ = writeln!(
            o,
            "{key}: {}  # masked ({} bytes); `config show --show-secrets` prints it",
            scalar(MASKED_TOKEN),
            config.token.len()
        );
    }
    let _ = writeln!(o, "edge:");
    for edge in &config.edges {
        let _ = writeln!(o, "  - {}", scalar(edge));
    }
    if let Some(der) = config.edge_ca.and_then(|i| config.cas.get(usize::from(i))) {
        block(o, 0, "edge-ca", &der_to_pem(der));
    }
    if !config.edge_pins.is_empty() {
        let _ = writeln!(o, "edge-pin:");
        for pin in &config.edge_pins {
            let _ = writeln!(o, "  - {}", super::pin::pin_to_string(pin));
        }
    }
    let _ = writeln!(o, "protocol: {}", config.protocol.as_str());
    let _ = writeln!(o, "ha-connections: {}", config.ha_connections);
    let _ = writeln!(o, "keepalive: {}", secs(config.keepalive_secs));
    let _ = writeln!(o, "idle-timeout: {}", secs(config.idle_timeout_secs));
    let _ = writeln!(o, "grace-period: {}", secs(config.grace_period_secs));
    if config.metered {
        let _ = writeln!(o, "metered: true");
    }
    if let Some(cap) = config.data_cap {
        let _ = writeln!(o, "data-cap: {}", size(cap));
    }
    let _ = writeln!(o, "ingress:");
    for (i, rule) in config.ingress.iter().enumerate() {
        let mut lead = "  - ";
        let mut item = |o: &mut String, key: &str, value: &str| {
            let _ = writeln!(o, "{lead}{key}: {value}");
            lead = "    ";
        };
        if let Some(h) = &rule.hostname {
            item(o, "hostname", &scalar(h));
        }
        if let Some(p) = &rule.path {
            item(o, "path", &scalar(p));
        }
        item(o, "service", &scalar(&rule.service.to_string()));
        if config.is_essential(i) {
            item(o, "essential", "true");
        }
        origin(o, config, &rule.origin);
    }
    out
}

/// A rule's `origin-request`, with only the options that differ from the defaults.
fn origin(o: &mut String, config: &DeviceConfig, origin: &OriginOptions) {
    if *origin == OriginOptions::default() {
        return;
    }
    let _ = writeln!(o, "    origin-request:");
    if origin.no_tls_verify {
        let _ = writeln!(o, "      no-tls-verify: true");
    }
    if let Some(h) = &origin.http_host_header {
        let _ = writeln!(o, "      http-host-header: {}", scalar(h));
    }
    if let Some(n) = &origin.origin_server_name {
        let _ = writeln!(o, "      origin-server-name: {}", scalar(n));
    }
    if origin.connect_timeout_ms != DEFAULT_CONNECT_TIMEOUT_MS {
        let _ = writeln!(
            o,
            "      connect-timeout: {}",
            millis(origin.connect_timeout_ms)
        );
    }
    if let Some(der) = origin.ca_pool.and_then(|i| config.cas.get(usize::from(i))) {
        block(o, 6, "ca-pool", &der_to_pem(der));
    }
}

/// `key: |` followed by `text`'s lines indented two more than the key. `text` ends with
/// one newline and has no blank or space-led lines (PEM), so clip chomping keeps it exact.
fn block(o: &mut String, indent: usize, key: &str, text: &str) {
    let pad = " ".repeat(indent);
    let _ = writeln!(o, "{pad}{key}: |");
    for line in text.lines() {
        let _ = writeln!(o, "{pad}  {line}");
    }
}

/// Seconds as the shortest exact duration: `1h`, `2m`, `15s`.
pub(crate) fn secs(s: u16) -> String {
    let s = u32::from(s);
    match s {
        0 => "0s".into(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Bytes in the largest unit that writes them exactly: `50MiB`, `1536KiB`, `1000B`.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (scale, unit) in UNITS {
        if bytes >= scale && bytes % scale == 0 {
            return format!("{}{unit}", bytes / scale);
        }
    }
    format!("{bytes}B")
}

/// Milliseconds as the shortest exact duration: `10s`, `1500ms`.
pub(crate) fn millis(ms: u32) -> String {
    if ms % 1000 == 0 && ms > 0 {
        match ms / 1000 {
            s if s % 3600 == 0 => format!("{}h", s / 3600),
            s if s % 60 == 0 => format!("{}m", s / 60),
            s => format!("{s}s"),
        }
    } else {
        format!("{ms}ms")
    }
}

/// Words a YAML 1.1 or 1.2 reader could take for a boolean or null.
const RESERVED: &[&str] = &[
    "null", "true", "false", "yes", "no", "on", "off", "y", "n", "~",
];

/// `s` plain when no YAML reader could read it as anything but that string, else
/// double-quoted.
pub(crate) fn scalar(s: &str) -> Cow<'_, str> {
    let safe_char = |c: char| c.is_ascii_alphanumeric() || "._/:^$*+=-".contains(c);
    let plain = match s.chars().next() {
        Some(first) => {
            (first.is_ascii_alphabetic() || first == '/' || first == '^')
                && s.chars().all(safe_char)
                && !s.ends_with(':')
                && !RESERVED.contains(&s.to_ascii_lowercase().as_str())
        }
        None => false,
    };
    if plain {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(quote(s))
    }
}

/// A YAML double-quoted scalar; escapes `"`, `\`, control characters and the
/// characters YAML treats as line breaks or byte-order marks.
pub(crate) fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{feff}') => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::sample_config;

    #[test]
    fn scalars() {
        assert_eq!(scalar("dev42.example.com"), "dev42.example.com");
        assert_eq!(scalar("http://localhost:8080"), "http://localhost:8080");
        assert_eq!(scalar("^/v1/"), "^/v1/");
        assert_eq!(scalar("*.example.com"), "\"*.example.com\"");
        assert_eq!(scalar("[::1]:7844"), "\"[::1]:7844\"");
        assert_eq!(scalar("123"), "\"123\"");
        assert_eq!(scalar("yes"), "\"yes\"");
        assert_eq!(scalar("Null"), "\"Null\"");
        assert_eq!(scalar(""), "\"\"");
        assert_eq!(scalar("a b"), "\"a b\"");
        assert_eq!(scalar("a:"), "\"a:\"");
        assert_eq!(
            scalar("a\"b\\c\n\u{1}\u{2028}"),
            "\"a\\\"b\\\\c\\n\\u0001\\u2028\""
        );
    }

    #[test]
    fn durations() {
        assert_eq!(secs(15), "15s");
        assert_eq!(secs(120), "2m");
        assert_eq!(secs(3600), "1h");
        assert_eq!(secs(0), "0s");
        assert_eq!(millis(10_000), "10s");
        assert_eq!(millis(1500), "1500ms");
        assert_eq!(millis(0), "0ms");
    }

    #[test]
    fn sample_yaml() {
        let yaml = to_yaml(&sample_config(), false);
        assert!(
            yaml.starts_with("tunnel: dev42\ntoken: \"********\"  # masked (300 bytes)"),
            "{yaml}"
        );
        assert!(!yaml.contains("t0kEn"));
        assert!(yaml.contains(
            "edge:\n  - edge.example.com:7844\nedge-ca: |\n  -----BEGIN CERTIFICATE-----\n"
        ));
        assert!(yaml.contains(
            "  - hostname: api.dev42.example.com\n    path: ^/v1/\n    service: http://localhost:9000\n"
        ));
        assert!(yaml.contains(
            "  - hostname: secure.dev42.example.com\n    service: https://localhost:8443\n    origin-request:\n      no-tls-verify: true\n"
        ));
        assert!(yaml.ends_with("  - service: http_status:404\n"), "{yaml}");
        let yaml = to_yaml(&sample_config(), true);
        assert!(yaml.contains("token: t0kEn-_.t0kEn"), "{yaml}");
    }
}
