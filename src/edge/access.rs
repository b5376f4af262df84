//! Access at the edge: operators' `mailslot access` clients (QUIC on the tunnel port
//! with ALPN `mailslot-access`, or a WebSocket on the HTTPS port), public TCP ports
//! (`tcp-ports:`), and the credential gate in front of HTTP hostnames with a policy.
//!
//! Every way in is checked against [`policy`](super::policy) before anything reaches a
//! tunnel, so a refused client never causes a connection on the device. An admitted
//! client gets a raw tunnel stream ([`StreamKind::Raw`]) to the hostname's stream rule,
//! and one log line when it ends: who, which hostname, from where, when, how long and
//! how many bytes.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use super::body::{self, Body};
use super::flood::log_limited;
use super::live::Live;
use super::policy::{Denied, HostKind, Identity, TcpPortSpec};
use super::registry::Route;
use super::stream::{self, DialError};
use super::EdgeState;
use crate::access::ws::{self, Role, WsStream};
use crate::transport::{RecvHalf, SendHalf, TunnelStream};
use crate::wire::{self, AccessCredential, AccessError, AccessReply, AccessRequest, StreamKind};

/// Access streams open at once on this edge (all clients and TCP ports together).
pub const MAX_ACCESS_STREAMS: usize = 4096;
/// Access client connections (QUIC) at once.
pub const MAX_ACCESS_CONNS: usize = 1024;
/// Concurrent streams one access client connection may open.
pub const MAX_STREAMS_PER_CLIENT: u32 = 64;
/// Access client connections (QUIC) at once from one address (IPv6: one /64).
pub const MAX_ACCESS_CONNS_PER_ADDR: usize = 32;
/// Time a client has to send its access request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Time from an access client's handshake to its first admitted stream (a client
/// opens its stream at once).
pub const ACCESS_FIRST_TIMEOUT: Duration = REQUEST_TIMEOUT;
/// Longest time an access client connection stays open without an admitted stream
/// after its last one ended. The client dials again when it needs the connection.
pub const ACCESS_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts on distinct tunnel connections before giving up.
const MAX_ATTEMPTS: usize = 3;
/// Header carrying a service token's id.
pub const CLIENT_ID_HEADER: &str = "mailslot-client-id";
/// Header carrying a service token's secret.
pub const CLIENT_SECRET_HEADER: &str = "mailslot-client-secret";

/// The edge's access caps (the policy in force is in [`EdgeState::live`]).
pub struct AccessState {
    streams: Arc<Semaphore>,
    conns: Arc<Semaphore>,
    per_addr: Arc<super::flood::PerAddr>,
}

impl Default for AccessState {
    fn default() -> Self {
        AccessState {
            streams: Arc::new(Semaphore::new(MAX_ACCESS_STREAMS)),
            conns: Arc::new(Semaphore::new(MAX_ACCESS_CONNS)),
            per_addr: super::flood::PerAddr::new(MAX_ACCESS_CONNS_PER_ADDR, MAX_ACCESS_CONNS),
        }
    }
}

/// Admitted streams of one access client connection, and since when it has had none.
struct ClientActivity {
    admitted: std::sync::atomic::AtomicUsize,
    /// Whether a stream was ever admitted.
    ever: std::sync::atomic::AtomicBool,
    since: std::sync::Mutex<std::time::Instant>,
}

impl ClientActivity {
    fn new() -> Arc<ClientActivity> {
        Arc::new(ClientActivity {
            admitted: 0.into(),
            ever: false.into(),
            since: std::sync::Mutex::new(std::time::Instant::now()),
        })
    }

    fn since(&self) -> std::sync::MutexGuard<'_, std::time::Instant> {
        self.since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts an admitted stream until the guard drops.
    fn admitted(self: &Arc<Self>) -> AdmittedStream {
        self.admitted
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.ever.store(true, std::sync::atomic::Ordering::Release);
        AdmittedStream(self.clone())
    }

    /// Resolves once the connection has had no admitted stream for `first` after its
    /// start, or for `idle` after its last one ended.
    async fn idle(&self, first: Duration, idle: Duration) {
        loop {
            let limit = if self.ever.load(std::sync::atomic::Ordering::Acquire) {
                idle
            } else {
                first
            };
            let wait = if self.admitted.load(std::sync::atomic::Ordering::Acquire) > 0 {
                limit
            } else {
                let idle = self.since().elapsed();
                if idle >= limit {
                    return;
                }
                limit - idle
            };
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }
}

/// An admitted access stream of a [`ClientActivity`].
struct AdmittedStream(Arc<ClientActivity>);

impl Drop for AdmittedStream {
    fn drop(&mut self) {
        *self.0.since() = std::time::Instant::now();
        self.0
            .admitted
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl AccessState {
    fn stream_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().ok()
    }
}

/// A `tcp-ports:` entry with its bound listener.
pub struct BoundTcpPort {
    pub listener: std::net::TcpListener,
    pub spec: TcpPortSpec,
}

/// Binds the `tcp-ports:` listeners.
pub fn bind_tcp_ports(specs: &[TcpPortSpec]) -> Result<Vec<BoundTcpPort>, String> {
    specs
        .iter()
        .map(|spec| {
            std::net::TcpListener::bind(spec.listen)
                .map(|listener| BoundTcpPort {
                    listener,
                    spec: spec.clone(),
                })
                .map_err(|e| format!("tcp-ports: cannot listen on {}: {e}", spec.listen))
        })
        .collect()
}

/// Did this QUIC connection negotiate the access ALPN?
pub fn is_access_connection(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol)
        .is_some_and(|p| p == wire::ACCESS_ALPN)
}

/// Serves one access client's QUIC connection: each stream it opens is one access.
pub async fn serve_quic(conn: quinn::Connection, state: Arc<EdgeState>) {
    let peer = conn.remote_address();
    let Some(_addr_slot) = state.access.per_addr.admit(peer.ip()) else {
        log_limited!(
            ACCESS_LOG,
            Warn,
            "access client {peer} refused: {MAX_ACCESS_CONNS_PER_ADDR} clients connected from its address"
        );
        conn.close(
            1u32.into(),
            b"edge busy: too many access clients from this address",
        );
        return;
    };
    let Ok(_conn_permit) = state.access.conns.clone().try_acquire_owned() else {
        log_limited!(
            ACCESS_LOG,
            Warn,
            "access client {peer} refused: {MAX_ACCESS_CONNS} clients connected"
        );
        conn.close(1u32.into(), b"edge busy: too many access clients");
        return;
    };
    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(MAX_STREAMS_PER_CLIENT));
    log::debug!("access client {peer} connected");
    let activity = ClientActivity::new();
    loop {
        let accepted = tokio::select! {
            s = conn.accept_bi() => s,
            () = activity.idle(ACCESS_FIRST_TIMEOUT, ACCESS_IDLE_TIMEOUT) => {
                log::debug!("access client {peer}: idle, closed");
                conn.close(0u32.into(), b"idle: no access stream");
                return;
            }
        };
        let (send, recv) = match accepted {
            Ok(s) => s,
            Err(e) => {
                log::debug!(
                    "access client {peer} gone: {}",
                    crate::transport::quic::describe_close(&e)
                );
                return;
            }
        };
        let stream = TunnelStream {
            send: SendHalf::Quic(send),
            recv: RecvHalf::Quic(recv),
        };
        tokio::spawn(serve_quic_stream(
            stream,
            peer,
            state.clone(),
            activity.clone(),
        ));
    }
}

/// Refusals of access clients are logged at most this often.
static ACCESS_LOG: super::flood::LogLimit =
    super::flood::LogLimit::new(10, Duration::from_secs(10));

async fn serve_quic_stream(
    mut client: TunnelStream,
    peer: SocketAddr,
    state: Arc<EdgeState>,
    activity: Arc<ClientActivity>,
) {
    let req = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        wire::read_access_frame::<_, AccessRequest>(&mut client),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            log::debug!("access client {peer}: bad request: {e}");
            client.abort();
            return;
        }
        Err(_) => {
            log::debug!("access client {peer}: no request within {REQUEST_TIMEOUT:?}");
            client.abort();
            return;
        }
    };
    let host = normalize_host(&req.hostname);
    let (host, bad_host) = match host {
        Ok(h) => (h, None),
        Err(e) => (String::new(), Some(e)),
    };
    // Watching for reloads from before admission, so none is missed in between.
    let recheck = Recheck::new(&state, req.credential.clone());
    let admitted = if let Some(e) = bad_host {
        Err(e)
    } else if req.version != wire::PROTOCOL_VERSION {
        Err((
            AccessError::BadRequest,
            format!(
                "this edge speaks access protocol {}, the client {}: update the older one",
                wire::PROTOCOL_VERSION,
                req.version
            ),
        ))
    } else {
        admit(&state, &host, peer.ip(), &req.credential).await
    };
    let reply = match &admitted {
        Ok(_) => AccessReply::Ok,
        Err((error, message)) => {
            log::info!("access denied: {host} from {peer} over quic: {message}");
            AccessReply::Err {
                error: *error,
                message: wire::bounded_reason(message.clone()),
            }
        }
    };
    let sent = match wire::encode_access_frame(&reply) {
        Ok(frame) => client.write_all(&frame).await.is_ok(),
        Err(_) => false,
    };
    match admitted {
        Ok((identity, tunnel, permit)) if sent => {
            let _admitted = activity.admitted();
            let log = AccessLog::new(identity, &host, peer, "quic");
            pipe(client, tunnel, log, permit, Some(recheck)).await;
        }
        Ok((_, mut tunnel, _)) => tunnel.abort(),
        Err(_) => {
            let _ = client.shutdown().await;
        }
    }
}

/// The hostname an access client asked for, in canonical form (see [`crate::hostname`]).
fn normalize_host(h: &str) -> Result<String, (AccessError, String)> {
    crate::hostname::canonical(h.trim())
        .map(|h| h.into_owned())
        .map_err(|e| {
            (
                AccessError::BadRequest,
                format!("{h:?} is not a hostname: {e}"),
            )
        })
}

type Admitted = (Identity, TunnelStream, OwnedSemaphorePermit);

/// Checks the policy, then opens a raw stream to the hostname's stream rule.
async fn admit(
    state: &EdgeState,
    host: &str,
    ip: IpAddr,
    cred: &AccessCredential,
) -> Result<Admitted, (AccessError, String)> {
    let live = state.live();
    let identity = live
        .policy
        .check(
            host,
            HostKind::Stream,
            ip,
            cred,
            &live.verify_keys,
            super::token::now_unix(),
        )
        .map_err(|Denied { error, message }| (error, message))?;
    let permit = state.access.stream_permit().ok_or((
        AccessError::Unavailable,
        "the edge is at its access stream limit; try again shortly".to_string(),
    ))?;
    let tunnel = open_raw(state, host).await?;
    Ok((identity, tunnel, permit))
}

/// Opens a raw tunnel stream to `host`'s stream rule, trying other connections of the
/// tunnel when one fails.
pub async fn open_raw(
    state: &EdgeState,
    host: &str,
) -> Result<TunnelStream, (AccessError, String)> {
    let mut tried: Vec<usize> = Vec::new();
    loop {
        let (conn, rules, rule) = match state.registry.route_excluding(host, "/", &tried) {
            Route::NoTunnel => {
                return Err((
                    AccessError::NoTunnel,
                    format!("no tunnel serves {host} on this edge"),
                ))
            }
            Route::Offline => {
                return Err((
                    AccessError::Unavailable,
                    format!("the tunnel for {host} is offline"),
                ))
            }
            Route::Rule {
                conn, rules, rule, ..
            } => (conn, rules, rule),
        };
        match rules.rules.get(usize::from(rule)).map(|r| r.action) {
            Some(wire::RuleAction::Stream) => {}
            _ => {
                return Err((
                    AccessError::NotStream,
                    format!("{host} is not a TCP service (its ingress rule is not tcp://, ssh://, rdp:// or tcp+unix:)"),
                ))
            }
        }
        tried.push(conn.session.id());
        match stream::open_tunnel_stream(&conn, rules.generation, rule, StreamKind::Raw, host).await
        {
            Ok(s) => return Ok(s),
            Err(DialError::Device { message, .. }) => {
                return Err((
                    AccessError::Unavailable,
                    format!("the device could not reach the service: {message}"),
                ))
            }
            Err(e) if tried.len() < MAX_ATTEMPTS => {
                log::info!("{host}: {e}; trying another tunnel connection");
            }
            Err(e) => return Err((AccessError::Unavailable, e.to_string())),
        }
    }
}

/// What one access line says.
struct AccessLog {
    identity: Identity,
    host: String,
    peer: SocketAddr,
    /// The client's address policies see (the peer, or behind a trusted proxy the
    /// address it forwarded for).
    client_ip: IpAddr,
    via: String,
    started_unix: u64,
    started: Instant,
}

impl AccessLog {
    fn new(identity: Identity, host: &str, peer: SocketAddr, via: &str) -> AccessLog {
        AccessLog {
            identity,
            host: host.to_string(),
            peer,
            client_ip: peer.ip(),
            via: via.to_string(),
            started_unix: super::token::now_unix(),
            started: Instant::now(),
        }
    }
}

/// Counts bytes read from and written to a stream.
struct Counted<T> {
    inner: T,
    read: u64,
    written: u64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        me.read += (buf.filled().len() - before) as u64;
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            me.written += n as u64;
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What it takes to check an admitted client again when a reload changes the policy.
struct Recheck {
    credential: AccessCredential,
    /// When the client was admitted (Unix seconds): a token that expires during a
    /// session does not end it.
    admitted_unix: u64,
    live: watch::Receiver<Arc<Live>>,
}

impl Recheck {
    fn new(state: &EdgeState, credential: AccessCredential) -> Recheck {
        // Made before admission reads the policy, so a reload in between is not
        // missed (at worst the same policy is checked twice).
        Recheck {
            credential,
            admitted_unix: super::token::now_unix(),
            live: state.live.subscribe(),
        }
    }

    /// Resolves with the reason once a reload no longer admits the client.
    async fn revoked(&mut self, host: &str, ip: IpAddr) -> String {
        while self.live.changed().await.is_ok() {
            let live = self.live.borrow_and_update().clone();
            let check = live.policy.check(
                host,
                HostKind::Stream,
                ip,
                &self.credential,
                &live.verify_keys,
                self.admitted_unix,
            );
            if let Err(Denied { message, .. }) = check {
                return message;
            }
        }
        // The edge is going away; its shutdown ends the stream.
        std::future::pending().await
    }
}

/// Copies bytes both ways until both sides are done, or until a reload of the policy
/// no longer admits the client (`recheck`), then logs the access line.
async fn pipe<C>(
    client: C,
    mut tunnel: TunnelStream,
    log: AccessLog,
    permit: OwnedSemaphorePermit,
    mut recheck: Option<Recheck>,
) where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let _permit = permit;
    let mut client = Counted {
        inner: client,
        read: 0,
        written: 0,
    };
    let ip = log.client_ip;
    let result = {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut tunnel);
        let revoked = async {
            match &mut recheck {
                Some(r) => r.revoked(&log.host, ip).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = copy => r.map_err(|e| format!("ended: {e}")),
            why = revoked => Err(format!("cut: no longer admitted after a reload of edge.yml: {why}")),
        }
    };
    let end = match result {
        Ok(_) => {
            // Both directions are done; a WebSocket client's transport closes cleanly now.
            let _ = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
            "closed".to_string()
        }
        Err(why) => {
            tunnel.abort();
            let _ = tokio::time::timeout(Duration::from_secs(2), client.shutdown()).await;
            why
        }
    };
    log::info!(
        "access: {} ({}) {} from {} over {}: started {}, {:.1}s, {} B up, {} B down, {end}",
        log.identity.who,
        log.identity.how,
        log.host,
        log.peer,
        log.via,
        log.started_unix,
        log.started.elapsed().as_secs_f64(),
        client.read,
        client.written,
    );
}

/// Serves one `tcp-ports:` listener: each connection from an allowed address is piped
/// to the entry's hostname.
pub async fn serve_tcp_port(
    listener: tokio::net::TcpListener,
    spec: TcpPortSpec,
    state: Arc<EdgeState>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log::warn!("tcp port {}: accept failed: {e}", spec.listen);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let via = format!(
            "tcp port {}",
            listener.local_addr().map_or(spec.listen, |a| a)
        );
        if !spec.admits(peer.ip()) {
            log::info!(
                "access denied: {} from {peer} over {via}: address not in ip-allow",
                spec.hostname,
            );
            continue;
        }
        let Some(permit) = state.access.stream_permit() else {
            log::warn!(
                "tcp port {}: access stream limit reached; {peer} refused",
                spec.listen
            );
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let host = spec.hostname.clone();
        let via = format!(
            "tcp port {}",
            listener.local_addr().map_or(spec.listen, |a| a)
        );
        tokio::spawn(async move {
            match open_raw(&state, &host).await {
                Ok(tunnel) => {
                    let who = Identity {
                        who: "anonymous".into(),
                        how: "ip-allow",
                    };
                    let log = AccessLog::new(who, &host, peer, &via);
                    pipe(tcp, tunnel, log, permit, None).await;
                }
                Err((_, message)) => {
                    log::info!("access failed: {host} from {peer} over {via}: {message}")
                }
            }
        });
    }
}

/// The credential in an HTTP request: `Authorization: Bearer msa1…` (or a tunnel token,
/// to say it is the wrong kind), else the service-token headers.
fn credential_of(headers: &HeaderMap) -> (AccessCredential, bool) {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| {
            t.starts_with(&format!("{}.", super::token::ACCESS_PREFIX))
                || t.starts_with(&format!("{}.", super::token::TUNNEL_PREFIX))
        });
    if let Some(t) = bearer {
        return (AccessCredential::Token(t.to_string()), true);
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
    };
    match (text(CLIENT_ID_HEADER), text(CLIENT_SECRET_HEADER)) {
        (Some(id), Some(secret)) => (AccessCredential::Service { id, secret }, false),
        _ => (AccessCredential::None, false),
    }
}

fn is_access_upgrade(req: &Request<Incoming>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has(header::UPGRADE, "websocket")
        && has(header::SEC_WEBSOCKET_PROTOCOL, wire::ACCESS_WS_PROTOCOL)
}

fn status_of(error: AccessError) -> StatusCode {
    match error {
        AccessError::Unauthorized => StatusCode::UNAUTHORIZED,
        AccessError::Forbidden => StatusCode::FORBIDDEN,
        AccessError::NoTunnel => StatusCode::NOT_FOUND,
        AccessError::NotStream | AccessError::BadRequest => StatusCode::BAD_REQUEST,
        AccessError::Unavailable => StatusCode::BAD_GATEWAY,
    }
}

fn refusal(error: AccessError, message: String) -> Response<Body> {
    let status = status_of(error);
    let mut resp = body::text(status, message);
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"mailslot\""),
        );
    }
    resp
}

/// The gate in front of the HTTP proxy: access upgrades are served here; requests for
/// hostnames with a policy need credentials, which are then removed before the request
/// goes on. `Err` is the answer to send instead of proxying. `client_ip` is the
/// client's address as rate limits see it (`Shield::client_ip`: the peer, or behind a
/// trusted proxy the address it forwarded for), so that `ip-allow` and rate limits
/// agree on who the client is.
pub async fn gate(
    mut req: Request<Incoming>,
    host: &str,
    peer: SocketAddr,
    client_ip: IpAddr,
    scheme: &str,
    state: &EdgeState,
) -> Result<Request<Incoming>, Response<Body>> {
    if is_access_upgrade(&req) {
        return Err(upgrade(req, host, peer, client_ip, scheme, state).await);
    }
    let live = state.live();
    if live.policy.policy_for(host).is_none() {
        // HTTP without a policy is public; nothing to check or strip.
        return Ok(req);
    }
    let (cred, bearer) = credential_of(req.headers());
    match live.policy.check(
        host,
        HostKind::Http,
        client_ip,
        &cred,
        &live.verify_keys,
        super::token::now_unix(),
    ) {
        Ok(identity) => {
            log::debug!(
                "{host}: {} ({}) from {peer} admitted",
                identity.who,
                identity.how
            );
            let headers = req.headers_mut();
            if bearer {
                headers.remove(header::AUTHORIZATION);
            }
            headers.remove(CLIENT_ID_HEADER);
            headers.remove(CLIENT_SECRET_HEADER);
            Ok(req)
        }
        Err(Denied { error, message }) => {
            log::debug!("access denied: {host} from {peer} over {scheme}: {message}");
            let message = if error == AccessError::Unauthorized {
                format!(
                    "{message}.\nSend `Authorization: Bearer <access token>` (tokens come from \
                     `mailslot-edge access-token`), or a service token in the Mailslot-Client-Id \
                     and Mailslot-Client-Secret headers."
                )
            } else {
                message
            };
            Err(refusal(error, message))
        }
    }
}

/// An access client over HTTPS: check, open the tunnel stream, then answer 101 and
/// pipe the WebSocket to it.
async fn upgrade(
    mut req: Request<Incoming>,
    host: &str,
    peer: SocketAddr,
    client_ip: IpAddr,
    scheme: &str,
    state: &EdgeState,
) -> Response<Body> {
    if req.version() != http::Version::HTTP_11 || req.method() != Method::GET {
        return body::text(
            StatusCode::BAD_REQUEST,
            "access upgrades need GET over HTTP/1.1",
        );
    }
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 64)
        .map(String::from);
    let Some(key) = key.filter(|_| version_ok) else {
        return body::text(
            StatusCode::BAD_REQUEST,
            "a WebSocket upgrade needs Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key",
        );
    };
    let (cred, _) = credential_of(req.headers());
    let via = format!("{scheme} (websocket)");
    let recheck = Recheck::new(state, cred.clone());
    let (identity, tunnel, permit) = match admit(state, host, client_ip, &cred).await {
        Ok(x) => x,
        Err((error, message)) => {
            log::info!("access denied: {host} from {peer} over {via}: {message}");
            return refusal(error, message);
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut log = AccessLog::new(identity, host, peer, &via);
    log.client_ip = client_ip;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WsStream::new(TokioIo::new(upgraded), Role::Server, Vec::new());
                pipe(ws, tunnel, log, permit, Some(recheck)).await;
            }
            Err(e) => {
                let mut tunnel = tunnel;
                tunnel.abort();
                log::debug!("access upgrade from {peer} failed: {e}");
            }
        }
    });
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(wire::ACCESS_WS_PROTOCOL),
    );
    if let Ok(v) = HeaderValue::from_str(&ws::accept_key(&key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(credential_of(&h).0, AccessCredential::None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer msa1.a.b"),
        );
        assert_eq!(
            credential_of(&h),
            (AccessCredential::Token("msa1.a.b".into()), true)
        );
        // An origin's own bearer tokens are not ours.
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        h.insert(CLIENT_ID_HEADER, HeaderValue::from_static("ci"));
        h.insert(CLIENT_SECRET_HEADER, HeaderValue::from_static("s"));
        assert_eq!(
            credential_of(&h),
            (
                AccessCredential::Service {
                    id: "ci".into(),
                    secret: "s".into()
                },
                false
            )
        );
    }
}
