//! Hostnames, hostname patterns and request paths as visitors and configs send them end
//! in a canonical form or an error, never a panic, and the forms keep their promises:
//!
//! - a canonical hostname is a fixed point of [`canonical`], at most 253 bytes, and
//!   matched by `*`; an authority's host is canonical;
//! - a parsed pattern is a fixed point of [`HostPattern::parse`] and covers itself; a
//!   pattern matches only canonical names; when one pattern covers another, it matches
//!   every name the other matches;
//! - a normalised path is a fixed point of [`normalize`] and holds no empty or dot
//!   segment.
//!
//! The input is split at `\n` into up to three texts: pattern, inner pattern, name (and
//! the whole input is also tried as a name, an authority and a path). Needs the `edge`
//! feature of `mailslot` (for `edge::path`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailslot::edge::path::normalize;
use mailslot::hostname::{canonical, is_canonical, split_authority, HostPattern, MAX_LEN};

fn name(text: &str) {
    if let Ok(c) = canonical(text) {
        assert!(c.len() <= MAX_LEN, "{c:?} is too long");
        assert!(is_canonical(&c), "{text:?} gave non-canonical {c:?}");
        assert_eq!(canonical(&c).ok().as_deref(), Some(&*c), "not a fixed point");
        assert!(HostPattern::parse("*").is_ok_and(|p| p.matches(&c)));
    }
    if let Ok((host, _port)) = split_authority(text) {
        assert!(is_canonical(&host), "{text:?} gave host {host:?}");
    }
}

fn path(text: &str) {
    let Ok(n) = normalize(text) else {
        return;
    };
    assert_eq!(normalize(&n).ok().as_deref(), Some(&*n), "not a fixed point");
    if &*n != "*" {
        assert!(n.starts_with('/'), "{n:?}");
        let segments: Vec<&str> = n[1..].split('/').collect();
        let last = segments.len() - 1;
        for (i, s) in segments.iter().enumerate() {
            assert!(*s != "." && *s != "..", "dot segment in {n:?}");
            assert!(!s.is_empty() || i == last, "empty segment in {n:?}");
        }
    }
}

fn patterns(outer: &str, inner: &str, host: &str) {
    let Ok(o) = HostPattern::parse(outer) else {
        return;
    };
    assert_eq!(HostPattern::parse(o.as_str()).as_ref(), Ok(&o), "not a fixed point");
    assert!(o.covers(&o), "{o} does not cover itself");
    let matched = o.matches(host);
    if matched {
        assert!(is_canonical(host), "{o} matched non-canonical {host:?}");
    }
    if let Ok(i) = HostPattern::parse(inner) {
        if o.covers(&i) && i.matches(host) {
            assert!(matched, "{o} covers {i}, which matches {host:?}, but {o} does not");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    name(text);
    path(text);
    let mut parts = text.splitn(3, '\n');
    let outer = parts.next().unwrap_or("");
    let inner = parts.next().unwrap_or("");
    let host = parts.next().unwrap_or("");
    patterns(outer, inner, host);
    // The host also as a visitor sends it, brought to canonical form first.
    if let Ok(h) = canonical(host) {
        patterns(outer, inner, &h);
    }
});
