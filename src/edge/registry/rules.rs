//! A connection's rule table: the rules a connector registered, checked against its
//! token and compiled for matching (first match wins). Which connection a request goes
//! to is the registry's business; this module only matches within one table.

use std::sync::Arc;

use super::paths::PathTable;
use crate::edge::token::{pattern_allows, TunnelClaims};
use crate::hostname::HostPattern;
use crate::wire::{RuleAction, RuleInfo};

/// Most rules one connection may register.
pub(crate) const MAX_RULES: usize = 64;

/// A rule ready for matching.
pub(crate) struct Rule {
    /// Exact or `*.` (see [`HostPattern::is_routable`]).
    pub hostname: Option<HostPattern>,
    /// Whether the rule has a path pattern (compiled in [`Rules::paths`]).
    pub(crate) has_path: bool,
    pub action: RuleAction,
    pub host_header: Option<String>,
}

/// A connection's rule table.
pub(crate) struct Rules {
    pub generation: u32,
    pub rules: Vec<Rule>,
    /// The rules' path patterns, shared with every table that has the same ones.
    pub paths: Arc<PathTable>,
}

impl Rules {
    /// Checks and compiles rules registered by a connector holding `claims`.
    pub(crate) fn compile(
        generation: u32,
        infos: &[RuleInfo],
        claims: &TunnelClaims,
    ) -> Result<Rules, String> {
        if infos.is_empty() || infos.len() > MAX_RULES {
            return Err(format!(
                "a rule table holds 1 to {MAX_RULES} rules, not {}",
                infos.len()
            ));
        }
        let mut rules = Vec::with_capacity(infos.len());
        for (i, r) in infos.iter().enumerate() {
            let hostname = match &r.hostname {
                None => None,
                Some(h) => Some(rule_hostname(i, h, claims)?),
            };
            if let RuleAction::Status(code) = r.action {
                if !(100..=599).contains(&code) {
                    return Err(format!(
                        "ingress[{i}]: http_status:{code} is not a status code"
                    ));
                }
            }
            rules.push(Rule {
                hostname,
                has_path: r.path.is_some(),
                action: r.action,
                host_header: r.host_header.clone(),
            });
        }
        // `rules` is not empty (checked above), so `None` does not happen.
        if rules
            .last()
            .is_none_or(|last| last.hostname.is_some() || last.has_path)
        {
            return Err(
                "the last ingress rule must match everything (no hostname, no path)".into(),
            );
        }
        let paths = super::paths::table(infos)?;
        Ok(Rules {
            generation,
            rules,
            paths,
        })
    }

    /// The first rule matching `host` and `path`.
    pub(crate) fn matching(&self, host: &str, path: &str) -> Option<(u16, &Rule)> {
        self.rules.iter().enumerate().find_map(|(i, r)| {
            let host_ok = r.hostname.as_ref().is_none_or(|p| p.matches(host));
            let path_ok = !r.has_path
                || self
                    .paths
                    .get(i)
                    .is_some_and(|re| re.is_match(path.as_bytes()));
            (host_ok && path_ok).then_some((i as u16, r))
        })
    }

    /// Hostnames (exact or `*.`) this table names.
    pub(super) fn hostnames(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .filter_map(|r| r.hostname.as_ref().map(HostPattern::as_str))
    }
}

/// Rule `i`'s hostname as a pattern: exact or `*.` (a hostname is claimed by one
/// tunnel, so inner wildcards, which no look-up by name can find, are refused), and
/// allowed by the token.
fn rule_hostname(i: usize, h: &str, claims: &TunnelClaims) -> Result<HostPattern, String> {
    let pattern = HostPattern::parse(h).map_err(|e| format!("ingress[{i}] hostname {h:?}: {e}"))?;
    if !pattern.is_routable() {
        return Err(format!(
            "ingress[{i}] hostname {h:?}: a rule names an exact hostname or `*.` and one"
        ));
    }
    if !claims.hosts.iter().any(|p| pattern_allows(p, &pattern)) {
        return Err(format!(
            "hostname {h} is not allowed by this tunnel's token (it allows: {})",
            claims.hosts.join(", ")
        ));
    }
    Ok(pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(hosts: &[&str]) -> TunnelClaims {
        TunnelClaims {
            tunnel: "t".into(),
            id: [0; 16],
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            issued: 0,
            expires: u64::MAX,
        }
    }

    fn rule(host: Option<&str>, path: Option<&str>, action: RuleAction) -> RuleInfo {
        RuleInfo {
            hostname: host.map(String::from),
            path: path.map(String::from),
            action,
            host_header: None,
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let infos = vec![
            rule(
                Some("api.dev42.example.com"),
                Some("^/v1/"),
                RuleAction::Http,
            ),
            rule(Some("dev42.example.com"), None, RuleAction::Http),
            rule(Some("*.dev42.example.com"), None, RuleAction::Status(418)),
            rule(None, None, RuleAction::Status(404)),
        ];
        let r = Rules::compile(
            1,
            &infos,
            &claims(&["dev42.example.com", "*.dev42.example.com"]),
        )
        .unwrap();
        assert_eq!(r.matching("api.dev42.example.com", "/v1/x").unwrap().0, 0);
        assert_eq!(r.matching("api.dev42.example.com", "/v2/x").unwrap().0, 2);
        assert_eq!(r.matching("dev42.example.com", "/").unwrap().0, 1);
        assert_eq!(r.matching("other.example.com", "/").unwrap().0, 3);
    }

    #[test]
    fn token_limits_hostnames_and_catch_all_is_required() {
        let c = claims(&["dev42.example.com"]);
        let e = Rules::compile(
            1,
            &[
                rule(Some("bank.example.com"), None, RuleAction::Http),
                rule(None, None, RuleAction::Status(404)),
            ],
            &c,
        )
        .err()
        .unwrap();
        assert!(
            e.contains("bank.example.com") && e.contains("not allowed"),
            "{e}"
        );
        let e = Rules::compile(
            1,
            &[rule(Some("dev42.example.com"), None, RuleAction::Http)],
            &c,
        )
        .err()
        .unwrap();
        assert!(e.contains("last ingress rule"), "{e}");
        let e = Rules::compile(
            1,
            &[
                rule(None, Some("(unclosed"), RuleAction::Http),
                rule(None, None, RuleAction::Status(404)),
            ],
            &c,
        )
        .err()
        .unwrap();
        assert!(e.contains("path"), "{e}");
    }
}
