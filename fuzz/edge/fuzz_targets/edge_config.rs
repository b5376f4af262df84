//! `edge.yml` (`src/edge/config.rs` `EdgeConfig::parse`): any text ends in settings or
//! an error with a message, never a panic, whatever its YAML (anchors, aliases, deep
//! nesting, tags) and whatever its values: listen addresses, durations, sizes, limits,
//! `access:` policies with their host patterns and CIDRs, service tokens, TCP ports,
//! `rate-limits:` with their path regexes, `hosts:` headers, `trusted-proxies:`, and the
//! revocation lists. Nothing is read from disk: parsing only resolves paths.
//!
//! The value parsers it uses are also fed the raw text: sizes and durations that
//! parse, print and parse back to themselves.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mailslot::edge::config::{parse_duration, parse_size, parse_tunnel_id, EdgeConfig};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = EdgeConfig::parse(text, Path::new("/etc/mailslot")) {
        assert!(cfg.cert.cert.is_absolute() && cfg.cert.key.is_absolute());
        assert!(cfg.keepalive < cfg.idle_timeout);
        assert!(cfg.signing_key.is_some() || !cfg.verify_keys.is_empty());
    }
    if let Ok(n) = parse_size(text) {
        assert_eq!(parse_size(&n.to_string()), Ok(n));
    }
    if let Ok(d) = parse_duration(text) {
        assert_eq!(parse_duration(&format!("{}ms", d.as_millis())), Ok(d));
    }
    let _ = parse_tunnel_id(text);
});
