//! HTTP/1.1 to the origin inside a tunnel stream, for the common request: one whose
//! whole body (often none) is at the edge and that asks for no upgrade. The visitor's
//! head, already checked and rewritten by [`super::forward`], is written straight onto
//! the stream with its body in one write; the response head is parsed with `httparse`
//! into an [`http::Response`] whose body ([`RawBody`]) reads the stream itself, in the
//! visitor connection's task. No connection task, channel or timer per request: the
//! stream goes back to its pool the moment the body's last byte is read.
//!
//! Requests whose body still streams in, and WebSocket upgrades, keep hyper's client
//! ([`super::pool`]), which can read a response while a body is still being sent.
//!
//! What is accepted from the origin is what hyper's client accepts, no more: a strict
//! head (httparse's defaults, as hyper's), at most [`MAX_HEADERS`] headers in
//! [`MAX_HEAD`] bytes, a valid `Content-Length` (equal values only), chunked bodies
//! with size lines, extensions and trailers bounded ([`MAX_LINE`], [`MAX_TRAILERS`]).
//! Interim (1xx) responses other than 101 are skipped, at most [`MAX_INTERIM`]. A
//! connection is reused only after an HTTP/1.1 response without `Connection: close`
//! whose body had a known end, read to that end.
//!
//! ```text
//!   request:  METHOD SP origin-form SP "HTTP/1.1" CRLF *(name ": " value CRLF)
//!             [ "content-length: " N CRLF ] CRLF body        (one write)
//!   response: status line, headers         -> Response<RawBody>
//!             Content-Length N | chunked | until close | none (HEAD, 1xx, 204, 304)
//! ```

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::transport::TunnelStream;

/// What a connection runs over: a tunnel stream (tests use in-memory pipes).
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Writes all of `data`; a tunnel stream takes the buffer itself, without a copy.
    fn write_owned(&mut self, data: Bytes) -> impl Future<Output = io::Result<()>> + Send {
        async move { self.write_all(&data).await }
    }
}

impl Io for TunnelStream {
    fn write_owned(&mut self, data: Bytes) -> impl Future<Output = io::Result<()>> + Send {
        self.send.write_bytes(data)
    }
}

/// Most header lines in a response head (hyper's client allows 100 too).
pub(crate) const MAX_HEADERS: usize = 100;
/// Longest response head, status line included.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size line (size and extensions) of a chunked body.
pub(crate) const MAX_LINE: usize = 4096;
/// Largest trailer section of a chunked body.
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;
/// Most interim (1xx) responses before the final one.
pub(crate) const MAX_INTERIM: usize = 8;
/// Bytes first asked of the stream per read. A read that fills all the room it was
/// given doubles the next one's, up to [`MAX_READ`] (a large body moves in fewer,
/// larger frames); the read buffer holds at most a head of [`MAX_HEAD`] and one read
/// beyond.
const READ_SIZE: usize = 16 * 1024;
/// Most bytes asked of the stream per read.
const MAX_READ: usize = 256 * 1024;

/// Why an exchange with the origin failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OriginError {
    /// The stream failed.
    #[error("origin stream: {0}")]
    Io(#[from] io::Error),
    /// The origin closed its side before a whole response head; `before_any`: it had
    /// sent nothing at all for this request.
    #[error("the origin closed the connection")]
    Closed { before_any: bool },
    /// The origin's message does not parse or breaks a limit.
    #[error("invalid response from the origin: {0}")]
    Invalid(&'static str),
}

/// An HTTP/1.1 connection to the origin: a tunnel stream and what was read from it
/// but not yet used.
pub(crate) struct RawConn<S = TunnelStream> {
    io: S,
    buf: BytesMut,
    /// Bytes asked of the stream at the next read ([`READ_SIZE`] to [`MAX_READ`]).
    read_size: usize,
}

/// How a response's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length`: this many bytes left.
    Length(u64),
    /// Chunked.
    Chunked(Chunk),
    /// Until the origin closes the stream.
    Eof,
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data are left.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// The trailer section (possibly empty) after the last chunk is next.
    Trailers,
}

impl<S: Io> RawConn<S> {
    pub(crate) fn new(io: S) -> RawConn<S> {
        RawConn {
            io,
            buf: BytesMut::new(),
            read_size: READ_SIZE,
        }
    }

    /// Whether an idle connection can take a request: the origin has neither closed it
    /// nor sent anything unasked. Never waits.
    pub(crate) fn is_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut rb),
            Poll::Pending
        )
    }

    /// Writes a request: `method`, the origin-form `target`, `headers` (rewritten for
    /// the origin; any `Content-Length` among them is replaced by the body's own) and
    /// the whole `body`, in one write.
    pub(crate) async fn send(
        &mut self,
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<(), OriginError> {
        let mut head = Vec::with_capacity(head_capacity(method, target, headers) + body.len());
        head.extend_from_slice(method.as_str().as_bytes());
        head.push(b' ');
        head.extend_from_slice(target.as_bytes());
        head.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            if name == header::CONTENT_LENGTH {
                continue;
            }
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        // The body's length, as hyper's client writes it: always when there is a body,
        // and for an empty one when the visitor declared it or the method expects one.
        let declared = headers.contains_key(header::CONTENT_LENGTH);
        let expects = matches!(*method, Method::POST | Method::PUT | Method::PATCH);
        if !body.is_empty() || declared || expects {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(itoa(body.len() as u64, &mut [0u8; 20]));
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(body);
        self.io.write_owned(Bytes::from(head)).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Reads the response head: the final response (interim ones skipped), with its
    /// body still on the stream. `head_request`: the request was a HEAD (no body
    /// follows whatever the headers say).
    pub(crate) async fn read_head(
        &mut self,
        head_request: bool,
    ) -> Result<(Response<()>, Framing, bool), OriginError> {
        let mut interim = 0;
        loop {
            if let Some(parsed) = self.parse_head()? {
                let (resp, keep_alive) = parsed;
                let status = resp.status();
                if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                    interim += 1;
                    if interim > MAX_INTERIM {
                        return Err(OriginError::Invalid("too many interim responses"));
                    }
                    continue;
                }
                let (resp, framing, keep_alive) = framing_of(resp, head_request, keep_alive)?;
                return Ok((resp, framing, keep_alive));
            }
            if self.buf.len() >= MAX_HEAD {
                return Err(OriginError::Invalid("response head too large"));
            }
            let n = std::future::poll_fn(|cx| self.fill(cx)).await?;
            if n == 0 {
                return Err(OriginError::Closed {
                    before_any: self.buf.is_empty() && interim == 0,
                });
            }
        }
    }

    /// A complete head at the start of the buffer, taken out of it: the response and
    /// whether the origin keeps the connection open after it.
    fn parse_head(&mut self) -> Result<Option<(Response<()>, bool)>, OriginError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        // Uninitialised lines: httparse writes only those it fills, and the array is
        // MAX_HEADERS lines long (3.2 KB) while a response has a handful.
        let mut lines = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut r, &self.buf, &mut lines);
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(OriginError::Invalid("too many response headers"))
            }
            Err(_) => return Err(OriginError::Invalid("malformed response head")),
        };
        let version = match r.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        let status = r
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or(OriginError::Invalid("invalid status code"))?;
        // Names and values as places in the head, which is then taken out of the buffer
        // whole: each value is a slice of it (no copy per header). The places are
        // offsets, not names, so that the list is small and read in place.
        let base = self.buf.as_ptr() as usize;
        let at = |s: &[u8]| {
            let start = (s.as_ptr() as usize).wrapping_sub(base);
            Span {
                start,
                end: start.wrapping_add(s.len()),
            }
        };
        let mut spans = heapless::Vec::<(Span, Span), MAX_HEADERS>::new();
        for h in r.headers.iter() {
            let _ = spans.push((at(h.name.as_bytes()), at(h.value)));
        }
        let head = self.buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(spans.len());
        for (name, value) in &spans {
            let (Some(name), Some(_)) = (
                head.get(name.start..name.end),
                head.get(value.start..value.end),
            ) else {
                return Err(OriginError::Invalid("malformed response head"));
            };
            let name = HeaderName::from_bytes(name)
                .map_err(|_| OriginError::Invalid("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(value.start..value.end))
                .map_err(|_| OriginError::Invalid("invalid header value"))?;
            headers.append(name, value);
        }
        let close = has_token(&headers, "close");
        let keep_alive = version == Version::HTTP_11 && !close;
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        Ok(Some((resp, keep_alive)))
    }

    /// The body of a response whose head [`Self::read_head`] read.
    pub(crate) fn body<B: Back<S>>(
        self,
        framing: Framing,
        keep_alive: bool,
        back: B,
    ) -> RawBody<B, S> {
        let mut body = RawBody {
            conn: Some(self),
            framing,
            keep_alive,
            back: Some(back),
        };
        if framing == Framing::Empty || framing == Framing::Length(0) {
            body.finish();
        }
        body
    }
}

/// Room a request head takes, so that it is written without growing its buffer.
fn head_capacity(method: &Method, target: &str, headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    method.as_str().len() + target.len() + lines + 64
}

/// `n` in decimal.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        if let Some(d) = buf.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    buf.get(i..).unwrap_or(&[])
}

/// Whether a `Connection` header of `headers` lists `token`.
fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// The body's framing (RFC 9112 6.3), and whether the connection can be reused after
/// it. A chunked body's `Content-Length` is dropped (the chunks say where it ends; the
/// connection is not reused after such a message).
fn framing_of(
    mut resp: Response<()>,
    head_request: bool,
    mut keep_alive: bool,
) -> Result<(Response<()>, Framing, bool), OriginError> {
    let status = resp.status();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // Nothing asked for it on this path: the stream is not HTTP any more.
        return Ok((resp, Framing::Empty, false));
    }
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((resp, Framing::Empty, keep_alive));
    }
    let headers = resp.headers_mut();
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if te.peek().is_some() {
        let last = te
            .last()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(str::trim);
        let chunked = last.is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            keep_alive = false;
        }
        if chunked && resp.version() == Version::HTTP_11 {
            return Ok((resp, Framing::Chunked(Chunk::Size), keep_alive));
        }
        return Ok((resp, Framing::Eof, false));
    }
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.as_bytes().split(|&b| b == b',') {
            let n = parse_decimal(part.trim_ascii())
                .ok_or(OriginError::Invalid("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(OriginError::Invalid("conflicting Content-Length"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => (resp, Framing::Length(n), keep_alive),
        None => (resp, Framing::Eof, false),
    })
}

/// Decimal digits only, at most 19 of them (below `u64::MAX`).
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(s.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

impl<S: Io> RawConn<S> {
    /// Reads what the stream has into the spare room of the buffer (grown by the read
    /// size when short of room): the bytes read, 0 at the end of the stream.
    fn fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let buf = &mut self.buf;
        if buf.capacity() - buf.len() < self.read_size / 4 {
            buf.reserve(self.read_size);
        }
        let spare: &mut [MaybeUninit<u8>] = buf.spare_capacity_mut();
        let room = spare.len().min(self.read_size);
        let spare = spare.get_mut(..room).unwrap_or_default();
        let ptr = spare.as_ptr();
        let mut rb = ReadBuf::uninit(spare);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if rb.filled().as_ptr().cast::<MaybeUninit<u8>>() != ptr {
            return Poll::Ready(Err(io::Error::other("the stream swapped its read buffer")));
        }
        // SAFETY: `ReadBuf` vouches that its first `n` bytes were initialised, and they
        // are the first `n` bytes of the buffer's spare capacity (checked just above).
        unsafe { buf.set_len(buf.len() + n) };
        if n == room {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }
}

/// Where a [`RawConn`] goes when its response has been read to the end.
pub(crate) trait Back<S = TunnelStream>: Unpin + Send + 'static {
    /// Takes the connection back for another request.
    fn checkin(self, conn: RawConn<S>);
}

/// A response body read from the origin's stream as the visitor takes it. The
/// connection goes back through its [`Back`] when the body's end is read and the
/// connection may be reused; dropped earlier, it closes.
pub(crate) struct RawBody<B: Back<S>, S: Io = TunnelStream> {
    conn: Option<RawConn<S>>,
    framing: Framing,
    keep_alive: bool,
    back: Option<B>,
}

impl<B: Back<S>, S: Io> RawBody<B, S> {
    /// The body has ended: the connection goes back if it may.
    fn finish(&mut self) {
        self.framing = Framing::Empty;
        let (Some(conn), Some(back)) = (self.conn.take(), self.back.take()) else {
            return;
        };
        if self.keep_alive {
            back.checkin(conn);
        }
    }

    fn fail(
        &mut self,
        e: OriginError,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, OriginError>>> {
        self.conn = None;
        self.back = None;
        self.framing = Framing::Empty;
        Poll::Ready(Some(Err(e)))
    }

    /// Reads more; `Ok(false)` at the end of the stream.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, OriginError>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        let n = ready!(conn.fill(cx))?;
        Poll::Ready(Ok(n > 0))
    }

    fn buf(&mut self) -> Option<&mut BytesMut> {
        self.conn.as_mut().map(|c| &mut c.buf)
    }
}

impl<B: Back<S>, S: Io> http_body::Body for RawBody<B, S> {
    type Data = Bytes;
    type Error = OriginError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, OriginError>>> {
        let me = self.get_mut();
        loop {
            match me.framing {
                Framing::Empty => return Poll::Ready(None),
                Framing::Length(left) => {
                    let Some(buf) = me.buf() else {
                        return Poll::Ready(None);
                    };
                    if !buf.is_empty() {
                        let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                        let data = buf.split_to(take).freeze();
                        let left = left - take as u64;
                        me.framing = Framing::Length(left);
                        if left == 0 {
                            me.finish();
                        }
                        return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                    }
                    match ready!(me.poll_more(cx)) {
                        Ok(true) => {}
                        Ok(false) => return me.fail(OriginError::Invalid("body cut short")),
                        Err(e) => return me.fail(e),
                    }
                }
                Framing::Eof => {
                    let Some(buf) = me.buf() else {
                        return Poll::Ready(None);
                    };
                    if !buf.is_empty() {
                        let data = buf.split().freeze();
                        return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                    }
                    match ready!(me.poll_more(cx)) {
                        Ok(true) => {}
                        Ok(false) => {
                            me.finish();
                            return Poll::Ready(None);
                        }
                        Err(e) => return me.fail(e),
                    }
                }
                Framing::Chunked(state) => match me.step_chunked(state) {
                    Ok(Step::Frame(f)) => return Poll::Ready(Some(Ok(f))),
                    Ok(Step::Last(f)) => {
                        // Trailers end the body: a reader may stop polling here.
                        me.finish();
                        return Poll::Ready(Some(Ok(f)));
                    }
                    Ok(Step::End) => {
                        me.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Step::Again) => {}
                    Ok(Step::More) => match ready!(me.poll_more(cx)) {
                        Ok(true) => {}
                        Ok(false) => return me.fail(OriginError::Invalid("body cut short")),
                        Err(e) => return me.fail(e),
                    },
                    Err(e) => return me.fail(e),
                },
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Empty
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.framing {
            Framing::Empty => http_body::SizeHint::with_exact(0),
            Framing::Length(n) => http_body::SizeHint::with_exact(n),
            _ => http_body::SizeHint::default(),
        }
    }
}

/// What one step of chunked decoding found.
enum Step {
    /// Data for the visitor.
    Frame(http_body::Frame<Bytes>),
    /// The trailers: the body's last frame.
    Last(http_body::Frame<Bytes>),
    /// The state moved on; look again.
    Again,
    /// More bytes are needed.
    More,
    /// The body is complete.
    End,
}

impl<B: Back<S>, S: Io> RawBody<B, S> {
    fn step_chunked(&mut self, state: Chunk) -> Result<Step, OriginError> {
        let Some(buf) = self.buf() else {
            return Ok(Step::End);
        };
        let (next, step) = match state {
            Chunk::Size => {
                let Some(end) = line_end(buf, MAX_LINE)? else {
                    return Ok(Step::More);
                };
                let line = buf.split_to(end + 2);
                let size = chunk_size(line.get(..end).unwrap_or(&[]))?;
                if size == 0 {
                    (Chunk::Trailers, Step::Again)
                } else {
                    (Chunk::Data(size), Step::Again)
                }
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let data = buf.split_to(take).freeze();
                let left = left - take as u64;
                let next = if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                };
                (next, Step::Frame(http_body::Frame::data(data)))
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if buf.get(..2) != Some(b"\r\n") {
                    return Err(OriginError::Invalid("malformed chunked body"));
                }
                buf.advance(2);
                (Chunk::Size, Step::Again)
            }
            Chunk::Trailers => {
                if buf.get(..2) == Some(b"\r\n") {
                    buf.advance(2);
                    return Ok(Step::End);
                }
                let Some(end) = find(buf, b"\r\n\r\n", MAX_TRAILERS) else {
                    if buf.len() >= MAX_TRAILERS {
                        return Err(OriginError::Invalid("trailers too large"));
                    }
                    return Ok(Step::More);
                };
                let block = buf.split_to(end + 4).freeze();
                let trailers = parse_trailers(&block)?;
                return Ok(Step::Last(http_body::Frame::trailers(trailers)));
            }
        };
        self.framing = Framing::Chunked(next);
        Ok(step)
    }
}

/// Where the first CRLF of `buf` starts, looking no further than `max` bytes.
fn line_end(buf: &[u8], max: usize) -> Result<Option<usize>, OriginError> {
    match find(buf, b"\r\n", max) {
        Some(i) => Ok(Some(i)),
        None if buf.len() >= max => Err(OriginError::Invalid("chunk-size line too long")),
        None => Ok(None),
    }
}

/// Where `needle` first occurs in the first `max` bytes of `hay`.
fn find(hay: &[u8], needle: &[u8], max: usize) -> Option<usize> {
    let hay = hay.get(..hay.len().min(max)).unwrap_or(hay);
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A chunk-size line: hex digits (at most 15: under 2^60), then optional whitespace
/// and extensions, which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, OriginError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = line.get(digits..).unwrap_or(&[]);
    let rest = rest.trim_ascii_start();
    if digits == 0 || digits > 15 || !(rest.is_empty() || rest.first() == Some(&b';')) {
        return Err(OriginError::Invalid("malformed chunk size"));
    }
    let mut n = 0u64;
    for &b in line.get(..digits).unwrap_or(&[]) {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        n = n * 16 + u64::from(d);
    }
    Ok(n)
}

/// A trailer section (ending with its empty line) as headers.
fn parse_trailers(block: &Bytes) -> Result<HeaderMap, OriginError> {
    let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = match httparse::parse_headers(block, &mut lines) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        _ => return Err(OriginError::Invalid("malformed trailers")),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| OriginError::Invalid("invalid trailer name"))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| OriginError::Invalid("invalid trailer value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// A header's name or value as a place in a response head.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longest a test waits on an exchange before it fails.
    const TEST_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

    #[test]
    fn numbers_and_chunk_sizes_parse_strictly() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1024, &mut [0; 20]), b"1024");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
        assert_eq!(parse_decimal(b"42"), Some(42));
        assert_eq!(parse_decimal(b"+42"), None);
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"99999999999999999999"), None);
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"1A ; ext=1").unwrap(), 26);
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"x").is_err());
        assert!(chunk_size(b"10 20").is_err());
        assert!(chunk_size(b"1000000000000000").is_err());
    }

    fn head(text: &str, head_request: bool) -> Result<(Response<()>, Framing, bool), OriginError> {
        let mut buf = BytesMut::from(text.as_bytes());
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut lines);
        let Ok(httparse::Status::Complete(len)) = r.parse(&buf) else {
            return Err(OriginError::Invalid("malformed response head"));
        };
        let mut resp = Response::new(());
        *resp.status_mut() = StatusCode::from_u16(r.code.unwrap()).unwrap();
        *resp.version_mut() = if r.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        for h in r.headers.iter() {
            resp.headers_mut().append(
                HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(h.value).unwrap(),
            );
        }
        buf.advance(len);
        let keep = resp.version() == Version::HTTP_11 && !has_token(resp.headers(), "close");
        framing_of(resp, head_request, keep)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |t: &str, h| head(t, h).map(|(_, f, k)| (f, k));
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false).unwrap(),
            (Framing::Length(5), true)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n", false).unwrap(),
            (Framing::Length(5), true)
        );
        assert!(f("HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n", false).is_err());
        assert!(f(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            false
        )
        .is_err());
        assert!(f("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false).is_err());
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true).unwrap(),
            (Framing::Empty, true)
        );
        assert_eq!(
            f("HTTP/1.1 204 No Content\r\n\r\n", false).unwrap(),
            (Framing::Empty, true)
        );
        assert_eq!(
            f(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false
            )
            .unwrap(),
            (Framing::Empty, true)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\n\r\n", false).unwrap(),
            (Framing::Eof, false)
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
                false
            )
            .unwrap(),
            (Framing::Length(5), false)
        );
        assert_eq!(
            f("HTTP/1.0 200 OK\r\ncontent-length: 5\r\n\r\n", false).unwrap(),
            (Framing::Length(5), false)
        );
        assert_eq!(
            f(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                false
            )
            .unwrap(),
            (Framing::Chunked(Chunk::Size), true)
        );
        // Both: the chunks win, the length goes, the connection is not reused.
        let (resp, framing, keep) = head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((framing, keep), (Framing::Chunked(Chunk::Size), false));
        assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
        assert_eq!(
            f("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false).unwrap(),
            (Framing::Eof, false)
        );
        assert_eq!(
            f(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
                false
            )
            .unwrap(),
            (Framing::Empty, false)
        );
    }

    impl Io for tokio::io::DuplexStream {}

    /// Where a test's connection goes back: a channel the test reads.
    struct ToTest(std::sync::mpsc::Sender<RawConn<tokio::io::DuplexStream>>);

    impl Back<tokio::io::DuplexStream> for ToTest {
        fn checkin(self, conn: RawConn<tokio::io::DuplexStream>) {
            let _ = self.0.send(conn);
        }
    }

    /// Sends `method` on a fresh connection whose origin answers `answer` (then keeps
    /// the pipe open); returns the response, its body's frames (or error) and whether
    /// the connection came back, with what the origin read.
    async fn exchange(
        method: Method,
        body: &'static [u8],
        answer: &'static [u8],
    ) -> (
        Result<(Response<()>, Vec<http_body::Frame<Bytes>>), String>,
        bool,
        Vec<u8>,
    ) {
        use http_body_util::BodyExt;
        use tokio::io::AsyncReadExt;
        let (client, mut origin) = tokio::io::duplex(1 << 20);
        let mut conn = RawConn::new(client);
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("a.example"));
        conn.send(&method, "/x?y", &headers, &Bytes::from_static(body))
            .await
            .unwrap();
        origin.write_all(answer).await.unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let result = async {
            let (resp, framing, keep) = conn
                .read_head(method == Method::HEAD)
                .await
                .map_err(|e| e.to_string())?;
            let mut body = conn.body(framing, keep, ToTest(tx));
            let mut frames = Vec::new();
            while let Some(f) = body.frame().await {
                frames.push(f.map_err(|e| e.to_string())?);
            }
            Ok((resp, frames))
        };
        // A body that never ends fails the test instead of hanging it.
        let result = tokio::time::timeout(TEST_WAIT, result)
            .await
            .expect("the exchange did not end");
        let back = rx.try_recv().is_ok();
        let mut seen = vec![0u8; 4096];
        let n = tokio::time::timeout(TEST_WAIT, origin.read(&mut seen))
            .await
            .expect("nothing reached the origin")
            .unwrap();
        seen.truncate(n);
        (result, back, seen)
    }

    fn data(frames: &[http_body::Frame<Bytes>]) -> Vec<u8> {
        frames
            .iter()
            .filter_map(|f| f.data_ref())
            .flat_map(|d| d.to_vec())
            .collect()
    }

    #[tokio::test]
    async fn a_request_goes_out_in_one_piece_and_a_sized_response_returns_the_connection() {
        let (r, back, seen) = exchange(
            Method::POST,
            b"hello",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-a: 1\r\n\r\nabc",
        )
        .await;
        let (resp, frames) = r.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-a"], "1");
        assert_eq!(data(&frames), b"abc");
        assert!(back, "kept for the next request");
        assert_eq!(
            seen,
            b"POST /x?y HTTP/1.1\r\nhost: a.example\r\ncontent-length: 5\r\n\r\nhello"
        );
        // A GET without a body declares no length.
        let (_, _, seen) = exchange(Method::GET, b"", b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(seen, b"GET /x?y HTTP/1.1\r\nhost: a.example\r\n\r\n");
    }

    #[tokio::test]
    async fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (r, back, _) = exchange(
            Method::GET,
            b"",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 9\r\n\r\n",
        )
        .await;
        let (_, frames) = r.unwrap();
        assert_eq!(data(&frames), b"abcde");
        let trailers = frames.iter().find_map(|f| f.trailers_ref()).unwrap();
        assert_eq!(trailers["x-sum"], "9");
        assert!(back);
        // A reader that stops at the trailers (they end the body) gives the connection
        // back all the same.
        {
            use http_body_util::BodyExt;
            let (client, mut origin) = tokio::io::duplex(4096);
            let mut conn = RawConn::new(client);
            conn.send(&Method::GET, "/", &HeaderMap::new(), &Bytes::new())
                .await
                .unwrap();
            origin
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n0\r\nx: 1\r\n\r\n")
                .await
                .unwrap();
            let (_, framing, keep) = conn.read_head(false).await.unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let mut body = conn.body(framing, keep, ToTest(tx));
            let read = async {
                while let Some(f) = body.frame().await {
                    if f.unwrap().is_trailers() {
                        break;
                    }
                }
            };
            tokio::time::timeout(TEST_WAIT, read)
                .await
                .expect("the body did not end at its trailers");
            assert!(rx.try_recv().is_ok(), "returned at the trailers");
        }
        let (r, back, _) = exchange(
            Method::GET,
            b"",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await;
        assert!(data(&r.unwrap().1).is_empty());
        assert!(back);
    }

    #[tokio::test]
    async fn malformed_or_oversized_responses_fail_and_close() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcX\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            let (r, back, _) = exchange(Method::GET, b"", answer).await;
            assert!(r.is_err(), "{}", String::from_utf8_lossy(answer));
            assert!(!back);
        }
        // A size line that never ends, a head beyond the limit, headers beyond the count.
        let long: &'static [u8] = Box::leak(
            [
                &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"[..],
                &[b'1'; MAX_LINE + 10],
            ]
            .concat()
            .into_boxed_slice(),
        );
        assert!(exchange(Method::GET, b"", long).await.0.is_err());
        let big: &'static [u8] = Box::leak(
            [&b"HTTP/1.1 200 OK\r\nx: "[..], &[b'a'; MAX_HEAD + 10]]
                .concat()
                .into_boxed_slice(),
        );
        assert!(exchange(Method::GET, b"", big)
            .await
            .0
            .unwrap_err()
            .contains("too large"));
        let many: &'static [u8] = Box::leak(
            [
                &b"HTTP/1.1 200 OK\r\n"[..],
                &b"x: 1\r\n".repeat(MAX_HEADERS + 1),
                b"\r\n",
            ]
            .concat()
            .into_boxed_slice(),
        );
        assert!(exchange(Method::GET, b"", many)
            .await
            .0
            .unwrap_err()
            .contains("too many"));
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_head_has_no_body() {
        let (r, back, _) = exchange(
            Method::PUT,
            b"x",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
        )
        .await;
        let (resp, frames) = r.unwrap();
        assert_eq!(resp.status(), 201);
        assert_eq!(data(&frames), b"ok");
        assert!(back);
        let (r, back, _) = exchange(
            Method::HEAD,
            b"",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
        )
        .await;
        let (resp, frames) = r.unwrap();
        assert_eq!(resp.headers()[header::CONTENT_LENGTH], "1000");
        assert!(frames.is_empty());
        assert!(back);
    }

    #[tokio::test]
    async fn a_body_until_close_is_read_whole_and_the_connection_not_kept() {
        let (client, mut origin) = tokio::io::duplex(1 << 16);
        let mut conn = RawConn::new(client);
        conn.send(&Method::GET, "/", &HeaderMap::new(), &Bytes::new())
            .await
            .unwrap();
        origin
            .write_all(b"HTTP/1.0 200 OK\r\n\r\nall of it")
            .await
            .unwrap();
        drop(origin);
        let (resp, framing, keep) = conn.read_head(false).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_10);
        let (tx, rx) = std::sync::mpsc::channel();
        use http_body_util::BodyExt;
        let got = conn
            .body(framing, keep, ToTest(tx))
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&got[..], b"all of it");
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_closed_or_chattering_idle_connection_is_not_open() {
        let (client, origin) = tokio::io::duplex(64);
        let mut conn = RawConn::new(client);
        assert!(conn.is_open());
        drop(origin);
        assert!(!conn.is_open());
        let (client, mut origin) = tokio::io::duplex(64);
        let mut conn = RawConn::new(client);
        origin.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert!(!conn.is_open());
        // Closed before answering anything: the caller may retry elsewhere.
        let (client, origin) = tokio::io::duplex(64);
        let mut conn = RawConn::new(client);
        drop(origin);
        assert!(matches!(
            conn.read_head(false).await,
            Err(OriginError::Closed { before_any: true })
        ));
    }

    #[tokio::test]
    async fn a_large_body_is_read_in_growing_reads() {
        use http_body_util::BodyExt;
        const LEN: usize = 4 << 20;
        let (client, mut origin) = tokio::io::duplex(LEN + 1024);
        let mut conn = RawConn::new(client);
        conn.send(&Method::GET, "/", &HeaderMap::new(), &Bytes::new())
            .await
            .unwrap();
        origin
            .write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {LEN}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        origin.write_all(&vec![7u8; LEN]).await.unwrap();
        let (_, framing, keep) = conn.read_head(false).await.unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let mut body = conn.body(framing, keep, ToTest(tx));
        let (mut frames, mut total, mut largest) = (0, 0, 0);
        while let Some(f) = body.frame().await {
            let n = f.unwrap().into_data().unwrap().len();
            frames += 1;
            total += n;
            largest = largest.max(n);
        }
        assert_eq!(total, LEN);
        assert!(largest <= MAX_READ, "{largest}");
        assert!(frames < LEN / READ_SIZE / 4, "{frames} frames");
        assert!(rx.try_recv().is_ok());
    }
}
