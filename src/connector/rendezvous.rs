//! Which of an edge name's addresses a connector's connections use: rendezvous (highest
//! random weight) hashing. Each address is scored by SHA-256 of the connector's seed
//! (its device id, or its tunnel token: [`seed_of`]) and the address; the slots sharing
//! an edge entry take the addresses in score order, IPv4 first. A DNS name with several
//! addresses (several edges behind one name) thus spreads a fleet's connections evenly
//! over the edges, each connector's choice is the same at every resolution whatever
//! order the DNS server rotates its answers in, and an edge that joins or leaves the
//! name moves only the connections that go to it (or went to it).
//!
//! The members an edge of a cluster tells ([`assign`]) are shared out per slot: each
//! slot ranks them by its own score (the seed, the slot's number and the address), and
//! takes its best that holds fewer than half the slots (rounded up), so a connector
//! with two connections or more always uses two members or more when there are two,
//! and a member that joins or leaves moves about the share of slots it takes or held.

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

/// The score of `addr` for slot `slot` of the connector seeded `seed`.
fn slot_score(seed: &[u8; 16], slot: usize, addr: &SocketAddr) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(seed);
    ctx.update(&(slot as u64).to_be_bytes());
    ctx.update(addr.to_string().as_bytes());
    let d = ctx.finish();
    let mut top = [0u8; 8];
    top.copy_from_slice(d.as_ref().get(..8).unwrap_or(&[0; 8]));
    u64::from_be_bytes(top)
}

/// The member each of `slots` slots uses among `members` (none twice, not empty): slot
/// by slot, its highest scored member (IPv4 first) holding fewer than `cap` of them,
/// where `cap` is half the slots rounded up when there are two members or more (so at
/// least two are used), else all of them. Empty when `members` is.
pub(crate) fn assign(members: &[SocketAddr], seed: &[u8; 16], slots: usize) -> Vec<SocketAddr> {
    if members.is_empty() {
        return Vec::new();
    }
    let cap = if members.len() >= 2 {
        slots.div_ceil(2).max(1)
    } else {
        slots
    };
    let mut load = vec![0usize; members.len()];
    let mut out = Vec::with_capacity(slots);
    for slot in 0..slots {
        // n ≥ 2 members of cap ≥ slots/2 each hold every slot: one always has room.
        let best = members
            .iter()
            .zip(load.iter_mut())
            .filter(|(_, l)| **l < cap)
            .max_by_key(|(a, _)| (!a.is_ipv6(), slot_score(seed, slot, a)));
        if let Some((a, l)) = best {
            *l += 1;
            out.push(*a);
        }
    }
    out
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

    fn distinct(v: &[SocketAddr]) -> usize {
        let mut d = v.to_vec();
        d.sort_unstable();
        d.dedup();
        d.len()
    }

    #[test]
    fn members_are_shared_out_over_two_at_least_and_the_same_every_time() {
        let seed = seed_of("device-a");
        for n in 1..=6u8 {
            let members = addrs(n);
            for slots in 1..=8 {
                let a = assign(&members, &seed, slots);
                assert_eq!(a.len(), slots);
                let mut rotated = members.clone();
                rotated.rotate_left(1);
                assert_eq!(
                    a,
                    assign(&rotated, &seed, slots),
                    "the list's order is ignored"
                );
                let want = if n >= 2 && slots >= 2 { 2 } else { 1 };
                assert!(distinct(&a) >= want, "{n} members, {slots} slots: {a:?}");
                // No member holds more than half the slots (rounded up) when two exist.
                if n >= 2 {
                    for m in &members {
                        let held = a.iter().filter(|x| *x == m).count();
                        assert!(held <= slots.div_ceil(2), "{a:?}");
                    }
                }
            }
        }
        assert!(assign(&[], &seed, 4).is_empty());
    }

    #[test]
    fn a_member_joining_or_leaving_moves_about_its_share_of_slots() {
        // 1000 connectors with 4 connections over 4 edges, then a fifth joins, then
        // edge 2 leaves.
        let four = addrs(4);
        let five = addrs(5);
        let newcomer = five[4];
        let gone = four[1];
        let fewer: Vec<SocketAddr> = four.iter().copied().filter(|a| *a != gone).collect();
        let (mut to_new, mut other_join, mut off_gone, mut other_leave) = (0, 0, 0, 0);
        let mut per_edge = [0usize; 4];
        for i in 0..1000 {
            let seed = seed_of(&format!("device-{i}"));
            let before = assign(&four, &seed, 4);
            for a in &before {
                per_edge[four.iter().position(|x| x == a).unwrap()] += 1;
            }
            for (b, j) in before.iter().zip(assign(&five, &seed, 4)) {
                if *b != j {
                    if j == newcomer {
                        to_new += 1;
                    } else {
                        other_join += 1;
                    }
                }
            }
            for (b, l) in before.iter().zip(assign(&fewer, &seed, 4)) {
                if *b != l {
                    if *b == gone {
                        off_gone += 1;
                    } else {
                        other_leave += 1;
                    }
                }
            }
        }
        // A fifth of the 4000 slots go to the newcomer; a quarter were on the one gone.
        assert!((650..=950).contains(&to_new), "{to_new}");
        assert!((850..=1150).contains(&off_gone), "{off_gone}");
        // Few others move (the half-the-slots rule reshuffles a few).
        assert!(other_join < 200, "{other_join}");
        assert!(other_leave < 200, "{other_leave}");
        // The fleet's connections spread evenly.
        assert!(
            per_edge.iter().all(|n| (850..=1150).contains(n)),
            "{per_edge:?}"
        );
    }
}
