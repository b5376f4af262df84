//! `mailslot-edge init` and `token`: the signing key, a private CA and certificate for a
//! first try, and tunnel tokens signed with that key.

use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivatePkcs8KeyDer;

use super::token::{self, TunnelClaims};

/// Files `init` writes into its folder.
pub const EDGE_YML: &str = "edge.yml";
pub const CA_CERT: &str = "ca.pem";
pub(crate) const CA_KEY: &str = "ca.key";
pub const CERT: &str = "edge.crt";
pub(crate) const KEY: &str = "edge.key";
pub const SIGNING_KEY: &str = "signing.key";
pub(crate) const SIGNING_PUB: &str = "signing.pub";

/// A generated private CA and a certificate for the edge's names, in PEM.
pub struct GeneratedPki {
    pub ca_pem: String,
    pub ca_der: Vec<u8>,
    pub(crate) ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Generates a private CA and a leaf certificate for `names` (DNS names or IPs).
pub fn generate_pki(names: &[String]) -> Result<GeneratedPki, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair as RcKey,
        KeyUsagePurpose,
    };
    let err = |e: rcgen::Error| format!("certificate generation failed: {e}");
    let ca_key = RcKey::generate().map_err(err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "mailslot edge CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = rcgen::date_time_ymd(2024, 1, 1);
    ca.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, &ca_key);

    let leaf_key = RcKey::generate().map_err(err)?;
    let mut leaf = CertificateParams::new(names.to_vec()).map_err(err)?;
    leaf.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    leaf.not_before = rcgen::date_time_ymd(2024, 1, 1);
    leaf.not_after = rcgen::date_time_ymd(2099, 12, 31);
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(err)?;
    Ok(GeneratedPki {
        ca_pem: ca_cert.pem(),
        ca_der: ca_cert.der().to_vec(),
        ca_key_pem: ca_key.serialize_pem(),
        cert_pem: leaf_cert.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

/// The `edge-pin` of the first certificate in a PEM file: `sha256//BASE64` of its
/// public key (see [`crate::tls`]). It changes when the certificate gets a new key, not
/// when it is renewed with the same one.
pub fn edge_pin_of_cert_file(path: &Path) -> Result<String, String> {
    use rustls::pki_types::CertificateDer;
    let cert = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .next()
        .ok_or_else(|| format!("{}: no certificate", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let spki = crate::tls::spki_of_cert(&cert)
        .ok_or_else(|| format!("{}: not an X.509 certificate", path.display()))?;
    Ok(crate::tls::pin_to_string(&crate::tls::pin_of_spki(spki)))
}

/// A fresh Ed25519 signing key as PKCS#8 DER.
pub fn generate_signing_key() -> Result<Vec<u8>, String> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map(|d| d.as_ref().to_vec())
        .map_err(|_| "cannot generate a signing key".to_string())
}

/// PEM text of a PKCS#8 key.
pub(crate) fn pkcs8_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

/// Reads a PEM PKCS#8 Ed25519 signing key.
pub fn load_signing_key(path: &Path) -> Result<Ed25519KeyPair, String> {
    let der =
        PrivatePkcs8KeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ed25519KeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| format!("{}: not an Ed25519 key: {e}", path.display()))
}

/// The raw public key of a signing key.
pub fn public_key_of(key: &Ed25519KeyPair) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(key.public_key().as_ref());
    out
}

/// Issues a tunnel token valid from now for `ttl_secs`.
pub fn issue_tunnel_token(
    key: &Ed25519KeyPair,
    tunnel: &str,
    hosts: &[String],
    ttl_secs: u64,
) -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut id = [0u8; 16];
    SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| "no randomness for a tunnel id")?;
    let now = token::now_unix();
    let claims = TunnelClaims {
        tunnel: tunnel.to_string(),
        id,
        hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        issued: now,
        expires: now.saturating_add(ttl_secs),
    };
    token::sign(key, token::TUNNEL_PREFIX, &claims)
}

fn write_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `init`: writes `edge.yml`, the signing key pair and, unless `cert` is given, a
/// private CA and a certificate for `hostnames`. Refuses to overwrite anything.
pub fn init(
    dir: &Path,
    hostnames: &[String],
    cert: Option<(PathBuf, PathBuf)>,
) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let yml = dir.join(EDGE_YML);
    if yml.exists() {
        return Err(format!("{} exists; not overwriting", yml.display()));
    }
    let mut written = Vec::new();
    let signing = generate_signing_key()?;
    let key = Ed25519KeyPair::from_pkcs8(&signing).map_err(|e| e.to_string())?;
    write_new(&dir.join(SIGNING_KEY), pkcs8_pem(&signing).as_bytes(), true)?;
    write_new(
        &dir.join(SIGNING_PUB),
        token::public_key_text(&key).as_bytes(),
        false,
    )?;
    written.extend([dir.join(SIGNING_KEY), dir.join(SIGNING_PUB)]);
    let (cert_path, key_path) = match cert {
        Some((c, k)) => (c, k),
        None => {
            let pki = generate_pki(hostnames)?;
            write_new(&dir.join(CA_CERT), pki.ca_pem.as_bytes(), false)?;
            write_new(&dir.join(CA_KEY), pki.ca_key_pem.as_bytes(), true)?;
            write_new(&dir.join(CERT), pki.cert_pem.as_bytes(), false)?;
            write_new(&dir.join(KEY), pki.key_pem.as_bytes(), true)?;
            written.extend([
                dir.join(CA_CERT),
                dir.join(CA_KEY),
                dir.join(CERT),
                dir.join(KEY),
            ]);
            (PathBuf::from(CERT), PathBuf::from(KEY))
        }
    };
    let name = hostnames.first().cloned().unwrap_or_else(|| "edge".into());
    let text = format!(
        "# mailslot edge settings. Relative paths are relative to this file's folder.\n\
         name: {name}\n\
         # QUIC (UDP) for connectors; the HTTP/2 fallback uses the same port on TCP.\n\
         tunnel-listen: {}\n\
         # Visitors. \"none\" disables a listener.\n\
         http-listen: {}\n\
         https-listen: {}\n\
         # The edge's certificate: for connectors, and for visitors unless `certs` has a better one.\n\
         cert: {}\n\
         key: {}\n\
         # More visitor certificates, chosen by SNI:\n\
         # certs:\n\
         #   - {{ cert: dev42.crt, key: dev42.key }}\n\
         # Signs tunnel tokens (`mailslot-edge token`) and verifies them.\n\
         signing-key: {SIGNING_KEY}\n\
         # Public keys of other edges' signing keys whose tokens this edge accepts:\n\
         # verify-keys: [other-edge.pub]\n\
         origin-response-timeout: 100s\n",
        config::DEFAULT_TUNNEL_LISTEN,
        config::DEFAULT_HTTP_LISTEN,
        config::DEFAULT_HTTPS_LISTEN,
        cert_path.display(),
        key_path.display(),
    );
    write_new(&yml, text.as_bytes(), false)?;
    written.push(yml);
    Ok(written)
}

use super::config;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_loadable_edge() {
        let dir = std::env::temp_dir().join(format!("mailslot-init-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = init(&dir, &["edge.example.com".into(), "127.0.0.1".into()], None).unwrap();
        assert!(files.iter().any(|f| f.ends_with("ca.pem")));
        let cfg = config::EdgeConfig::load(&dir.join(EDGE_YML)).unwrap();
        let settings = super::super::EdgeSettings::load(&cfg).unwrap();
        assert_eq!(settings.verify_keys.len(), 1);
        assert!(init(&dir, &["x".into()], None).is_err(), "no overwrite");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(SIGNING_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "signing key is private");
        let key = load_signing_key(&dir.join(SIGNING_KEY)).unwrap();
        let t = issue_tunnel_token(&key, "dev42", &["dev42.example.com".into()], 60).unwrap();
        let c = token::verify_tunnel(&t, &settings.verify_keys, token::now_unix()).unwrap();
        assert_eq!(c.tunnel, "dev42");
        // The pin printed for connectors is the SHA-256 of the edge key's SPKI.
        let pin = edge_pin_of_cert_file(&dir.join(CERT)).unwrap();
        let key_pem = std::fs::read_to_string(dir.join(KEY)).unwrap();
        let key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        assert_eq!(
            crate::tls::parse_pin(&pin).unwrap(),
            crate::tls::pin_of_spki(&spki)
        );
        assert!(edge_pin_of_cert_file(&dir.join(SIGNING_PUB)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
