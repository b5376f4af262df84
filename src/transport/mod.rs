//! Tunnel transports behind one interface: a [`Session`] on which the edge opens
//! bidirectional [`TunnelStream`]s and the connector accepts them.
//!
//! Contract:
//! - All streams are opened by the edge; the first one is the control stream.
//! - `open_stream` and `accept_stream` are cancel-safe: dropping the future loses no
//!   stream that was not yet handed out.
//! - A stream's send half ends cleanly with `shutdown` (the peer reads EOF) and abruptly
//!   with [`TunnelStream::abort`] (the peer reads an error).
//! - Retrying, backing off and falling back are decided by the connector's supervisor,
//!   never by a transport: errors carry a [`Retry`] kind for it.
// The listening half of each transport and what the edge reads off a session are the
// edge's alone: the device build compiles them without using them.
#![cfg_attr(not(feature = "edge"), allow(dead_code))]

pub(crate) mod h2;
pub(crate) mod meter;
pub(crate) mod quic;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the supervisor should do after a transport error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Try again after the usual backoff.
    Backoff,
    /// This transport seems blocked on this path: try the other one.
    Fallback,
}

/// A transport error with the supervisor's next step.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct TransportError {
    pub(crate) retry: Retry,
    pub(crate) message: String,
}

impl TransportError {
    pub(crate) fn backoff(message: impl Into<String>) -> Self {
        TransportError {
            retry: Retry::Backoff,
            message: message.into(),
        }
    }
}

/// The transport a session runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// QUIC over UDP.
    Quic,
    /// HTTP/2 over TLS on TCP.
    Http2,
}

impl Transport {
    /// Its name in logs, status and metrics: `quic` or `http2`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Http2 => "http2",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One tunnel connection, seen from either end.
#[derive(Clone, Debug)]
pub(crate) enum Session {
    Quic(quinn::Connection),
    H2(h2::H2Session),
}

impl Session {
    /// Opens a stream to the peer (edge side).
    pub(crate) async fn open_stream(&self) -> io::Result<TunnelStream> {
        match self {
            Session::Quic(c) => {
                let (send, recv) = c.open_bi().await.map_err(io::Error::other)?;
                Ok(TunnelStream {
                    send: SendHalf::Quic(send),
                    recv: RecvHalf::Quic(recv),
                })
            }
            Session::H2(h) => h.open_stream().await,
        }
    }

    /// Waits for the next stream the peer opens (connector side).
    pub(crate) async fn accept_stream(&self) -> io::Result<TunnelStream> {
        match self {
            Session::Quic(c) => {
                let (send, recv) = c.accept_bi().await.map_err(io::Error::other)?;
                Ok(TunnelStream {
                    send: SendHalf::Quic(send),
                    recv: RecvHalf::Quic(recv),
                })
            }
            Session::H2(h) => h.accept_stream().await,
        }
    }

    /// The peer's address as this end sees it.
    pub(crate) fn remote_addr(&self) -> SocketAddr {
        match self {
            Session::Quic(c) => c.remote_address(),
            Session::H2(h) => h.remote_addr(),
        }
    }

    /// Closes the connection, telling the peer why.
    pub(crate) fn close(&self, reason: &str) {
        match self {
            Session::Quic(c) => c.close(0u32.into(), reason.as_bytes()),
            Session::H2(h) => h.close(reason),
        }
    }

    /// Resolves when the connection is gone; the reason in words.
    pub(crate) async fn closed(&self) -> String {
        match self {
            Session::Quic(c) => quic::describe_close(&c.closed().await),
            Session::H2(h) => h.closed().await,
        }
    }

    /// The transport this session runs on (`Display`s as `quic` or `http2`).
    pub(crate) fn protocol(&self) -> Transport {
        match self {
            Session::Quic(_) => Transport::Quic,
            Session::H2(_) => Transport::Http2,
        }
    }

    /// The current round-trip estimate.
    pub(crate) fn rtt(&self) -> Duration {
        match self {
            Session::Quic(c) => c.rtt(),
            Session::H2(h) => h.rtt(),
        }
    }

    /// The largest UDP payload the connection sends in one packet (QUIC), as its MTU
    /// discovery found it; `None` over TCP, where the kernel sizes segments.
    pub(crate) fn packet_size(&self) -> Option<u16> {
        match self {
            Session::Quic(c) => Some(c.stats().path.current_mtu),
            Session::H2(_) => None,
        }
    }

    /// A stable id of this connection within the process.
    pub(crate) fn id(&self) -> usize {
        match self {
            Session::Quic(c) => c.stable_id(),
            Session::H2(h) => h.id(),
        }
    }
}

/// The sending half of a tunnel stream.
pub(crate) enum SendHalf {
    Quic(quinn::SendStream),
    H2(h2::H2Send),
}

/// The receiving half of a tunnel stream.
pub(crate) enum RecvHalf {
    Quic(quinn::RecvStream),
    H2(h2::H2Recv),
}

/// One bidirectional tunnel stream: a byte pipe with clean and abrupt ends.
pub(crate) struct TunnelStream {
    pub(crate) send: SendHalf,
    pub(crate) recv: RecvHalf,
}

impl TunnelStream {
    /// Ends both directions abruptly: the peer sees an error, not a clean EOF.
    pub(crate) fn abort(&mut self) {
        match &mut self.send {
            SendHalf::Quic(s) => {
                let _ = s.reset(1u32.into());
            }
            SendHalf::H2(s) => s.abort(),
        }
        match &mut self.recv {
            RecvHalf::Quic(r) => {
                let _ = r.stop(1u32.into());
            }
            RecvHalf::H2(r) => r.abort(),
        }
    }
}

impl SendHalf {
    /// Sends `data`, handing the buffer itself to the transport: no copy is made on the
    /// way to the packet or frame that carries it.
    pub(crate) async fn write_bytes(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            SendHalf::Quic(s) => s.write_chunk(data).await.map_err(io::Error::from),
            SendHalf::H2(s) => s.write_bytes(data).await,
        }
    }
}

impl RecvHalf {
    /// Waits for bytes from the peer and fills `bufs` with every chunk already received,
    /// as the transport holds them (no copy): `Some(n)` chunks, `None` once the peer has
    /// ended its side. A QUIC chunk is one packet's worth (about 1.2 KiB) and an HTTP/2
    /// chunk one DATA frame, so taking all that is ready at once lets the caller pass
    /// them on in one vectored write instead of a system call per packet.
    pub(crate) async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> io::Result<Option<usize>> {
        match self {
            RecvHalf::Quic(r) => r.read_chunks(bufs).await.map_err(io::Error::from),
            RecvHalf::H2(r) => std::future::poll_fn(|cx| r.poll_chunks(cx, bufs)).await,
        }
    }
}

/// Writes all of `chunks` to `w`, in vectored writes where `w` supports them, leaving
/// every slot empty.
pub(crate) async fn write_all_chunks<W: AsyncWrite + Unpin>(
    w: &mut W,
    chunks: &mut [Bytes],
) -> io::Result<()> {
    use bytes::Buf;
    use tokio::io::AsyncWriteExt;
    /// Slices per write; Linux takes up to 1024 (IOV_MAX).
    const MAX_SLICES: usize = 64;
    let mut first = 0;
    while let Some(rest) = chunks.get_mut(first..) {
        let Some(head) = rest.first() else {
            break;
        };
        if head.is_empty() {
            first += 1;
            continue;
        }
        let mut slices = [io::IoSlice::new(&[]); MAX_SLICES];
        let mut count = 0;
        for (slot, chunk) in slices.iter_mut().zip(rest.iter()) {
            *slot = io::IoSlice::new(chunk);
            count += 1;
        }
        // `count <= MAX_SLICES`: the zip above stops at the end of `slices`.
        let (filled, _) = slices.split_at(count);
        let mut n = w.write_vectored(filled).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        for chunk in rest.iter_mut() {
            if n == 0 {
                break;
            }
            let k = n.min(chunk.len());
            chunk.advance(k);
            n -= k;
            if chunk.is_empty() {
                // Release the transport's buffer now, not when the slot is reused.
                *chunk = Bytes::new();
                first += 1;
            }
        }
    }
    Ok(())
}

impl AsyncRead for RecvHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RecvHalf::Quic(r) => Pin::new(r).poll_read(cx, buf),
            RecvHalf::H2(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SendHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SendHalf::Quic(s) => Pin::new(s).poll_write(cx, buf).map_err(io::Error::from),
            SendHalf::H2(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    /// Vectored, so that an HTTP/1.1 client writing through the stream (the edge's
    /// hyper) queues body chunks as they are instead of first copying them into its own
    /// buffer: the transport's copy is then the only one.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SendHalf::Quic(s) => {
                // quinn takes one slice per call and copies only what its buffers
                // accept; stop at the first slice it does not take whole.
                let mut written = 0;
                for b in bufs.iter().filter(|b| !b.is_empty()) {
                    match Pin::new(&mut *s).poll_write(cx, b) {
                        Poll::Ready(Ok(n)) => {
                            written += n;
                            if n < b.len() {
                                break;
                            }
                        }
                        Poll::Ready(Err(e)) if written == 0 => return Poll::Ready(Err(e.into())),
                        Poll::Pending if written == 0 => return Poll::Pending,
                        // What was taken is reported; the error or the wait comes
                        // with the next call.
                        Poll::Ready(Err(_)) | Poll::Pending => break,
                    }
                }
                Poll::Ready(Ok(written))
            }
            SendHalf::H2(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SendHalf::Quic(s) => Pin::new(s).poll_flush(cx),
            SendHalf::H2(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SendHalf::Quic(s) => Pin::new(s).poll_shutdown(cx),
            SendHalf::H2(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().send).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().send).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().send).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().send).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_print_the_names_logs_and_metrics_use() {
        assert_eq!(Transport::Quic.to_string(), "quic");
        assert_eq!(Transport::Http2.to_string(), "http2");
    }

    /// A vectored writer that takes at most `limit` bytes per call, across slices.
    struct Trickle {
        out: Vec<u8>,
        limit: usize,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let me = self.get_mut();
            me.calls += 1;
            let mut room = me.limit;
            for b in bufs {
                let k = room.min(b.len());
                me.out.extend_from_slice(&b[..k]);
                room -= k;
            }
            Poll::Ready(Ok(me.limit - room))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn chunks_are_written_whole_in_order_across_partial_writes() {
        let mut chunks = [
            Bytes::from_static(b"abc"),
            Bytes::new(),
            Bytes::from_static(b"defgh"),
            Bytes::from_static(b"i"),
            Bytes::from_static(b"jklmnopq"),
        ];
        for limit in [1, 2, 4, 7, 100] {
            let mut w = Trickle {
                out: Vec::new(),
                limit,
                calls: 0,
            };
            let mut c = chunks.clone();
            write_all_chunks(&mut w, &mut c).await.unwrap();
            assert_eq!(w.out, b"abcdefghijklmnopq", "limit {limit}");
            assert_eq!(w.calls, 17usize.div_ceil(limit), "limit {limit}");
            assert!(c.iter().all(Bytes::is_empty));
        }
        // A writer that takes nothing is an error, not a loop.
        let mut w = Trickle {
            out: Vec::new(),
            limit: 0,
            calls: 0,
        };
        let e = write_all_chunks(&mut w, &mut chunks).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    }
}
