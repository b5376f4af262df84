//! Hostnames and hostname patterns: the one canonical form and the one pattern grammar
//! used wherever mailslot names a host (the edge's routing, rule matching, token scopes,
//! access policies, rate limits and `hosts:`; the device's own check of a stream).
//!
//! **A hostname** in canonical form is either
//! - a DNS name: lowercase ASCII, no trailing dot, 1 to 253 bytes, labels of 1 to 63
//!   letters, digits and inner hyphens (`[a-z0-9]([a-z0-9-]*[a-z0-9])?`), whose last
//!   label is not all digits; no `_`: it is not valid in a host name (RFC 952/1123),
//!   public CAs no longer certify it, and a name a visitor can send that no certificate
//!   or DNS zone can hold is only a way around a pattern;
//! - an IPv4 address in dotted-decimal (`192.0.2.1`; no octal, hex or short forms);
//! - an IPv6 address, compressed and lowercase as Rust prints it (`2001:db8::1`),
//!   without brackets.
//!
//! A visitor's name is brought to that form by [`canonical`] (case folded, one trailing
//! dot dropped, IPv6 rewritten); anything else is an error, which the edge answers with
//! 400 before any look-up.
//!
//! **A pattern** is, in canonical form:
//! - an exact hostname (DNS name or IPv4 address);
//! - `*.rest`: one or more labels, then `rest` (`*.example.com` matches `a.example.com`
//!   and `a.b.example.com`, not `example.com`);
//! - a `*` label elsewhere, standing for exactly one label (`ssh.*.example.com` matches
//!   `ssh.dev42.example.com`, not `ssh.a.b.example.com`);
//! - `*` alone: every hostname.
//!
//! The matching functions take already-canonical text and refuse anything else, so a
//! name that skipped [`canonical`] never matches a pattern.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest hostname, bytes.
pub const MAX_LEN: usize = 253;
/// Longest label, bytes.
pub(crate) const MAX_LABEL: usize = 63;

/// Why a text is not a hostname or a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// Nothing.
    Empty,
    /// Over [`MAX_LEN`] bytes.
    TooLong,
    /// Two dots in a row, or a dot at the start (or two at the end).
    EmptyLabel,
    /// A label over [`MAX_LABEL`] bytes.
    LongLabel,
    /// A label starting or ending with `-`.
    Hyphen,
    /// Uppercase where the canonical form is required.
    Uppercase,
    /// A `*` that is not a whole label (or any `*` where no pattern is allowed).
    Wildcard,
    /// A character that is not a letter, digit, `-` or `.`.
    BadChar,
    /// All-digit last label that is not a dotted-decimal IPv4 address.
    Numeric,
    /// Brackets, or colons, that do not hold an IPv6 address.
    BadIp,
    /// A port, or what follows a host in an authority, that is not a port number.
    BadPort,
}

impl HostError {
    /// The reason in words.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            HostError::Empty => "empty name",
            HostError::TooLong => "longer than 253 bytes",
            HostError::EmptyLabel => "empty label (two dots, or a dot at an end)",
            HostError::LongLabel => "label longer than 63 bytes",
            HostError::Hyphen => "label starts or ends with '-'",
            HostError::Uppercase => "uppercase letters (write names in lowercase)",
            HostError::Wildcard => "'*' is only allowed as a whole label of a pattern",
            HostError::BadChar => "not a DNS name (letters, digits, '-' and '.' only)",
            HostError::Numeric => {
                "last label is all digits, and the name is not a dotted-decimal IPv4 address"
            }
            HostError::BadIp => "not an IPv6 address",
            HostError::BadPort => "not a port number after the host",
        }
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for HostError {}

/// What the label checker lets through besides `[a-z0-9-]`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Extra {
    None,
    /// Whole `*` labels (patterns).
    Star,
    /// `_` (names the device dials itself, such as container names; never matched).
    Underscore,
}

/// Checks canonical DNS-name (or pattern) text label by label; no allocation.
fn check_labels(name: &str, extra: Extra) -> Result<(), HostError> {
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if name.len() > MAX_LEN {
        return Err(HostError::TooLong);
    }
    // One pass over the bytes (every visitor request's host comes through here). A
    // label's faults are reported in the order a label-by-label reading finds them:
    // empty, too long, a hyphen at either end, then its first bad byte.
    let bytes = name.as_bytes();
    let mut start = 0;
    let mut bad_byte = None;
    let mut last: &[u8] = &[];
    for i in 0..=bytes.len() {
        let Some(&b) = bytes.get(i).filter(|&&b| b != b'.') else {
            last = bytes.get(start..i).unwrap_or_default();
            check_label(last, extra, bad_byte)?;
            start = i + 1;
            bad_byte = None;
            continue;
        };
        if bad_byte.is_none() {
            bad_byte = match b {
                b'a'..=b'z' | b'0'..=b'9' | b'-' => None,
                b'_' if extra == Extra::Underscore => None,
                b'A'..=b'Z' => Some(HostError::Uppercase),
                b'*' => Some(HostError::Wildcard),
                _ => Some(HostError::BadChar),
            };
        }
    }
    check_numeric_end(name, last)
}

/// A name whose `last` label is all digits must be a dotted-decimal IPv4 address,
/// exactly as Rust prints it (no `010.0.0.1`, `127.1` or `0x7f.0.0.1` aliases).
fn check_numeric_end(name: &str, last: &[u8]) -> Result<(), HostError> {
    let canonical_v4 = || {
        name.parse::<Ipv4Addr>()
            .is_ok_and(|ip| ip_text_is(&ip, name))
    };
    if last.iter().all(u8::is_ascii_digit) && !canonical_v4() {
        return Err(HostError::Numeric);
    }
    Ok(())
}

/// One label's checks, given the first bad byte [`check_labels`] found in it.
fn check_label(label: &[u8], extra: Extra, bad_byte: Option<HostError>) -> Result<(), HostError> {
    if label.is_empty() {
        return Err(HostError::EmptyLabel);
    }
    if label.len() > MAX_LABEL {
        return Err(HostError::LongLabel);
    }
    if label == b"*" && extra == Extra::Star {
        return Ok(());
    }
    if label.first() == Some(&b'-') || label.last() == Some(&b'-') {
        return Err(HostError::Hyphen);
    }
    bad_byte.map_or(Ok(()), Err)
}

/// Whether `ip` prints as `text`, without allocating.
fn ip_text_is(ip: &dyn std::fmt::Display, text: &str) -> bool {
    use std::fmt::Write;
    let mut buf = heapless::String::<48>::new();
    write!(buf, "{ip}").is_ok() && buf.as_str() == text
}

/// Checks that `host` is a hostname in canonical form (see the module doc).
pub(crate) fn check(host: &str) -> Result<(), HostError> {
    if host.contains(':') {
        return match host.parse::<Ipv6Addr>() {
            Ok(ip) if ip_text_is(&ip, host) => Ok(()),
            _ => Err(HostError::BadIp),
        };
    }
    check_labels(host, Extra::None)
}

/// Whether `host` is a hostname in canonical form.
pub fn is_canonical(host: &str) -> bool {
    check(host).is_ok()
}

/// A visitor's host (no port; IPv6 with or without brackets) in canonical form: case
/// folded, one trailing dot dropped, IPv6 as Rust prints it. Borrowed when it already is.
pub fn canonical(host: &str) -> Result<Cow<'_, str>, HostError> {
    let v6 = host
        .strip_prefix('[')
        .map(|h| h.strip_suffix(']').ok_or(HostError::BadIp))
        .transpose()?;
    if let Some(v6) = v6.or_else(|| host.contains(':').then_some(host)) {
        let ip = v6.parse::<Ipv6Addr>().map_err(|_| HostError::BadIp)?;
        return Ok(if ip_text_is(&ip, host) {
            Cow::Borrowed(host)
        } else {
            Cow::Owned(ip.to_string())
        });
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    let name: Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    };
    check_labels(&name, Extra::None)?;
    Ok(name)
}

/// Splits an authority (`host`, `host:port`, `[v6]:port`) into its host, in canonical
/// form, and its port. Userinfo, an empty or non-numeric port, a bare IPv6 address and
/// everything [`canonical`] refuses are errors.
pub fn split_authority(authority: &str) -> Result<(Cow<'_, str>, Option<u16>), HostError> {
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) => authority.split_at(end + 1),
            None => return Err(HostError::BadIp),
        }
    } else {
        match authority.find(':') {
            Some(at) => authority.split_at(at),
            None => (authority, ""),
        }
    };
    let port = match port {
        "" => None,
        p => {
            let digits = p.strip_prefix(':').ok_or(HostError::BadPort)?;
            if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(HostError::BadPort);
            }
            Some(digits.parse::<u16>().map_err(|_| HostError::BadPort)?)
        }
    };
    Ok((canonical(host)?, port))
}

/// Checks that `pattern` is a hostname pattern in canonical form (see the module doc).
pub(crate) fn check_pattern(pattern: &str) -> Result<(), HostError> {
    if pattern == "*" {
        return Ok(());
    }
    check_labels(pattern, Extra::Star)?;
    // Digits at the end are an IPv4 address, which has no wildcard form.
    if pattern.contains('*')
        && pattern
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(HostError::Numeric);
    }
    Ok(())
}

/// Whether a canonical pattern is exact or `*.rest` with an exact `rest`: the shapes a
/// hostname can be claimed by (an ingress rule's hostname).
pub(crate) fn is_routable(pattern: &str) -> bool {
    let rest = pattern.strip_prefix("*.").unwrap_or(pattern);
    !rest.split('.').any(|l| l == "*")
}

/// Does canonical `pattern` match `host`? False when `host` is not canonical.
pub(crate) fn matches(pattern: &str, host: &str) -> bool {
    // The common case, an exact pattern naming the host: canonical text equal to it is
    // canonical (a pattern with `*` never equals a canonical host).
    if pattern == host {
        return !pattern.contains('*');
    }
    if !is_canonical(host) {
        return false;
    }
    if pattern == "*" {
        return true;
    }
    if host.contains(':') {
        return false; // IPv6: only `*` (patterns hold no IPv6 address)
    }
    let (multi, rest) = split_pattern(pattern);
    let mut h = host.rsplit('.');
    for p in rest.rsplit('.') {
        match h.next() {
            Some(l) if p == "*" || p == l => {}
            _ => return false,
        }
    }
    // `*.` stands for one or more labels; without it, nothing may be left.
    h.next().is_some() == multi
}

/// Does canonical `outer` match every name canonical `inner` matches? (A token's
/// pattern allowing a rule's hostname, itself exact or `*.`.)
pub(crate) fn covers(outer: &str, inner: &str) -> bool {
    if outer == "*" {
        return true;
    }
    if inner == "*" {
        return false;
    }
    let (o_multi, o_rest) = split_pattern(outer);
    let (i_multi, i_rest) = split_pattern(inner);
    let mut i = i_rest.rsplit('.');
    for o in o_rest.rsplit('.') {
        match i.next() {
            // An inner `*` is any one label: only an outer `*` covers it.
            Some(l) if o == "*" || (o == l && l != "*") => {}
            _ => return false,
        }
    }
    let inner_has_more = i.next().is_some() || i_multi;
    if o_multi {
        inner_has_more
    } else {
        !inner_has_more
    }
}

/// `(leading "*." present, the rest)`.
fn split_pattern(pattern: &str) -> (bool, &str) {
    match pattern.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, pattern),
    }
}

/// A host the device dials itself (an origin, an edge address, a TLS server name): an
/// IPv4 or IPv6 address (no brackets) or a lowercase DNS name, where `_` is allowed
/// (container names). Never matched against a pattern.
pub(crate) fn check_dial_host(host: &str) -> Result<(), HostError> {
    if host.parse::<Ipv4Addr>().is_ok() || host.parse::<Ipv6Addr>().is_ok() {
        return Ok(());
    }
    match check_labels(host, Extra::Underscore) {
        // `1.2.3` and the like: resolvers differ on them, but they are the operator's own.
        Err(HostError::Numeric) => Ok(()),
        other => other,
    }
}

/// A hostname pattern in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct HostPattern(String);

impl HostPattern {
    /// A pattern as an operator writes it: case folded, surrounding space and one
    /// trailing dot dropped, then checked.
    pub fn parse(text: &str) -> Result<HostPattern, HostError> {
        let t = text.trim();
        let t = t.strip_suffix('.').unwrap_or(t).to_ascii_lowercase();
        check_pattern(&t)?;
        Ok(HostPattern(t))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Does it match `host` (canonical text; anything else never matches)?
    pub fn matches(&self, host: &str) -> bool {
        matches(&self.0, host)
    }

    /// Does it match every name `inner` matches?
    pub fn covers(&self, inner: &HostPattern) -> bool {
        covers(&self.0, &inner.0)
    }

    /// Exact or `*.exact` (see [`is_routable`]).
    pub fn is_routable(&self) -> bool {
        self.0 != "*" && is_routable(&self.0)
    }
}

impl TryFrom<String> for HostPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        HostPattern::parse(&s).map_err(|e| format!("{s:?} is not a hostname pattern: {e}"))
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The label-by-label reading [`check_labels`] must agree with (the end's IPv4 rule,
    /// [`check_numeric_end`], is shared).
    fn reference_check_labels(name: &str, extra: Extra) -> Result<(), HostError> {
        if name.is_empty() {
            return Err(HostError::Empty);
        }
        if name.len() > MAX_LEN {
            return Err(HostError::TooLong);
        }
        let mut last = "";
        for label in name.split('.') {
            if label.is_empty() {
                return Err(HostError::EmptyLabel);
            }
            if label.len() > MAX_LABEL {
                return Err(HostError::LongLabel);
            }
            last = label;
            if label == "*" && extra == Extra::Star {
                continue;
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(HostError::Hyphen);
            }
            for b in label.bytes() {
                match b {
                    b'a'..=b'z' | b'0'..=b'9' | b'-' => {}
                    b'_' if extra == Extra::Underscore => {}
                    b'A'..=b'Z' => return Err(HostError::Uppercase),
                    b'*' => return Err(HostError::Wildcard),
                    _ => return Err(HostError::BadChar),
                }
            }
        }
        check_numeric_end(name, last.as_bytes())
    }

    #[test]
    fn the_one_pass_label_check_agrees_with_a_label_by_label_reading() {
        // Every name of up to five characters over an alphabet with each kind of byte,
        // in each mode; then long labels and long names around their limits.
        let alphabet = b"a0-.*_Z:";
        let mut names = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..5 {
            let mut next = Vec::new();
            for n in &frontier {
                for &c in alphabet {
                    let mut m = n.clone();
                    m.push(char::from(c));
                    next.push(m);
                }
            }
            names.extend(next.iter().cloned());
            frontier = next;
        }
        for len in [62, 63, 64] {
            let label = "a".repeat(len);
            names.push(label.clone());
            names.push(format!("x.{label}"));
            names.push(format!("{label}.x"));
            names.push(format!("-{label}"));
        }
        for len in [252, 253, 254] {
            let mut name = "a.".repeat(len / 2);
            name.truncate(len);
            names.push(name);
        }
        names.extend(
            ["1.2.3.4", "01.2.3.4", "1.2.3", "a.1", "*.a", "a.*", "A-.b"].map(String::from),
        );
        for name in &names {
            for extra in [Extra::None, Extra::Star, Extra::Underscore] {
                assert_eq!(
                    check_labels(name, extra),
                    reference_check_labels(name, extra),
                    "{name:?} {extra:?}"
                );
            }
        }
    }

    #[test]
    fn canonical_names() {
        assert_eq!(
            canonical("Dev42.Example.COM.").unwrap(),
            "dev42.example.com"
        );
        assert!(matches!(
            canonical("dev42.example.com"),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(canonical("192.0.2.1").unwrap(), "192.0.2.1");
        assert_eq!(canonical("[::1]").unwrap(), "::1");
        assert_eq!(canonical("[2001:DB8:0::1]").unwrap(), "2001:db8::1");
        for bad in [
            "",
            ".",
            "a..b",
            "grafana..dev42.example.com",
            ".a.b",
            "a.b..",
            "-a.b",
            "a-.b",
            "a_b.example.com",
            "a b",
            "a*.b",
            "*.b",
            "a%2eb",
            "ex\u{e4}mple.com",
            "1.2.3",
            "127.1",
            "010.0.0.1",
            "0x7f.0.0.1",
            "example.123",
            "[::1",
            "[fe80::1%25eth0]",
            "::g",
        ] {
            assert!(canonical(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(canonical(&"a".repeat(63)).unwrap().len(), 63);
        assert_eq!(canonical(&"a".repeat(64)), Err(HostError::LongLabel));
        let long = ["a".repeat(63).as_str(); 4].join(".");
        assert_eq!(long.len(), 255);
        assert_eq!(canonical(&long), Err(HostError::TooLong));
        assert_eq!(canonical(&long[2..]).unwrap().len(), 253);
        assert_eq!(check("Dev42.example.com"), Err(HostError::Uppercase));
        assert_eq!(check("dev42.example.com."), Err(HostError::EmptyLabel));
    }

    #[test]
    fn authorities() {
        let split = |a| split_authority(a).map(|(h, p)| (h.into_owned(), p));
        assert_eq!(
            split("Dev42.example.com:8080"),
            Ok(("dev42.example.com".into(), Some(8080)))
        );
        assert_eq!(
            split("dev42.example.com."),
            Ok(("dev42.example.com".into(), None))
        );
        assert_eq!(split("[::1]:80"), Ok(("::1".into(), Some(80))));
        assert_eq!(split("[::1]"), Ok(("::1".into(), None)));
        for bad in [
            "a.b:",
            "a.b:x",
            "a.b:99999",
            "user@a.b",
            "::1",
            "[::1]x",
            "a.b:1:2",
            "grafana..dev42.example.com:80",
        ] {
            assert!(split(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn patterns_match_canonical_names_only() {
        let m = |p: &str, h: &str| {
            let p = HostPattern::parse(p).unwrap();
            p.matches(h)
        };
        assert!(m("*.dev42.example.com", "grafana.dev42.example.com"));
        assert!(m("*.dev42.example.com", "a.b.dev42.example.com"));
        assert!(!m("*.dev42.example.com", "dev42.example.com"));
        assert!(!m("*.dev42.example.com", "xdev42.example.com"));
        assert!(!m("*.dev42.example.com", "grafana..dev42.example.com"));
        assert!(!m("*.dev42.example.com", ".dev42.example.com"));
        assert!(!m("*.dev42.example.com", "Grafana.dev42.example.com"));
        assert!(m("ssh.*.Example.com", "ssh.dev42.example.com"));
        assert!(!m("ssh.*.example.com", "ssh.a.b.example.com"));
        assert!(!m("ssh.*.example.com", "ssh.example.com"));
        assert!(!m("ssh.*.example.com", "db.dev42.example.com"));
        assert!(!m("a.*.c", "a..c"));
        assert!(m("*", "anything.example"));
        assert!(m("*", "::1"));
        assert!(!m("*", "a..b"));
        assert!(m("dev42.example.com.", "dev42.example.com"));
        assert!(!m("dev42.example.com", "api.dev42.example.com"));
        assert!(m("192.0.2.1", "192.0.2.1"));
        assert!(m("dev42.example.com", "dev42.example.com"));
        // A host spelled as the pattern itself is no name.
        assert!(!m("*.dev42.example.com", "*.dev42.example.com"));
        assert!(!m("*", "*"));
        assert!(!m("*.example.com", "::1"));
        for bad in ["a..b", "a.b*.c", "*a.b", "", "a_b.c", "*.0.0.1", "[::1]"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(HostPattern::parse("*.dev42.example.com")
            .unwrap()
            .is_routable());
        assert!(!HostPattern::parse("ssh.*.example.com")
            .unwrap()
            .is_routable());
        assert!(!HostPattern::parse("*").unwrap().is_routable());
    }

    #[test]
    fn coverage() {
        let c = |o: &str, i: &str| covers(o, i);
        assert!(c("dev42.example.com", "dev42.example.com"));
        assert!(c("*.dev42.example.com", "api.dev42.example.com"));
        assert!(c("*.dev42.example.com", "*.api.dev42.example.com"));
        assert!(c("*.dev42.example.com", "*.dev42.example.com"));
        assert!(!c("*.dev42.example.com", "dev42.example.com"));
        assert!(!c("*.dev42.example.com", "*.dev42.example.com.evil"));
        assert!(!c("dev42.example.com", "*.dev42.example.com"));
        assert!(!c("*.dev42.example.com", "evildev42.example.com"));
        assert!(c("*", "*.example.com"));
        assert!(!c("*.example.com", "*"));
        assert!(c("ssh.*.example.com", "ssh.dev42.example.com"));
        assert!(!c("ssh.*.example.com", "*.dev42.example.com"));
        assert!(!c("*.*.example.com", "*.example.com"));
        assert!(c("*.*.example.com", "*.a.example.com"));
        assert!(!c("a.example.com", "*.example.com"));
    }

    #[test]
    fn dial_hosts_allow_underscores() {
        assert!(check_dial_host("my_app").is_ok());
        assert!(check_dial_host("::1").is_ok());
        assert!(check_dial_host("10.0.0.1").is_ok());
        assert!(check_dial_host("My_app").is_err());
        assert!(check_dial_host("a..b").is_err());
    }
}
