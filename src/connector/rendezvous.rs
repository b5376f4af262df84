//! Which of an edge name's addresses a connector's connections use: rendezvous (highest
//! random weight) hashing. Each address is scored by SHA-256 of the connector's seed
//! (its device id, or its tunnel token: [`seed_of`]) and the address; the slots sharing
//! an edge entry take the addresses in score order, IPv4 first. A DNS name with several
//! addresses (several edges behind one name) thus spreads a fleet's connections evenly
//! over the edges, each connector's choice is the same at every resolution whatever
//! order the DNS server rotates its answers in, and an edge that joins or leaves the
//! name moves only the connections that go to it (or went to it).

use std::net::SocketAddr;

/// The seed of a connector's choices: the first 16 bytes of SHA-256 of `identity` (the
/// device id of an enrolled device, else the tunnel token: every replica of a tunnel
/// ranks the edges alike).
pub(crate) fn seed_of(identity: &str) -> [u8; 16] {
    let d = ring::digest::digest(&ring::digest::SHA256, identity.as_bytes());
    let mut seed = [0u8; 16];
    seed.copy_from_slice(d.as_ref().get(..16).unwrap_or(&[0; 16]));
    seed
}

/// The score of `addr` for `seed`.
fn score(seed: &[u8; 16], addr: &SocketAddr) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(seed);
    ctx.update(addr.to_string().as_bytes());
    let d = ctx.finish();
    let mut top = [0u8; 8];
    top.copy_from_slice(d.as_ref().get(..8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(top)
}

/// Orders `addrs` as the slots take them: IPv4 first (the common case on cellular NAT),
/// then by score, highest first.
pub(crate) fn order(addrs: &mut [SocketAddr], seed: &[u8; 16]) {
    addrs.sort_by_cached_key(|a| (a.is_ipv6(), std::cmp::Reverse(score(seed, a))));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([192, 0, 2, i], 7844)))
            .collect()
    }

    #[test]
    fn the_order_ignores_the_answer_order_and_puts_ipv4_first() {
        let seed = seed_of("device-a");
        let mut one = addrs(5);
        one.push("[2001:db8::1]:7844".parse().unwrap());
        let mut other: Vec<SocketAddr> = one.iter().rev().copied().collect();
        order(&mut one, &seed);
        order(&mut other, &seed);
        assert_eq!(one, other, "rotated DNS answers");
        assert!(one.last().unwrap().is_ipv6());
    }

    #[test]
    fn a_member_leaving_moves_only_its_own_connectors() {
        // 1000 connectors' first choice among 5 edges, then with edge 3 gone.
        let edges = addrs(5);
        let gone = edges[2];
        let mut moved = 0;
        let mut per_edge = [0usize; 5];
        for i in 0..1000 {
            let seed = seed_of(&format!("device-{i}"));
            let mut all = edges.clone();
            order(&mut all, &seed);
            let mut fewer: Vec<SocketAddr> = edges.iter().copied().filter(|a| *a != gone).collect();
            order(&mut fewer, &seed);
            if all[0] != fewer[0] {
                moved += 1;
                assert_eq!(all[0], gone, "a connector not on the leaving edge moved");
            }
            per_edge[edges.iter().position(|a| *a == all[0]).unwrap()] += 1;
        }
        // About a fifth were on it; every edge gets about a fifth.
        assert!((120..=280).contains(&moved), "{moved}");
        assert!(
            per_edge.iter().all(|n| (120..=280).contains(n)),
            "{per_edge:?}"
        );
    }
}
