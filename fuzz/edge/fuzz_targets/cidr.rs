//! Address ranges as `edge.yml` writes them: `ip-allow:` of `access:` and `tcp-ports:`
//! (`Cidr`) and `trusted-proxies:` (`parse_cidr`, `in_cidr`), all in
//! `src/edge/cidr.rs`. Any text parses to a range or an error, never a panic, and
//! a range contains exactly the addresses whose first `prefix` bits are its own:
//! checked bit by bit against the address the input starts with, and against the
//! range's own address, for IPv4 and IPv6 and every prefix length from 0 to 128.
//! Both take an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack socket
//! shows an IPv4 peer) as IPv4, in the probe and in the range.
//!
//! Input: byte 0 picks the address family of the probe (even IPv4, odd IPv6), the next
//! 4 or 16 bytes are the probe, the rest is the range's text.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use mailslot::edge::cidr::{in_cidr, parse_cidr, Cidr};

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Do `a` and `b` (same family) agree on their first `bits` bits?
fn same_prefix(a: IpAddr, b: IpAddr, bits: u8) -> bool {
    let (a, b) = (octets(a), octets(b));
    assert!(
        usize::from(bits) <= a.len() * 8,
        "prefix {bits} longer than the address"
    );
    (0..usize::from(bits)).all(|i| (a[i / 8] ^ b[i / 8]) & (0x80 >> (i % 8)) == 0)
}

fn probe(data: &[u8]) -> Option<(IpAddr, &[u8])> {
    let (&family, rest) = data.split_first()?;
    if family & 1 == 0 {
        let (b, rest) = rest.split_first_chunk::<4>()?;
        Some((IpAddr::V4(Ipv4Addr::from(*b)), rest))
    } else {
        let (b, rest) = rest.split_first_chunk::<16>()?;
        Some((IpAddr::V6(Ipv6Addr::from(*b)), rest))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((ip, text)) = probe(data) else {
        return;
    };
    let text = String::from_utf8_lossy(text);

    // `trusted-proxies:`: a prefix within the family, and membership by prefix bits,
    // an IPv4-mapped probe taken as IPv4 (one test for both lists).
    if let Ok((net, bits)) = parse_cidr(&text) {
        assert!(bits <= if net.is_ipv4() { 32 } else { 128 });
        assert!(
            in_cidr(net, net, bits),
            "{text:?} does not contain its own address"
        );
        let canonical = mailslot::edge::cidr::canonical(ip);
        let expected = net.is_ipv4() == canonical.is_ipv4() && same_prefix(net, canonical, bits);
        assert_eq!(in_cidr(ip, net, bits), expected, "{text:?} and {ip}");
    }

    // `ip-allow:`: the same, except that an IPv4-mapped IPv6 probe counts as IPv4.
    if let Ok(cidr) = Cidr::parse(&text) {
        let (net, bits) = parse_cidr(&text).expect("trusted-proxies reads what ip-allow reads");
        let canonical = mailslot::edge::cidr::canonical(ip);
        let expected = net.is_ipv4() == canonical.is_ipv4() && same_prefix(net, canonical, bits);
        assert_eq!(cidr.contains(ip), expected, "{text:?} and {ip}");
        assert!(
            cidr.contains(net),
            "{text:?} does not contain its own address"
        );
    }
});
