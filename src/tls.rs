//! TLS client settings: verifying the edge (and `https://` origins) from a device whose
//! clock may not be set yet.
//!
//! A board without an RTC boots at 1970 until NTP answers. Certificate validity checks
//! against that clock would fail and leave the device offline, so the connector checks
//! certificates against the later of the system clock and the time this binary was
//! built: a certificate that expired before the build is still refused.
//!
//! Without an `edge-ca` (or an origin's `ca-pool`), certificates are checked against the
//! public web PKI: the Mozilla roots compiled in (webpki-roots) in builds with the
//! `webpki-roots` feature (the default features have it), else the system's CA file
//! ([`SYSTEM_CA_FILES`], or `SSL_CERT_FILE`), which keeps 70 KB of roots out of
//! device builds whose configs name their edge's CA anyway.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedCipherSuite};

/// Unix time at which this binary was built.
pub const BUILD_UNIX: u64 = match u64::from_str_radix(env!("MAILSLOT_BUILD_UNIX"), 10) {
    Ok(t) => t,
    Err(_) => 0,
};

/// The ring crypto provider shared by every TLS config, its cipher suites in the order
/// that is fastest on this CPU (see `suite_rank`). A TLS server takes the client's
/// order, so the connector's CPU picks the cipher of its tunnel connections.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = ordered(&p.cipher_suites, aes_in_hardware());
    Arc::new(p)
}

/// `suites` by [`suite_rank`], with no sort routine linked into the device binary.
fn ordered(suites: &[SupportedCipherSuite], aes_hardware: bool) -> Vec<SupportedCipherSuite> {
    let mut out = Vec::with_capacity(suites.len());
    for version in 0..2 {
        for cipher in 0..3 {
            out.extend(
                suites
                    .iter()
                    .filter(|s| suite_rank(s.suite(), aes_hardware) == (version, cipher)),
            );
        }
    }
    out
}

/// Preference of a cipher suite (lower first), all of them sound: AES-128-GCM before
/// AES-256-GCM (ten rounds instead of fourteen; rustls's default order is the
/// reverse) where the CPU has AES instructions, and ChaCha20-Poly1305 first where it
/// has not (as on the Cortex-A53/A72 of Raspberry Pi 3 and 4): in software it is much
/// faster than constant-time AES. TLS 1.3 suites stay ahead of TLS 1.2 ones.
///
/// On this project's benchmark host (x86_64 with AES-NI), AES-128 instead of AES-256
/// cut the CPU time per 100 MiB through a QUIC tunnel by 8–11 % on each end.
fn suite_rank(suite: rustls::CipherSuite, aes_hardware: bool) -> (u8, u8) {
    use rustls::CipherSuite as C;
    let cipher = match suite {
        C::TLS13_AES_128_GCM_SHA256
        | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        C::TLS13_AES_256_GCM_SHA384
        | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
        _ => 2,
    };
    let cipher = match (aes_hardware, cipher) {
        (false, 2) => 0,
        (false, aes) => aes + 1,
        (true, c) => c,
    };
    let version = match suite {
        C::TLS13_AES_128_GCM_SHA256
        | C::TLS13_AES_256_GCM_SHA384
        | C::TLS13_CHACHA20_POLY1305_SHA256 => 0,
        _ => 1,
    };
    (version, cipher)
}

/// True when the CPU runs AES and GCM's carry-less multiply in hardware.
fn aes_in_hardware() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(all(target_arch = "aarch64", target_os = "linux"))]
    {
        // The kernel's hardware capability bits (std's detection macro would link
        // several KB more into the device binary).
        // SAFETY: getauxval reads the process's auxiliary vector; any key is valid.
        let caps = unsafe { libc::getauxval(libc::AT_HWCAP) };
        caps & libc::HWCAP_AES != 0 && caps & libc::HWCAP_PMULL != 0
    }
    #[cfg(not(any(
        target_arch = "x86",
        target_arch = "x86_64",
        all(target_arch = "aarch64", target_os = "linux")
    )))]
    {
        // 32-bit ARM boards (armv7) run AES in software.
        false
    }
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

/// Roots: the given DER certificate, or the public web PKI ([`public_roots`]).
pub fn root_store(ca: Option<&[u8]>) -> Result<RootCertStore, rustls::Error> {
    match ca {
        Some(der) => {
            let mut roots = RootCertStore::empty();
            roots.add(CertificateDer::from(der.to_vec()))?;
            Ok(roots)
        }
        None => public_roots(),
    }
}

/// The public web PKI: the Mozilla roots compiled into this build.
#[cfg(feature = "webpki-roots")]
pub fn public_roots() -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    Ok(roots)
}

/// The public web PKI: this build has no roots of its own (no `webpki-roots` feature),
/// so the system's CA file ([`system_roots`]).
#[cfg(not(feature = "webpki-roots"))]
pub fn public_roots() -> Result<RootCertStore, rustls::Error> {
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let (roots, path) = system_roots(env.as_deref(), SYSTEM_CA_FILES)?;
    log::debug!(
        "public web PKI: {} roots from {}",
        roots.len(),
        path.display()
    );
    Ok(roots)
}

/// Where distributions keep their CA bundle (PEM), in the order they are tried:
/// Debian, Raspberry Pi OS, Ubuntu, Alpine, Buildroot and OpenWrt (`ca-certificates`);
/// Fedora and RHEL; Alpine and the BSDs; openSUSE.
pub const SYSTEM_CA_FILES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
    "/etc/ssl/ca-bundle.pem",
];

/// Roots from a PEM CA bundle: `env` (`SSL_CERT_FILE`) when set, which must then be
/// readable, else the first of `candidates` that exists. Certificates in the bundle
/// that do not parse as trust anchors are skipped; a bundle without any is an error.
/// Returns the roots and the file they came from.
pub fn system_roots(
    env: Option<&Path>,
    candidates: &[&str],
) -> Result<(RootCertStore, PathBuf), rustls::Error> {
    use rustls::pki_types::pem::PemObject;
    let general = |msg: String| rustls::Error::General(msg);
    let (path, pem) = match env {
        Some(p) => match std::fs::read(p) {
            Ok(pem) => (p.to_path_buf(), pem),
            Err(e) => return Err(general(format!("SSL_CERT_FILE {}: {e}", p.display()))),
        },
        None => candidates
            .iter()
            .find_map(|c| std::fs::read(c).ok().map(|pem| (PathBuf::from(c), pem)))
            .ok_or_else(|| {
                general(format!(
                    "no CA certificate to verify against: no edge-ca (or ca-pool) in the \
                     config, and this build has no public roots of its own, nor is there a \
                     system CA file ({}; or set SSL_CERT_FILE): give the config an edge-ca, \
                     install the system's ca-certificates, or use a build with the \
                     webpki-roots feature",
                    candidates.join(", ")
                ))
            })?,
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(general(format!(
            "CA file {} holds no usable PEM certificate",
            path.display()
        )));
    }
    Ok((roots, path))
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

    fn order(aes_hardware: bool) -> Vec<rustls::CipherSuite> {
        ordered(rustls::crypto::ring::DEFAULT_CIPHER_SUITES, aes_hardware)
            .iter()
            .map(|s| s.suite())
            .collect()
    }

    #[test]
    fn cipher_order_fits_the_cpu() {
        use rustls::CipherSuite as C;
        let hw = order(true);
        assert_eq!(
            hw[..3],
            [
                C::TLS13_AES_128_GCM_SHA256,
                C::TLS13_AES_256_GCM_SHA384,
                C::TLS13_CHACHA20_POLY1305_SHA256
            ]
        );
        let soft = order(false);
        assert_eq!(
            soft[..3],
            [
                C::TLS13_CHACHA20_POLY1305_SHA256,
                C::TLS13_AES_128_GCM_SHA256,
                C::TLS13_AES_256_GCM_SHA384
            ]
        );
        // TLS 1.2 suites (for `https://` origins that lack 1.3) come after, in the same
        // cipher order, and none is lost.
        assert_eq!(soft[3], C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256);
        assert_eq!(hw[3], C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
        assert_eq!(hw.len(), rustls::crypto::ring::DEFAULT_CIPHER_SUITES.len());
        assert_eq!(provider().cipher_suites.len(), hw.len());
    }

    #[test]
    fn clock_floor_moves_1970_to_build_time() {
        let early = UnixTime::since_unix_epoch(Duration::from_secs(10));
        assert_eq!(effective_now(early).as_secs(), BUILD_UNIX);
        let late = UnixTime::since_unix_epoch(Duration::from_secs(BUILD_UNIX + 100));
        assert_eq!(effective_now(late).as_secs(), BUILD_UNIX + 100);
        const { assert!(BUILD_UNIX > 1_700_000_000, "build time recorded") };
    }

    /// A self-signed P-256 CA (`openssl req -x509`, valid until 2126).
    const TEST_CA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBkjCCATegAwIBAgIUVUE/IyHYybTuuBkj3aa+davMBmkwCgYIKoZIzj0EAwIw\n\
HTEbMBkGA1UEAwwSbWFpbHNsb3QgdGVzdCByb290MCAXDTI2MTEyNzA4MzAwNFoY\n\
DzIxMjYxMTAzMDgzMDA0WjAdMRswGQYDVQQDDBJtYWlsc2xvdCB0ZXN0IHJvb3Qw\n\
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQoJMKu5cgTcsEWddG2ApqmkSw4pFZT\n\
eecYZ8PA1z6chcGDpBtBEAhuBch1be+xpMNtEu9Np/dil6VECof/cbtHo1MwUTAd\n\
BgNVHQ4EFgQU5gJpsXDSW5U9Jh7ZQ+nN28CDOMkwHwYDVR0jBBgwFoAU5gJpsXDS\n\
W5U9Jh7ZQ+nN28CDOMkwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNJADBG\n\
AiEAxlUpLEpveAdDl2rswpnqXBNI7I+DrkfYRWjDM+e/tSkCIQDyLRh/j9wFOUx4\n\
ecNOREkHPyqtZ4ARrvp/qzod+cLgZw==\n\
-----END CERTIFICATE-----\n\
";

    #[test]
    fn system_roots_from_a_bundle() {
        let dir = std::env::temp_dir().join(format!("mailslot-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bundle = dir.join("bundle.pem");
        // Two certificates with text around them, as distributions' bundles have.
        std::fs::write(&bundle, format!("# a comment\n{TEST_CA}\nnoise\n{TEST_CA}")).unwrap();
        let missing = dir.join("missing.pem");
        let missing = missing.to_str().unwrap();
        let found = bundle.to_str().unwrap();

        // The first existing candidate wins.
        let (roots, path) = system_roots(None, &[missing, found]).unwrap();
        assert_eq!((roots.len(), path.as_path()), (2, bundle.as_path()));
        // SSL_CERT_FILE wins, and must be readable.
        let (roots, _) = system_roots(Some(&bundle), &[missing]).unwrap();
        assert_eq!(roots.len(), 2);
        let err = system_roots(Some(Path::new(missing)), &[found]).unwrap_err();
        assert!(err.to_string().contains("SSL_CERT_FILE"), "{err}");
        // Nothing found: the error says what to do.
        let err = system_roots(None, &[missing]).unwrap_err().to_string();
        assert!(err.contains("edge-ca") && err.contains(missing), "{err}");
        // A file without certificates.
        std::fs::write(&bundle, "not a certificate\n").unwrap();
        let err = system_roots(None, &[found]).unwrap_err().to_string();
        assert!(err.contains("no usable PEM certificate"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
