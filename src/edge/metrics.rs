//! Request metrics per tunnel, and their Prometheus text: visitor requests by status
//! class, who answered (origin or edge) and the visitor's protocol; the origin's time
//! to a response head; bytes each way for HTTP bodies and raw streams; access streams.
//! `admin` appends [`Metrics::render`] to `/metrics`; `docs/metrics.md` is the reference.
//!
//! Cost on the request path: a tunnel's counters are one [`TunnelStats`] of atomics,
//! looked up once per request (or per access stream) under a read lock held for a
//! hash look-up and never across an await; counting is a relaxed atomic add.
//!
//! Cardinality is bounded: at most [`MAX_TUNNELS`] tunnels have their own label value.
//! Others are counted under `tunnel="_other"`; requests that no tunnel took (refused
//! before routing, no tunnel for the hostname) under `tunnel="_none"`. A tunnel
//! without a request or stream for [`STALE_AFTER`] drops out: its counts move into
//! `_other`, so sums over tunnels never go down, and its place is free for another.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

mod counted;
pub(crate) use counted::{CountedBody, CountedIo};

/// Most tunnels with their own label value; the rest share `_other`.
pub(crate) const MAX_TUNNELS: usize = 256;
/// A tunnel without a request or stream for this long drops out of the table.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(3600);
/// Longest tunnel label value in bytes; longer names are cut (at a character boundary).
pub(crate) const MAX_NAME: usize = 128;
/// The label value of tunnels beyond [`MAX_TUNNELS`] and of those that dropped out.
pub(crate) const OTHER: &str = "_other";
/// The label value of requests no tunnel took.
pub(crate) const NONE: &str = "_none";

/// Upper bounds of the latency buckets, in µs (5 ms … 30 s), and as `le` labels.
const BUCKETS_US: [u64; 12] = [
    5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 30_000_000,
];
const BUCKET_LE: [&str; 12] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30",
];
/// The buckets and the one above the last (`+Inf`).
const SLOTS: usize = BUCKETS_US.len() + 1;

/// The visitor's HTTP version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2, over TLS or in the clear.
    H2,
}

impl Protocol {
    pub(crate) fn of(v: http::Version) -> Protocol {
        if v == http::Version::HTTP_2 {
            Protocol::H2
        } else {
            Protocol::Http1
        }
    }
}

/// Who answered a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The origin, through the tunnel.
    Origin,
    /// The edge itself: a refusal, an error page, an `http_status:` rule.
    Edge,
}

/// Which way bytes went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// From the visitor (or access client) to the origin.
    ToOrigin,
    /// From the origin to the visitor.
    ToVisitor,
}

/// What the bytes were.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// HTTP request and response bodies, and WebSocket bytes after an upgrade.
    Http,
    /// Raw access streams (`mailslot access`, public TCP ports).
    Stream,
}

const PROTOCOLS: [(Protocol, &str); 2] = [(Protocol::Http1, "http1"), (Protocol::H2, "h2")];
const SOURCES: [(Source, &str); 2] = [(Source::Origin, "origin"), (Source::Edge, "edge")];
/// Status classes; the last holds codes outside 100–599.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];
const KINDS: [(Kind, &str); 2] = [(Kind::Http, "http"), (Kind::Stream, "stream")];
const DIRECTIONS: [(Direction, &str); 2] = [
    (Direction::ToOrigin, "to_origin"),
    (Direction::ToVisitor, "to_visitor"),
];

fn class_of(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => CLASSES.len() - 1,
    }
}

fn request_slot(p: Protocol, s: Source, class: usize) -> usize {
    (p as usize * SOURCES.len() + s as usize) * CLASSES.len() + class
}

fn bytes_slot(k: Kind, d: Direction) -> usize {
    k as usize * DIRECTIONS.len() + d as usize
}

fn add(counters: &[AtomicU64], i: usize, n: u64) {
    if let Some(c) = counters.get(i) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

fn get(counters: &[AtomicU64], i: usize) -> u64 {
    counters.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
}

/// One tunnel's counters (about 300 bytes).
#[derive(Debug)]
pub(crate) struct TunnelStats {
    /// By protocol, source and class ([`request_slot`]).
    requests: [AtomicU64; PROTOCOLS.len() * SOURCES.len() * CLASSES.len()],
    /// Observations per bucket, not cumulative (the last is above 30 s).
    latency: [AtomicU64; SLOTS],
    latency_sum_us: AtomicU64,
    /// By kind and direction ([`bytes_slot`]).
    bytes: [AtomicU64; KINDS.len() * DIRECTIONS.len()],
    streams: AtomicU64,
    /// Seconds after the table's epoch of the last look-up.
    last_used: AtomicU64,
}

impl TunnelStats {
    fn new(now: u64) -> TunnelStats {
        TunnelStats {
            requests: [const { AtomicU64::new(0) };
                PROTOCOLS.len() * SOURCES.len() * CLASSES.len()],
            latency: [const { AtomicU64::new(0) }; SLOTS],
            latency_sum_us: AtomicU64::new(0),
            bytes: [const { AtomicU64::new(0) }; KINDS.len() * DIRECTIONS.len()],
            streams: AtomicU64::new(0),
            last_used: AtomicU64::new(now),
        }
    }

    /// Counts a request answered with `status`.
    pub(crate) fn request(&self, protocol: Protocol, source: Source, status: u16) {
        add(
            &self.requests,
            request_slot(protocol, source, class_of(status)),
            1,
        );
    }

    /// Records the time from a request leaving the edge to the origin's response head.
    pub(crate) fn origin_latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let slot = BUCKETS_US.partition_point(|&le| le < us);
        add(&self.latency, slot, 1);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Counts `n` bytes of `kind` going `direction`.
    pub(crate) fn bytes(&self, kind: Kind, direction: Direction, n: u64) {
        add(&self.bytes, bytes_slot(kind, direction), n);
    }

    /// Counts an access stream opened to the tunnel.
    pub(crate) fn stream_opened(&self) {
        self.streams.fetch_add(1, Ordering::Relaxed);
    }

    fn touch(&self, now: u64) {
        // A store only when the second changed: look-ups mostly just read.
        if self.last_used.load(Ordering::Relaxed) != now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }

    /// Adds everything `other` counted to these counters.
    fn absorb(&self, other: &TunnelStats) {
        let pairs = self
            .requests
            .iter()
            .zip(&other.requests)
            .chain(self.latency.iter().zip(&other.latency))
            .chain(self.bytes.iter().zip(&other.bytes))
            .chain([
                (&self.latency_sum_us, &other.latency_sum_us),
                (&self.streams, &other.streams),
            ]);
        for (mine, theirs) in pairs {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    fn latency_count(&self) -> u64 {
        self.latency.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// The counters of every tunnel, bounded by [`MAX_TUNNELS`].
#[derive(Debug)]
pub(crate) struct Metrics {
    epoch: Instant,
    /// Label value → counters; at most [`MAX_TUNNELS`] entries.
    table: RwLock<HashMap<Box<str>, Arc<TunnelStats>>>,
    other: Arc<TunnelStats>,
    none: Arc<TunnelStats>,
    /// When the table, full, was last swept for stale tunnels (seconds after `epoch`,
    /// plus one): at most once a second.
    swept: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            epoch: Instant::now(),
            table: RwLock::new(HashMap::new()),
            other: Arc::new(TunnelStats::new(0)),
            none: Arc::new(TunnelStats::new(0)),
            swept: AtomicU64::new(0),
        }
    }
}

/// `name` cut to [`MAX_NAME`] bytes at a character boundary.
fn label_of(name: &str) -> &str {
    let mut end = name.len().min(MAX_NAME);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.get(..end).unwrap_or("")
}

impl Metrics {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// The counters of the tunnel named `name`: its own while the table has room (or
    /// a stale tunnel gives up its place), else `_other`'s.
    pub(crate) fn tunnel(&self, name: &str) -> Arc<TunnelStats> {
        self.tunnel_at(name, self.now())
    }

    /// The counters of requests no tunnel took.
    pub(crate) fn none(&self) -> &Arc<TunnelStats> {
        &self.none
    }

    fn tunnel_at(&self, name: &str, now: u64) -> Arc<TunnelStats> {
        let name = label_of(name);
        match name {
            OTHER => return self.other.clone(),
            NONE => return self.none.clone(),
            _ => {}
        }
        {
            let table = self.table.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = table.get(name) {
                s.touch(now);
                return s.clone();
            }
            if table.len() >= MAX_TUNNELS && !self.may_sweep(now) {
                return self.other.clone();
            }
        }
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = table.get(name) {
            s.touch(now);
            return s.clone();
        }
        if table.len() >= MAX_TUNNELS {
            self.sweep(&mut table, now);
        }
        if table.len() >= MAX_TUNNELS {
            return self.other.clone();
        }
        let s = Arc::new(TunnelStats::new(now));
        table.insert(name.into(), s.clone());
        s
    }

    /// Whether a full table may be swept now (once a second at most).
    fn may_sweep(&self, now: u64) -> bool {
        let last = self.swept.load(Ordering::Relaxed);
        last != now + 1
            && self
                .swept
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Moves the tunnels unused for [`STALE_AFTER`] into `_other`. One still held (a
    /// request or stream in flight) stays until it is let go: every count it gets then
    /// is kept.
    fn sweep(&self, table: &mut HashMap<Box<str>, Arc<TunnelStats>>, now: u64) {
        let stale = STALE_AFTER.as_secs();
        table.retain(|_, s| {
            let idle = now.saturating_sub(s.last_used.load(Ordering::Relaxed));
            // Clones are made only under the lock, which the caller holds for writing:
            // a count of one means nobody holds it or can take it.
            if idle >= stale && Arc::strong_count(s) == 1 {
                self.other.absorb(s);
                false
            } else {
                true
            }
        });
    }

    /// Appends the families in the Prometheus text format (version 0.0.4). Drops stale
    /// tunnels first. Series appear with their first count.
    pub(crate) fn render(&self, out: &mut String) {
        self.render_at(out, self.now());
    }

    fn render_at(&self, out: &mut String, now: u64) {
        let mut rows: Vec<(String, Arc<TunnelStats>)> = {
            let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
            self.sweep(&mut table, now);
            table
                .iter()
                .map(|(name, s)| (escape(name), s.clone()))
                .collect()
        };
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.push((NONE.to_string(), self.none.clone()));
        rows.push((OTHER.to_string(), self.other.clone()));
        render_requests(out, &rows);
        render_latency(out, &rows);
        render_bytes(out, &rows);
        render_streams(out, &rows);
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn render_requests(out: &mut String, rows: &[(String, Arc<TunnelStats>)]) {
    const NAME: &str = "mailslot_edge_requests_total";
    header(
        out,
        NAME,
        "counter",
        "Visitor requests answered, by tunnel, visitor protocol, who answered (origin or edge) and status class.",
    );
    for (tunnel, s) in rows {
        for (p, pname) in PROTOCOLS {
            for (src, sname) in SOURCES {
                for (class, cname) in CLASSES.iter().enumerate() {
                    let n = get(&s.requests, request_slot(p, src, class));
                    if n > 0 {
                        let _ = writeln!(
                            out,
                            "{NAME}{{tunnel=\"{tunnel}\",protocol=\"{pname}\",source=\"{sname}\",class=\"{cname}\"}} {n}"
                        );
                    }
                }
            }
        }
    }
}

fn render_latency(out: &mut String, rows: &[(String, Arc<TunnelStats>)]) {
    const NAME: &str = "mailslot_edge_origin_latency_seconds";
    header(
        out,
        NAME,
        "histogram",
        "Time from a request leaving the edge to the origin's response head arriving back through the tunnel.",
    );
    for (tunnel, s) in rows {
        let count = s.latency_count();
        if count == 0 {
            continue;
        }
        let mut below = 0;
        for (i, le) in BUCKET_LE.iter().enumerate() {
            below += get(&s.latency, i);
            let _ = writeln!(
                out,
                "{NAME}_bucket{{tunnel=\"{tunnel}\",le=\"{le}\"}} {below}"
            );
        }
        let _ = writeln!(
            out,
            "{NAME}_bucket{{tunnel=\"{tunnel}\",le=\"+Inf\"}} {count}"
        );
        let us = s.latency_sum_us.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{NAME}_sum{{tunnel=\"{tunnel}\"}} {}.{:06}",
            us / 1_000_000,
            us % 1_000_000
        );
        let _ = writeln!(out, "{NAME}_count{{tunnel=\"{tunnel}\"}} {count}");
    }
}

fn render_bytes(out: &mut String, rows: &[(String, Arc<TunnelStats>)]) {
    const NAME: &str = "mailslot_edge_bytes_total";
    header(
        out,
        NAME,
        "counter",
        "Bytes carried through tunnels: HTTP bodies (and WebSockets) or raw access streams, each way.",
    );
    for (tunnel, s) in rows {
        for (k, kname) in KINDS {
            for (d, dname) in DIRECTIONS {
                let n = get(&s.bytes, bytes_slot(k, d));
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "{NAME}{{tunnel=\"{tunnel}\",kind=\"{kname}\",direction=\"{dname}\"}} {n}"
                    );
                }
            }
        }
    }
}

fn render_streams(out: &mut String, rows: &[(String, Arc<TunnelStats>)]) {
    const NAME: &str = "mailslot_edge_access_streams_total";
    header(
        out,
        NAME,
        "counter",
        "Raw access streams opened to a tunnel (mailslot access, public TCP ports).",
    );
    for (tunnel, s) in rows {
        let n = s.streams.load(Ordering::Relaxed);
        if n > 0 {
            let _ = writeln!(out, "{NAME}{{tunnel=\"{tunnel}\"}} {n}");
        }
    }
}

/// A label value in the text format: backslash, double quote and line feed escaped.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(m: &Metrics, now: u64) -> String {
        let mut s = String::new();
        m.render_at(&mut s, now);
        s
    }

    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    /// Every line is a comment (`# HELP`/`# TYPE` of a family before its samples) or
    /// `name{labels} value` with a name of that family and a number.
    fn check_format(text: &str) {
        let mut family = String::new();
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                family = rest.split(' ').next().unwrap().to_string();
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert_eq!(name, family, "TYPE after its HELP");
                assert!(["counter", "histogram"].contains(&kind), "{line}");
                assert!(
                    typed.insert(name.to_string()),
                    "one TYPE per family: {line}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
            let name = series.split('{').next().unwrap();
            assert!(
                name == family
                    || [
                        format!("{family}_bucket"),
                        format!("{family}_sum"),
                        format!("{family}_count")
                    ]
                    .contains(&name.to_string()),
                "{line} outside its family {family}"
            );
            let labels = series
                .strip_prefix(name)
                .unwrap()
                .strip_prefix('{')
                .unwrap()
                .strip_suffix('}')
                .unwrap();
            for pair in labels.split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap();
                assert!(k.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{k}");
                assert!(!v.contains('\n'));
            }
        }
    }

    #[test]
    fn requests_are_counted_by_protocol_source_and_class() {
        let m = Metrics::default();
        let t = m.tunnel_at("dev42", 0);
        t.request(Protocol::Http1, Source::Origin, 200);
        t.request(Protocol::Http1, Source::Origin, 204);
        t.request(Protocol::H2, Source::Origin, 404);
        t.request(Protocol::Http1, Source::Edge, 502);
        t.request(Protocol::H2, Source::Origin, 101);
        t.request(Protocol::H2, Source::Origin, 999);
        m.none().request(Protocol::Http1, Source::Edge, 429);
        let text = rendered(&m, 0);
        check_format(&text);
        let req = lines(&text, "mailslot_edge_requests_total{");
        assert_eq!(
            req,
            [
                r#"mailslot_edge_requests_total{tunnel="dev42",protocol="http1",source="origin",class="2xx"} 2"#,
                r#"mailslot_edge_requests_total{tunnel="dev42",protocol="http1",source="edge",class="5xx"} 1"#,
                r#"mailslot_edge_requests_total{tunnel="dev42",protocol="h2",source="origin",class="1xx"} 1"#,
                r#"mailslot_edge_requests_total{tunnel="dev42",protocol="h2",source="origin",class="4xx"} 1"#,
                r#"mailslot_edge_requests_total{tunnel="dev42",protocol="h2",source="origin",class="other"} 1"#,
                r#"mailslot_edge_requests_total{tunnel="_none",protocol="http1",source="edge",class="4xx"} 1"#,
            ]
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inf_sum_and_count() {
        let m = Metrics::default();
        let t = m.tunnel_at("dev42", 0);
        for ms in [1, 5, 7, 120, 3_000, 31_000] {
            t.origin_latency(Duration::from_millis(ms));
        }
        let text = rendered(&m, 0);
        check_format(&text);
        let b = "mailslot_edge_origin_latency_seconds";
        assert_eq!(
            lines(&text, b),
            [
                format!("{b}_bucket{{tunnel=\"dev42\",le=\"0.005\"}} 2"),
                format!("{b}_bucket{{tunnel=\"dev42\",le=\"0.01\"}} 3"),
                format!("{b}_bucket{{tunnel=\"dev42\",le=\"0.025\"}} 3"),
                format!("{b}_bucket{{tunnel=\"dev42\",le=\"0.05\"}} 3"),
                format!("{b}_bucket{{tunnel=\"dev42\",le=\"0.1\"}} 3"),
                format!("{b}_bucket{{tunnel=\"dev42\",le=\"0.25\"}} 4"),
                format!("{b}_bucket{{tunnel=\"dev42\",le=\"0.5\"}} 4"),
                format!("{b}_bucket{{tunnel=\"dev42\",le=\"1\"}} 4"),
                format!("{b}_bucket{{tunnel=\"dev42\",le=\"2.5\"}} 4"),
                format!("{b}_bucket{{tunnel=\"dev42\",le=\"5\"}} 5"),
                format!("{b}_bucket{{tunnel=\"dev42\",le=\"10\"}} 5"),
                format!("{b}_bucket{{tunnel=\"dev42\",le=\"30\"}} 5"),
                format!("{b}_bucket{{tunnel=\"dev42\",le=\"+Inf\"}} 6"),
                format!("{b}_sum{{tunnel=\"dev42\"}} 34.133000"),
                format!("{b}_count{{tunnel=\"dev42\"}} 6"),
            ]
            .map(|s| s.to_string())
        );
        // A tunnel without observations has no histogram lines.
        assert!(!text.contains("tunnel=\"_none\",le"));
    }

    #[test]
    fn tunnel_labels_are_bounded_and_the_rest_counted_as_other() {
        let m = Metrics::default();
        for i in 0..MAX_TUNNELS + 10 {
            m.tunnel_at(&format!("t{i}"), 0)
                .request(Protocol::Http1, Source::Origin, 200);
        }
        let text = rendered(&m, 0);
        check_format(&text);
        let req = lines(&text, "mailslot_edge_requests_total{");
        assert_eq!(req.len(), MAX_TUNNELS + 1, "256 tunnels and _other");
        assert!(req.contains(
            &r#"mailslot_edge_requests_total{tunnel="_other",protocol="http1",source="origin",class="2xx"} 10"#
        ));
        // A tunnel with its own label keeps it; the names reserved for the aggregates
        // are the aggregates.
        assert!(!Arc::ptr_eq(&m.tunnel_at("t0", 1), &m.other));
        assert!(Arc::ptr_eq(&m.tunnel_at(OTHER, 1), &m.other));
        assert!(Arc::ptr_eq(&m.tunnel_at(NONE, 1), &m.none));
        assert!(Arc::ptr_eq(&m.tunnel_at("newcomer", 1), &m.other));
    }

    #[test]
    fn a_tunnel_gone_for_a_while_drops_out_into_other_and_frees_its_place() {
        let m = Metrics::default();
        let stale = STALE_AFTER.as_secs();
        for i in 0..MAX_TUNNELS {
            m.tunnel_at(&format!("t{i}"), 0)
                .bytes(Kind::Http, Direction::ToVisitor, 10);
        }
        // All but t0 are used again later.
        for i in 1..MAX_TUNNELS {
            m.tunnel_at(&format!("t{i}"), stale);
        }
        // Full: a newcomer gets a place only once t0 is stale, and not while a
        // request still holds t0's counters.
        let held = m.tunnel_at("t0", 10);
        assert!(Arc::ptr_eq(&m.tunnel_at("new", stale + 10), &m.other));
        drop(held);
        let new = m.tunnel_at("new", stale + 11);
        assert!(!Arc::ptr_eq(&new, &m.other));
        new.bytes(Kind::Stream, Direction::ToOrigin, 5);
        let text = rendered(&m, stale + 11);
        check_format(&text);
        assert!(!text.contains("tunnel=\"t0\""), "t0 dropped out");
        assert!(text.contains(
            "mailslot_edge_bytes_total{tunnel=\"_other\",kind=\"http\",direction=\"to_visitor\"} 10\n"
        ));
        assert!(text.contains(
            "mailslot_edge_bytes_total{tunnel=\"new\",kind=\"stream\",direction=\"to_origin\"} 5\n"
        ));
        // A render drops stale tunnels even from a table with room.
        let text = rendered(&m, 3 * stale);
        assert_eq!(
            lines(&text, "mailslot_edge_bytes_total{").len(),
            2,
            "{text}"
        );
        assert!(text.contains(&format!(
            "mailslot_edge_bytes_total{{tunnel=\"_other\",kind=\"http\",direction=\"to_visitor\"}} {}\n",
            10 * MAX_TUNNELS
        )));
    }

    #[test]
    fn labels_are_escaped_and_cut() {
        let m = Metrics::default();
        m.tunnel_at("a\"b\\c\nd", 0).stream_opened();
        let long = "é".repeat(MAX_NAME);
        m.tunnel_at(&long, 0).stream_opened();
        m.tunnel_at(&format!("{long}x"), 0).stream_opened();
        let text = rendered(&m, 0);
        check_format(&text);
        assert!(text.contains("mailslot_edge_access_streams_total{tunnel=\"a\\\"b\\\\c\\nd\"} 1\n"));
        let cut = "é".repeat(MAX_NAME / 2);
        assert!(text.contains(&format!(
            "mailslot_edge_access_streams_total{{tunnel=\"{cut}\"}} 2\n"
        )));
    }

    #[test]
    fn an_empty_table_renders_its_families_without_samples() {
        let text = rendered(&Metrics::default(), 0);
        check_format(&text);
        assert_eq!(text.lines().count(), 8);
    }
}
