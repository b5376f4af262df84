//! Header rewriting on the way to the origin and back: what the edge refuses to pass
//! (request shapes that invite smuggling), what never crosses a proxy (hop-by-hop
//! headers, upgrades other than WebSocket), and what the edge itself says about the
//! visitor (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`). Pure functions over headers:
//! nothing here does I/O.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

/// What the front knows about a visitor's request.
pub(crate) struct Visitor {
    pub(crate) peer: SocketAddr,
    /// The peer's address as text ([`ip_header`]), formatted once per connection: it
    /// goes into `X-Forwarded-For`, `X-Real-IP` and `Forwarded` of every request.
    pub(crate) peer_ip: HeaderValue,
    /// The client's address: the peer, or from `X-Forwarded-For` behind a trusted proxy.
    pub(crate) client_ip: IpAddr,
    /// The `X-Forwarded-For` value to send on.
    pub(crate) forwarded_for: HeaderValue,
    pub(crate) scheme: &'static str,
    /// Whether the peer is a trusted proxy (`trusted-proxies`): it speaks for the
    /// visitor in its forwarding headers. (A forwarded request keeps the first edge's
    /// verdict.)
    pub(crate) trusted: bool,
}

/// The `X-Forwarded-For` value to send on: the peer's address after a trusted proxy's
/// `chain`; anyone else's chain is replaced.
pub fn forwarded_for(peer: IpAddr, chain: Option<&str>) -> HeaderValue {
    forwarded_for_text(&ip_header(peer), chain)
}

/// [`forwarded_for`] with the peer's address already as text (`peer_ip`).
pub(crate) fn forwarded_for_text(peer_ip: &HeaderValue, chain: Option<&str>) -> HeaderValue {
    let Some(chain) = chain else {
        return peer_ip.clone();
    };
    let ip = peer_ip.to_str().unwrap_or("unknown");
    let mut v = String::with_capacity(chain.len() + 2 + ip.len());
    v.push_str(chain);
    v.push_str(", ");
    v.push_str(ip);
    HeaderValue::from_str(&v).unwrap_or_else(|_| peer_ip.clone())
}

/// The headers the origin gets for a request whose visitor sent `headers`: hop-by-hop
/// headers gone, the agreed upgrade (if any) asked for again, `host` as `Host`, and
/// the forwarding headers [`set_forwarded`] writes.
pub(crate) fn to_origin(
    mut headers: HeaderMap,
    upgrade: Option<&HeaderValue>,
    host: HeaderValue,
    visitor: &Visitor,
    authority: Option<&HeaderValue>,
    trusted: bool,
) -> HeaderMap {
    strip_hop_by_hop(&mut headers);
    if let Some(proto) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
    headers.insert(header::HOST, host);
    set_forwarded(&mut headers, visitor, authority, trusted);
    headers
}

/// Headers that describe one hop and never pass through a proxy.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Most hop-by-hop names [`strip_hop_by_hop`] removes after one pass over the names,
/// and most names the `Connection` values list for that pass; a message with more takes
/// the longer way ([`strip_hop_by_hop_each`]).
const HOP_FOUND_MAX: usize = 16;
const HOP_CONNECTION_NAMES_MAX: usize = 16;

/// Removes the hop-by-hop headers: those of [`HOP_BY_HOP`], `Upgrade`, and those each
/// `Connection` value names. One pass over the names finds the ones present (most
/// messages carry none, or `Connection` and what it names), and only those are removed:
/// no look-up for each name that might be there.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    match hop_by_hop_present(headers) {
        Some(found) => {
            for name in &found {
                headers.remove(name);
            }
        }
        None => strip_hop_by_hop_each(headers),
    }
}

/// The hop-by-hop names present in `headers`, found in one pass over its names; `None`
/// when there are more than the pass keeps ([`HOP_FOUND_MAX`], or more names listed in
/// `Connection` than [`HOP_CONNECTION_NAMES_MAX`]).
fn hop_by_hop_present(headers: &HeaderMap) -> Option<heapless::Vec<HeaderName, HOP_FOUND_MAX>> {
    // The names the Connection values list, split and trimmed once for the whole pass.
    let mut listed = heapless::Vec::<&str, HOP_CONNECTION_NAMES_MAX>::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.to_str().unwrap_or("").split(',') {
            let token = token.trim();
            if !token.is_empty() {
                listed.push(token).ok()?;
            }
        }
    }
    let mut found = heapless::Vec::<HeaderName, HOP_FOUND_MAX>::new();
    for name in headers.keys() {
        let named = || listed.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()));
        if HOP_BY_HOP.contains(name) || name == header::UPGRADE || named() {
            found.push(name.clone()).ok()?;
        }
    }
    Some(found)
}

/// [`strip_hop_by_hop`] by looking up each name that might be there.
fn strip_hop_by_hop_each(headers: &mut HeaderMap) {
    // The headers each Connection value names go too. A value is cloned (a reference
    // count) so that the map can change meanwhile, and names are looked up as text:
    // nothing is allocated.
    let mut i = 0;
    while let Some(value) = headers.get_all(header::CONNECTION).iter().nth(i).cloned() {
        i += 1;
        for name in value.to_str().unwrap_or("").split(',') {
            let name = name.trim();
            if !name.eq_ignore_ascii_case("connection") {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The protocol a visitor asks to switch to, when the edge lets it through: WebSocket
/// only (on a GET, as RFC 6455 requires). Anything else (`h2c` above all: after it
/// the origin would read raw HTTP/2 that no path rule or rate limit sees) is not
/// forwarded: the request goes on as plain HTTP/1.1 without its `Upgrade`, which is
/// how a client asking for an optional upgrade expects a server that declines it to
/// answer (RFC 9110 7.8).
pub(crate) fn upgrade_of(method: &Method, headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    if !wants || *method != Method::GET {
        return None;
    }
    let mut values = headers.get_all(header::UPGRADE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    value
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"websocket")
        .then(|| HeaderValue::from_static("websocket"))
}

/// Request shapes that proxies disagree about, and so open the door to smuggling.
/// (HTTP/1.1 requests with both Content-Length and Transfer-Encoding never get here:
/// hyper drops the length, lets Transfer-Encoding win and closes the connection after
/// the response, as RFC 9112 6.3 asks; the checks below cover HTTP/2 and anything
/// that slips through.)
pub(crate) fn hygiene(headers: &HeaderMap) -> Result<(), &'static str> {
    let te = headers.get_all(header::TRANSFER_ENCODING).iter().count();
    let cl: Vec<&HeaderValue> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if te > 0 && !cl.is_empty() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    if te > 1 {
        return Err("more than one Transfer-Encoding");
    }
    if let Some(v) = headers.get(header::TRANSFER_ENCODING) {
        if !v.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err("a Transfer-Encoding other than chunked");
        }
    }
    if cl.len() > 1 && cl.windows(2).any(|w| w.first() != w.last()) {
        return Err("conflicting Content-Length headers");
    }
    Ok(())
}

/// Methods whose request may be sent twice (RFC 9110 9.2.2).
pub(crate) fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const TRUE_CLIENT_IP: HeaderName = HeaderName::from_static("true-client-ip");

/// The headers that tell the origin who asked and how. A visitor cannot choose what
/// they say: each is set by the edge, or removed. Only a peer in `trusted-proxies`
/// speaks for the visitor: its `X-Forwarded-For` and `Forwarded` chains get the peer
/// appended, its `X-Forwarded-Port` and `True-Client-IP` pass. `X-Real-IP` is the
/// client address the edge uses everywhere else (the peer, or from a trusted proxy's
/// `X-Forwarded-For`).
fn set_forwarded(
    headers: &mut HeaderMap,
    visitor: &Visitor,
    authority: Option<&HeaderValue>,
    trusted: bool,
) {
    // Room for what is added below at once, instead of growing the map on the way (a
    // map that cannot grow keeps growing one insert at a time, as before).
    let _ = headers.try_reserve(8);
    headers.insert(X_FORWARDED_FOR, visitor.forwarded_for.clone());
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(visitor.scheme));
    match authority {
        Some(v) => headers.insert(X_FORWARDED_HOST, v.clone()),
        None => headers.remove(X_FORWARDED_HOST),
    };
    let real_ip = if visitor.client_ip == visitor.peer.ip() {
        visitor.peer_ip.clone()
    } else {
        ip_header(visitor.client_ip)
    };
    headers.insert(X_REAL_IP, real_ip);
    let forwarded = forwarded_element(visitor, authority);
    let chain = headers
        .get_all(header::FORWARDED)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    let forwarded = if trusted && !chain.is_empty() {
        HeaderValue::from_str(&format!("{chain}, {forwarded}")).ok()
    } else {
        HeaderValue::from_str(&forwarded).ok()
    };
    headers.remove(header::FORWARDED);
    if let Some(v) = forwarded {
        headers.insert(header::FORWARDED, v);
    }
    if !trusted {
        headers.remove(TRUE_CLIENT_IP);
        let port = authority
            .and_then(|a| a.to_str().ok())
            .and_then(port_of)
            .unwrap_or(if visitor.scheme == "https" { 443 } else { 80 });
        let port = match port {
            80 => HeaderValue::from_static("80"),
            443 => HeaderValue::from_static("443"),
            p => HeaderValue::from(p),
        };
        headers.insert(X_FORWARDED_PORT, port);
    }
}

/// An address as a header value.
pub(crate) fn ip_header(ip: IpAddr) -> HeaderValue {
    use std::fmt::Write;
    // An address fits in 45 characters: formatted without a heap allocation.
    let mut s = heapless::String::<48>::new();
    let _ = write!(s, "{ip}");
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// This hop's element of `Forwarded` (RFC 7239): the peer, the authority asked for
/// and the scheme.
/// (Written out piece by piece from the peer's address as text: no formatting.)
fn forwarded_element(visitor: &Visitor, authority: Option<&HeaderValue>) -> String {
    let ip = visitor.peer_ip.to_str().unwrap_or("unknown");
    let host = authority
        .and_then(|a| a.to_str().ok())
        .filter(|a| !a.contains(['"', '\\']));
    let mut el =
        String::with_capacity(ip.len() + host.map_or(0, str::len) + visitor.scheme.len() + 24);
    match visitor.peer.ip() {
        IpAddr::V4(_) => {
            el.push_str("for=");
            el.push_str(ip);
        }
        IpAddr::V6(_) => {
            el.push_str("for=\"[");
            el.push_str(ip);
            el.push_str("]\"");
        }
    }
    if let Some(a) = host {
        el.push_str(";host=\"");
        el.push_str(a);
        el.push('"');
    }
    el.push_str(";proto=");
    el.push_str(visitor.scheme);
    el
}

/// The port of an authority, when it names one.
fn port_of(authority: &str) -> Option<u16> {
    let (host, port) = authority.rsplit_once(':')?;
    if host.starts_with('[') && !host.ends_with(']') {
        return None; // an IPv6 address without a port
    }
    port.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.append(
            header::CONNECTION,
            HeaderValue::from_static("Connection,X-Other"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn one_pass_and_each_name_strip_alike() {
        let cases: &[&[(&str, &str)]] = &[
            &[("content-type", "text/plain")],
            &[("connection", "keep-alive"), ("keep-alive", "timeout=5")],
            &[
                ("connection", " X-A , x-b,"),
                ("x-a", "1"),
                ("x-b", "2"),
                ("x-c", "3"),
            ],
            &[
                ("upgrade", "h2c"),
                ("te", "trailers"),
                ("trailer", "x"),
                ("x-d", "4"),
            ],
            &[
                ("connection", "a"),
                ("connection", "b"),
                ("connection", "c"),
                ("connection", "d"),
                ("connection", "e"),
                ("e", "1"),
                ("a", "2"),
                ("f", "3"),
            ],
        ];
        for pairs in cases {
            let mut one = HeaderMap::new();
            for (k, v) in *pairs {
                one.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            let mut each = one.clone();
            strip_hop_by_hop(&mut one);
            strip_hop_by_hop_each(&mut each);
            assert_eq!(one, each, "{pairs:?}");
        }
        // More hop-by-hop names than one pass keeps: all go all the same.
        let mut many = HeaderMap::new();
        let names: Vec<String> = (0..HOP_FOUND_MAX + 4).map(|i| format!("x-h{i}")).collect();
        many.insert(
            header::CONNECTION,
            HeaderValue::from_str(&names.join(",")).unwrap(),
        );
        for n in &names {
            many.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        many.insert("x-kept", HeaderValue::from_static("1"));
        assert!(hop_by_hop_present(&many).is_none());
        strip_hop_by_hop(&mut many);
        assert_eq!(many.len(), 1);
    }

    #[test]
    fn forwarded_for_appends_the_peer_to_a_trusted_chain() {
        let peer = "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(
            forwarded_for(peer, None),
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(
            forwarded_for(peer, Some("198.51.100.4")),
            "198.51.100.4, 2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        let v4 = "192.0.2.1".parse().unwrap();
        assert_eq!(forwarded_for(v4, Some("bad\u{7f}")), "192.0.2.1");
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(*k, HeaderValue::from_static(v));
            }
            hygiene(&m)
        };
        assert!(h(&[("content-length", "3")]).is_ok());
        assert!(h(&[("content-length", "3"), ("content-length", "3")]).is_ok());
        assert!(h(&[("content-length", "3"), ("content-length", "4")]).is_err());
        assert!(h(&[("transfer-encoding", "chunked")]).is_ok());
        assert!(h(&[("transfer-encoding", "gzip")]).is_err());
        assert!(h(&[("transfer-encoding", "chunked"), ("content-length", "3")]).is_err());
        assert!(h(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked")
        ])
        .is_err());
    }

    #[test]
    fn only_websocket_upgrades_on_get_pass() {
        let h = |conn: &'static str, up: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONNECTION, HeaderValue::from_static(conn));
            m.insert(header::UPGRADE, HeaderValue::from_static(up));
            m
        };
        let ws = h("keep-alive, Upgrade", " WebSocket ");
        assert_eq!(upgrade_of(&Method::GET, &ws).unwrap(), "websocket");
        assert!(upgrade_of(&Method::POST, &ws).is_none());
        assert!(upgrade_of(&Method::GET, &h("upgrade", "h2c")).is_none());
        assert!(upgrade_of(&Method::GET, &h("close", "websocket")).is_none());
    }

    #[test]
    fn ports_of_authorities() {
        assert_eq!(port_of("a.example:8443"), Some(8443));
        assert_eq!(port_of("a.example"), None);
        assert_eq!(port_of("[::1]:80"), Some(80));
        assert_eq!(port_of("[::1]"), None);
    }

    #[test]
    fn an_untrusted_peer_chooses_no_forwarding_header() {
        let visitor = Visitor {
            peer: "192.0.2.7:5000".parse().unwrap(),
            peer_ip: HeaderValue::from_static("192.0.2.7"),
            client_ip: "192.0.2.7".parse().unwrap(),
            forwarded_for: HeaderValue::from_static("192.0.2.7"),
            scheme: "https",
            trusted: false,
        };
        let mut h = HeaderMap::new();
        h.insert("forwarded", HeaderValue::from_static("for=198.51.100.1"));
        h.insert("true-client-ip", HeaderValue::from_static("198.51.100.1"));
        h.insert("x-forwarded-port", HeaderValue::from_static("1"));
        let authority = HeaderValue::from_static("a.example");
        set_forwarded(&mut h, &visitor, Some(&authority), false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert_eq!(h["x-forwarded-port"], "443");
        assert_eq!(h["x-real-ip"], "192.0.2.7");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;host=\"a.example\";proto=https"
        );
        assert!(!h.contains_key("true-client-ip"));
    }
}
