//! Bodies and byte streams that count what passes through them into a tunnel's
//! [`TunnelStats`]: HTTP bodies on their way to the origin or the visitor, and the
//! visitor's side of upgraded connections and access streams.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Direction, Kind, TunnelStats};
use crate::edge::body::BoxError;

/// A body whose data frames are counted as bytes of HTTP going `direction`.
pub(crate) struct CountedBody<B> {
    inner: B,
    stats: Arc<TunnelStats>,
    direction: Direction,
}

impl<B> CountedBody<B> {
    pub(crate) fn new(inner: B, stats: Arc<TunnelStats>, direction: Direction) -> Self {
        CountedBody {
            inner,
            stats,
            direction,
        }
    }
}

impl<B> HttpBody for CountedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = self.get_mut();
        let frame = Pin::new(&mut me.inner).poll_frame(cx).map_err(Into::into);
        if let Poll::Ready(Some(Ok(f))) = &frame {
            if let Some(d) = f.data_ref() {
                me.stats.bytes(Kind::Http, me.direction, d.len() as u64);
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A visitor's (or access client's) side of a byte stream: what is read from it goes
/// to the origin, what is written to it comes from the origin. Counts both, for the
/// caller (`read`, `written`) and for the tunnel's counters.
pub(crate) struct CountedIo<T> {
    inner: T,
    stats: Arc<TunnelStats>,
    kind: Kind,
    /// Bytes read from the visitor.
    pub(crate) read: u64,
    /// Bytes written to the visitor.
    pub(crate) written: u64,
}

impl<T> CountedIo<T> {
    pub(crate) fn new(inner: T, stats: Arc<TunnelStats>, kind: Kind) -> Self {
        CountedIo {
            inner,
            stats,
            kind,
            read: 0,
            written: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before) as u64;
        if n > 0 {
            me.read += n;
            me.stats.bytes(me.kind, Direction::ToOrigin, n);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            me.written += n as u64;
            me.stats.bytes(me.kind, Direction::ToVisitor, n as u64);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::metrics::Metrics;

    #[tokio::test]
    async fn counted_bodies_and_streams_count_bytes_each_way() {
        use http_body_util::{BodyExt, Full};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let m = Metrics::default();
        let t = m.tunnel("dev42");
        let body = CountedBody::new(
            Full::new(Bytes::from_static(b"hello")),
            t.clone(),
            Direction::ToOrigin,
        );
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 5);
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = CountedIo::new(a, t.clone(), Kind::Stream);
        io.write_all(b"abc").await.unwrap();
        b.write_all(b"wxyz").await.unwrap();
        let mut buf = [0; 4];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!((io.read, io.written), (4, 3));
        let mut text = String::new();
        m.render(&mut text);
        for (kind, dir, n) in [
            ("http", "to_origin", 5),
            ("stream", "to_origin", 4),
            ("stream", "to_visitor", 3),
        ] {
            let line = format!(
                "mailslot_edge_bytes_total{{tunnel=\"dev42\",kind=\"{kind}\",direction=\"{dir}\"}} {n}\n"
            );
            assert!(text.contains(&line), "{line} in\n{text}");
        }
    }
}
