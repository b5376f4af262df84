//! Crash restarts: an edge or a connector SIGKILLed (OOM, power, `kill -9`) with no
//! goodbye, and started again by its supervisor, or not.
//!
//! Each scenario measures first and asserts last, so that a run where the goal is
//! missed still prints every figure.

use std::thread;
use std::time::{Duration, Instant};

use crate::scene::*;

/// The longest a connector may keep using connections to an edge process that no
/// longer exists: until its flow keeper's next QUIC ping earns a stateless reset, one
/// `idle-timeout` less one `keepalive` at the defaults (45 s - 15 s; the NAT keep-alives
/// in between are one byte, which no edge answers).
const KEEPALIVE: Duration = Duration::from_secs(30);
/// The longest a visitor of a tunnel without an answering connection may wait for the
/// edge's 502/503: the silence window and then some.
const CLEAR_ANSWER: Duration = Duration::from_secs(5);
/// How soon after a restarted connector registers the edges must have dropped the
/// killed process's connections ("at once", with room for a loaded machine).
const SUPERSEDE: Duration = Duration::from_secs(3);
/// How long a visitor is let wait, so that a missed goal is measured, not cut short.
const VISITOR_MAX_TIME: u32 = 60;

/// Edge 1 is SIGKILLed and its supervisor starts it again at once on the same address.
/// Returns the time from its listening again to serving through it. Requests go to
/// edge 1's own HTTP listener, which reaches the device only over connections to
/// edge 1 (edges here do not forward to each other): they succeed only once the
/// connector has left its dead connections and dialed the new process.
pub fn edge_crash_restarted() -> Duration {
    let mut s = Scene::new();
    s.connect(Device::default());
    assert_eq!(s.get(0, "/", 5), Ok(200));
    let mut e1 = s.edges[0].take().expect("edge 1 runs");
    e1.signal(9);
    e1.wait_exit(Duration::from_secs(5)).expect("edge 1 exits");
    drop(e1);
    s.start_edge(0);
    let listening = Instant::now();
    let t = s
        .wait_serving(0, Duration::from_secs(90))
        .map(|_| listening.elapsed())
        .unwrap_or_else(|| {
            panic!(
                "not serving via the restarted edge 1 within 90 s; connector log:\n{}",
                s.connector().dump()
            )
        });
    // The other edge served throughout, and still does.
    assert_eq!(s.get(1, "/", 5), Ok(200));
    t
}

/// The connector learns that its connections are gone from the stateless reset that
/// answers its next QUIC packet, which its flow keeper's ping sends at most
/// [`KEEPALIVE`] after the last one before the kill, and pokes the siblings; then it
/// dials again (a quick retry and a handshake).
const RECONNECT: Duration = Duration::from_secs(3);

pub fn a_sigkilled_edge_restarted_serves_again_by_the_keepers_next_ping() {
    let t = edge_crash_restarted();
    eprintln!(
        "measured: serving through an edge SIGKILLed and restarted {:.2}s after it listened \
         again (goal: at most one ping of the flow keeper, {}s, and a reconnection)",
        t.as_secs_f32(),
        KEEPALIVE.as_secs()
    );
    assert!(t <= KEEPALIVE + RECONNECT, "took {t:?}");
}

/// A visitor's answer and how long it took.
type Visit = (Duration, Result<u16, String>);

/// One GET through each edge, at the same time.
fn visit_both(s: &Scene) -> [Visit; 2] {
    let [a, b] = [0, 1].map(|i| {
        let visitor = s.net.visitor.clone();
        thread::spawn(move || {
            let t = Instant::now();
            let r = get_in_names(&visitor, i, "/", VISITOR_MAX_TIME);
            (t.elapsed(), r)
        })
    });
    [
        a.join().expect("visitor thread"),
        b.join().expect("visitor thread"),
    ]
}

/// Asserts that both visits got a clear answer within [`CLEAR_ANSWER`]: 502/503 while
/// the tunnel is listed, 404 ("no tunnel serves ...") once it has gone.
fn assert_clear_answers(visits: &[Visit; 2], context: &str) {
    for (i, (t, r)) in visits.iter().enumerate() {
        assert!(
            matches!(r, Ok(404 | 502 | 503)),
            "{context}: a visitor via e{} got {r:?} after {t:?}, not 404/502/503",
            i + 1
        );
        assert!(
            *t <= CLEAR_ANSWER,
            "{context}: a visitor via e{} waited {t:?} for its {r:?}",
            i + 1
        );
    }
}

fn show(visits: &[Visit; 2]) -> String {
    visits
        .iter()
        .enumerate()
        .map(|(i, (t, r))| format!("via e{}: {r:?} after {:.2}s", i + 1, t.as_secs_f32()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a connector's crash, restart and clean stop cost.
pub struct ConnectorCrash {
    /// From the restarted connector's fourth registration to both edges listing only
    /// its connections; `None`: not within [`SUPERSEDE`].
    pub superseded: Option<Duration>,
    /// What the edges listed then.
    pub listed: [Vec<String>; 2],
    /// The first visitors after the restarted connector's clean stop.
    pub after_stop: [Visit; 2],
}

/// The connector is SIGKILLed, its supervisor starts it again (same config, same
/// token, same device), and then it is stopped cleanly (SIGTERM).
pub fn connector_crash_restarted() -> ConnectorCrash {
    let mut s = Scene::new();
    s.connect(Device::default());
    for i in [0, 1] {
        assert_eq!(s.get(i, "/", 5), Ok(200));
        let lines = s.tunnel_lines(i);
        assert_eq!(lines.len(), 2, "e{}: {lines:?}", i + 1);
    }
    let mut killed = s.connector.take().expect("connector runs");
    killed.signal(9);
    killed
        .wait_exit(Duration::from_secs(5))
        .expect("the connector exits");
    drop(killed);
    // The supervisor starts it again; its four connections register, two per edge.
    s.connect(Device::default());
    let registered = Instant::now();
    // Then each edge must list these two only: the killed process's are gone.
    let mut superseded = None;
    let mut listed = [Vec::new(), Vec::new()];
    while registered.elapsed() <= SUPERSEDE {
        listed = [s.tunnel_lines(0), s.tunnel_lines(1)];
        if listed.iter().all(|l| l.len() == 2) {
            superseded = Some(registered.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    for i in [0, 1] {
        assert_eq!(s.get(i, "/", 5), Ok(200));
    }
    let mut c = s.connector.take().expect("connector runs");
    c.signal(15);
    let st = c
        .wait_exit(Duration::from_secs(35))
        .expect("exits within the grace period");
    assert_eq!(st.code(), Some(0), "{}", c.dump());
    let after_stop = visit_both(&s);
    ConnectorCrash {
        superseded,
        listed,
        after_stop,
    }
}

pub fn a_sigkilled_connector_restarted_supersedes_its_dead_connections() {
    let r = connector_crash_restarted();
    eprintln!(
        "measured: connector SIGKILLed and restarted: its dead connections gone {} after the \
         new process registered; after its clean stop: {}",
        r.superseded.map_or_else(
            || format!("not within {}s", SUPERSEDE.as_secs()),
            |t| format!("{:.2}s", t.as_secs_f32())
        ),
        show(&r.after_stop)
    );
    assert!(
        r.superseded.is_some(),
        "{SUPERSEDE:?} after the restarted connector registered, the edges still list more \
         than its two connections each:\ne1:\n{}\ne2:\n{}",
        r.listed[0].join("\n"),
        r.listed[1].join("\n")
    );
    assert_clear_answers(&r.after_stop, "after the restarted connector's clean stop");
}

/// The connector is SIGKILLed and nothing starts it again; the first visitors after.
pub fn connector_killed() -> [Visit; 2] {
    let mut s = Scene::new();
    s.connect(Device::default());
    for i in [0, 1] {
        assert_eq!(s.get(i, "/", 5), Ok(200));
    }
    let mut killed = s.connector.take().expect("connector runs");
    killed.signal(9);
    killed
        .wait_exit(Duration::from_secs(5))
        .expect("the connector exits");
    drop(killed);
    visit_both(&s)
}

pub fn a_sigkilled_connector_not_restarted_gets_visitors_a_quick_502() {
    let visits = connector_killed();
    eprintln!(
        "measured: first visitors after the only connector was SIGKILLed: {}",
        show(&visits)
    );
    assert_clear_answers(&visits, "after the connector's SIGKILL");
}

/// Edge 1, which holds a metered device's one connection (HTTP/2 over TCP), is
/// SIGKILLed and started again at once: the kernel closed the dead process's TCP
/// connection, so the connector knew at once and its quick retries (every ≤ 300 ms)
/// find the new process: bound [`METERED_RECONNECT`] from its listening, far below the
/// QUIC keeper's ping of the default profile.
pub fn a_sigkilled_edge_restarted_serves_a_metered_device_again_at_once() {
    let mut s = Scene::new();
    s.connect_metered();
    assert_eq!(s.get(0, "/", 5), Ok(200));
    let mut e1 = s.edges[0].take().expect("edge 1 runs");
    e1.signal(9);
    e1.wait_exit(Duration::from_secs(5)).expect("edge 1 exits");
    drop(e1);
    s.start_edge(0);
    let listening = Instant::now();
    let t = s
        .wait_serving(0, Duration::from_secs(90))
        .map(|_| listening.elapsed())
        .unwrap_or_else(|| panic!("not serving via e1:\n{}", s.connector().dump()));
    eprintln!(
        "measured: metered: serving through an edge SIGKILLed and restarted {:.2}s after it \
         listened again (bound {}s)",
        t.as_secs_f32(),
        METERED_RECONNECT.as_secs()
    );
    assert!(t <= METERED_RECONNECT, "took {t:?}");
}
