//! The connections between edges: QUIC on each edge's `member:` address, one
//! long-lived connection from each edge to each other edge it forwards to, one stream
//! per forwarded request, both ends authenticated with the cluster secret.
//!
//! Why QUIC: the edge already runs quinn for its tunnels, so a second endpoint costs
//! no new crate; one connection multiplexes any number of requests without
//! head-of-line blocking between them (a slow download never holds up another
//! visitor's request, as it would on one TCP connection), a new stream costs no round
//! trip, and keep-alives find a dead peer in [`IDLE_TIMEOUT`] where TCP would wait for
//! minutes.
//!
//! Why an HMAC over the TLS exporter rather than certificates: the cluster already
//! shares one secret (`cluster: secret-file:`), and a second PKI (a CA, certificates
//! per edge, their renewal) would be one more thing to run and get wrong. TLS gives
//! the connection its privacy and a session-unique key (the exporter, RFC 8446 7.5);
//! each side proves it holds the secret with an HMAC-SHA256 of that exporter under the
//! secret, with a label per role so that one side's proof can never be sent back as
//! the other's. A man in the middle terminates two TLS sessions with two different
//! exporters and, without the secret, can produce the proof for neither; a proof seen
//! once is worthless for any other session. The certificate itself (made at start,
//! self-signed) is not checked: the proofs are the authentication.
//!
//! ```text
//!  B (forwards)                                   A (holds the tunnel)
//!   | QUIC handshake, ALPN mailslot-peer            |
//!   | stream 0: HMAC(secret, "…client" ‖ exporter)  |  32 bytes; A checks it, else closes
//!   |            HMAC(secret, "…server" ‖ exporter) |  32 bytes; B checks it, else closes
//!   | stream n: [u16 len][postcard PeerHeader]      |  only accepted after stream 0
//!   |   Http: HTTP/1.1 request ⇄ response, ...      |  kept for B's next requests to A;
//!   |         each with a mailslot-peer-visitor     |  the visitor as B saw them
//!   |   Raw:  ⇐ AccessReply frame, then bytes ⇄     |  an access stream (SSH, TCP)
//! ```
//!
//! Bounds: at most [`MAX_PEERS`] edges dialled and [`MAX_PEERS`] connections accepted,
//! [`MAX_STREAMS_PER_PEER`] streams at once on each connection (QUIC's stream credit:
//! more wait, bounded by [`OPEN_TIMEOUT`]), a header (and a visitor) of at most
//! [`MAX_HEADER`] bytes.
//! A peer that cannot be reached within [`CONNECT_TIMEOUT`] is not dialled again for
//! [`RETRY_AFTER`]: the requests meanwhile are answered at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::edge::flood::{log_limited, LogLimit};
use crate::transport::{RecvHalf, SendHalf, TunnelStream};
use crate::util::lock;

/// TLS ALPN of connections between edges.
pub(crate) const ALPN: &[u8] = b"mailslot-peer";
/// Version of the peer protocol; a header with another is refused.
pub(crate) const VERSION: u8 = 1;
/// Most edges this edge dials, and most connections it accepts from edges.
pub(crate) const MAX_PEERS: usize = 64;
/// Most streams (forwarded requests) at once on one connection between two edges.
pub(crate) const MAX_STREAMS_PER_PEER: u32 = 1024;
/// Longest wait for a connection to a peer: name look-up, handshake and proofs.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for a stream on a connection whose streams are all in use.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a peer that could not be reached is not dialled again.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Keep-alive on connections between edges.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// A connection between edges that hears nothing for this long is dead (a killed
/// edge): its requests fail with a 502 after at most this long.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Longest request header (its `X-Forwarded-For` chain is the only long part).
pub(crate) const MAX_HEADER: usize = 16 * 1024;
/// Longest wait for a stream's header once the stream is open.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of a proof (HMAC-SHA256).
const PROOF_LEN: usize = 32;
const CLIENT_LABEL: &[u8] = b"mailslot-peer v1 client";
const SERVER_LABEL: &[u8] = b"mailslot-peer v1 server";
const EXPORTER_LABEL: &[u8] = b"EXPORTER-mailslot-peer-auth";
/// QUIC close code of a connection whose proof failed.
const CLOSE_REFUSED: u32 = 1;

static AUTH_LOG: LogLimit = LogLimit::new(10, Duration::from_secs(60));

/// What kind of stream a peer opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PeerKind {
    /// HTTP/1.1 requests follow, one after the other (the forwarding edge keeps the
    /// stream for its next requests to this edge), each with its visitor in a
    /// [`VISITOR_HEADER`].
    Http,
    /// An access stream (SSH, TCP) to the hostname's stream rule: the receiving edge
    /// answers with a [`crate::wire::AccessReply`] frame, then the stream carries the
    /// raw bytes both ways.
    Raw,
}

/// The start of each stream: what follows, and from which edge.
///
/// ```text
///  [u16 BE length][postcard: version, kind, hops, from, visitor (Raw only)]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerHeader {
    pub(crate) version: u8,
    pub(crate) kind: PeerKind,
    /// Edges the requests went through before this stream: always 1 (the edge the
    /// visitor reached); the receiving edge never forwards them again.
    pub(crate) hops: u8,
    /// The sending edge's member address (for logs and error pages).
    pub(crate) from: String,
    /// The access client of a `Raw` stream (an `Http` stream's requests carry theirs).
    pub(crate) visitor: Option<PeerVisitor>,
}

/// The request header carrying each forwarded HTTP request's [`PeerVisitor`]
/// (base64url of its postcard bytes). Believed only on a stream from a proven peer,
/// removed before anything else sees the request.
pub(crate) const VISITOR_HEADER: http::HeaderName =
    http::HeaderName::from_static("mailslot-peer-visitor");

/// What the first edge knows about a forwarded request: who the visitor is, as it saw
/// them, and where the request goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerVisitor {
    /// Canonical host and authority, as the first edge routed them.
    pub(crate) host: String,
    pub(crate) authority: String,
    /// The visitor's address as the first edge saw it.
    pub(crate) peer: SocketAddr,
    /// The client address the first edge used for its policies and limits.
    pub(crate) client_ip: IpAddr,
    /// The `X-Forwarded-For` value the first edge would have sent the origin.
    pub(crate) forwarded_for: String,
    /// Whether the visitor came over HTTPS.
    pub(crate) https: bool,
    /// Whether the visitor is a trusted proxy of the first edge.
    pub(crate) trusted: bool,
}

impl PeerVisitor {
    /// As the value of a [`VISITOR_HEADER`].
    pub(crate) fn to_header(&self) -> Result<http::HeaderValue, String> {
        use base64::Engine;
        let bytes = postcard::to_stdvec(self).map_err(|e| format!("peer visitor: {e}"))?;
        if bytes.len() > MAX_HEADER {
            return Err(format!(
                "peer visitor of {} bytes, more than {MAX_HEADER}",
                bytes.len()
            ));
        }
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        http::HeaderValue::from_str(&text).map_err(|e| e.to_string())
    }

    /// From the value of a [`VISITOR_HEADER`].
    pub(crate) fn from_header(v: &http::HeaderValue) -> Result<PeerVisitor, String> {
        use base64::Engine;
        if v.len() > MAX_HEADER * 2 {
            return Err("peer visitor header too long".into());
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.as_bytes())
            .map_err(|e| format!("peer visitor header: {e}"))?;
        postcard::from_bytes(&bytes).map_err(|e| format!("peer visitor header: {e}"))
    }
}

impl PeerHeader {
    /// The header framed for the stream.
    pub(crate) fn encode(&self) -> Result<Vec<u8>, String> {
        let body = postcard::to_stdvec(self).map_err(|e| format!("peer header: {e}"))?;
        if body.len() > MAX_HEADER {
            return Err(format!(
                "peer header of {} bytes, more than {MAX_HEADER}",
                body.len()
            ));
        }
        let len = u16::try_from(body.len()).map_err(|_| "peer header too long".to_string())?;
        let mut out = Vec::with_capacity(2 + body.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Reads one framed header, refusing what this edge does not serve: another
    /// version, or a request that went through more than one edge already.
    pub(crate) async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<PeerHeader, String> {
        let read = async {
            let mut len = [0u8; 2];
            r.read_exact(&mut len).await.map_err(|e| e.to_string())?;
            let len = usize::from(u16::from_be_bytes(len));
            if len > MAX_HEADER {
                return Err(format!(
                    "peer header of {len} bytes, more than {MAX_HEADER}"
                ));
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).await.map_err(|e| e.to_string())?;
            postcard::from_bytes::<PeerHeader>(&body).map_err(|e| format!("peer header: {e}"))
        };
        let h = tokio::time::timeout(HEADER_TIMEOUT, read)
            .await
            .map_err(|_| format!("no peer header within {HEADER_TIMEOUT:?}"))??;
        if h.version != VERSION {
            return Err(format!(
                "peer protocol version {} (this edge speaks {VERSION}): run one release on every edge",
                h.version
            ));
        }
        if h.hops != 1 {
            return Err(format!(
                "request forwarded {} times: edges forward a request at most once",
                h.hops
            ));
        }
        Ok(h)
    }
}

/// One edge's side of the connections between edges: the endpoint on its `member:`
/// address (accepting peers, and dialling them from the same socket) and the
/// connections it dialled, by member address.
pub(crate) struct Peers {
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    key: ring::hmac::Key,
    /// Dialled peers by member address: at most [`MAX_PEERS`].
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    /// Accepted connections: at most [`MAX_PEERS`].
    inbound: Arc<Semaphore>,
}

/// One dialled peer: its connection, or why it is not to be dialled now.
#[derive(Default)]
struct Slot {
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    conn: Option<quinn::Connection>,
    /// Until when the peer is not dialled again, and why.
    down: Option<(Instant, String)>,
}

impl Peers {
    /// Peers on `socket` (already bound), proving `secret`. Must be made inside the
    /// runtime.
    pub(crate) fn new(socket: std::net::UdpSocket, secret: &[u8]) -> Result<Peers, String> {
        let runtime = quinn::default_runtime().ok_or("no async runtime for QUIC")?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config()?),
            socket,
            runtime,
        )
        .map_err(|e| format!("peer listener: {e}"))?;
        Ok(Peers {
            endpoint,
            client: client_config()?,
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            slots: Mutex::default(),
            inbound: Arc::new(Semaphore::new(MAX_PEERS)),
        })
    }

    /// The address the endpoint is bound to.
    pub(crate) fn local_addr(&self) -> Result<SocketAddr, String> {
        self.endpoint.local_addr().map_err(|e| e.to_string())
    }

    /// Closes every connection (shutdown).
    pub(crate) fn close(&self) {
        self.endpoint.close(0u32.into(), b"edge shutting down");
    }

    /// A new stream to `member`, on the connection to it (made, and proven, when there
    /// is none or it was lost). `Err`: why the peer cannot be reached, for the visitor's
    /// error page and the log.
    pub(crate) async fn open(&self, member: &str) -> Result<TunnelStream, String> {
        let slot = self.slot(member)?;
        // A connection found dead when the stream is opened is made again, once.
        for _ in 0..2 {
            let conn = self.connection(slot.clone(), member).await?;
            match tokio::time::timeout(OPEN_TIMEOUT, conn.open_bi()).await {
                Ok(Ok((send, recv))) => {
                    return Ok(TunnelStream {
                        send: SendHalf::Quic(send),
                        recv: RecvHalf::Quic(recv),
                    })
                }
                Ok(Err(e)) => {
                    log::info!("cluster: connection to peer {member} lost: {e}");
                    let mut st = slot.state.lock().await;
                    if st
                        .conn
                        .as_ref()
                        .is_some_and(|c| c.stable_id() == conn.stable_id())
                    {
                        st.conn = None;
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "all {MAX_STREAMS_PER_PEER} streams to {member} busy for {OPEN_TIMEOUT:?}"
                    ))
                }
            }
        }
        Err(format!("the connection to {member} was lost twice"))
    }

    /// The slot of `member`, made if new; a full table first drops the peers with no
    /// connection.
    fn slot(&self, member: &str) -> Result<Arc<Slot>, String> {
        let mut slots = lock(&self.slots);
        if let Some(s) = slots.get(member) {
            return Ok(s.clone());
        }
        if slots.len() >= MAX_PEERS {
            slots.retain(|_, s| {
                s.state.try_lock().map_or(true, |st| {
                    st.conn.as_ref().is_some_and(|c| c.close_reason().is_none())
                })
            });
        }
        if slots.len() >= MAX_PEERS {
            return Err(format!("more than {MAX_PEERS} peer edges"));
        }
        let s = Arc::new(Slot::default());
        slots.insert(member.to_string(), s.clone());
        Ok(s)
    }

    /// The live connection of `slot`, dialled now when there is none (one dial at a
    /// time per peer: requests arriving meanwhile wait for it).
    async fn connection(&self, slot: Arc<Slot>, member: &str) -> Result<quinn::Connection, String> {
        let mut st = slot.state.lock().await;
        if let Some(c) = &st.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
            st.conn = None;
        }
        if let Some((until, why)) = &st.down {
            if Instant::now() < *until {
                return Err(why.clone());
            }
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, self.dial(member)).await {
            Ok(Ok(c)) => {
                log::info!("cluster: connected to peer {member}");
                st.down = None;
                st.conn = Some(c.clone());
                tokio::spawn(watch(slot.clone(), c.clone(), member.to_string()));
                Ok(c)
            }
            Ok(Err(why)) => {
                st.down = Some((Instant::now() + RETRY_AFTER, why.clone()));
                Err(why)
            }
            Err(_) => {
                let why = format!("peer {member} did not answer within {CONNECT_TIMEOUT:?}");
                st.down = Some((Instant::now() + RETRY_AFTER, why.clone()));
                Err(why)
            }
        }
    }

    async fn dial(&self, member: &str) -> Result<quinn::Connection, String> {
        let addr = match member.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => tokio::net::lookup_host(member)
                .await
                .map_err(|e| format!("peer {member}: {e}"))?
                .next()
                .ok_or_else(|| format!("peer {member}: the name has no address"))?,
        };
        let conn = self
            .endpoint
            .connect_with(self.client.clone(), addr, "mailslot-peer")
            .map_err(|e| format!("peer {member}: {e}"))?
            .await
            .map_err(|e| format!("peer {member}: {e}"))?;
        prove_client(&conn, &self.key)
            .await
            .map_err(|e| format!("peer {member}: {e}"))?;
        Ok(conn)
    }

    /// Accepts peers until the endpoint closes; each stream of a proven peer goes to
    /// `serve` with the peer's address.
    pub(crate) async fn accept<F>(self: Arc<Self>, serve: F)
    where
        F: Fn(TunnelStream, SocketAddr) + Send + Sync + Clone + 'static,
    {
        while let Some(incoming) = self.endpoint.accept().await {
            let Ok(permit) = self.inbound.clone().try_acquire_owned() else {
                log_limited!(
                    AUTH_LOG,
                    Warn,
                    "cluster: connection from {} refused: {MAX_PEERS} peers connected",
                    incoming.remote_address()
                );
                incoming.refuse();
                continue;
            };
            let me = self.clone();
            let serve = serve.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let remote = incoming.remote_address();
                let conn = match tokio::time::timeout(CONNECT_TIMEOUT, async {
                    let conn = incoming.await.map_err(|e| e.to_string())?;
                    prove_server(&conn, &me.key).await.map(|()| conn)
                })
                .await
                {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(why)) => {
                        log_limited!(AUTH_LOG, Warn, "cluster: peer {remote} refused: {why}");
                        return;
                    }
                    Err(_) => {
                        log_limited!(
                            AUTH_LOG,
                            Warn,
                            "cluster: peer {remote} refused: no proof within {CONNECT_TIMEOUT:?}"
                        );
                        return;
                    }
                };
                log::info!("cluster: peer {remote} connected");
                loop {
                    match conn.accept_bi().await {
                        Ok((send, recv)) => serve(
                            TunnelStream {
                                send: SendHalf::Quic(send),
                                recv: RecvHalf::Quic(recv),
                            },
                            remote,
                        ),
                        Err(e) => {
                            log::info!("cluster: peer {remote} gone: {e}");
                            return;
                        }
                    }
                }
            });
        }
    }
}

/// Waits for the end of `conn`, the connection of `slot`: one that stopped answering
/// (a killed edge) leaves its peer not dialled for [`RETRY_AFTER`], so the requests
/// right after it are answered at once instead of each waiting for a dial.
async fn watch(slot: Arc<Slot>, conn: quinn::Connection, member: String) {
    let why = conn.closed().await;
    log::info!("cluster: connection to peer {member} ended: {why}");
    if matches!(why, quinn::ConnectionError::TimedOut) {
        let mut st = slot.state.lock().await;
        if st
            .conn
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            st.conn = None;
            st.down = Some((
                Instant::now() + RETRY_AFTER,
                format!("peer {member} stopped answering"),
            ));
        }
    }
}

/// What a side's proof signs: its role's label and the connection's TLS exporter.
fn signed(conn: &quinn::Connection, label: &[u8]) -> Result<Vec<u8>, String> {
    let mut ekm = [0u8; 32];
    conn.export_keying_material(&mut ekm, EXPORTER_LABEL, b"")
        .map_err(|_| "no TLS exporter".to_string())?;
    let mut data = Vec::with_capacity(label.len() + ekm.len());
    data.extend_from_slice(label);
    data.extend_from_slice(&ekm);
    Ok(data)
}

/// The proof of `label`'s side of `conn`.
fn proof(
    conn: &quinn::Connection,
    key: &ring::hmac::Key,
    label: &[u8],
) -> Result<ring::hmac::Tag, String> {
    Ok(ring::hmac::sign(key, &signed(conn, label)?))
}

/// Checks the other side's proof (in constant time); closes `conn` when it fails.
fn check(
    conn: &quinn::Connection,
    key: &ring::hmac::Key,
    label: &[u8],
    got: &[u8],
) -> Result<(), String> {
    if ring::hmac::verify(key, &signed(conn, label)?, got).is_ok() {
        return Ok(());
    }
    conn.close(CLOSE_REFUSED.into(), b"cluster secret mismatch");
    Err(
        "it does not hold this cluster's secret (the same cluster: secret-file on every edge)"
            .into(),
    )
}

async fn write_proof<W: AsyncWrite + Unpin>(
    w: &mut W,
    tag: &ring::hmac::Tag,
) -> Result<(), String> {
    w.write_all(tag.as_ref()).await.map_err(|e| e.to_string())
}

async fn read_proof<R: AsyncRead + Unpin>(r: &mut R) -> Result<[u8; PROOF_LEN], String> {
    let mut got = [0u8; PROOF_LEN];
    r.read_exact(&mut got)
        .await
        .map_err(|e| format!("no proof of the cluster secret: {e}"))?;
    Ok(got)
}

/// The dialling side: sends its proof on the first stream, checks the other's.
async fn prove_client(conn: &quinn::Connection, key: &ring::hmac::Key) -> Result<(), String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_proof(&mut send, &proof(conn, key, CLIENT_LABEL)?).await?;
    let _ = send.finish();
    let got = match read_proof(&mut recv).await {
        Ok(got) => got,
        Err(e) => {
            let refused = matches!(
                conn.close_reason(),
                Some(quinn::ConnectionError::ApplicationClosed(c))
                    if c.error_code == quinn::VarInt::from_u32(CLOSE_REFUSED)
            );
            return Err(if refused {
                "it refused this edge's proof: the two edges do not hold the same cluster's \
                 secret (cluster: secret-file)"
                    .to_string()
            } else {
                e
            });
        }
    };
    check(conn, key, SERVER_LABEL, &got)
        .map_err(|_| "it does not hold this cluster's secret".to_string())
}

/// The accepting side: checks the dialler's proof on its first stream before any
/// other stream is accepted, then sends its own.
async fn prove_server(conn: &quinn::Connection, key: &ring::hmac::Key) -> Result<(), String> {
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let got = read_proof(&mut recv).await?;
    check(conn, key, CLIENT_LABEL, &got)?;
    write_proof(&mut send, &proof(conn, key, SERVER_LABEL)?).await?;
    let _ = send.finish();
    Ok(())
}

fn transport(peer_streams: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEPALIVE));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(peer_streams));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t
}

/// The accepting side's TLS: a certificate made now (the proofs authenticate, not it).
fn server_config() -> Result<quinn::ServerConfig, String> {
    let err = |e: rcgen::Error| format!("peer certificate: {e}");
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = rcgen::CertificateParams::new(vec!["mailslot-peer".to_string()])
        .map_err(err)?
        .self_signed(&key)
        .map_err(err)?;
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let mut tls = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .map_err(|e| format!("peer certificate: {e}"))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport(MAX_STREAMS_PER_PEER)));
    Ok(cfg)
}

/// The dialling side's TLS: any certificate (still checking the peer holds its key);
/// the peer opens no streams back.
fn client_config() -> Result<quinn::ClientConfig, String> {
    let mut tls = crate::tls::origin_client_config(None, true).map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport(0)));
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn peers(secret: &[u8]) -> Arc<Peers> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        Arc::new(Peers::new(socket, secret).unwrap())
    }

    /// A listening edge whose streams answer "served" and are counted.
    fn listening(secret: &[u8]) -> (Arc<Peers>, String, Arc<AtomicUsize>) {
        let a = peers(secret);
        let addr = a.local_addr().unwrap().to_string();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        tokio::spawn(a.clone().accept(move |mut stream, _| {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let _ = stream.write_all(b"served").await;
                let _ = stream.shutdown().await;
            });
        }));
        (a, addr, served)
    }

    fn visitor() -> PeerVisitor {
        PeerVisitor {
            host: "dev42.example.com".into(),
            authority: "dev42.example.com:8443".into(),
            peer: "192.0.2.7:50000".parse().unwrap(),
            client_ip: "198.51.100.1".parse().unwrap(),
            forwarded_for: "198.51.100.1, 192.0.2.7".into(),
            https: true,
            trusted: true,
        }
    }

    fn header() -> PeerHeader {
        PeerHeader {
            version: VERSION,
            kind: PeerKind::Raw,
            hops: 1,
            from: "10.0.0.2:7844".into(),
            visitor: Some(visitor()),
        }
    }

    #[tokio::test]
    async fn edges_with_the_secret_get_streams_on_one_connection() {
        let (_a, addr, served) = listening(SECRET);
        let b = peers(SECRET);
        for _ in 0..3 {
            let mut s = b.open(&addr).await.unwrap();
            s.write_all(b"x").await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, b"served");
        }
        assert_eq!(served.load(Ordering::SeqCst), 3);
        let slot = b.slot(&addr).unwrap();
        let st = slot.state.lock().await;
        assert!(st.conn.is_some(), "one long-lived connection");
    }

    #[tokio::test]
    async fn an_edge_without_the_secret_gets_no_stream() {
        let (_a, addr, served) = listening(SECRET);
        let c = peers(b"another secret, 32 characters long!!");
        let Err(why) = c.open(&addr).await else {
            panic!("a stream without the secret")
        };
        assert!(why.contains("cluster's secret"), "{why}");
        assert_eq!(served.load(Ordering::SeqCst), 0);
        // And it is not dialled again at once: the next request is answered at once.
        let start = Instant::now();
        assert!(c.open(&addr).await.is_err());
        assert!(start.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_client_skipping_the_proof_gets_no_stream_served() {
        let (_a, addr, served) = listening(SECRET);
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = ep
            .connect_with(client_config().unwrap(), addr.parse().unwrap(), "x")
            .unwrap()
            .await
            .unwrap();
        // A forged request on the first stream, then on a second one: neither is served.
        for _ in 0..2 {
            let Ok((mut send, mut recv)) = conn.open_bi().await else {
                break;
            };
            let _ = send.write_all(&header().encode().unwrap()).await;
            let _ = send
                .write_all(b"GET / HTTP/1.1\r\nhost: dev42.example.com\r\n\r\n")
                .await;
            let _ = send.finish();
            let mut got = Vec::new();
            let read = tokio::time::timeout(CONNECT_TIMEOUT * 2, recv.read_to_end(1024)).await;
            if let Ok(Ok(bytes)) = read {
                got = bytes;
            }
            assert!(got.is_empty(), "{got:?}");
        }
        let closed = tokio::time::timeout(CONNECT_TIMEOUT * 2, conn.closed()).await;
        assert!(closed.is_ok(), "the connection is closed");
        assert_eq!(served.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_listener_without_the_secret_gets_no_request() {
        // A listener that takes any proof and answers with one made up.
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap().to_string();
        let ep = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config().unwrap()),
            socket,
            quinn::default_runtime().unwrap(),
        )
        .unwrap();
        let streams = Arc::new(AtomicUsize::new(0));
        let count = streams.clone();
        tokio::spawn(async move {
            let conn = ep.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let _ = read_proof(&mut recv).await;
            let _ = send.write_all(&[7u8; PROOF_LEN]).await;
            let _ = send.finish();
            while conn.accept_bi().await.is_ok() {
                count.fetch_add(1, Ordering::SeqCst);
            }
        });
        let b = peers(SECRET);
        let Err(why) = b.open(&addr).await else {
            panic!("a stream to a listener without the secret")
        };
        assert!(why.contains("does not hold this cluster's secret"), "{why}");
        assert_eq!(streams.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_unreachable_peer_fails_within_the_connect_timeout() {
        // A bound socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let b = peers(SECRET);
        let start = Instant::now();
        let Err(why) = b.open(&addr).await else {
            panic!("a stream to nobody")
        };
        assert!(why.contains("did not answer"), "{why}");
        assert!(start.elapsed() < CONNECT_TIMEOUT + Duration::from_millis(500));
    }

    #[tokio::test]
    async fn headers_round_trip_and_hops_and_versions_are_checked() {
        let h = header();
        let bytes = h.encode().unwrap();
        assert_eq!(PeerHeader::read(&mut &bytes[..]).await.unwrap(), h);
        let again = PeerHeader {
            hops: 2,
            ..header()
        }
        .encode()
        .unwrap();
        let why = PeerHeader::read(&mut &again[..]).await.unwrap_err();
        assert!(why.contains("at most once"), "{why}");
        let newer = PeerHeader {
            version: 2,
            ..header()
        }
        .encode()
        .unwrap();
        let why = PeerHeader::read(&mut &newer[..]).await.unwrap_err();
        assert!(why.contains("version 2"), "{why}");
        let long = [0xff, 0xff];
        assert!(PeerHeader::read(&mut &long[..]).await.is_err());
        let truncated = &bytes[..bytes.len() - 1];
        assert!(PeerHeader::read(&mut &truncated[..]).await.is_err());
    }

    #[test]
    fn visitors_round_trip_through_their_header_and_bad_ones_are_refused() {
        let v = visitor();
        assert_eq!(
            PeerVisitor::from_header(&v.to_header().unwrap()).unwrap(),
            v
        );
        let bad = http::HeaderValue::from_static("bm90IGEgdmlzaXRvcg");
        assert!(PeerVisitor::from_header(&bad).is_err());
        let bad = http::HeaderValue::from_static("%%%");
        assert!(PeerVisitor::from_header(&bad).is_err());
    }
}
