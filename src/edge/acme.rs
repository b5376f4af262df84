//! Certificates from an ACME server (RFC 8555: Let's Encrypt, or any other) for the
//! hostnames the edge's tunnels serve, obtained, cached, renewed and swapped in while
//! the edge runs (`acme:` in `edge.yml`).
//!
//! - Which names: only exact hostnames that a registered tunnel serves and that its
//!   token or credential allows ([`Registry::served_names`]), less those a `certs:`
//!   file covers. A visitor's Host header or SNI never starts an order, so no one can
//!   make the edge spend the ACME server's rate limits. Wildcard patterns get no
//!   certificate: they need DNS-01, which needs the DNS provider's API.
//! - Challenges: TLS-ALPN-01 in the HTTPS listener's handshake ([`Resolver`]) and
//!   HTTP-01 on the HTTP listener ([`http01`], asked by `front` before any routing).
//! - When: `acme/schedule.rs` (at once for a new name, at two thirds of the lifetime
//!   with jitter, per-name backoff after a failure), at most `concurrency` orders at a
//!   time, at most `max-names` names.
//! - Where: `acme/store.rs` (the account key and the certificates in the edge's folder,
//!   behind a trait that a store shared by several edges can implement).
//! - The ACME protocol is instant-acme's: a small, maintained, async client on tokio and
//!   ring that leaves the policy (which names, when, where to keep them) to us.
//!   rustls-acme was the other candidate: it owns the TLS acceptor and the cache, and
//!   takes a fixed list of names at start, where the edge's names come and go with
//!   its tunnels. `acme/client.rs` is the HTTPS client it runs over.
//!
//! A new certificate goes into a table that TLS handshakes read: handshakes after it
//! get the new one, connections already up keep theirs (as a SIGHUP reload does).

mod client;
mod issue;
mod schedule;
pub(crate) mod store;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use http::Response;
use instant_acme::Account;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::body::{self, Body};
use super::config::{AcmeConfig, Challenge, EdgeConfig};
use super::{CertKey, EdgeState};
use schedule::Schedule;
use store::{Answer, CertStore, FileStore, Stored};

#[cfg(doc)]
use super::registry::Registry;

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Most challenge answers published at once, of each kind (each order in progress
/// publishes one; `concurrency` is at most 16).
const MAX_ANSWERS: usize = 64;
/// Most names listed in `/metrics` (the soonest to expire first).
const MAX_METRIC_NAMES: usize = 1000;
/// How often the names served and the renewal times are looked at, besides each
/// time a tunnel registers or leaves.
const TICK: Duration = Duration::from_secs(2);
/// How long one edge of a cluster holds the right to order a name.
const LEASE: Duration = Duration::from_secs(300);
/// Prefix of HTTP-01 requests.
const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

/// Answers to the challenges of the orders in progress (this edge's, and in a cluster
/// the other edges'). Bounded: [`MAX_ANSWERS`] of each kind, each dropped after
/// [`ANSWER_LIFE`] if its withdrawal never came.
#[derive(Default)]
pub(crate) struct Challenges {
    /// Name → the TLS-ALPN-01 certificate, and when it was put.
    alpn: Mutex<HashMap<String, (Arc<CertifiedKey>, Instant)>>,
    /// Token → key authorization (HTTP-01), and when it was put.
    http: Mutex<HashMap<String, (String, Instant)>>,
}

/// Longest an answer is kept: an order's whole validation wait, and more.
const ANSWER_LIFE: Duration = Duration::from_secs(600);

/// Puts `value` under `key` in `m` unless [`MAX_ANSWERS`] others are there, after
/// dropping those older than [`ANSWER_LIFE`].
fn put_answer<V>(m: &Mutex<HashMap<String, (V, Instant)>>, key: &str, value: V) {
    let mut m = crate::util::lock(m);
    m.retain(|_, (_, at)| at.elapsed() < ANSWER_LIFE);
    if m.len() < MAX_ANSWERS || m.contains_key(key) {
        m.insert(key.to_string(), (value, Instant::now()));
    }
}

impl Challenges {
    fn put_alpn(&self, name: &str, cert: Arc<CertifiedKey>) {
        put_answer(&self.alpn, name, cert);
    }

    fn take_alpn(&self, name: &str) {
        crate::util::lock(&self.alpn).remove(name);
    }

    fn put_http(&self, token: &str, key_auth: &str) {
        put_answer(&self.http, token, key_auth.to_string());
    }

    fn take_http(&self, token: &str) {
        crate::util::lock(&self.http).remove(token);
    }
}

/// The ACME side of the edge: settings, cache, certificates in force, answers.
pub(crate) struct Acme {
    cfg: AcmeConfig,
    /// The challenges tried, in turn after each failure.
    challenges: Vec<Challenge>,
    client: client::Client,
    store: Arc<dyn CertStore>,
    /// Where the store is, as logs say it.
    shown: String,
    /// Name → certificate in force and its expiry. Bounded by `max-names` (through
    /// `schedule`); an expired one leaves.
    certs: RwLock<HashMap<String, (Arc<CertifiedKey>, u64)>>,
    answers: Challenges,
    schedule: Mutex<Schedule>,
    /// Last failure logged per name (each is logged once, until it changes or an
    /// order succeeds). Bounded by `max-names`.
    logged: Mutex<HashMap<String, String>>,
    /// The account, made on the first order.
    account: tokio::sync::Mutex<Option<Account>>,
}

impl Acme {
    /// Checks the settings against the listeners, opens the cache and loads the
    /// certificates kept there.
    /// With `shared`, the account, certificates, leases and challenge answers are the
    /// cluster's (Redis) instead of the edge's folder.
    pub(crate) fn new(
        cfg: &EdgeConfig,
        acme: &AcmeConfig,
        shared: Option<Arc<dyn CertStore>>,
    ) -> Result<Acme, String> {
        let (http_on, https_on) = (cfg.http_listen.is_some(), cfg.https_listen.is_some());
        let challenges = match &acme.challenges {
            Some(list) => {
                for c in list {
                    let (on, key) = match c {
                        Challenge::TlsAlpn01 => (https_on, "https-listen"),
                        Challenge::Http01 => (http_on, "http-listen"),
                    };
                    if !on {
                        return Err(format!(
                            "acme.challenge {} needs {key}, which is off",
                            c.as_str()
                        ));
                    }
                }
                list.clone()
            }
            None => [
                (https_on, Challenge::TlsAlpn01),
                (http_on, Challenge::Http01),
            ]
            .into_iter()
            .filter_map(|(on, c)| on.then_some(c))
            .collect(),
        };
        if challenges.is_empty() {
            return Err("acme: needs https-listen (tls-alpn-01) or http-listen (http-01)".into());
        }
        let client = client::Client::new(acme.directory_ca.as_deref())?;
        let (store, shown): (Arc<dyn CertStore>, String) = match shared {
            Some(s) => (s, "the cluster's redis".into()),
            None => (
                Arc::new(FileStore::open(&acme.dir)?),
                acme.dir.display().to_string(),
            ),
        };
        let me = Acme {
            cfg: acme.clone(),
            challenges,
            client,
            store,
            shown,
            certs: RwLock::new(HashMap::new()),
            answers: Challenges::default(),
            schedule: Mutex::new(Schedule::new(
                acme.max_names,
                acme.renew_after.map(|d| d.as_secs().max(1)),
            )),
            logged: Mutex::new(HashMap::new()),
            account: tokio::sync::Mutex::new(None),
        };
        me.load_cached();
        Ok(me)
    }

    /// Whether the HTTPS listener must offer `acme-tls/1`.
    pub(crate) fn answers_tls_alpn(&self) -> bool {
        self.challenges.contains(&Challenge::TlsAlpn01)
    }

    /// Puts the certificates kept in the cache in force (expired ones are ordered again).
    fn load_cached(&self) {
        let names = match self.store.names(self.cfg.max_names) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("acme: cannot list the cached certificates: {e}");
                return;
            }
        };
        let now = unix_now();
        let mut loaded = 0;
        for name in names {
            let stored = match self.store.load(&name) {
                Ok(Some(s)) => s,
                Ok(None) => continue,
                Err(e) => {
                    log::warn!("acme: cached certificate for {name}: {e}");
                    continue;
                }
            };
            match self.install(&name, &stored, now) {
                Ok((_, not_after)) if not_after > now => loaded += 1,
                Ok(_) => log::info!("acme: cached certificate for {name} has expired"),
                Err(e) => log::warn!("acme: cached certificate for {name}: {e}"),
            }
        }
        log::info!(
            "acme: {loaded} cached certificates from {}; directory {}; challenges {}",
            self.shown,
            self.cfg.directory,
            self.challenges
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    /// Checks `stored` and puts it in force for `name`; its validity.
    fn install(&self, name: &str, stored: &Stored, now: u64) -> Result<(u64, u64), String> {
        let ck = CertKey::from_pem(stored.chain_pem.as_bytes(), stored.key_pem.as_bytes())?;
        let certified = ck.certified()?;
        let validity = store::validity_of_pem(&stored.chain_pem)
            .ok_or("the certificate's validity does not parse")?;
        if !crate::util::lock(&self.schedule).issued(name, validity, now, jitter()) {
            return Err(format!(
                "acme.max-names ({}) reached: no room for {name}",
                self.cfg.max_names
            ));
        }
        self.certs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), (certified, validity.1));
        Ok(validity)
    }

    /// Starts ordering and renewing in the background.
    pub(crate) fn spawn(self: Arc<Self>, state: Arc<EdgeState>) -> JoinHandle<()> {
        tokio::spawn(self.run(state))
    }

    async fn run(self: Arc<Self>, state: Arc<EdgeState>) {
        let slots = Arc::new(Semaphore::new(self.cfg.concurrency));
        loop {
            let changed = state.registry.changed().notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wanted = self.wanted(&state);
            let room = slots.available_permits();
            let due = crate::util::lock(&self.schedule).due(&wanted, unix_now(), room);
            if !due.is_empty() {
                match self.account().await {
                    Ok(account) => {
                        for name in due {
                            let Ok(permit) = slots.clone().try_acquire_owned() else {
                                // Not reached: `due` took no more than the free slots.
                                crate::util::lock(&self.schedule).cancel(&name);
                                continue;
                            };
                            let me = self.clone();
                            let account = account.clone();
                            tokio::spawn(async move {
                                me.order(&account, &name).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => {
                        for name in due {
                            self.failed(&name, &format!("account: {e}"));
                        }
                    }
                }
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// The names to hold certificates for: those served, less those a `certs:` file
    /// covers (whose ACME certificates, kept from before, are dropped from use).
    fn wanted(&self, state: &EdgeState) -> Vec<String> {
        let served = state.registry.served_names(self.cfg.max_names);
        let files = state.certs.borrow().clone();
        let covered = |name: &str| -> bool {
            let Some(files) = &files else { return false };
            let Ok(sn) = rustls::pki_types::ServerName::try_from(name.to_string()) else {
                return false;
            };
            files.others.iter().any(|ck| {
                ck.cert.first().is_some_and(|leaf| {
                    webpki::EndEntityCert::try_from(leaf)
                        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&sn).is_ok())
                })
            })
        };
        let now = unix_now();
        self.certs
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|n, (_, not_after)| *not_after > now && !covered(n));
        served
            .into_iter()
            // ACME servers issue for names in public DNS: not for IP addresses or
            // single labels (`localhost`), which would only fail and back off.
            .filter(|n| n.contains('.') && n.parse::<std::net::IpAddr>().is_err())
            .filter(|n| !covered(n))
            .collect()
    }

    /// The account: loaded or made on first use (and again after a failure).
    async fn account(&self) -> Result<Account, String> {
        let mut slot = self.account.lock().await;
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let der = self.store.account_key()?;
        let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(der);
        let key = instant_acme::Key::from_pkcs8_der(pkcs8.clone_key())
            .map_err(|e| format!("account key: {e}"))?;
        let builder = Account::builder_with_http(Box::new(self.client.clone()));
        let (account, _) = builder
            .create_from_key(
                (key, rustls::pki_types::PrivateKeyDer::Pkcs8(pkcs8)),
                self.cfg.directory.clone(),
            )
            .await
            .map_err(|e| format!("{}: {e}", self.cfg.directory))?;
        if let Some(email) = &self.cfg.email {
            let contact = format!("mailto:{email}");
            if let Err(e) = account.update_contacts(&[contact.as_str()]).await {
                log::warn!("acme: contact {email} not recorded: {e}");
            }
        }
        log::info!("acme: account {} at {}", account.id(), self.cfg.directory);
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Puts in force the certificate the store keeps for `name` when it is newer than
    /// the one in force (another edge sharing the store ordered it); whether it did.
    pub(crate) fn learn_cert(&self, name: &str) -> bool {
        let now = unix_now();
        let current = self
            .certs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map_or(0, |(_, not_after)| *not_after);
        let stored = match self.store.load(name) {
            Ok(Some(s)) => s,
            Ok(None) => return false,
            Err(e) => {
                log::warn!("acme: shared certificate for {name}: {e}");
                return false;
            }
        };
        let newer = store::validity_of_pem(&stored.chain_pem)
            .is_some_and(|(_, not_after)| not_after > current.max(now));
        if !newer {
            return false;
        }
        match self.install(name, &stored, now) {
            Ok((_, not_after)) => {
                crate::util::lock(&self.logged).remove(name);
                log::info!(
                    "acme: certificate for {name} from {} in force, valid for {}",
                    self.shown,
                    human(not_after.saturating_sub(now))
                );
                true
            }
            Err(e) => {
                log::warn!("acme: shared certificate for {name}: {e}");
                false
            }
        }
    }

    /// Answers a challenge another edge sharing the store published.
    pub(crate) fn learn_answer(&self, answer: &Answer) {
        match answer {
            Answer::Alpn { name, digest } => match issue::alpn_certificate(name, digest) {
                Ok(cert) => self.answers.put_alpn(name, cert),
                Err(e) => log::warn!("acme: shared tls-alpn-01 answer for {name}: {e}"),
            },
            Answer::Http { token, key_auth } => self.answers.put_http(token, key_auth),
        }
    }

    /// Withdraws an answer another edge published (its order ended).
    pub(crate) fn forget_answer(&self, kind: &str, key: &str) {
        match kind {
            "alpn" => self.answers.take_alpn(key),
            _ => self.answers.take_http(key),
        }
    }

    /// One order for `name`, its result put in force and kept, or logged.
    async fn order(&self, account: &Account, name: &str) {
        // Another edge sharing the store may have renewed it already.
        if self.learn_cert(name) {
            return;
        }
        if !self.store.lease(name, LEASE) {
            // Another edge sharing the store orders it: take its certificate later.
            crate::util::lock(&self.schedule).failed(name, unix_now());
            return;
        }
        let turn = crate::util::lock(&self.schedule).failures(name) as usize;
        let challenge = self
            .challenges
            .get(turn % self.challenges.len().max(1))
            .copied()
            .unwrap_or(Challenge::TlsAlpn01);
        log::info!(
            "acme: ordering a certificate for {name} ({})",
            challenge.as_str()
        );
        let result = issue::order(account, name, challenge, &self.answers, &self.store).await;
        let now = unix_now();
        let outcome = result.and_then(|stored| {
            let validity = self.install(name, &stored, now)?;
            self.store.save(name, &stored)?;
            Ok(validity)
        });
        match outcome {
            Ok((_, not_after)) => {
                crate::util::lock(&self.logged).remove(name);
                log::info!(
                    "acme: certificate for {name} in force, valid for {}",
                    human(not_after.saturating_sub(now))
                );
            }
            Err(e) => self.failed(name, &format!("{} challenge: {e}", challenge.as_str())),
        }
    }

    /// Backs off `name` and logs `why` unless it was the last reason logged for it.
    fn failed(&self, name: &str, why: &str) {
        let wait = crate::util::lock(&self.schedule).failed(name, unix_now());
        let mut logged = crate::util::lock(&self.logged);
        if logged.get(name).map(String::as_str) == Some(why) {
            log::debug!("acme: {name}: {why}; retrying in {}", human(wait));
            return;
        }
        log::warn!(
            "acme: no certificate for {name}: {why}; retrying in {}",
            human(wait)
        );
        if logged.len() < self.cfg.max_names || logged.contains_key(name) {
            logged.insert(name.to_string(), why.to_string());
        }
    }

    /// The key authorization for an HTTP-01 request path, if it names a token of an
    /// order in progress.
    fn http01_answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        crate::util::lock(&self.answers.http)
            .get(token)
            .map(|(a, _)| a.clone())
    }

    /// `mailslot_edge_certificate_expiry_seconds{name}`: when each certificate expires.
    fn metrics(&self, out: &mut String) {
        let mut exp = crate::util::lock(&self.schedule).expiries();
        exp.sort_by_key(|(_, t)| *t);
        exp.truncate(MAX_METRIC_NAMES);
        let _ = writeln!(
            out,
            "# HELP mailslot_edge_certificate_expiry_seconds When the ACME certificate of \
             each name expires (Unix time; the {MAX_METRIC_NAMES} soonest)."
        );
        let _ = writeln!(out, "# TYPE mailslot_edge_certificate_expiry_seconds gauge");
        for (name, t) in exp {
            let _ = writeln!(
                out,
                "mailslot_edge_certificate_expiry_seconds{{name=\"{name}\"}} {t}"
            );
        }
    }
}

/// Answers an HTTP-01 validation request on the HTTP listener (`front` asks before
/// routing); `None` lets the request through (another path, or a token of no order
/// in progress: the device may answer its own).
pub(crate) fn http01(state: &EdgeState, scheme: &str, path: &str) -> Option<Response<Body>> {
    if scheme != "http" || !path.starts_with(HTTP01_PREFIX) {
        return None;
    }
    let answer = state.acme.get()?.http01_answer(path)?;
    let mut resp = Response::new(body::full(bytes::Bytes::from(answer)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

/// Whether a finished TLS handshake was a TLS-ALPN-01 validation: the connection
/// carries nothing more (RFC 8737, section 3) and `front` closes it.
pub(crate) fn is_validation(alpn: Option<&[u8]>) -> bool {
    alpn == Some(ACME_TLS_ALPN)
}

/// Appends the certificate expiry gauge to `/metrics` (nothing without `acme:`).
pub(crate) fn append_metrics(out: &mut String, state: &EdgeState) {
    if let Some(acme) = state.acme.get() {
        acme.metrics(out);
    }
}

/// The HTTPS listener's certificate choice with ACME: the TLS-ALPN-01 answer for a
/// validation handshake, else the ACME certificate of the SNI name, else `inner`'s
/// (the `certs:` files and the edge's own).
#[derive(Debug)]
pub(crate) struct Resolver<R> {
    acme: Arc<Acme>,
    inner: R,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme")
            .field("directory", &self.cfg.directory)
            .finish_non_exhaustive()
    }
}

impl<R: ResolvesServerCert> Resolver<R> {
    pub(crate) fn new(acme: Arc<Acme>, inner: R) -> Resolver<R> {
        Resolver { acme, inner }
    }
}

impl<R: ResolvesServerCert> ResolvesServerCert for Resolver<R> {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        let validation = hello
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == ACME_TLS_ALPN));
        if validation {
            // Only the answer of an order in progress; anything else fails the handshake.
            let name = name?;
            return crate::util::lock(&self.acme.answers.alpn)
                .get(&name)
                .map(|(c, _)| c.clone());
        }
        if let Some(name) = &name {
            let certs = self.acme.certs.read().unwrap_or_else(|p| p.into_inner());
            if let Some((ck, _)) = certs.get(name) {
                return Some(ck.clone());
            }
        }
        self.inner.resolve(hello)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A number in [0, 1) from the system's random source.
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// "3d 4h", "5m 2s", "40s".
fn human(secs: u64) -> String {
    match secs {
        s if s >= 86400 => format!("{}d {}h", s / 86400, s % 86400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}
