//! The ACME state the edges of a cluster share through Redis: one account, one
//! certificate per name, one edge ordering a name at a time, and the answers to the
//! ACME server's challenges at every edge (its validation connects to whichever edge
//! the DNS name leads it to, not necessarily the one that ordered).
//!
//! ```text
//!  mailslot:acme:account            string  the account key (PKCS#8 DER), set once
//!  mailslot:acme:names              set     names with a certificate (at most MAX_NAMES)
//!  mailslot:acme:cert:<name>        hash    chain, key: PEM texts
//!  mailslot:acme:lease:<name>       string  the member ordering it (expires: the lease)
//!  mailslot:acme:answer:alpn:<name> string  SHA-256 of the key authorization (expires)
//!  mailslot:acme:answer:http:<token> string the key authorization (expires)
//!  mailslot:acme:acks:<kind>:<key>  list    one entry per edge that put the answer in
//!                                           force (expires)
//!  mailslot:acme                    channel "cert NAME", "alpn NAME", "http TOKEN",
//!                                           "gone alpn NAME", "gone http TOKEN"
//! ```
//!
//! An edge that orders writes its answer, publishes it, and waits until as many edges
//! as received the message have acknowledged it (a `BLPOP` on the acks list, at most
//! [`ACK_WAIT`]) before it tells the ACME server to validate: each edge's follower
//! ([`follow`]) reads the answer, puts it in force (a TLS-ALPN-01 certificate made from
//! the digest, or the HTTP-01 text) and acknowledges. A certificate saved is published
//! too, and every edge puts it in force, so visitors reaching any edge get it (their
//! requests are forwarded to the edge holding the tunnel). After every (re)subscription
//! the follower reads every certificate again: what was published while it was away is
//! learnt then.
//!
//! Redis holds the certificates' private keys and the account key: keep it on the
//! edges' private network, with a password (docs/cluster.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::conn::Redis;
use crate::edge::acme::store::{Answer, CertStore, Stored};
use crate::edge::acme::Acme;

/// The channel certificates and answers are published on.
const CHANNEL: &str = "mailslot:acme";
const ACCOUNT: &str = "mailslot:acme:account";
const NAMES: &str = "mailslot:acme:names";
/// Most names with a shared certificate.
pub(crate) const MAX_NAMES: usize = 100_000;
/// How long a shared answer and its acknowledgements live.
const ANSWER_TTL: Duration = Duration::from_secs(600);
/// Longest wait for the edges' acknowledgements of an answer.
const ACK_WAIT: Duration = Duration::from_millis(1500);
/// Longest text accepted from the channel or an answer key (a name, a token, a key
/// authorization are far shorter).
const MAX_TEXT: usize = 1024;
/// Wait before subscribing again, doubling up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How often a quiet subscription is pinged, and the longest wait for its answer.
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps a certificate once the name is known or there is room, and publishes it:
/// KEYS cert, names, channel; ARGV name, chain, key, bound.
const SAVE: &str = "if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 and \
    redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[4]) then return -1 end \
    redis.call('HSET', KEYS[1], 'chain', ARGV[2], 'key', ARGV[3]) \
    redis.call('SADD', KEYS[2], ARGV[1]) \
    redis.call('PUBLISH', KEYS[3], 'cert ' .. ARGV[1]) return 1";

fn cert_key(name: &str) -> String {
    format!("mailslot:acme:cert:{name}")
}

fn lease_key(name: &str) -> String {
    format!("mailslot:acme:lease:{name}")
}

fn answer_key(kind: &str, key: &str) -> String {
    format!("mailslot:acme:answer:{kind}:{key}")
}

fn acks_key(kind: &str, key: &str) -> String {
    format!("mailslot:acme:acks:{kind}:{key}")
}

/// A name or token safe in a key and a message: printable, no spaces, bounded.
fn is_plain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The [`CertStore`] of a cluster.
pub(crate) struct RedisCertStore {
    redis: Arc<Redis>,
    /// This edge, as leases name their holder.
    member: String,
}

impl RedisCertStore {
    pub(crate) fn new(redis: Arc<Redis>, member: String) -> RedisCertStore {
        RedisCertStore { redis, member }
    }

    /// The answer published under `kind` and `key`, if it is still there.
    fn read_answer(&self, kind: &str, key: &str) -> Result<Option<Answer>, String> {
        let value: Option<Vec<u8>> = self
            .redis
            .call(|con| redis::cmd("GET").arg(answer_key(kind, key)).query(con))
            .map_err(|e| e.to_string())?;
        let Some(value) = value.filter(|v| v.len() <= MAX_TEXT) else {
            return Ok(None);
        };
        Ok(match kind {
            "alpn" => <[u8; 32]>::try_from(value.as_slice())
                .ok()
                .map(|digest| Answer::Alpn {
                    name: key.to_string(),
                    digest,
                }),
            _ => String::from_utf8(value).ok().map(|key_auth| Answer::Http {
                token: key.to_string(),
                key_auth,
            }),
        })
    }

    /// Tells the edge that shared the answer this edge has it.
    fn ack(&self, kind: &str, key: &str) -> Result<(), String> {
        let acks = acks_key(kind, key);
        self.redis
            .call(|con| {
                redis::pipe()
                    .cmd("RPUSH")
                    .arg(&acks)
                    .arg(&self.member)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&acks)
                    .arg(ms(ANSWER_TTL))
                    .ignore()
                    .query::<()>(con)
            })
            .map_err(|e| e.to_string())
    }
}

impl CertStore for RedisCertStore {
    fn account_key(&self) -> Result<Vec<u8>, String> {
        let have: Option<Vec<u8>> = self
            .redis
            .call(|con| redis::cmd("GET").arg(ACCOUNT).query(con))
            .map_err(|e| e.to_string())?;
        if let Some(der) = have {
            return Ok(der);
        }
        let (_, der) = instant_acme::Key::generate_pkcs8()
            .map_err(|e| format!("cannot make an account key: {e}"))?;
        // Two edges making one at once: the first kept wins, both use it.
        let kept: Vec<u8> = self
            .redis
            .call(|con| {
                redis::pipe()
                    .cmd("SET")
                    .arg(ACCOUNT)
                    .arg(der.secret_pkcs8_der())
                    .arg("NX")
                    .ignore()
                    .cmd("GET")
                    .arg(ACCOUNT)
                    .query::<(Vec<u8>,)>(con)
            })
            .map_err(|e| e.to_string())?
            .0;
        if kept == der.secret_pkcs8_der() {
            log::info!("acme: new account key in {}", self.redis.shown());
        }
        Ok(kept)
    }

    fn load(&self, name: &str) -> Result<Option<Stored>, String> {
        let (chain, key): (Option<String>, Option<String>) = self
            .redis
            .call(|con| {
                redis::cmd("HMGET")
                    .arg(cert_key(name))
                    .arg("chain")
                    .arg("key")
                    .query(con)
            })
            .map_err(|e| e.to_string())?;
        Ok(chain
            .zip(key)
            .map(|(chain_pem, key_pem)| Stored { chain_pem, key_pem }))
    }

    fn names(&self, max: usize) -> Result<Vec<String>, String> {
        let mut names: Vec<String> = self
            .redis
            .call(|con| redis::cmd("SMEMBERS").arg(NAMES).query(con))
            .map_err(|e| e.to_string())?;
        names.retain(|n| is_plain(n));
        names.sort();
        names.truncate(max);
        Ok(names)
    }

    fn save(&self, name: &str, cert: &Stored) -> Result<(), String> {
        if !is_plain(name) {
            return Err(format!("{name:?} is not a hostname"));
        }
        let kept: i64 = self
            .redis
            .call(|con| {
                redis::cmd("EVAL")
                    .arg(SAVE)
                    .arg(3)
                    .arg(cert_key(name))
                    .arg(NAMES)
                    .arg(CHANNEL)
                    .arg(name)
                    .arg(&cert.chain_pem)
                    .arg(&cert.key_pem)
                    .arg(MAX_NAMES)
                    .query(con)
            })
            .map_err(|e| e.to_string())?;
        if kept < 0 {
            return Err(format!(
                "{MAX_NAMES} names have a certificate in redis already, the most it keeps"
            ));
        }
        Ok(())
    }

    fn lease(&self, name: &str, ttl: Duration) -> bool {
        let set: Result<Option<String>, _> = self.redis.call(|con| {
            redis::cmd("SET")
                .arg(lease_key(name))
                .arg(&self.member)
                .arg("NX")
                .arg("PX")
                .arg(ms(ttl))
                .query(con)
        });
        match set {
            Ok(v) => v.is_some(),
            Err(e) => {
                // No order without the lease: two edges would both order, and an
                // unreachable Redis cannot keep the certificate anyway.
                log::warn!("acme: no lease for {name}: {e}");
                false
            }
        }
    }

    fn share_answer(&self, answer: &Answer) -> Result<(), String> {
        let (kind, key) = answer.kind_key();
        if !is_plain(key) {
            return Err(format!("{key:?} cannot be shared"));
        }
        let value: Vec<u8> = match answer {
            Answer::Alpn { digest, .. } => digest.to_vec(),
            Answer::Http { key_auth, .. } => key_auth.as_bytes().to_vec(),
        };
        let acks = acks_key(kind, key);
        let (receivers,): (usize,) = self
            .redis
            .call(|con| {
                redis::pipe()
                    .cmd("DEL")
                    .arg(&acks)
                    .ignore()
                    .cmd("SET")
                    .arg(answer_key(kind, key))
                    .arg(&value)
                    .arg("PX")
                    .arg(ms(ANSWER_TTL))
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(CHANNEL)
                    .arg(format!("{kind} {key}"))
                    .query(con)
            })
            .map_err(|e| e.to_string())?;
        // Every edge subscribed (this one too) acknowledges once it answers.
        let deadline = Instant::now() + ACK_WAIT;
        let mut acked = 0;
        while acked < receivers {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let got: Option<(String, String)> = self
                .redis
                .call(|con| {
                    redis::cmd("BLPOP")
                        .arg(&acks)
                        .arg(left.as_secs_f64())
                        .query(con)
                })
                .map_err(|e| e.to_string())?;
            match got {
                Some(_) => acked += 1,
                None => break,
            }
        }
        if acked < receivers {
            log::warn!(
                "acme: {acked} of {receivers} edges acknowledged the {kind} answer for {key} \
                 within {ACK_WAIT:?}; validating anyway"
            );
        } else {
            log::debug!("acme: {kind} answer for {key} in force at {acked} edges");
        }
        Ok(())
    }

    fn withdraw_answer(&self, answer: &Answer) {
        let (kind, key) = answer.kind_key();
        let done: Result<(), _> = self.redis.call(|con| {
            redis::pipe()
                .cmd("DEL")
                .arg(answer_key(kind, key))
                .arg(acks_key(kind, key))
                .ignore()
                .cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(format!("gone {kind} {key}"))
                .ignore()
                .query(con)
        });
        if let Err(e) = done {
            log::debug!("acme: {kind} answer for {key} not withdrawn (it expires): {e}");
        }
    }
}

/// Follows what the other edges publish into `acme` (answers, certificates) until the
/// task is dropped.
pub(crate) async fn follow(client: redis::Client, store: Arc<RedisCertStore>, acme: Arc<Acme>) {
    let mut wait = RETRY_MIN;
    loop {
        match super::changes::subscribe(&client, CHANNEL).await {
            Ok(pubsub) => {
                wait = RETRY_MIN;
                // What was published while this edge was not listening.
                let (a, s) = (acme.clone(), store.clone());
                let _ = tokio::task::spawn_blocking(move || {
                    for name in s.names(MAX_NAMES).unwrap_or_default() {
                        a.learn_cert(&name);
                    }
                })
                .await;
                let why = serve(pubsub, &store, &acme).await;
                log::warn!("acme: shared certificates not followed ({why}); subscribing again");
            }
            Err(e) => log::debug!("acme: cannot subscribe for shared certificates: {e}"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// Reads the channel until the subscription ends; why it ended.
async fn serve(
    pubsub: redis::aio::PubSub,
    store: &Arc<RedisCertStore>,
    acme: &Arc<Acme>,
) -> String {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return "connection closed".into();
                };
                let text: String = msg.get_payload().unwrap_or_default();
                if text.len() <= MAX_TEXT {
                    let (store, acme) = (store.clone(), acme.clone());
                    // Off the runtime's threads: the store's calls block.
                    let _ = tokio::task::spawn_blocking(move || on_message(&text, &store, &acme)).await;
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => return format!("no answer to a ping within {}s", PING_TIMEOUT.as_secs()),
                }
            }
        }
    }
}

/// One message of the channel.
fn on_message(text: &str, store: &RedisCertStore, acme: &Acme) {
    let words: Vec<&str> = text.split(' ').collect();
    match words.as_slice() {
        ["cert", name] if is_plain(name) => {
            acme.learn_cert(name);
        }
        [kind @ ("alpn" | "http"), key] if is_plain(key) => match store.read_answer(kind, key) {
            Ok(Some(answer)) => {
                acme.learn_answer(&answer);
                if let Err(e) = store.ack(kind, key) {
                    log::debug!("acme: {kind} answer for {key} not acknowledged: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => log::warn!("acme: shared {kind} answer for {key} not read: {e}"),
        },
        ["gone", kind @ ("alpn" | "http"), key] => acme.forget_answer(kind, key),
        _ => log::debug!("acme: not a message of the shared certificates: {text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::cluster::testing::RedisServer;

    fn store(server: &RedisServer, member: &str) -> RedisCertStore {
        RedisCertStore::new(Arc::new(Redis::new(&server.addr()).unwrap()), member.into())
    }

    #[test]
    fn one_account_one_lease_holder_and_shared_certificates() {
        let server = RedisServer::start("certs");
        let (a, b) = (store(&server, "a:1"), store(&server, "b:1"));
        // Both edges end up with the key the first one kept.
        let key = a.account_key().unwrap();
        assert_eq!(b.account_key().unwrap(), key);
        assert_eq!(a.account_key().unwrap(), key);
        // One edge orders a name at a time; the lease expires by itself.
        assert!(a.lease("app.example.test", Duration::from_millis(300)));
        assert!(!b.lease("app.example.test", Duration::from_secs(60)));
        assert!(b.lease("other.example.test", Duration::from_secs(60)));
        let pttl: i64 = a
            .redis
            .call(|con| {
                redis::cmd("PTTL")
                    .arg(lease_key("app.example.test"))
                    .query(con)
            })
            .unwrap();
        assert!(
            (1..=300).contains(&pttl),
            "the lease expires by itself: {pttl}"
        );
        // A certificate saved by one is loaded and listed by the other.
        assert!(b.load("app.example.test").unwrap().is_none());
        let cert = Stored {
            chain_pem: "chain".into(),
            key_pem: "key".into(),
        };
        a.save("app.example.test", &cert).unwrap();
        let got = b.load("app.example.test").unwrap().unwrap();
        assert_eq!((got.chain_pem, got.key_pem), (cert.chain_pem, cert.key_pem));
        assert_eq!(b.names(10).unwrap(), vec!["app.example.test".to_string()]);
        assert!(a
            .save(
                "bad name",
                &Stored {
                    chain_pem: String::new(),
                    key_pem: String::new()
                }
            )
            .is_err());
    }

    #[test]
    fn answers_are_read_back_acknowledged_and_withdrawn() {
        let server = RedisServer::start("answers");
        let (a, b) = (store(&server, "a:1"), store(&server, "b:1"));
        let alpn = Answer::Alpn {
            name: "app.example.test".into(),
            digest: [7; 32],
        };
        let http = Answer::Http {
            token: "tok-1".into(),
            key_auth: "tok-1.thumbprint".into(),
        };
        // Nobody subscribed: nothing to wait for.
        let start = Instant::now();
        a.share_answer(&alpn).unwrap();
        a.share_answer(&http).unwrap();
        assert!(start.elapsed() < ACK_WAIT);
        assert_eq!(
            b.read_answer("alpn", "app.example.test").unwrap(),
            Some(alpn.clone())
        );
        assert_eq!(b.read_answer("http", "tok-1").unwrap(), Some(http.clone()));
        a.withdraw_answer(&alpn);
        assert_eq!(b.read_answer("alpn", "app.example.test").unwrap(), None);
        // An acknowledgement is what the sharing edge waits on: one pushed before the
        // wait ends it at once.
        b.ack("http", "tok-1").unwrap();
        let len: usize = b
            .redis
            .call(|con| redis::cmd("LLEN").arg(acks_key("http", "tok-1")).query(con))
            .unwrap();
        assert_eq!(len, 1);
    }
}
