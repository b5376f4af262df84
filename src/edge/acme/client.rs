//! The HTTPS client the ACME protocol runs over: one HTTP/1.1 connection per request on
//! the hyper and rustls the edge already has (instant-acme's own client would bring a
//! second TLS stack, `hyper-rustls` with the platform verifier). It trusts
//! `acme: directory-ca` when set, else the public roots ([`crate::tls::public_roots`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper_util::rt::TokioIo;
use instant_acme::{BodyWrapper, BytesResponse, Error, HttpClient};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Longest an ACME request may take, connection and TLS handshake included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body read (directories, orders and chains are a few KB).
const MAX_BODY: usize = 1 << 20;

/// An HTTPS client for one ACME server.
#[derive(Clone)]
pub(crate) struct Client {
    tls: tokio_rustls::TlsConnector,
}

impl Client {
    /// Trusts the PEM certificates in `ca` (`directory-ca`), or the public roots.
    pub(crate) fn new(ca: Option<&std::path::Path>) -> Result<Client, String> {
        let roots = match ca {
            None => crate::tls::public_roots().map_err(|e| format!("public roots: {e}"))?,
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("acme.directory-ca {}: {e}", path.display()))?;
                if certs.is_empty() {
                    return Err(format!(
                        "acme.directory-ca {}: no certificate in the file",
                        path.display()
                    ));
                }
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("acme.directory-ca {}: {e}", path.display()))?;
                }
                roots
            }
        };
        let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
        })
    }
}

impl HttpClient for Client {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, Error>> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, send(tls, req)).await {
                Ok(r) => r.map_err(|e| Error::Other(e.into())),
                Err(_) => Err(Error::Other(
                    format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()).into(),
                )),
            }
        })
    }
}

/// Sends `req` on a new connection and reads the whole (bounded) response.
async fn send(
    tls: tokio_rustls::TlsConnector,
    mut req: Request<BodyWrapper<Bytes>>,
) -> Result<BytesResponse, String> {
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("https") {
        return Err(format!("{uri}: not an https:// URL"));
    }
    let host = uri.host().ok_or_else(|| format!("{uri}: no host"))?;
    let port = uri.port_u16().unwrap_or(443);
    // An IPv6 literal comes bracketed in the URI.
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let name = ServerName::try_from(bare.clone()).map_err(|e| format!("{uri}: {e}"))?;
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    let stream = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("{host}:{port}: TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("{host}:{port}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let authority = http::HeaderValue::from_str(&authority).map_err(|e| e.to_string())?;
    req.headers_mut().insert(http::header::HOST, authority);
    // HTTP/1.1 on the wire wants origin-form.
    let path = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    *req.uri_mut() = path;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{uri}: {e}"))?;
    let (parts, body) = resp.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    let bytes = http_body_util::BodyExt::collect(limited)
        .await
        .map_err(|e| format!("{uri}: body: {e}"))?
        .to_bytes();
    Ok(BytesResponse::from(http::Response::from_parts(
        parts,
        Full(Some(bytes)),
    )))
}

/// A whole body already read, as instant-acme takes it.
struct Full(Option<Bytes>);

impl http_body::Body for Full {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}
