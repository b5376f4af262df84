//! Serving one tunnel stream: check the rule the edge named, dial the service, pipe bytes.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::runtime::{Runtime, RuntimeRule};
use crate::config::Service;
use crate::transport::TunnelStream;
use crate::wire::{self, StreamError, StreamHeader, StreamKind, StreamReply};

/// How long the edge has to send the stream header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Copy buffer per direction.
const COPY_BUF: usize = 16 * 1024;

/// A connected origin, whatever its kind.
pub trait OriginIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> OriginIo for T {}

/// Serves one stream to its end. Errors are logged here, once.
pub async fn serve_stream(mut stream: TunnelStream, lookup: impl Fn(u32) -> Option<Arc<Runtime>>) {
    let header: StreamHeader =
        match tokio::time::timeout(HEADER_TIMEOUT, wire::read_stream_frame(&mut stream)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                log::debug!("stream dropped before its header: {e}");
                stream.abort();
                return;
            }
            Err(_) => {
                log::debug!("stream header not received within {HEADER_TIMEOUT:?}");
                stream.abort();
                return;
            }
        };
    let rule = lookup(header.rules_generation).and_then(|rt| {
        rt.rules
            .get(usize::from(header.rule))
            .cloned()
            .map(|r| (rt, r))
    });
    let origin = match rule {
        None => Err((
            StreamError::UnknownRule,
            format!(
                "no rule {} in rule table {}",
                header.rule, header.rules_generation
            ),
        )),
        Some((_, rule)) => match check(&rule, &header) {
            Err(msg) => Err((StreamError::UnknownRule, msg)),
            Ok(()) => dial(&rule).await,
        },
    };
    let mut origin = match origin {
        Ok(o) => o,
        Err((error, message)) => {
            log::warn!("stream for {} refused: {message}", header.hostname);
            let reply = StreamReply::Err {
                error,
                message: wire::bounded_reason(message),
            };
            if let Ok(frame) = wire::encode_stream_frame(&reply) {
                let _ = stream.write_all(&frame).await;
                let _ = stream.shutdown().await;
            }
            return;
        }
    };
    // The reply is a fixed small frame; encoding it cannot fail.
    let Ok(ok) = wire::encode_stream_frame(&StreamReply::Ok) else {
        return;
    };
    if stream.write_all(&ok).await.is_err() {
        return;
    }
    match tokio::io::copy_bidirectional_with_sizes(&mut stream, &mut origin, COPY_BUF, COPY_BUF)
        .await
    {
        Ok((up, down)) => log::debug!(
            "stream for {} done: {up} B up, {down} B down",
            header.hostname
        ),
        Err(e) => {
            log::debug!("stream for {} ended: {e}", header.hostname);
            stream.abort();
        }
    }
}

/// Does the stream header fit the rule it names?
fn check(rule: &RuntimeRule, header: &StreamHeader) -> Result<(), String> {
    if let Some(pattern) = &rule.hostname {
        if !hostname_matches(pattern, &header.hostname) {
            return Err(format!(
                "hostname {} does not match rule {pattern}",
                header.hostname
            ));
        }
    }
    match (&rule.service, header.kind) {
        (Service::HttpStatus(_), _) => Err("status rules are answered by the edge".into()),
        (Service::Stream { .. }, StreamKind::Http) => {
            Err("rule is a raw stream service, not HTTP".into())
        }
        _ => Ok(()),
    }
}

/// Exact match, or `*.suffix` matching any name with at least one more label.
pub fn hostname_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .and_then(|p| p.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty()),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

async fn dial(rule: &RuntimeRule) -> Result<Box<dyn OriginIo>, (StreamError, String)> {
    let timeout = rule.connect_timeout;
    let fut = async {
        match &rule.service {
            Service::Http { host, port, .. } | Service::Stream { host, port, .. } => {
                let tcp = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| format!("cannot reach {host}:{port}: {e}"))?;
                let _ = tcp.set_nodelay(true);
                match &rule.tls {
                    Some(tls) => Ok(Box::new(tls.handshake(tcp).await?) as Box<dyn OriginIo>),
                    None => Ok(Box::new(tcp) as Box<dyn OriginIo>),
                }
            }
            Service::Unix { path, .. } => {
                let unix = UnixStream::connect(path.as_str())
                    .await
                    .map_err(|e| format!("cannot reach unix:{path}: {e}"))?;
                match &rule.tls {
                    Some(tls) => Ok(Box::new(tls.handshake(unix).await?) as Box<dyn OriginIo>),
                    None => Ok(Box::new(unix) as Box<dyn OriginIo>),
                }
            }
            Service::HttpStatus(_) => Err("status rules are answered by the edge".to_string()),
        }
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(io)) => Ok(io),
        Ok(Err(msg)) => Err((StreamError::DialFailed, msg)),
        Err(_) => Err((
            StreamError::DialTimeout,
            format!("origin did not answer within {timeout:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_need_one_more_label() {
        assert!(hostname_matches(
            "*.dev42.example.com",
            "api.dev42.example.com"
        ));
        assert!(hostname_matches(
            "*.dev42.example.com",
            "a.b.dev42.example.com"
        ));
        assert!(!hostname_matches(
            "*.dev42.example.com",
            "dev42.example.com"
        ));
        assert!(!hostname_matches(
            "*.dev42.example.com",
            "xdev42.example.com"
        ));
        assert!(!hostname_matches(
            "*.dev42.example.com",
            ".dev42.example.com"
        ));
        assert!(hostname_matches("dev42.example.com", "DEV42.example.com"));
        assert!(!hostname_matches(
            "dev42.example.com",
            "api.dev42.example.com"
        ));
    }
}
