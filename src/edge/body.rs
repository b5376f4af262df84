//! Bodies at the edge: the one [`Body`] type of everything the edge sends or forwards,
//! the edge's own small responses ([`text`], [`empty`]), and request bodies on their
//! way into a tunnel: the first part is buffered at the edge (so a slow or broken
//! client never costs the device a stream), the rest streams with an idle timeout and
//! a size cap.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;

/// Errors of bodies the edge forwards.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Body type of everything the edge sends or forwards.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// An empty body.
pub(crate) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body of bytes already in hand.
pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

/// A small text response from the edge itself: the status line, then `msg` if any.
pub(crate) fn text(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut body = format!(
        "{} {}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    let msg = msg.into();
    if !msg.is_empty() {
        body.push_str("\nmailslot edge: ");
        body.push_str(&msg);
        body.push('\n');
    }
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// How reading the start of a body ended badly.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The body did not arrive in time (slow POST).
    Slow,
    /// Larger than allowed.
    TooLarge,
    /// Malformed (e.g. invalid chunking) or the client went away.
    Broken,
}

/// The start of a request body, read before any tunnel stream is opened.
pub(crate) enum Prefix {
    /// The whole body: replayable for a retry.
    Complete(Bytes),
    /// The first bytes, and the rest still to come.
    Partial(Bytes, Incoming),
}

/// Reads up to `buffer` bytes (or the whole body if shorter) within `timeout`.
pub(crate) async fn read_prefix(
    mut body: Incoming,
    buffer: usize,
    max: u64,
    timeout: Duration,
) -> Result<Prefix, Refusal> {
    if body.is_end_stream() {
        return Ok(Prefix::Complete(Bytes::new()));
    }
    let mut buf = BytesMut::new();
    let read = async {
        loop {
            match body.frame().await {
                None => return Ok(true),
                Some(Err(_)) => return Err(Refusal::Broken),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if (buf.len() + data.len()) as u64 > max {
                            return Err(Refusal::TooLarge);
                        }
                        buf.extend_from_slice(&data);
                        if buf.len() >= buffer {
                            return Ok(body.is_end_stream());
                        }
                    }
                }
            }
        }
    };
    let complete = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| Refusal::Slow)??;
    let bytes = buf.freeze();
    Ok(if complete {
        Prefix::Complete(bytes)
    } else {
        Prefix::Partial(bytes, body)
    })
}

/// The body sent into the tunnel when the start was buffered and more follows.
pub(crate) struct Guarded {
    prefix: Option<Bytes>,
    inner: Incoming,
    seen: u64,
    max: u64,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Guarded {
    pub(crate) fn new(prefix: Bytes, inner: Incoming, max: u64, idle: Duration) -> Guarded {
        Guarded {
            seen: prefix.len() as u64,
            prefix: Some(prefix),
            inner,
            max,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("request body exceeds {0} bytes")]
    TooLarge(u64),
    #[error("request body stalled for {0:?}")]
    Stalled(Duration),
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = self.get_mut();
        if let Some(p) = me.prefix.take() {
            if !p.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(p))));
            }
        }
        match Pin::new(&mut me.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    me.seen += d.len() as u64;
                    if me.seen > me.max {
                        return Poll::Ready(Some(Err(BodyError::TooLarge(me.max).into())));
                    }
                }
                me.timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + me.idle);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match me.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Stalled(me.idle).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.as_ref().is_none_or(|p| p.is_empty()) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let p = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        let mut hint = SizeHint::new();
        if let Some(u) = inner.upper() {
            hint.set_upper(u.saturating_add(p));
        }
        hint.set_lower(inner.lower().saturating_add(p));
        hint
    }
}

use std::future::Future as _;
