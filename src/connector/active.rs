//! A device config compiled for serving ([`ActiveConfig`]): rules with their TLS
//! settings built once, the rule table as the edge sees it, and a generation number.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;

use crate::config::{DeviceConfig, Service};
use crate::wire::{RuleAction, RuleInfo};

/// A TLS client for one `https://` or `unix+tls:` origin.
pub(crate) struct OriginTls {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl OriginTls {
    pub(crate) async fn handshake<S>(
        &self,
        io: S,
    ) -> Result<tokio_rustls::client::TlsStream<S>, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.connector
            .connect(self.name.clone(), io)
            .await
            .map_err(|e| format!("TLS to origin {:?} failed: {e}", self.name))
    }
}

/// One rule, ready to serve.
#[derive(Clone)]
pub(crate) struct ActiveRule {
    pub(crate) hostname: Option<String>,
    pub(crate) service: Service,
    pub(crate) connect_timeout: Duration,
    pub(crate) tls: Option<Arc<OriginTls>>,
}

/// A config ready to serve streams: the one in force, or the one before a reload while
/// streams opened under it finish.
pub(crate) struct ActiveConfig {
    pub(crate) generation: u32,
    pub(crate) config: Box<DeviceConfig>,
    pub(crate) rules: Vec<ActiveRule>,
    pub(crate) rule_infos: Vec<RuleInfo>,
    /// The TLS client for the edges, built on first use and kept for this config's
    /// life: without an `edge-ca`, building it reads and parses the system's CA file.
    edge_tls: Mutex<Option<rustls::ClientConfig>>,
}

impl ActiveConfig {
    /// Builds the running form, with `{device}` in hostnames replaced by `device` (the
    /// device id, needed by a config with `enroll:`); fails on unusable embedded
    /// certificates.
    pub(crate) fn new(
        config: Box<DeviceConfig>,
        generation: u32,
        device: Option<&str>,
    ) -> Result<Self, String> {
        let device = match (config.enroll_key(), device) {
            (None, _) => None,
            (Some(_), Some(id)) => Some(id),
            (Some(_), None) => {
                return Err(
                    "this config enrols the device in a fleet (`enroll:`), which \
                            needs the device key: restart mailslot to use it"
                        .into(),
                )
            }
        };
        let hostname = |h: &Option<crate::config::Hostname>| {
            h.as_ref().map(|h| match device {
                Some(id) => crate::identity::expand(h, id),
                None => h.to_string(),
            })
        };
        let mut rules = Vec::with_capacity(config.ingress.len());
        let mut rule_infos = Vec::with_capacity(config.ingress.len());
        for (i, r) in config.ingress.iter().enumerate() {
            let tls = match &r.service {
                Service::Http {
                    host, tls: true, ..
                } => Some(host.as_str()),
                Service::Unix { tls: true, .. } => Some("localhost"),
                _ => None,
            };
            let tls = match tls {
                None => None,
                Some(default_name) => {
                    let ca = match r.origin.ca_pool {
                        None => None,
                        Some(idx) => Some(
                            config
                                .cas
                                .get(usize::from(idx))
                                .ok_or_else(|| {
                                    format!("ingress[{i}]: ca-pool index {idx} missing")
                                })?
                                .as_slice(),
                        ),
                    };
                    let cfg = crate::tls::origin_client_config(ca, r.origin.no_tls_verify)
                        .map_err(|e| format!("ingress[{i}]: origin TLS: {e}"))?;
                    let name = r
                        .origin
                        .origin_server_name
                        .as_deref()
                        .unwrap_or(default_name);
                    let name = ServerName::try_from(name.to_string())
                        .map_err(|e| format!("ingress[{i}]: origin server name {name:?}: {e}"))?;
                    Some(Arc::new(OriginTls {
                        connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
                        name,
                    }))
                }
            };
            rules.push(ActiveRule {
                hostname: hostname(&r.hostname),
                service: r.service.clone(),
                connect_timeout: Duration::from_millis(u64::from(
                    r.origin.connect_timeout_ms.max(1),
                )),
                tls,
            });
            rule_infos.push(RuleInfo {
                hostname: hostname(&r.hostname),
                path: r.path.as_ref().map(|p| p.to_string()),
                action: match r.service {
                    Service::Http { .. } | Service::Unix { .. } => RuleAction::Http,
                    Service::Stream { .. } | Service::UnixStream { .. } => RuleAction::Stream,
                    Service::HttpStatus(code) => RuleAction::Status(code),
                },
                host_header: r.origin.http_host_header.as_ref().map(|h| h.to_string()),
            });
        }
        Ok(ActiveConfig {
            generation,
            config,
            rules,
            rule_infos,
            edge_tls: Mutex::new(None),
        })
    }

    /// The TLS client config for dialing an edge. A failure (no CA file yet) is not
    /// kept: the next dial tries again.
    pub(crate) fn edge_tls(&self) -> Result<rustls::ClientConfig, String> {
        let mut cached = self.edge_tls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tls) = cached.as_ref() {
            return Ok(tls.clone());
        }
        let cfg = &self.config;
        let ca = cfg
            .edge_ca
            .and_then(|i| cfg.cas.get(usize::from(i)))
            .map(|c| c.as_slice());
        let tls = crate::tls::edge_client_config_pinned(ca, &cfg.edge_pins)
            .map_err(|e| format!("edge TLS setup: {e}"))?;
        *cached = Some(tls.clone());
        Ok(tls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::sample_config;

    #[test]
    fn enrolled_hostnames_are_expanded_with_the_device_id() {
        let mut config = sample_config();
        config.token = "mse1.key".try_into().unwrap();
        config.ingress[0].hostname = Some("{device}.fleet.example.com".try_into().unwrap());
        config.ingress[3].hostname = Some("ssh.{device}.fleet.example.com".try_into().unwrap());
        config.validate().unwrap();
        let rt = ActiveConfig::new(config.clone(), 1, Some("abcdefghijklmnop")).unwrap();
        let names: Vec<_> = rt
            .rule_infos
            .iter()
            .map(|r| r.hostname.as_deref())
            .collect();
        assert_eq!(names[0], Some("abcdefghijklmnop.fleet.example.com"));
        assert_eq!(names[3], Some("ssh.abcdefghijklmnop.fleet.example.com"));
        assert_eq!(names[1], Some("api.dev42.example.com"));
        assert_eq!(rt.rules[0].hostname.as_deref(), names[0]);
        // Without a device key an enrolled config cannot run.
        let e = ActiveConfig::new(config, 1, None).err().unwrap();
        assert!(e.contains("device key"), "{e}");
        // A token config ignores the device id.
        let rt = ActiveConfig::new(sample_config(), 1, Some("abcdefghijklmnop")).unwrap();
        assert_eq!(
            rt.rule_infos[0].hostname.as_deref(),
            Some("dev42.example.com")
        );
    }
}
