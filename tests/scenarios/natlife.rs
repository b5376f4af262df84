//! A metered device learns how long its carrier NAT keeps an idle TCP mapping (see
//! `connector::natlife`): the NAT namespace's conntrack forgets established TCP
//! connections after [`NAT_SECS`] of silence; the device's keep-alive must come out
//! below that, and a visitor arriving after a longer idle period is served at once.
//! With the kernel's default (5 days) the keep-alive grows to its cap.
//!
//! The learner's durations are divided by [`SCALE`] (`MAILSLOT_TEST_NAT_PROBE_SCALE`,
//! read by the connector only): a first probe of 3.75 s instead of 75 s, a cap of 45 s
//! instead of 900 s. The whole scenario takes about 4 minutes.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::idle::{install_counters, read_counters};
use crate::netns::*;
use crate::scene::*;

/// The test scale of the learner's durations.
const SCALE: u32 = 20;
/// How long the NAT keeps an idle established TCP mapping in the first part, seconds.
const NAT_SECS: u64 = 15;
/// The kernel's default for it (5 days).
const DEFAULT_NAT_SECS: u64 = 432_000;
/// The cap of the learnt keep-alive at [`SCALE`]: 900 s / 20.
const CAP: Duration = Duration::from_secs(45);
/// How long learning may take at [`SCALE`] (probes of 3.75, 7.5, 15, 30 and 60 s).
const LEARN_WITHIN: Duration = Duration::from_secs(240);

/// A metered connector (one HTTP/2 connection) with the learner's durations scaled.
fn spawn_metered(s: &Scene, name: &str) -> Proc {
    let yaml = format!(
        "tunnel: dev42\ntoken: {}\nedge: [\"{}:7844\", \"{}:7844\"]\nedge-ca: {}\n\
         metered: true\ningress:\n  - hostname: {HOST}\n    service: http://127.0.0.1:8080\n  \
         - service: http_status:404\n",
        s.token,
        EDGE_IPS[0],
        EDGE_IPS[1],
        s.edge_dir.path().join("ca.pem").display(),
    );
    let bin = compile(s.dev_dir.path(), &yaml);
    let mut cmd: Command = s.net.cmd(&s.net.device, MAILSLOT);
    cmd.env("MAILSLOT_TEST_NAT_PROBE_SCALE", SCALE.to_string())
        .arg("run")
        .arg("--config")
        .arg(&bin);
    Proc::spawn(name, &mut cmd)
}

fn set_nat_timeout(net: &Net, secs: u64) {
    net.sh(
        &net.nat,
        &format!("sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established={secs}"),
    );
    assert_eq!(
        net.sh(
            &net.nat,
            "cat /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"
        )
        .trim(),
        secs.to_string(),
        "the NAT namespace has a conntrack timeout of its own"
    );
}

/// A duration as the connector logs it (`9.8s`, `45s`, `-`).
fn parse_secs(word: &str) -> Option<Duration> {
    let n = word.trim_end_matches(':').strip_suffix('s')?;
    n.parse::<f64>().ok().map(Duration::from_secs_f64)
}

/// What a `NAT learnt:` line says: survived, died (if any), keep-alive.
fn learnt(line: &str) -> (Option<Duration>, Option<Duration>, Duration) {
    let after = |key: &str| {
        line.split(key)
            .nth(1)
            .and_then(|r| r.split([',', ' ']).find(|w| !w.is_empty()))
            .unwrap_or_else(|| panic!("no {key:?} in {line:?}"))
            .to_string()
    };
    let keepalive = parse_secs(&after("keep-alive ")).expect("a keep-alive");
    (
        parse_secs(&after("survives ")),
        parse_secs(&after("dies ")),
        keepalive,
    )
}

/// Bytes at the NAT since the counters were last zeroed: (up, down, packets).
fn nat_bytes(net: &Net) -> (u64, u64, u64) {
    let (up, down) = read_counters(net);
    (up.total.1, down.total.1, up.total.0 + down.total.0)
}

fn zero_counters(net: &Net) {
    net.sh(&net.nat, "iptables -Z MSIDLE");
}

pub fn a_metered_device_learns_the_nats_mapping_lifetime() {
    let s = Scene::new();
    install_counters(&s.net);
    set_nat_timeout(&s.net, NAT_SECS);

    // A NAT that forgets idle TCP mappings after 15 s.
    let c = spawn_metered(&s, "metered");
    c.wait_line("registered");
    assert_eq!(s.get(0, "/", 10), Ok(200), "{}", c.dump());
    zero_counters(&s.net);
    let start = Instant::now();
    let line = c
        .wait_line_within("NAT learnt: ", LEARN_WITHIN)
        .unwrap_or_else(|| panic!("nothing learnt; log:\n{}", c.dump()));
    let took = start.elapsed();
    let (up, down, packets) = nat_bytes(&s.net);
    let (survived, died, keepalive) = learnt(&line);
    eprintln!(
        "measured: NAT keeps {NAT_SECS}s (scale {SCALE}): learnt in {:.0}s: survived {survived:?}, \
         died {died:?}, keep-alive {keepalive:?}; {} probes; at the NAT {up} B up, {down} B \
         down, {packets} packets",
        took.as_secs_f32(),
        c.count("NAT probe of") + 1,
    );
    let nat = Duration::from_secs(NAT_SECS);
    // A probe of exactly the NAT's timeout may go either way (the mapping's last packet
    // and the edge's answer race); well past it, none is answered.
    assert!(died.is_some(), "no probe went unanswered: {line}");
    assert!(
        survived.is_some_and(|d| d <= nat + Duration::from_secs(1)),
        "a probe past the NAT's timeout was answered: {line}"
    );
    assert!(
        keepalive < nat,
        "keep-alive {keepalive:?} outlives the NAT's {nat:?}"
    );
    assert!(
        keepalive >= nat / 2,
        "keep-alive {keepalive:?}: needlessly short"
    );

    // A visitor after an idle period longer than the NAT keeps a mapping.
    zero_counters(&s.net);
    thread::sleep(nat * 2);
    let t = Instant::now();
    let r = s.get(0, "/", 10);
    let waited = t.elapsed();
    let (up, down, packets) = nat_bytes(&s.net);
    eprintln!(
        "measured: after {}s idle a visitor waited {:.3}s ({r:?}); idle cost at the NAT {up} B \
         up, {down} B down, {packets} packets",
        NAT_SECS * 2,
        waited.as_secs_f32()
    );
    assert_eq!(r, Ok(200), "{}", c.dump());
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    assert_eq!(c.count("lost edge"), 0, "{}", c.dump());
    drop(c);

    // The kernel's default: mappings last days, the keep-alive grows to its cap.
    set_nat_timeout(&s.net, DEFAULT_NAT_SECS);
    zero_counters(&s.net);
    let c = spawn_metered(&s, "metered-2");
    c.wait_line("registered");
    let start = Instant::now();
    let line = c
        .wait_line_within("NAT learnt: ", LEARN_WITHIN)
        .unwrap_or_else(|| panic!("nothing learnt; log:\n{}", c.dump()));
    let (up, down, packets) = nat_bytes(&s.net);
    let (survived, died, keepalive) = learnt(&line);
    eprintln!(
        "measured: NAT keeps {DEFAULT_NAT_SECS}s (scale {SCALE}): learnt in {:.0}s: survived \
         {survived:?}, died {died:?}, keep-alive {keepalive:?}; {} probes; at the NAT {up} B up, \
         {down} B down, {packets} packets (registration included)",
        start.elapsed().as_secs_f32(),
        c.count("NAT probe of") + 1,
    );
    assert_eq!(died, None, "{line}");
    assert_eq!(keepalive, CAP, "{line}");
    assert_eq!(s.get(0, "/", 10), Ok(200), "{}", c.dump());
}
