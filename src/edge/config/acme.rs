//! The `acme:` section of `edge.yml` as written and its checks, giving an
//! [`AcmeConfig`]. Parsing only: ordering, caching and serving certificates belong to
//! [`crate::edge::acme`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Let's Encrypt's production directory: the default.
pub(crate) const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`directory: staging`): untrusted certificates,
/// generous rate limits, for trying a setup out.
pub(crate) const LETS_ENCRYPT_STAGING: &str =
    "https://acme-staging-v02.api.letsencrypt.org/directory";
/// Default folder of the account key and the certificates, beside `edge.yml`.
pub(crate) const DEFAULT_ACME_DIR: &str = "acme";
/// Default and largest `max-names`: the certificates one edge obtains and keeps.
pub(crate) const DEFAULT_MAX_NAMES: usize = 1000;
pub(crate) const MAX_MAX_NAMES: usize = 10_000;
/// Default and largest `concurrency`: orders in progress at once.
pub(crate) const DEFAULT_CONCURRENCY: usize = 2;
pub(crate) const MAX_CONCURRENCY: usize = 16;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawAcme {
    directory: Option<String>,
    email: Option<String>,
    directory_ca: Option<PathBuf>,
    challenge: Option<OneOrMany>,
    dir: Option<PathBuf>,
    max_names: Option<usize>,
    concurrency: Option<usize>,
    renew_after: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// An ACME challenge the edge answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// `tls-alpn-01` (RFC 8737): answered on the HTTPS listener, in the TLS handshake.
    TlsAlpn01,
    /// `http-01`: answered on the HTTP listener at `/.well-known/acme-challenge/`.
    Http01,
}

impl Challenge {
    fn parse(s: &str) -> Result<Challenge, String> {
        match s {
            "tls-alpn-01" => Ok(Challenge::TlsAlpn01),
            "http-01" => Ok(Challenge::Http01),
            "dns-01" => Err(
                "acme.challenge: dns-01 is not supported (it needs the DNS provider's API; \
                 wildcard names need it, exact names do not)"
                    .into(),
            ),
            other => Err(format!(
                "acme.challenge: {other:?} is not tls-alpn-01 or http-01"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Challenge::TlsAlpn01 => "tls-alpn-01",
            Challenge::Http01 => "http-01",
        }
    }
}

/// The `acme:` section: certificates for the hostnames the edge's tunnels serve, from
/// an RFC 8555 server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// The directory URL (`directory:`; `staging` for Let's Encrypt's staging).
    pub directory: String,
    /// Contact address given to the ACME server (`email:`), without `mailto:`.
    pub email: Option<String>,
    /// PEM roots the ACME server's own HTTPS certificate must chain to
    /// (`directory-ca:`); the public roots when absent.
    pub directory_ca: Option<PathBuf>,
    /// Challenges in order of preference (`challenge:`, one or a list). When not set:
    /// `tls-alpn-01` then `http-01`, each only if its listener is on.
    pub challenges: Option<Vec<Challenge>>,
    /// Folder of the account key and the certificates (`dir:`, default `acme`).
    pub dir: PathBuf,
    /// Most names with a certificate (`max-names:`); names past it get none.
    pub max_names: usize,
    /// Most orders in progress at once (`concurrency:`).
    pub concurrency: usize,
    /// Renew this long after issue when that comes before two thirds of the lifetime
    /// (`renew-after:`; for tests, and CAs that issue long-lived certificates).
    pub renew_after: Option<Duration>,
}

impl AcmeConfig {
    pub(super) fn from_raw(
        raw: RawAcme,
        abs: impl Fn(PathBuf) -> PathBuf,
    ) -> Result<AcmeConfig, String> {
        let directory = match raw.directory.as_deref().map(str::trim) {
            None | Some("") | Some("letsencrypt") | Some("production") => LETS_ENCRYPT.into(),
            Some("staging") => LETS_ENCRYPT_STAGING.into(),
            Some(url) => {
                let uri: http::Uri = url
                    .parse()
                    .map_err(|_| format!("acme.directory: {url:?} is not a URL"))?;
                if uri.scheme_str() != Some("https") || uri.host().is_none() {
                    return Err(format!(
                        "acme.directory: {url:?} is not an https:// URL (RFC 8555 servers \
                         speak HTTPS), nor staging"
                    ));
                }
                url.to_string()
            }
        };
        let email = match raw.email {
            None => None,
            Some(e) => {
                let e = e.trim().trim_start_matches("mailto:").to_string();
                let ok = e.len() <= 254
                    && e.split_once('@').is_some_and(|(user, host)| {
                        !user.is_empty() && host.contains('.') && !host.starts_with('.')
                    })
                    && e.bytes().all(|b| b.is_ascii_graphic());
                if !ok {
                    return Err(format!("acme.email: {e:?} is not an email address"));
                }
                Some(e)
            }
        };
        let challenges = match raw.challenge {
            None => None,
            Some(c) => {
                let list = match c {
                    OneOrMany::One(s) => vec![s],
                    OneOrMany::Many(v) => v,
                };
                let mut out: Vec<Challenge> = Vec::new();
                for s in &list {
                    let c = Challenge::parse(s.trim())?;
                    if !out.contains(&c) {
                        out.push(c);
                    }
                }
                if out.is_empty() {
                    return Err("acme.challenge: name tls-alpn-01, http-01 or both".into());
                }
                Some(out)
            }
        };
        let max_names = raw.max_names.unwrap_or(DEFAULT_MAX_NAMES);
        if !(1..=MAX_MAX_NAMES).contains(&max_names) {
            return Err(format!("acme.max-names: 1 to {MAX_MAX_NAMES}"));
        }
        let concurrency = raw.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
        if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
            return Err(format!("acme.concurrency: 1 to {MAX_CONCURRENCY}"));
        }
        let renew_after = match raw.renew_after {
            None => None,
            Some(t) => {
                let d = super::parse_duration(&t).map_err(|e| format!("acme.renew-after: {e}"))?;
                if d < Duration::from_secs(1) {
                    return Err("acme.renew-after: at least 1s".into());
                }
                Some(d)
            }
        };
        Ok(AcmeConfig {
            directory,
            email,
            directory_ca: raw.directory_ca.map(&abs),
            challenges,
            dir: abs(raw.dir.unwrap_or_else(|| DEFAULT_ACME_DIR.into())),
            max_names,
            concurrency,
            renew_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::config::EdgeConfig;
    use std::path::Path;

    const BASE: &str = "cert: a\nkey: b\nsigning-key: c\n";

    fn parse(acme: &str) -> Result<Option<AcmeConfig>, String> {
        EdgeConfig::parse(&format!("{BASE}{acme}"), Path::new("/etc/edge")).map(|c| c.acme)
    }

    #[test]
    fn absent_is_off_and_empty_takes_the_defaults() {
        assert_eq!(parse("").unwrap(), None);
        let c = parse("acme: {}\n").unwrap().unwrap();
        assert_eq!(c.directory, LETS_ENCRYPT);
        assert_eq!(c.dir, Path::new("/etc/edge/acme"));
        assert_eq!(c.challenges, None);
        assert_eq!(c.max_names, DEFAULT_MAX_NAMES);
        assert_eq!(c.email, None);
    }

    #[test]
    fn every_key() {
        let c = parse(
            "acme:\n  directory: https://127.0.0.1:14000/dir\n  email: mailto:ops@example.com\n  \
             directory-ca: pebble.pem\n  challenge: [http-01, tls-alpn-01]\n  dir: /var/acme\n  \
             max-names: 5\n  concurrency: 1\n  renew-after: 10s\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.directory, "https://127.0.0.1:14000/dir");
        assert_eq!(c.email.as_deref(), Some("ops@example.com"));
        assert_eq!(
            c.directory_ca.as_deref(),
            Some(Path::new("/etc/edge/pebble.pem"))
        );
        assert_eq!(
            c.challenges,
            Some(vec![Challenge::Http01, Challenge::TlsAlpn01])
        );
        assert_eq!(c.dir, Path::new("/var/acme"));
        assert_eq!(c.renew_after, Some(Duration::from_secs(10)));
        let c = parse("acme:\n  directory: staging\n  challenge: http-01\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.directory, LETS_ENCRYPT_STAGING);
        assert_eq!(c.challenges, Some(vec![Challenge::Http01]));
    }

    #[test]
    fn bad_values_are_refused_with_the_key() {
        for (yaml, needle) in [
            ("acme:\n  directory: http://x/dir\n", "acme.directory"),
            ("acme:\n  directory: not a url\n", "acme.directory"),
            ("acme:\n  email: nobody\n", "acme.email"),
            ("acme:\n  challenge: dns-01\n", "dns-01 is not supported"),
            ("acme:\n  challenge: []\n", "acme.challenge"),
            ("acme:\n  max-names: 0\n", "acme.max-names"),
            ("acme:\n  concurrency: 99\n", "acme.concurrency"),
            ("acme:\n  renew-after: soon\n", "acme.renew-after"),
            ("acme:\n  directroy: x\n", "unknown field"),
        ] {
            let e = parse(yaml).unwrap_err();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
    }
}
