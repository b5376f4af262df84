//! Two real `mailslot-edge serve` processes sharing one real `redis-server` (`cluster:`
//! in their edge.yml): one tunnel per hostname across both, a device enrolled at one
//! edge is known at the other, the quota
//! of an enrolment key counts across both, a revocation issued at one edge cuts the
//! device's connection at the other within 2 s; with Redis stopped both keep serving
//! the devices they hold and refuse enrolment with the reason, not for good; with Redis
//! back, enrolment and revocation work again with no edge restarted. Devices are spoken
//! from the test as a connector speaks them (`fleet`'s helpers).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::fleet::{endpoint, enroll_key, register, runtime, status_of, Attempt, Device, Reply};

/// How long an edge uses a presence look-up before asking Redis again
/// (`cluster::forward::CACHE_FOR`).
const CACHE_FOR: Duration = Duration::from_secs(1);

/// What the edges must agree on within: a revocation made at one holds at all.
const AGREE_WITHIN: Duration = Duration::from_secs(2);

/// A `redis-server` on a unix socket in its own folder (no TCP port), with the
/// append-only file docs/cluster.md recommends.
pub(crate) struct RedisProc {
    dir: TempDir,
    proc: Option<Proc>,
}

impl RedisProc {
    /// Starts one, or says why not (redis-server missing).
    pub(crate) fn start() -> Result<RedisProc, Skip> {
        let have = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !have {
            return Err(Skip(
                "needs redis-server (apt-get install redis-server): it is missing".into(),
            ));
        }
        let mut r = RedisProc {
            dir: TempDir::new("cluster-redis"),
            proc: None,
        };
        r.restart();
        Ok(r)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// Stops it with SIGTERM (it writes its append-only file) and waits for it to exit.
    fn stop(&mut self) {
        let mut p = self.proc.take().expect("redis is running");
        p.signal(15);
        assert!(p.wait_exit(WAIT).is_some(), "redis-server did not stop");
    }

    /// Starts it (again) on the same socket and files.
    fn restart(&mut self) {
        let p = Proc::spawn(
            "redis",
            Command::new("redis-server")
                .args(["--port", "0", "--unixsocket"])
                .arg(self.socket())
                .args(["--unixsocketperm", "700", "--save", ""])
                .args(["--appendonly", "yes", "--appendfsync", "everysec"])
                .arg("--dir")
                .arg(self.dir.path()),
        );
        // "ready to accept connections at PATH" (7.0), "Ready to accept connections unix" (7.2).
        p.wait_line("eady to accept connections");
        self.proc = Some(p);
    }
}

/// The cluster secret of the tests' edges.
pub(crate) const SECRET: &str = "0123456789abcdef0123456789abcdef";

/// An edge of the cluster on `redis`; `signing_key`: another edge's (all the edges of
/// a fleet sign and verify with one key).
fn cluster_edge(redis: &RedisProc, member: &str, signing_key: Option<PathBuf>) -> EdgeProc {
    cluster_edge_with(redis, member, SECRET, signing_key, "")
}

/// [`cluster_edge`] holding `secret`, with `extra` settings.
pub(crate) fn cluster_edge_with(
    redis: &RedisProc,
    member: &str,
    secret: &str,
    signing_key: Option<PathBuf>,
    extra: &str,
) -> EdgeProc {
    let mut yaml = format!(
        "admin-listen: 127.0.0.1:0\n{extra}cluster:\n  redis: {}\n  secret: {secret}\n  \
         member: {member}\n",
        redis.socket().display()
    );
    if let Some(k) = signing_key {
        yaml = format!("signing-key: {}\n{yaml}", k.display());
    }
    let edge = start_edge(init_edge(&yaml));
    edge.proc
        .wait_line("cluster: following fleet changes on redis unix://");
    edge
}

/// The member address `edge` announces (`member: 127.0.0.1:0` gets a free port).
fn member_of(edge: &EdgeProc) -> String {
    edge.proc.logged_addr(" as member ").to_string()
}

/// An admin API call (`GET`, or `POST` for a revocation) on `edge`; its status.
async fn admin(edge: &EdgeProc, method: &str, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", edge.admin_addr());
    let method = method.to_string();
    tokio::task::spawn_blocking(move || {
        let r = curl(&["-X", &method, &url]);
        (r.status, r.text())
    })
    .await
    .unwrap()
}

/// Waits until `edge`'s admin API knows device `id`, at most [`AGREE_WITHIN`].
async fn known_within(edge: &EdgeProc, id: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body) = admin(edge, "GET", &format!("/api/v1/devices/{id}")).await;
        if status == 200 {
            assert!(body.contains(id), "{body}");
            return start.elapsed();
        }
        assert!(
            start.elapsed() < AGREE_WITHIN,
            "device {id} unknown at the other edge after {AGREE_WITHIN:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn two_edges_share_one_fleet_through_redis() -> Result<(), Skip> {
    let mut redis = RedisProc::start()?;
    let a = cluster_edge(&redis, "127.0.0.1:0", None);
    let b = cluster_edge(&redis, "127.0.0.1:0", Some(a.dir.join("signing.key")));
    let member_a = member_of(&a);
    let key = enroll_key(a.dir.path(), &["--max-devices", "2", "--expires", "1h"]);
    let (d1, d2, d3, d4) = (
        Device::new("board-1"),
        Device::new("board-2"),
        Device::new("board-3"),
        Device::new("board-4"),
    );
    // One tunnel per hostname across the cluster: a second tunnel claiming a hostname
    // a tunnel at the other edge serves is refused, with where it is served.
    let rules = "  - hostname: dev42.example.com\n    service: http_status:418\n  - service: http_status:404\n";
    let one = TempDir::new("cluster-one");
    let token_one = a.token("one", &["dev42.example.com"], "1h");
    let _one = start_connector(one.path(), &device_yaml(&a, &token_one, 1, rules), 1);
    let two = TempDir::new("cluster-two");
    let token_two = b.token("two", &["dev42.example.com"], "1h");
    let two_proc = Proc::spawn(
        "connector",
        Command::new(MAILSLOT)
            .arg("run")
            .arg("--config")
            .arg(compile(two.path(), &device_yaml(&b, &token_two, 1, rules))),
    );
    let refused = two_proc.wait_line("served by another tunnel");
    assert!(
        refused.contains(&format!(
            "hostname dev42.example.com is served by another tunnel in the cluster (at edge \
             {member_a})"
        )),
        "{refused}"
    );
    drop(two_proc);

    let rt = runtime();
    let _entered = rt.enter();
    let (ep_a, ep_b) = (endpoint(&a.ca()), endpoint(&b.ca()));
    rt.block_on(async {
        // Enrolled at A, known at B.
        let (link_a1, reply) = register(&ep_a, a.tunnel, &Attempt::enrol(&d1, &key)).await;
        let cred1 = reply.registered().credential.expect("a credential");
        assert_eq!(status_of(a.http, d1.hostname()).await, 418);
        let took = known_within(&b, &d1.id).await;
        eprintln!("device enrolled at A known at B after {took:?}");

        // One quota across both edges: the second place taken at B, the third refused at A.
        let (link_b2, reply) = register(&ep_b, b.tunnel, &Attempt::enrol(&d2, &key)).await;
        let cred2 = reply.registered().credential.expect("a credential");
        let reason = register(&ep_a, a.tunnel, &Attempt::enrol(&d3, &key))
            .await
            .1
            .refused();
        assert_eq!(
            reason,
            "enrolment key of fleet shops is full: 2 devices enrolled, --max-devices 2"
        );

        // The credential A issued registers at B, which serves the device too.
        let mut at_b = Attempt::with_credential(&d1, &cred1);
        at_b.index = 1;
        let (link_b1, reply) = register(&ep_b, b.tunnel, &at_b).await;
        assert_eq!(reply.registered().credential, None);
        assert_eq!(status_of(b.http, d1.hostname()).await, 418);

        // Revoked at B: cut at A within 2 s, refused at A after.
        let start = Instant::now();
        let (status, body) = admin(&b, "POST", &format!("/api/v1/devices/{}/revoke", d1.id)).await;
        assert_eq!(status, 200, "{body}");
        let closed = tokio::time::timeout(AGREE_WITHIN, link_a1.conn.closed())
            .await
            .expect("the connection at the other edge is cut within 2 s");
        let took = start.elapsed();
        eprintln!("revoked at B, cut at A after {took:?}");
        assert!(took < AGREE_WITHIN, "{took:?}");
        let why = closed.to_string();
        assert!(
            why.contains(&format!("device {} is revoked", d1.id)),
            "{why}"
        );
        tokio::time::timeout(WAIT, link_b1.conn.closed())
            .await
            .expect("cut at B too");
        let reason = register(&ep_a, a.tunnel, &Attempt::with_credential(&d1, &cred1))
            .await
            .1
            .refused();
        assert_eq!(reason, format!("device {} is revoked", d1.id));
        assert!(
            a.proc.count("was revoked at another edge") >= 1,
            "{}",
            a.proc.dump()
        );

        // Redis stopped: both edges keep serving what they hold, and admit a device
        // they know by its credential; enrolment is refused with the reason, for now.
        redis.stop();
        a.proc.wait_line("cluster: lost redis");
        b.proc.wait_line("cluster: lost redis");
        assert_eq!(status_of(b.http, d2.hostname()).await, 418);
        let mut at_a = Attempt::with_credential(&d2, &cred2);
        at_a.index = 1;
        let (link_a2, reply) = register(&ep_a, a.tunnel, &at_a).await;
        reply.registered();
        assert_eq!(status_of(a.http, d2.hostname()).await, 418);
        let open_key = enroll_key(a.dir.path(), &["--expires", "1h"]);
        match register(&ep_a, a.tunnel, &Attempt::enrol(&d4, &open_key))
            .await
            .1
        {
            Reply::Refused { reason, permanent } => {
                assert!(!permanent, "a Redis outage is no verdict: {reason}");
                assert!(
                    reason.starts_with("fleet store: redis unix://")
                        && reason.contains("unreachable")
                        && reason.ends_with("try again later"),
                    "{reason}"
                );
            }
            other => panic!("enrolment without Redis: {other:?}"),
        }
        let (status, body) = admin(&a, "POST", &format!("/api/v1/devices/{}/revoke", d2.id)).await;
        assert_eq!(status, 500, "a revocation needs Redis: {body}");
        assert!(body.contains("redis"), "{body}");

        // Redis back: the edges follow it again, with no restart.
        redis.restart();
        a.proc
            .wait_count("cluster: following fleet changes", 2, WAIT)
            .expect("A follows Redis again");
        b.proc
            .wait_count("cluster: following fleet changes", 2, WAIT)
            .expect("B follows Redis again");
        let (_link_a4, reply) = register(&ep_a, a.tunnel, &Attempt::enrol(&d4, &open_key)).await;
        assert!(reply.registered().credential.is_some());
        known_within(&b, &d4.id).await;
        // What Redis held before it stopped is still there: the quota is still full.
        let reason = register(&ep_b, b.tunnel, &Attempt::enrol(&d3, &key))
            .await
            .1
            .refused();
        assert!(reason.contains("is full: 2 devices enrolled"), "{reason}");
        // And a revocation at A reaches B's connection again within 2 s.
        let start = Instant::now();
        let (status, body) = admin(&a, "POST", &format!("/api/v1/devices/{}/revoke", d2.id)).await;
        assert_eq!(status, 200, "{body}");
        tokio::time::timeout(AGREE_WITHIN, link_b2.conn.closed())
            .await
            .expect("cut at B within 2 s after Redis came back");
        eprintln!(
            "after the Redis restart: revoked at A, cut at B after {:?}",
            start.elapsed()
        );
        tokio::time::timeout(WAIT, link_a2.conn.closed())
            .await
            .expect("cut at A too");
    });
    Ok(())
}

/// curl `path` on `edge`'s HTTP listener for `host`, with `extra` arguments.
fn visit(edge: &EdgeProc, host: &str, path: &str, extra: &[&str]) -> Curl {
    let url = format!("http://{}{path}", edge.http);
    let host = format!("Host: {host}");
    let mut args = vec!["-H", host.as_str()];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

/// Runs `redis-cli` on `redis`'s socket.
fn redis_cli(redis: &RedisProc, args: &[&str]) -> String {
    let out = run_ok(
        "redis-cli",
        Command::new("redis-cli")
            .arg("-s")
            .arg(redis.socket())
            .args(args),
    );
    stdout(&out)
}

pub(crate) fn visitors_reach_every_device_through_any_edge() -> Result<(), Skip> {
    let mut redis = RedisProc::start()?;
    let mut a = cluster_edge(&redis, "127.0.0.1:0", None);
    // B has a public TCP port for the device's TCP service, and a rate limit A has not.
    let b = cluster_edge_with(
        &redis,
        "127.0.0.1:0",
        SECRET,
        Some(a.dir.join("signing.key")),
        "tcp-ports:\n  - listen: 127.0.0.1:0\n    hostname: db.dev42.example.com\n    \
         ip-allow: [127.0.0.0/8]\nrate-limits:\n  - hostname: dev42.example.com\n    path: \
         ^/limited\n    rate: 1/h\n    burst: 1\n",
    );
    let member_a = member_of(&a);
    let origin = Origin::start("fwd");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ws_addr = ws_echo_origin(&rt);
    let rules = format!(
        "  - hostname: db.dev42.example.com\n    service: tcp://{}\n  - hostname: \
         ws.dev42.example.com\n    service: http://{ws_addr}\n{}",
        origin.addr,
        dev42_rules(origin.addr)
    );
    let token = a.token(
        "dev42",
        &[
            "dev42.example.com",
            "db.dev42.example.com",
            "ws.dev42.example.com",
        ],
        "1h",
    );
    let dev = TempDir::new("cluster-fwd-a");
    let at_a = start_connector(dev.path(), &device_yaml(&a, &token, 2, &rules), 2);

    // A visitor at B reaches the device connected to A only, and the origin sees the
    // visitor's address as B saw it (a visitor's own X-Forwarded-For is not believed,
    // nor a visitor header of the peer protocol: B sends its own).
    let r = visit(
        &b,
        "dev42.example.com",
        "/headers",
        &[
            "-H",
            "X-Forwarded-For: 203.0.113.9",
            "-H",
            "Mailslot-Peer-Visitor: forged",
        ],
    );
    assert_eq!(r.status, 200, "{} {}", r.text(), b.proc.dump());
    let seen = r.text();
    assert!(seen.contains("x-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-real-ip: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("x-forwarded-proto: http\n"), "{seen}");
    assert!(!seen.contains("203.0.113.9"), "{seen}");
    assert!(!seen.contains("mailslot-peer-visitor"), "{seen}");
    b.proc
        .wait_line(&format!("cluster: connected to peer {member_a}"));
    // HTTPS and HTTP/2 at B, a body both ways, on the same connection between edges.
    let resolve = format!("dev42.example.com:{}:127.0.0.1", b.https.port());
    let url = format!("https://dev42.example.com:{}/sha256", b.https.port());
    let ca = b.ca().display().to_string();
    let body: String = "forwarded ".repeat(10_000);
    let r = curl(&[
        "--http2",
        "--cacert",
        &ca,
        "--resolve",
        &resolve,
        "--data-binary",
        &body,
        &url,
    ]);
    assert_eq!((r.status, r.version.as_str()), (200, "2"), "{}", r.text());
    assert_eq!(
        r.text().trim(),
        format!("{} {}", sha256_hex(body.as_bytes()), body.len())
    );
    let r = visit(&b, "dev42.example.com", "/bytes/300000", &[]);
    assert_eq!(r.body, pattern(300_000));
    assert_eq!(
        b.proc.count("cluster: connected to peer"),
        1,
        "one connection"
    );

    // Limits apply where the visitor arrived: B's rate limit holds for the requests it
    // forwards, and the one over it never reaches A's device.
    let before = origin.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(visit(&b, "dev42.example.com", "/limited", &[]).status, 200);
    assert_eq!(visit(&b, "dev42.example.com", "/limited", &[]).status, 429);
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::SeqCst),
        before + 1
    );

    // A WebSocket through B: the upgrade crosses both edges.
    rt.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let tcp = tokio::net::TcpStream::connect(b.http).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.dev42.example.com/chat", tcp)
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..5 {
            let msg = format!("hello {i}");
            ws.send(Message::text(msg.clone())).await.unwrap();
            let back = tokio::time::timeout(WAIT, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(back.into_text().unwrap().as_str(), msg);
        }
    });

    // An access stream (a raw TCP service, here through B's public TCP port) reaches
    // the device too: the origin's HTTP spoken through it by curl.
    let port_b = b.proc.logged_addr("TCP port ");
    let r = curl(&[
        "-H",
        "Host: db.dev42.example.com",
        &format!("http://{port_b}/bytes/100000"),
    ]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.body, pattern(100_000));
    a.proc
        .wait_line("cluster: access stream to db.dev42.example.com for 127.0.0.1");

    // A hostname no tunnel serves anywhere is still a 404 at B.
    let r = visit(&b, "nobody.example.com", "/", &[]);
    assert_eq!(r.status, 404, "{}", r.text());

    // No loops: presence naming A for a hostname A does not hold (a stale entry) ends
    // in a 502 at A, not in another hop.
    let far = (std::time::SystemTime::now() + Duration::from_secs(600))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let ghost = "ab".repeat(16);
    redis_cli(
        &redis,
        &[
            "SET",
            "mailslot:host:ghost.example.com",
            &format!("{ghost} {member_a}"),
            "PX",
            "600000",
        ],
    );
    redis_cli(
        &redis,
        &["ZADD", &format!("mailslot:at:{ghost}"), &far, &member_a],
    );
    let r = visit(&b, "ghost.example.com", "/", &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.text().contains("forwarded between edges at most once"),
        "{}",
        r.text()
    );

    // An edge without the cluster secret gets nothing from A: its visitors see a 502,
    // A says why, and the origin is not reached.
    let c = cluster_edge_with(
        &redis,
        "127.0.0.1:0",
        "not-the-cluster-secret-0123456789abcdef",
        Some(a.dir.join("signing.key")),
        "",
    );
    let before = origin.requests.load(std::sync::atomic::Ordering::SeqCst);
    let r = visit(&c, "dev42.example.com", "/headers", &[]);
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("unreachable"), "{}", r.text());
    a.proc
        .wait_line("refused: it does not hold this cluster's secret");
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
    drop(c);

    // Redis stopped: B forwards by the presence it read last, past the time it would
    // have asked Redis again.
    redis.stop();
    let start = Instant::now();
    let mut served = 0;
    while start.elapsed() < CACHE_FOR * 3 / 2 {
        let r = visit(&b, "dev42.example.com", "/", &[]);
        assert_eq!(r.status, 200, "{} {}", r.text(), b.proc.dump());
        served += 1;
    }
    eprintln!("redis stopped: {served} requests forwarded by the last presence read");
    b.proc
        .wait_line("cluster: presence of dev42.example.com not read from redis");
    redis.restart();

    // A killed: B answers promptly with an error page (the connection between the
    // edges times out, then A is not dialled again for a while), never hangs.
    a.proc.signal(9);
    assert!(a.proc.wait_exit(WAIT).is_some());
    let start = Instant::now();
    let r = visit(&b, "dev42.example.com", "/", &[]);
    let first = start.elapsed();
    assert!([502, 503].contains(&r.status), "{} {}", r.status, r.text());
    assert!(r.text().contains("unreachable"), "{}", r.text());
    assert!(first < Duration::from_secs(8), "{first:?}");
    let start = Instant::now();
    let r = visit(&b, "dev42.example.com", "/", &[]);
    assert!([502, 503].contains(&r.status), "{} {}", r.status, r.text());
    let second = start.elapsed();
    assert!(second < Duration::from_secs(1), "{second:?}");
    eprintln!(
        "edge A killed: B answered {} after {first:?}, then after {second:?}",
        r.status
    );

    // The device moves to B: B serves it from its own connection.
    drop(at_a);
    let dev_b = TempDir::new("cluster-fwd-b");
    let _at_b = start_connector(dev_b.path(), &device_yaml(&b, &token, 1, &rules), 1);
    let r = visit(&b, "dev42.example.com", "/headers", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("x-forwarded-for: 127.0.0.1\n"),
        "{}",
        r.text()
    );
    Ok(())
}

/// A WebSocket origin echoing every message, on `rt`.
fn ws_echo_origin(rt: &tokio::runtime::Runtime) -> std::net::SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    addr
}

/// Polls `check` every 10 ms until it holds, at most [`AGREE_WITHIN`] (plus one poll's
/// own time); how long it took, or `None`.
fn within_agreement(mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > AGREE_WITHIN {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `mailslot-edge revoke ARGS --config` `edge`'s edge.yml (with its admin listener's
/// address); its stdout, or the failure.
fn revoke_cmd(edge: &EdgeProc, args: &[&str]) -> Result<String, String> {
    let out = Command::new(EDGE)
        .arg("revoke")
        .args(args)
        .arg("--config")
        .arg(cli_config(edge, "revoke-cli"))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(stdout(&out))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// A tunnel and an access token revoked with `mailslot-edge revoke` at edge A: the
/// tunnel's connections at edge B are closed and it cannot come back, the token is
/// refused at B, both within 2 s, with no list in either edge.yml and no reload; both
/// hold after B restarts (read from Redis) and after a reload of its edge.yml, and
/// `revoke ls` lists them at either edge.
pub(crate) fn revocations_made_at_one_edge_hold_at_every_edge() -> Result<(), Skip> {
    let redis = RedisProc::start()?;
    let a = cluster_edge(&redis, "127.0.0.1:0", None);
    let policy = "access:\n  - hostname: web.dev42.example.com\n    allow: signed\n";
    let key = Some(a.dir.join("signing.key"));
    let mut b = cluster_edge_with(&redis, "127.0.0.1:0", SECRET, key.clone(), policy);
    let origin = Origin::start("rev");
    let rules = format!(
        "  - hostname: web.dev42.example.com\n    service: http://{}\n{}",
        origin.addr,
        dev42_rules(origin.addr)
    );
    let token = a.token(
        "dev42",
        &["dev42.example.com", "web.dev42.example.com"],
        "1h",
    );
    let dev = TempDir::new("cluster-revoke");
    let connector = start_connector(dev.path(), &device_yaml(&b, &token, 1, &rules), 1);
    let line = b.proc.wait_line(": registered");
    let tunnel_id = line
        .split("tunnel dev42 (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no tunnel id in {line:?}"))
        .to_string();
    assert_eq!(visit(&b, "dev42.example.com", "/", &[]).status, 200);

    // An access token (signed at A) admits at B until it is revoked at A.
    let out = run_ok(
        "mailslot-edge access-token",
        Command::new(EDGE)
            .arg("access-token")
            .arg("--config")
            .arg(a.dir.join("edge.yml"))
            .args(["--user", "alice", "--hostname", "web.dev42.example.com"]),
    );
    let alice = stdout(&out).trim().to_string();
    let note = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(note.contains("mailslot-edge revoke access-token"), "{note}");
    let alice_id = note
        .split("access token ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_string();
    let bearer = format!("Authorization: Bearer {alice}");
    assert_eq!(
        visit(&b, "web.dev42.example.com", "/", &["-H", &bearer]).status,
        200
    );

    // Bad ids are refused by the command before the edge is asked.
    let e = revoke_cmd(&a, &["tunnel", "not-an-id"]).unwrap_err();
    assert!(e.contains("not an id"), "{e}");

    let said = revoke_cmd(&a, &["access-token", &alice_id]).unwrap();
    assert!(said.contains("revoked at every edge"), "{said}");
    let took = within_agreement(|| {
        let r = visit(&b, "web.dev42.example.com", "/", &["-H", &bearer]);
        r.status == 401 && r.text().contains("revoked")
    });
    eprintln!("access token revoked at A refused at B after {took:?}");
    assert!(took.is_some(), "still admitted at B after {AGREE_WITHIN:?}");

    let start = Instant::now();
    let said = revoke_cmd(&a, &["tunnel", &tunnel_id]).unwrap();
    assert!(
        said.contains(&format!("tunnel {tunnel_id} revoked")),
        "{said}"
    );
    connector.wait_line("is revoked on this edge");
    let took = start.elapsed();
    eprintln!("tunnel revoked at A closed at B after {took:?}");
    assert!(took <= AGREE_WITHIN, "closed after {took:?}");
    let requests = origin.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_ne!(visit(&b, "dev42.example.com", "/", &[]).status, 200);
    assert_eq!(
        origin.requests.load(std::sync::atomic::Ordering::SeqCst),
        requests
    );
    // Revoking again says so; the list at B has both, with the first time.
    let again = revoke_cmd(&b, &["tunnel", &tunnel_id]).unwrap();
    assert!(again.contains("was revoked already"), "{again}");
    let listed = revoke_cmd(&b, &["ls"]).unwrap();
    assert!(listed.contains(&format!("tunnel\t{tunnel_id}")), "{listed}");
    assert!(
        listed.contains(&format!("access-token\t{alice_id}")),
        "{listed}"
    );

    // A restarted B reads them from Redis: the tunnel is refused at registration and
    // the token at once.
    drop(connector);
    b.proc.signal(15);
    assert!(b.proc.wait_exit(WAIT).is_some(), "edge B did not stop");
    let b = cluster_edge_with(&redis, "127.0.0.1:0", SECRET, key, policy);
    let r = visit(&b, "web.dev42.example.com", "/", &["-H", &bearer]);
    assert_eq!(r.status, 401, "{}", r.text());
    // A reload of edge.yml (which lists neither) keeps them.
    b.proc.signal(1);
    b.proc.wait_line("reloaded (generation 1)");
    let r = visit(&b, "web.dev42.example.com", "/", &["-H", &bearer]);
    assert_eq!(r.status, 401, "{}", r.text());
    let dev = TempDir::new("cluster-revoke-again");
    let bin = compile(dev.path(), &device_yaml(&b, &token, 1, &rules));
    let again = Proc::spawn(
        "connector",
        Command::new(MAILSLOT).arg("run").arg("--config").arg(&bin),
    );
    let line = again.wait_line("refused the tunnel");
    assert!(line.contains("revoked"), "{line}");
    Ok(())
}

/// An edge of the cluster on `redis` that tells connectors the members
/// (`advertise: 127.0.0.1:0`: its tunnel port), with `first`'s signing key and
/// certificate (the cluster's edges share one certificate name, as behind one DNS
/// name) when given.
fn member_edge(redis: &RedisProc, first: Option<&EdgeProc>) -> EdgeProc {
    let mut yaml = "admin-listen: 127.0.0.1:0\n".to_string();
    if let Some(f) = first {
        yaml = format!(
            "{yaml}signing-key: {}\ncert: {}\nkey: {}\n",
            f.dir.join("signing.key").display(),
            f.dir.join("edge.crt").display(),
            f.dir.join("edge.key").display()
        );
    }
    yaml = format!(
        "{yaml}cluster:\n  redis: {}\n  secret: {SECRET}\n  member: 127.0.0.1:0\n  \
         advertise: 127.0.0.1:0\n",
        redis.socket().display()
    );
    let edge = start_edge(init_edge(&yaml));
    // Lines of tasks that run side by side: counted in the whole log, in any order.
    for line in [
        format!(
            "cluster: telling connectors the members, this edge as {}",
            edge.tunnel
        ),
        "cluster: following fleet changes on redis unix://".to_string(),
    ] {
        edge.proc
            .wait_count(&line, 1, WAIT)
            .unwrap_or_else(|| panic!("no {line:?}:\n{}", edge.proc.dump()));
    }
    edge
}

/// The connections of tunnel dev42 that `edge`'s `/tunnels` lists.
fn dev42_conns(edge: &EdgeProc) -> usize {
    let r = curl(&[&format!("http://{}/tunnels", edge.admin_addr())]);
    assert!(r.ok, "{}", r.stderr);
    r.text().lines().filter(|l| l.contains("dev42")).count()
}

/// Polls the edges' `/tunnels` every 50 ms until they list `want` connections of
/// dev42 each, at most [`WAIT`]; panics with what they listed and the logs.
fn wait_spread(edges: &[&EdgeProc], want: &[usize], connector: &Proc) -> Duration {
    let start = Instant::now();
    loop {
        let have: Vec<usize> = edges.iter().map(|e| dev42_conns(e)).collect();
        if have == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WAIT,
            "connections per edge {have:?}, not {want:?}, after {WAIT:?}; connector:\n{}",
            connector.dump()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// cluster.md, member lists: a connector configured with one edge of a two-edge
/// cluster ends with its connections spread over both (2 and 2, by the rendezvous
/// rule's half-the-slots bound); when that second edge stops they move to the first;
/// when a third joins, half of them move to it.
pub(crate) fn a_connector_told_the_members_spreads_over_them_and_follows_their_changes(
) -> Result<(), Skip> {
    let redis = RedisProc::start()?;
    let a = member_edge(&redis, None);
    let mut b = member_edge(&redis, Some(&a));
    // Both edges tell the same list once each has read the other.
    let both = {
        let mut v = [a.tunnel, b.tunnel];
        v.sort();
        format!("cluster: members told to connectors: {}, {}", v[0], v[1])
    };
    b.proc
        .wait_count(&both, 1, WAIT)
        .unwrap_or_else(|| panic!("B never told {both:?}:\n{}", b.proc.dump()));
    let origin = Origin::start("members");
    let token = a.token("dev42", &["dev42.example.com"], "1h");
    let dev = TempDir::new("cluster-members");
    // One edge address in the device config: A's.
    let connector = start_connector(
        dev.path(),
        &device_yaml(&a, &token, 4, &dev42_rules(origin.addr)),
        4,
    );
    let took = wait_spread(&[&a, &b], &[2, 2], &connector);
    eprintln!("spread over A and B {took:?} after the fourth registration");
    assert!(connector.count("(the cluster's members changed)") >= 2);
    assert_eq!(get(&a, "dev42.example.com", "/headers").0, 200);
    assert_eq!(get(&b, "dev42.example.com", "/headers").0, 200);

    // B stops: its connections move to A (the connector dials B, fails, skips it).
    b.proc.signal(15);
    assert!(b.proc.wait_exit(WAIT).is_some(), "edge B did not stop");
    let took = wait_spread(&[&a], &[4], &connector);
    eprintln!("all on A {took:?} after B stopped");

    // C joins: A tells the connector, and half its connections move there.
    let c = member_edge(&redis, Some(&a));
    let took = wait_spread(&[&a, &c], &[2, 2], &connector);
    eprintln!("spread over A and C {took:?} after C started");
    assert_eq!(get(&c, "dev42.example.com", "/headers").0, 200);
    Ok(())
}
