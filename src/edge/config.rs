//! `edge.yml`: the edge's settings, read once at start. Relative paths resolve against
//! the file's folder.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default tunnel listener (QUIC on UDP; HTTP/2 fallback on TCP).
pub const DEFAULT_TUNNEL_LISTEN: &str = "0.0.0.0:7844";
pub const DEFAULT_HTTP_LISTEN: &str = "0.0.0.0:80";
pub const DEFAULT_HTTPS_LISTEN: &str = "0.0.0.0:443";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raw {
    name: Option<String>,
    tunnel_listen: Option<String>,
    /// `none` disables.
    http_listen: Option<String>,
    https_listen: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    certs: Vec<RawCert>,
    signing_key: Option<PathBuf>,
    #[serde(default)]
    verify_keys: Vec<PathBuf>,
    origin_response_timeout: Option<RawDuration>,
    keepalive: Option<RawDuration>,
    idle_timeout: Option<RawDuration>,
    #[serde(default)]
    access: Vec<super::policy::RawPolicy>,
    #[serde(default)]
    service_tokens: Vec<super::policy::RawServiceToken>,
    #[serde(default)]
    tcp_ports: Vec<super::policy::RawTcpPort>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCert {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Secs(u64),
    Text(String),
}

/// A certificate chain and key, by path.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The edge's settings.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Name told to connectors in logs.
    pub name: String,
    pub tunnel_listen: SocketAddr,
    pub http_listen: Option<SocketAddr>,
    pub https_listen: Option<SocketAddr>,
    /// The edge's own certificate: tunnel listener, and default for HTTPS visitors.
    pub cert: CertPaths,
    /// More certificates for visitors, chosen by SNI.
    pub certs: Vec<CertPaths>,
    pub signing_key: Option<PathBuf>,
    pub verify_keys: Vec<PathBuf>,
    /// How long the origin may take to start its response (then 504).
    pub origin_response_timeout: Duration,
    pub keepalive: Duration,
    pub idle_timeout: Duration,
    /// `access:`, `service-tokens:` and `tcp-ports:`.
    pub access: super::policy::AccessConfig,
}

/// Parses "500ms", "15s", "2m", "1h" or a number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 15s"))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => return Err(format!("unknown duration unit {other:?} in {s:?}")),
    };
    Ok(d)
}

fn duration(v: Option<RawDuration>, default: Duration, key: &str) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(RawDuration::Secs(s)) => Ok(Duration::from_secs(s)),
        Some(RawDuration::Text(t)) => parse_duration(&t).map_err(|e| format!("{key}: {e}")),
    }
}

fn listen(v: Option<String>, default: &str, key: &str) -> Result<Option<SocketAddr>, String> {
    let v = v.unwrap_or_else(|| default.to_string());
    if v == "none" || v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| format!("{key}: {v:?} is not an address like 0.0.0.0:443"))
}

impl EdgeConfig {
    /// Reads and checks `edge.yml`.
    pub fn load(path: &Path) -> Result<EdgeConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, dir).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses `edge.yml` text, resolving relative paths against `dir`.
    pub fn parse(text: &str, dir: &Path) -> Result<EdgeConfig, String> {
        let raw: Raw = yaml_serde::from_str(text).map_err(|e| e.to_string())?;
        let abs = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
        let cert = CertPaths {
            cert: abs(raw
                .cert
                .ok_or("cert: the edge's certificate file is required")?),
            key: abs(raw
                .key
                .ok_or("key: the edge's certificate key file is required")?),
        };
        let tunnel_listen = listen(raw.tunnel_listen, DEFAULT_TUNNEL_LISTEN, "tunnel-listen")?
            .ok_or("tunnel-listen cannot be disabled")?;
        let verify_keys: Vec<PathBuf> = raw.verify_keys.into_iter().map(abs).collect();
        let signing_key = raw.signing_key.map(abs);
        if signing_key.is_none() && verify_keys.is_empty() {
            return Err("signing-key or verify-keys is required to check tunnel tokens".into());
        }
        let keepalive = duration(raw.keepalive, Duration::from_secs(15), "keepalive")?;
        let idle_timeout = duration(raw.idle_timeout, Duration::from_secs(60), "idle-timeout")?;
        if keepalive >= idle_timeout {
            return Err("keepalive must be shorter than idle-timeout".into());
        }
        let access = super::policy::AccessConfig::from_raw(
            raw.access,
            raw.service_tokens,
            raw.tcp_ports,
            abs,
        )?;
        Ok(EdgeConfig {
            name: raw.name.unwrap_or_else(|| "edge".into()),
            tunnel_listen,
            http_listen: listen(raw.http_listen, DEFAULT_HTTP_LISTEN, "http-listen")?,
            https_listen: listen(raw.https_listen, DEFAULT_HTTPS_LISTEN, "https-listen")?,
            cert,
            certs: raw
                .certs
                .into_iter()
                .map(|c| CertPaths {
                    cert: abs(c.cert),
                    key: abs(c.key),
                })
                .collect(),
            signing_key,
            verify_keys,
            origin_response_timeout: duration(
                raw.origin_response_timeout,
                Duration::from_secs(100),
                "origin-response-timeout",
            )?,
            keepalive,
            idle_timeout,
            access,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5y").is_err());
    }

    #[test]
    fn minimal_file_with_defaults_and_relative_paths() {
        let c = EdgeConfig::parse(
            "cert: edge.crt\nkey: edge.key\nsigning-key: signing.key\n",
            Path::new("/etc/mailslot-edge"),
        )
        .unwrap();
        assert_eq!(c.tunnel_listen, "0.0.0.0:7844".parse().unwrap());
        assert_eq!(c.http_listen, Some("0.0.0.0:80".parse().unwrap()));
        assert_eq!(c.cert.cert, Path::new("/etc/mailslot-edge/edge.crt"));
        assert_eq!(c.origin_response_timeout, Duration::from_secs(100));
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let e = EdgeConfig::parse(
            "cert: a\nkey: b\nsigning-key: c\nhttps-lisen: x\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("https-lisen") && e.contains("line 4"), "{e}");
    }
}
