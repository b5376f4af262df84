//! The silence watch: a request on a tunnel connection whose connector stopped
//! answering is given up (or moved to another connection) within the connection's
//! silence window, instead of waiting out the dial or origin timeout.

use std::future::Future;
use std::pin::Pin;

use tokio::time::Instant;

use super::registry::{Conn, Registry};

/// What came of a request [`watch_silence`] watched.
pub(crate) enum Watched<T> {
    /// The request ended (well or not) on its connection.
    Done(T),
    /// The connector went silent and another connection answers: retry there.
    Retry,
    /// The connector went silent and no connection of the tunnel answers.
    Silent,
    /// The deadline passed first.
    TimedOut,
}

/// Where a watch stands.
#[derive(Clone, Copy)]
enum Phase {
    /// Waiting out the first half of the silence window.
    First,
    /// The connector was nudged; waiting out the second half.
    Nudged,
    /// The connector was heard (or is left to answer): only the deadline is watched.
    Deadline,
}

/// Runs `request` on `conn` until `deadline` while watching its connector. When the
/// connector sends nothing at all for [`Conn::silence_limit`] after the request began
/// (its process hung or died, or its path went dark: the edge would hear nothing else
/// until the idle timeout), new requests avoid the connection, and:
/// - when no other connection of the tunnel answers, the request is given up
///   ([`Watched::Silent`]): the visitor hears within the silence window that the
///   tunnel is not answering, instead of waiting out the dial timeout;
/// - when `retry` allows it (the request may be retried; it lists the connections
///   tried) and another connection answers, this one is given up ([`Watched::Retry`])
///   to be retried there;
/// - otherwise (another connection answers, but the request cannot be repeated) it
///   waits as before: a NAT rebinding silences a connection until its next keep-alive.
///
/// Halfway through a silence the connector is asked for an answer ([`Conn::nudge`]). A
/// live connector answers within a round trip whatever its origin does, so one that
/// sent nothing back had not taken the request from the tunnel: nothing had reached the
/// origin. (Should that connection come back after all, the abandoned copy may still
/// arrive: allowed for an idempotent request, RFC 9110 9.2.2; for another request the
/// visitor was told 502, which does not claim that nothing happened.)
///
/// One timer serves the whole watch, moved from one look to the next: a request that
/// is answered within the first half of the window costs one timer, not two. The
/// request is pinned by the caller: a future moved in would be held twice (as the
/// argument, and pinned), and copied with every future that awaits this one.
pub(crate) async fn watch_silence<T>(
    registry: &Registry,
    conn: &Conn,
    retry: Option<&[usize]>,
    host: &str,
    deadline: Instant,
    mut request: Pin<&mut impl Future<Output = T>>,
) -> Watched<T> {
    let heard = conn.heard();
    let half = conn.silence_limit() / 2;
    let mut next = Instant::now() + half;
    let mut phase = Phase::First;
    let timer = tokio::time::sleep_until(next.min(deadline));
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            r = request.as_mut() => return Watched::Done(r),
            () = &mut timer => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Watched::TimedOut;
        }
        phase = match phase {
            Phase::Deadline => Phase::Deadline,
            _ if conn.heard() != heard => Phase::Deadline,
            Phase::First => {
                conn.nudge();
                next = now + half;
                Phase::Nudged
            }
            Phase::Nudged => {
                registry.set_silent(conn, heard);
                if !registry.has_answering(host, &[conn.session.id()]) {
                    return Watched::Silent;
                }
                match retry {
                    Some(tried) if registry.has_answering(host, tried) => return Watched::Retry,
                    _ => Phase::Deadline,
                }
            }
        };
        let at = match phase {
            Phase::Deadline => deadline,
            _ => next.min(deadline),
        };
        timer.as_mut().reset(at);
    }
}
