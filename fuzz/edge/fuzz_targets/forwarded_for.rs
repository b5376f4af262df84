//! `X-Forwarded-For`, which any visitor can send (`src/edge/forward.rs` `forwarded_for`,
//! `src/edge/shield.rs` `Shield::client_ip`):
//!
//! - the value sent to the origin always ends with the socket peer's address, is a
//!   valid header value, and carries a chain only from a trusted proxy;
//! - the client address the edge limits and logs is the socket peer unless the peer is
//!   a trusted proxy; behind one, it is the rightmost hop that is not a trusted proxy
//!   (every hop to its right parses and is trusted), or the peer when a hop does not
//!   parse or every hop is trusted: never an address the chain's untrusted part made up
//!   past the first untrusted hop.
//!
//! Input: byte 0 picks the peer (trusted or not, IPv4 or IPv6, IPv4-mapped), the rest is
//! the header's text (inputs with bytes a header's text cannot hold are skipped).
#![no_main]

use std::net::IpAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mailslot::edge::forwarded_for;
use mailslot::edge::cidr::parse_cidr;
use mailslot::edge::shield::{Limits, Shield};

const PEERS: &[&str] = &[
    "10.1.2.3",
    "192.0.2.7",
    "2001:db8::1",
    "2001:db9::1",
    "::ffff:10.1.2.3",
    "127.0.0.1",
    "::1",
    "0.0.0.0",
];

fn shield() -> &'static Shield {
    static SHIELD: OnceLock<Shield> = OnceLock::new();
    SHIELD.get_or_init(|| {
        let trusted = ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"]
            .iter()
            .map(|c| parse_cidr(c).expect("valid"))
            .collect();
        Shield::new(Limits::default(), Vec::new(), Vec::new(), trusted)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let peer: IpAddr = PEERS[usize::from(pick) % PEERS.len()]
        .parse()
        .expect("valid");
    // What `HeaderValue::to_str` lets through, as the edge reads the header.
    if !rest
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return;
    }
    let xff = String::from_utf8_lossy(rest);
    let shield = shield();
    let trusted = shield.is_trusted(peer);

    // What the origin sees.
    let sent = forwarded_for(peer, Some(&*xff).filter(|_| trusted));
    let sent = sent.to_str().expect("visible ASCII");
    let own = peer.to_string();
    assert!(
        sent == own || sent.ends_with(&format!(", {own}")),
        "{sent:?}"
    );
    if !trusted {
        assert_eq!(sent, own, "an untrusted peer's chain was forwarded");
    }

    // Who the edge thinks the client is.
    let client = shield.client_ip(peer, Some(&xff));
    if !trusted {
        assert_eq!(client, peer);
        return;
    }
    let mut expected = peer;
    for hop in xff.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if shield.is_trusted(ip) => continue,
            Ok(ip) => expected = ip,
            Err(_) => {}
        }
        break;
    }
    assert_eq!(client, expected, "{xff:?} from {peer}");
});
