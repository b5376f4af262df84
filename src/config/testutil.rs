//! Configs for tests: a sample, one at every capacity, and a proptest strategy that
//! generates valid configs.

use std::net::{Ipv4Addr, Ipv6Addr};

use heapless::{String, Vec};
use proptest::prelude::*;

use super::*;

fn s<const N: usize>(v: &str) -> String<N> {
    String::try_from(v).unwrap()
}

/// A DER-shaped blob of `len` bytes (SEQUENCE header included) whose content starts
/// with `tag`, so blobs with different tags differ.
pub(crate) fn fake_der(len: usize, tag: u8) -> Vec<u8, MAX_CERT_LEN> {
    assert!((260..=MAX_CERT_LEN).contains(&len));
    let content = len - 4;
    let mut der = Vec::new();
    der.extend_from_slice(&[0x30, 0x82, (content >> 8) as u8, content as u8])
        .unwrap();
    der.push(tag).unwrap();
    while der.len() < len {
        der.push((der.len() % 251) as u8).unwrap();
    }
    der
}

fn rule(hostname: Option<&str>, path: Option<&str>, service: Service) -> IngressRule {
    IngressRule {
        hostname: hostname.map(s),
        path: path.map(s),
        service,
        origin: OriginOptions::default(),
    }
}

/// The example from the docs, with an embedded edge CA and a 300-byte token.
/// Boxed, like every config here: ~100 KiB is too much for a test thread's stack.
pub(crate) fn sample_config() -> Box<DeviceConfig> {
    let mut c = DeviceConfig::blank();
    c.cas.push(fake_der(300, 1)).unwrap();
    let http = |port| Service::Http {
        host: s("localhost"),
        port,
        tls: false,
    };
    c.ingress
        .push(rule(Some("dev42.example.com"), None, http(8080)))
        .unwrap();
    c.ingress
        .push(rule(
            Some("api.dev42.example.com"),
            Some("^/v1/"),
            http(9000),
        ))
        .unwrap();
    let mut secure = rule(
        Some("secure.dev42.example.com"),
        None,
        Service::Http {
            host: s("localhost"),
            port: 8443,
            tls: true,
        },
    );
    secure.origin.no_tls_verify = true;
    c.ingress.push(secure).unwrap();
    let ssh = Service::Stream {
        kind: StreamKind::Ssh,
        host: s("localhost"),
        port: 22,
    };
    c.ingress
        .push(rule(Some("ssh.dev42.example.com"), None, ssh))
        .unwrap();
    c.ingress
        .push(rule(None, None, Service::HttpStatus(404)))
        .unwrap();
    c.edges.push(s("edge.example.com:7844")).unwrap();
    c.tunnel = s("dev42");
    c.token = s(&"t0kEn-_.".repeat(38)[..300]);
    c.edge_ca = Some(0);
    c.protocol = Protocol::Auto;
    c.ha_connections = DEFAULT_HA_CONNECTIONS;
    c.keepalive_secs = DEFAULT_KEEPALIVE_SECS;
    c.idle_timeout_secs = DEFAULT_IDLE_TIMEOUT_SECS;
    c.grace_period_secs = DEFAULT_GRACE_PERIOD_SECS;
    c
}

/// A 253-byte DNS name whose first label starts with `tag`.
fn long_name(tag: char) -> std::string::String {
    let mut name = format!("{tag}{}", "a".repeat(62));
    name.push('.');
    name.push_str(&"b".repeat(63));
    name.push('.');
    name.push_str(&"c".repeat(63));
    name.push('.');
    name.push_str(&"d".repeat(61));
    assert_eq!(name.len(), MAX_HOSTNAME_LEN);
    name
}

/// Every string and list at its capacity: the largest file there can be.
pub(crate) fn max_config() -> Box<DeviceConfig> {
    let mut config = sample_config();
    config.tunnel = s(&"n".repeat(MAX_TUNNEL_NAME_LEN));
    config.token = s(&"k".repeat(MAX_TOKEN_LEN));
    config.edges.clear();
    for i in 0..MAX_EDGES {
        let addr = format!("{i}{}:65535", &long_name('e')[1..]);
        config.edges.push(s(&addr)).unwrap();
    }
    config.cas.clear();
    for i in 0..MAX_CAS {
        config.cas.push(fake_der(MAX_CERT_LEN, i as u8)).unwrap();
    }
    config.edge_ca = Some(0);
    for i in 0..MAX_EDGE_PINS {
        config.edge_pins.push([i as u8 ^ 0xa5; 32]).unwrap();
    }
    config.metered = true;
    config.data_cap = Some(super::MAX_DATA_CAP);
    config.essential = u64::MAX;
    config.ingress.clear();
    for i in 0..MAX_RULES {
        let host = long_name('h');
        let mut r = rule(
            (i + 1 < MAX_RULES).then_some(host.as_str()),
            (i + 1 < MAX_RULES).then_some("p".repeat(MAX_PATH_LEN).as_str()),
            Service::Http {
                host: s(&host),
                port: 65535,
                tls: true,
            },
        );
        r.origin.http_host_header = Some(s(&host));
        r.origin.origin_server_name = Some(s(&host));
        r.origin.connect_timeout_ms = u32::MAX;
        r.origin.ca_pool = Some(((i + 1) % MAX_CAS) as u8);
        config.ingress.push(r).unwrap();
    }
    config
}

/// A DNS name; its last label is not all digits (only an IPv4 address ends so).
fn arb_dns() -> impl Strategy<Value = std::string::String> {
    "([a-z0-9]{1,10}\\.){0,3}[a-z]([a-z0-9-]{0,8}[a-z0-9])?"
}

fn arb_host() -> impl Strategy<Value = Hostname> {
    prop_oneof![
        "[a-z0-9_]{1,10}(\\.[a-z0-9]{1,10}){0,2}",
        any::<Ipv4Addr>().prop_map(|a| a.to_string()),
        any::<Ipv6Addr>().prop_map(|a| a.to_string()),
    ]
    .prop_map(|h| s(&h))
}

fn arb_edge() -> impl Strategy<Value = String<MAX_EDGE_ADDR_LEN>> {
    prop_oneof![
        (arb_dns(), 1..=u16::MAX).prop_map(|(h, p)| format!("{h}:{p}")),
        (any::<Ipv4Addr>(), 1..=u16::MAX).prop_map(|(h, p)| format!("{h}:{p}")),
        (any::<Ipv6Addr>(), 1..=u16::MAX).prop_map(|(h, p)| format!("[{h}]:{p}")),
    ]
    .prop_map(|e| s(&e))
}

fn arb_service() -> impl Strategy<Value = Service> {
    let kind = prop_oneof![
        Just(StreamKind::Tcp),
        Just(StreamKind::Ssh),
        Just(StreamKind::Rdp)
    ];
    prop_oneof![
        (arb_host(), 1..=u16::MAX, any::<bool>()).prop_map(|(host, port, tls)| Service::Http {
            host,
            port,
            tls
        }),
        ("/[a-zA-Z0-9/._ -]{1,60}", any::<bool>())
            .prop_map(|(p, tls)| Service::Unix { path: s(&p), tls }),
        (kind, arb_host(), 1..=u16::MAX).prop_map(|(kind, host, port)| Service::Stream {
            kind,
            host,
            port
        }),
        (100u16..=599).prop_map(Service::HttpStatus),
        "/[a-zA-Z0-9/._ -]{1,60}".prop_map(|p| Service::UnixStream { path: s(&p) }),
    ]
}

/// A rule, with `ca_pool` holding a CA *slot* 0..MAX_CAS that `arb_config` maps to an
/// index in first-use order.
fn arb_rule() -> impl Strategy<Value = IngressRule> {
    let hostname =
        prop::option::of(("(\\*\\.)?", arb_dns()).prop_map(|(w, d)| s(&format!("{w}{d}"))));
    // Paths must be valid regexes (the YAML round trip compiles them) and exercise
    // YAML quoting: spaces, '#', ':', quotes, backslashes.
    let path = prop::option::of(
        "\\^?/[a-z0-9/_ #:'\"-]{0,20}(\\\\\\.[a-z]{1,4})?\\$?".prop_map(|p| s(&p)),
    );
    let origin = (
        any::<bool>(),
        prop::option::of("[a-z0-9.:-]{1,30}".prop_map(|h| s(&h))),
        prop::option::of(arb_host()),
        1..=u32::MAX,
        prop::option::of(0..MAX_CAS as u8),
    )
        .prop_map(
            |(no_tls_verify, http_host_header, origin_server_name, connect_timeout_ms, ca_pool)| {
                OriginOptions {
                    no_tls_verify,
                    http_host_header,
                    origin_server_name,
                    connect_timeout_ms,
                    ca_pool,
                }
            },
        );
    (hostname, path, arb_service(), origin).prop_map(|(hostname, path, service, origin)| {
        IngressRule {
            hostname,
            path,
            service,
            origin,
        }
    })
}

/// Valid configs, with every field varied.
pub(crate) fn arb_config() -> impl Strategy<Value = Box<DeviceConfig>> {
    let protocol = prop_oneof![
        Just(Protocol::Auto),
        Just(Protocol::Quic),
        Just(Protocol::Http2)
    ];
    let head = (
        "\\PC{1,15}",
        "[!-~]{1,400}",
        prop::collection::vec(arb_edge(), 1..=MAX_EDGES),
        prop::option::of(0..MAX_CAS as u8),
        protocol,
        1..=MAX_HA_CONNECTIONS,
        (1u16..1000, any::<u16>(), any::<u16>()),
    );
    let rules = (
        prop::collection::vec(arb_rule(), 0..8),
        arb_service(),
        any::<bool>(),
        prop::collection::vec(any::<[u8; 32]>(), 0..=MAX_EDGE_PINS),
        prop::option::of(1..=super::MAX_DATA_CAP),
        any::<u64>(),
    );
    (head, rules).prop_map(|(head, rules)| {
        let (tunnel, token, edge_list, edge_slot, protocol, ha, (keepalive, idle_extra, grace)) =
            head;
        let (mut rule_list, last_service, seed, pins, data_cap, essential) = rules;
        let mut last = rule(None, None, last_service);
        last.origin.no_tls_verify = seed;
        rule_list.push(last);
        // Rules with neither hostname nor path before the last are catch-alls: give them one.
        let n = rule_list.len();
        for r in &mut rule_list[..n - 1] {
            if r.hostname.is_none() && r.path.is_none() {
                r.path = Some(s("/"));
            }
        }
        // Map CA slots to indexes in first-use order.
        let mut slots: std::vec::Vec<u8> = std::vec::Vec::new();
        let mut index_of = |slot: u8| -> u8 {
            match slots.iter().position(|&x| x == slot) {
                Some(i) => i as u8,
                None => {
                    slots.push(slot);
                    (slots.len() - 1) as u8
                }
            }
        };
        let edge_ca = edge_slot.map(&mut index_of);
        for r in &mut rule_list {
            r.origin.ca_pool = r.origin.ca_pool.map(&mut index_of);
        }
        let mut c = DeviceConfig::blank();
        for slot in slots {
            c.cas
                .push(fake_der(260 + usize::from(slot) * 7, slot))
                .unwrap();
        }
        for e in edge_list {
            c.edges.push(e).unwrap();
        }
        for r in rule_list {
            c.ingress.push(r).unwrap();
        }
        c.tunnel = s(&tunnel);
        c.token = s(&token);
        c.edge_ca = edge_ca;
        c.protocol = protocol;
        c.ha_connections = ha;
        c.keepalive_secs = keepalive;
        c.idle_timeout_secs = keepalive
            .saturating_add(1)
            .max(keepalive.saturating_add(idle_extra % 5000));
        c.grace_period_secs = grace;
        for p in pins {
            c.edge_pins.push(p).unwrap();
        }
        c.data_cap = data_cap;
        c.essential = essential & (u64::MAX >> (64 - c.ingress.len()));
        c
    })
}

#[test]
fn samples_are_valid() {
    sample_config().validate().unwrap();
    max_config().validate().unwrap();
}

/// A fresh folder under the system temp folder, removed on drop.
pub(crate) struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "mailslot-test-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn debug_masks_token() {
    let config = sample_config();
    let debug = format!("{config:?}");
    assert!(!debug.contains("t0kEn"), "{debug}");
    assert!(debug.contains("token: <masked, 300 bytes>"), "{debug}");
}
