//! The semantic invariants of a [`DeviceConfig`], checked after every decode and before
//! every encode, so a config that exists is one the connector can run.
//!
//! Field names in the messages are the YAML ones (`ingress[3].hostname`,
//! `edge-ca`), so an operator can find what to fix in the file they wrote.

use std::net::Ipv6Addr;

use super::{DeviceConfig, IngressRule, Service, MAX_DATA_CAP, MAX_HA_CONNECTIONS};
use crate::hostname::HostError;

/// A config that breaks one of the invariants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field holds a value that is not allowed.
    #[error("{field}: {reason}")]
    Invalid {
        /// The YAML path of the field, e.g. `ingress[2].service`.
        field: std::string::String,
        /// What is wrong with it.
        reason: std::string::String,
    },
    /// No edge address is listed.
    #[error("edge: at least one edge address is required")]
    NoEdges,
    /// `ha-connections` is 0 or above [`MAX_HA_CONNECTIONS`].
    #[error("ha-connections: {0} is out of range 1..={MAX_HA_CONNECTIONS}")]
    HaConnections(u8),
    /// The keep-alive interval does not sit below the idle timeout.
    #[error("keepalive ({keepalive}s) must be shorter than idle-timeout ({idle}s)")]
    KeepaliveNotBelowIdle {
        /// `keepalive`, seconds.
        keepalive: u16,
        /// `idle-timeout`, seconds.
        idle: u16,
    },
    /// The ingress list is empty.
    #[error("ingress: at least one rule is required, the last one a catch-all such as `- service: http_status:404`")]
    NoRules,
    /// The last rule has a hostname or a path, so some requests match nothing.
    #[error("ingress[{0}]: the last rule must be a catch-all (no hostname, no path), such as `- service: http_status:404`")]
    NoCatchAll(usize),
    /// A catch-all rule comes before the last, so the rules after it are never used.
    #[error("ingress[{0}]: this rule matches every request, so the rules after it are never used; only the last rule may be a catch-all")]
    CatchAllNotLast(usize),
    /// A CA index points past the embedded certificates.
    #[error("{field}: CA index {index} out of range ({count} embedded)")]
    CaIndex {
        /// The YAML path of the field holding the index.
        field: std::string::String,
        /// The index found.
        index: u8,
        /// How many CAs are embedded.
        count: usize,
    },
    /// The embedded CAs are not each used once, in order of first use.
    #[error("cas[{0}]: embedded CAs must each be used, once, in order of first use")]
    CaOrder(usize),
    /// An embedded CA is not a DER certificate.
    #[error("cas[{0}]: not a DER certificate")]
    CaNotDer(usize),
}

fn invalid(
    field: impl Into<std::string::String>,
    reason: impl Into<std::string::String>,
) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl DeviceConfig {
    /// Checks every invariant; the first one broken is returned.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        check_text(&self.tunnel).map_err(|r| invalid("tunnel", r))?;
        let token_field = match self.enroll_key() {
            Some(_) => "enroll",
            None => "token",
        };
        check_token(&self.token).map_err(|r| invalid(token_field, r))?;
        if self.edges.is_empty() {
            return Err(ConfigError::NoEdges);
        }
        for (i, edge) in self.edges.iter().enumerate() {
            parse_edge_addr(edge)
                .map_err(|r| invalid(format!("edge[{i}]"), format!("{edge:?}: {r}")))?;
        }
        if self.ha_connections == 0 || self.ha_connections > MAX_HA_CONNECTIONS {
            return Err(ConfigError::HaConnections(self.ha_connections));
        }
        if self.keepalive_secs == 0 {
            return Err(invalid("keepalive", "must be at least 1s"));
        }
        if self.keepalive_secs >= self.idle_timeout_secs {
            return Err(ConfigError::KeepaliveNotBelowIdle {
                keepalive: self.keepalive_secs,
                idle: self.idle_timeout_secs,
            });
        }
        self.validate_cas()?;
        let Some(last) = self.ingress.len().checked_sub(1) else {
            return Err(ConfigError::NoRules);
        };
        let enrolled = self.enroll_key().is_some();
        for (i, rule) in self.ingress.iter().enumerate() {
            validate_rule(i, rule, enrolled)?;
            let catch_all = rule.hostname.is_none() && rule.path.is_none();
            if i == last && !catch_all {
                return Err(ConfigError::NoCatchAll(i));
            }
            if i != last && catch_all {
                return Err(ConfigError::CatchAllNotLast(i));
            }
        }
        self.validate_cap()
    }

    /// `data-cap` within 1 ..= [`MAX_DATA_CAP`]; `essential` marks only rules that exist.
    fn validate_cap(&self) -> Result<(), ConfigError> {
        match self.data_cap {
            Some(0) => return Err(invalid("data-cap", "must be more than 0 bytes")),
            Some(cap) if cap > MAX_DATA_CAP => {
                return Err(invalid(
                    "data-cap",
                    format!("{cap} bytes is above the limit of 1TiB ({MAX_DATA_CAP} bytes)"),
                ))
            }
            _ => {}
        }
        let marked = |i: &usize| self.essential & (1u64 << i) != 0;
        if let Some(i) = (self.ingress.len()..64).find(marked) {
            return Err(invalid(
                format!("ingress[{i}].essential"),
                "marks a rule that does not exist",
            ));
        }
        Ok(())
    }

    /// Every CA reference in use order: the edge CA, then each rule's `ca-pool`.
    fn ca_refs(&self) -> impl Iterator<Item = (std::string::String, u8)> + '_ {
        let edge = self.edge_ca.map(|i| ("edge-ca".to_string(), i));
        let rules = self.ingress.iter().enumerate().filter_map(|(r, rule)| {
            rule.origin
                .ca_pool
                .map(|i| (format!("ingress[{r}].origin-request.ca-pool"), i))
        });
        edge.into_iter().chain(rules)
    }

    /// CAs must be in range, DER, and listed once each in order of first use: that
    /// makes `config show` followed by `config compile` give back the same bytes.
    fn validate_cas(&self) -> Result<(), ConfigError> {
        for (i, der) in self.cas.iter().enumerate() {
            if !is_der_sequence(der) {
                return Err(ConfigError::CaNotDer(i));
            }
        }
        // `next` is the index a reference to a CA not seen before must have.
        let mut next = 0usize;
        for (field, index) in self.ca_refs() {
            let index_usize = usize::from(index);
            if index_usize >= self.cas.len() {
                return Err(ConfigError::CaIndex {
                    field,
                    index,
                    count: self.cas.len(),
                });
            }
            if index_usize == next {
                next += 1;
            } else if index_usize > next {
                return Err(ConfigError::CaOrder(next));
            }
        }
        if next != self.cas.len() {
            return Err(ConfigError::CaOrder(next));
        }
        for (i, der) in self.cas.iter().enumerate() {
            if self.cas.iter().take(i).any(|earlier| earlier == der) {
                return Err(ConfigError::CaOrder(i));
            }
        }
        Ok(())
    }
}

fn validate_rule(i: usize, rule: &IngressRule, enrolled: bool) -> Result<(), ConfigError> {
    if let Some(hostname) = &rule.hostname {
        check_device_hostname(hostname, enrolled).map_err(|r| {
            invalid(
                format!("ingress[{i}].hostname"),
                format!("{hostname:?}: {r}"),
            )
        })?;
    }
    if let Some(path) = &rule.path {
        if path.is_empty() {
            return Err(invalid(format!("ingress[{i}].path"), "empty"));
        }
        check_text(path).map_err(|r| invalid(format!("ingress[{i}].path"), r))?;
    }
    let field = || format!("ingress[{i}].service");
    match &rule.service {
        Service::Http { host, port, .. } | Service::Stream { host, port, .. } => {
            check_host(host).map_err(|r| invalid(field(), format!("host {host:?}: {r}")))?;
            if *port == 0 {
                return Err(invalid(field(), "port 0"));
            }
        }
        Service::Unix { path, .. } | Service::UnixStream { path } => {
            if !path.starts_with('/') {
                return Err(invalid(
                    field(),
                    format!("socket path {path:?} is not absolute"),
                ));
            }
            check_text(path).map_err(|r| invalid(field(), r))?;
        }
        Service::HttpStatus(code) => {
            if !(100..=599).contains(code) {
                return Err(invalid(
                    field(),
                    format!("status code {code} is out of range 100..=599"),
                ));
            }
        }
    }
    let origin = &rule.origin;
    let field = |name: &str| format!("ingress[{i}].origin-request.{name}");
    if let Some(h) = &origin.http_host_header {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                field("http-host-header"),
                format!("{h:?}: not a valid Host header"),
            ));
        }
    }
    if let Some(name) = &origin.origin_server_name {
        check_host(name)
            .map_err(|r| invalid(field("origin-server-name"), format!("{name:?}: {r}")))?;
    }
    if origin.connect_timeout_ms == 0 {
        return Err(invalid(field("connect-timeout"), "must be above 0"));
    }
    Ok(())
}

/// Free text (tunnel name, path pattern): not empty, no control characters.
fn check_text(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if s.chars().any(char::is_control) {
        return Err("holds control characters");
    }
    Ok(())
}

/// A token: not empty, printable ASCII without spaces.
fn check_token(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("empty");
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("holds spaces, control or non-ASCII characters");
    }
    Ok(())
}

/// A rule hostname: a hostname pattern in canonical form (see [`crate::hostname`]), exact
/// or `*.` followed by an exact name (the edge claims these for the tunnel).
pub(crate) fn check_rule_hostname(name: &str) -> Result<(), &'static str> {
    crate::hostname::check_pattern(name).map_err(HostError::reason)?;
    if name == "*" || !crate::hostname::is_routable(name) {
        return Err("'*' is only allowed as a leading \"*.\"");
    }
    Ok(())
}

/// A rule hostname of a config that may (`enrolled`) or may not hold `{device}`: only as
/// a whole label, and checked as the longest name it expands to (a device id is
/// longer than the placeholder).
pub(crate) fn check_device_hostname(name: &str, enrolled: bool) -> Result<(), &'static str> {
    use crate::identity::{DEVICE_ID_LEN, DEVICE_PLACEHOLDER};
    if !name.contains(['{', '}']) {
        return check_rule_hostname(name);
    }
    if !enrolled {
        return Err(
            "`{device}` stands for the device id of an enrolled device: it needs \
                    `enroll:` in place of `token:`",
        );
    }
    if name
        .split('.')
        .any(|l| l.contains(['{', '}']) && l != DEVICE_PLACEHOLDER)
    {
        return Err("`{device}` must be a whole label, as in `{device}.fleet.example.com`");
    }
    // Any device id: all have the same length and alphabet.
    let id = "a".repeat(DEVICE_ID_LEN);
    check_rule_hostname(&crate::identity::expand(name, &id))
}

/// An origin or edge host: an IPv4 address, an IPv6 address (no brackets) or a
/// lowercase DNS name (underscores allowed, as in container names).
pub(crate) fn check_host(host: &str) -> Result<(), &'static str> {
    crate::hostname::check_dial_host(host).map_err(HostError::reason)
}

/// Splits an edge address `host:port` or `[v6]:port` and checks both parts.
pub(crate) fn parse_edge_addr(addr: &str) -> Result<(&str, u16), &'static str> {
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or("expected [IPv6]:port")?;
        host.parse::<Ipv6Addr>()
            .map_err(|_| "not an IPv6 address in brackets")?;
        (host, port)
    } else {
        let (host, port) = addr.rsplit_once(':').ok_or("expected host:port")?;
        if host.contains(':') {
            return Err("an IPv6 address needs brackets: [v6]:port");
        }
        check_host(host)?;
        (host, port)
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err("port is not a number in 1..=65535"),
        Ok(port) => Ok((host, port)),
    }
}

/// True when `der` is exactly one DER SEQUENCE (the outer shape of a certificate).
pub(crate) fn is_der_sequence(der: &[u8]) -> bool {
    let [0x30, first, rest @ ..] = der else {
        return false;
    };
    let (len, rest) = if *first < 0x80 {
        (usize::from(*first), rest)
    } else {
        let n = usize::from(*first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return false;
        }
        let (len_bytes, rest) = rest.split_at(n);
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    len == rest.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        assert!(check_rule_hostname("dev42.example.com").is_ok());
        assert!(check_rule_hostname("*.dev42.example.com").is_ok());
        assert!(check_rule_hostname("Dev42.example.com").is_err());
        assert!(check_rule_hostname("a..b").is_err());
        assert!(check_rule_hostname("-a.b").is_err());
        assert!(check_rule_hostname("a.*.b").is_err());
        assert!(check_rule_hostname("*").is_err());
        assert!(check_rule_hostname("my_app").is_err());
        assert!(check_host("my_app").is_ok());
        assert!(check_host("::1").is_ok());
        assert!(check_host("10.0.0.1").is_ok());
        assert!(check_rule_hostname(&"a".repeat(64)).is_err());
    }

    #[test]
    fn device_placeholder_only_as_a_whole_label_of_enrolled_configs() {
        let ok = |n| check_device_hostname(n, true);
        assert!(ok("{device}.fleet.example.com").is_ok());
        assert!(ok("ssh.{device}.fleet.example.com").is_ok());
        assert!(ok("*.{device}.fleet.example.com").is_ok());
        assert!(ok("plain.example.com").is_ok());
        for mid in [
            "x{device}.example.com",
            "{device}x.example.com",
            "{dev}.example.com",
        ] {
            assert!(ok(mid).unwrap_err().contains("whole label"), "{mid}");
        }
        assert!(ok("{device}").is_ok(), "one label of 16 is a name");
        let e = check_device_hostname("{device}.example.com", false).unwrap_err();
        assert!(e.contains("needs `enroll:`"), "{e}");
        // Checked as expanded: a device id is 16 bytes, the placeholder 8.
        let tail = |len: usize| {
            let mut t = std::string::String::new();
            while t.len() < len {
                t.push_str(if t.len() % 61 == 60 { "." } else { "b" });
            }
            t
        };
        let fits = format!("{{device}}.{}", tail(253 - 17));
        assert_eq!(crate::identity::expand(&fits, &"a".repeat(16)).len(), 253);
        assert!(ok(&fits).is_ok(), "{fits}");
        let long = format!("{{device}}.{}", tail(253 - 16));
        assert!(ok(&long).is_err());
    }

    #[test]
    fn edge_addrs() {
        assert_eq!(
            parse_edge_addr("edge.example.com:7844"),
            Ok(("edge.example.com", 7844))
        );
        assert_eq!(parse_edge_addr("[::1]:443"), Ok(("::1", 443)));
        assert!(parse_edge_addr("::1:443").is_err());
        assert!(parse_edge_addr("edge.example.com").is_err());
        assert!(parse_edge_addr("edge.example.com:0").is_err());
        assert!(parse_edge_addr("edge.example.com:65536").is_err());
        assert!(parse_edge_addr("[edge]:1").is_err());
    }

    #[test]
    fn der_shapes() {
        assert!(is_der_sequence(&[0x30, 0x00]));
        assert!(is_der_sequence(&[0x30, 0x02, 1, 2]));
        assert!(!is_der_sequence(&[0x30, 0x03, 1, 2]));
        let mut long = vec![0x30, 0x82, 0x01, 0x00];
        long.extend([0u8; 256]);
        assert!(is_der_sequence(&long));
        assert!(!is_der_sequence(&[0x30, 0x80]));
        assert!(!is_der_sequence(&[]));
        assert!(!is_der_sequence(&[0x31, 0x00]));
    }
}
