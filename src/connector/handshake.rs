//! The control handshake of one connection, over its control stream: the edge's hello
//! (with its nonce), the registration (with the device's proof when the config enrols
//! it) and the edge's answer (with the device's credential and health schedule).
//!
//! ```text
//!  edge:      Hello      [+ HelloTail { nonce } [+ HelloClockTail { unix_secs, data_cap }
//!                                                [+ HelloProbeTail { probe_max_ms }]]]
//!  connector: Register   [+ RegisterTail { instance }] [+ DeviceTail]   token "" when enrolled
//!  edge:      Registered [+ RegisteredTail [+ KeysTail [+ MembersTail]]] | Refused
//! ```
//!
//! An enrolled device pins the keys of the `KeysTail` it has none of yet
//! ([`super::device::Device::pin`]); a pinned key is never replaced.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};

use super::active::ActiveConfig;
use super::session::{Failure, REGISTER_TIMEOUT};
use super::Shared;
use crate::wire::{
    self, ConnectorMsg, EdgeMsg, HelloProbeTail, HelloTail, KeysTail, MembersTail, Register,
    RegisterTail, RegisteredTail, PROTOCOL_VERSION,
};

/// What the edge said in a handshake it accepted.
pub(super) struct Handshake {
    pub(super) edge_name: String,
    pub(super) tunnel_id: [u8; 16],
    /// Health reports asked for, seconds between them; 0: none.
    pub(super) health_every_secs: u32,
    /// The edge understands `ConnectorMsg::DataCap`.
    pub(super) data_cap: bool,
    /// The cluster's members, from an edge that tells them (and then understands
    /// `ConnectorMsg::FollowMembers`).
    pub(super) members: Option<MembersTail>,
    /// The edge holds NAT probes (`super::natlife`), this long at most.
    pub(super) probes: Option<HelloProbeTail>,
}

/// Hello, register, registered on the control stream of connection `slot` to `addr`.
pub(super) async fn handshake<R, W>(
    shared: &Shared,
    slot: usize,
    rt: &ActiveConfig,
    addr: SocketAddr,
    recv: &mut R,
    send: &mut W,
) -> Result<Handshake, Failure>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hello = tokio::time::timeout(REGISTER_TIMEOUT, wire::read_hello(recv))
        .await
        .map_err(|_| format!("edge {addr} sent no hello"))?
        .map_err(|e| format!("edge {addr}: {e}"))?;
    let (edge_name, hello_tail, clock, probes) = match hello {
        (EdgeMsg::Hello { version, edge }, tail, clock, probes) if version == PROTOCOL_VERSION => {
            (wire::bounded_reason(edge), tail, clock, probes)
        }
        // Only an upgrade of one side changes this.
        (EdgeMsg::Hello { version, .. }, _, _, _) => {
            return Err(Failure {
                message: version_mismatch(addr, version),
                refused: true,
            })
        }
        (other, _, _, _) => return Err(format!("edge {addr} sent {other:?} before hello").into()),
    };
    if let Some(clock) = &clock {
        super::cap::edge_time(clock.unix_secs);
    }
    // An enrolled device proves its key on the hello's nonce instead of a token.
    let device = match (rt.config.enroll_key(), &shared.device) {
        (Some(enroll), Some(device)) => {
            let Some(HelloTail { nonce }) = hello_tail else {
                return Err(Failure {
                    message: format!(
                        "edge {edge_name} ({addr}) is too old for enrolment (its hello has no \
                         nonce to prove the device key on): update the edge"
                    ),
                    refused: true,
                });
            };
            Some((device, device.tail(&nonce, enroll)))
        }
        _ => None,
    };
    let register = ConnectorMsg::Register(Register {
        version: PROTOCOL_VERSION,
        token: match device {
            Some(_) => String::new(),
            None => rt.config.token.to_string(),
        },
        connector_id: shared.connector_id,
        conn_index: slot as u8,
        rules_generation: rt.generation,
        rules: rt.rule_infos.clone(),
        software: crate::release::version(),
    });
    let instance = shared.instance.as_ref().map(|i| i.id);
    let sent = match (&device, instance) {
        (Some((_, tail)), instance) => {
            let instance = instance.unwrap_or_default();
            wire::write_control_with_tails(send, &register, &RegisterTail { instance }, tail).await
        }
        (None, Some(instance)) => {
            wire::write_control_with_tail(send, &register, &RegisterTail { instance }).await
        }
        (None, None) => wire::write_control(send, &register).await,
    };
    sent.map_err(|e| format!("edge {addr}: {e}"))?;
    let reply = tokio::time::timeout(
        REGISTER_TIMEOUT,
        wire::read_control_with_three_tails::<_, EdgeMsg, RegisteredTail, KeysTail, MembersTail>(
            recv,
        ),
    )
    .await
    .map_err(|_| format!("edge {addr} did not answer the registration"))?
    .map_err(|e| format!("edge {addr}: {e}"))?;
    let (tunnel_id, registered_tail, keys, members) = match reply {
        (EdgeMsg::Registered { tunnel_id, .. }, tail, keys, members) => {
            (tunnel_id, tail, keys, members)
        }
        (EdgeMsg::Refused { reason, permanent }, _, _, _) => {
            return Err(Failure {
                message: format!(
                    "edge {edge_name} ({addr}) refused the tunnel: {}",
                    wire::bounded_reason(reason)
                ),
                refused: permanent,
            })
        }
        (other, _, _, _) => return Err(format!("edge {addr} answered {other:?}").into()),
    };
    let mut health_every_secs = 0;
    if let Some((device, _)) = device {
        let Some(tail) = registered_tail else {
            return Err(format!(
                "edge {edge_name} ({addr}) registered the device without confirming its identity"
            )
            .into());
        };
        if tail.device_id != device.id() {
            return Err(format!(
                "edge {edge_name} ({addr}) registered device {} but this is device {}",
                wire::bounded_reason(tail.device_id),
                device.id()
            )
            .into());
        }
        if let Some(credential) = &tail.credential {
            // Not fatal: the device can enrol again with its key.
            if let Err(e) = device.store_credential(credential) {
                log::error!("connection {slot}: {e}");
            }
        }
        health_every_secs = tail.health_every_secs;
        if let Some(keys) = &keys {
            // Not fatal: pushes are refused until a key is pinned.
            if let Err(e) = device.pin(keys) {
                log::error!("connection {slot}: {e}");
            }
        }
    }
    Ok(Handshake {
        edge_name,
        tunnel_id,
        health_every_secs,
        data_cap: clock.is_some_and(|c| c.data_cap),
        members,
        probes,
    })
}

fn version_mismatch(addr: SocketAddr, version: u16) -> String {
    if version > PROTOCOL_VERSION {
        format!(
            "edge {addr} speaks tunnel protocol {version}, this mailslot speaks \
             {PROTOCOL_VERSION}: update mailslot"
        )
    } else {
        format!(
            "edge {addr} speaks tunnel protocol {version}, older than this mailslot's \
             {PROTOCOL_VERSION}: the edge needs an update"
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::testutil::{sample_config, TempDir};
    use crate::connector::device::Device;
    use crate::connector::Connector;
    use crate::wire::DeviceTail;

    const ADDR: &str = "127.0.0.1:7844";

    /// A connector whose config enrols it (`{device}` in the first hostname), with its
    /// device key and credential in `dir`.
    fn enrolled(dir: &Path) -> Connector {
        let mut config = sample_config();
        config.token = "mse1.fleet-key".try_into().unwrap();
        config.ingress[0].hostname = Some("{device}.fleet.example.com".try_into().unwrap());
        let path = dir.join("config.bin");
        std::fs::write(&path, b"config").unwrap();
        let device = Device::load(&path, &path).unwrap();
        Connector::with_device(config, Some(device)).unwrap()
    }

    type Registration = (ConnectorMsg, Option<RegisterTail>, Option<DeviceTail>);

    /// Runs the connector's handshake against an edge that says `hello` and answers the
    /// registration with `answer(registration)`; returns both ends' results.
    async fn run(
        connector: &Connector,
        hello: (EdgeMsg, Option<HelloTail>),
        answer: impl FnOnce(&Registration) -> Option<(EdgeMsg, Option<RegisteredTail>)>,
    ) -> (Result<Handshake, Failure>, Option<Registration>) {
        let (conn, mut edge) = tokio::io::duplex(64);
        let (mut recv, mut send) = tokio::io::split(conn);
        let rt = connector.shared.current.borrow().clone();
        let shared = &connector.shared;
        let edge_side = async {
            match hello {
                (h, Some(t)) => wire::write_control_with_tail(&mut edge, &h, &t).await,
                (h, None) => wire::write_control(&mut edge, &h).await,
            }
            .unwrap();
            let reg: Registration = wire::read_control_with_tails(&mut edge).await.ok()?;
            match answer(&reg) {
                Some((m, Some(t))) => wire::write_control_with_tail(&mut edge, &m, &t).await,
                Some((m, None)) => wire::write_control(&mut edge, &m).await,
                None => Ok(()),
            }
            .unwrap();
            Some(reg)
        };
        // The connector's end closes when its handshake ends, as a failed connection's
        // does.
        let conn_side = async move {
            handshake(shared, 0, &rt, ADDR.parse().unwrap(), &mut recv, &mut send).await
        };
        tokio::join!(conn_side, edge_side)
    }

    fn hello() -> EdgeMsg {
        EdgeMsg::Hello {
            version: PROTOCOL_VERSION,
            edge: "edge-1".into(),
        }
    }

    fn registered() -> EdgeMsg {
        EdgeMsg::Registered {
            tunnel_id: [3; 16],
            edge: "edge-1".into(),
        }
    }

    #[tokio::test]
    async fn an_enrolled_device_proves_its_key_and_keeps_its_credential() {
        let dir = TempDir::new();
        let connector = enrolled(dir.path());
        let id = connector.device().unwrap().id().to_string();
        let nonce = [9u8; 32];
        let tail = |credential: Option<&str>| RegisteredTail {
            device_id: id.clone(),
            credential: credential.map(str::to_string),
            health_every_secs: 300,
        };
        let (got, reg) = run(&connector, (hello(), Some(HelloTail { nonce })), |_| {
            Some((registered(), Some(tail(Some("msd1.first")))))
        })
        .await;
        let shook = got.unwrap();
        assert_eq!(shook.health_every_secs, 300);
        assert_eq!(shook.edge_name, "edge-1");
        let (msg, reg_tail, device) = reg.unwrap();
        let ConnectorMsg::Register(register) = msg else {
            panic!("{msg:?}")
        };
        assert_eq!(
            register.token, "",
            "no tunnel token from an enrolled device"
        );
        assert_eq!(
            register.rules[0].hostname,
            Some(format!("{id}.fleet.example.com"))
        );
        assert!(reg_tail.is_some());
        let device = device.unwrap();
        assert_eq!(crate::identity::device_id(&device.public_key), id);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, device.public_key)
            .verify(&wire::device_proof_message(&nonce), &device.proof)
            .expect("the proof verifies over this connection's nonce");
        assert_eq!(device.credential, None);
        assert_eq!(device.enroll.as_deref(), Some("mse1.fleet-key"));
        assert_eq!(device.facts.arch, crate::release::arch());
        assert_eq!(
            std::fs::read(dir.path().join("device.cred")).unwrap(),
            b"msd1.first"
        );

        // The next connection shows the stored credential; an edge that says nothing
        // about health gets none.
        let (got, reg) = run(&connector, (hello(), Some(HelloTail { nonce })), |_| {
            Some((
                registered(),
                Some(RegisteredTail {
                    health_every_secs: 0,
                    ..tail(None)
                }),
            ))
        })
        .await;
        assert_eq!(got.unwrap().health_every_secs, 0);
        assert_eq!(
            reg.unwrap().2.unwrap().credential.as_deref(),
            Some("msd1.first")
        );
    }

    #[tokio::test]
    async fn an_edge_without_a_nonce_is_too_old_for_enrolment() {
        let dir = TempDir::new();
        let connector = enrolled(dir.path());
        let (got, reg) = run(&connector, (hello(), None), |_| None).await;
        let failure = got.err().unwrap();
        assert!(failure.refused, "permanent");
        assert!(
            failure.message.contains("too old for enrolment"),
            "{}",
            failure.message
        );
        assert!(reg.is_none(), "nothing sent");
    }

    #[tokio::test]
    async fn the_edge_must_confirm_this_device() {
        let dir = TempDir::new();
        let connector = enrolled(dir.path());
        let nonce = Some(HelloTail { nonce: [1; 32] });
        let other = RegisteredTail {
            device_id: "aaaaaaaaaaaaaaaa".into(),
            credential: Some("msd1.other".into()),
            health_every_secs: 300,
        };
        let (got, _) = run(&connector, (hello(), nonce.clone()), |_| {
            Some((registered(), Some(other)))
        })
        .await;
        let failure = got.err().unwrap();
        assert!(failure
            .message
            .contains("registered device aaaaaaaaaaaaaaaa"));
        assert!(!dir.path().join("device.cred").exists(), "nothing stored");
        let (got, _) = run(&connector, (hello(), nonce), |_| Some((registered(), None))).await;
        assert!(got.err().unwrap().message.contains("without confirming"));
    }

    #[tokio::test]
    async fn a_tunnel_token_registers_as_before() {
        let connector = Connector::new(sample_config()).unwrap();
        // A new edge's nonce is ignored; an old edge's answer has no tail.
        let (got, reg) = run(
            &connector,
            (hello(), Some(HelloTail { nonce: [2; 32] })),
            |_| Some((registered(), None)),
        )
        .await;
        let shook = got.unwrap();
        assert_eq!(shook.health_every_secs, 0);
        // An edge whose hello has no clock tail is never sent `DataCap` (it would end
        // the connection on a message it does not know).
        assert!(!shook.data_cap);
        let (msg, _, device) = reg.unwrap();
        let ConnectorMsg::Register(register) = msg else {
            panic!("{msg:?}")
        };
        assert_eq!(register.token, sample_config().token.as_str());
        assert!(device.is_none());
    }
}
