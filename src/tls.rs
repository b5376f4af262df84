//! TLS client settings: verifying the edge (and `https://` origins) from a device whose
//! clock may not be set yet.
//!
//! A board without an RTC boots at 1970 until NTP answers. Certificate validity checks
//! against that clock would fail and leave the device offline, so the connector checks
//! certificates against the latest of the system clock, the time this binary was built
//! and the last-known-good time a set clock showed on an earlier run ([`crate::clock`]):
//! a certificate that expired before any of them is refused.
//!
//! A config may also pin the edge's public key (`edge-pin: sha256//BASE64`, the SHA-256
//! of the certificate's DER SubjectPublicKeyInfo, as curl's `--pinnedpubkey` and HPKP
//! write it). The pin is checked *in addition to* the CA verification, never instead:
//! the CA check still binds the certificate to the edge's name and to a validity
//! period, and the pin narrows the keys it accepts to the ones the operator chose. With
//! an unset clock, the CA check alone would accept any certificate the CA ever signed
//! for that name whose validity reaches the floor time, including one whose key leaked
//! and was replaced since; with a pin, only the pinned keys. A pin never makes a
//! certificate acceptable that the CA check refuses.
//!
//! Without an `edge-ca` (or an origin's `ca-pool`), certificates are checked against the
//! public web PKI: the Mozilla roots compiled in (webpki-roots) in builds with the
//! `webpki-roots` feature (the default features have it), else the system's CA file
//! ([`SYSTEM_CA_FILES`], or `SSL_CERT_FILE`), which keeps 70 KB of roots out of
//! device builds whose configs name their edge's CA anyway.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedCipherSuite};

pub use crate::clock::BUILD_UNIX;
pub use crate::config::pin::{parse_pin, pin_to_string};
pub(crate) use pin::{pin_of_spki, spki_of_cert};

mod pin;

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

/// True when the system clock reads earlier than the build time or the last-known-good
/// time: it has not been set.
pub fn clock_unset() -> bool {
    crate::clock::unset()
}

/// `now` raised to the build time and to `last_known_good`.
fn effective_now(now: UnixTime, last_known_good: u64) -> UnixTime {
    let secs = crate::clock::effective_secs(now.as_secs(), last_known_good);
    UnixTime::since_unix_epoch(Duration::from_secs(secs))
}

/// Roots: the given DER certificate, or the public web PKI ([`public_roots`]).
pub(crate) fn root_store(ca: Option<&[u8]>) -> Result<RootCertStore, rustls::Error> {
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

/// WebPKI verification with a clock that cannot be earlier than the build or the
/// last-known-good time, then the pins if there are any.
struct ClockTolerant {
    inner: Arc<WebPkiServerVerifier>,
    /// Keys the end-entity certificate must carry one of; empty: any.
    pins: Vec<crate::config::EdgePin>,
    /// The last-known-good time ([`crate::clock::floor`]; tests give their own).
    last_known_good: fn() -> u64,
}

/// By hand: a derived `Debug` would print every pin byte by byte, code the device
/// binary does not need.
impl std::fmt::Debug for ClockTolerant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClockTolerant({} pins)", self.pins.len())
    }
}

impl ClockTolerant {
    fn new(inner: Arc<WebPkiServerVerifier>, pins: &[crate::config::EdgePin]) -> Self {
        ClockTolerant {
            inner,
            pins: pins.to_vec(),
            last_known_good: crate::clock::floor,
        }
    }
}

impl ServerCertVerifier for ClockTolerant {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp,
            effective_now(now, (self.last_known_good)()),
        )?;
        if self.pins.is_empty() {
            return Ok(verified);
        }
        let Some(spki) = spki_of_cert(end_entity) else {
            return Err(rustls::Error::General(
                "edge certificate has no public key to check against edge-pin".into(),
            ));
        };
        let pin = pin_of_spki(spki);
        if self.pins.contains(&pin) {
            Ok(verified)
        } else {
            Err(rustls::Error::General(format!(
                "edge key {} is not one of the config's edge-pin keys",
                pin_to_string(&pin)
            )))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
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
    edge_client_config_pinned(ca, &[])
}

/// [`edge_client_config`] that also requires the edge's key to be one of `pins` (none:
/// any key).
pub(crate) fn edge_client_config_pinned(
    ca: Option<&[u8]>,
    pins: &[crate::config::EdgePin],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = provider();
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(ca)?), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ClockTolerant::new(verifier, pins)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![crate::wire::ALPN.to_vec()];
    Ok(cfg)
}

/// Client config for an `https://` origin.
pub(crate) fn origin_client_config(
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
        builder.with_custom_certificate_verifier(Arc::new(ClockTolerant::new(verifier, &[])))
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
        assert_eq!(effective_now(early, 0).as_secs(), BUILD_UNIX);
        assert_eq!(
            effective_now(early, BUILD_UNIX + 7).as_secs(),
            BUILD_UNIX + 7
        );
        let late = UnixTime::since_unix_epoch(Duration::from_secs(BUILD_UNIX + 100));
        assert_eq!(effective_now(late, 0).as_secs(), BUILD_UNIX + 100);
        const { assert!(BUILD_UNIX > 1_700_000_000, "build time recorded") };
    }

    const DAY: u64 = 24 * 3600;

    /// A CA and an edge certificate for "edge.test" valid from a day before the build
    /// to a day after it: it expired after the build.
    #[cfg(feature = "edge")] // rcgen
    struct Pki {
        ca: Vec<u8>,
        leaf: Vec<u8>,
        leaf_spki: Vec<u8>,
    }

    #[cfg(feature = "edge")] // rcgen
    fn pki() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let at = |secs: u64| rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs);
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.not_before = at(BUILD_UNIX - 10 * DAY);
        ca_params.not_after = at(BUILD_UNIX + 3650 * DAY);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["edge.test".to_string()]).unwrap();
        params.not_before = at(BUILD_UNIX - DAY);
        params.not_after = at(BUILD_UNIX + DAY);
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = params.signed_by(&key, &issuer).unwrap();
        Pki {
            ca: ca.der().to_vec(),
            leaf: leaf.der().to_vec(),
            leaf_spki: rcgen::PublicKeyData::subject_public_key_info(&key),
        }
    }

    #[cfg(feature = "edge")] // rcgen
    fn verifier(pki: &Pki, pins: &[crate::config::EdgePin], lkg: fn() -> u64) -> ClockTolerant {
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(root_store(Some(&pki.ca)).unwrap()),
            provider(),
        )
        .build()
        .unwrap();
        let mut v = ClockTolerant::new(inner, pins);
        v.last_known_good = lkg;
        v
    }

    #[cfg(feature = "edge")] // rcgen
    fn check(v: &ClockTolerant, pki: &Pki, now: u64) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("edge.test").unwrap();
        let now = UnixTime::since_unix_epoch(Duration::from_secs(now));
        v.verify_server_cert(
            &CertificateDer::from(pki.leaf.clone()),
            &[],
            &name,
            &[],
            now,
        )
        .map(|_| ())
    }

    #[cfg(feature = "edge")] // rcgen
    #[test]
    fn expired_certificate_refused_after_the_last_known_good_time() {
        let pki = pki();
        // No last-known-good time: a 1970 clock is raised to the build time, at which
        // the certificate is still valid.
        let none = verifier(&pki, &[], || 0);
        check(&none, &pki, 10).unwrap();
        // A run ten days after the build saw a set clock: the certificate expired
        // before that, so a 1970 clock must not bring it back.
        let later = verifier(&pki, &[], || BUILD_UNIX + 10 * DAY);
        let err = check(&later, &pki, 10).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
                    | rustls::Error::InvalidCertificate(
                        rustls::CertificateError::ExpiredContext { .. }
                    )
            ),
            "{err:?}"
        );
        // The system clock, when later still, wins as before.
        check(&none, &pki, BUILD_UNIX + 2 * DAY).unwrap_err();
    }

    #[cfg(feature = "edge")] // rcgen
    #[test]
    fn edge_pin_checked_after_the_ca() {
        let pki = pki();
        let spki = spki_of_cert(&pki.leaf).unwrap();
        assert_eq!(
            spki,
            pki.leaf_spki.as_slice(),
            "SPKI found in the certificate"
        );
        let pin = pin_of_spki(spki);
        // Matching pin (among others): accepted.
        let v = verifier(&pki, &[[1; 32], pin], || 0);
        check(&v, &pki, BUILD_UNIX).unwrap();
        // No matching pin: refused, naming the key the edge showed.
        let v = verifier(&pki, &[[1; 32]], || 0);
        let err = check(&v, &pki, BUILD_UNIX).unwrap_err().to_string();
        assert!(err.contains(&pin_to_string(&pin)), "{err}");
        // A pin does not replace the CA check: an expired certificate stays refused.
        let v = verifier(&pki, &[pin], || BUILD_UNIX + 10 * DAY);
        check(&v, &pki, 10).unwrap_err();
    }

    #[cfg(feature = "edge")] // rcgen
    #[test]
    fn truncated_der_has_no_spki() {
        // Truncated or junk DER has no SPKI, and never panics.
        let pki = pki();
        for n in 0..pki.leaf.len() {
            let _ = spki_of_cert(&pki.leaf[..n]);
        }
        assert_eq!(spki_of_cert(b""), None);
        assert_eq!(spki_of_cert(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
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
