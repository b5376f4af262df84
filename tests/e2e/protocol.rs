//! The tunnel handshake's version check, against a real edge over real QUIC: a
//! connector speaking another protocol version is refused with words that say which
//! side to update.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mailslot::edge::{self, init, CertKey, Edge, EdgeSettings, Listeners};
use mailslot::wire::{
    self, ConnectorMsg, EdgeMsg, Register, RuleAction, RuleInfo, PROTOCOL_VERSION,
};

async fn refusal_for(version: u16) -> String {
    let pki = init::generate_pki(&["127.0.0.1".into()]).unwrap();
    let signing = init::generate_signing_key().unwrap();
    let key = ring::signature::Ed25519KeyPair::from_pkcs8(&signing).unwrap();
    let token = init::issue_tunnel_token(&key, "t", &["t.example.com".into()], 60).unwrap();
    let lo = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let (udp, tcp) = edge::bind_tunnel(lo).unwrap();
    let addr = udp.local_addr().unwrap();
    let edge = Edge::new(EdgeSettings {
        name: "e".into(),
        cert: CertKey::from_pem(pki.cert_pem.as_bytes(), pki.key_pem.as_bytes()).unwrap(),
        extra_certs: Vec::new(),
        verify_keys: vec![init::public_key_of(&key)],
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
    });
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

    let tls = mailslot::tls::edge_client_config(Some(&pki.ca_der)).unwrap();
    let mut ep = quinn::Endpoint::client(lo).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    )));
    let conn = ep.connect(addr, "127.0.0.1").unwrap().await.unwrap();
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let hello: EdgeMsg = wire::read_control(&mut recv).await.unwrap();
    assert!(
        matches!(
            hello,
            EdgeMsg::Hello {
                version: PROTOCOL_VERSION,
                ..
            }
        ),
        "{hello:?}"
    );
    let register = ConnectorMsg::Register(Register {
        version,
        token,
        connector_id: [1; 16],
        conn_index: 0,
        rules_generation: 1,
        rules: vec![RuleInfo {
            hostname: None,
            path: None,
            action: RuleAction::Status(404),
            host_header: None,
        }],
        software: "test".into(),
    });
    wire::write_control(&mut send, &register).await.unwrap();
    let reply: EdgeMsg = wire::read_control(&mut recv).await.unwrap();
    stop.send_replace(true);
    let _ = served.await;
    match reply {
        EdgeMsg::Refused { reason, permanent } => {
            assert!(permanent);
            reason
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub(crate) fn a_newer_connector_is_told_to_wait_for_an_edge_update() {
    runtime().block_on(async {
        let reason = refusal_for(PROTOCOL_VERSION + 1).await;
        assert!(reason.contains("update the edge"), "{reason}");
    })
}

pub(crate) fn an_older_connector_is_told_to_update_mailslot() {
    runtime().block_on(async {
        let reason = refusal_for(PROTOCOL_VERSION - 1).await;
        assert!(reason.contains("update mailslot"), "{reason}");
    })
}

/// The runtime `#[tokio::test]` would give: one thread, timers and I/O.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
