//! Serving one tunnel stream: check the rule the edge named, dial the service, pipe bytes.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;

use super::active::{ActiveConfig, ActiveRule};
use crate::config::Service;
use crate::transport::{write_all_chunks, TunnelStream};
use crate::wire::{self, StreamError, StreamHeader, StreamKind, StreamReply};

/// How long the edge has to send the stream header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest read from an origin.
const COPY_BUF: usize = 16 * 1024;
/// Chunks received from the edge passed to the origin in one vectored write.
const GATHER: usize = 32;
/// First read buffer from an origin; a stream moves to `COPY_BUF` while reads fill it.
const SMALL_READ: usize = 4 * 1024;
/// Quiet time after which a drained HTTP stream counts as an idle keep-alive.
const DRAIN_IDLE: Duration = Duration::from_secs(2);

/// A connected origin, whatever its kind.
pub(crate) trait OriginIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> OriginIo for T {}

/// Serves one stream to its end. Errors are logged here, once.
pub(crate) async fn serve_stream(
    stream: TunnelStream,
    lookup: impl Fn(u32) -> Option<Arc<ActiveConfig>>,
    drain: watch::Receiver<bool>,
) {
    let mut stream = stream;
    let header: StreamHeader =
        match tokio::time::timeout(HEADER_TIMEOUT, wire::read_stream_frame(&mut stream)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                log::debug!("stream dropped before its header: {e}");
                stream.abort();
                return;
            }
            Err(_) => {
                log::debug!("stream header not received within {HEADER_TIMEOUT:?}");
                stream.abort();
                return;
            }
        };
    if header.kind == StreamKind::Release {
        return super::upgrade::release_stream(header, stream);
    }
    let rule = lookup(header.rules_generation).and_then(|rt| {
        rt.rules
            .get(usize::from(header.rule))
            .cloned()
            .map(|r| (rt, r))
    });
    let origin = match rule {
        None => Err((
            StreamError::UnknownRule,
            format!(
                "no rule {} in rule table {}",
                header.rule, header.rules_generation
            ),
        )),
        Some((rt, rule)) => match check(&rule, &header) {
            Err(msg) => Err((StreamError::UnknownRule, msg)),
            // Past the daily data cap, only essential rules are served (an edge that
            // knows answers the others itself; this is for the edges that do not).
            Ok(()) if super::cap::refuses(&rt.config, usize::from(header.rule)) => Err((
                StreamError::Unavailable,
                "over the daily data cap: only essential rules are served until the reset".into(),
            )),
            Ok(()) => dial(&rule).await.map(|o| (o, rt)),
        },
    };
    let (origin, rt) = match origin {
        Ok(o) => o,
        Err((StreamError::Unavailable, message)) => {
            // Over the cap: one line at the crossing is enough (`cap`).
            log::debug!("stream for {} refused: {message}", header.hostname);
            return refuse(stream, StreamError::Unavailable, message).await;
        }
        Err((error, message)) => {
            log::warn!("stream for {} refused: {message}", header.hostname);
            return refuse(stream, error, message).await;
        }
    };
    // The reply is a fixed small frame; encoding it cannot fail.
    let Ok(ok) = wire::encode_stream_frame(&StreamReply::Ok) else {
        return;
    };
    if stream.write_all(&ok).await.is_err() {
        return;
    }
    let activity = Activity::default();
    // Counted against the data cap; past it, a rule that is not essential ends.
    let essential = rt.config.is_essential(usize::from(header.rule));
    let cap = Cap(&rt.config, essential);
    let copy = pipe(&mut stream, origin, &activity, &cap);
    let result = tokio::select! {
        r = copy => r,
        _ = idle_while_draining(&activity, drain), if header.kind == StreamKind::Http => {
            Ok((0, 0))
        }
    };
    match result {
        Ok((up, down)) => log::debug!(
            "stream for {} done: {up} B up, {down} B down",
            header.hostname
        ),
        Err(e) => {
            log::debug!("stream for {} ended: {e}", header.hostname);
            stream.abort();
            return;
        }
    }
    let _ = stream.shutdown().await;
}

/// Tells the edge why a stream is not served, and ends it.
async fn refuse(mut stream: TunnelStream, error: StreamError, message: String) {
    let reply = StreamReply::Err {
        error,
        message: wire::bounded_reason(message),
    };
    if let Ok(frame) = wire::encode_stream_frame(&reply) {
        let _ = stream.write_all(&frame).await;
        let _ = stream.shutdown().await;
    }
}

/// A stream's config, for the data cap, and whether its rule is essential.
struct Cap<'a>(&'a crate::config::DeviceConfig, bool);

impl Cap<'_> {
    /// Charges `n` bytes; an error when past the cap and the rule is not essential.
    fn charge(&self, n: u64) -> io::Result<()> {
        if super::cap::add(n, self.0) && !self.1 {
            return Err(io::Error::other("over the daily data cap"));
        }
        Ok(())
    }
}

/// Copies both ways until both directions have ended; `(to origin, to edge)` bytes.
///
/// Bytes travel as owned buffers: a chunk from the edge is written to the origin as the
/// transport received it, and a read from the origin is handed to the transport whole,
/// so the connector copies nothing itself. Reads from the origin start in a small
/// buffer and move to `COPY_BUF`-sized ones only while they keep filling them, so an
/// idle keep-alive stream holds little.
async fn pipe(
    stream: &mut TunnelStream,
    origin: Box<dyn OriginIo>,
    activity: &Activity,
    cap: &Cap<'_>,
) -> io::Result<(u64, u64)> {
    let (mut from_origin, mut to_origin) = tokio::io::split(origin);
    let up = async {
        let mut n = 0u64;
        let mut chunks: [Bytes; GATHER] = Default::default();
        while let Some(k) = stream.recv.read_chunks(&mut chunks).await? {
            activity.touch(false);
            let got = chunks.get_mut(..k).unwrap_or_default();
            let len = got.iter().map(|c| c.len() as u64).sum::<u64>();
            n += len;
            super::health::BYTES_IN.fetch_add(len, Ordering::Relaxed);
            cap.charge(len)?;
            write_all_chunks(&mut to_origin, got).await?;
        }
        to_origin.shutdown().await?;
        Ok::<_, io::Error>(n)
    };
    let down = async {
        let mut n = 0u64;
        let mut size = SMALL_READ;
        let mut buf = BytesMut::new();
        loop {
            if buf.capacity() < size / 2 {
                buf = BytesMut::with_capacity(size);
            }
            let k = from_origin.read_buf(&mut buf).await?;
            if k == 0 {
                break;
            }
            // A read that filled its buffer suggests a bulk transfer: use larger ones.
            if buf.capacity() == buf.len() {
                size = COPY_BUF;
            }
            n += k as u64;
            super::health::BYTES_OUT.fetch_add(k as u64, Ordering::Relaxed);
            cap.charge(k as u64)?;
            activity.writing.store(true, Ordering::Relaxed);
            stream.send.write_bytes(buf.split().freeze()).await?;
            activity.writing.store(false, Ordering::Relaxed);
            activity.touch(true);
        }
        stream.send.shutdown().await?;
        Ok::<_, io::Error>(n)
    };
    tokio::try_join!(up, down)
}

/// When a drain has begun, an HTTP stream whose last bytes went to the edge and which
/// then stayed quiet is an idle keep-alive connection: the response is complete and
/// the edge holds it only for reuse. Ending it lets a drain finish without waiting out
/// the grace period. A request still waiting for its response is never ended here:
/// its last bytes went to the origin.
async fn idle_while_draining(activity: &Activity, mut drain: watch::Receiver<bool>) {
    if drain.wait_for(|d| *d).await.is_err() {
        return std::future::pending().await;
    }
    loop {
        let (to_edge, idle) = activity.last();
        // A write waiting for the edge to take more (a slow visitor) is not idle.
        if to_edge && idle >= DRAIN_IDLE && !activity.writing.load(Ordering::Relaxed) {
            return;
        }
        tokio::time::sleep(
            DRAIN_IDLE
                .saturating_sub(idle)
                .max(Duration::from_millis(50)),
        )
        .await;
    }
}

/// The direction and time of a stream's last bytes.
#[derive(Default)]
struct Activity {
    /// Milliseconds since `EPOCH` of the last bytes, and bit 63 set when they went to the edge.
    last: AtomicU64,
    /// A write towards the edge is waiting for flow control.
    writing: std::sync::atomic::AtomicBool,
}

static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

impl Activity {
    fn touch(&self, to_edge: bool) {
        let ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 & !(1 << 63);
        self.last
            .store(ms | (u64::from(to_edge) << 63), Ordering::Relaxed);
    }
    fn last(&self) -> (bool, Duration) {
        let v = self.last.load(Ordering::Relaxed);
        let now = EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64;
        (
            v >> 63 == 1,
            Duration::from_millis(now.saturating_sub(v & !(1 << 63))),
        )
    }
}

/// Does the stream header fit the rule it names?
fn check(rule: &ActiveRule, header: &StreamHeader) -> Result<(), String> {
    if let Some(pattern) = &rule.hostname {
        if !crate::hostname::matches(pattern, &header.hostname) {
            return Err(format!(
                "hostname {} does not match rule {pattern}",
                header.hostname
            ));
        }
    }
    match (&rule.service, header.kind) {
        (Service::HttpStatus(_), _) => Err("status rules are answered by the edge".into()),
        (_, StreamKind::Release) => Err("release bytes were not asked for".into()),
        (s, StreamKind::Http) if s.is_raw_stream() => {
            Err("rule is a raw stream service, not HTTP".into())
        }
        _ => Ok(()),
    }
}

async fn dial(rule: &ActiveRule) -> Result<Box<dyn OriginIo>, (StreamError, String)> {
    let timeout = rule.connect_timeout;
    let fut = async {
        match &rule.service {
            Service::Http { host, port, .. } | Service::Stream { host, port, .. } => {
                let tcp = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| format!("cannot reach {host}:{port}: {e}"))?;
                let _ = tcp.set_nodelay(true);
                match &rule.tls {
                    Some(tls) => Ok(Box::new(tls.handshake(tcp).await?) as Box<dyn OriginIo>),
                    None => Ok(Box::new(tcp) as Box<dyn OriginIo>),
                }
            }
            Service::Unix { path, .. } => {
                let unix = UnixStream::connect(path.as_str())
                    .await
                    .map_err(|e| format!("cannot reach unix:{path}: {e}"))?;
                match &rule.tls {
                    Some(tls) => Ok(Box::new(tls.handshake(unix).await?) as Box<dyn OriginIo>),
                    None => Ok(Box::new(unix) as Box<dyn OriginIo>),
                }
            }
            Service::UnixStream { path } => {
                let unix = UnixStream::connect(path.as_str())
                    .await
                    .map_err(|e| format!("cannot reach tcp+unix:{path}: {e}"))?;
                Ok(Box::new(unix) as Box<dyn OriginIo>)
            }
            Service::HttpStatus(_) => Err("status rules are answered by the edge".to_string()),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(io)) => Ok(io),
        Ok(Err(msg)) => Err((StreamError::DialFailed, msg)),
        Err(_) => Err((
            StreamError::DialTimeout,
            format!("origin did not answer within {timeout:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn wildcards_need_one_more_label() {
        let m = crate::hostname::matches;
        assert!(m("*.dev42.example.com", "api.dev42.example.com"));
        assert!(m("*.dev42.example.com", "a.b.dev42.example.com"));
        assert!(!m("*.dev42.example.com", "dev42.example.com"));
        assert!(!m("*.dev42.example.com", "xdev42.example.com"));
        assert!(!m("*.dev42.example.com", ".dev42.example.com"));
        assert!(!m("*.dev42.example.com", "grafana..dev42.example.com"));
        assert!(
            !m("dev42.example.com", "DEV42.example.com"),
            "the edge sends canonical names"
        );
        assert!(!m("dev42.example.com", "api.dev42.example.com"));
    }
}
