//! The edge's side of a device's daily data cap (`data-cap` in the device config).
//!
//! A connector past its cap tells the edge on each of its connections
//! ([`ConnectorMsg::DataCap`](crate::wire::ConnectorMsg::DataCap), sent only to an edge
//! whose hello announced it understands it). The edge keeps the state on the tunnel's
//! registry entry ([`TunnelCap`]) and answers requests for the tunnel's rules that are
//! not essential itself, with a 503 page and `Retry-After` until the device's reset
//! ([`check`]), without opening a stream: the device's data is what the cap saves. The
//! device refuses such streams too, for edges that predate this.
//!
//! One log line per tunnel when it goes over ("tunnel T over its daily data cap: ...")
//! and one when it is back, however many connections report it; `/tunnels` shows
//! `data_cap=over` on the tunnel's connections meanwhile.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use super::body::{full, text, Body};
use super::registry::{Conn, Registry, Route};
use crate::util::lock;
use crate::wire::DataCap;

/// A state whose reset time passed this long ago without the device's word is
/// forgotten (the device refuses the streams itself if it is still over).
const STALE_AFTER: Duration = Duration::from_secs(300);

/// Tunnels of this edge over their cap: requests skip the look-up while there are none.
static OVER: AtomicUsize = AtomicUsize::new(0);

/// One tunnel's data cap state, on its registry entry.
#[derive(Default)]
pub(crate) struct TunnelCap(Mutex<Option<Over>>);

/// A tunnel over its cap.
struct Over {
    /// When the device resets its count, by the edge's clocks.
    until: Instant,
    until_unix: u64,
    /// The rule table `essential` indexes.
    rules_generation: u32,
    /// Rules still served: at most one entry per rule of the reporting connection's
    /// table ([`on_report`] checks), so bounded by the edge's rule table limit.
    essential: Vec<u16>,
}

impl Drop for TunnelCap {
    fn drop(&mut self) {
        if lock(&self.0).is_some() {
            OVER.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl TunnelCap {
    /// Whether the tunnel is over its cap now (for `/tunnels`).
    pub(crate) fn is_over(&self) -> bool {
        lock(&self.0)
            .as_ref()
            .is_some_and(|o| Instant::now() < o.until + STALE_AFTER)
    }

    /// Seconds until the reset when rule `rule` of table `generation` is refused now;
    /// `None` when it is served (essential, not over, or a table the report did not
    /// name: the device then decides).
    fn refuses(&self, generation: u32, rule: u16, now: Instant) -> Option<u64> {
        let state = lock(&self.0);
        let over = state.as_ref()?;
        if now >= over.until + STALE_AFTER
            || over.rules_generation != generation
            || over.essential.contains(&rule)
        {
            return None;
        }
        Some(over.until.saturating_duration_since(now).as_secs().max(1))
    }

    /// Applies a report; `Some(true)` when the tunnel went over, `Some(false)` when it
    /// came back, `None` when nothing changed that is worth a log line.
    fn apply(&self, report: &DataCap, now: Instant, now_unix: u64) -> Option<bool> {
        let mut state = lock(&self.0);
        let was = state.is_some();
        *state = report.over.then(|| {
            let secs = u64::from(report.resets_in_secs);
            Over {
                until: now + Duration::from_secs(secs),
                until_unix: now_unix.saturating_add(secs),
                rules_generation: report.rules_generation,
                essential: report.essential.clone(),
            }
        });
        match (was, report.over) {
            (false, true) => {
                OVER.fetch_add(1, Ordering::Relaxed);
                Some(true)
            }
            (true, false) => {
                OVER.fetch_sub(1, Ordering::Relaxed);
                Some(false)
            }
            _ => None,
        }
    }
}

/// A connector's report on `conn`: kept on the tunnel's entry, logged once per change.
/// A report naming more essential rules than its table has, or rules past its end, is
/// ignored (and logged).
pub(crate) fn on_report(registry: &Registry, conn: &Conn, report: &DataCap, who: &str) {
    let rules = conn.rules().rules.len();
    if report.essential.len() > rules || report.essential.iter().any(|&i| usize::from(i) >= rules) {
        log::warn!("{who}: data cap report ignored: it names rules the table does not have");
        return;
    }
    let Some(cap) = registry.tunnel_cap(&conn.tunnel_id) else {
        return;
    };
    let now_unix = super::token::now_unix();
    let tunnel = &conn.tunnel_name;
    match cap.apply(report, Instant::now(), now_unix) {
        Some(true) => log::warn!(
            "tunnel {tunnel} over its daily data cap ({} of {} bytes): serving essential \
             rules only until {}",
            report.used,
            report.cap,
            super::fleet::api::rfc3339(now_unix.saturating_add(u64::from(report.resets_in_secs)))
        ),
        Some(false) => {
            log::info!("tunnel {tunnel} back under its daily data cap: serving every rule")
        }
        None => {}
    }
}

/// The edge's answer to a request `route` sends to a rule its tunnel does not serve
/// past its data cap: `Err` with the 503 page; `Ok` to go on.
pub(crate) fn check(
    registry: &Registry,
    route: &Route,
    host: &str,
    headers: &HeaderMap,
) -> Result<(), Box<Response<Body>>> {
    if OVER.load(Ordering::Relaxed) == 0 {
        return Ok(());
    }
    let Route::Rule {
        conn, rules, rule, ..
    } = route
    else {
        return Ok(());
    };
    let Some(cap) = registry.tunnel_cap(&conn.tunnel_id) else {
        return Ok(());
    };
    match cap.refuses(rules.generation, *rule, Instant::now()) {
        None => Ok(()),
        Some(secs) => {
            let until = lock(&cap.0).as_ref().map_or(0, |o| o.until_unix);
            Err(Box::new(page(host, secs, until, headers)))
        }
    }
}

/// The 503 page: HTML for a browser (its `Accept` names `text/html`), text otherwise,
/// with `Retry-After` until the reset.
fn page(host: &str, retry_after: u64, until_unix: u64, headers: &HeaderMap) -> Response<Body> {
    let until = super::fleet::api::rfc3339(until_unix);
    let why = format!(
        "{host} is over its daily data cap: the device serves only its essential services \
         until its daily reset at {until} (in {})",
        human(retry_after)
    );
    let browser = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let mut r = if browser {
        let host = super::fleet::page::escape(host);
        let body = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
             <title>503 Over the daily data cap</title></head>\n<body>\
             <h1>503 Service Unavailable</h1>\n<p><b>{host}</b> is over its daily data \
             cap. The device serves only its essential services until its daily reset at \
             {until} (in {}).</p>\n<p><small>mailslot edge</small></p></body></html>\n",
            human(retry_after)
        );
        let mut r = Response::new(full(Bytes::from(body)));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, why)
    };
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

/// `3h 12m`, `12m`, `40s`.
fn human(secs: u64) -> String {
    match (secs / 3600, secs % 3600 / 60) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m"),
        (h, m) => format!("{h}h {m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(over: bool, essential: Vec<u16>) -> DataCap {
        DataCap {
            over,
            resets_in_secs: 3600,
            rules_generation: 7,
            essential,
            used: 70_000,
            cap: 65_536,
        }
    }

    #[test]
    fn over_refuses_the_other_rules_until_the_reset() {
        let cap = TunnelCap::default();
        let t0 = Instant::now();
        assert_eq!(cap.refuses(7, 1, t0), None, "not over");
        assert_eq!(cap.apply(&report(true, vec![0]), t0, 1_000), Some(true));
        assert!(cap.is_over());
        // A second connection's report of the same state is no news.
        assert_eq!(cap.apply(&report(true, vec![0]), t0, 1_000), None);
        assert_eq!(cap.refuses(7, 0, t0), None, "essential");
        assert_eq!(cap.refuses(7, 1, t0), Some(3600));
        assert_eq!(cap.refuses(7, 1, t0 + Duration::from_secs(3599)), Some(1));
        assert_eq!(
            cap.refuses(8, 1, t0),
            None,
            "another rule table: the device decides"
        );
        // Long past the reset without word from the device: forgotten.
        let late = t0 + Duration::from_secs(3600) + STALE_AFTER;
        assert_eq!(cap.refuses(7, 1, late), None);
        assert_eq!(cap.apply(&report(false, vec![]), t0, 1_000), Some(false));
        assert_eq!(cap.refuses(7, 1, t0), None);
        assert!(!cap.is_over());
    }

    #[test]
    fn the_page_is_html_for_browsers_and_text_otherwise() {
        let mut headers = HeaderMap::new();
        let r = page("a.example.com", 120, 1_800_000_000, &headers);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "120");
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/html,*/*"));
        let r = page("<b>", 120, 1_800_000_000, &headers);
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert_eq!(human(120), "2m");
        assert_eq!(human(3 * 3600 + 12 * 60 + 5), "3h 12m");
        assert_eq!(human(40), "40s");
    }
}
