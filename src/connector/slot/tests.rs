//! The slot policy driven with explicit instants: no sockets, no sleeps.

use super::*;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// Seeds for the jitter: each timing must hold whatever the draw.
fn seeds() -> impl Iterator<Item = u64> {
    (1..40u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn in_range(d: Duration, lo: Duration, hi: Duration) {
    assert!(d >= lo && d <= hi, "{d:?} not in [{lo:?}, {hi:?}]");
}

/// One attempt at `now` to the slot's own entry that fails with `end`.
fn fail(s: &mut Slot, now: Instant, end: End) -> (Duration, Say) {
    s.attempt(now).expect("no wait pending");
    match s.ended(now, end, &[]) {
        Next::Wait { delay, say } => (delay, say),
        other => panic!("expected a wait, got {other:?}"),
    }
}

/// An attempt at `at` that registers at the slot's own entry and is lost at `lost`.
fn up_then_lost(s: &mut Slot, at: Instant, lost: Instant) -> (Duration, Say) {
    s.attempt(at).expect("no wait pending");
    assert_eq!(s.registered(at, s.home()), None);
    match s.ended(lost, End::Failed, &[]) {
        Next::Wait { delay, say } => (delay, say),
        other => panic!("expected a wait, got {other:?}"),
    }
}

#[test]
fn jitter_draws_from_the_upper_half() {
    let mut rng = Rng::new(7);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let d = rng.jitter(30 * S);
        in_range(d, 15 * S, 30 * S);
        seen.insert(d);
    }
    assert!(
        seen.len() > 50,
        "jitter should spread: {} values",
        seen.len()
    );
    assert_eq!(Rng::new(0).jitter(Duration::ZERO), Duration::ZERO);
}

/// how-it-works, Redundancy: "exponential backoff and jitter (1 s to 30 s ...)".
#[test]
fn failures_back_off_from_1s_to_30s_with_jitter() {
    for seed in seeds() {
        let mut s = Slot::new(0, 1, seed);
        let mut now = Instant::now();
        let mut cap = S;
        for _ in 0..10 {
            let (d, say) = fail(&mut s, now, End::Failed);
            assert_eq!(say, Say::Backoff);
            in_range(d, cap / 2, cap);
            // Waiting: no attempt before the delay is over, one right after.
            assert_eq!(s.attempt(now + d - MS), Err(now + d));
            now += d;
            cap = (cap * 2).min(30 * S);
        }
    }
}

/// how-it-works, Redundancy: "... reset after a minute of stable service".
#[test]
fn backoff_resets_after_60s_of_stable_service() {
    for (lived, reset) in [(60 * S, true), (59 * S, false)] {
        let mut s = Slot::new(0, 1, 3);
        let mut now = Instant::now();
        for _ in 0..6 {
            now += fail(&mut s, now, End::Failed).0; // the backoff is at 30 s now
        }
        let (d, say) = up_then_lost(&mut s, now, now + lived);
        assert_eq!(say, Say::FastFirst);
        now += lived + d;
        // Past the quick-retry window, the exponential schedule again.
        let (d, say) = fail(&mut s, now + 31 * S, End::Failed);
        assert_eq!(say, Say::Backoff);
        if reset {
            in_range(d, S / 2, S);
        } else {
            in_range(d, 15 * S, 30 * S);
        }
    }
}

/// how-it-works, Redundancy: a lasting refusal waits "30–60 s apart at first and up to
/// 15 minutes later".
#[test]
fn refusals_wait_30_to_60s_then_up_to_15_minutes() {
    for seed in seeds() {
        let mut s = Slot::new(1, 2, seed);
        let mut now = Instant::now();
        let mut cap = 60 * S;
        for _ in 0..8 {
            let (d, say) = fail(&mut s, now, End::Refused);
            assert_eq!(say, Say::Refused);
            in_range(d, cap / 2, cap);
            now += d;
            cap = (cap * 2).min(15 * 60 * S);
        }
        assert_eq!(cap, 15 * 60 * S);
    }
}

/// how-it-works, Redundancy: "a reload of the device config (SIGHUP) tries at once".
#[test]
fn a_reload_retries_at_once() {
    let mut s = Slot::new(0, 1, 5);
    let t0 = Instant::now();
    let (d, _) = fail(&mut s, t0, End::Refused);
    assert!(d >= 30 * S);
    let until = s.attempt(t0 + S).expect_err("waiting after a refusal");
    assert_eq!(until, t0 + d);
    s.reload();
    assert_eq!(
        s.attempt(t0 + S),
        Ok(Attempt {
            entry: 0,
            fast: false
        })
    );
}

#[test]
fn refusals_start_over_after_a_registration() {
    let mut s = Slot::new(0, 1, 9);
    let mut now = Instant::now();
    for _ in 0..4 {
        now += fail(&mut s, now, End::Refused).0;
    }
    now += up_then_lost(&mut s, now, now + 5 * S).0 + 5 * S;
    let (d, say) = fail(&mut s, now, End::Refused);
    assert_eq!(say, Say::Refused);
    in_range(d, 30 * S, 60 * S);
}

/// how-it-works, Redundancy: "after losing a connection that was up (or a GoAway), a
/// slot first retries about every second for 30 s ...; the log says so once per slot,
/// not once per attempt". testing.md: an edge restarted is in use within 2 s.
#[test]
fn a_lost_connection_retries_quickly_for_30s_said_once() {
    for seed in seeds() {
        let mut s = Slot::new(0, 1, seed);
        let t0 = Instant::now();
        let (d, say) = up_then_lost(&mut s, t0, t0 + 100 * S);
        assert_eq!(say, Say::FastFirst);
        in_range(d, 150 * MS, 300 * MS);
        let lost = t0 + 100 * S;
        let mut now = lost + d;
        let mut attempts = 0;
        while now < lost + 30 * S - 2 * S {
            let a = s.attempt(now).expect("the wait is over");
            assert!(a.fast, "quick retries use short handshake waits");
            // A quick retry waits 0.8 s for QUIC: with the delay, about every second.
            assert_eq!(
                s.auto.plan(Protocol::Quic, a.fast),
                Plan::Quic {
                    wait: FAST_QUIC_WAIT
                }
            );
            let handshake = FAST_QUIC_WAIT;
            let Next::Wait { delay, say } = s.ended(now + handshake, End::Failed, &[]) else {
                panic!("no other edge to borrow");
            };
            assert_eq!(say, Say::FastQuiet, "said once per outage");
            in_range(delay, 150 * MS, 300 * MS);
            now += handshake + delay;
            attempts += 1;
        }
        assert!((25..=28).contains(&attempts), "{attempts} attempts in 28 s");
        // After the window: the exponential schedule, said at each failure.
        let (d, say) = fail(&mut s, lost + 30 * S, End::Failed);
        assert_eq!(say, Say::Backoff);
        assert!(!s.attempt(lost + 30 * S + d).expect("after the wait").fast);
        // The next loss opens a new window, said once again.
        let now = lost + 60 * S;
        let (_, say) = up_then_lost(&mut s, now, now + S);
        assert_eq!(say, Say::FastFirst);
    }
}

#[test]
fn a_goaway_reconnects_at_once_then_quickly() {
    let mut s = Slot::new(0, 1, 11);
    let t0 = Instant::now();
    s.attempt(t0).unwrap();
    s.registered(t0, 0);
    let Next::Wait { delay, say } = s.ended(t0 + 10 * S, End::Orderly, &[]) else {
        panic!("a GoAway never borrows");
    };
    assert_eq!((delay, say), (AFTER_GOAWAY, Say::Reconnecting));
    let now = t0 + 10 * S + delay;
    let (d, say) = fail(&mut s, now, End::Failed);
    assert_eq!(say, Say::FastFirst);
    in_range(d, 150 * MS, 300 * MS);
}

/// how-it-works, Redundancy: "a slot whose own edge stays unreachable past those 30 s
/// connects meanwhile to an edge other slots are connected to". testing.md: an edge
/// SIGKILLed for long.
#[test]
fn borrows_another_edge_after_30s_unreachable() {
    // Slot 2 of four over two edges: its own entry is 0.
    let mut s = Slot::new(2, 2, 13);
    assert_eq!(s.home(), 0);
    let t0 = Instant::now();
    s.attempt(t0).unwrap();
    s.registered(t0, 0);
    let lost = t0 + 300 * S;
    let Next::Wait { delay, .. } = s.ended(lost, End::Failed, &[1, 1, 0]) else {
        panic!("a registered connection's loss does not borrow");
    };
    let mut now = lost + delay;
    // The first failure starts the unreachable spell; before 30 s, no borrowing.
    let down = now;
    while now < down + 30 * S {
        s.attempt(now).unwrap();
        match s.ended(now, End::Failed, &[1, 1, 0]) {
            Next::Wait { delay, .. } => now += delay,
            Next::Borrow(_) => panic!("borrowed {:?} after its edge was down", now - down),
        }
    }
    // No other edge is up: keep to its own.
    s.attempt(now).unwrap();
    assert!(matches!(s.ended(now, End::Failed, &[0]), Next::Wait { .. }));
    s.reload();
    // Another edge is up: borrow it, once per attempt.
    let a = s.attempt(now).unwrap();
    assert_eq!(a.entry, 0);
    let Next::Borrow(b) = s.ended(now, End::Failed, &[1, 1, 0]) else {
        panic!("should borrow after 30 s");
    };
    assert_eq!(
        b,
        Attempt {
            entry: 1,
            fast: a.fast
        }
    );
    assert!(matches!(
        s.ended(now + S, End::Failed, &[1, 1, 0]),
        Next::Wait { .. }
    ));
    // The borrowed edge registers: say for how long its own was unreachable.
    s.reload();
    s.attempt(now + S).unwrap();
    let Next::Borrow(b) = s.ended(now + S, End::Failed, &[1, 1, 0]) else {
        panic!("should borrow again");
    };
    let away = s
        .registered(now + S, b.entry)
        .expect("away from its own edge");
    assert_eq!(away, now + S - down);
}

#[test]
fn borrows_the_least_used_edge_that_is_up() {
    assert_eq!(least_used(&[], 0), None);
    assert_eq!(least_used(&[0, 0], 0), None);
    assert_eq!(least_used(&[1, 2, 1], 0), Some(2));
    assert_eq!(least_used(&[2, 1], 0), Some(2), "ties go to the first");
    assert_eq!(least_used(&[0, 1, 2, 2, 1, 1], 2), Some(0));
}

/// how-it-works, Redundancy: "... and moves back (make before break) within 30 s of
/// its own edge answering again". testing.md: back on it once it listens (≤ 40 s).
#[test]
fn away_from_home_it_probes_home_within_30s() {
    for seed in seeds() {
        let mut s = Slot::new(1, 2, seed);
        let now = Instant::now();
        let p = s.probe(now, 0, Protocol::Quic).expect("away: probe home");
        assert_eq!(p.target, ProbeFor::Home(1));
        in_range(p.first - now, 15 * S, 30 * S);
        assert_eq!(p.every, 30 * S);
        // Home again over QUIC: nothing to probe.
        s.moved_home(Transport::Quic);
        assert_eq!(s.probe(now, 1, Protocol::Quic), None);
        assert_eq!(s.probe(now, 1, Protocol::Auto), None);
        assert_eq!(s.registered(now, 1), None);
    }
}

#[test]
fn moving_home_over_http2_keeps_probing_quic() {
    let mut s = Slot::new(0, 2, 17);
    let now = Instant::now();
    s.moved_home(Transport::Http2);
    let p = s.probe(now, 0, Protocol::Auto).expect("on HTTP/2 in auto");
    assert_eq!(p.target, ProbeFor::Quic);
}

/// how-it-works, Two transports: "In `protocol: auto` a connection tries QUIC for 3 s,
/// then falls back"; testing.md: serves over HTTP/2 within 5 s.
#[test]
fn auto_waits_3s_for_quic_then_stays_on_http2() {
    let mut auto = Auto::default();
    assert_eq!(
        auto.plan(Protocol::Auto, false),
        Plan::QuicFirst {
            wait: 3 * S,
            recheck: None
        }
    );
    // During quick retries: a short wait, and QUIC asked again once TCP answers.
    assert_eq!(
        auto.plan(Protocol::Auto, true),
        Plan::QuicFirst {
            wait: 800 * MS,
            recheck: Some(3 * S)
        }
    );
    auto.udp_blocked();
    assert_eq!(auto.plan(Protocol::Auto, false), Plan::Http2Fallback);
    assert_eq!(auto.plan(Protocol::Auto, true), Plan::Http2Fallback);
    // TCP fails too: the edge is down, start from QUIC again.
    auto.quic_again();
    assert!(matches!(
        auto.plan(Protocol::Auto, false),
        Plan::QuicFirst { .. }
    ));
    // Fixed protocols ignore what auto learned.
    auto.udp_blocked();
    assert_eq!(auto.plan(Protocol::Quic, false), Plan::Quic { wait: 5 * S });
    assert_eq!(auto.plan(Protocol::Http2, false), Plan::Http2);
}

/// how-it-works: "`protocol: auto` probes QUIC while on HTTP/2 (first after 15–30 s,
/// then every 30 s)"; testing.md: all connections back on QUIC within 60 s.
#[test]
fn auto_on_http2_probes_quic_after_15_to_30s_then_every_30s() {
    let mut firsts = std::collections::HashSet::new();
    for seed in seeds() {
        let mut s = Slot::new(0, 1, seed);
        let now = Instant::now();
        assert_eq!(s.probe(now, 0, Protocol::Auto), None, "on QUIC: no probe");
        s.auto.udp_blocked();
        let p = s
            .probe(now, 0, Protocol::Auto)
            .expect("on HTTP/2: probe QUIC");
        assert_eq!(p.target, ProbeFor::Quic);
        in_range(p.first - now, 15 * S, 30 * S);
        assert_eq!(p.every, 30 * S);
        firsts.insert(p.first - now);
        assert_eq!(s.probe(now, 0, Protocol::Http2), None);
        s.moved_to_quic();
        assert_eq!(s.probe(now, 0, Protocol::Auto), None);
        assert!(matches!(
            s.auto.plan(Protocol::Auto, false),
            Plan::QuicFirst { .. }
        ));
    }
    assert!(
        firsts.len() > 10,
        "slots that fell back together spread their probes"
    );
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// how-it-works, Redundancy: "DNS failures fall back to the last good addresses (said
/// once, and once when the name resolves again)"; testing.md: DNS fails.
#[test]
fn dns_failure_uses_the_last_good_addresses_said_once() {
    let mut n = Names::new(2);
    let a = addr("192.0.2.1:7844");
    assert_eq!(n.failed(0, 0, 2), Resolved::Unknown, "never resolved");
    assert_eq!(
        n.resolved(0, vec![a], 0, 2),
        Resolved::Fresh {
            addr: a,
            again: false,
            addrs: vec![a]
        }
    );
    let cached = |first| Resolved::Cached {
        addr: a,
        first,
        addrs: vec![a],
    };
    assert_eq!(n.failed(0, 0, 2), cached(true));
    assert_eq!(n.failed(0, 2, 2), cached(false));
    assert_eq!(
        n.resolved(0, vec![], 0, 2),
        cached(false),
        "no address is a failure"
    );
    assert_eq!(
        n.resolved(0, vec![a], 0, 2),
        Resolved::Fresh {
            addr: a,
            again: true,
            addrs: vec![a]
        }
    );
    assert!(matches!(
        n.resolved(0, vec![a], 0, 2),
        Resolved::Fresh { again: false, .. }
    ));
    // Entries are apart.
    assert_eq!(n.failed(1, 1, 2), Resolved::Unknown);
    assert_eq!(n.failed(5, 1, 2), Resolved::Unknown);
}

#[test]
fn resolved_addresses_ipv4_first_spread_over_slots() {
    let mut n = Names::new(2);
    let v6 = addr("[2001:db8::1]:7844");
    let a = addr("192.0.2.1:7844");
    let b = addr("192.0.2.2:7844");
    // Slots 0 and 2 share entry 0 (two entries): they take different addresses.
    let Resolved::Fresh {
        addr: first, addrs, ..
    } = n.resolved(0, vec![v6, a, b], 0, 2)
    else {
        panic!("resolved");
    };
    // IPv4 first, in the rendezvous order; slot 0 takes the first.
    assert_eq!(addrs.len(), 3);
    assert_eq!(addrs[2], v6);
    assert_eq!(first, addrs[0]);
    // The answer in another order (DNS rotation) changes nothing.
    let Resolved::Fresh { addr: second, .. } = n.resolved(0, vec![b, v6, a], 2, 2) else {
        panic!("resolved");
    };
    assert_eq!(second, addrs[1]);
    assert_ne!(first, second);
    let Resolved::Cached { addr, .. } = n.failed(0, 2, 2) else {
        panic!("cached");
    };
    assert_eq!(addr, second);
}

const KA: Duration = Duration::from_secs(15);
const IDLE: Duration = Duration::from_secs(45);

#[test]
fn a_sibling_never_pings_and_never_times_out() {
    let t0 = Instant::now();
    let mut k = Keeper::new(t0, KA, IDLE, 0, 0);
    for i in 1..100u32 {
        let now = t0 + KA * i;
        let t = k.tick(now, false, 0, u64::from(i));
        assert_eq!(
            t,
            KeeperTick {
                refresh: None,
                poke: false,
                timed_out: false,
                next: now + KA
            }
        );
    }
    assert!(!k.is_keeper());
}

#[test]
fn quic_pings_leave_one_keepalive_before_the_idle_timeout() {
    let k = |ka: u64, idle: u64| {
        Keeper::new(
            Instant::now(),
            Duration::from_secs(ka),
            Duration::from_secs(idle),
            0,
            0,
        )
        .probe_every()
        .as_secs()
    };
    assert_eq!(k(15, 45), 30);
    assert_eq!(k(10, 45), 30);
    assert_eq!(k(20, 45), 20);
    assert_eq!(k(30, 45), 30, "no room: every refresh is a QUIC ping");
    assert_eq!(k(15, 120), 105);
}

#[test]
fn the_keeper_refreshes_every_keepalive_and_pings_every_other_time() {
    let t0 = Instant::now();
    let mut k = Keeper::new(t0, KA, IDLE, 0, 0);
    // The first tick (at registration) makes it the keeper: a QUIC ping at once, and a
    // look for a new path a second later.
    let t = k.tick(t0, true, 0, 0);
    assert_eq!(t.refresh, Some(Refresh::Quic));
    assert!(!t.poke && !t.timed_out);
    assert_eq!(t.next, t0 + KEEPER_CHECK_AFTER);
    let t = k.tick(t.next, true, 1, 0);
    assert_eq!(t.refresh, None);
    assert_eq!(t.next, t0 + KA);
    let t = k.tick(t.next, true, 1, 0);
    assert_eq!(t.refresh, Some(Refresh::Nat));
    assert_eq!(t.next, t0 + KA * 2);
    // For a day: a refresh every 15 s, every other one a QUIC ping, each answered.
    let mut now = t.next;
    let (mut quic, mut nat, mut rx) = (1, 1, 1);
    let mut last = t0 + KA;
    while now < t0 + Duration::from_secs(86_400) {
        let t = k.tick(now, true, rx, 0);
        assert!(!t.timed_out && !t.poke);
        match t.refresh {
            Some(Refresh::Quic) => {
                quic += 1;
                rx += 1;
            }
            Some(Refresh::Nat) => nat += 1,
            None => {}
        }
        if t.refresh.is_some() {
            assert_eq!(now - last, KA, "a refresh every keepalive");
            last = now;
        }
        now = t.next;
    }
    assert_eq!(quic, 86_400 / 30);
    assert_eq!(nat, 86_400 / 30);
}

#[test]
fn a_path_challenge_pokes_the_siblings_once() {
    let t0 = Instant::now();
    let mut k = Keeper::new(t0, KA, IDLE, 0, 0);
    let t = k.tick(t0, true, 0, 0);
    // The NAT rebound: the edge validated the keeper's new path after its ping.
    let t = k.tick(t.next, true, 2, 1);
    assert!(t.poke);
    let t = k.tick(t.next, true, 3, 1);
    assert!(!t.poke, "once per new path");
}

#[test]
fn a_keeper_hearing_nothing_for_idle_times_out() {
    let t0 = Instant::now();
    let mut k = Keeper::new(t0, KA, IDLE, 5, 0);
    let mut now = t0;
    let mut ended = None;
    for _ in 0..20 {
        let t = k.tick(now, true, 5, 0);
        if t.timed_out {
            ended = Some(now);
            break;
        }
        now = t.next;
    }
    let ended = ended.expect("it times out");
    assert_eq!(ended, t0 + IDLE, "declared dead at idle, not a tick later");
}

#[test]
fn a_sibling_that_becomes_keeper_pings_at_once_and_gets_idle_from_then() {
    let t0 = Instant::now();
    let mut k = Keeper::new(t0, KA, IDLE, 0, 0);
    // Ten quiet minutes as a sibling.
    let later = t0 + Duration::from_secs(600);
    assert_eq!(k.tick(later, false, 0, 0).refresh, None);
    // The keeper went: this one takes over, pings now, and is not timed out for the
    // silence it had as a sibling.
    let t = k.tick(later, true, 0, 0);
    assert_eq!(t.refresh, Some(Refresh::Quic));
    assert!(!t.timed_out);
    assert!(k.is_keeper());
    let t = k.tick(later + IDLE - Duration::from_secs(1), true, 0, 0);
    assert!(!t.timed_out);
    let t = k.tick(later + IDLE, true, 0, 0);
    assert!(t.timed_out);
}

/// cluster.md, member lists: the members an edge told replace the entry's addresses,
/// shared out over two at least; one that fails is skipped for a while; when all fail
/// the entry's own addresses serve; a new list is news (what failed is tried again).
#[test]
fn members_told_are_shared_out_skipped_when_failing_and_fall_back_to_the_entry() {
    let a = addr("192.0.2.1:7844");
    let b = addr("192.0.2.2:7844");
    let mut n = Names::new(1).seeded([7; 16]).for_slots(4);
    let t0 = Instant::now();
    assert_eq!(n.member_for(0, 0, 1, t0), None, "nothing told: DNS");
    assert!(n.told(0, vec![b, a]));
    assert!(!n.told(0, vec![a, b]), "the same list in another order");
    let picks: Vec<SocketAddr> = (0..4).map(|s| n.member_for(0, s, 1, t0).unwrap()).collect();
    assert!(picks.contains(&a) && picks.contains(&b), "{picks:?}");
    let again: Vec<SocketAddr> = (0..4).map(|s| n.member_for(0, s, 1, t0).unwrap()).collect();
    assert_eq!(picks, again, "stable");
    // B fails: every slot takes A until B's time is up.
    assert!(n.member_failed(0, b, t0), "newly skipped");
    assert!(!n.member_failed(0, b, t0), "already skipped");
    assert!(
        !n.member_failed(0, addr("198.51.100.1:7844"), t0),
        "not a member"
    );
    for s in 0..4 {
        assert_eq!(n.member_for(0, s, 1, t0 + S), Some(a));
    }
    assert!(!n.due(t0 + S));
    assert!(
        n.due(t0 + MEMBER_DOWN_FOR),
        "B's time is up: the slots look again"
    );
    assert!(!n.due(t0 + MEMBER_DOWN_FOR), "said once");
    let t1 = t0 + MEMBER_DOWN_FOR;
    assert_eq!(
        (0..4)
            .map(|s| n.member_for(0, s, 1, t1).unwrap())
            .collect::<Vec<_>>(),
        picks
    );
    // B fails again: skipped twice as long, and so on up to the bound.
    assert!(n.member_failed(0, b, t1), "skipped again");
    assert_eq!(n.member_for(0, 3, 1, t1 + MEMBER_DOWN_FOR), Some(a));
    assert!(!n.due(t1 + MEMBER_DOWN_FOR));
    assert!(n.due(t1 + 2 * MEMBER_DOWN_FOR));
    let mut t = t1 + 2 * MEMBER_DOWN_FOR;
    for _ in 0..10 {
        n.member_failed(0, b, t);
        t += MEMBER_DOWN_MAX;
    }
    assert!(n.member_failed(0, b, t));
    assert!(!n.due(t + MEMBER_DOWN_MAX - S) && n.due(t + MEMBER_DOWN_MAX));
    // Working again: forgotten, the next failure skips it for the first time again.
    n.member_works(0, b);
    assert!(n.member_failed(0, b, t));
    assert!(n.due(t + MEMBER_DOWN_FOR));
    n.member_works(0, b);
    // Both fail: the entry's own addresses (None), until one works again.
    n.member_failed(0, a, t0 + 2 * MEMBER_DOWN_FOR);
    n.member_failed(0, b, t0 + 2 * MEMBER_DOWN_FOR);
    assert_eq!(n.member_for(0, 1, 1, t0 + 2 * MEMBER_DOWN_FOR), None);
    n.member_works(0, a);
    assert_eq!(n.member_for(0, 1, 1, t0 + 2 * MEMBER_DOWN_FOR), Some(a));
    // A new list forgets the failures.
    let c = addr("192.0.2.3:7844");
    assert!(n.told(0, vec![a, b, c]));
    assert!((0..4).all(|s| n.member_for(0, s, 1, t0 + 2 * MEMBER_DOWN_FOR).is_some()));
    // Other entries and entries out of range are apart.
    assert_eq!(n.member_for(3, 0, 1, t0), None);
    assert!(!n.told(3, vec![a]));
}
