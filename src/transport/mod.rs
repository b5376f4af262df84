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

pub mod h2;
pub mod quic;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the supervisor should do after a transport error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again after the usual backoff.
    Backoff,
    /// This transport seems blocked on this path: try the other one.
    Fallback,
}

/// A transport error with the supervisor's next step.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    pub retry: Retry,
    pub message: String,
}

impl TransportError {
    pub fn backoff(message: impl Into<String>) -> Self {
        TransportError {
            retry: Retry::Backoff,
            message: message.into(),
        }
    }
}

/// One tunnel connection, seen from either end.
#[derive(Clone, Debug)]
pub enum Session {
    Quic(quinn::Connection),
    H2(h2::H2Session),
}

impl Session {
    /// Opens a stream to the peer (edge side).
    pub async fn open_stream(&self) -> io::Result<TunnelStream> {
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
    pub async fn accept_stream(&self) -> io::Result<TunnelStream> {
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
    pub fn remote_addr(&self) -> SocketAddr {
        match self {
            Session::Quic(c) => c.remote_address(),
            Session::H2(h) => h.remote_addr(),
        }
    }

    /// Closes the connection, telling the peer why.
    pub fn close(&self, reason: &str) {
        match self {
            Session::Quic(c) => c.close(0u32.into(), reason.as_bytes()),
            Session::H2(h) => h.close(reason),
        }
    }

    /// Resolves when the connection is gone; the reason in words.
    pub async fn closed(&self) -> String {
        match self {
            Session::Quic(c) => quic::describe_close(&c.closed().await),
            Session::H2(h) => h.closed().await,
        }
    }

    /// Short name of the transport, for logs and status.
    pub fn protocol(&self) -> &'static str {
        match self {
            Session::Quic(_) => "quic",
            Session::H2(_) => "http2",
        }
    }

    /// A stable id of this connection within the process.
    pub fn id(&self) -> usize {
        match self {
            Session::Quic(c) => c.stable_id(),
            Session::H2(h) => h.id(),
        }
    }
}

/// The sending half of a tunnel stream.
pub enum SendHalf {
    Quic(quinn::SendStream),
    H2(h2::H2Send),
}

/// The receiving half of a tunnel stream.
pub enum RecvHalf {
    Quic(quinn::RecvStream),
    H2(h2::H2Recv),
}

/// One bidirectional tunnel stream: a byte pipe with clean and abrupt ends.
pub struct TunnelStream {
    pub send: SendHalf,
    pub recv: RecvHalf,
}

impl TunnelStream {
    /// Ends both directions abruptly: the peer sees an error, not a clean EOF.
    pub fn abort(&mut self) {
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
    pub async fn write_bytes(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            SendHalf::Quic(s) => s.write_chunk(data).await.map_err(io::Error::from),
            SendHalf::H2(s) => s.write_bytes(data).await,
        }
    }
}

impl RecvHalf {
    /// The next bytes from the peer, at most `max`, as the transport received them (no
    /// copy); `None` once the peer has ended its side.
    pub async fn read_bytes(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        match self {
            RecvHalf::Quic(r) => match r.read_chunk(max, true).await {
                Ok(chunk) => Ok(chunk.map(|c| c.bytes)),
                Err(e) => Err(io::Error::from(e)),
            },
            RecvHalf::H2(r) => std::future::poll_fn(|cx| r.poll_bytes(cx, max)).await,
        }
    }
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
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().send).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().send).poll_shutdown(cx)
    }
}
