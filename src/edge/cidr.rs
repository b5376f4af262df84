//! Address ranges (CIDR) for `ip-allow:` and `trusted-proxies:`: one grammar and one
//! membership test for both (`Cidr`; `parse_cidr` and `in_cidr` are its `(address,
//! prefix)` form). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a dual-stack
//! socket shows an IPv4 peer) is taken as IPv4, in a client's address and in a range
//! alike. Pure data, no I/O.

use std::net::IpAddr;

use serde::Deserialize;

/// An address range in CIDR form (`10.0.0.0/8`, `2001:db8::/32`, or one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Cidr::parse(&s)
    }
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not an address range like 10.0.0.0/8 or 2001:db8::/32");
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        // `::ffff:10.0.0.0/104` is `10.0.0.0/8`: addresses are compared as IPv4.
        if let IpAddr::V6(v6) = addr {
            if let (Some(v4), Some(p4)) = (v6.to_ipv4_mapped(), prefix.checked_sub(96)) {
                return Ok(Cidr {
                    addr: IpAddr::V4(v4),
                    prefix: p4,
                });
            }
        }
        Ok(Cidr { addr, prefix })
    }

    /// Is `ip` inside the range? IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v4) => u128::from(u32::from(v4)),
                IpAddr::V6(v6) => u128::from(v6),
            }
        };
        let width = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) => 32,
            (IpAddr::V6(_), IpAddr::V6(_)) => 128,
            _ => return false,
        };
        if self.prefix == 0 {
            return true;
        }
        let shift = width - u32::from(self.prefix);
        (bits(self.addr) >> shift) == (bits(ip) >> shift)
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Is `ip` inside any range of `list`?
pub(crate) fn any_contains(list: &[Cidr], ip: IpAddr) -> bool {
    list.iter().any(|c| c.contains(ip))
}

/// Is `ip` inside `net/bits`? The same test as [`Cidr::contains`].
pub fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let max = if net.is_ipv4() { 32 } else { 128 };
    Cidr {
        addr: net,
        prefix: bits.min(max),
    }
    .contains(ip)
}

/// Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address, as [`Cidr::parse`] does.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    Cidr::parse(s).map(|c| (c.addr, c.prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_proxies_and_ip_allow_take_mapped_addresses_as_ipv4() {
        // A dual-stack listener shows the IPv4 proxy 10.1.2.3 as ::ffff:10.1.2.3.
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        let (net, bits) = parse_cidr("10.0.0.0/8").unwrap();
        assert!(in_cidr(mapped, net, bits));
        // A range written IPv4-mapped is the IPv4 range.
        let c = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains(mapped));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert_eq!(parse_cidr("::ffff:10.0.0.0/104").unwrap(), (net, bits));
        // One grammar for both lists.
        assert!(parse_cidr("10.0.0.0 / 8").is_err());
        assert!(Cidr::parse("10.0.0.0 / 8").is_err());
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let c = Cidr::parse("2001:db8::/32").unwrap();
        assert!(c.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!c.contains("2001:db9::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("ten/8").is_err());
    }

    #[test]
    fn address_prefix_pairs() {
        let (n, b) = parse_cidr("2001:db8::/32").unwrap();
        assert!(in_cidr("2001:db8::1".parse().unwrap(), n, b));
        assert!(!in_cidr("2001:db9::1".parse().unwrap(), n, b));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        let (n, b) = parse_cidr("0.0.0.0/0").unwrap();
        assert!(in_cidr("8.8.8.8".parse().unwrap(), n, b));
    }
}
