//! The scenario benchmark: repeats the timing scenarios and prints their figures.

use std::time::Duration;

use crate::crash::*;
use crate::failover::*;
use crate::nat::*;

/// Repeats the timing scenarios and prints the figures (for the README).
pub fn bench() {
    let runs = 3;
    let fmt = |v: &mut Vec<f32>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        format!(
            "min {:.2}s  median {:.2}s  max {:.2}s",
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        )
    };
    let (mut fallback, mut back, mut restart) = (Vec::new(), Vec::new(), Vec::new());
    let mut failover = Vec::new();
    let (mut replica, mut lent, mut returned) = (Vec::new(), Vec::new(), Vec::new());
    let (mut crashed, mut stopped, mut killed) = (Vec::new(), Vec::new(), Vec::new());
    // The slower of the two visits (one through each edge).
    let slower = |v: &[(Duration, Result<u16, String>); 2]| v[0].0.max(v[1].0).as_secs_f32();
    for _ in 0..runs {
        let (f, b) = udp_blocked_then_unblocked();
        fallback.push(f.as_secs_f32());
        back.push(b.as_secs_f32());
        restart.push(edge_restarted(Duration::from_secs(6)).as_secs_f32());
        failover.push(edge_killed().map_or(0.0, |d| d.as_secs_f32()));
        replica.push(replica_killed("quic").slowest_get.as_secs_f32());
        let (l, r) = edge_down_for_long();
        lent.push(l.as_secs_f32());
        returned.push(r.as_secs_f32());
        crashed.push(edge_crash_restarted().as_secs_f32());
        stopped.push(slower(&connector_crash_restarted().after_stop));
        killed.push(slower(&connector_killed()));
    }
    println!("scenario figures over {runs} runs:");
    println!(
        "  HTTP/2 fallback (start to serving, UDP blocked): {}",
        fmt(&mut fallback)
    );
    println!(
        "  return to QUIC after unblocking UDP:             {}",
        fmt(&mut back)
    );
    println!(
        "  serving via a restarted edge after it listens:   {}",
        fmt(&mut restart)
    );
    println!(
        "  failed requests via the other edge after a kill: {}",
        fmt(&mut failover)
    );
    println!(
        "  longest GET gap after a replica's SIGKILL (QUIC): {}",
        fmt(&mut replica)
    );
    println!(
        "  dead edge's slots on the other edge after kill:  {}",
        fmt(&mut lent)
    );
    println!(
        "  slots back on a returned edge after it listens:  {}",
        fmt(&mut returned)
    );
    println!(
        "  serving via an edge SIGKILLed and restarted:     {}",
        fmt(&mut crashed)
    );
    println!(
        "  502 after a connector's crash, restart, stop:    {}",
        fmt(&mut stopped)
    );
    println!(
        "  502 after the only connector's SIGKILL:          {}",
        fmt(&mut killed)
    );
}
