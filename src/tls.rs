//! TLS client settings: verifying the edge (and `https://` origins) from a device whose
//! clock may not be set yet.
//!
//! A board without an RTC boots at 1970 until NTP answers. Certificate validity checks
//! against that clock would fail and leave the device offline, so the connector checks
//! certificates against the later of the system clock and the time this binary was
//! built: a certificate that expired before the build is still refused.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Unix time at which this binary was built.
pub const BUILD_UNIX: u64 = match u64::from_str_radix(env!("MAILSLOT_BUILD_UNIX"), 10) {
    Ok(t) => t,
    Err(_) => 0,
};

/// The ring crypto provider shared by every TLS config.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// True when the system clock reads earlier than the build time: it has not been set.
pub fn clock_unset() -> bool {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    now < BUILD_UNIX
}

fn effective_now(now: UnixTime) -> UnixTime {
    let floor = UnixTime::since_unix_epoch(Duration::from_secs(BUILD_UNIX));
    if now.as_secs() < floor.as_secs() {
        floor
    } else {
        now
    }
}

/// Roots: the given DER certificate, or the public web PKI.
pub fn root_store(ca: Option<&[u8]>) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(der) => roots.add(CertificateDer::from(der.to_vec()))?,
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// WebPKI verification with a clock that cannot be earlier than the build.
#[derive(Debug)]
struct ClockTolerant(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ClockTolerant {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp,
            effective_now(now),
        )
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any certificate (an origin's `no-tls-verify`), still checking that the peer
/// holds the key it presents.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Client config for dialing the edge: TLS 1.3, ALPN `mailslot`, verified against `ca`
/// or the web PKI with the clock floor.
pub fn edge_client_config(ca: Option<&[u8]>) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClockTolerant(verifier)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![crate::wire::ALPN.to_vec()];
    Ok(cfg)
}

/// Client config for an `https://` origin.
pub fn origin_client_config(
    ca: Option<&[u8]>,
    no_verify: bool,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous();
    let cfg = if no_verify {
        builder.with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider)
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        builder.with_custom_certificate_verifier(Arc::new(ClockTolerant(verifier)))
    };
    let mut cfg = cfg.with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_floor_moves_1970_to_build_time() {
        let early = UnixTime::since_unix_epoch(Duration::from_secs(10));
        assert_eq!(effective_now(early).as_secs(), BUILD_UNIX);
        let late = UnixTime::since_unix_epoch(Duration::from_secs(BUILD_UNIX + 100));
        assert_eq!(effective_now(late).as_secs(), BUILD_UNIX + 100);
        const { assert!(BUILD_UNIX > 1_700_000_000, "build time recorded") };
    }
}
