//! The fleet page on the admin listener: server-rendered HTML that needs no
//! JavaScript and no other resource (one inline stylesheet), readable on a phone.
//!
//! - `GET /fleet`: counts per fleet and a table of devices, sorted by the column whose
//!   header was clicked (`?sort=COL&dir=asc|desc`), filtered by `?fleet=F`, at most
//!   [`MAX_ROWS`] rows a page (`?start=N` for the next).
//! - `GET /fleet/ID`: every field of one device, its health and its connections.
//!
//! Every text is HTML-escaped ([`escape`]): names, boards and errors come from devices.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::api::{self, percent_encode, DeviceJson};
use super::DeviceView;

/// Rows of the device table in one page.
pub const MAX_ROWS: usize = 500;
/// Fleets listed by name in the counts table and the filter; the rest are summed up.
pub const MAX_FLEETS_SHOWN: usize = 100;

const STYLE: &str = "body{font:15px/1.4 system-ui,sans-serif;margin:1em;color:#222}\
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.1em;margin:1.2em 0 .4em}\
.scroll{overflow-x:auto}table{border-collapse:collapse}\
th,td{padding:.3em .6em;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}\
th a{color:inherit}td.n,th.n{text-align:right}\
.online{color:#080;font-weight:600}.offline{color:#b00;font-weight:600}.revoked{color:#777}\
dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:.2em 1em}dt{color:#555}\
dd{margin:0;overflow-wrap:anywhere}form{margin:.8em 0}.empty{font-style:italic}";

/// A column of the device table: its `sort=` name and heading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    Name,
    Fleet,
    State,
    Seen,
    Version,
    Config,
    Temp,
    Load,
    Protocol,
    Rtt,
}

const COLS: [(Col, &str, &str); 10] = [
    (Col::Name, "name", "device"),
    (Col::Fleet, "fleet", "fleet"),
    (Col::State, "state", "state"),
    (Col::Seen, "seen", "last seen"),
    (Col::Version, "version", "version"),
    (Col::Config, "config", "config"),
    (Col::Temp, "temp", "temp"),
    (Col::Load, "load", "load"),
    (Col::Protocol, "protocol", "protocol"),
    (Col::Rtt, "rtt", "RTT"),
];

/// What `/fleet`'s query asks for.
#[derive(Debug, Clone, PartialEq)]
struct View {
    sort: Col,
    desc: bool,
    fleet: Option<String>,
    start: usize,
}

impl View {
    fn parse(query: &str) -> View {
        let mut v = View {
            sort: Col::Name,
            desc: false,
            fleet: None,
            start: 0,
        };
        for (k, val) in api::params(query) {
            match k.as_str() {
                "sort" => {
                    if let Some((c, _, _)) = COLS.iter().find(|(_, n, _)| *n == val) {
                        v.sort = *c;
                    }
                }
                "dir" => v.desc = val == "desc",
                "fleet" if !val.is_empty() => v.fleet = Some(val),
                "start" => v.start = val.parse().unwrap_or(0),
                _ => {}
            }
        }
        v
    }

    /// The query of this view with another sort, direction or start.
    fn href(&self, sort: Col, desc: bool, start: usize) -> String {
        let name = COLS
            .iter()
            .find(|(c, _, _)| *c == sort)
            .map_or("name", |(_, n, _)| n);
        let mut q = format!("?sort={name}&dir={}", if desc { "desc" } else { "asc" });
        if let Some(f) = &self.fleet {
            let _ = write!(q, "&fleet={}", percent_encode(f));
        }
        if start > 0 {
            let _ = write!(q, "&start={start}");
        }
        q
    }
}

/// HTML-escapes text for element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>",
        escape(title)
    );
}

/// Counts of one fleet.
#[derive(Default)]
struct Counts {
    online: usize,
    offline: usize,
    revoked: usize,
}

/// `GET /fleet` for `views` at `now` (Unix seconds), on the edge named `edge`.
pub fn fleet_page(edge: &str, views: &[DeviceView], query: &str, now: u64) -> String {
    let view = View::parse(query);
    let mut out = String::new();
    head(&mut out, &format!("Fleet · {edge}"));
    let _ = write!(out, "<h1>Fleet</h1><p>edge {}</p>", escape(edge));
    if views.is_empty() {
        out.push_str(
            "<p class=\"empty\" id=\"no-devices\">No devices have enrolled yet. Give a board \
             an enrolment key (<code>mailslot-edge enroll-key</code>) and it shows here.</p>\
             </body></html>",
        );
        return out;
    }
    fleet_counts(&mut out, views, &view);
    let mut rows: Vec<DeviceJson> = views
        .iter()
        .filter(|v| view.fleet.as_ref().is_none_or(|f| *f == v.record.fleet))
        .map(DeviceJson::of)
        .collect();
    if rows.is_empty() {
        let _ = write!(
            out,
            "<p class=\"empty\">No devices in fleet {}.</p></body></html>",
            escape(view.fleet.as_deref().unwrap_or(""))
        );
        return out;
    }
    sort_rows(&mut rows, view.sort, view.desc, now);
    device_table(&mut out, &rows, &view, now);
    out.push_str("</body></html>");
    out
}

/// The counts table and the fleet filter.
fn fleet_counts(out: &mut String, views: &[DeviceView], view: &View) {
    let mut fleets: BTreeMap<&str, Counts> = BTreeMap::new();
    let mut all = Counts::default();
    for v in views {
        let c = fleets.entry(v.record.fleet.as_str()).or_default();
        for c in [c, &mut all] {
            match api::state(v) {
                "online" => c.online += 1,
                "offline" => c.offline += 1,
                _ => c.revoked += 1,
            }
        }
    }
    let _ = write!(
        out,
        "<p id=\"summary\">{} devices: <span class=\"online\">{} online</span>, \
         <span class=\"offline\">{} offline</span>, {} revoked</p>",
        views.len(),
        all.online,
        all.offline,
        all.revoked
    );
    out.push_str(
        "<div class=\"scroll\"><table id=\"fleets\"><thead><tr><th>fleet</th>\
         <th class=\"n\">online</th><th class=\"n\">offline</th><th class=\"n\">revoked</th>\
         </tr></thead><tbody>",
    );
    for (name, c) in fleets.iter().take(MAX_FLEETS_SHOWN) {
        let _ = write!(
            out,
            "<tr><td><a href=\"/fleet?fleet={}\">{}</a></td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&percent_encode(name)),
            escape(name),
            c.online,
            c.offline,
            c.revoked
        );
    }
    if fleets.len() > MAX_FLEETS_SHOWN {
        let _ = write!(
            out,
            "<tr><td colspan=\"4\">and {} more fleets</td></tr>",
            fleets.len() - MAX_FLEETS_SHOWN
        );
    }
    out.push_str("</tbody></table></div>");
    out.push_str(
        "<form method=\"get\" action=\"/fleet\"><label>fleet <select name=\"fleet\">\
         <option value=\"\">all</option>",
    );
    for name in fleets.keys().take(MAX_FLEETS_SHOWN) {
        let selected = if view.fleet.as_deref() == Some(name) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<option value=\"{0}\"{selected}>{0}</option>",
            escape(name)
        );
    }
    out.push_str("</select></label> <button>show</button></form>");
}

/// Orders `rows` by `col`; devices without a value come last either way, ties by name
/// and id.
fn sort_rows(rows: &mut [DeviceJson], col: Col, desc: bool, now: u64) {
    let key = |d: &DeviceJson| -> Option<SortKey> {
        Some(match col {
            Col::Name => SortKey::Text(d.name.to_lowercase()),
            Col::Fleet => SortKey::Text(d.fleet.clone()),
            Col::State => SortKey::Num(match d.state.as_str() {
                "online" => 0.0,
                "offline" => 1.0,
                _ => 2.0,
            }),
            Col::Seen => SortKey::Num(seen(d, now) as f64),
            Col::Version => SortKey::Text(d.version.clone()),
            Col::Config => SortKey::Text(config_text(d)),
            Col::Temp => SortKey::Num(d.temp_celsius()?),
            Col::Load => SortKey::Num(d.load1()?),
            Col::Protocol => SortKey::Text(Some(d.protocols()).filter(|p| !p.is_empty())?),
            Col::Rtt => SortKey::Num(f64::from(d.rtt_ms()?)),
        })
    };
    rows.sort_by(|a, b| {
        let by_col = match (key(a), key(b)) {
            (Some(x), Some(y)) if desc => y.cmp(&x),
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        by_col
            .then_with(|| a.name.cmp(&b.name))
            .then_with(|| a.id.cmp(&b.id))
    });
}

enum SortKey {
    Text(String),
    Num(f64),
}

impl SortKey {
    fn cmp(&self, other: &SortKey) -> Ordering {
        match (self, other) {
            (SortKey::Text(a), SortKey::Text(b)) => a.cmp(b),
            (SortKey::Num(a), SortKey::Num(b)) => a.total_cmp(b),
            (SortKey::Text(_), SortKey::Num(_)) => Ordering::Less,
            (SortKey::Num(_), SortKey::Text(_)) => Ordering::Greater,
        }
    }
}

/// Last seen, Unix seconds: now for a device online now.
fn seen(d: &DeviceJson, now: u64) -> u64 {
    if d.online {
        now
    } else {
        d.last_seen.unix
    }
}

fn last_seen_text(d: &DeviceJson, now: u64) -> String {
    if d.online {
        "now".into()
    } else {
        api::ago(now, d.last_seen.unix)
    }
}

/// The config digest and the last push's state: `0011aabbccddeeff applied`.
pub fn config_text(d: &DeviceJson) -> String {
    match &d.config_push {
        Some(c) => format!("{} {}", d.config_digest, c.state),
        None => d.config_digest.clone(),
    }
}

/// `47.5 °C`, or empty.
pub fn temp_text(d: &DeviceJson) -> String {
    d.temp_celsius()
        .map(|t| format!("{t:.1} °C"))
        .unwrap_or_default()
}

/// The table of devices, one page of it.
fn device_table(out: &mut String, rows: &[DeviceJson], view: &View, now: u64) {
    out.push_str("<div class=\"scroll\"><table id=\"devices\"><thead><tr>");
    for (col, _, heading) in COLS {
        let current = view.sort == col;
        let desc = current && !view.desc;
        let arrow = match (current, view.desc) {
            (false, _) => "",
            (true, false) => " ▲",
            (true, true) => " ▼",
        };
        let class = if matches!(col, Col::Temp | Col::Load | Col::Rtt) {
            " class=\"n\""
        } else {
            ""
        };
        let _ = write!(
            out,
            "<th{class}><a href=\"/fleet{}\">{heading}</a>{arrow}</th>",
            escape(&view.href(col, desc, 0))
        );
    }
    out.push_str("</tr></thead><tbody>");
    let start = view.start.min(rows.len());
    for d in rows.iter().skip(start).take(MAX_ROWS) {
        let _ = write!(
            out,
            "<tr class=\"device\" data-id=\"{id}\"><td><a href=\"/fleet/{id}\">{name}</a></td>\
             <td>{fleet}</td><td class=\"{state}\">{state}</td><td>{seen}</td><td>{version}</td>\
             <td>{config}</td><td class=\"n\">{temp}</td><td class=\"n\">{load}</td><td>{proto}</td>\
             <td class=\"n\">{rtt}</td></tr>",
            id = escape(&d.id),
            name = escape(if d.name.is_empty() { &d.id } else { &d.name }),
            fleet = escape(&d.fleet),
            state = escape(&d.state),
            seen = escape(&last_seen_text(d, now)),
            version = escape(&d.version),
            config = escape(&config_text(d)),
            temp = escape(&temp_text(d)),
            load = d.load1().map(|l| format!("{l:.2}")).unwrap_or_default(),
            proto = escape(&d.protocols()),
            rtt = d.rtt_ms().map(|r| format!("{r} ms")).unwrap_or_default(),
        );
    }
    out.push_str("</tbody></table></div>");
    if rows.len() > MAX_ROWS {
        let end = (start + MAX_ROWS).min(rows.len());
        let _ = write!(out, "<p>devices {}–{end} of {}", start + 1, rows.len());
        if start > 0 {
            let prev = start.saturating_sub(MAX_ROWS);
            let _ = write!(
                out,
                " · <a href=\"/fleet{}\">previous</a>",
                escape(&view.href(view.sort, view.desc, prev))
            );
        }
        if end < rows.len() {
            let _ = write!(
                out,
                " · <a href=\"/fleet{}\">next</a>",
                escape(&view.href(view.sort, view.desc, end))
            );
        }
        out.push_str("</p>");
    }
}

/// `GET /fleet/ID` for one device at `now`.
pub fn device_page(edge: &str, v: &DeviceView, now: u64) -> String {
    let d = DeviceJson::of(v);
    let mut out = String::new();
    let title = if d.name.is_empty() { &d.id } else { &d.name };
    head(&mut out, &format!("{title} · {edge}"));
    let _ = write!(
        out,
        "<p><a href=\"/fleet\">← fleet</a></p><h1>{}</h1><p class=\"{state}\" id=\"state\">{state}</p>",
        escape(title),
        state = escape(&d.state)
    );
    let time = |t: &api::Time| format!("{} ({})", t.rfc3339, api::ago(now, t.unix));
    let hostnames: Vec<String> = d
        .hostnames
        .iter()
        .map(|h| format!("<a href=\"https://{0}/\">{0}</a>", escape(h)))
        .collect();
    let fields: Vec<(&str, String)> = vec![
        ("id", escape(&d.id)),
        ("name", escape(&d.name)),
        (
            "fleet",
            format!(
                "<a href=\"/fleet?fleet={}\">{}</a>",
                escape(&percent_encode(&d.fleet)),
                escape(&d.fleet)
            ),
        ),
        ("hostnames", hostnames.join("<br>")),
        ("last seen", escape(&last_seen_text(&d, now))),
        ("version", escape(&d.version)),
        ("architecture", escape(&d.arch)),
        ("board", escape(&d.board)),
        ("config digest", escape(&d.config_digest)),
        (
            "last config push",
            escape(&change_text(d.config_push.as_ref(), &time)),
        ),
        (
            "last upgrade",
            escape(&change_text(d.release.as_ref(), &time)),
        ),
        ("address", escape(&d.address)),
        ("public key", escape(&d.public_key)),
        ("enrolment key", escape(&d.enrolment_key)),
        ("enrolled", escape(&time(&d.enrolled))),
        ("first seen", escape(&time(&d.first_seen))),
        ("last seen at", escape(&time(&d.last_seen))),
        ("credential expires", escape(&d.credential_expires.rfc3339)),
        (
            "revoked",
            d.revoked
                .as_ref()
                .map_or_else(|| "no".into(), |t| escape(&time(t))),
        ),
    ];
    dl(&mut out, &fields);
    out.push_str("<h2>Health</h2>");
    match &d.health {
        None => out.push_str("<p class=\"empty\" id=\"no-health\">No health report yet.</p>"),
        Some(h) => {
            let kib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
            let opt_kib = |k: Option<u64>| k.map(kib).unwrap_or_else(|| "unknown".into());
            let fields: Vec<(&str, String)> = vec![
                ("reported", escape(&time(&h.received))),
                ("uptime", duration_text(h.uptime_secs)),
                (
                    "load",
                    format!("{:.2} {:.2} {:.2}", h.load[0], h.load[1], h.load[2]),
                ),
                (
                    "memory available",
                    format!("{} of {}", kib(h.mem_available_kib), kib(h.mem_total_kib)),
                ),
                (
                    "CPU temperature",
                    escape(
                        &Some(temp_text(&d))
                            .filter(|t| !t.is_empty())
                            .unwrap_or("unknown".into()),
                    ),
                ),
                (
                    "free on /",
                    format!(
                        "{} of {}",
                        opt_kib(h.root_free_kib),
                        opt_kib(h.root_total_kib)
                    ),
                ),
                ("clock", if h.clock_set { "set" } else { "not set" }.into()),
                (
                    "bytes carried",
                    format!("{} in, {} out", h.bytes_in, h.bytes_out),
                ),
                (
                    "last error",
                    escape(h.last_error.as_deref().unwrap_or("none")),
                ),
            ];
            dl(&mut out, &fields);
            cost_section(&mut out, h.cost.as_ref());
        }
    }
    out.push_str("<h2>Connections</h2>");
    if d.connections.is_empty() {
        out.push_str("<p class=\"empty\">No connections now.</p>");
    } else {
        out.push_str(
            "<div class=\"scroll\"><table id=\"connections\"><thead><tr><th>protocol</th>\
             <th>address</th><th class=\"n\">RTT</th></tr></thead><tbody>",
        );
        for c in &d.connections {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{} ms</td></tr>",
                escape(&c.protocol),
                escape(&c.address),
                c.rtt_ms
            );
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str("</body></html>");
    out
}

/// A definition list of already-escaped values.
fn dl(out: &mut String, fields: &[(&str, String)]) {
    out.push_str("<dl>");
    for (k, v) in fields {
        let _ = write!(out, "<dt>{k}</dt><dd>{v}</dd>");
    }
    out.push_str("</dl>");
}

/// The device's bytes today and yesterday, a table (`id="cost"`).
fn cost_section(out: &mut String, cost: Option<&api::CostJson>) {
    out.push_str("<h2>Cost</h2>");
    let Some(c) = cost else {
        out.push_str(
            "<p class=\"empty\" id=\"no-cost\">Not reported (a connector that does not \
             count it).</p>",
        );
        return;
    };
    out.push_str(
        "<table id=\"cost\"><thead><tr><th>day</th><th>on the wire</th><th>carried</th>\
         <th>overhead</th><th>counted</th></tr></thead><tbody>",
    );
    let today = format!("today ({})", escape(&c.day));
    for (label, d) in [
        (today.as_str(), Some(&c.today)),
        ("yesterday", c.yesterday.as_ref()),
    ] {
        let Some(d) = d else {
            let _ = write!(
                out,
                "<tr><td>{label}</td><td colspan=\"4\">not counted</td></tr>"
            );
            continue;
        };
        let _ = write!(
            out,
            "<tr><td>{label}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            api::bytes_text(d.wire),
            api::bytes_text(d.carried),
            api::bytes_text(d.overhead),
            duration_text(u64::from(d.covered_secs)),
        );
    }
    out.push_str("</tbody></table>");
}

/// `3d 4h 5m`.
fn duration_text(secs: u64) -> String {
    let (d, h, m) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60);
    match (d, h) {
        (0, 0) => format!("{m}m"),
        (0, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

/// A small page with a title and a line of text (errors, refusals).
pub fn message_page(title: &str, text: &str) -> String {
    let mut out = String::new();
    head(&mut out, title);
    let _ = write!(
        out,
        "<h1>{}</h1><p>{}</p><p><a href=\"/fleet\">fleet</a></p></body></html>",
        escape(title),
        escape(text)
    );
    out
}

/// A device's last change of one kind, in words: `ID STATE[: why] (when)`, or `none`.
fn change_text(c: Option<&api::ChangeJson>, time: &dyn Fn(&api::Time) -> String) -> String {
    c.map_or_else(
        || "none".to_string(),
        |c| match &c.reason {
            Some(why) => format!("{} {}: {why} ({})", c.id, c.state, time(&c.at)),
            None => format!("{} {} ({})", c.id, c.state, time(&c.at)),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::fleet::api::tests::view;

    const NOW: u64 = 1_700_100_000;

    /// The names in the order the device table shows them.
    fn order(html: &str) -> Vec<String> {
        html.split("<tr class=\"device\"")
            .skip(1)
            .map(|row| {
                let name = row.split("\">").nth(2).unwrap();
                name.split('<').next().unwrap().to_string()
            })
            .collect()
    }

    fn fleet() -> Vec<DeviceView> {
        let mut a = view(1, "alpha", "shop", true);
        a.connections[0].rtt_ms = 90;
        let b = view(2, "bravo", "home", false);
        let mut c = view(3, "charlie", "shop", true);
        c.record.health = None;
        let mut d = view(4, "delta", "home", false);
        d.record.revoked = Some(NOW - 10);
        vec![a, b, c, d]
    }

    #[test]
    fn the_config_digest_and_the_last_push_are_shown() {
        let mut f = fleet();
        let device = f[0].record.id.clone();
        f[0].changes.push(crate::edge::fleet::ChangeRecord {
            device,
            kind: crate::wire::ChangeKind::Config,
            id: "0123456789abcdef".into(),
            rollout: "r1".into(),
            state: crate::edge::fleet::ChangeState::RolledBack {
                reason: "config 0123456789abcdef rolled back: <edge> down".into(),
            },
            at: NOW - 5,
        });
        let page = fleet_page("edge1", &f, "", NOW);
        assert!(
            page.contains("<td>00112233aabbccdd rolled back</td>"),
            "{page}"
        );
        assert!(page.contains("<td>00112233aabbccdd</td>"), "{page}");
        let one = device_page("edge1", &f[0], NOW);
        assert!(
            one.contains("0123456789abcdef rolled back: config 0123456789abcdef rolled back: &lt;edge&gt; down"),
            "{one}"
        );
        assert!(
            one.contains("<dt>last upgrade</dt><dd>none</dd>"),
            "no upgrade yet: {one}"
        );
        let device = f[0].record.id.clone();
        f[0].changes.push(crate::edge::fleet::ChangeRecord {
            device,
            kind: crate::wire::ChangeKind::Release,
            id: "0.2.0".into(),
            rollout: "r2".into(),
            state: crate::edge::fleet::ChangeState::RolledBack {
                reason: "crashed <3> times".into(),
            },
            at: NOW - 5,
        });
        let one = device_page("edge1", &f[0], NOW);
        assert!(
            one.contains("0.2.0 rolled back: crashed &lt;3&gt; times"),
            "{one}"
        );
    }

    #[test]
    fn sorting_by_each_column_and_direction() {
        let f = fleet();
        let page = |q: &str| order(&fleet_page("edge1", &f, q, NOW));
        assert_eq!(page(""), ["alpha", "bravo", "charlie", "delta"]);
        assert_eq!(
            page("sort=name&dir=desc"),
            ["delta", "charlie", "bravo", "alpha"]
        );
        assert_eq!(page("sort=fleet"), ["bravo", "delta", "alpha", "charlie"]);
        assert_eq!(page("sort=state"), ["alpha", "charlie", "bravo", "delta"]);
        // Online devices are seen now; then the most recent last seen.
        assert_eq!(
            page("sort=seen&dir=desc"),
            ["alpha", "charlie", "delta", "bravo"]
        );
        // charlie has no health report: last in either direction.
        assert_eq!(page("sort=temp"), ["alpha", "bravo", "delta", "charlie"]);
        assert_eq!(
            page("sort=temp&dir=desc"),
            ["delta", "bravo", "alpha", "charlie"]
        );
        assert_eq!(
            page("sort=load&dir=desc"),
            ["delta", "bravo", "alpha", "charlie"]
        );
        // Offline devices have no RTT.
        assert_eq!(page("sort=rtt"), ["charlie", "alpha", "bravo", "delta"]);
        assert_eq!(
            page("sort=rtt&dir=desc"),
            ["alpha", "charlie", "bravo", "delta"]
        );
        // An unknown column sorts by name.
        assert_eq!(page("sort=%3Cx%3E"), ["alpha", "bravo", "charlie", "delta"]);
    }

    #[test]
    fn headers_link_to_the_other_direction_and_keep_the_filter() {
        let html = fleet_page("edge1", &fleet(), "sort=temp&fleet=shop", NOW);
        assert!(html.contains("href=\"/fleet?sort=temp&amp;dir=desc&amp;fleet=shop\">temp</a> ▲"));
        assert!(html.contains("href=\"/fleet?sort=name&amp;dir=asc&amp;fleet=shop\">device</a>"));
        assert_eq!(order(&html), ["alpha", "charlie"]);
        let html = fleet_page("edge1", &fleet(), "fleet=nowhere", NOW);
        assert!(html.contains("No devices in fleet nowhere."));
    }

    #[test]
    fn counts_per_fleet_and_states() {
        let html = fleet_page("edge1", &fleet(), "", NOW);
        assert!(html.contains("4 devices: <span class=\"online\">2 online</span>, <span class=\"offline\">1 offline</span>, 1 revoked"), "{html}");
        assert!(html.contains("<a href=\"/fleet?fleet=home\">home</a></td><td class=\"n\">0</td><td class=\"n\">1</td><td class=\"n\">1</td>"));
        assert!(html.contains("<a href=\"/fleet?fleet=shop\">shop</a></td><td class=\"n\">2</td><td class=\"n\">0</td><td class=\"n\">0</td>"));
        // bravo: offline, last seen 2 minutes after the base time.
        let bravo = html.split("bravo</a>").nth(1).unwrap();
        assert!(
            bravo.starts_with(
                "</td><td>home</td><td class=\"offline\">offline</td><td>27h ago</td>"
            ),
            "{bravo}"
        );
        assert!(html.contains("<td class=\"online\">online</td><td>now</td>"));
        assert!(html.contains("<meta name=\"viewport\""));
        assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("http://"));
    }

    #[test]
    fn texts_from_devices_are_escaped() {
        let mut v = view(1, "<script>alert(1)</script>", "f\"><b>", false);
        v.record.health.as_mut().unwrap().last_error = Some("<img src=x onerror=alert(2)>".into());
        v.record.board = "a&b".into();
        v.record.hostnames = vec!["x\"><script>.example.com".into()];
        let list = fleet_page("<edge>", &[v.clone()], "", NOW);
        let one = device_page("<edge>", &v, NOW);
        for html in [&list, &one] {
            assert!(!html.contains("<script>"), "{html}");
            assert!(!html.contains("<b>"), "{html}");
            assert!(!html.contains("<img"), "{html}");
            assert!(!html.contains("<edge>"), "{html}");
        }
        assert!(list.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(list.contains("value=\"f&quot;&gt;&lt;b&gt;\""));
        assert!(list.contains("href=\"/fleet?fleet=f%22%3E%3Cb%3E\""));
        assert!(one.contains("&lt;img src=x onerror=alert(2)&gt;"));
        assert!(one.contains("a&amp;b"));
        assert!(one.contains("href=\"https://x&quot;&gt;&lt;script&gt;.example.com/\""));
    }

    #[test]
    fn an_empty_fleet_says_so() {
        let html = fleet_page("edge1", &[], "", NOW);
        assert!(html.contains("No devices have enrolled yet."));
        assert!(!html.contains("<table"));
    }

    #[test]
    fn a_device_page_shows_every_field_health_and_connections() {
        let f = fleet();
        let html = device_page("edge1", &f[0], NOW);
        for needle in [
            "<h1>alpha</h1>",
            "<p class=\"online\" id=\"state\">online</p>",
            &f[0].record.id,
            "<a href=\"https://alpha.shop.example.com/\">alpha.shop.example.com</a>",
            "Raspberry Pi 4 Model B",
            "00112233aabbccdd",
            &"01".repeat(32),
            "2023-11-14T22:13:20Z",
            "41.0 °C",
            "0.10 0.05 0.01",
            "488.3 MiB of 976.6 MiB",
            "1h 0m",
            "<td>quic</td><td>192.0.2.7:40000</td><td class=\"n\">90 ms</td>",
        ] {
            assert!(html.contains(needle), "{needle} not in {html}");
        }
        let charlie = device_page("edge1", &f[2], NOW);
        assert!(charlie.contains("No health report yet."));
        let delta = device_page("edge1", &f[3], NOW);
        assert!(delta.contains("<p class=\"revoked\" id=\"state\">revoked</p>"));
        assert!(delta.contains("No connections now."));
        assert!(delta.contains("(10s ago)"));
    }

    #[test]
    fn long_lists_are_paged() {
        let views: Vec<DeviceView> = (0..=255u8)
            .chain(0..=255)
            .chain(0..=100)
            .enumerate()
            .map(|(i, n)| {
                let mut v = view(n, &format!("d{i:04}"), "big", false);
                v.record.id = format!("{i:016}");
                v
            })
            .collect();
        let first = fleet_page("e", &views, "", NOW);
        assert_eq!(order(&first).len(), MAX_ROWS);
        assert!(first.contains("devices 1–500 of 613"));
        assert!(first.contains("<a href=\"/fleet?sort=name&amp;dir=asc&amp;start=500\">next</a>"));
        let second = fleet_page("e", &views, "start=500", NOW);
        assert_eq!(order(&second).len(), 113);
        assert_eq!(order(&second)[0], "d0500");
        assert!(second.contains("previous"));
        assert!(!second.contains(">next<"));
    }

    #[test]
    fn a_device_page_shows_what_it_costs() {
        let mut v = view(2, "pi-2", "home", true);
        let page = device_page("e", &v, NOW);
        assert!(page.contains("<table id=\"cost\">"), "{page}");
        assert!(page.contains(
            "<tr><td>today (2023-11-14)</td><td>3.0 MiB</td><td>1.9 MiB</td><td>1.1 MiB</td><td>22h 13m</td></tr>"
        ), "{page}");
        assert!(page.contains("<tr><td>yesterday</td><td>3.9 KiB</td><td>10 B</td>"));
        v.record.health_cost.as_mut().unwrap().yesterday_secs = 0;
        let page = device_page("e", &v, NOW);
        assert!(page.contains("<tr><td>yesterday</td><td colspan=\"4\">not counted</td></tr>"));
        v.record.health_cost = None;
        let page = device_page("e", &v, NOW);
        assert!(page.contains("id=\"no-cost\"") && !page.contains("id=\"cost\""));
    }
}
