//! Name resolution of the edges failing on the device.

use std::time::Duration;

use crate::common::*;
use crate::netns::*;
use crate::scene::*;

pub fn dns_failure_keeps_the_last_good_addresses() {
    let mut s = Scene::new();
    let dev = s.net.device.clone();
    let hosts = format!(
        "127.0.0.1 localhost\n{} {}\n{} {}\n",
        EDGE_IPS[0], EDGE_NAMES[0], EDGE_IPS[1], EDGE_NAMES[1]
    );
    // The device's own resolver: its hosts file, then a DNS server that is not there
    // (loopback, refused at once). Nothing leaves the namespaces.
    s.net.etc(&dev, "nsswitch.conf", "hosts: files dns\n");
    s.net.etc(
        &dev,
        "resolv.conf",
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    );
    s.net.etc(&dev, "hosts", &hosts);
    s.connect(Device {
        edge_names: true,
        ..Device::default()
    });
    // DNS fails from now on.
    s.net.etc(&dev, "hosts", "127.0.0.1 localhost\n");
    let lookup = s
        .net
        .sh_status(&dev, &format!("getent hosts {}", EDGE_NAMES[0]));
    assert!(!lookup.status.success(), "{} still resolves", EDGE_NAMES[0]);
    // Each connection attempt to edge 1 ends in one TCP SYN (QUIC gets no answer, the
    // HTTP/2 fallback is refused), and each attempt resolves the name first.
    s.net.sh(
        &dev,
        &format!(
            "iptables -A OUTPUT -p tcp -d {} --dport 7844 --syn",
            EDGE_IPS[0]
        ),
    );
    let t = s.restart_edge(0, Duration::from_secs(4));
    let counters = s.net.sh(&dev, "iptables -L OUTPUT -v -x -n");
    let attempts: u64 = counters
        .lines()
        .find(|l| l.contains(EDGE_IPS[0]) && l.contains("dpt:7844"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter:\n{counters}"));
    let c = s.connector();
    c.wait_count("registered: tunnel", 6, WAIT)
        .unwrap_or_else(|| panic!("edge 1's connections did not return:\n{}", c.dump()));
    let failed = format!("cannot resolve edge {}", EDGE_NAMES[0]);
    assert!(attempts >= 3, "only {attempts} attempts:\n{}", c.dump());
    assert_eq!(c.count(&failed), 1, "{}", c.dump());
    let line = c
        .dump()
        .lines()
        .find(|l| l.contains(&failed))
        .map(String::from)
        .unwrap_or_default();
    assert!(
        line.contains(&format!(
            "using its last known addresses ({}:7844)",
            EDGE_IPS[0]
        )),
        "{line}"
    );
    // DNS works again: said once too.
    s.net.etc(&dev, "hosts", &hosts);
    s.restart_edge(0, Duration::from_secs(1));
    let c = s.connector();
    let again = format!("edge {}:7844 resolves again", EDGE_NAMES[0]);
    c.wait_count(&again, 1, WAIT)
        .unwrap_or_else(|| panic!("no {again:?}:\n{}", c.dump()));
    assert_eq!(c.count(&again), 1, "{}", c.dump());
    assert_eq!(c.count("seems blocked"), 0, "{}", c.dump());
    eprintln!(
        "measured: DNS failing, {attempts} attempts to reach restarted edge 1 by its last \
         known address, serving {:.2}s after it listened; one log line: {line}",
        t.as_secs_f32()
    );
}
