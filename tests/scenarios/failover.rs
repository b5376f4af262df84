//! Edges and replicas that go away: an edge killed, restarted, down for long; a
//! replica killed while visitors use the tunnel.

use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::scene::*;

/// SIGKILL one edge while visitors use the other; the last failure after the kill
/// (`None`: none failed).
pub fn edge_killed() -> Option<Duration> {
    let mut s = Scene::new();
    s.connect(Device::default());
    let load = Load::start(&s, &[1], 3);
    thread::sleep(Duration::from_secs(2));
    let killed_at = load.start.elapsed();
    let mut e1 = s.edges[0].take().unwrap();
    e1.signal(9);
    e1.wait_exit(Duration::from_secs(5)).expect("edge 1 exits");
    thread::sleep(Duration::from_secs(5));
    let results = load.finish();
    let after: Vec<_> = results.iter().filter(|(t, _, _)| *t >= killed_at).collect();
    assert!(after.len() >= 10, "too few requests: {}", after.len());
    after
        .iter()
        .filter(|(_, _, r)| *r != Ok(200))
        .map(|(t, _, _)| *t - killed_at)
        .max()
}

pub fn killing_one_edge_leaves_the_other_serving() {
    let last_failure = edge_killed();
    eprintln!("measured: last failed request via the other edge after the kill: {last_failure:?}");
    if let Some(t) = last_failure {
        assert!(
            t <= Duration::from_secs(1),
            "requests failed {t:?} after the kill"
        );
    }
}

/// Stops edge 1 (SIGTERM: it sends GoAway), keeps it down for `down`, starts it again;
/// the time from its listening again to serving through it.
pub fn edge_restarted(down: Duration) -> Duration {
    let mut s = Scene::new();
    s.connect(Device::default());
    let t = s.restart_edge(0, down);
    assert_eq!(s.get(1, "/", 5), Ok(200));
    // The quick retries while the edge was down were many; the log has one line each
    // for its two slots (slots 0 and 2 are on edge 1).
    let c = s.connector();
    for slot in [0, 2] {
        let lines = retry_lines(c, slot);
        assert_eq!(
            lines,
            1,
            "connection {slot}: {lines} retry lines\n{}",
            c.dump()
        );
    }
    // UDP was never blocked: the quick retries' short QUIC wait must not claim it was.
    assert_eq!(c.count("seems blocked"), 0, "{}", c.dump());
    t
}

pub fn a_restarted_edge_serves_again_within_2s() {
    let t = edge_restarted(Duration::from_secs(6));
    eprintln!(
        "measured: serving through a restarted edge {:.2}s after it listens",
        t.as_secs_f32()
    );
    assert!(t <= Duration::from_secs(2), "took {t:?}");
}

/// What a replica's death cost the visitors.
pub struct ReplicaKill {
    /// GETs started after the kill, and the slowest of them.
    gets: usize,
    pub slowest_get: Duration,
    /// POSTs sent just after the kill, and how many the edge answered 502 without the
    /// origin ever seeing them (they hit a dead connection and were not replayed).
    posts: usize,
    posts_refused: usize,
    /// Requests the edges moved to another connection.
    retried: usize,
}

/// Two connectors share the token (replicas); one is SIGKILLed: no goodbye, and over
/// QUIC the edges hear nothing from its connections until their idle timeout. GETs
/// through edge 1 (keep-alive pooled streams and new ones alternately) must all succeed,
/// retried on the replica that lives; POSTs through edge 2 that hit a dead connection
/// must not be replayed.
pub fn replica_killed(protocol: &'static str) -> ReplicaKill {
    let mut s = Scene::new();
    // A short idle timeout bounds how long a POST on a dead connection waits.
    let device = Device {
        extra_yaml: "keepalive: 3s\nidle-timeout: 10s\n",
        protocol: Some(protocol),
        ..Device::default()
    };
    s.connect(device);
    s.connect_replica(device);
    let over = format!("over {protocol}");
    assert_eq!(s.connector().count(&over), 4, "{}", s.connector().dump());
    // Each edge holds four connections (two per replica): two requests on each leave
    // an idle pooled stream everywhere.
    for i in [0, 1] {
        for _ in 0..8 {
            assert_eq!(s.get(i, "/", 5), Ok(200));
        }
    }
    let load = Load::start_paths(&s, &[0], &["/", "/?close"], 15);
    thread::sleep(Duration::from_secs(2));
    let killed_at = load.start.elapsed();
    let mut victim = s.connector.take().unwrap();
    victim.signal(9);
    victim
        .wait_exit(Duration::from_secs(5))
        .expect("replica exits");
    // Four POSTs at once through edge 2: round robin sends one to each of its four
    // connections, two of them dead.
    let posts: Vec<_> = (0..4)
        .map(|n| {
            let net_visitor = s.net.visitor.clone();
            let path = format!("/post/{n}");
            thread::spawn(move || {
                let r = post_names(&net_visitor, 1, &path, 30);
                (path, r)
            })
        })
        .collect();
    let posts: Vec<(String, Result<u16, String>)> =
        posts.into_iter().map(|t| t.join().unwrap()).collect();
    thread::sleep(Duration::from_secs(2));
    let results = load.finish();
    let after: Vec<_> = results.iter().filter(|(t, _, _)| *t >= killed_at).collect();
    assert!(
        after.len() >= 10,
        "too few GETs after the kill: {}",
        after.len()
    );
    let failed: Vec<_> = after.iter().filter(|(_, _, r)| *r != Ok(200)).collect();
    let edge_logs = || {
        s.edges
            .iter()
            .flatten()
            .map(|e| e.dump())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        failed.is_empty(),
        "{} of {} GETs after the kill failed: {failed:?}\nedges:\n{}",
        failed.len(),
        after.len(),
        edge_logs()
    );
    let mut refused = 0;
    for (path, r) in &posts {
        let seen = s.origin.count(&format!("\"POST {path} "));
        match r {
            Ok(200) => assert_eq!(seen, 1, "{path}: answered 200, origin saw it {seen} times"),
            other => {
                assert_eq!(
                    seen, 0,
                    "{path}: answered {other:?}, origin saw it {seen} times"
                );
                refused += 1;
            }
        }
    }
    let retried = s
        .edges
        .iter()
        .flatten()
        .map(|e| e.count("retrying on another"))
        .sum();
    // Requests run back to back: the longest gap between starts bounds the slowest.
    let slowest_get = after
        .windows(2)
        .map(|w| w[1].0.saturating_sub(w[0].0))
        .max()
        .unwrap_or_default();
    eprintln!("POSTs just after the kill: {posts:?}");
    ReplicaKill {
        gets: after.len(),
        slowest_get,
        posts: posts.len(),
        posts_refused: refused,
        retried,
    }
}

pub fn a_killed_replica_costs_no_get_and_replays_no_post_quic() {
    let r = replica_killed("quic");
    eprintln!(
        "measured (QUIC): {} GETs after SIGKILL of one replica, none failed, slowest {:.2}s; \
         {} retried on another connection; {} of {} POSTs hit a dead connection: 502, not replayed",
        r.gets,
        r.slowest_get.as_secs_f32(),
        r.retried,
        r.posts_refused,
        r.posts
    );
    assert!(r.retried >= 1, "no GET hit a dead connection");
    assert!(r.posts_refused >= 1, "no POST hit a dead connection");
}

pub fn a_killed_replica_costs_no_get_and_replays_no_post_http2() {
    let r = replica_killed("http2");
    eprintln!(
        "measured (HTTP/2): {} GETs after SIGKILL of one replica, none failed, slowest {:.2}s; \
         {} retried on another connection; {} of {} POSTs refused, none replayed",
        r.gets,
        r.slowest_get.as_secs_f32(),
        r.retried,
        r.posts_refused,
        r.posts
    );
}

/// Edge 1 is SIGKILLed and stays down: after the quick-retry window its two slots
/// connect to edge 2, so the tunnel keeps four connections; once edge 1 is back they
/// move back to it. Returns (kill to both slots on edge 2, edge 1 listening to both
/// back on it).
pub fn edge_down_for_long() -> (Duration, Duration) {
    let mut s = Scene::new();
    // A short idle timeout: the connector notices the dead edge after 10 s, not 45 s.
    let device = Device {
        extra_yaml: "keepalive: 3s\nidle-timeout: 10s\n",
        ..Device::default()
    };
    s.connect(device);
    let mut e1 = s.edges[0].take().unwrap();
    e1.signal(9);
    e1.wait_exit(Duration::from_secs(5)).expect("edge 1 exits");
    let killed = Instant::now();
    let c = s.connector();
    let lent = c
        .wait_count("until it answers again", 2, Duration::from_secs(90))
        .map(|_| killed.elapsed())
        .unwrap_or_else(|| panic!("slots stayed on the dead edge:\n{}", c.dump()));
    assert_eq!(c.count("at edge e2"), 4, "{}", c.dump());
    assert_eq!(s.get(1, "/", 5), Ok(200));
    // Minutes of retries for two slots, a few lines: the loss with the quick window's
    // promise, maybe a backoff line, the move.
    for slot in [0, 2] {
        let lines = retry_lines(c, slot);
        assert!(
            lines <= 3,
            "connection {slot}: {lines} retry lines\n{}",
            c.dump()
        );
    }
    s.start_edge(0);
    let listening = Instant::now();
    let c = s.connector();
    let back = c
        .wait_count("moved back from edge", 2, Duration::from_secs(60))
        .map(|_| listening.elapsed())
        .unwrap_or_else(|| panic!("slots did not move back:\n{}", c.dump()));
    assert!(s.wait_serving(0, WAIT).is_some());
    assert_eq!(s.get(1, "/", 5), Ok(200));
    (lent, back)
}

pub fn slots_of_a_dead_edge_serve_through_the_live_one_until_it_returns() {
    let (lent, back) = edge_down_for_long();
    eprintln!(
        "measured: edge 1 killed: its slots on edge 2 after {:.1}s (idle timeout 10 s + \
         30 s of quick retries); back on edge 1 {:.1}s after it listened",
        lent.as_secs_f32(),
        back.as_secs_f32()
    );
    assert!(lent <= Duration::from_secs(60), "took {lent:?}");
    assert!(back <= Duration::from_secs(40), "took {back:?}");
}

/// An edge killed (no goodbye) and started again while the device sits idle: the flow's
/// keeper hears a stateless reset at its next QUIC ping (at most 30 s), and its quiet
/// siblings are poked at once rather than left on a dead connection until their own
/// rare keep-alive (20 minutes): both of the edge's connections are back within
/// seconds of the keeper's loss, and visitors are served through it.
pub fn a_killed_edge_gets_back_the_keeper_and_its_siblings() {
    let mut s = Scene::new();
    s.connect(Device::default());
    let mut e1 = s.edges[0].take().unwrap();
    e1.signal(9);
    e1.wait_exit(Duration::from_secs(5)).expect("edge 1 exits");
    drop(e1);
    s.start_edge(0);
    let started = Instant::now();
    let c = s.connector();
    // The keeper's loss (its next keep-alive is answered with a reset).
    c.wait_count("lost edge", 1, Duration::from_secs(45))
        .unwrap_or_else(|| panic!("the keeper did not notice the restart: {}", c.dump()));
    let lost = started.elapsed();
    // Both connections of edge 1 registered again: 4 at the start, 2 now.
    c.wait_count("registered", 6, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("not both connections back at e1: {}", c.dump()));
    let back = started.elapsed();
    eprintln!(
        "measured: keeper lost {:.1}s after the edge restarted, both connections back after \
         {:.1}s",
        lost.as_secs_f32(),
        back.as_secs_f32()
    );
    assert!(
        back - lost < Duration::from_secs(8),
        "the sibling came back {:?} after the keeper: {}",
        back - lost,
        c.dump()
    );
    let lines = s.tunnel_lines(0);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(s.get(0, "/", 5), Ok(200));
}

/// A metered device holds one connection (to edge 1). Edge 1 is SIGKILLed and stays
/// down: the kernel closes the dead process's TCP connections, so the connector knows
/// at once; its quick retries find nothing for 30 s, then it connects to edge 2 and
/// serves through it (bound: the 30 s quick-retry window and a reconnection). Once edge
/// 1 is back, the connection moves back (bound: a probe every 30 s and a reconnection,
/// as the default profile's slots).
pub fn a_metered_device_moves_to_the_live_edge_and_back() {
    let mut s = Scene::new();
    s.connect_metered();
    assert_eq!(s.get(0, "/", 5), Ok(200));
    let mut e1 = s.edges[0].take().unwrap();
    e1.signal(9);
    e1.wait_exit(Duration::from_secs(5)).expect("edge 1 exits");
    let killed = Instant::now();
    let moved = s
        .wait_serving(1, Duration::from_secs(90))
        .unwrap_or_else(|| panic!("never served via e2:\n{}", s.connector().dump()));
    let c = s.connector();
    assert!(c.dump().contains("at edge e2"), "{}", c.dump());
    s.start_edge(0);
    let listening = Instant::now();
    let c = s.connector();
    let back = c
        .wait_count("moved back from edge", 1, Duration::from_secs(60))
        .map(|_| listening.elapsed())
        .unwrap_or_else(|| panic!("did not move back:\n{}", c.dump()));
    assert!(s.wait_serving(0, WAIT).is_some());
    eprintln!(
        "measured: metered: serving via edge 2 {:.1}s after edge 1 was killed (bound 35 s); \
         back on edge 1 {:.1}s after it listened (bound 40 s); killed {:.1}s ago",
        moved.as_secs_f32(),
        back.as_secs_f32(),
        killed.elapsed().as_secs_f32()
    );
    assert!(moved <= Duration::from_secs(35), "took {moved:?}");
    assert!(back <= Duration::from_secs(40), "took {back:?}");
}
