//! The access client's WebSocket handshake (`src/access/ws.rs` `client_handshake`, as
//! `src/access/client.rs` runs it for `--transport https`) against an edge, or whatever
//! sits in its place, that answers with the fuzzer's bytes:
//!
//! - the response head is read within its bound and parsed, a refusal's status and body
//!   turn into an error, an answer that is not an upgrade is refused, and none of it
//!   panics;
//! - the bytes that came after the head in the same reads are served first by the
//!   [`WsStream`] the handshake returns, then the rest of the connection, read to its
//!   end as the access client reads the edge's frames; the client then writes and
//!   closes its side;
//! - the request the client writes is one head whose lines are the ones it meant to
//!   write, whatever credential (here from the input) it carries: a line break in a
//!   header value is refused before anything is sent.
//!
//! Input: byte 0 cuts the edge's answer into reads of that many bytes (0: as much as
//! the reader asks for); byte 1 is the length of the credential that follows; the rest
//! is the edge's answer. Every `{accept}` in the answer is replaced by the right
//! `Sec-WebSocket-Accept` for the key the client sent, so the fuzzer reaches the
//! upgrade and what follows it.
#![no_main]

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use mailslot::access::ws::{accept_key, client_handshake, WsError, MAX_RESPONSE_HEAD};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Runs a future whose I/O is all in memory.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("in-memory I/O waited"),
    }
}

const ACCEPT: &[u8] = b"{accept}";

/// The edge: records what the client writes, answers with the script.
struct Edge<'a> {
    script: &'a [u8],
    /// The answer, once the request is known (`{accept}` filled in).
    answer: Option<Vec<u8>>,
    pos: usize,
    cut: usize,
    written: Rc<RefCell<Vec<u8>>>,
}

impl Edge<'_> {
    fn answer(&mut self) -> &[u8] {
        if self.answer.is_none() {
            let written = self.written.borrow();
            let request = String::from_utf8_lossy(&written);
            let key = request
                .split("\r\n")
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap_or("");
            let accept = accept_key(key);
            let mut out = Vec::with_capacity(self.script.len() + 32);
            let mut rest = self.script;
            while let Some(i) = rest.windows(ACCEPT.len()).position(|w| w == ACCEPT) {
                out.extend_from_slice(&rest[..i]);
                out.extend_from_slice(accept.as_bytes());
                rest = &rest[i + ACCEPT.len()..];
            }
            out.extend_from_slice(rest);
            self.answer = Some(out);
        }
        self.answer.as_deref().unwrap_or_default()
    }
}

impl AsyncRead for Edge<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let cut = me.cut;
        let pos = me.pos;
        let answer = me.answer();
        let n = (answer.len() - pos).min(buf.remaining()).min(cut);
        buf.put_slice(&answer[pos..pos + n]);
        me.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Edge<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.written.borrow_mut().extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The request head holds the lines the client meant to write, and nothing else.
fn check_request(written: &[u8], credential: &str) {
    let text = std::str::from_utf8(written).expect("the request is text");
    let head = text
        .strip_suffix("\r\n\r\n")
        .expect("one head, ending in an empty line");
    let lines: Vec<&str> = head.split("\r\n").collect();
    assert_eq!(lines[0], "GET / HTTP/1.1");
    assert!(lines.iter().all(|l| !l.contains(['\r', '\n'])), "{lines:?}");
    assert!(lines.contains(&"Host: db.example.com"));
    assert!(lines.contains(&format!("Authorization: Bearer {credential}").as_str()));
    // Request line, Host, Upgrade, Connection, Key, Version, Protocol, User-Agent, and ours.
    assert_eq!(lines.len(), 9, "{lines:?}");
}

fuzz_target!(|input: &[u8]| {
    let [cut, cred_len, rest @ ..] = input else {
        return;
    };
    let (credential, script) = rest.split_at(rest.len().min(usize::from(*cred_len)));
    let credential = String::from_utf8_lossy(credential).into_owned();
    let bearer = format!("Bearer {credential}");
    let written = Rc::new(RefCell::new(Vec::new()));
    let edge = Edge {
        script,
        answer: None,
        pos: 0,
        cut: if *cut == 0 {
            usize::MAX
        } else {
            usize::from(*cut)
        },
        written: written.clone(),
    };
    let result = now(client_handshake(
        edge,
        "db.example.com",
        "/",
        "mailslot-access",
        &[("Authorization", bearer.as_str())],
    ));
    let request = written.borrow().clone();
    if credential.contains(['\r', '\n']) {
        assert!(matches!(result, Err(WsError::Protocol(_))));
        assert!(request.is_empty(), "a header with a line break was sent");
        return;
    }
    check_request(&request, &credential);
    match result {
        Ok(mut ws) => {
            let mut back = Vec::new();
            let _ = now(ws.read_to_end(&mut back));
            assert!(back.len() <= script.len(), "more bytes than the edge sent");
            now(ws.write_all(b"ssh")).expect("writes into memory succeed");
            now(ws.shutdown()).expect("a close frame is written");
        }
        Err(WsError::Status { status, message }) => {
            assert_ne!(status, 101);
            assert!(message.len() <= MAX_RESPONSE_HEAD, "{}", message.len());
        }
        Err(WsError::Protocol(_) | WsError::Io(_)) => {}
    }
});
