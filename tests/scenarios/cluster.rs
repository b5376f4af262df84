//! Three edges, one fleet: three `mailslot-edge serve` in namespaces of their own share a
//! `redis-server` in a fourth, which only the edges can reach; thirty boards behind the
//! carrier NAT, started from one golden `config.bin` (an enrolment key, every edge in
//! `edge:`, `ha-connections: 2`), each serving its own page. Every step waits on events
//! (log lines, answers) within a bound:
//!
//! 1. A visitor at every edge reaches every board (30 × 3 requests); the third edge
//!    holds no connection (the boards' two slots go to the first two entries), so its
//!    answers all come through the edge-to-edge hop, and each is the board's own page.
//! 2. Edge 1 killed (SIGKILL): the failover window, from the kill until a round of
//!    requests at edges 2 and 3 all succeed, is measured; after it, no new request fails
//!    until edge 1's presence has expired and the boards' connections have moved.
//! 3. Redis stopped for 60 s (longer than the 30 s presence and hostname TTLs, so what
//!    the edges wrote before has expired when it comes back): the edges serve every
//!    board, edge 3 forwarding by last-known presence; a board enrolling meanwhile is
//!    refused with the reason; Redis restarted, no request fails while the edges
//!    write their presence again, the edges follow it again with no restart, the
//!    board enrols and is served.
//! 4. Edge 1 back; a revocation issued through edge 3's admin API (`mailslot-edge
//!    devices revoke ID`) is enforced at all three within 2 s.
//!
//! The figures (failover window, revocation propagation, requests) are printed.
//!
//! `thirty_boards_bootstrap_from_one_edge`: the same world with `advertise:` on the
//! edges and only the first edge in the golden image's `edge:`. Every board is told the
//! three members and ends with its two connections where the rendezvous rule puts
//! them (computed here again from its device id), a visitor at every edge reaches
//! every board, and when the third edge is SIGKILLed its boards' connections move to
//! the first two, again by the rule. Four of the boards' networks drop UDP: they serve
//! over the HTTP/2 fallback and follow the members as the others do.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::netns::*;
use crate::scene::spawn_origin;

/// The boards of the fleet.
const BOARDS: usize = 30;
const FLEET: &str = "shop";
/// Each edge's admin listener, on the loopback of its own namespace.
const ADMIN: &str = "127.0.0.1:9090";
/// The UDP port edges forward visitors to each other on.
const MEMBER_PORT: u16 = 7850;
const SECRET: &str = "0123456789abcdef0123456789abcdef";
/// What the edges must agree on a revocation within.
const AGREE_WITHIN: Duration = Duration::from_secs(2);
/// How long Redis stays down: longer than the presence and hostname TTLs (30 s).
const REDIS_DOWN: Duration = Duration::from_secs(60);
/// After Redis comes back, requests are checked for this long: past the edges'
/// writing their presence again (`cluster::presence::RETRY_WHILE_FAILING` and a
/// reconnection) and the forwarding edge's trusting a miss again
/// (`cluster::forward::AFTER_OUTAGE`, 5 s after its last failed look-up).
const WATCH_AFTER_REDIS: Duration = Duration::from_secs(8);
/// The most the failover may take: presence expiry (30 s) or the boards' slots moving
/// to a live edge (30 s of quick retries), with room.
const FAILOVER_BOUND: Duration = Duration::from_secs(60);
/// After the kill, requests are checked until then: past presence expiry and the move.
const WATCH_AFTER_KILL: Duration = Duration::from_secs(45);

/// One board: its namespace, folder, origin and connector.
struct Board {
    ns: String,
    dir: TempDir,
    connector: Option<Proc>,
    _origin: Proc,
    _www: TempDir,
    /// Its device id, once it made its key.
    id: String,
}

/// The world of the scenario. Fields drop in order: processes, then the namespaces.
struct Cluster {
    boards: Vec<Board>,
    edges: Vec<Option<Proc>>,
    redis: Option<Proc>,
    redis_dir: TempDir,
    edge_dir: TempDir,
    golden: PathBuf,
    /// Each edge's namespace and address.
    edge_at: Vec<(String, String)>,
    redis_ip: String,
    net: Net,
}

/// One visitor request: edge, board, outcome.
type Visit = (usize, usize, Result<(), String>);

impl Cluster {
    fn edge_yml(&self, i: usize) -> PathBuf {
        self.edge_dir.join(&format!("edge{}.yml", i + 1))
    }

    fn start_redis(&mut self) {
        let ns = self.net.redis.clone().expect("the redis namespace");
        let p = Proc::spawn(
            "redis",
            self.net
                .cmd(&ns, "redis-server")
                .args(["--bind", &self.redis_ip, "--port", "6379"])
                .args(["--protected-mode", "no", "--save", ""])
                .args(["--appendonly", "yes", "--appendfsync", "everysec"])
                .arg("--dir")
                .arg(self.redis_dir.path()),
        );
        p.wait_line("eady to accept connections");
        self.redis = Some(p);
    }

    fn stop_redis(&mut self) {
        let mut p = self.redis.take().expect("redis is running");
        p.signal(15);
        assert!(p.wait_exit(WAIT).is_some(), "redis-server did not stop");
    }

    /// Starts edge `i` and waits until it serves HTTP and follows the fleet on Redis.
    fn start_edge(&mut self, i: usize) {
        let p = Proc::spawn(
            &format!("e{}", i + 1),
            self.net
                .cmd(&self.edge_at[i].0, EDGE)
                .arg("serve")
                .arg("--config")
                .arg(self.edge_yml(i)),
        );
        for line in [": HTTP on ", "cluster: following fleet changes on redis"] {
            p.wait_count(line, 1, WAIT)
                .unwrap_or_else(|| panic!("e{}: no {line:?}:\n{}", i + 1, p.dump()));
        }
        self.edges[i] = Some(p);
    }

    fn edge(&self, i: usize) -> &Proc {
        self.edges[i].as_ref().expect("edge running")
    }

    /// A new board behind the NAT with the golden config, its origin serving a page
    /// that names it; the connector is not started.
    fn add_board(&mut self) -> usize {
        let n = self.boards.len() + 1;
        let ns = self.net.add_device();
        let www = TempDir::new("www");
        std::fs::write(www.path().join("index.html"), page(n - 1)).unwrap();
        let origin = spawn_origin(&self.net, &ns, &format!("origin{n}"), www.path());
        let dir = TempDir::new("board");
        std::fs::copy(&self.golden, dir.join("config.bin")).unwrap();
        self.boards.push(Board {
            ns,
            dir,
            connector: None,
            _origin: origin,
            _www: www,
            id: String::new(),
        });
        n - 1
    }

    fn start_connector(&mut self, i: usize) {
        let b = &self.boards[i];
        let p = Proc::spawn(
            &format!("board{}", i + 1),
            self.net
                .cmd(&b.ns, MAILSLOT)
                .arg("run")
                .arg("--config")
                .arg(b.dir.join("config.bin")),
        );
        self.boards[i].connector = Some(p);
    }

    fn connector(&self, i: usize) -> &Proc {
        self.boards[i]
            .connector
            .as_ref()
            .expect("connector started")
    }

    /// The board's device id, from its key (made at its first start).
    fn read_id(&mut self, i: usize) -> String {
        let out = run_ok(
            "mailslot identity",
            Command::new(MAILSLOT)
                .args(["identity", "--config"])
                .arg(self.boards[i].dir.join("config.bin")),
        );
        let text = stdout(&out);
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("device id:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| panic!("no device id in {text:?}"));
        self.boards[i].id = id.clone();
        id
    }

    /// A visitor's GET of board `b`'s page through edge `e`: `Ok` when it is the
    /// board's own page.
    fn visit(&self, e: usize, b: usize, max_time: u32) -> Result<(), String> {
        visit(
            &self.net.visitor,
            &self.edge_at[e].1,
            &host_of(&self.boards[b].id),
            b,
            max_time,
        )
    }

    /// One request per edge in `edges` and board in `boards`, made concurrently (a
    /// thread per edge and third of the boards).
    fn round(&self, edges: &[usize], boards: &[usize]) -> Vec<Visit> {
        let jobs: Vec<(usize, Vec<(usize, String)>)> = edges
            .iter()
            .flat_map(|&e| {
                boards
                    .chunks(boards.len().div_ceil(3).max(1))
                    .map(move |c| (e, c.to_vec()))
            })
            .map(|(e, c)| {
                (
                    e,
                    c.into_iter()
                        .map(|b| (b, host_of(&self.boards[b].id)))
                        .collect(),
                )
            })
            .collect();
        let threads: Vec<_> = jobs
            .into_iter()
            .map(|(e, list)| {
                let visitor = self.net.visitor.clone();
                let ip = self.edge_at[e].1.clone();
                thread::spawn(move || {
                    list.into_iter()
                        .map(|(b, host)| (e, b, visit(&visitor, &ip, &host, b, 10)))
                        .collect::<Vec<Visit>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }

    fn all_boards(&self) -> Vec<usize> {
        (0..BOARDS).collect()
    }
}

/// The page board `b` serves.
fn page(b: usize) -> String {
    format!("board {}\n", b + 1)
}

fn host_of(id: &str) -> String {
    format!("{id}.{FLEET}.example.test")
}

/// A visitor's GET of `host` through the edge at `ip`: `Ok` when the answer is board
/// `b`'s page.
fn visit(visitor: &str, ip: &str, host: &str, b: usize, max_time: u32) -> Result<(), String> {
    let out = Command::new("ip")
        .args(["netns", "exec", visitor, "curl"])
        .args([
            "-sS",
            "--max-time",
            &max_time.to_string(),
            "-w",
            "\n%{http_code}",
        ])
        .args(["-H", &format!("Host: {host}")])
        .arg(format!("http://{ip}/"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    if !out.status.success() {
        return Err(format!(
            "curl: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if code != "200" || body != page(b) {
        return Err(format!("{code} {body:?}"));
    }
    Ok(())
}

fn failed(visits: &[Visit]) -> Vec<&Visit> {
    visits.iter().filter(|v| v.2.is_err()).collect()
}

/// The edges' folder: keys, CA (for every edge address), one `edge{n}.yml` per edge;
/// with `members`, each edge tells connectors the members (`advertise:`).
fn edge_dir(edge_ips: &[String], redis_ip: &str, members: bool) -> TempDir {
    let dir = TempDir::new("cluster-edges");
    let mut init = Command::new(EDGE);
    init.args(["init", "--dir"]).arg(dir.path());
    for ip in edge_ips {
        init.args(["--hostname", ip]);
    }
    run_ok("mailslot-edge init", &mut init);
    for (i, ip) in edge_ips.iter().enumerate() {
        let advertise = match members {
            true => format!("  advertise: {ip}:7844\n"),
            false => String::new(),
        };
        std::fs::write(
            dir.join(&format!("edge{}.yml", i + 1)),
            format!(
                "name: e{}\ntunnel-listen: 0.0.0.0:7844\nhttp-listen: 0.0.0.0:80\n\
                 https-listen: none\ncert: edge.crt\nkey: edge.key\nsigning-key: signing.key\n\
                 admin-listen: {ADMIN}\ncluster:\n  redis: redis://{redis_ip}:6379/0\n  \
                 secret: {SECRET}\n  member: {ip}:{MEMBER_PORT}\n{advertise}",
                i + 1
            ),
        )
        .unwrap();
    }
    dir
}

/// The golden image's config: the enrolment key, every edge, `{device}` hostnames.
fn golden(edge_dir: &Path, key: &str, edge_ips: &[String]) -> PathBuf {
    let edges: Vec<String> = edge_ips.iter().map(|ip| format!("\"{ip}:7844\"")).collect();
    let yaml = format!(
        "tunnel: {FLEET}\nenroll: {key}\nedge: [{}]\nedge-ca: {}\n\
         ha-connections: 2\ningress:\n  - hostname: \"{{device}}.{FLEET}.example.test\"\n    \
         service: http://127.0.0.1:8080\n  - service: http_status:404\n",
        edges.join(", "),
        edge_dir.join("ca.pem").display(),
    );
    let dir = edge_dir.join("golden");
    std::fs::create_dir_all(&dir).unwrap();
    compile(&dir, &yaml)
}

/// Builds the namespaces, starts Redis and the three edges, makes the golden image
/// (with `members`: edges with `advertise:`, the first edge alone in `edge:`).
fn build(members: bool) -> Cluster {
    let mut net = Net::new();
    let (e3_ns, e3_ip) = net.add_edge();
    let edge_at = vec![
        (net.edges[0].clone(), EDGE_IPS[0].to_string()),
        (net.edges[1].clone(), EDGE_IPS[1].to_string()),
        (e3_ns, e3_ip),
    ];
    let edge_ips: Vec<String> = edge_at.iter().map(|(_, ip)| ip.clone()).collect();
    let clients: Vec<&str> = edge_ips.iter().map(String::as_str).collect();
    let redis_ip = net.add_redis(&clients);
    let edge_dir = edge_dir(&edge_ips, &redis_ip, members);
    let mut c = Cluster {
        boards: Vec::new(),
        edges: vec![None, None, None],
        redis: None,
        redis_dir: TempDir::new("cluster-redis"),
        golden: PathBuf::new(),
        edge_dir,
        edge_at,
        redis_ip,
        net,
    };
    c.start_redis();
    for i in 0..3 {
        c.start_edge(i);
    }
    let out = run_ok(
        "mailslot-edge enroll-key",
        c.net
            .cmd(&c.edge_at[0].0, EDGE)
            .arg("enroll-key")
            .arg("--config")
            .arg(c.edge_yml(0))
            .args(["--fleet", FLEET])
            .args(["--hostname", &format!("{{device}}.{FLEET}.example.test")])
            .args(["--max-devices", "40", "--expires", "1d"]),
    );
    let key = stdout(&out).trim().to_string();
    let bootstrap = match members {
        true => &edge_ips[..1],
        false => &edge_ips[..],
    };
    c.golden = golden(c.edge_dir.path(), &key, bootstrap);
    c
}

pub fn three_edges_one_redis_thirty_boards() {
    let mut c = build(false);
    // The devices' side can never reach Redis: only the edges can.
    let probe = c.net.sh_status(
        &c.net.device,
        &format!(
            "python3 -c \"import socket; socket.create_connection(('{}', 6379), 2)\"",
            c.redis_ip
        ),
    );
    assert!(!probe.status.success(), "a device reached Redis");

    // Thirty boards from one config.bin enrol and register, a slot at e1 and e2 each.
    let start = Instant::now();
    for _ in 0..BOARDS {
        let i = c.add_board();
        c.start_connector(i);
    }
    for i in 0..BOARDS {
        for at in ["at edge e1 ", "at edge e2 "] {
            c.connector(i)
                .wait_count(at, 1, Duration::from_secs(60))
                .unwrap_or_else(|| {
                    panic!(
                        "board {} not registered {at}:\n{}",
                        i + 1,
                        c.connector(i).dump()
                    )
                });
        }
    }
    println!(
        "{BOARDS} boards enrolled and registered at e1 and e2 in {:?}",
        start.elapsed()
    );
    for i in 0..BOARDS {
        c.read_id(i);
        assert_eq!(
            c.connector(i).count("at edge e3 "),
            0,
            "board {} at e3",
            i + 1
        );
    }
    let boards = c.all_boards();

    // 1. A visitor at every edge reaches every board; e3 holds no connection, so its
    // answers (each board's own page) come through the hop.
    let start = Instant::now();
    let visits = c.round(&[0, 1, 2], &boards);
    assert_eq!(visits.len(), BOARDS * 3);
    assert!(failed(&visits).is_empty(), "{:#?}", failed(&visits));
    println!(
        "{} requests, a visitor at each of 3 edges to each of {BOARDS} boards: all the \
         boards' own pages, in {:?}",
        visits.len(),
        start.elapsed()
    );
    let mut requests = visits.len();

    // 2. e1 killed.
    let killed = Instant::now();
    c.edge(0).signal(9);
    c.edges[0] = None;
    let mut window = None;
    let mut before = (0, 0);
    let mut after = (0, 0);
    let mut late_failures = Vec::new();
    while killed.elapsed() < WATCH_AFTER_KILL || window.is_none() {
        assert!(
            killed.elapsed() < FAILOVER_BOUND,
            "no full round at e2 and e3 within {FAILOVER_BOUND:?} of the kill; last \
             failures: {late_failures:#?}"
        );
        let at = killed.elapsed();
        let visits = c.round(&[1, 2], &boards);
        let bad: Vec<Visit> = failed(&visits).into_iter().cloned().collect();
        match window {
            None if bad.is_empty() => {
                window = Some(at);
                after.0 += visits.len();
            }
            None => {
                before.0 += visits.len();
                before.1 += bad.len();
                late_failures = bad;
            }
            Some(_) => {
                after.0 += visits.len();
                after.1 += bad.len();
                assert!(
                    bad.is_empty(),
                    "{at:?} after the kill, past the failover window {window:?}: {bad:#?}"
                );
            }
        }
    }
    let window = window.unwrap();
    // By now each board's first slot has moved from the dead e1 to a live edge.
    let moved = (0..BOARDS)
        .filter(|&i| c.connector(i).count(" registered: ") >= 3)
        .count();
    println!(
        "e1 killed: failover window {window:?} (from the kill to the first round at e2 and \
         e3 all served); before it {} of {} requests failed ({:?}); after it {} requests \
         until {:?} after the kill, none failed; {moved} of {BOARDS} boards had moved \
         their e1 connection by then",
        before.1,
        before.0,
        late_failures.first(),
        after.0,
        killed.elapsed()
    );
    requests += before.0 + after.0;

    // 3. Redis down for 60 s: the edges serve what they hold, e3 forwards by last-known
    // presence; an enrolment is refused with the reason.
    c.stop_redis();
    let stopped = Instant::now();
    for e in [1, 2] {
        c.edge(e)
            .wait_count("cluster: lost redis", 1, WAIT)
            .unwrap_or_else(|| panic!("e{} did not notice:\n{}", e + 1, c.edge(e).dump()));
    }
    let late = c.add_board();
    c.start_connector(late);
    let refused = c
        .connector(late)
        .wait_line_within("unreachable or failing", WAIT)
        .unwrap_or_else(|| panic!("no refusal:\n{}", c.connector(late).dump()));
    assert!(
        refused.contains("fleet store: redis redis://")
            && refused.contains("is not enrolled until it answers; try again later"),
        "{refused}"
    );
    println!("enrolment during the outage refused: {refused}");
    let mut outage = 0;
    while stopped.elapsed() < REDIS_DOWN {
        let visits = c.round(&[1, 2], &boards);
        assert!(
            failed(&visits).is_empty(),
            "{:?} into the Redis outage: {:#?}",
            stopped.elapsed(),
            failed(&visits)
        );
        outage += visits.len();
    }
    println!(
        "Redis down for {:?}: {outage} requests at e2 and e3, none failed",
        stopped.elapsed()
    );
    requests += outage;

    // Redis back, with nothing of what the edges wrote before (its TTLs ran out during
    // the outage): no request fails while the edges write their presence again.
    c.start_redis();
    let back = Instant::now();
    let mut since_back = 0;
    while back.elapsed() < WATCH_AFTER_REDIS {
        let at = back.elapsed();
        let visits = c.round(&[1, 2], &boards);
        assert!(
            failed(&visits).is_empty(),
            "{at:?} after Redis came back: {:#?}",
            failed(&visits)
        );
        since_back += visits.len();
    }
    println!(
        "Redis back: {since_back} requests at e2 and e3 in the {:?} after it, none failed",
        back.elapsed()
    );
    requests += since_back;

    // The edges follow it again with no restart; the board enrols.
    for e in [1, 2] {
        c.edge(e)
            .wait_count("cluster: following fleet changes", 2, WAIT)
            .unwrap_or_else(|| panic!("e{} not following:\n{}", e + 1, c.edge(e).dump()));
    }
    c.connector(late)
        .wait_count(" registered: ", 1, Duration::from_secs(60))
        .unwrap_or_else(|| {
            panic!(
                "no enrolment after Redis came back:\n{}",
                c.connector(late).dump()
            )
        });
    println!(
        "Redis back: board {} enrolled {:?} after Redis restarted (its retries back off), \
         no edge restarted",
        late + 1,
        back.elapsed()
    );
    c.read_id(late);
    let mut with_late = boards.clone();
    with_late.push(late);
    let visits = c.round(&[1, 2], &with_late);
    assert!(failed(&visits).is_empty(), "{:#?}", failed(&visits));
    requests += visits.len();

    // 4. e1 back; a revocation at e3 holds at all three within 2 s.
    c.start_edge(0);
    let visits = c.round(&[0, 1, 2], &with_late);
    assert!(failed(&visits).is_empty(), "{:#?}", failed(&visits));
    requests += visits.len();
    let bad = 6;
    let id = c.boards[bad].id.clone();
    let start = Instant::now();
    run_ok(
        "mailslot-edge devices revoke",
        c.net
            .cmd(&c.edge_at[2].0, EDGE)
            .args(["devices", "revoke", &id, "--config"])
            .arg(c.edge_yml(2)),
    );
    let mut cut: [Option<Duration>; 3] = [None; 3];
    while cut.iter().any(Option::is_none) {
        assert!(
            start.elapsed() < AGREE_WITHIN,
            "board {} still served after {AGREE_WITHIN:?}: {cut:?}",
            bad + 1
        );
        for (e, at) in cut.iter_mut().enumerate() {
            if at.is_none() {
                requests += 1;
                if c.visit(e, bad, 2).is_err() {
                    *at = Some(start.elapsed());
                }
            }
        }
    }
    let worst = cut.iter().flatten().max().copied().unwrap();
    println!(
        "revoked at e3: refused at e1, e2, e3 after {:?}, {:?}, {:?} (all within {worst:?})",
        cut[0].unwrap(),
        cut[1].unwrap(),
        cut[2].unwrap()
    );
    c.connector(bad)
        .wait_line_within("is revoked", WAIT)
        .unwrap_or_else(|| panic!("no revocation at the board:\n{}", c.connector(bad).dump()));
    let others: Vec<usize> = with_late.iter().copied().filter(|&b| b != bad).collect();
    let visits = c.round(&[0, 1, 2], &others);
    assert!(failed(&visits).is_empty(), "{:#?}", failed(&visits));
    requests += visits.len();
    for e in 0..3 {
        assert!(
            c.visit(e, bad, 5).is_err(),
            "board {} served at e{}",
            bad + 1,
            e + 1
        );
    }
    println!("{requests} visitor requests in all");
}

/// The first 16 bytes of SHA-256 of `text`, as bytes.
fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().to_vec()
}

/// Where the rendezvous rule puts the `slots` connections of device `id` among
/// `members` (`connector::rendezvous::assign`, written again here from its doc): each
/// slot in turn takes its highest scored member (SHA-256 of the device's seed, the
/// slot's number and the address) that holds fewer than half the slots, rounded up.
fn expected_shares(id: &str, members: &[String], slots: usize) -> Vec<String> {
    let seed = sha256(&[id.as_bytes()]);
    let seed = &seed[..16];
    let cap = if members.len() >= 2 {
        slots.div_ceil(2)
    } else {
        slots
    };
    let mut load = vec![0usize; members.len()];
    let mut out = Vec::new();
    for slot in 0..slots {
        let mut ranked: Vec<usize> = (0..members.len()).collect();
        ranked.sort_by_key(|&i| {
            let d = sha256(&[seed, &(slot as u64).to_be_bytes(), members[i].as_bytes()]);
            std::cmp::Reverse(u64::from_be_bytes(d[..8].try_into().unwrap()))
        });
        let pick = *ranked.iter().find(|&&i| load[i] < cap).unwrap();
        load[pick] += 1;
        out.push(members[pick].clone());
    }
    out
}

/// The edge address (`IP:7844`) each of a connector's two slots registered at last,
/// from its log (`connection N registered: ... at edge eK (ADDR) over ...`).
fn slot_edges(log: &str) -> [Option<String>; 2] {
    let mut at = [None, None];
    for line in log.lines() {
        for (s, slot) in at.iter_mut().enumerate() {
            if line.contains(&format!("connection {s} registered: ")) {
                *slot = line
                    .split(" (")
                    .nth(2)
                    .and_then(|r| r.split(')').next())
                    .map(String::from);
            }
        }
    }
    at
}

impl Cluster {
    /// Waits until every board's two connections are where `members` and the rule put
    /// them, at most `within`; how long that took.
    fn wait_placed(&self, members: &[String], within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let wrong: Vec<(usize, [Option<String>; 2], Vec<String>)> = (0..BOARDS)
                .filter_map(|i| {
                    let want = expected_shares(&self.boards[i].id, members, 2);
                    let have = slot_edges(&self.connector(i).dump());
                    let ok = have[0].as_deref() == Some(want[0].as_str())
                        && have[1].as_deref() == Some(want[1].as_str());
                    (!ok).then_some((i, have, want))
                })
                .collect();
            if wrong.is_empty() {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "{} boards not where the rule puts them after {within:?}: {:?}; board {}:\n{}",
                wrong.len(),
                wrong.iter().take(3).collect::<Vec<_>>(),
                wrong[0].0 + 1,
                self.connector(wrong[0].0).dump()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Boards of [`thirty_boards_bootstrap_from_one_edge`] whose network drops UDP.
const UDP_BLOCKED: usize = 4;

pub fn thirty_boards_bootstrap_from_one_edge() {
    let mut c = build(true);
    let mut members: Vec<String> = c
        .edge_at
        .iter()
        .map(|(_, ip)| format!("{ip}:7844"))
        .collect();
    members.sort_by_key(|m| m.parse::<std::net::SocketAddr>().unwrap());
    // Every edge tells the three members once it has read them.
    let told = format!(
        "cluster: members told to connectors: {}",
        members.join(", ")
    );
    for e in 0..3 {
        c.edge(e)
            .wait_count(&told, 1, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("e{}: {told:?} not logged:\n{}", e + 1, c.edge(e).dump()));
    }
    let start = Instant::now();
    for _ in 0..BOARDS {
        let i = c.add_board();
        if i < UDP_BLOCKED {
            // Their network drops UDP: they serve over the HTTP/2 fallback.
            c.net.sh(
                &c.boards[i].ns,
                "iptables -I OUTPUT -p udp --dport 7844 -j DROP",
            );
        }
        c.start_connector(i);
    }
    let told = format!("told the cluster's members: {}", members.join(", "));
    for i in 0..BOARDS {
        c.connector(i)
            .wait_count(&told, 1, Duration::from_secs(60))
            .unwrap_or_else(|| panic!("board {}: not told:\n{}", i + 1, c.connector(i).dump()));
        c.read_id(i);
    }
    let placed = c.wait_placed(&members, Duration::from_secs(60));
    let per_edge: Vec<usize> = members
        .iter()
        .map(|m| {
            (0..BOARDS)
                .map(|i| {
                    slot_edges(&c.connector(i).dump())
                        .iter()
                        .filter(|e| e.as_deref() == Some(m.as_str()))
                        .count()
                })
                .sum()
        })
        .collect();
    println!(
        "{BOARDS} boards from one bootstrap address (e1): told the 3 members and placed by \
         the rendezvous rule {:?} after the start ({placed:?} after the last was told); \
         connections per edge {per_edge:?}",
        start.elapsed()
    );
    assert!(per_edge.iter().all(|&n| n > 0), "{per_edge:?}");
    for i in 0..BOARDS {
        let log = c.connector(i).dump();
        let h2 = (0..2).all(|s| {
            log.lines()
                .rev()
                .find(|l| l.contains(&format!("connection {s} registered: ")))
                .is_some_and(|l| l.ends_with("over http2"))
        });
        assert_eq!(
            h2,
            i < UDP_BLOCKED,
            "board {}: over HTTP/2 {h2}:\n{log}",
            i + 1
        );
    }
    let boards = c.all_boards();
    let visits = c.round(&[0, 1, 2], &boards);
    assert!(failed(&visits).is_empty(), "{:#?}", failed(&visits));

    // e3 killed: its boards' connections move to e1 and e2, by the rule over those two.
    c.edge(2).signal(9);
    c.edges[2] = None;
    let alive: Vec<String> = members
        .iter()
        .filter(|m| !m.starts_with(&format!("{}:", c.edge_at[2].1)))
        .cloned()
        .collect();
    let moved = c.wait_placed(&alive, Duration::from_secs(60));
    println!(
        "e3 killed: every board's connections at e1 and e2 where the rule puts them {moved:?} \
         after the kill"
    );
    let visits = c.round(&[0, 1], &boards);
    assert!(failed(&visits).is_empty(), "{:#?}", failed(&visits));
}
