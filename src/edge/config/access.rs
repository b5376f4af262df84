//! The access sections of `edge.yml` as written (`access:`, `service-tokens:`,
//! `tcp-ports:`) and their checks, giving an [`AccessConfig`]. Parsing only: reading
//! secret files and deciding who gets in belong to [`crate::edge::policy`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::edge::cidr::Cidr;
use crate::edge::policy::{
    check_secret, AccessConfig, HostPattern, Method, Policy, SecretSource, TcpPortSpec,
};

/// Most `access:` entries.
pub(crate) const MAX_POLICIES: usize = 4096;
/// Most `service-tokens:`.
pub(crate) const MAX_SERVICE_TOKENS: usize = 4096;
/// Most `revoked-access-tokens:` (and `revoked-tunnels:`) entries.
pub(crate) const MAX_REVOKED: usize = 65_536;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

/// One `access:` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawPolicy {
    hostname: HostPattern,
    allow: OneOrMany<Method>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    service_tokens: Vec<String>,
    #[serde(default)]
    ip_allow: Vec<Cidr>,
}

/// One `service-tokens:` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawServiceToken {
    id: String,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
}

/// One `tcp-ports:` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawTcpPort {
    listen: String,
    hostname: String,
    ip_allow: Vec<Cidr>,
}

impl AccessConfig {
    /// Checks the raw sections; `abs` resolves relative paths.
    pub(crate) fn from_raw(
        access: Vec<RawPolicy>,
        service_tokens: Vec<RawServiceToken>,
        tcp_ports: Vec<RawTcpPort>,
        abs: impl Fn(PathBuf) -> PathBuf,
    ) -> Result<AccessConfig, String> {
        if access.len() > MAX_POLICIES {
            return Err(format!("access: at most {MAX_POLICIES} entries"));
        }
        if service_tokens.len() > MAX_SERVICE_TOKENS {
            return Err(format!(
                "service-tokens: at most {MAX_SERVICE_TOKENS} entries"
            ));
        }
        let mut tokens = Vec::new();
        for t in service_tokens {
            if t.id.is_empty() || t.id.len() > 64 || t.id.chars().any(|c| c.is_control()) {
                return Err(format!(
                    "service-tokens: id {:?} must be 1 to 64 printable characters",
                    t.id
                ));
            }
            if tokens.iter().any(|(id, _)| *id == t.id) {
                return Err(format!("service-tokens: id {} is defined twice", t.id));
            }
            let source = match (t.secret, t.secret_file) {
                (Some(s), None) => {
                    check_secret(&s).map_err(|e| format!("service-tokens: {}: {e}", t.id))?;
                    SecretSource::Inline(s)
                }
                (None, Some(p)) => SecretSource::File(abs(p)),
                _ => {
                    return Err(format!(
                        "service-tokens: {} needs one of secret or secret-file",
                        t.id
                    ))
                }
            };
            tokens.push((t.id, source));
        }
        let mut policies = Vec::new();
        for (i, p) in access.into_iter().enumerate() {
            let allow = p.allow.into_vec();
            if allow.is_empty() {
                return Err(format!("access[{i}] ({}): allow is empty", p.hostname));
            }
            for id in &p.service_tokens {
                if !tokens.iter().any(|(t, _)| t == id) {
                    return Err(format!(
                        "access[{i}] ({}): service token {id} is not defined in service-tokens",
                        p.hostname
                    ));
                }
            }
            if allow.contains(&Method::ServiceToken) && tokens.is_empty() {
                return Err(format!(
                    "access[{i}] ({}): allows service-token but service-tokens defines none",
                    p.hostname
                ));
            }
            policies.push(Policy {
                hostname: p.hostname,
                allow,
                users: p.users,
                service_tokens: p.service_tokens,
                ip_allow: p.ip_allow,
            });
        }
        let mut ports = Vec::new();
        for (i, t) in tcp_ports.into_iter().enumerate() {
            let listen: SocketAddr = t.listen.parse().map_err(|_| {
                format!(
                    "tcp-ports[{i}]: listen {:?} is not an address like 0.0.0.0:2222",
                    t.listen
                )
            })?;
            let host =
                HostPattern::parse(&t.hostname).map_err(|e| format!("tcp-ports[{i}]: {e}"))?;
            if host.as_str().contains('*') {
                return Err(format!(
                    "tcp-ports[{i}]: hostname must be one name, not a pattern"
                ));
            }
            if t.ip_allow.is_empty() {
                return Err(format!(
                    "tcp-ports[{i}]: ip-allow is required (use [0.0.0.0/0, \"::/0\"] to admit everyone)"
                ));
            }
            ports.push(TcpPortSpec {
                listen,
                hostname: host.as_str().to_string(),
                ip_allow: t.ip_allow,
            });
        }
        Ok(AccessConfig {
            policies,
            service_tokens: tokens,
            tcp_ports: ports,
            revoked_tokens: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_sections_are_checked() {
        let raw: Vec<RawPolicy> = yaml_serde::from_str(
            "- hostname: ssh.*.example.com\n  allow: signed\n  ip-allow: [10.0.0.0/8]\n",
        )
        .unwrap();
        let c = AccessConfig::from_raw(raw, Vec::new(), Vec::new(), |p| p).unwrap();
        assert_eq!(c.policies[0].allow, vec![Method::Signed]);
        let raw: Vec<RawPolicy> =
            yaml_serde::from_str("- hostname: x.example.com\n  allow: service-token\n").unwrap();
        assert!(AccessConfig::from_raw(raw, Vec::new(), Vec::new(), |p| p).is_err());
        let e = yaml_serde::from_str::<Vec<RawPolicy>>(
            "- hostname: x.example.com\n  allow: signed\n  ip-allow: [10.0.0.0/99]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("10.0.0.0/99"), "{e}");
        let ports: Vec<RawTcpPort> = yaml_serde::from_str(
            "- listen: 127.0.0.1:2222\n  hostname: db.example.com\n  ip-allow: []\n",
        )
        .unwrap();
        let e = AccessConfig::from_raw(Vec::new(), Vec::new(), ports, |p| p).unwrap_err();
        assert!(e.contains("ip-allow is required"), "{e}");
    }
}
