//! `mailslot config compile|show|check`: the config tools behind the CLI.

use std::fmt::Write;
use std::path::Path;

use super::{
    codec, store, yaml_out, DeviceConfig, IngressRule, OriginOptions, DEFAULT_CONNECT_TIMEOUT_MS,
};

/// `config compile INPUT --output OUTPUT`: YAML to binary, written atomically.
/// Returns a one-line summary for stdout.
pub fn compile(input: &Path, output: &Path) -> Result<std::string::String, std::string::String> {
    #[cfg(feature = "yaml")]
    {
        let config =
            super::yaml_in::compile_file(input).map_err(|e| format!("{}: {e}", input.display()))?;
        let bytes = codec::encode(&config).map_err(|e| format!("{}: {e}", input.display()))?;
        store::write_atomic(output, &bytes)
            .map_err(|e| format!("writing {}: {e}", output.display()))?;
        let mut out = format!(
            "{}: {} bytes: tunnel {}, {} edge(s), {} rule(s)\n",
            output.display(),
            bytes.len(),
            config.tunnel,
            config.edges.len(),
            config.ingress.len()
        );
        for w in config.nat_warning().into_iter().chain(config.cap_warning()) {
            out.push_str(&w);
            out.push('\n');
        }
        Ok(out)
    }
    #[cfg(not(feature = "yaml"))]
    {
        let _ = (input, output);
        Err("this build has no YAML support (built without the `yaml` feature): compile config.bin \
             on a workstation with a build with the default features, then copy it to the device"
            .into())
    }
}

/// Reads and decodes `path`: the config, its format version and the file size.
fn read(path: &Path) -> Result<(Box<DeviceConfig>, u16, usize), std::string::String> {
    let fail = |e: codec::DecodeError| format!("{}: {e}", path.display());
    let bytes = store::read_bounded(path).map_err(fail)?;
    let (config, version) = codec::decode_with_version(&bytes).map_err(fail)?;
    Ok((config, version, bytes.len()))
}

/// `config show FILE`: the binary file as YAML (secrets masked unless `show_secrets`).
pub fn show(path: &Path, show_secrets: bool) -> Result<std::string::String, std::string::String> {
    let (config, version, size) = read(path)?;
    let mut out = format!(
        "# {}: {size} bytes, format version {version}\n",
        path.display()
    );
    out.push_str(&yaml_out::to_yaml(&config, show_secrets));
    Ok(out)
}

/// `config check FILE`: validate and summarise.
pub fn check(path: &Path) -> Result<std::string::String, std::string::String> {
    let (config, version, size) = read(path)?;
    let mut out = summary(&config, &path.display().to_string(), version, size);
    if config.enroll_key().is_some() {
        out.push_str(&on_this_device(&config, &crate::identity::key_path(path)));
    }
    Ok(out)
}

/// What an enrolled config's hostnames become with the device key at `key`, if any.
fn on_this_device(config: &DeviceConfig, key: &Path) -> std::string::String {
    let id = match crate::identity::read_key(key) {
        Ok(Some(k)) => k.id().to_string(),
        Ok(None) => {
            return format!(
                "device:      no key yet ({} is made at first start)\n",
                key.display()
            )
        }
        Err(e) => return format!("device:      {e}\n"),
    };
    let mut out = format!("device:      {id} ({})\n", key.display());
    let names = config.ingress.iter().filter_map(|r| r.hostname.as_deref());
    for name in names.filter(|n| n.contains(crate::identity::DEVICE_PLACEHOLDER)) {
        let _ = writeln!(out, "  {name} is {}", crate::identity::expand(name, &id));
    }
    out
}

/// The human summary `config check` prints.
fn summary(config: &DeviceConfig, name: &str, version: u16, size: usize) -> std::string::String {
    let mut out = std::string::String::new();
    let o = &mut out;
    // Writing to a String cannot fail.
    let _ = writeln!(o, "{name}: valid, {size} bytes, format version {version}");
    let _ = writeln!(o, "tunnel:      {}", config.tunnel);
    let key = match config.enroll_key() {
        Some(_) => "enroll:",
        None => "token:",
    };
    let _ = writeln!(o, "{key:<12} {}", config.token_masked());
    let edges: std::vec::Vec<&str> = config.edges.iter().map(|e| e.as_str()).collect();
    let _ = writeln!(o, "edges:       {}", edges.join(", "));
    let edge_ca = match config.edge_ca.and_then(|i| config.cas.get(usize::from(i))) {
        Some(der) => format!("embedded certificate ({} bytes)", der.len()),
        None => "public web PKI".into(),
    };
    let _ = writeln!(o, "edge CA:     {edge_ca}");
    for pin in &config.edge_pins {
        let _ = writeln!(o, "edge pin:    {}", super::pin::pin_to_string(pin));
    }
    let _ = writeln!(o, "protocol:    {}", config.protocol.as_str());
    let _ = writeln!(
        o,
        "connections: {} (keepalive {}, idle timeout {}, grace period {})",
        config.ha_connections,
        yaml_out::secs(config.keepalive_secs),
        yaml_out::secs(config.idle_timeout_secs),
        yaml_out::secs(config.grace_period_secs)
    );
    if config.metered {
        let _ = writeln!(
            o,
            "metered:     keep-alive {} over HTTP/2",
            yaml_out::secs(config.keepalive_secs_on(super::Protocol::Http2))
        );
    }
    if let Some(cap) = config.data_cap {
        let _ = writeln!(
            o,
            "data cap:    {} a day; past it only essential rules are served",
            yaml_out::size(cap)
        );
    }
    for w in config.nat_warning().into_iter().chain(config.cap_warning()) {
        let _ = writeln!(o, "{w}");
    }
    let _ = writeln!(o, "rules:       {}", config.ingress.len());
    for (i, rule) in config.ingress.iter().enumerate() {
        let essential = if config.is_essential(i) {
            "  (essential)"
        } else {
            ""
        };
        let _ = writeln!(o, "  {}{essential}", rule_line(rule));
    }
    out
}

/// One rule on one line: `api.example.com  ^/v1/  -> http://localhost:9000`.
pub(crate) fn rule_line(rule: &IngressRule) -> std::string::String {
    let mut line = rule.hostname.as_deref().unwrap_or("*").to_string();
    if let Some(path) = &rule.path {
        let _ = write!(line, "  {path}");
    }
    let _ = write!(line, "  -> {}", rule.service);
    let options = origin_flags(&rule.origin);
    if !options.is_empty() {
        let _ = write!(line, "  [{}]", options.join(", "));
    }
    line
}

fn origin_flags(o: &OriginOptions) -> std::vec::Vec<std::string::String> {
    let mut flags = std::vec::Vec::new();
    if o.no_tls_verify {
        flags.push("no-tls-verify".into());
    }
    if let Some(h) = &o.http_host_header {
        flags.push(format!("host {h}"));
    }
    if let Some(n) = &o.origin_server_name {
        flags.push(format!("server name {n}"));
    }
    if o.connect_timeout_ms != DEFAULT_CONNECT_TIMEOUT_MS {
        flags.push(format!(
            "connect timeout {}",
            yaml_out::millis(o.connect_timeout_ms)
        ));
    }
    if let Some(i) = o.ca_pool {
        flags.push(format!("CA #{i}"));
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::sample_config;

    #[test]
    fn summary_lines() {
        let s = summary(&sample_config(), "config.bin", 1, 1234);
        assert!(
            s.starts_with("config.bin: valid, 1234 bytes, format version 1\ntunnel:      dev42\n"),
            "{s}"
        );
        assert!(s.contains("token:       <masked, 300 bytes>\n"), "{s}");
        assert!(
            s.contains("\n  api.dev42.example.com  ^/v1/  -> http://localhost:9000\n"),
            "{s}"
        );
        assert!(
            s.contains(
                "\n  secure.dev42.example.com  -> https://localhost:8443  [no-tls-verify]\n"
            ),
            "{s}"
        );
        assert!(
            s.contains("\n  ssh.dev42.example.com  -> ssh://localhost\n"),
            "{s}"
        );
        assert!(s.ends_with("\n  *  -> http_status:404\n"), "{s}");
        assert!(!s.contains("t0kEn"));
    }

    #[test]
    fn check_says_what_enrolled_hostnames_become_here() {
        let dir = crate::config::testutil::TempDir::new();
        let path = dir.path().join("config.bin");
        let mut config = sample_config();
        config.token = "mse1.key".try_into().unwrap();
        config.ingress[0].hostname = Some("{device}.fleet.example.com".try_into().unwrap());
        store::write_atomic(&path, &codec::encode(&config).unwrap()).unwrap();
        let out = check(&path).unwrap();
        assert!(out.contains("\nenroll:      <masked, 8 bytes>\n"), "{out}");
        assert!(
            out.contains("\n  {device}.fleet.example.com  -> http://localhost:8080\n"),
            "{out}"
        );
        assert!(out.contains("device:      no key yet ("), "{out}");
        let key = crate::identity::load_or_create_key(&crate::identity::key_path(&path)).unwrap();
        let out = check(&path).unwrap();
        assert!(
            out.contains(&format!(
                "  {{device}}.fleet.example.com is {}.fleet.example.com\n",
                key.id()
            )),
            "{out}"
        );
    }

    #[cfg(not(feature = "yaml"))]
    #[test]
    fn compile_without_yaml_says_where_to_compile() {
        let msg = compile(Path::new("config.yml"), Path::new("config.bin")).unwrap_err();
        assert!(
            msg.contains("no YAML support") && msg.contains("workstation"),
            "{msg}"
        );
    }
}
