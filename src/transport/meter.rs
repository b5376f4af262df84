//! The bytes the connector's tunnel connections put on the wire, both ways, since the
//! process started: counters only (two atomics, no allocation, nothing written), read
//! by the health reports (`connector::health`) to say what a board costs.
//!
//! - QUIC: the UDP payloads the device's endpoint sends and receives (every connection
//!   and handshake on it, as quinn's `Connection::stats()` counts `udp_tx`/`udp_rx`
//!   bytes, but counted at the socket so that connections that close, or never
//!   registered, are never missed), and the flow keeper's one-byte NAT keep-alives.
//! - HTTP/2: the bytes read and written on the TCP socket, under TLS ([`Metered`]).
//! - DNS: an estimate per lookup of an edge name ([`dns_lookup`]); the resolver is the
//!   system's, whose packets the connector does not see.
//!
//! IP and UDP/TCP headers are not counted (28–40 bytes a packet); neither are TCP's
//! bare acknowledgements.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes sent so far.
static SENT: AtomicU64 = AtomicU64::new(0);
/// Bytes received so far.
static RECEIVED: AtomicU64 = AtomicU64::new(0);

/// Counts `n` bytes sent.
pub(crate) fn sent(n: usize) {
    SENT.fetch_add(n as u64, Ordering::Relaxed);
}

/// Counts `n` bytes received.
pub(crate) fn received(n: usize) {
    RECEIVED.fetch_add(n as u64, Ordering::Relaxed);
}

/// Bytes on the wire so far, both ways.
pub(crate) fn total() -> u64 {
    SENT.load(Ordering::Relaxed)
        .saturating_add(RECEIVED.load(Ordering::Relaxed))
}

/// The UDP payload bytes of one lookup of `name` (A and AAAA queries and their
/// answers, one address each: 12-byte headers, the name, 4 bytes of question, 16 or
/// 28 of answer). Nothing for an address literal, which the resolver answers itself.
pub(crate) fn dns_estimate(name: &str) -> usize {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return 0;
    }
    // The name on the wire: a length byte per label, the labels, a final zero.
    let qname = name.len() + 2;
    let question = 12 + qname + 4;
    2 * question + (question + 16) + (question + 28)
}

/// Counts a lookup of `name` (see [`dns_estimate`]).
pub(crate) fn dns_lookup(name: &str) {
    let n = dns_estimate(name);
    if n > 0 {
        sent(n / 2);
        received(n - n / 2);
    }
}

/// A byte stream whose reads and writes are counted (the TCP socket under the HTTP/2
/// fallback's TLS).
pub(crate) struct Metered<T>(pub(crate) T);

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            received(buf.filled().len().saturating_sub(before));
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.0).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            sent(n);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.0).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            sent(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_metered_stream_counts_both_ways() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut m = Metered(a);
        let before = total();
        m.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).await.unwrap();
        b.write_all(b"abc").await.unwrap();
        let mut got = [0u8; 3];
        m.read_exact(&mut got).await.unwrap();
        // Other tests count too: at least these.
        assert!(total() - before >= 8);
    }

    #[test]
    fn dns_lookups_are_estimated_for_names_only() {
        assert_eq!(dns_estimate("192.0.2.1"), 0);
        assert_eq!(dns_estimate("::1"), 0);
        // "edge.example.com": 16 characters, an 18-byte name, 34-byte questions.
        assert_eq!(dns_estimate("edge.example.com"), 2 * 34 + 50 + 62);
    }
}
