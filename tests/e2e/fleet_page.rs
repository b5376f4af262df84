//! The fleet's interfaces on a real `mailslot-edge serve`: the fleet page in a real
//! browser (headless Chromium), the admin API with curl, and the `devices` commands.
//!
//! [`assert_fleet_page`] checks what the page shows against the devices a test expects;
//! tests with enrolled devices pass their list to it.

use std::process::Command;

use super::common::*;

const TOKEN: &str = "admin-0123456789-fleet-secret";

/// A device as the fleet page should show it.
pub struct Shown<'a> {
    pub name: &'a str,
    pub fleet: &'a str,
    /// `online`, `offline` or `revoked`.
    pub state: &'a str,
}

/// The device rows of a fleet page's DOM: (name, fleet, state) of each.
fn rows(dom: &str) -> Vec<(String, String, String)> {
    let cell = |row: &str, n: usize| -> String {
        let td = row.split("<td").nth(n).unwrap_or("");
        let text = td.split_once('>').map_or("", |(_, rest)| rest);
        // The name cell holds a link.
        let text = text
            .strip_prefix("<a ")
            .map_or(text, |a| a.split_once('>').map_or("", |(_, rest)| rest));
        text.split('<').next().unwrap_or("").to_string()
    };
    dom.split("<tr class=\"device\"")
        .skip(1)
        .map(|row| (cell(row, 1), cell(row, 2), cell(row, 3)))
        .collect()
}

/// Asserts that `dom` (a fleet page as the browser shows it) lists exactly `expected`,
/// with counts that match; an empty list must say that no device has enrolled.
pub fn assert_fleet_page(dom: &str, expected: &[Shown]) {
    assert!(dom.contains("<h1>Fleet</h1>"), "not the fleet page:\n{dom}");
    assert!(dom.contains("name=\"viewport\""), "no viewport:\n{dom}");
    if expected.is_empty() {
        assert!(
            dom.contains("No devices have enrolled yet."),
            "an empty fleet does not say so:\n{dom}"
        );
        assert!(rows(dom).is_empty(), "{dom}");
        return;
    }
    let mut shown = rows(dom);
    shown.sort();
    let mut want: Vec<(String, String, String)> = expected
        .iter()
        .map(|d| (d.name.into(), d.fleet.into(), d.state.into()))
        .collect();
    want.sort();
    assert_eq!(shown, want, "devices on the page:\n{dom}");
    let count = |s: &str| expected.iter().filter(|d| d.state == s).count();
    let summary = format!(
        "{} devices: <span class=\"online\">{} online</span>, <span class=\"offline\">{} offline</span>, {} revoked",
        expected.len(),
        count("online"),
        count("offline"),
        count("revoked")
    );
    assert!(dom.contains(&summary), "no {summary:?} in\n{dom}");
}

/// The fleet page of `edge` (started by [`admin_edge`]) as `browser` shows it, after
/// Basic authentication with the admin token; kept as a screenshot named `shot` when
/// `MAILSLOT_SCREENSHOT_DIR` is set.
pub fn fleet_dom(browser: &Browser, edge: &EdgeProc, shot: &str) -> String {
    let url = format!("http://admin:{TOKEN}@{}/fleet", edge.admin_addr());
    let page = browser.dump_dom(&url);
    assert!(
        !page.stderr.contains("ERR_INVALID_AUTH_CREDENTIALS"),
        "{}",
        page.stderr
    );
    browser.keep_screenshot(&url, shot);
    page.dom
}

/// The edge's own timers for these tests: it closes a connector's connections once it
/// has sent nothing for `idle-timeout` (the device's shorter one is not the edge's), so
/// a stopped board shows offline within seconds even when its CONNECTION_CLOSE
/// datagram is lost on a loaded loopback.
const EDGE_TIMERS: &str = "keepalive: 2s\nidle-timeout: 6s\n";

/// An edge with an admin listener that requires [`TOKEN`].
fn admin_edge() -> EdgeProc {
    start_edge(init_edge(&format!(
        "admin-listen: 127.0.0.1:0\nadmin-token: {TOKEN}\n{EDGE_TIMERS}"
    )))
}

/// Is the edge's fleet inventory served (the store opened)? Otherwise the pages and
/// the API answer 503 "fleet inventory not loaded".
fn inventory_loaded(edge: &EdgeProc) -> bool {
    let url = format!("http://{}/api/v1/devices", edge.admin_addr());
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let r = curl(&["-H", &bearer, &url]);
    assert!(
        r.status == 200 || r.status == 503,
        "{}: {}",
        r.status,
        r.text()
    );
    if r.status == 503 {
        assert!(
            r.text().contains("fleet inventory not loaded"),
            "{}",
            r.text()
        );
    }
    r.status == 200
}

const NOT_LOADED: &str =
    "this edge serves no fleet inventory (503 fleet inventory not loaded): its store is not opened at start";

pub(crate) fn the_fleet_page_needs_the_admin_token_in_a_real_browser() -> Result<(), Skip> {
    let browser = Browser::find()?;
    let edge = admin_edge();
    let admin = edge.admin_addr();
    let port = admin.port();

    // A browser is asked for the token as a password.
    let r = curl(&[&format!("http://{admin}/fleet")]);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"mailslot-edge\", charset=\"UTF-8\"")
    );
    // Tools keep the bearer challenge.
    let r = curl(&[&format!("http://{admin}/api/v1/devices")]);
    assert_eq!(
        (r.status, r.header("www-authenticate")),
        (401, Some("Bearer"))
    );

    for url in [
        format!("http://127.0.0.1:{port}/fleet"),
        format!("http://admin:wrong-0123456789-token@127.0.0.1:{port}/fleet"),
    ] {
        let refused = browser.dump_dom(&url);
        assert!(
            !refused.dom.contains("<h1>Fleet"),
            "{url} shown without the token:\n{}",
            refused.dom
        );
        assert!(
            refused.stderr.contains("ERR_INVALID_AUTH_CREDENTIALS"),
            "{url}: {}",
            refused.stderr
        );
    }
    let dom = fleet_dom(&browser, &edge, "fleet-empty");
    assert!(dom.contains("<title>"), "refused with the token:\n{dom}");
    if !inventory_loaded(&edge) {
        assert!(dom.contains("fleet inventory not loaded"), "{dom}");
        return Err(Skip(NOT_LOADED.into()));
    }
    assert_fleet_page(&dom, &[]);
    // A phone-sized screenshot renders.
    let dir = TempDir::new("shot");
    let url = format!("http://admin:{TOKEN}@127.0.0.1:{port}/fleet");
    browser.screenshot(&url, &dir.join("fleet.png"), PHONE);
    Ok(())
}

pub(crate) fn the_admin_api_takes_basic_auth_for_reading_only() {
    let edge = admin_edge();
    let admin = edge.admin_addr();
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let basic = format!("admin:{TOKEN}");
    let devices = format!("http://{admin}/api/v1/devices");
    // Reading with either credential.
    for auth in [&["-H", &bearer][..], &["-u", &basic][..]] {
        let mut args = auth.to_vec();
        args.push(&devices);
        let r = curl(&args);
        assert!(r.status == 200 || r.status == 503, "{}", r.status);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let r = curl(&[auth[0], auth[1], &format!("http://{admin}/metrics")]);
        assert_eq!(r.status, 200);
    }
    let r = curl(&["-u", "admin:not-the-token-0123456789", &devices]);
    assert_eq!(r.status, 401);
    // A wrong method is named; changes need the bearer token, not a browser's Basic.
    let revoke = format!("http://{admin}/api/v1/devices/aaaaaaaaaaaaaaaa/revoke");
    let r = curl(&["-H", &bearer, &revoke]);
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = curl(&["-X", "POST", "-H", &bearer, &devices]);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    let r = curl(&["-X", "POST", "-u", &basic, &revoke]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("Bearer"), "{}", r.text());
    // Bodies are bounded.
    let big = "x".repeat(10_000);
    let r = curl(&["-X", "POST", "-H", &bearer, "--data-binary", &big, &revoke]);
    assert_eq!(r.status, 413, "{}", r.text());
    let r = curl(&["-X", "POST", "-H", &bearer, &revoke]);
    assert!(
        r.status == 404 || r.status == 503,
        "{}: {}",
        r.status,
        r.text()
    );
}

pub(crate) fn devices_commands_talk_to_the_running_edge() -> Result<(), Skip> {
    let out = Command::new(EDGE)
        .args(["devices", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(stdout(&out).contains(
        "usage: mailslot-edge devices ls --config edge.yml [--fleet F] [--offline] [--json]"
    ));
    let mut edge = admin_edge();
    let good = cli_config(&edge, TOKEN);
    let wrong = cli_config(&edge, "wrong-token-0123456789");

    let out = devices(&wrong, &["ls"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("refused the admin token"),
        "{}",
        stderr(&out)
    );

    let loaded = inventory_loaded(&edge);
    let out = devices(&good, &["ls"]);
    if loaded {
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "no devices enrolled yet\n");
        let out = devices(&good, &["ls", "--json", "--fleet", "shop", "--offline"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let json = stdout(&out);
        assert!(
            json.contains("\"total\": 0") && json.contains("\"devices\": []"),
            "{json}"
        );
        let out = devices(&good, &["show", "aaaaaaaaaaaaaaaa"]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("no device aaaaaaaaaaaaaaaa"),
            "{}",
            stderr(&out)
        );
        let out = devices(&good, &["revoke", "aaaaaaaaaaaaaaaa"]);
        assert!(
            stderr(&out).contains("no device aaaaaaaaaaaaaaaa"),
            "{}",
            stderr(&out)
        );
    } else {
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("fleet inventory not loaded"),
            "{}",
            stderr(&out)
        );
    }

    // The edge gone: the command says so.
    edge.proc.child.kill().unwrap();
    edge.proc.child.wait().unwrap();
    let out = devices(&good, &["ls"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no edge answers on")
            && stderr(&out).contains("is `mailslot-edge serve"),
        "{}",
        stderr(&out)
    );
    if loaded {
        Ok(())
    } else {
        Err(Skip(NOT_LOADED.into()))
    }
}

/// A fleet of `n` real connectors started from one golden `config.bin` (an enrolment
/// key of fleet `shop`, `{device}` hostnames) against `edge`, each in a folder of its
/// own: the folders, the connectors (each registered twice) and the device ids. A short
/// idle timeout: a stopped board's CONNECTION_CLOSE is one UDP datagram, which a loaded
/// machine's loopback may drop; then the edge learns of the stop from the idle timeout.
struct Boards {
    dirs: Vec<TempDir>,
    procs: Vec<Option<Proc>>,
    ids: Vec<String>,
    _origin: Origin,
}

fn start_boards(edge: &EdgeProc, n: usize) -> Boards {
    let out = run_ok(
        "mailslot-edge enroll-key",
        Command::new(EDGE)
            .arg("enroll-key")
            .arg("--config")
            .arg(edge.dir.path().join("edge.yml"))
            .args([
                "--fleet",
                "shop",
                "--hostname",
                "{device}.shop.example.test",
            ])
            .args(["--max-devices", "5"]),
    );
    let key = stdout(&out).trim().to_string();
    let origin = Origin::start("board");
    let golden = TempDir::new("golden");
    let bin = compile(
        golden.path(),
        &format!(
            "tunnel: shop\nenroll: {key}\nedge: [\"{}\"]\nedge-ca: {}\nprotocol: quic\n\
             ha-connections: 2\nkeepalive: 2s\nidle-timeout: 6s\ningress:\n  - hostname: \"{{device}}.shop.example.test\"\n    \
             service: http://{}\n  - service: http_status:404\n",
            edge.tunnel,
            edge.ca().display(),
            origin.addr
        ),
    );
    let mut boards = Boards {
        dirs: Vec::new(),
        procs: Vec::new(),
        ids: Vec::new(),
        _origin: origin,
    };
    for i in 0..n {
        let dir = TempDir::new("board");
        std::fs::copy(&bin, dir.join("config.bin")).unwrap();
        let p = Proc::spawn(
            &format!("board{i}"),
            Command::new(MAILSLOT)
                .arg("run")
                .arg("--config")
                .arg(dir.join("config.bin")),
        );
        p.wait_lines("registered: ", 2);
        let out = run_ok(
            "mailslot identity",
            Command::new(MAILSLOT)
                .args(["identity", "--config"])
                .arg(dir.join("config.bin")),
        );
        let id = stdout(&out)
            .lines()
            .find_map(|l| l.strip_prefix("device id:"))
            .map(|s| s.trim().to_string())
            .unwrap();
        boards.ids.push(id);
        boards.dirs.push(dir);
        boards.procs.push(Some(p));
    }
    boards
}

/// One device from the admin API, as JSON.
fn api_device(edge: &EdgeProc, id: &str) -> serde_json::Value {
    let url = format!("http://{}/api/v1/devices/{id}", edge.admin_addr());
    let r = curl(&["-H", &format!("Authorization: Bearer {TOKEN}"), &url]);
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_str(&r.text()).unwrap()
}

/// Polls the admin API until `done` holds for device `id`, within [`WAIT`].
fn wait_device(
    edge: &EdgeProc,
    id: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let d = api_device(edge, id);
        if done(&d) {
            return d;
        }
        assert!(
            start.elapsed() < WAIT,
            "{what}: {d:#}\nedge log:\n{}",
            edge.proc.dump()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Stops board `i` cleanly and waits until the edge lists it offline.
fn stop_board(edge: &EdgeProc, boards: &mut Boards, i: usize) -> serde_json::Value {
    let mut p = boards.procs[i].take().unwrap();
    p.signal(15);
    p.wait_exit(WAIT).expect("the connector exits");
    wait_device(edge, &boards.ids[i], "offline", |d| d["state"] == "offline")
}

/// Real connectors from one golden config enrol with keys of their own, store their
/// credential once, serve their own hostnames, report health, and show offline when
/// stopped.
pub(crate) fn real_boards_enrol_serve_their_hostnames_and_report_health() {
    use std::os::unix::fs::PermissionsExt;
    let edge = start_edge(init_edge(&format!(
        "admin-listen: 127.0.0.1:0\nadmin-token: {TOKEN}\n{EDGE_TIMERS}"
    )));
    let mut boards = start_boards(&edge, 2);
    assert_ne!(boards.ids[0], boards.ids[1]);
    for (i, id) in boards.ids.iter().enumerate() {
        for file in ["device.key", "device.cred"] {
            let meta = std::fs::metadata(boards.dirs[i].join(file)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
        }
        let (status, _) = get(&edge, &format!("{id}.shop.example.test"), "/");
        assert_eq!(status, 200, "board {i} through its own hostname");
        let d = wait_device(&edge, id, "a health report", |d| !d["health"].is_null());
        assert_eq!(d["state"], "online");
        assert_eq!(d["fleet"], "shop");
        assert_eq!(
            d["hostnames"],
            serde_json::json!([format!("{id}.shop.example.test")])
        );
        assert_eq!(d["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(d["arch"], std::env::consts::ARCH);
        assert_eq!(d["connections"].as_array().unwrap().len(), 2, "{d:#}");
        let h = &d["health"];
        assert!(h["uptime_secs"].as_u64().unwrap() > 0, "{h:#}");
        assert!(h["mem_total_kib"].as_u64().unwrap() > 0, "{h:#}");
        assert!(h["root_total_kib"].as_u64().unwrap() > 0, "{h:#}");
    }
    // Another board's hostname is not this one's.
    let (status, _) = get(&edge, "zzzzzzzzzzzzzzzz.shop.example.test", "/");
    assert_eq!(status, 404);
    // A board started again registers with its stored credential and does not write
    // it again.
    let before = std::fs::metadata(boards.dirs[1].join("device.cred"))
        .unwrap()
        .modified()
        .unwrap();
    let d = stop_board(&edge, &mut boards, 1);
    assert_eq!(d["online"], false);
    let p = Proc::spawn(
        "board1-again",
        Command::new(MAILSLOT)
            .arg("run")
            .arg("--config")
            .arg(boards.dirs[1].join("config.bin")),
    );
    p.wait_lines("registered: ", 2);
    assert_eq!(
        std::fs::metadata(boards.dirs[1].join("device.cred"))
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
    wait_device(&edge, &boards.ids[1], "online again", |d| {
        d["state"] == "online"
    });
}

/// The fleet page in a real browser shows an online and an offline board.
pub(crate) fn the_fleet_page_shows_online_and_offline_boards() -> Result<(), Skip> {
    let browser = Browser::find()?;
    let edge = start_edge(init_edge(&format!(
        "admin-listen: 127.0.0.1:0\nadmin-token: {TOKEN}\n{EDGE_TIMERS}"
    )));
    let mut boards = start_boards(&edge, 2);
    let online = wait_device(&edge, &boards.ids[0], "health", |d| !d["health"].is_null());
    let offline = stop_board(&edge, &mut boards, 1);
    let dom = fleet_dom(&browser, &edge, "fleet-two-boards.png");
    let name = |d: &serde_json::Value| d["name"].as_str().unwrap().to_string();
    let (n0, n1) = (name(&online), name(&offline));
    assert_fleet_page(
        &dom,
        &[
            Shown {
                name: &n0,
                fleet: "shop",
                state: "online",
            },
            Shown {
                name: &n1,
                fleet: "shop",
                state: "offline",
            },
        ],
    );
    // The device's own page.
    let url = format!(
        "http://admin:{TOKEN}@{}/fleet/{}",
        edge.admin_addr(),
        boards.ids[0]
    );
    let page = browser.dump_dom(&url);
    assert!(page.dom.contains(&boards.ids[0]), "{}", page.dom);
    assert!(
        page.dom
            .contains(&format!("{}.shop.example.test", boards.ids[0])),
        "{}",
        page.dom
    );
    browser.keep_screenshot(&url, "fleet-device.png");
    Ok(())
}
