//! The visitor front: HTTP/1.1 and HTTP/2 (ALPN over TLS, or prior knowledge in the
//! clear) on the edge's public listeners; TLS certificates chosen by SNI.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::proxy::{self, Body, Visitor};
use super::EdgeState;

/// Picks the certificate whose names cover the SNI name, else the edge's own, from the
/// certificates in force (a reload replaces them for the handshakes after it).
#[derive(Debug)]
pub struct SniResolver {
    certs: tokio::sync::watch::Receiver<Option<Arc<super::Certs>>>,
    /// Whether `certs:` are offered at all (the tunnel listener presents the edge's own).
    by_name: bool,
}

impl SniResolver {
    pub fn new(state: &EdgeState, by_name: bool) -> SniResolver {
        SniResolver {
            certs: state.certs.subscribe(),
            by_name,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.borrow().clone()?;
        if !self.by_name {
            return Some(certs.default.clone());
        }
        let Some(name) = hello.server_name() else {
            return Some(certs.default.clone());
        };
        let Ok(name) = rustls::pki_types::ServerName::try_from(name.to_string()) else {
            return Some(certs.default.clone());
        };
        for ck in &certs.others {
            let Some(leaf) = ck.cert.first() else {
                continue;
            };
            if let Ok(ee) = webpki::EndEntityCert::try_from(leaf) {
                if ee.verify_is_valid_for_subject_name(&name).is_ok() {
                    return Some(ck.clone());
                }
            }
        }
        Some(certs.default.clone())
    }
}

/// Accepts visitors on `listener` until the task is dropped; `tls` makes it HTTPS.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<EdgeState>,
) {
    let limit = Arc::new(Semaphore::new(
        state.shield.limits.max_conns.min(Semaphore::MAX_PERMITS),
    ));
    loop {
        let permit = match limit.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: pause instead of spinning.
                log::warn!("accept on {:?} failed: {e}", listener.local_addr().ok());
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match state.shield.admit(peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                state
                    .shield
                    .log_rejection(format_args!("connection from {peer}: {why}"));
                continue; // dropping the socket closes it
            }
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = (permit, slot);
            match tls {
                None => serve_conn(TokioIo::new(tcp), peer, "http", state).await,
                Some(acceptor) => {
                    let handshake = state.shield.limits.tls_handshake_timeout;
                    match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_conn(TokioIo::new(stream), peer, "https", state).await
                        }
                        Ok(Err(e)) => log::debug!("TLS handshake from {peer} failed: {e}"),
                        Err(_) => {
                            state
                                .shield
                                .counters
                                .tls_timeout
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            log::debug!("TLS handshake from {peer} timed out");
                        }
                    }
                }
            }
        });
    }
}

async fn serve_conn<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    scheme: &'static str,
    state: Arc<EdgeState>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = state.shield.limits.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(req, peer, scheme, &state).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_head_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_head_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    if let Err(e) = builder.serve_connection_with_upgrades(io, service).await {
        log::debug!("visitor {peer}: {e}");
    }
}

async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    scheme: &'static str,
    state: &EdgeState,
) -> Response<Body> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(String::from)
        });
    let Some(authority) = authority else {
        return proxy::text(StatusCode::BAD_REQUEST, "the request names no host");
    };
    let host = host_of(&authority);
    if host.is_empty()
        || host.len() > 253
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b))
    {
        state
            .shield
            .counters
            .bad_request
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return proxy::text(StatusCode::BAD_REQUEST, "the request names no valid host");
    }
    let req = match super::access::gate(req, &host, peer, scheme, state).await {
        Ok(req) => req,
        Err(resp) => return resp,
    };
    let shield = &state.shield;
    let xff = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let client_ip = shield.client_ip(peer.ip(), xff);
    let forwarded_for = forwarded_for(peer.ip(), xff.filter(|_| shield.is_trusted(peer.ip())));
    let visitor = Visitor {
        peer,
        client_ip,
        forwarded_for,
        scheme,
    };
    proxy::handle(
        &state.registry,
        &state.pool,
        shield,
        state.origin_timeout,
        req,
        &host,
        &authority,
        &visitor,
    )
    .await
}

/// The `X-Forwarded-For` value to send on: the peer's address after a trusted proxy's
/// `chain`; anyone else's chain is replaced.
#[doc(hidden)] // pub for the fuzz target (fuzz/edge/fuzz_targets/forwarded_for.rs)
pub fn forwarded_for(peer: IpAddr, chain: Option<&str>) -> HeaderValue {
    use std::fmt::Write;
    // An address fits in 45 characters: formatted without a heap allocation.
    let mut ip = heapless::String::<48>::new();
    let _ = write!(ip, "{peer}");
    chain
        .and_then(|chain| HeaderValue::from_str(&format!("{chain}, {ip}")).ok())
        .or_else(|| HeaderValue::from_str(&ip).ok())
        .unwrap_or_else(|| HeaderValue::from_static("unknown"))
}

/// The lowercase host of an authority, without port or IPv6 brackets (borrowed when
/// already lowercase, as nearly every client sends it).
fn host_of(authority: &str) -> Cow<'_, str> {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let host = host.trim_end_matches('.');
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

#[cfg(test)]
mod tests {
    use super::{forwarded_for, host_of};

    #[test]
    fn hosts() {
        assert_eq!(host_of("Dev42.Example.com:8080"), "dev42.example.com");
        assert_eq!(host_of("dev42.example.com."), "dev42.example.com");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("x"), "x");
    }

    #[test]
    fn forwarded_for_appends_the_peer_to_a_trusted_chain() {
        let peer = "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(
            forwarded_for(peer, None),
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(
            forwarded_for(peer, Some("198.51.100.4")),
            "198.51.100.4, 2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        let v4 = "192.0.2.1".parse().unwrap();
        assert_eq!(forwarded_for(v4, Some("bad\u{7f}")), "192.0.2.1");
    }
}
