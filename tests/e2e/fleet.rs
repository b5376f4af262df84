//! Devices of a fleet registering with their own keys, spoken from the test as a
//! connector speaks it (real QUIC, the real wire messages) against a real
//! `mailslot-edge serve`: enrolment with a key, registration with the credential it
//! issued, the proof of possession (replayed, or made with another key), quotas,
//! expiry, renewal, revocation, and the store that outlives the edge. The device side
//! is shared with `cluster`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mailslot::edge::fleet::{self, enroll, Store};
use mailslot::wire::{
    self, ConnectorMsg, DeviceFacts, DeviceTail, EdgeMsg, Health, HelloTail, Register,
    RegisteredTail, RuleAction, RuleInfo, PROTOCOL_VERSION,
};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;

use crate::common::*;

/// `wire::RegisterTail` (private to the crate): all zeros, no instance id.
#[derive(Serialize)]
struct RegisterTail {
    instance: [u8; 16],
}

/// A board: its key pair and the id the edge derives from it.
pub(crate) struct Device {
    key: Ed25519KeyPair,
    public_key: [u8; 32],
    pub(crate) id: String,
    name: String,
}

impl Device {
    pub(crate) fn new(name: &str) -> Device {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public_key: [u8; 32] = key.public_key().as_ref().try_into().unwrap();
        Device {
            id: mailslot::identity::device_id(&public_key),
            key,
            public_key,
            name: name.into(),
        }
    }

    pub(crate) fn hostname(&self) -> String {
        format!("{}.shops.example.com", self.id)
    }

    fn rules(&self) -> Vec<RuleInfo> {
        vec![
            RuleInfo {
                hostname: Some(self.hostname()),
                path: None,
                action: RuleAction::Status(418),
                host_header: None,
            },
            RuleInfo {
                hostname: None,
                path: None,
                action: RuleAction::Status(404),
                host_header: None,
            },
        ]
    }
}

/// One registration as a test makes it.
pub(crate) struct Attempt<'a> {
    device: &'a Device,
    credential: Option<String>,
    enroll: Option<String>,
    /// Signs this nonce instead of the hello's (a replayed proof).
    nonce: Option<[u8; 32]>,
    /// Presents this public key instead of the device's own.
    public_key: Option<[u8; 32]>,
    /// Sends this device's rules (its hostnames) instead of its own.
    rules_of: Option<&'a Device>,
    pub(crate) index: u8,
}

impl<'a> Attempt<'a> {
    pub(crate) fn enrol(device: &'a Device, key: &str) -> Attempt<'a> {
        Attempt {
            device,
            credential: None,
            enroll: Some(key.into()),
            nonce: None,
            public_key: None,
            rules_of: None,
            index: 0,
        }
    }

    pub(crate) fn with_credential(device: &'a Device, credential: &str) -> Attempt<'a> {
        Attempt {
            credential: Some(credential.into()),
            enroll: None,
            ..Attempt::enrol(device, "")
        }
    }
}

/// What the edge answered.
#[derive(Debug)]
pub(crate) enum Reply {
    Registered(RegisteredTail),
    Refused { reason: String, permanent: bool },
}

impl Reply {
    pub(crate) fn registered(self) -> RegisteredTail {
        match self {
            Reply::Registered(t) => t,
            other => panic!("expected Registered, got {other:?}"),
        }
    }

    pub(crate) fn refused(self) -> String {
        match self {
            Reply::Refused { reason, permanent } => {
                assert!(permanent, "refusal not permanent: {reason}");
                reason
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}

/// A device's tunnel connection, its control stream and the nonce of its hello.
pub(crate) struct Link {
    pub(crate) conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    nonce: [u8; 32],
}

pub(crate) fn endpoint(ca_pem: &Path) -> quinn::Endpoint {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(ca_pem).unwrap();
    let ca = rustls_pki_types::CertificateDer::from_pem_slice(&pem)
        .unwrap()
        .to_vec();
    let tls = mailslot::tls::edge_client_config(Some(&ca)).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    )));
    ep
}

/// One control frame's body.
async fn read_frame(recv: &mut quinn::RecvStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    recv.read_exact(&mut body).await.unwrap();
    body
}

/// Connects, reads the hello and its nonce, registers as `a` says; the edge's answer.
pub(crate) async fn register(
    ep: &quinn::Endpoint,
    edge: SocketAddr,
    a: &Attempt<'_>,
) -> (Link, Reply) {
    let conn = tokio::time::timeout(WAIT, ep.connect(edge, "127.0.0.1").unwrap())
        .await
        .expect("handshake in time")
        .expect("handshake");
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let hello = read_frame(&mut recv).await;
    let (msg, rest): (EdgeMsg, _) = postcard::take_from_bytes(&hello).unwrap();
    assert!(matches!(msg, EdgeMsg::Hello { .. }), "{msg:?}");
    let nonce = postcard::from_bytes::<HelloTail>(rest).unwrap().nonce;
    let signed = a.nonce.unwrap_or(nonce);
    let proof = a.device.key.sign(&wire::device_proof_message(&signed));
    let register = ConnectorMsg::Register(Register {
        version: PROTOCOL_VERSION,
        token: String::new(),
        connector_id: [a.index + 1; 16],
        conn_index: a.index,
        rules_generation: 1,
        rules: a.rules_of.unwrap_or(a.device).rules(),
        software: "fleet-test 1.2.3".into(),
    });
    let device = DeviceTail {
        public_key: a.public_key.unwrap_or(a.device.public_key),
        proof: proof.as_ref().to_vec(),
        credential: a.credential.clone(),
        enroll: a.enroll.clone(),
        facts: DeviceFacts {
            name: a.device.name.clone(),
            arch: "aarch64".into(),
            board: "Raspberry Pi 4 Model B".into(),
            config_digest: [0xab; 8],
        },
    };
    let frame = (register, RegisterTail { instance: [0; 16] }, device);
    wire::write_control(&mut send, &frame).await.unwrap();
    let body = read_frame(&mut recv).await;
    let (msg, rest): (EdgeMsg, _) = postcard::take_from_bytes(&body).unwrap();
    let reply = match msg {
        EdgeMsg::Registered { tunnel_id, .. } => {
            assert_eq!(
                tunnel_id,
                mailslot::identity::tunnel_id(&a.device.public_key)
            );
            Reply::Registered(postcard::from_bytes(rest).expect("a RegisteredTail"))
        }
        EdgeMsg::Refused { reason, permanent } => Reply::Refused { reason, permanent },
        other => panic!("unexpected answer {other:?}"),
    };
    let link = Link {
        conn,
        send,
        recv,
        nonce,
    };
    (link, reply)
}

/// `mailslot-edge enroll-key` for the edge in `dir`.
pub(crate) fn enroll_key(dir: &Path, extra: &[&str]) -> String {
    let mut cmd = Command::new(EDGE);
    cmd.arg("enroll-key")
        .arg("--config")
        .arg(dir.join("edge.yml"))
        .args([
            "--fleet",
            "shops",
            "--hostname",
            "{device}.shops.example.com",
        ])
        .args(["--hostname", "ssh.{device}.shops.example.com"])
        .args(extra);
    let out = run_ok("mailslot-edge enroll-key", &mut cmd);
    let key = stdout(&out).trim().to_string();
    assert!(key.starts_with("mse1."), "{key}");
    key
}

/// A GET through the edge's HTTP listener with `Host: host`; its status.
pub(crate) async fn status_of(http: SocketAddr, host: String) -> u16 {
    tokio::task::spawn_blocking(move || {
        let r = curl(&["-H", &format!("Host: {host}"), &format!("http://{http}/")]);
        assert!(r.ok, "{}", r.stderr);
        r.status
    })
    .await
    .unwrap()
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Stops an edge with SIGTERM and waits for it to exit cleanly; its folder.
fn stop(edge: EdgeProc) -> TempDir {
    let EdgeProc { dir, mut proc, .. } = edge;
    proc.signal(15);
    let status = proc.wait_exit(WAIT).expect("the edge exits");
    assert!(status.success(), "{status:?}\n{}", proc.dump());
    dir
}

pub(crate) fn a_device_enrols_registers_with_its_credential_and_is_remembered() {
    let edge = start_edge(init_edge(""));
    let key = enroll_key(edge.dir.path(), &["--max-devices", "2", "--expires", "1h"]);
    let a = Device::new("board-a");
    let b = Device::new("board-b");
    let rt = runtime();
    let _entered = rt.enter();
    let ep = endpoint(&edge.ca());
    let credential = rt.block_on(async {
        // Enrolment: a credential bound to the device's key, the hostnames expanded.
        let (mut first, reply) = register(&ep, edge.tunnel, &Attempt::enrol(&a, &key)).await;
        let tail = reply.registered();
        assert_eq!(tail.device_id, a.id);
        assert_eq!(tail.health_every_secs, 300);
        let credential = tail.credential.expect("a credential at enrolment");
        assert!(credential.starts_with("msd1."), "{credential}");
        assert_eq!(status_of(edge.http, a.hostname()).await, 418);
        // A health report with an overlong text, then a rule update: its answer says
        // the report before it was read.
        let health = Health {
            uptime_secs: 1234,
            temp_millicelsius: Some(48_500),
            last_error: Some("e".repeat(5000)),
            ..Health::default()
        };
        wire::write_control(&mut first.send, &ConnectorMsg::Health(health))
            .await
            .unwrap();
        let update = ConnectorMsg::UpdateRules {
            generation: 2,
            rules: a.rules(),
        };
        wire::write_control(&mut first.send, &update).await.unwrap();
        let answer: EdgeMsg = wire::read_control(&mut first.recv).await.unwrap();
        assert_eq!(answer, EdgeMsg::RulesAccepted { generation: 2 });

        // The credential alone registers a second connection; nothing to renew yet.
        let mut again = Attempt::with_credential(&a, &credential);
        again.index = 1;
        let (second, reply) = register(&ep, edge.tunnel, &again).await;
        assert_eq!(reply.registered().credential, None);

        // A proof made for another connection's nonce is refused.
        let mut replay = Attempt::with_credential(&a, &credential);
        replay.nonce = Some(first.nonce);
        let reason = register(&ep, edge.tunnel, &replay).await.1.refused();
        assert!(reason.contains("proof of possession failed"), "{reason}");

        // A copied credential, claiming the owner's hostnames: with the copier's own
        // key it names another key; with the owner's public key the copier cannot sign
        // the proof.
        let mut copied = Attempt::with_credential(&b, &credential);
        copied.rules_of = Some(&a);
        let reason = register(&ep, edge.tunnel, &copied).await.1.refused();
        assert!(
            reason.contains("presented with another device key"),
            "{reason}"
        );
        let mut posing = Attempt::with_credential(&b, &credential);
        posing.public_key = Some(a.public_key);
        posing.rules_of = Some(&a);
        let reason = register(&ep, edge.tunnel, &posing).await.1.refused();
        assert!(reason.contains("proof of possession failed"), "{reason}");

        for l in [first, second] {
            l.conn.close(0u32.into(), b"bye");
        }
        let _ = tokio::time::timeout(WAIT, ep.wait_idle()).await;
        credential
    });
    edge.proc
        .wait_count("disconnected", 2, WAIT)
        .expect("both connections ended");

    // A second edge on the same store is stopped with the reason.
    let out = Command::new(EDGE)
        .args(["serve", "--config"])
        .arg(edge.dir.join("edge.yml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("in use by another process"),
        "{}",
        stderr(&out)
    );

    // The record, read from the store file once the edge has stopped.
    let dir = stop(edge);
    {
        let store = fleet::RedbStore::open(&dir.join("fleet.redb")).unwrap();
        let r = store.get(&a.id).unwrap().expect("the device's record");
        assert_eq!(r.name, "board-a");
        assert_eq!(r.fleet, "shops");
        assert_eq!(r.version, "fleet-test 1.2.3");
        assert_eq!(r.arch, "aarch64");
        assert_eq!(r.board, "Raspberry Pi 4 Model B");
        assert_eq!(r.config_digest, "abababababababab");
        assert_eq!(
            r.hostnames,
            [a.hostname(), format!("ssh.{}.shops.example.com", a.id)]
        );
        assert!(r.address.starts_with("127.0.0.1:"), "{}", r.address);
        assert!(r.first_seen > 0 && r.last_seen >= r.first_seen);
        assert_eq!(r.revoked, None);
        let h = r.health.expect("the health report");
        assert_eq!(h.uptime_secs, 1234);
        assert_eq!(h.temp_millicelsius, Some(48_500));
        assert!(h.last_error.unwrap().len() <= 512);
        assert!(r.health_at >= r.first_seen);
    }

    // After a restart: the credential still registers, and the quota still counts A.
    let edge = start_edge(dir);
    // start_edge waited for the listeners, logged after the store was read.
    assert_eq!(
        edge.proc.count("fleet.redb: 1 devices"),
        1,
        "{}",
        edge.proc.dump()
    );
    let ep = endpoint(&edge.ca());
    let c = Device::new("board-c");
    rt.block_on(async {
        let (_a, reply) =
            register(&ep, edge.tunnel, &Attempt::with_credential(&a, &credential)).await;
        reply.registered();
        assert_eq!(status_of(edge.http, a.hostname()).await, 418);
        let (_b, reply) = register(&ep, edge.tunnel, &Attempt::enrol(&b, &key)).await;
        assert!(reply.registered().credential.is_some());
        let reason = register(&ep, edge.tunnel, &Attempt::enrol(&c, &key))
            .await
            .1
            .refused();
        assert_eq!(
            reason,
            "enrolment key of fleet shops is full: 2 devices enrolled, --max-devices 2"
        );
        // A device enrolled before enrols again under a full key (a lost credential).
        let (_a2, reply) = register(&ep, edge.tunnel, &Attempt::enrol(&a, &key)).await;
        assert!(reply.registered().credential.is_some());
    });
}

pub(crate) fn an_expired_enrolment_key_or_a_bad_pattern_is_refused_with_the_reason() {
    let edge = start_edge(init_edge(""));
    let key = enroll_key(edge.dir.path(), &["--expires", "1s"]);
    let dir = edge.dir.path();
    for (pattern, why) in [
        (
            "x{device}.shops.example.com",
            "{device} must be a whole label",
        ),
        ("a.*.example.com", "not a hostname"),
    ] {
        let out = Command::new(EDGE)
            .arg("enroll-key")
            .arg("--config")
            .arg(dir.join("edge.yml"))
            .args(["--fleet", "shops", "--hostname", pattern])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains(why), "{pattern}: {}", stderr(&out));
    }
    let out = Command::new(EDGE)
        .arg("enroll-key")
        .arg("--config")
        .arg(dir.join("edge.yml"))
        .args(["--fleet", "Shops!", "--hostname", "{device}.example.com"])
        .output()
        .unwrap();
    assert!(stderr(&out).contains("fleet name"), "{}", stderr(&out));
    // The key lives one second: wait for the clock to pass it.
    let issued = mailslot::edge::token::now_unix();
    while mailslot::edge::token::now_unix() < issued + 2 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let a = Device::new("board-a");
    let rt = runtime();
    let _entered = rt.enter();
    let ep = endpoint(&edge.ca());
    rt.block_on(async {
        let reason = register(&ep, edge.tunnel, &Attempt::enrol(&a, &key))
            .await
            .1
            .refused();
        assert!(
            reason.starts_with("enrolment key of fleet shops expired"),
            "{reason}"
        );
        // Neither credential nor key: said so.
        let mut none = Attempt::enrol(&a, "");
        none.enroll = None;
        let reason = register(&ep, edge.tunnel, &none).await.1.refused();
        assert!(
            reason.contains("neither a credential nor an enrolment key"),
            "{reason}"
        );
    });
}

pub(crate) fn credentials_are_renewed_on_the_connection_and_at_registration() {
    let edge = start_edge(init_edge("fleet:\n  credential-lifetime: 6s"));
    let key = enroll_key(edge.dir.path(), &[]);
    let a = Device::new("board-a");
    let rt = runtime();
    let _entered = rt.enter();
    let ep = endpoint(&edge.ca());
    rt.block_on(async {
        let (mut link, reply) = register(&ep, edge.tunnel, &Attempt::enrol(&a, &key)).await;
        let first = reply.registered().credential.unwrap();
        // Two thirds into its 6 s, the connection gets a new one.
        let msg: EdgeMsg = tokio::time::timeout(WAIT, wire::read_control(&mut link.recv))
            .await
            .expect("a renewal in time")
            .unwrap();
        let EdgeMsg::Credential {
            credential: renewed,
        } = msg
        else {
            panic!("expected a credential, got {msg:?}");
        };
        assert_ne!(renewed, first);
        let keys = [edge_public_key(edge.dir.path())];
        let now = mailslot::edge::token::now_unix();
        let old = enroll::verify_credential(&first, &keys, now).unwrap();
        let new = enroll::verify_credential(&renewed, &keys, now).unwrap();
        assert!(new.expires > old.expires);
        assert_eq!(
            (new.device, new.hostnames, new.tunnel),
            (old.device, old.hostnames, old.tunnel)
        );
        // The first credential has less than a third of its life left: registering
        // with it brings a new one.
        let mut again = Attempt::with_credential(&a, &first);
        again.index = 1;
        let (_l, reply) = register(&ep, edge.tunnel, &again).await;
        assert!(reply.registered().credential.is_some());
        // The renewed one keeps the first connection up past the first's expiry.
        tokio::time::sleep_until(tokio::time::Instant::now() + Duration::from_secs(3)).await;
        assert!(
            link.conn.close_reason().is_none(),
            "the connection was closed"
        );
    });
}

/// The public key of the edge's signing key, from its `.pub` file.
fn edge_public_key(dir: &Path) -> [u8; 32] {
    use base64::Engine;
    let pubfile = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pub"))
        .expect("a .pub file");
    let text = std::fs::read_to_string(pubfile).unwrap();
    let b64 = text.trim().strip_prefix("ed25519 ").unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
        .try_into()
        .unwrap()
}

pub(crate) fn a_revoked_device_is_cut_at_once_and_never_registers_again() {
    use mailslot::edge::{self, init, CertKey, Edge, EdgeSettings, Listeners};
    let dir = TempDir::new("fleet-revoke");
    let pki = init::generate_pki(&["127.0.0.1".into()]).unwrap();
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
    let signing = init::generate_signing_key().unwrap();
    let key = Ed25519KeyPair::from_pkcs8(&signing).unwrap();
    let public = init::public_key_of(&key);
    let enrol = enroll::issue_enroll_key(
        &key,
        "shops",
        &["{device}.shops.example.com".into()],
        None,
        3600,
    )
    .unwrap();
    let a = Device::new("board-a");
    runtime().block_on(async {
        let (udp, tcp) = edge::bind_tunnel("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = udp.local_addr().unwrap();
        let fleet_cfg = edge::config::FleetConfig {
            store: dir.join("fleet.redb"),
            health_every: Duration::from_secs(300),
            credential_lifetime: Duration::from_secs(86400),
        };
        let edge = Edge::new(EdgeSettings {
            name: "e".into(),
            cert: CertKey::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap(),
            extra_certs: Vec::new(),
            verify_keys: vec![public],
            origin_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(20),
            revoked: Vec::new(),
            shield: Arc::new(edge::shield::Shield::new(
                Default::default(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
            )),
        })
        .with_fleet(&fleet_cfg, Some(key))
        .unwrap();
        let inventory = edge.inventory().unwrap();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let served = tokio::spawn(edge.serve(
            Listeners {
                tunnel: udp,
                tunnel_tcp: Some(tcp),
                http: None,
                https: None,
                admin: None,
            },
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        ));
        let ep = endpoint(&dir.join("ca.pem"));
        let (link, reply) = register(&ep, addr, &Attempt::enrol(&a, &enrol)).await;
        let credential = reply.registered().credential.unwrap();
        let view = inventory.get(&a.id).expect("enrolled");
        assert!(view.online);
        assert_eq!(view.record.name, "board-a");

        assert!(inventory.revoke(&a.id).await.unwrap());
        let closed = tokio::time::timeout(WAIT, link.conn.closed())
            .await
            .expect("the connection is cut at once");
        let why = closed.to_string();
        assert!(
            why.contains(&format!("device {} is revoked", a.id)),
            "{why}"
        );

        for attempt in [
            Attempt::with_credential(&a, &credential),
            Attempt::enrol(&a, &enrol),
        ] {
            let reason = register(&ep, addr, &attempt).await.1.refused();
            assert_eq!(reason, format!("device {} is revoked", a.id));
        }
        let view = inventory.get(&a.id).unwrap();
        assert!(!view.online && view.record.revoked.is_some());
        stop.send_replace(true);
        served.await.unwrap().unwrap();
    });
    // Revoked for good: the store says so after the edge is gone.
    let store = fleet::RedbStore::open(&dir.join("fleet.redb")).unwrap();
    assert!(store.get(&a.id).unwrap().unwrap().revoked.is_some());
}
