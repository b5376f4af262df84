//! A fleet from one golden image: twenty boards behind the carrier NAT, each in its own
//! namespace with its own origin and its own state folder, all started from the same
//! `config.bin` carrying an enrolment key. They enrol, get distinct hostnames and serve
//! their own pages; one is stopped and shows offline; the edge restarts with its
//! inventory intact; the quota refuses a 21st board; a revoked board is cut and cannot
//! enrol again.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::netns::*;
use crate::scene::spawn_origin;

/// Boards the enrolment key admits.
const QUOTA: usize = 20;
/// The admin listener, on the loopback of the edge's namespace.
const ADMIN: &str = "127.0.0.1:9090";
const FLEET: &str = "shop";

/// One board: its namespace, folder, origin and connector.
struct Board {
    ns: String,
    dir: TempDir,
    connector: Option<Proc>,
    _origin: Proc,
    _www: TempDir,
    /// Its device id (`mailslot identity`), once it made its key.
    id: String,
}

struct Fleet {
    boards: Vec<Board>,
    edge: Option<Proc>,
    edge_dir: TempDir,
    golden: PathBuf,
    net: Net,
}

impl Fleet {
    fn edge_yml(&self) -> PathBuf {
        self.edge_dir.path().join("edge.yml")
    }

    fn start_edge(&mut self) {
        let p = Proc::spawn(
            "e1",
            self.net
                .cmd(&self.net.edges[0], EDGE)
                .arg("serve")
                .arg("--config")
                .arg(self.edge_yml()),
        );
        p.wait_line(": HTTP on ");
        self.edge = Some(p);
    }

    /// A new board behind the NAT with the golden config in a folder of its own, its
    /// origin serving a page that names it; the connector is not started.
    fn add_board(&mut self) -> usize {
        let n = self.boards.len() + 1;
        let ns = self.net.add_device();
        let www = TempDir::new("www");
        std::fs::write(www.path().join("index.html"), format!("board {n}\n")).unwrap();
        let origin = spawn_origin(&self.net, &ns, &format!("origin{n}"), www.path());
        let dir = TempDir::new("board");
        std::fs::copy(&self.golden, dir.path().join("config.bin")).unwrap();
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
                .arg(b.dir.path().join("config.bin")),
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
        let out = Command::new(MAILSLOT)
            .args(["identity", "--config"])
            .arg(self.boards[i].dir.path().join("config.bin"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let id = text
            .lines()
            .find_map(|l| l.strip_prefix("device id:"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| panic!("no device id in {text:?}"));
        self.boards[i].id = id.clone();
        id
    }

    /// The admin API's device list, as JSON.
    fn devices(&self) -> serde_json::Value {
        let out = self.net.sh(
            &self.net.edges[0],
            &format!("curl -sS --max-time 5 'http://{ADMIN}/api/v1/devices?limit=1000'"),
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// Each listed device by id.
    fn by_id(&self) -> HashMap<String, serde_json::Value> {
        let list = self.devices();
        list["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["id"].as_str().unwrap().to_string(), d.clone()))
            .collect()
    }

    /// Polls the device list until `done` holds for it, within `within`.
    fn wait_devices(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&HashMap<String, serde_json::Value>) -> bool,
    ) -> HashMap<String, serde_json::Value> {
        let start = Instant::now();
        loop {
            let d = self.by_id();
            if done(&d) {
                return d;
            }
            assert!(
                start.elapsed() < within,
                "{what} not within {within:?}; devices: {d:#?}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// A visitor's GET of `host`'s page through the edge: status and body.
    fn visit(&self, host: &str) -> (u16, String) {
        let out = self
            .net
            .cmd(&self.net.visitor, "curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(["-H", &format!("Host: {host}")])
            .arg(format!("http://{}/", EDGE_IPS[0]))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn edge_cmd(&self, args: &[&str]) -> std::process::Output {
        self.net
            .cmd(&self.net.edges[0], EDGE)
            .args(args)
            .arg("--config")
            .arg(self.edge_yml())
            .output()
            .unwrap()
    }
}

fn host_of(id: &str) -> String {
    format!("{id}.{FLEET}.example.test")
}

fn online(d: &serde_json::Value) -> bool {
    d["online"].as_bool() == Some(true)
}

/// The edge's folder: keys, CA, `edge.yml` with an admin listener and the fleet store.
fn edge_dir() -> TempDir {
    let dir = TempDir::new("fleet-edge");
    run_ok(
        "mailslot-edge init",
        Command::new(EDGE)
            .args(["init", "--dir"])
            .arg(dir.path())
            .args(["--hostname", EDGE_IPS[0]]),
    );
    std::fs::write(
        dir.path().join("edge.yml"),
        format!(
            "name: e1\ntunnel-listen: 0.0.0.0:7844\nhttp-listen: 0.0.0.0:80\n\
             https-listen: none\ncert: edge.crt\nkey: edge.key\nsigning-key: signing.key\n\
             admin-listen: {ADMIN}\n"
        ),
    )
    .unwrap();
    dir
}

/// The golden image's config: the enrolment key, one edge, `{device}` hostnames.
fn golden(edge_dir: &Path, key: &str) -> PathBuf {
    let yaml = format!(
        "tunnel: {FLEET}\nenroll: {key}\nedge: [\"{}:7844\"]\nedge-ca: {}\n\
         ha-connections: 2\ningress:\n  - hostname: \"{{device}}.{FLEET}.example.test\"\n    \
         service: http://127.0.0.1:8080\n  - service: http_status:404\n",
        EDGE_IPS[0],
        edge_dir.join("ca.pem").display(),
    );
    let dir = edge_dir.join("golden");
    std::fs::create_dir_all(&dir).unwrap();
    compile(&dir, &yaml)
}

pub fn twenty_boards_from_one_golden_image() {
    let net = Net::new();
    let edge_dir = edge_dir();
    let out = Command::new(EDGE)
        .arg("enroll-key")
        .arg("--config")
        .arg(edge_dir.path().join("edge.yml"))
        .args(["--fleet", FLEET])
        .args(["--hostname", &format!("{{device}}.{FLEET}.example.test")])
        .args(["--max-devices", &QUOTA.to_string(), "--expires", "1d"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let golden = golden(edge_dir.path(), &key);
    let mut f = Fleet {
        boards: Vec::new(),
        edge: None,
        edge_dir,
        golden,
        net,
    };
    f.start_edge();

    // Twenty boards from the one config.bin enrol and register.
    for _ in 0..QUOTA {
        let i = f.add_board();
        f.start_connector(i);
    }
    let start = Instant::now();
    for i in 0..QUOTA {
        f.connector(i)
            .wait_count(" registered: ", 2, WAIT)
            .unwrap_or_else(|| {
                panic!(
                    "board {} did not register:\n{}",
                    i + 1,
                    f.connector(i).dump()
                )
            });
    }
    println!(
        "{QUOTA} boards enrolled and registered in {:?}",
        start.elapsed()
    );
    let ids: Vec<String> = (0..QUOTA).map(|i| f.read_id(i)).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), QUOTA, "{ids:?}");

    // The inventory lists each, online, with its own hostname; each serves its page.
    let listed = f.wait_devices(WAIT, "all boards online", |d| {
        d.len() == QUOTA && d.values().all(online)
    });
    for (i, id) in ids.iter().enumerate() {
        let d = &listed[id];
        assert_eq!(d["fleet"], FLEET);
        assert_eq!(d["hostnames"], serde_json::json!([host_of(id)]), "{d:#}");
        assert_eq!(d["connections"].as_array().unwrap().len(), 2, "{d:#}");
        assert_eq!(f.visit(&host_of(id)), (200, format!("board {}\n", i + 1)));
    }

    // The quota refuses a 21st board, and says so.
    let extra = f.add_board();
    f.start_connector(extra);
    f.connector(extra)
        .wait_line_within("is full: 20 devices enrolled, --max-devices 20", WAIT)
        .unwrap_or_else(|| panic!("no quota refusal:\n{}", f.connector(extra).dump()));
    assert_eq!(f.by_id().len(), QUOTA);
    f.boards[extra].connector = None;

    // A board stopped (power cut) shows offline, last seen within the idle timeout.
    let gone = 4;
    let cut = unix_now();
    f.boards[gone].connector = None; // killed on drop
    let d = f.wait_devices(Duration::from_secs(90), "board 5 offline", |d| {
        !online(&d[&ids[gone]])
    });
    let last_seen = d[&ids[gone]]["last_seen"]["unix"].as_u64().unwrap();
    println!(
        "board 5 shown offline {:?} after it stopped; last seen {}s before the stop",
        Duration::from_secs(unix_now() - cut),
        cut as i64 - last_seen as i64
    );
    assert!(
        last_seen + 20 >= cut && last_seen <= cut + 4,
        "last seen {last_seen}, stopped at {cut}"
    );
    assert_eq!(f.visit(&host_of(&ids[gone])).0, 404);

    // The edge restarts: the inventory is intact, the boards come back online.
    let mut e = f.edge.take().unwrap();
    e.signal(15);
    assert!(e
        .wait_exit(Duration::from_secs(10))
        .expect("edge exits")
        .success());
    drop(e);
    f.start_edge();
    let d = f.wait_devices(Duration::from_secs(60), "19 boards online again", |d| {
        d.len() == QUOTA && d.values().filter(|x| online(x)).count() == QUOTA - 1
    });
    assert!(!online(&d[&ids[gone]]));
    assert_eq!(d[&ids[gone]]["last_seen"]["unix"].as_u64(), Some(last_seen));
    for (i, id) in ids.iter().enumerate().filter(|(i, _)| *i != gone) {
        assert_eq!(f.visit(&host_of(id)), (200, format!("board {}\n", i + 1)));
    }

    // A revoked board is cut at once and cannot enrol again.
    let bad = 6;
    let out = f.edge_cmd(&["devices", "revoke", &ids[bad]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let revoked_at = Instant::now();
    while f.visit(&host_of(&ids[bad])).0 == 200 {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(2),
            "still served"
        );
        thread::sleep(Duration::from_millis(50));
    }
    println!(
        "board 7 unreachable {:?} after its revocation",
        revoked_at.elapsed()
    );
    f.boards[bad].connector = None;
    f.start_connector(bad);
    f.connector(bad)
        .wait_line_within("is revoked", WAIT)
        .unwrap_or_else(|| panic!("no revocation refusal:\n{}", f.connector(bad).dump()));
    let d = f.by_id();
    assert_eq!(d[&ids[bad]]["state"], "revoked");
    assert_eq!(d.len(), QUOTA);
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
