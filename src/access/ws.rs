//! WebSocket (RFC 6455), just what access over HTTPS needs, for both ends: the client's
//! upgrade request and a bounded parse of the edge's answer, the accept key, and binary
//! framing as a byte stream ([`WsStream`]). Written by hand so the device build carries
//! no HTTP library.
//!
//! A frame, as read and written here:
//!
//! ```text
//!  0      1      2             2+ext          2+ext+4
//!  +------+------+-------------+--------------+---------------------+
//!  |F|RSV|op|M|len7| ext len   | masking key  | payload (len bytes) |
//!  +------+------+-------------+--------------+---------------------+
//!   len7 126: ext = u16 BE; 127: ext = u64 BE (top bit 0); else ext absent
//!   M: set on every client frame (payload XOR key), never on server frames
//! ```
//!
//! Payloads are streamed straight into the reader's buffer, so a peer's frame length
//! never makes us allocate; control payloads are at most 125 bytes and discarded.
//! A close frame is a half-close: the reader sees end of stream; shutting the writer
//! down sends one. Shutting down once both directions are done also closes the
//! transport (TLS close_notify), so call `shutdown` again at the end.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The GUID RFC 6455 appends to the key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest response head the client reads.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;
/// Largest error body the client reads from a refusal.
const MAX_ERROR_BODY: usize = 4 * 1024;
/// Largest payload of one frame we write.
pub(crate) const MAX_OUT_FRAME: usize = 16 * 1024;

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim().as_bytes());
    ctx.update(GUID.as_bytes());
    crate::config::pem::base64_encode(ctx.finish().as_ref())
}

/// Which end of the connection we are: clients mask, servers do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

struct Frame {
    opcode: u8,
    left: u64,
    mask: Option<[u8; 4]>,
    mask_pos: usize,
}

/// A WebSocket connection as a plain byte stream (binary frames).
pub struct WsStream<S> {
    io: S,
    role: Role,
    /// Bytes read past the handshake, served before `io`.
    prefix: Vec<u8>,
    prefix_pos: usize,
    hdr: [u8; 14],
    hdr_len: usize,
    frame: Option<Frame>,
    read_done: bool,
    out: Vec<u8>,
    out_pos: usize,
    close_sent: bool,
    rng: u64,
}

impl<S> WsStream<S> {
    /// Wraps a connection whose handshake is done; `prefix` holds bytes already read
    /// past it.
    pub fn new(io: S, role: Role, prefix: Vec<u8>) -> WsStream<S> {
        let seed: [u8; 8] = super::random_bytes();
        WsStream {
            io,
            role,
            prefix,
            prefix_pos: 0,
            hdr: [0; 14],
            hdr_len: 0,
            frame: None,
            read_done: false,
            out: Vec::new(),
            out_pos: 0,
            close_sent: false,
            rng: u64::from_le_bytes(seed) | 1,
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift64*, seeded from the system RNG: masks only need to be unpredictable
        // to the page's script (RFC 6455 §10.3), which does not exist here.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32)
            .to_le_bytes()
            .split_first_chunk::<4>()
            .map_or([0x5a; 4], |(m, _)| *m)
    }

    fn encode(&mut self, opcode: u8, payload: &[u8]) {
        self.out.clear();
        self.out_pos = 0;
        self.out.push(0x80 | opcode);
        let mask_bit = if self.role == Role::Client { 0x80 } else { 0 };
        let len = payload.len();
        if len < 126 {
            self.out.push(mask_bit | len as u8);
        } else if len <= usize::from(u16::MAX) {
            self.out.push(mask_bit | 126);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(mask_bit | 127);
            self.out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if self.role == Role::Client {
            let mask = self.next_mask();
            self.out.extend_from_slice(&mask);
            self.out
                .extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        } else {
            self.out.extend_from_slice(payload);
        }
    }
}

/// Header bytes needed, given what we have of it (at least 2 bytes known).
fn header_len(hdr: &[u8]) -> usize {
    let [_, b1, ..] = *hdr else {
        return 2;
    };
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("websocket: {msg}"))
}

fn parse_header(hdr: &[u8], role: Role) -> io::Result<Frame> {
    let short = || bad("header cut short");
    let [b0, b1, ref ext @ ..] = *hdr else {
        return Err(short());
    };
    if b0 & 0x70 != 0 {
        return Err(bad("reserved bits set"));
    }
    let opcode = b0 & 0x0f;
    if !matches!(
        opcode,
        OP_CONT | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(bad("unknown opcode"));
    }
    let masked = b1 & 0x80 != 0;
    match role {
        Role::Server if !masked => return Err(bad("client frame not masked")),
        Role::Client if masked => return Err(bad("server frame masked")),
        _ => {}
    }
    let (left, rest) = match (b1 & 0x7f, ext) {
        (126, &[a, b, ref rest @ ..]) => (u64::from(u16::from_be_bytes([a, b])), rest),
        (127, &[a, b, c, d, e, f, g, h, ref rest @ ..]) => {
            (u64::from_be_bytes([a, b, c, d, e, f, g, h]), rest)
        }
        (126 | 127, _) => return Err(short()),
        (n, rest) => (u64::from(n), rest),
    };
    if left >> 63 != 0 {
        return Err(bad("frame length out of range"));
    }
    if opcode >= OP_CLOSE && (b0 & 0x80 == 0 || left > 125) {
        return Err(bad("control frame fragmented or too long"));
    }
    let mask = match (masked, rest) {
        (false, _) => None,
        (true, &[a, b, c, d, ..]) => Some([a, b, c, d]),
        (true, _) => return Err(short()),
    };
    Ok(Frame {
        opcode,
        left,
        mask,
        mask_pos: 0,
    })
}

/// Reads from the prefix first, then from `io`.
fn poll_inner<S: AsyncRead + Unpin>(
    io: &mut S,
    prefix: &mut Vec<u8>,
    prefix_pos: &mut usize,
    cx: &mut Context<'_>,
    dst: &mut [u8],
) -> Poll<io::Result<usize>> {
    if let Some(rest) = prefix.get(*prefix_pos..).filter(|rest| !rest.is_empty()) {
        let n = dst.len().min(rest.len());
        if let (Some(to), Some(from)) = (dst.get_mut(..n), rest.get(..n)) {
            to.copy_from_slice(from);
        }
        *prefix_pos += n;
        if *prefix_pos == prefix.len() {
            *prefix = Vec::new();
            *prefix_pos = 0;
        }
        return Poll::Ready(Ok(n));
    }
    let mut rb = ReadBuf::new(dst);
    ready!(Pin::new(io).poll_read(cx, &mut rb))?;
    Poll::Ready(Ok(rb.filled().len()))
}

impl<S: AsyncRead + Unpin> AsyncRead for WsStream<S> {
    // Bounds held: `want <= buf.remaining()`; a control frame's `left` is at most 125
    // (`parse_header`); `hdr_len <= header_len(..) <= 14`, the header buffer's length.
    #[allow(clippy::indexing_slicing)]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if me.read_done {
                return Poll::Ready(Ok(()));
            }
            let WsStream {
                io,
                prefix,
                prefix_pos,
                frame,
                hdr,
                hdr_len,
                role,
                read_done,
                ..
            } = me;
            match frame {
                Some(f) if f.left == 0 => {
                    if f.opcode == OP_CLOSE {
                        *read_done = true;
                    }
                    *frame = None;
                }
                Some(f) => {
                    let data = f.opcode < OP_CLOSE;
                    let mut scratch = [0u8; 125];
                    let dst: &mut [u8] = if data {
                        if buf.remaining() == 0 {
                            return Poll::Ready(Ok(()));
                        }
                        let want = (buf.remaining() as u64).min(f.left) as usize;
                        &mut buf.initialize_unfilled()[..want]
                    } else {
                        &mut scratch[..f.left as usize]
                    };
                    let n = ready!(poll_inner(io, prefix, prefix_pos, cx, dst))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    if let Some(mut mask) = f.mask {
                        mask.rotate_left(f.mask_pos % 4);
                        for (b, m) in dst.iter_mut().take(n).zip(mask.iter().cycle()) {
                            *b ^= m;
                        }
                        f.mask_pos += n;
                    }
                    f.left -= n as u64;
                    if data {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                }
                None => {
                    let need = header_len(&hdr[..*hdr_len]);
                    if *hdr_len < need {
                        let n = ready!(poll_inner(
                            io,
                            prefix,
                            prefix_pos,
                            cx,
                            &mut hdr[*hdr_len..need]
                        ))?;
                        if n == 0 {
                            // A peer that vanished between frames ends the stream; one
                            // that vanished inside a header broke it.
                            return Poll::Ready(if *hdr_len == 0 {
                                *read_done = true;
                                Ok(())
                            } else {
                                Err(io::ErrorKind::UnexpectedEof.into())
                            });
                        }
                        *hdr_len += n;
                        continue;
                    }
                    // `need` may grow once the length byte is known.
                    if header_len(&hdr[..*hdr_len]) > *hdr_len {
                        continue;
                    }
                    *frame = Some(parse_header(&hdr[..*hdr_len], *role)?);
                    *hdr_len = 0;
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> WsStream<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let pending = self.out.get(self.out_pos..).unwrap_or_default();
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        if me.close_sent {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let frame = buf.get(..MAX_OUT_FRAME).unwrap_or(buf);
        let n = frame.len();
        me.encode(OP_BINARY, frame);
        // The frame is accepted; whatever is left is written on the next call or flush.
        if let Poll::Ready(Err(e)) = me.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        if !me.close_sent {
            me.close_sent = true;
            me.encode(OP_CLOSE, &1000u16.to_be_bytes());
            ready!(me.poll_drain(cx))?;
        }
        if me.read_done {
            // Both directions are done: close the transport cleanly (TLS close_notify).
            Pin::new(&mut me.io).poll_shutdown(cx)
        } else {
            // The transport stays open for the other direction.
            Pin::new(&mut me.io).poll_flush(cx)
        }
    }
}

/// Why the client's upgrade did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The edge answered with another status (a refusal); `message` is its text.
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    /// The answer was not a WebSocket upgrade we can use.
    #[error("bad upgrade response: {0}")]
    Protocol(String),
}

/// Sends the upgrade request for `host` with `headers` (name, value) and reads the
/// answer. The caller bounds the time it may take.
pub async fn client_handshake<S>(
    mut io: S,
    host: &str,
    path: &str,
    protocol: &str,
    headers: &[(&str, &str)],
) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    for (k, v) in headers
        .iter()
        .map(|(k, v)| (*k, *v))
        .chain([("Host", host), ("", path)])
    {
        if k.contains(['\r', '\n', ':']) || v.contains(['\r', '\n']) {
            return Err(WsError::Protocol(format!(
                "header {k:?} holds a line break"
            )));
        }
    }
    let key = crate::config::pem::base64_encode(&super::random_bytes::<16>());
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {protocol}\r\nUser-Agent: mailslot/{}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes()).await?;
    io.flush().await?;

    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(WsError::Protocol(format!(
                "response head longer than {MAX_RESPONSE_HEAD} bytes"
            )));
        }
        let mut chunk = [0u8; 1024];
        let room = (MAX_RESPONSE_HEAD - buf.len()).min(chunk.len());
        let n = io.read(chunk.get_mut(..room).unwrap_or_default()).await?;
        if n == 0 {
            return Err(WsError::Protocol(
                "connection closed before a response".into(),
            ));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    };
    let rest = buf.split_off(head_end + 4);
    let head = String::from_utf8_lossy(buf.get(..head_end).unwrap_or_default()).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|s| s.get(2..5))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| WsError::Protocol(format!("status line {status_line:?}")))?;
    let fields: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if status != 101 {
        let len = field("content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(MAX_ERROR_BODY)
            .min(MAX_ERROR_BODY);
        let mut body = rest;
        body.truncate(len);
        while body.len() < len {
            let mut chunk = [0u8; 1024];
            let room = (len - body.len()).min(chunk.len());
            match io.read(chunk.get_mut(..room).unwrap_or_default()).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            }
        }
        let text = String::from_utf8_lossy(&body);
        let message = match text.split_once("mailslot edge: ") {
            Some((_, m)) => m.trim().to_string(),
            None => text.trim().to_string(),
        };
        let message = crate::wire::bounded_reason(if message.is_empty() {
            status_line.to_string()
        } else {
            message
        });
        return Err(WsError::Status { status, message });
    }
    let upgrade_ok = field("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade_ok || field("sec-websocket-accept") != Some(accept_key(&key).as_str()) {
        return Err(WsError::Protocol(
            "the answer is not a WebSocket upgrade for this request (a proxy in the way?)".into(),
        ));
    }
    Ok(WsStream::new(io, Role::Client, rest))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn both_directions_over_a_tiny_pipe_with_half_close() {
        let (a, b) = tokio::io::duplex(7);
        let mut client = WsStream::new(a, Role::Client, Vec::new());
        let mut server = WsStream::new(b, Role::Server, Vec::new());
        let up: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..70_000u32).map(|i| (i * 13 % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let c = tokio::spawn(async move {
            client.write_all(&up2).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, down2);
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, up);
        server.write_all(&down).await.unwrap();
        server.shutdown().await.unwrap();
        c.await.unwrap();
    }

    #[tokio::test]
    async fn control_frames_are_skipped_and_masks_enforced() {
        // A server-side reader: ping (masked, 2 bytes), then "hi" (masked), then close.
        let m = [1u8, 2, 3, 4];
        let mut bytes = vec![0x89, 0x82, 1, 2, 3, 4, b'x' ^ 1, b'y' ^ 2];
        bytes.extend_from_slice(&[0x82, 0x82, 1, 2, 3, 4, b'h' ^ m[0], b'i' ^ m[1]]);
        bytes.extend_from_slice(&[0x88, 0x80, 9, 9, 9, 9]);
        let mut s = WsStream::new(&bytes[..], Role::Server, Vec::new());
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
        // Unmasked client frame to a server: refused, not a panic.
        let bytes = [0x82u8, 0x02, b'h', b'i'];
        let mut s = WsStream::new(&bytes[..], Role::Server, Vec::new());
        assert!(s.read_to_end(&mut Vec::new()).await.is_err());
        // A control frame claiming 126 bytes, and a 2^63 length: refused.
        for bytes in [
            vec![0x89u8, 126, 0, 126],
            vec![0x82u8, 127, 0x80, 0, 0, 0, 0, 0, 0, 0],
        ] {
            let mut s = WsStream::new(&bytes[..], Role::Client, Vec::new());
            assert!(s.read_to_end(&mut Vec::new()).await.is_err());
        }
    }

    #[tokio::test]
    async fn garbage_never_panics() {
        for seed in 0u32..2000 {
            let bytes: Vec<u8> = (0..24u32)
                .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 40503) >> 13) as u8)
                .collect();
            for role in [Role::Client, Role::Server] {
                let mut s = WsStream::new(&bytes[..], role, Vec::new());
                let _ = s.read_to_end(&mut Vec::new()).await;
            }
        }
    }

    async fn fake_edge(
        response: &'static [u8],
        tail: &'static [u8],
    ) -> Result<WsStream<tokio::io::DuplexStream>, WsError> {
        let (a, mut b) = tokio::io::duplex(64);
        let server = tokio::spawn(async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                b.read_exact(&mut byte).await.unwrap();
                head.push(byte[0]);
            }
            let head = String::from_utf8(head).unwrap();
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap()
                .to_string();
            let text = String::from_utf8_lossy(response).replace("{accept}", &accept_key(&key));
            b.write_all(text.as_bytes()).await.unwrap();
            b.write_all(tail).await.unwrap();
            b
        });
        let r =
            client_handshake(a, "db.example.com", "/", "mailslot-access", &[("X-A", "1")]).await;
        drop(server.await.unwrap());
        r
    }

    #[tokio::test]
    async fn client_handshake_accepts_101_and_reports_refusals() {
        let ok = fake_edge(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n",
            b"\x82\x02hi",
        )
        .await;
        let mut ws = ok.unwrap();
        let mut two = [0u8; 2];
        ws.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"hi");
        let refused = fake_edge(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 42\r\n\r\n401 Unauthorized\n\nmailslot edge: no token\n",
            b"",
        )
        .await;
        match refused {
            Err(WsError::Status {
                status: 401,
                message,
            }) => assert_eq!(message, "no token"),
            other => panic!("{:?}", other.map(|_| ())),
        }
        let wrong = fake_edge(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: nope\r\n\r\n",
            b"",
        )
        .await;
        assert!(matches!(wrong, Err(WsError::Protocol(_))));
    }
}
