//! The request path in one normal form, made before anything matches it: ingress path
//! rules, rate limits and the origin all see the same text, so no spelling of a path
//! (`/%61dmin`, `//admin`, `/x/../admin`, `/./admin`) slips past a rule written for
//! another.
//!
//! Steps, on the path only (the query is kept as sent):
//! 1. percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded
//!    (RFC 3986 6.2.2.2); every other escape is kept, its hex digits in uppercase;
//! 2. runs of `/` become one `/`;
//! 3. dot segments (`.` and `..`) are removed as in RFC 3986 5.2.4 (`..` at the root
//!    stays at the root).
//!
//! Paths a rule cannot judge the way the origin will are refused (400):
//! - `%2F` and `%5C` (an encoded `/` or `\`): an origin that decodes them sees segments,
//!   and dot segments, that were not there when the rules looked;
//! - a literal `\` (some servers take it for `/`);
//! - `%00` and other encoded control characters (`%01`-`%1F`, `%7F`);
//! - a `.` or `..` segment carrying `;` parameters (`/..;/admin`: servlet containers
//!   strip the parameters, then resolve the dot segment);
//! - a malformed escape (`%` not followed by two hex digits);
//! - a path that does not start with `/` (`*` of `OPTIONS *` excepted).

use std::borrow::Cow;

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// An encoded `/` or `\`.
    EncodedSlash,
    /// An encoded control character (NUL included).
    EncodedControl,
    /// A literal backslash.
    Backslash,
    /// A dot segment with `;` parameters.
    DotParams,
    /// Not an absolute path.
    NotAbsolute,
}

impl PathError {
    /// The reason in words, for the visitor's 400.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::BadEscape => "the path holds a malformed percent-escape",
            PathError::EncodedSlash => "the path holds an encoded '/' or '\\' (%2F, %5C)",
            PathError::EncodedControl => "the path holds an encoded control character",
            PathError::Backslash => "the path holds a backslash",
            PathError::DotParams => "the path holds a dot segment with ';' parameters",
            PathError::NotAbsolute => "the path does not start with '/'",
        }
    }
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// `path` (no query) in normal form, borrowed when it already is.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let b = path.as_bytes();
    if b.contains(&b'\\') {
        return Err(PathError::Backslash);
    }
    let already = !b.contains(&b'%')
        && !path.contains("//")
        && !path.split('/').any(|s| s == "." || s == "..")
        && !has_dot_params(path);
    if already {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    if has_dot_params(&decoded) {
        return Err(PathError::DotParams);
    }
    Ok(Cow::Owned(remove_dots(&decoded)))
}

/// Whether a segment is `.` or `..` followed by `;`.
fn has_dot_params(path: &str) -> bool {
    path.split('/')
        .any(|s| s.starts_with(".;") || s.starts_with("..;"))
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The uppercase hex digit of a nibble (`n` < 16).
fn upper_hex(n: u8) -> char {
    char::from_digit(u32::from(n), 16).map_or('0', |c| c.to_ascii_uppercase())
}

/// Decodes escapes of unreserved characters, uppercases the others, refuses the
/// ambiguous ones.
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while let Some(&byte) = b.get(i) {
        if byte != b'%' {
            // hyper hands over ASCII only; anything else is kept as it is. `i` is 0 or
            // just past a three-byte ASCII escape, so it is on a char boundary.
            let Some(rest) = path.get(i..) else {
                return Err(PathError::BadEscape);
            };
            let run = rest.find('%').unwrap_or(rest.len());
            out.push_str(rest.get(..run).unwrap_or_default());
            i += run;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathError::BadEscape);
        };
        let c = hi << 4 | lo;
        match c {
            b'/' | b'\\' => return Err(PathError::EncodedSlash),
            0..=0x1f | 0x7f => return Err(PathError::EncodedControl),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(c))
            }
            _ => {
                out.push('%');
                out.push(upper_hex(hi));
                out.push(upper_hex(lo));
            }
        }
        i += 3;
    }
    Ok(out)
}

/// Collapses repeated `/` and removes dot segments (RFC 3986 5.2.4) of an absolute path.
fn remove_dots(path: &str) -> String {
    // Segments after the leading '/': empty ones (from `//`) are dropped, except a
    // trailing one, which keeps a trailing '/'.
    let mut segs: Vec<&str> = Vec::new();
    let parts: Vec<&str> = path[1..].split('/').collect();
    let last = parts.len() - 1;
    let mut trailing = false;
    for (i, s) in parts.iter().enumerate() {
        match *s {
            "" => trailing = i == last,
            "." => trailing = i == last,
            ".." => {
                segs.pop();
                trailing = i == last;
            }
            s => {
                segs.push(s);
                trailing = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segs {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segs.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn bypass_shapes_become_the_plain_path() {
        for p in [
            "/admin/",
            "/%61dmin/",
            "/%61%64%6D%69%6e/",
            "//admin/",
            "///admin//",
            "/x/../admin/",
            "/./admin/",
            "/../admin/",
            "/x/%2e%2e/admin/",
            "/x/.%2E/admin/",
            "/a/b/../../admin/",
            "/admin/.",
        ] {
            assert_eq!(n(p).unwrap(), "/admin/", "{p}");
        }
        assert_eq!(n("/admin").unwrap(), "/admin");
        assert_eq!(n("/admin/x/..").unwrap(), "/admin/");
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/..").unwrap(), "/");
        assert_eq!(n("//").unwrap(), "/");
        assert_eq!(n("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(n("/a..b/.c/..d").unwrap(), "/a..b/.c/..d");
    }

    #[test]
    fn other_escapes_stay_and_plain_paths_are_borrowed() {
        assert_eq!(n("/a%20b/%c3%a4").unwrap(), "/a%20b/%C3%A4");
        assert_eq!(n("/%7e%5F").unwrap(), "/~_");
        assert_eq!(n("/100%25").unwrap(), "/100%25");
        assert!(matches!(normalize("/api/v1/x"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("*"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        assert_eq!(n("/x%2F..%2Fadmin"), Err(PathError::EncodedSlash));
        assert_eq!(n("/x%2f"), Err(PathError::EncodedSlash));
        assert_eq!(n("/x%5c"), Err(PathError::EncodedSlash));
        assert_eq!(n("/x\\admin"), Err(PathError::Backslash));
        assert_eq!(n("/admin%00.png"), Err(PathError::EncodedControl));
        assert_eq!(n("/a%0d%0ab"), Err(PathError::EncodedControl));
        assert_eq!(n("/x/..;/admin"), Err(PathError::DotParams));
        assert_eq!(n("/x/%2e%2e;/admin"), Err(PathError::DotParams));
        assert_eq!(n("/%"), Err(PathError::BadEscape));
        assert_eq!(n("/%4"), Err(PathError::BadEscape));
        assert_eq!(n("/%zz"), Err(PathError::BadEscape));
        assert_eq!(n("admin"), Err(PathError::NotAbsolute));
        assert_eq!(n(""), Err(PathError::NotAbsolute));
    }

    #[test]
    fn normal_form_is_a_fixed_point() {
        for p in ["/%61dmin/", "//a/./b/../c//", "/a%20b", "/x/%2e%2e/y"] {
            let once = n(p).unwrap();
            assert_eq!(n(&once).unwrap(), once, "{p}");
        }
    }
}
