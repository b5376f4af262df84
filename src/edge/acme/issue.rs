//! One order for one name, from the new order to the certificate: pick the challenge,
//! publish its answer (a TLS-ALPN-01 certificate for the HTTPS listener, or an HTTP-01
//! key authorization for the HTTP listener), tell the server, wait, finalize with a
//! fresh key, download the chain. The answer is withdrawn however the order ends.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::sign::CertifiedKey;

use super::store::{pem_text, Answer, CertStore, Stored};
use super::Challenges;
use crate::edge::config::Challenge;

/// How long the server may take to validate, then to issue.
const VALIDATION_WAIT: Duration = Duration::from_secs(90);

/// Orders a certificate for `name` answering `challenge`; the error is the server's
/// reason where it gave one.
pub(super) async fn order(
    account: &Account,
    name: &str,
    challenge: Challenge,
    answers: &Challenges,
    store: &Arc<dyn CertStore>,
) -> Result<Stored, String> {
    let ids = [Identifier::Dns(name.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut published = Published {
        answers,
        store: store.clone(),
        name: name.to_string(),
        token: None,
        shared: Vec::new(),
    };
    {
        let mut authzs = order.authorizations();
        while let Some(authz) = authzs.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let kind = match challenge {
                Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                Challenge::Http01 => ChallengeType::Http01,
            };
            let mut ch = authz.challenge(kind).ok_or_else(|| {
                format!(
                    "the server offers no {} challenge for {name}",
                    challenge.as_str()
                )
            })?;
            let key_auth = ch.key_authorization();
            let answer = match challenge {
                Challenge::TlsAlpn01 => {
                    let mut digest = [0u8; 32];
                    let d = key_auth.digest();
                    if d.as_ref().len() != digest.len() {
                        return Err("the key authorization's digest is not SHA-256".into());
                    }
                    digest.copy_from_slice(d.as_ref());
                    answers.put_alpn(name, alpn_certificate(name, &digest)?);
                    Answer::Alpn {
                        name: name.to_string(),
                        digest,
                    }
                }
                Challenge::Http01 => {
                    answers.put_http(&ch.token, key_auth.as_str());
                    published.token = Some(ch.token.clone());
                    Answer::Http {
                        token: ch.token.clone(),
                        key_auth: key_auth.as_str().to_string(),
                    }
                }
            };
            // The validation may reach any edge sharing the store: all of them answer.
            published.shared.push(answer.clone());
            let shared = store.clone();
            tokio::task::spawn_blocking(move || shared.share_answer(&answer))
                .await
                .map_err(|e| format!("sharing the answer: {e}"))?
                .map_err(|e| format!("sharing the answer: {e}"))?;
            ch.set_ready()
                .await
                .map_err(|e| format!("challenge: {e}"))?;
        }
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(VALIDATION_WAIT);
    let status = order
        .poll_ready(&retry)
        .await
        .map_err(|e| format!("validation: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(format!(
            "validation failed: {}",
            why_invalid(&mut order).await
        ));
    }
    drop(published);
    let key = rcgen::KeyPair::generate().map_err(|e| format!("key: {e}"))?;
    let mut params =
        rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| format!("CSR: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("CSR: {e}"))?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain_pem = order
        .poll_certificate(&retry)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    Ok(Stored {
        chain_pem,
        key_pem: pem_text("PRIVATE KEY", &key.serialize_der()),
    })
}

/// The reasons the server gave on the order's challenges.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(Ok(mut authz)) = authzs.next().await {
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        for c in &state.challenges {
            if let Some(p) = &c.error {
                reasons.push(p.to_string());
            }
        }
    }
    if reasons.is_empty() {
        "the server gave no reason".into()
    } else {
        reasons.join("; ")
    }
}

/// The self-signed certificate that answers TLS-ALPN-01 (RFC 8737): `name` as its only
/// name, and the critical acmeIdentifier extension holding `digest`, the SHA-256 of the
/// key authorization.
pub(super) fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("challenge key: {e}"))?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
        .map_err(|e| format!("challenge certificate: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("challenge certificate: {e}"))?;
    let der_key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not `CertifiedKey::from_der`: its check that the key fits parses the certificate
    // with webpki, which refuses the critical acmeIdentifier extension.
    let signer = crate::tls::provider()
        .key_provider
        .load_private_key(der_key)
        .map_err(|e| format!("challenge key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

/// Withdraws the published answers when the order ends, however it ends.
struct Published<'a> {
    answers: &'a Challenges,
    store: Arc<dyn CertStore>,
    name: String,
    token: Option<String>,
    /// The answers given to the other edges sharing the store.
    shared: Vec<Answer>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        self.answers.take_alpn(&self.name);
        if let Some(t) = &self.token {
            self.answers.take_http(t);
        }
        if !self.shared.is_empty() {
            let (store, shared) = (self.store.clone(), std::mem::take(&mut self.shared));
            // Best effort, off the runtime's threads: shared answers expire anyway.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn_blocking(move || {
                    for a in &shared {
                        store.withdraw_answer(a);
                    }
                });
            }
        }
    }
}
