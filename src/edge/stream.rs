//! Tunnel streams to an origin: opens a data stream on a tunnel connection, sends the
//! stream header naming the rule, and waits (bounded) for the connector's reply. Used
//! for pooled HTTP (`pool`) and raw access streams (`access`) alike.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::registry::Conn;
use crate::transport::TunnelStream;
use crate::wire::{self, StreamError, StreamHeader, StreamKind, StreamReply};

/// Time to open a tunnel stream and hear the connector's reply.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a tunnel stream could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// The tunnel connection is gone or would not open a stream.
    #[error("tunnel connection unavailable: {0}")]
    Tunnel(String),
    /// The connector answered that it could not reach the origin.
    #[error("{message}")]
    Device { error: StreamError, message: String },
}

/// Opens a data stream on `conn` for `rule` of rule table `rules_generation`, sends the
/// stream header and waits (bounded) for the connector's reply. On `Ok` the stream is
/// a byte pipe to the origin.
pub(crate) async fn open_tunnel_stream(
    conn: &Conn,
    rules_generation: u32,
    rule: u16,
    kind: StreamKind,
    hostname: &str,
) -> Result<TunnelStream, DialError> {
    let header = StreamHeader {
        rules_generation,
        rule,
        kind,
        hostname: hostname.to_string(),
    };
    let dial = async {
        let mut stream = conn
            .session
            .open_stream()
            .await
            .map_err(|e| DialError::Tunnel(e.to_string()))?;
        conn.streams.fetch_add(1, Ordering::Relaxed);
        let frame =
            wire::encode_stream_frame(&header).map_err(|e| DialError::Tunnel(e.to_string()))?;
        stream
            .write_all(&frame)
            .await
            .map_err(|e| DialError::Tunnel(e.to_string()))?;
        match wire::read_stream_frame::<_, StreamReply>(&mut stream).await {
            Ok(StreamReply::Ok) => Ok(stream),
            Ok(StreamReply::Err { error, message }) => Err(DialError::Device { error, message }),
            Err(e) => Err(DialError::Tunnel(e.to_string())),
        }
    };
    match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
        Ok(r) => r,
        Err(_) => Err(DialError::Tunnel(format!(
            "no answer from the connector within {DIAL_TIMEOUT:?}"
        ))),
    }
}
