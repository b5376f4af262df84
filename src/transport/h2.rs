//! HTTP/2 over TLS on TCP: the fallback where UDP is blocked.
//!
//! The connector dials the edge (TCP, then TLS with ALPN `mailslot`) and is the HTTP/2
//! *server* on that connection; the edge is the client and opens one HTTP/2 stream (a
//! POST with a streaming body) per tunnel stream. The connector answers every stream at
//! once with a 200 head; after that each direction is a DATA byte pipe, so the stream
//! header, replies and control messages are the same bytes as over QUIC.
//!
//! Memory per connection is bounded by the HTTP/2 windows below, the same figures as
//! QUIC's, and writes wait for window capacity instead of buffering.
// The edge-side half is unused in the device build (see the parent module).
#![cfg_attr(not(feature = "edge"), allow(dead_code))]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Mutex, Notify};

use super::quic::{
    CONN_RECEIVE_WINDOW, DEVICE_CONN_RECEIVE_WINDOW, DEVICE_STREAM_RECEIVE_WINDOW,
    STREAM_RECEIVE_WINDOW,
};
use super::{RecvHalf, Retry, SendHalf, Session, TransportError, TunnelStream};

/// Largest DATA chunk written at once.
const MAX_WRITE: usize = 64 * 1024;

/// One HTTP/2 tunnel connection, either end.
#[derive(Clone)]
pub(crate) struct H2Session {
    inner: Arc<Inner>,
}

struct Inner {
    remote: SocketAddr,
    role: Role,
    /// Set with a reason when the connection has ended.
    closed: watch::Sender<Option<String>>,
    /// Set to ask the driver task to close the connection.
    close: watch::Sender<Option<String>>,
    /// Bytes received from the peer so far (counted on the edge's end; 0 on the
    /// connector's).
    heard: Arc<AtomicU64>,
    /// The round trip of the last answered ping, in microseconds (0 before one).
    rtt_us: AtomicU64,
    /// Asks the pinger for a ping now.
    nudge: Notify,
    /// The timed pings are skipped: on the connector's end, a sibling's (the keeper of
    /// the connector's connections to this edge pings; TCP keeps this one's mapping for
    /// hours); on either end, a probe connection's, which must stay silent (see
    /// `connector::natlife`). Pings when nudged still go.
    quiet: AtomicBool,
    /// The connector's keep-alive period, milliseconds; changed while the connection
    /// runs ([`H2Session::set_keepalive`]).
    keepalive_ms: AtomicU64,
    /// Restarts the pinger's wait after the period changed.
    retime: Notify,
    /// The local address of the TCP connection (the connector's end).
    local: Option<SocketAddr>,
}

impl Inner {
    fn new(
        remote: SocketAddr,
        role: Role,
        heard: Arc<AtomicU64>,
        keepalive: Duration,
        local: Option<SocketAddr>,
    ) -> Arc<Inner> {
        Arc::new(Inner {
            remote,
            role,
            closed: watch::channel(None).0,
            close: watch::channel(None).0,
            heard,
            rtt_us: AtomicU64::new(0),
            nudge: Notify::new(),
            quiet: AtomicBool::new(false),
            keepalive_ms: AtomicU64::new(millis(keepalive)),
            retime: Notify::new(),
            local,
        })
    }
}

enum Role {
    /// The edge: opens streams.
    Client(Mutex<h2::client::SendRequest<Bytes>>),
    /// The connector: accepts streams.
    Server(Mutex<mpsc::Receiver<TunnelStream>>),
}

impl std::fmt::Debug for H2Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "H2Session({}, {})", self.id(), self.inner.remote)
    }
}

impl H2Session {
    /// Unique among live connections, like quinn's `stable_id` (both are the address of
    /// the connection's shared state, so the two kinds cannot collide either).
    pub(crate) fn id(&self) -> usize {
        Arc::as_ptr(&self.inner) as usize
    }

    pub(crate) fn remote_addr(&self) -> SocketAddr {
        self.inner.remote
    }

    pub(crate) fn close(&self, reason: &str) {
        self.inner.close.send_replace(Some(reason.to_string()));
    }

    pub(crate) async fn closed(&self) -> String {
        wait_reason(&mut self.inner.closed.subscribe()).await
    }

    /// Bytes received from the connector so far (the edge's end counts them): a
    /// connector that is alive answers a ping ([`H2Session::nudge`]) within a round
    /// trip, so a count that stands still says it is not.
    pub(crate) fn heard(&self) -> u64 {
        self.inner.heard.load(Ordering::Relaxed)
    }

    /// Stops (`true`) or resumes this end's timed pings (the connector's keep-alives,
    /// the edge's watch).
    pub(crate) fn set_quiet(&self, quiet: bool) {
        self.inner.quiet.store(quiet, Ordering::Relaxed);
    }

    /// Sets the connector's keep-alive period; the wait in progress starts over.
    pub(crate) fn set_keepalive(&self, keepalive: Duration) {
        let ms = millis(keepalive).max(1);
        if self.inner.keepalive_ms.swap(ms, Ordering::Relaxed) != ms {
            self.inner.retime.notify_one();
        }
    }

    /// The connector's keep-alive period in force.
    pub(crate) fn keepalive(&self) -> Duration {
        Duration::from_millis(self.inner.keepalive_ms.load(Ordering::Relaxed))
    }

    /// The local address of the TCP connection (known on the connector's end).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local
    }

    /// Sends a ping now (unless one is already waiting for its answer).
    pub(crate) fn nudge(&self) {
        self.inner.nudge.notify_one();
    }

    /// The round trip of the last answered ping (zero before the first).
    pub(crate) fn rtt(&self) -> Duration {
        Duration::from_micros(self.inner.rtt_us.load(Ordering::Relaxed))
    }

    pub(crate) async fn open_stream(&self) -> io::Result<TunnelStream> {
        let Role::Client(send) = &self.inner.role else {
            return Err(io::Error::other("the connector end does not open streams"));
        };
        let mut send = send.lock().await.clone();
        drop_guard_ready(&mut send).await?;
        let req = http::Request::post("https://tunnel/")
            .body(())
            .map_err(io::Error::other)?;
        let (resp, stream) = send.send_request(req, false).map_err(h2_io)?;
        Ok(TunnelStream {
            send: SendHalf::H2(H2Send { stream }),
            recv: RecvHalf::H2(H2Recv {
                state: RecvState::Head(resp),
                buf: Bytes::new(),
            }),
        })
    }

    pub(crate) async fn accept_stream(&self) -> io::Result<TunnelStream> {
        let Role::Server(rx) = &self.inner.role else {
            return Err(io::Error::other("the edge end does not accept streams"));
        };
        let mut rx = rx.lock().await;
        match rx.recv().await {
            Some(s) => Ok(s),
            None => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed",
            )),
        }
    }
}

/// Waits until a reason is set; the reason.
async fn wait_reason(rx: &mut watch::Receiver<Option<String>>) -> String {
    match rx.wait_for(|c| c.is_some()).await {
        Ok(r) => r.clone().unwrap_or_default(),
        Err(_) => "closed".into(),
    }
}

async fn drop_guard_ready(send: &mut h2::client::SendRequest<Bytes>) -> io::Result<()> {
    std::future::poll_fn(|cx| send.poll_ready(cx))
        .await
        .map_err(h2_io)
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("h2 i/o error"))
    } else {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    }
}

/// Connector side: dial `remote`, TLS with `tls`, and serve HTTP/2 on it.
pub(crate) async fn connect(
    remote: SocketAddr,
    server_name: &str,
    tls: rustls::ClientConfig,
    keepalive: Duration,
    idle: Duration,
    max_streams: u32,
    timeout: Duration,
) -> Result<Session, TransportError> {
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| TransportError::backoff(format!("bad edge name {server_name:?}: {e}")))?;
    let setup = async {
        let tcp = TcpStream::connect(remote)
            .await
            .map_err(|e| format!("TCP to {remote}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        // What the device pays for: the bytes on the socket, under TLS.
        let tcp = super::meter::Metered(tcp);
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS to {remote}: {e}"))?;
        let mut builder = h2::server::Builder::new();
        builder
            .initial_window_size(DEVICE_STREAM_RECEIVE_WINDOW)
            .initial_connection_window_size(DEVICE_CONN_RECEIVE_WINDOW)
            .max_concurrent_streams(max_streams)
            .max_send_buffer_size(MAX_WRITE);
        builder
            .handshake::<_, Bytes>(tls)
            .await
            .map(|c| (c, local))
            .map_err(|e| format!("HTTP/2 with {remote}: {e}"))
    };
    let (conn, local) = match tokio::time::timeout(timeout, setup).await {
        Ok(Ok(c)) => c,
        Ok(Err(m)) => {
            return Err(TransportError {
                retry: Retry::Backoff,
                message: m,
            })
        }
        Err(_) => {
            return Err(TransportError {
                retry: Retry::Backoff,
                message: format!("no TCP/TLS answer from {remote} within {timeout:?}"),
            })
        }
    };
    // Streams accepted but not yet taken by the connector. The edge never has more than
    // `max_streams` open, so a queue that size refuses none of a burst; a smaller one
    // reset streams whenever the accepting task ran late.
    let (tx, rx) = mpsc::channel(max_streams.max(1) as usize);
    let inner = Inner::new(
        remote,
        Role::Server(Mutex::new(rx)),
        Arc::default(),
        keepalive,
        local,
    );
    tokio::spawn(drive_server(conn, tx, inner.clone(), idle));
    Ok(Session::H2(H2Session { inner }))
}

/// The connector's keep-alive: pings every keep-alive period (unless made quiet, see
/// [`H2Session::set_quiet`]; the period may change, see [`H2Session::set_keepalive`]),
/// and when nudged; a ping unanswered within `idle` closes the connection.
fn spawn_pinger(mut pinger: h2::PingPong, inner: Arc<Inner>, idle: Duration, peer: &'static str) {
    tokio::spawn(async move {
        let mut closed = inner.closed.subscribe();
        loop {
            let keepalive = Duration::from_millis(inner.keepalive_ms.load(Ordering::Relaxed));
            let nudged = tokio::select! {
                _ = tokio::time::sleep(keepalive) => false,
                _ = inner.nudge.notified() => true,
                _ = inner.retime.notified() => continue,
                _ = wait_reason(&mut closed) => return,
            };
            if !nudged && inner.quiet.load(Ordering::Relaxed) {
                continue;
            }
            let sent = Instant::now();
            match tokio::time::timeout(idle, pinger.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {
                    let rtt = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    inner.rtt_us.store(rtt, Ordering::Relaxed);
                }
                Ok(Err(_)) => return,
                Err(_) => {
                    inner
                        .close
                        .send_replace(Some(format!("no answer from the {peer} for {idle:?}")));
                    return;
                }
            }
        }
    });
}

/// The longest keep-alive period of a connector the edge waits out before it asks.
const MAX_CADENCE: Duration = Duration::from_secs(3600);

/// The edge's watch over a connector's HTTP/2 connection. The connector keeps the path
/// alive (it is behind the NAT: its pings refresh the mapping, and the edge's answers
/// ride on it), so the edge pings only:
/// - when nudged ([`H2Session::nudge`]: a request waits on a connector gone quiet), and
/// - when it has heard nothing for the connector's keep-alive period plus `idle`.
///
/// The connector's period is learnt, as the longest silence that ended without the edge
/// asking (from `keepalive` up to [`MAX_CADENCE`]), and doubled whenever the edge had to
/// ask: a connector with rare keep-alives (a metered one) costs the edge two pings in
/// its first 5 minutes, and none between its keep-alives after that. A ping unanswered within `idle` closes the
/// connection. Checks run every `keepalive` on a local timer: nothing is sent.
fn spawn_watch(mut pinger: h2::PingPong, inner: Arc<Inner>, keepalive: Duration, idle: Duration) {
    tokio::spawn(async move {
        let mut closed = inner.closed.subscribe();
        let mut seen = inner.heard.load(Ordering::Relaxed);
        // When the last bytes arrived, and when the last arrived unasked.
        let mut heard_at = Instant::now();
        let mut unasked_at = heard_at;
        let mut cadence = keepalive;
        // One ping at the start measures the round trip the silence watch allows for.
        let mut first = true;
        loop {
            let nudged = if std::mem::take(&mut first) {
                true
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(keepalive) => false,
                    _ = inner.nudge.notified() => true,
                    _ = wait_reason(&mut closed) => return,
                }
            };
            let heard = inner.heard.load(Ordering::Relaxed);
            if heard != seen {
                seen = heard;
                cadence = cadence.max(unasked_at.elapsed().min(MAX_CADENCE));
                heard_at = Instant::now();
                unasked_at = heard_at;
            }
            if !nudged
                && (heard_at.elapsed() < cadence + idle || inner.quiet.load(Ordering::Relaxed))
            {
                continue;
            }
            let sent = Instant::now();
            match tokio::time::timeout(idle, pinger.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {
                    let rtt = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                    inner.rtt_us.store(rtt, Ordering::Relaxed);
                    if !nudged {
                        // Alive, but quiet for longer than thought: wait longer next time.
                        let quiet = heard_at.elapsed();
                        cadence = cadence.saturating_mul(2).max(quiet).min(MAX_CADENCE);
                    }
                    // The answer is not a keep-alive of the connector's own.
                    seen = inner.heard.load(Ordering::Relaxed);
                    heard_at = Instant::now();
                }
                Ok(Err(_)) => return,
                Err(_) => {
                    inner
                        .close
                        .send_replace(Some(format!("no answer from the connector for {idle:?}")));
                    return;
                }
            }
        }
    });
}

fn server_stream(
    req: http::Request<RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
) -> Option<TunnelStream> {
    let recv = req.into_body();
    match respond.send_response(http::Response::new(()), false) {
        Ok(send) => Some(TunnelStream {
            send: SendHalf::H2(H2Send { stream: send }),
            recv: RecvHalf::H2(H2Recv {
                state: RecvState::Body(recv),
                buf: Bytes::new(),
            }),
        }),
        Err(e) => {
            log::debug!("h2 response head failed: {e}");
            None
        }
    }
}

async fn drive_server<T>(
    mut conn: h2::server::Connection<T, Bytes>,
    tx: mpsc::Sender<TunnelStream>,
    inner: Arc<Inner>,
    idle: Duration,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut close = inner.close.subscribe();
    if let Some(p) = conn.ping_pong() {
        spawn_pinger(p, inner.clone(), idle, "edge");
    }
    let reason = loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    if let Some(stream) = server_stream(req, respond) {
                        // Full only if the edge exceeded `max_streams`: refuse the stream.
                        if let Err(mpsc::error::TrySendError::Full(mut s)) = tx.try_send(stream) {
                            s.abort();
                        }
                    }
                }
                Some(Err(e)) => break format!("HTTP/2 error: {e}"),
                None => break "closed by peer".to_string(),
            },
            why = wait_reason(&mut close) => {
                conn.graceful_shutdown();
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    std::future::poll_fn(|cx| conn.poll_closed(cx)),
                )
                .await;
                break why;
            }
        }
    };
    inner.closed.send_replace(Some(reason));
}

/// Edge side: serve an accepted TLS connection as the HTTP/2 client.
pub(crate) async fn accept<T>(
    io: T,
    remote: SocketAddr,
    keepalive: Duration,
    idle: Duration,
) -> io::Result<Session>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_RECEIVE_WINDOW)
        .initial_connection_window_size(CONN_RECEIVE_WINDOW)
        .max_send_buffer_size(MAX_WRITE);
    let heard = Arc::new(AtomicU64::new(0));
    let io = Counted {
        io,
        count: heard.clone(),
    };
    let (send, mut conn) = builder.handshake::<_, Bytes>(io).await.map_err(h2_io)?;
    let inner = Inner::new(
        remote,
        Role::Client(Mutex::new(send)),
        heard,
        keepalive,
        None,
    );
    if let Some(p) = conn.ping_pong() {
        spawn_watch(p, inner.clone(), keepalive, idle);
    }
    let driver = inner.clone();
    tokio::spawn(async move {
        let mut close = driver.close.subscribe();
        let reason = tokio::select! {
            r = &mut conn => match r {
                Ok(()) => "closed by peer".to_string(),
                Err(e) => format!("HTTP/2 error: {e}"),
            },
            why = wait_reason(&mut close) => why,
        };
        driver.closed.send_replace(Some(reason));
    });
    Ok(Session::H2(H2Session { inner }))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An IO that counts the bytes read from it.
struct Counted<T> {
    io: T,
    count: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut me.io).poll_read(cx, buf))?;
        let n = (buf.filled().len() - before) as u64;
        me.count.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Sending half of an HTTP/2 tunnel stream.
pub(crate) struct H2Send {
    stream: SendStream<Bytes>,
}

impl H2Send {
    pub(crate) fn abort(&mut self) {
        self.stream.send_reset(Reason::CANCEL);
    }

    /// Waits until the stream may send some of `want` bytes (> 0): how many.
    fn poll_capacity(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.stream.reserve_capacity(want.min(MAX_WRITE));
        loop {
            let cap = self.stream.capacity();
            if cap > 0 {
                return Poll::Ready(Ok(cap.min(want)));
            }
            match ready!(self.stream.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    /// Sends `data` as DATA frames as window capacity allows, without copying it.
    pub(crate) async fn write_bytes(&mut self, mut data: Bytes) -> io::Result<()> {
        while !data.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_capacity(cx, data.len())).await?;
            self.stream
                .send_data(data.split_to(n), false)
                .map_err(h2_io)?;
        }
        Ok(())
    }
}

impl AsyncWrite for H2Send {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let me = self.get_mut();
        let n = ready!(me.poll_capacity(cx, buf.len()))?.min(buf.len());
        let (sent, _) = buf.split_at(n);
        me.stream
            .send_data(Bytes::copy_from_slice(sent), false)
            .map_err(h2_io)?;
        Poll::Ready(Ok(n))
    }
    /// Gathers the slices into one DATA frame, as much as the window allows: one copy,
    /// one frame, where writing them one by one would cost a frame each.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let me = self.get_mut();
        let n = ready!(me.poll_capacity(cx, total))?;
        let mut frame = bytes::BytesMut::with_capacity(n);
        for b in bufs {
            let take = b.len().min(n - frame.len());
            let (taken, _) = b.split_at(take);
            frame.extend_from_slice(taken);
            if frame.len() == n {
                break;
            }
        }
        me.stream.send_data(frame.freeze(), false).map_err(h2_io)?;
        Poll::Ready(Ok(n))
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        Poll::Ready(me.stream.send_data(Bytes::new(), true).map_err(h2_io))
    }
}

enum RecvState {
    /// The edge waits for the connector's response head.
    Head(h2::client::ResponseFuture),
    Body(RecvStream),
    Done,
}

/// Receiving half of an HTTP/2 tunnel stream.
pub(crate) struct H2Recv {
    state: RecvState,
    buf: Bytes,
}

impl H2Recv {
    pub(crate) fn abort(&mut self) {
        self.state = RecvState::Done;
        self.buf = Bytes::new();
    }
}

impl H2Recv {
    /// The next bytes received, at most `max` (> 0); `None` at the end of the stream.
    pub(crate) fn poll_bytes(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len().min(max);
                return Poll::Ready(Ok(Some(self.buf.split_to(n))));
            }
            match &mut self.state {
                RecvState::Head(fut) => {
                    let resp = ready!(Pin::new(fut).poll(cx)).map_err(h2_io)?;
                    if resp.status() != http::StatusCode::OK {
                        return Poll::Ready(Err(io::Error::other(format!(
                            "tunnel stream refused: {}",
                            resp.status()
                        ))));
                    }
                    self.state = RecvState::Body(resp.into_body());
                }
                RecvState::Body(body) => match ready!(body.poll_data(cx)) {
                    Some(Ok(data)) => {
                        let _ = body.flow_control().release_capacity(data.len());
                        self.buf = data;
                    }
                    Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                    None => {
                        self.state = RecvState::Done;
                        return Poll::Ready(Ok(None));
                    }
                },
                RecvState::Done => return Poll::Ready(Ok(None)),
            }
        }
    }
}

impl H2Recv {
    /// Fills `bufs` with the DATA frames already received: waits for the first, takes
    /// the rest only while they are ready. `None` at the end of the stream.
    pub(crate) fn poll_chunks(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &mut [Bytes],
    ) -> Poll<io::Result<Option<usize>>> {
        let Some(slot) = bufs.first_mut() else {
            return Poll::Ready(Ok(Some(0)));
        };
        match ready!(self.poll_bytes(cx, usize::MAX))? {
            Some(data) => *slot = data,
            None => return Poll::Ready(Ok(None)),
        }
        let mut n = 1;
        for slot in bufs.iter_mut().skip(1) {
            match self.poll_bytes(cx, usize::MAX) {
                Poll::Ready(Ok(Some(data))) => {
                    *slot = data;
                    n += 1;
                }
                // The end or an error shows on the next call, after these bytes.
                Poll::Ready(Ok(None)) | Poll::Pending => break,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(Some(n)))
    }
}

impl AsyncRead for H2Recv {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(data) = ready!(self.get_mut().poll_bytes(cx, out.remaining()))? {
            out.put_slice(&data);
        }
        Poll::Ready(Ok(()))
    }
}

use std::future::Future as _;
