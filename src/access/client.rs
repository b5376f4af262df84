//! Reaching a device's TCP service through the edge: over QUIC to the edge's tunnel
//! port (ALPN `mailslot-access`), or over HTTPS as a WebSocket where only HTTPS gets
//! out. `auto` tries QUIC first and falls back after a bounded wait.
//!
//! Each [`AccessClient::open`] gives one byte stream to the service; over QUIC all of a
//! client's streams share one connection.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::ws;
use crate::transport::{quic, SendHalf, Session, TunnelStream};
use crate::wire::{self, AccessCredential, AccessError, AccessReply, AccessRequest};

/// Default QUIC port of an edge (its tunnel port).
pub(crate) const DEFAULT_QUIC_PORT: u16 = 7844;
/// Default HTTPS port of an edge.
pub(crate) const DEFAULT_HTTPS_PORT: u16 = 443;
/// How long `auto` waits for a QUIC handshake before trying HTTPS.
pub(crate) const QUIC_WAIT: Duration = Duration::from_secs(3);
/// How long after a failed QUIC attempt `auto` goes straight to HTTPS.
const QUIC_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Time to resolve a name, or to connect TCP.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for the edge to check credentials, reach the device and answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(40);
/// QUIC keep-alive towards the edge (the edge pings too, below its own idle timeout).
const KEEPALIVE: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How to reach the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// QUIC, then HTTPS if QUIC does not answer within [`QUIC_WAIT`].
    Auto,
    Quic,
    Https,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Transport::Auto),
            "quic" => Ok(Transport::Quic),
            "https" => Ok(Transport::Https),
            _ => Err(format!("--transport {s:?}: auto, quic or https")),
        }
    }
}

/// A host and port, the host unresolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPort {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl HostPort {
    /// Parses `host`, `host:port`, `[v6]` or `[v6]:port`.
    pub(crate) fn parse(s: &str, default_port: u16) -> Result<HostPort, String> {
        let bad = || format!("{s:?} is not host[:port]");
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            match after.strip_prefix(':') {
                Some(p) => (host, p.parse().map_err(|_| bad())?),
                None if after.is_empty() => (host, default_port),
                None => return Err(bad()),
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, p.parse().map_err(|_| bad())?),
                _ if !s.contains(':') => (s, default_port),
                // A bare IPv6 address.
                _ => (s, default_port),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }

    fn is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }

    async fn resolve(&self) -> Result<SocketAddr, String> {
        let lookup = tokio::net::lookup_host((self.host.as_str(), self.port));
        match tokio::time::timeout(CONNECT_TIMEOUT, lookup).await {
            Ok(Ok(mut addrs)) => addrs
                .next()
                .ok_or_else(|| format!("{} has no address", self.host)),
            Ok(Err(e)) => Err(format!("cannot resolve {}: {e}", self.host)),
            Err(_) => Err(format!("cannot resolve {}: timed out", self.host)),
        }
    }
}

impl std::fmt::Display for HostPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Everything the client needs to reach one hostname.
#[derive(Debug, Clone)]
pub(crate) struct ClientOptions {
    /// The device service's hostname (an ingress rule with a `tcp://`, `ssh://` or
    /// `rdp://` service).
    pub(crate) hostname: String,
    pub(crate) quic_edge: HostPort,
    pub(crate) https_edge: HostPort,
    /// DER of a private CA that signs the edge's certificate; `None`: the web PKI.
    pub(crate) edge_ca: Option<Vec<u8>>,
    pub(crate) credential: AccessCredential,
    pub(crate) transport: Transport,
}

impl ClientOptions {
    /// The name checked in the edge's certificate: the edge's own name when it was
    /// given as a name, else the hostname (edges serve certificates covering it).
    fn server_name(&self, edge: &HostPort) -> Result<ServerName<'static>, String> {
        let name = if edge.is_ip() {
            self.hostname.clone()
        } else {
            edge.host.clone()
        };
        ServerName::try_from(name.clone()).map_err(|_| format!("{name:?} is not a TLS name"))
    }
}

/// Why no stream could be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// The edge answered and refused; retrying the same way will not help.
    #[error("{message}")]
    Refused { error: AccessError, message: String },
    /// The edge could not be reached over this transport.
    #[error("{0}")]
    Transport(String),
}

/// A stream to the device's service.
pub(crate) enum AccessStream {
    Quic(TunnelStream),
    Https(Box<ws::WsStream<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl AccessStream {
    /// Waits until the edge has everything written so far, after `shutdown`: closing
    /// the QUIC connection before then could lose the end of the stream. The caller
    /// bounds the wait.
    pub(crate) async fn delivered(&mut self) {
        match self {
            AccessStream::Quic(s) => {
                // Other transports (HTTP/2) deliver what they accepted before a close.
                #[allow(unreachable_patterns, clippy::single_match)]
                match &s.send {
                    SendHalf::Quic(send) => {
                        let _ = send.stopped().await;
                    }
                    _ => {}
                }
            }
            // TCP delivers what it accepted before the close that follows.
            AccessStream::Https(_) => {}
        }
    }
}

impl AsyncRead for AccessStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AccessStream::Quic(s) => Pin::new(s).poll_read(cx, buf),
            AccessStream::Https(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AccessStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            AccessStream::Quic(s) => Pin::new(s).poll_write(cx, buf),
            AccessStream::Https(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AccessStream::Quic(s) => Pin::new(s).poll_flush(cx),
            AccessStream::Https(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AccessStream::Quic(s) => Pin::new(s).poll_shutdown(cx),
            AccessStream::Https(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens access streams; holds the QUIC connection between them.
pub(crate) struct AccessClient {
    opts: ClientOptions,
    quic: tokio::sync::Mutex<Option<(quinn::Endpoint, Session)>>,
    quic_failed: Mutex<Option<Instant>>,
}

impl AccessClient {
    pub(crate) fn new(opts: ClientOptions) -> Arc<AccessClient> {
        Arc::new(AccessClient {
            opts,
            quic: tokio::sync::Mutex::new(None),
            quic_failed: Mutex::new(None),
        })
    }

    pub(crate) fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// One stream to the service, over the configured transport.
    pub(crate) async fn open(&self) -> Result<AccessStream, ClientError> {
        match self.opts.transport {
            Transport::Quic => self.open_quic(None).await,
            Transport::Https => self.open_https().await,
            Transport::Auto => {
                let recently_failed = self
                    .quic_failed
                    .lock()
                    .map(|t| t.is_some_and(|t| t.elapsed() < QUIC_RETRY_AFTER))
                    .unwrap_or(false);
                if !recently_failed {
                    match self.open_quic(Some(QUIC_WAIT)).await {
                        Err(ClientError::Transport(why)) => {
                            log::info!(
                                "QUIC to {} failed ({why}); using HTTPS to {}",
                                self.opts.quic_edge,
                                self.opts.https_edge
                            );
                            if let Ok(mut t) = self.quic_failed.lock() {
                                *t = Some(Instant::now());
                            }
                        }
                        other => return other,
                    }
                }
                self.open_https().await
            }
        }
    }

    async fn quic_session(&self, wait: Duration, fresh: bool) -> Result<Session, ClientError> {
        let mut slot = self.quic.lock().await;
        if let Some((_, s)) = slot.as_ref() {
            if !fresh {
                return Ok(s.clone());
            }
        }
        let t = ClientError::Transport;
        let remote = self.opts.quic_edge.resolve().await.map_err(t)?;
        let endpoint = quic::client_endpoint(remote)
            .map_err(|e| ClientError::Transport(format!("UDP socket: {e}")))?;
        let mut tls = crate::tls::edge_client_config(self.opts.edge_ca.as_deref())
            .map_err(|e| ClientError::Transport(format!("TLS setup: {e}")))?;
        tls.alpn_protocols = vec![wire::ACCESS_ALPN.to_vec()];
        let name = self
            .opts
            .server_name(&self.opts.quic_edge)
            .map_err(ClientError::Transport)?;
        let session = quic::connect(
            &endpoint,
            remote,
            &name.to_str(),
            tls,
            quic::ClientTuning {
                keepalive: KEEPALIVE,
                idle_timeout: IDLE_TIMEOUT,
                max_streams: 0,
                handshake_timeout: wait,
                // One connection of the operator's own; its uploads are what it sends.
                send_window: quic::device_send_window(1),
            },
        )
        .await
        .map_err(|e| ClientError::Transport(e.message))?;
        log::info!("connected to edge {} over QUIC", self.opts.quic_edge);
        *slot = Some((endpoint, session.clone()));
        Ok(session)
    }

    async fn open_quic(&self, wait: Option<Duration>) -> Result<AccessStream, ClientError> {
        let wait = wait.unwrap_or(CONNECT_TIMEOUT);
        let mut fresh = false;
        loop {
            let session = self.quic_session(wait, fresh).await?;
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, session.open_stream()).await;
            let mut stream = match stream {
                Ok(Ok(s)) => s,
                // A pooled connection that died: dial once more.
                Ok(Err(_)) | Err(_) if !fresh => {
                    fresh = true;
                    continue;
                }
                Ok(Err(e)) => return Err(ClientError::Transport(format!("no stream: {e}"))),
                Err(_) => {
                    return Err(ClientError::Transport(
                        "the edge does not accept access streams".into(),
                    ))
                }
            };
            let req = AccessRequest {
                version: wire::PROTOCOL_VERSION,
                hostname: self.opts.hostname.clone(),
                credential: self.opts.credential.clone(),
            };
            let frame = wire::encode_access_frame(&req)
                .map_err(|e| ClientError::Transport(format!("access request: {e}")))?;
            let exchange = async {
                stream.write_all(&frame).await?;
                wire::read_access_frame::<_, AccessReply>(&mut stream)
                    .await
                    .map_err(std::io::Error::other)
            };
            return match tokio::time::timeout(REPLY_TIMEOUT, exchange).await {
                Ok(Ok(AccessReply::Ok)) => Ok(AccessStream::Quic(stream)),
                Ok(Ok(AccessReply::Err { error, message })) => {
                    Err(ClientError::Refused { error, message })
                }
                Ok(Err(e)) if !fresh => {
                    log::debug!("access stream failed ({e}); reconnecting");
                    fresh = true;
                    continue;
                }
                Ok(Err(e)) => Err(ClientError::Transport(format!("edge: {e}"))),
                Err(_) => Err(ClientError::Transport(format!(
                    "no answer from the edge within {REPLY_TIMEOUT:?}"
                ))),
            };
        }
    }

    async fn open_https(&self) -> Result<AccessStream, ClientError> {
        let t = ClientError::Transport;
        let edge = &self.opts.https_edge;
        let remote = edge.resolve().await.map_err(t)?;
        let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(remote)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(t(format!("cannot connect to {edge}: {e}"))),
            Err(_) => return Err(t(format!("cannot connect to {edge}: timed out"))),
        };
        let _ = tcp.set_nodelay(true);
        let mut tls = crate::tls::edge_client_config(self.opts.edge_ca.as_deref())
            .map_err(|e| t(format!("TLS setup: {e}")))?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = self.opts.server_name(edge).map_err(t)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let handshake = async {
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| ws::WsError::Protocol(format!("TLS: {e}")))?;
            let headers: Vec<(&str, String)> = match &self.opts.credential {
                AccessCredential::None => Vec::new(),
                AccessCredential::Token(tok) => vec![("Authorization", format!("Bearer {tok}"))],
                AccessCredential::Service { id, secret } => vec![
                    ("Mailslot-Client-Id", id.clone()),
                    ("Mailslot-Client-Secret", secret.clone()),
                ],
            };
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            ws::client_handshake(
                tls,
                &self.opts.hostname,
                "/",
                wire::ACCESS_WS_PROTOCOL,
                &headers,
            )
            .await
        };
        match tokio::time::timeout(REPLY_TIMEOUT, handshake).await {
            Ok(Ok(stream)) => Ok(AccessStream::Https(Box::new(stream))),
            Ok(Err(ws::WsError::Status { status, message })) => Err(ClientError::Refused {
                error: match status {
                    401 => AccessError::Unauthorized,
                    403 => AccessError::Forbidden,
                    404 => AccessError::NoTunnel,
                    400 => AccessError::NotStream,
                    _ => AccessError::Unavailable,
                },
                message,
            }),
            Ok(Err(e)) => Err(t(format!("HTTPS to {edge}: {e}"))),
            Err(_) => Err(t(format!("no answer from {edge} within {REPLY_TIMEOUT:?}"))),
        }
    }

    /// Closes the QUIC connection, if any, and waits briefly for the edge to hear it.
    pub(crate) async fn close(&self) {
        if let Some((endpoint, session)) = self.quic.lock().await.take() {
            session.close("done");
            let _ = tokio::time::timeout(Duration::from_millis(500), endpoint.wait_idle()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports() {
        let hp = |s, d| HostPort::parse(s, d).unwrap();
        assert_eq!(
            hp("edge.example.com", 7844).to_string(),
            "edge.example.com:7844"
        );
        assert_eq!(hp("edge.example.com:443", 7844).port, 443);
        assert_eq!(hp("[::1]:9", 7844).host, "::1");
        assert_eq!(hp("[::1]", 443).to_string(), "[::1]:443");
        assert!(HostPort::parse("edge:port", 1).is_err());
        assert!(HostPort::parse(":80", 1).is_err());
    }
}
