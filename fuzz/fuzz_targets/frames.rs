//! Bytes from the network, as the tunnel and access protocols frame them, end in a
//! message or an error, never a panic:
//!
//! - control frames (`ConnectorMsg`, `EdgeMsg`), stream frames (`StreamHeader`,
//!   `StreamReply`) and access frames (`AccessRequest`, `AccessReply`): a message that
//!   decodes encodes again and decodes back to itself;
//! - WebSocket framing read as the edge reads it (client frames, masked) and as the
//!   access client reads it (server frames, unmasked);
//! - and the other way round: what one end of a WebSocket writes, in any cut of writes,
//!   the other end reads back byte for byte.
//!
//! The first input byte picks the case; the rest is the peer's bytes. All I/O is in
//! memory, so every future completes on its first poll.
#![no_main]

use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use mailslot::access::ws::{Role, WsStream};
use mailslot::wire::{self, WireError};
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Runs a future whose I/O is all in memory.
fn now<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("in-memory I/O waited"),
    }
}

#[derive(Clone, Copy)]
enum Framing {
    Control,
    Stream,
    Access,
}

fn decode<M: DeserializeOwned>(framing: Framing, bytes: &[u8]) -> Result<M, WireError> {
    let mut r = bytes;
    now(async {
        match framing {
            Framing::Control => wire::read_control(&mut r).await,
            Framing::Stream => wire::read_stream_frame(&mut r).await,
            Framing::Access => wire::read_access_frame(&mut r).await,
        }
    })
}

fn encode<M: Serialize>(framing: Framing, msg: &M) -> Vec<u8> {
    match framing {
        Framing::Control => {
            let mut out = Vec::new();
            now(wire::write_control(&mut out, msg)).expect("a decoded control message encodes");
            out
        }
        Framing::Stream => wire::encode_stream_frame(msg).expect("a decoded stream frame encodes"),
        Framing::Access => wire::encode_access_frame(msg).expect("a decoded access frame encodes"),
    }
}

/// Decodes `bytes` as one `M`; whatever decodes must survive a round trip.
fn round_trip<M>(framing: Framing, bytes: &[u8])
where
    M: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(msg) = decode::<M>(framing, bytes) {
        let again: M = decode(framing, &encode(framing, &msg)).expect("an encoded frame decodes");
        assert_eq!(again, msg);
    }
}

/// Reads `bytes` as a WebSocket peer's frames until the end, an error or a bound.
fn read_ws(role: Role, bytes: &[u8]) {
    let mut ws = WsStream::new(bytes, role, Vec::new());
    let mut buf = [0u8; 4096];
    for _ in 0..bytes.len() + 2 {
        match now(ws.read(&mut buf)) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
    panic!("a WebSocket read that made no progress did not end");
}

/// Writes `data` through one end in pieces cut by `cuts`, reads it back at the other.
fn ws_both_ways(client_writes: bool, cuts: &[u8], data: &[u8]) {
    let (writer, reader) = if client_writes {
        (Role::Client, Role::Server)
    } else {
        (Role::Server, Role::Client)
    };
    let mut wire_bytes = Vec::new();
    {
        let mut ws = WsStream::new(&mut wire_bytes, writer, Vec::new());
        let mut rest = data;
        let mut cuts = cuts.iter().cycle();
        while !rest.is_empty() {
            let take = usize::from(*cuts.next().unwrap_or(&255)).max(1) * 64;
            let (piece, tail) = rest.split_at(take.min(rest.len()));
            now(ws.write_all(piece)).expect("writes into memory succeed");
            rest = tail;
        }
        now(ws.shutdown()).expect("a close frame is written");
    }
    let mut ws = WsStream::new(&wire_bytes[..], reader, Vec::new());
    let mut back = Vec::new();
    now(ws.read_to_end(&mut back)).expect("frames one end wrote, the other end reads");
    assert_eq!(back, data);
}

fuzz_target!(|input: &[u8]| {
    let Some((&case, bytes)) = input.split_first() else {
        return;
    };
    match case % 9 {
        0 => round_trip::<wire::ConnectorMsg>(Framing::Control, bytes),
        1 => round_trip::<wire::EdgeMsg>(Framing::Control, bytes),
        2 => round_trip::<wire::StreamHeader>(Framing::Stream, bytes),
        3 => round_trip::<wire::StreamReply>(Framing::Stream, bytes),
        4 => round_trip::<wire::AccessRequest>(Framing::Access, bytes),
        5 => round_trip::<wire::AccessReply>(Framing::Access, bytes),
        6 => read_ws(Role::Server, bytes),
        7 => read_ws(Role::Client, bytes),
        _ => {
            let (cuts, data) = bytes.split_at(bytes.len().min(8));
            ws_both_ways(case & 0x10 != 0, cuts, data);
        }
    }
});
