use proptest::prelude::*;

use super::*;
use crate::config::codec::encode;
use crate::config::pem::der_to_pem;
use crate::config::testutil::{arb_config, fake_der, sample_config, TempDir};
use crate::config::yaml_out::to_yaml;

const TOKEN: &str = "t0kEn-_.";

fn token() -> std::string::String {
    TOKEN.repeat(38)[..300].to_string()
}

/// The example from the docs, reading `ca.pem` from `dir`.
fn example_yaml() -> std::string::String {
    format!(
        "\
tunnel: dev42
token: {}            # the token
edge: [\"edge.example.com:7844\"]
edge-ca: ca.pem
protocol: auto
ha-connections: 4
keepalive: 15s
idle-timeout: 45s
grace-period: 30s
ingress:
  - hostname: dev42.example.com
    service: http://localhost:8080
  - hostname: api.dev42.example.com
    path: ^/v1/
    service: http://localhost:9000
  - hostname: secure.dev42.example.com
    service: https://localhost:8443
    origin-request: {{ no-tls-verify: true }}
  - hostname: ssh.dev42.example.com
    service: ssh://localhost:22
  - service: http_status:404
",
        token()
    )
}

fn dir_with_ca() -> TempDir {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("ca.pem"), der_to_pem(&fake_der(300, 1))).unwrap();
    dir
}

fn compile(yaml: &str) -> Result<Box<DeviceConfig>, CompileError> {
    let dir = dir_with_ca();
    compile_str(yaml, dir.path())
}

fn err(yaml: &str) -> std::string::String {
    match compile(yaml) {
        Ok(_) => panic!("compiled:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

/// A minimal valid document with `extra` top-level lines and `rules` before the catch-all.
fn doc(extra: &str, rules: &str) -> std::string::String {
    format!("tunnel: t\ntoken: k\nedge: e.example.com\n{extra}ingress:\n{rules}  - service: http_status:404\n")
}

#[test]
fn example_compiles() {
    let config = compile(&example_yaml()).unwrap();
    assert_eq!(config, sample_config());
}

#[test]
fn edge_pins() {
    let pin = crate::config::pin::pin_to_string(&[3; 32]);
    let config = compile(&doc(&format!("edge-pin: {pin}\n"), "")).unwrap();
    assert_eq!(config.edge_pins.as_slice(), &[[3; 32]]);
    let other = crate::config::pin::pin_to_string(&[4; 32]);
    let config = compile(&doc(&format!("edge-pin: [{pin}, \"{other}\"]\n"), "")).unwrap();
    assert_eq!(config.edge_pins.as_slice(), &[[3; 32], [4; 32]]);
    assert!(compile(&doc("", "")).unwrap().edge_pins.is_empty());

    let msg = err(&doc("edge-pin: sha256/AAAA\n", ""));
    assert!(
        msg.starts_with("edge-pin[0]: ") && msg.contains("sha256//BASE64"),
        "{msg}"
    );
    let msg = err(&doc("edge-pin: [\"sha256//AAAA\"]\n", ""));
    assert!(msg.contains("3 bytes, a SHA-256 has 32"), "{msg}");
    let five = [pin.as_str(); 5].join(", ");
    let msg = err(&doc(&format!("edge-pin: [{five}]\n"), ""));
    assert!(msg.contains("edge-pin") && msg.contains("limit 4"), "{msg}");
}

/// `metered: true` runs one HTTP/2 connection with rare keep-alives; a QUIC keep-alive
/// too long for a NAT's UDP mapping is warned about, unless the link is HTTP/2 only.
#[test]
fn metered_and_the_nat_warning() {
    let config = compile(&doc("metered: true\n", "")).unwrap();
    assert!(config.metered);
    assert!(config.nat_warning().is_none());
    let run = config.metered_profile();
    assert_eq!((run.ha_connections, run.protocol), (1, Protocol::Http2));
    assert_eq!(run.keepalive_secs_on(Protocol::Http2), 300);
    assert_eq!(run.keepalive_secs_on(Protocol::Quic), 15);
    let plain = compile(&doc("", "")).unwrap();
    assert!(!plain.metered);
    assert_eq!(plain.clone().metered_profile(), plain);

    let long = compile(&doc("keepalive: 60s\nidle-timeout: 120s\n", "")).unwrap();
    let warning = long.nat_warning().unwrap();
    assert!(warning.contains("keepalive 60s over QUIC"), "{warning}");
    assert!(compile(&doc("keepalive: 25s\n", ""))
        .unwrap()
        .nat_warning()
        .is_none());
    let h2 = "keepalive: 60s\nidle-timeout: 120s\nprotocol: http2\n";
    assert!(compile(&doc(h2, "")).unwrap().nat_warning().is_none());
    let metered = "keepalive: 60s\nidle-timeout: 120s\nmetered: true\n";
    assert!(compile(&doc(metered, "")).unwrap().nat_warning().is_none());
    let quic = "keepalive: 60s\nidle-timeout: 120s\nmetered: true\nprotocol: quic\n";
    assert!(compile(&doc(quic, "")).unwrap().nat_warning().is_some());
}

#[test]
fn defaults() {
    let config = compile(&doc("", "")).unwrap();
    assert_eq!(config.edges[0], "e.example.com:7844");
    assert_eq!(config.protocol, Protocol::Auto);
    assert_eq!(config.ha_connections, DEFAULT_HA_CONNECTIONS);
    assert_eq!(config.keepalive_secs, 15);
    assert_eq!(config.idle_timeout_secs, 45);
    assert_eq!(config.grace_period_secs, 30);
    assert_eq!(config.edge_ca, None);
    assert_eq!(config.ingress[0].origin, OriginOptions::default());
    assert_eq!(config.ingress[0].origin.connect_timeout_ms, 10_000);
}

#[test]
fn unknown_key_names_its_line() {
    let yaml = doc(
        "",
        "  - hostname: a.example.com\n    servce: http://localhost\n",
    );
    let msg = err(&yaml);
    assert!(msg.contains("servce") && msg.contains("line 6"), "{msg}");
    let msg = err(&doc("credentials-file: x.json\n", ""));
    assert!(
        msg.contains("credentials-file") && msg.contains("line 4"),
        "{msg}"
    );
    let msg = err(&doc("", "  - hostname: a.example.com\n    service: http://x\n    originRequest: { tlsTimeout: 1s }\n"));
    assert!(
        msg.contains("tlsTimeout") && msg.contains("line 7"),
        "{msg}"
    );
}

#[test]
fn cloudflared_camel_case_accepted() {
    let yaml = "\
tunnel: t
token: k
edge: e.example.com
originRequest:
  connectTimeout: 30s
  noTLSVerify: true
ingress:
  - hostname: app.example.com
    service: https://localhost:8443
    originRequest:
      noTLSVerify: false
      httpHostHeader: internal.local
      originServerName: App.Internal
      connectTimeout: 5s
      caPool: ca.pem
  - hostname: other.example.com
    service: http://localhost:8000
  - service: http_status:404
";
    let config = compile(yaml).unwrap();
    let o = &config.ingress[0].origin;
    assert!(!o.no_tls_verify);
    assert_eq!(o.http_host_header.as_deref(), Some("internal.local"));
    assert_eq!(o.origin_server_name.as_deref(), Some("app.internal"));
    assert_eq!(o.connect_timeout_ms, 5000);
    assert_eq!(o.ca_pool, Some(0));
    // Top-level defaults apply where a rule says nothing.
    let o = &config.ingress[1].origin;
    assert!(o.no_tls_verify);
    assert_eq!(o.connect_timeout_ms, 30_000);
    assert_eq!(o.ca_pool, None);
}

#[test]
fn missing_catch_all_refused() {
    let yaml = "tunnel: t\ntoken: k\nedge: e\ningress:\n  - hostname: a.example.com\n    service: http://x\n";
    let msg = err(yaml);
    assert!(
        msg.contains("ingress[0]: the last rule must be a catch-all"),
        "{msg}"
    );
    let yaml = "tunnel: t\ntoken: k\nedge: e\ningress: []\n";
    assert!(err(yaml).contains("at least one rule"));
    let msg = err(&doc("", "  - service: http://x\n"));
    assert!(
        msg.contains("ingress[0]: this rule matches every request"),
        "{msg}"
    );
}

#[test]
fn over_capacity_names_field_limit_and_size() {
    let long = format!("{}.example.com", "a".repeat(288));
    let msg = err(&doc(
        "",
        &format!("  - hostname: {long}\n    service: http://x\n"),
    ));
    assert_eq!(msg, "ingress[0].hostname: 300 bytes, limit 253");
    let msg = err(&doc(
        "",
        &"  - hostname: a.example.com\n    service: http://x\n".repeat(64),
    ));
    assert_eq!(msg, "ingress: 65 entries, limit 64");
    let msg = err(&format!(
        "tunnel: t\ntoken: {}\nedge: e\ningress:\n  - service: http_status:404\n",
        "k".repeat(3000)
    ));
    assert_eq!(msg, "token: 3000 bytes, limit 2048");
    let edges: std::vec::Vec<_> = (0..9).map(|i| format!("e{i}")).collect();
    let msg = err(&format!(
        "tunnel: t\ntoken: k\nedge: [{}]\ningress:\n  - service: http_status:404\n",
        edges.join(", ")
    ));
    assert_eq!(msg, "edge: 9 entries, limit 8");
    let msg = err(&doc(
        "",
        &format!("  - path: /{}\n    service: http://x\n", "p".repeat(300)),
    ));
    assert_eq!(msg, "ingress[0].path: 301 bytes, limit 256");
    let msg = err(&doc(
        "",
        &format!("  - path: /\n    service: unix:/{}\n", "s".repeat(200)),
    ));
    assert_eq!(msg, "ingress[0].service: 201 bytes, limit 108");
    let msg = err(&format!(
        "tunnel: {}\ntoken: k\nedge: e\ningress:\n  - service: http_status:404\n",
        "t".repeat(64)
    ));
    assert_eq!(msg, "tunnel: 64 bytes, limit 63");
}

#[test]
fn too_many_cas() {
    let dir = TempDir::new();
    let mut rules = std::string::String::new();
    for i in 0..5u8 {
        let pem = der_to_pem(&fake_der(300, i));
        std::fs::write(dir.path().join(format!("ca{i}.pem")), pem).unwrap();
        rules.push_str(&format!("  - hostname: h{i}.example.com\n    service: https://x\n    origin-request: {{ ca-pool: ca{i}.pem }}\n"));
    }
    let msg = compile_str(&doc("", &rules), dir.path())
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "edge-ca and ca-pool (distinct certificates): 5 entries, limit 4"
    );
    let big = dir.path().join("big.der");
    std::fs::write(
        &big,
        fake_der(MAX_CERT_LEN, 0)
            .iter()
            .chain([0u8; 10].iter())
            .copied()
            .collect::<std::vec::Vec<_>>(),
    )
    .unwrap();
    let msg = compile_str(&doc("edge-ca: big.der\n", ""), dir.path())
        .unwrap_err()
        .to_string();
    assert_eq!(msg, "edge-ca: 4106 bytes, limit 4096");
}

#[test]
fn cas_inline_files_and_dedup() {
    let dir = dir_with_ca();
    let der = fake_der(300, 1);
    std::fs::write(dir.path().join("ca.der"), &der).unwrap();
    let inline = der_to_pem(&der).replace('\n', "\n  ");
    let yaml = doc(
        &format!("edge-ca: |\n  {inline}\n"),
        "  - hostname: a.example.com\n    service: https://x\n    origin-request: { ca-pool: ca.pem }\n  - hostname: b.example.com\n    service: https://x\n    origin-request: { ca-pool: ca.der }\n",
    );
    let config = compile_str(&yaml, dir.path()).unwrap();
    assert_eq!(config.cas.len(), 1);
    assert_eq!(&config.cas[0][..], &der[..]);
    assert_eq!(config.edge_ca, Some(0));
    assert_eq!(config.ingress[0].origin.ca_pool, Some(0));
    assert_eq!(config.ingress[1].origin.ca_pool, Some(0));
    let msg = compile_str(&doc("edge-ca: missing.pem\n", ""), dir.path())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("missing.pem"), "{msg}");
    std::fs::write(dir.path().join("junk.pem"), "hello").unwrap();
    let msg = compile_str(&doc("edge-ca: junk.pem\n", ""), dir.path())
        .unwrap_err()
        .to_string();
    assert_eq!(msg, "edge-ca: not a certificate (neither PEM nor DER)");
    let msg = compile_str(
        &doc("edge-ca: \"-----BEGIN CERTIFICATE-----\\nMAMB\"\n", ""),
        dir.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(msg.contains("END CERTIFICATE"), "{msg}");
}

#[test]
fn services() {
    let ok = |s: &str| parse_service("f", s).unwrap_or_else(|e| panic!("{s}: {e}"));
    let host = |h: &str| Hostname::try_from(h).unwrap();
    assert_eq!(
        ok("http://localhost"),
        Service::Http {
            host: host("localhost"),
            port: 80,
            tls: false
        }
    );
    assert_eq!(
        ok("HTTPS://LocalHost/"),
        Service::Http {
            host: host("localhost"),
            port: 443,
            tls: true
        }
    );
    assert_eq!(
        ok("http://[::1]:8080"),
        Service::Http {
            host: host("::1"),
            port: 8080,
            tls: false
        }
    );
    assert_eq!(
        ok("tcp://10.0.0.2:5432"),
        Service::Stream {
            kind: StreamKind::Tcp,
            host: host("10.0.0.2"),
            port: 5432
        }
    );
    assert_eq!(
        ok("ssh://localhost"),
        Service::Stream {
            kind: StreamKind::Ssh,
            host: host("localhost"),
            port: 22
        }
    );
    assert_eq!(
        ok("rdp://pc"),
        Service::Stream {
            kind: StreamKind::Rdp,
            host: host("pc"),
            port: 3389
        }
    );
    assert_eq!(
        ok("unix:/run/app.sock"),
        Service::Unix {
            path: "/run/app.sock".try_into().unwrap(),
            tls: false
        }
    );
    assert_eq!(
        ok("unix+tls:/run/app.sock"),
        Service::Unix {
            path: "/run/app.sock".try_into().unwrap(),
            tls: true
        }
    );
    assert_eq!(ok("http_status:418"), Service::HttpStatus(418));
    let raw_unix = Service::UnixStream {
        path: "/run/redis.sock".try_into().unwrap(),
    };
    assert_eq!(ok("tcp+unix:/run/redis.sock"), raw_unix);
    assert_eq!(ok("unix+tcp:/run/redis.sock"), raw_unix);
    assert_eq!(ok("TCP+Unix:/run/redis.sock"), raw_unix);
    assert_eq!(raw_unix.to_string(), "tcp+unix:/run/redis.sock");
    assert!(raw_unix.is_raw_stream());
    for bad in [
        "http://localhost/api",
        "http://localhost?x=1",
        "tcp://localhost",
        "ftp://x",
        "hello_world",
        "http://user@x",
        "http://::1:80",
        "http://[::1",
        "http://x:99999",
        "http://",
        "http_status:abc",
    ] {
        assert!(parse_service("f", bad).is_err(), "{bad}");
    }
    let msg = err(&doc(
        "",
        "  - hostname: a.example.com\n    service: http://localhost:8080/api\n",
    ));
    assert!(
        msg.starts_with(
            "ingress[0].service: \"http://localhost:8080/api\": a service URL cannot have a path"
        ),
        "{msg}"
    );
    let msg = err(&doc(
        "",
        "  - hostname: a.example.com\n    service: http_status:700\n",
    ));
    assert_eq!(
        msg,
        "ingress[0].service: status code 700 is out of range 100..=599"
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration_ms("500ms"), Ok(500));
    assert_eq!(parse_duration_ms("15s"), Ok(15_000));
    assert_eq!(parse_duration_ms("2m"), Ok(120_000));
    assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
    assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
    assert_eq!(parse_duration_ms("15"), Ok(15_000));
    for bad in ["", "s", "15x", "1.5s", "-1s", "99999999999999999999s"] {
        assert!(parse_duration_ms(bad).is_err(), "{bad}");
    }
    let config = compile(&doc(
        "keepalive: 20\nidle-timeout: 1m\ngrace-period: 0s\n",
        "",
    ))
    .unwrap();
    assert_eq!(
        (
            config.keepalive_secs,
            config.idle_timeout_secs,
            config.grace_period_secs
        ),
        (20, 60, 0)
    );
    let msg = err(&doc("keepalive: 1500ms\n", ""));
    assert_eq!(msg, "keepalive: 1500ms is not a whole number of seconds");
    let msg = err(&doc("keepalive: 45s\n", ""));
    assert_eq!(
        msg,
        "keepalive (45s) must be shorter than idle-timeout (45s)"
    );
    let msg = err(&doc("grace-period: 20h\n", ""));
    assert_eq!(msg, "grace-period: 72000s is above the limit of 65535s");
    let msg = err(&doc("keepalive: soon\n", ""));
    assert!(
        msg.contains("invalid duration \"soon\"") && msg.contains("line 4"),
        "{msg}"
    );
}

#[test]
fn edges() {
    let config = compile(&doc("", "").replace(
        "edge: e.example.com",
        "edge: [E.example.com, \"10.0.0.1:443\", \"[::1]\", \"::2\", \"[::3]:1\"]",
    ))
    .unwrap();
    let edges: std::vec::Vec<&str> = config.edges.iter().map(|e| e.as_str()).collect();
    assert_eq!(
        edges,
        [
            "e.example.com:7844",
            "10.0.0.1:443",
            "[::1]:7844",
            "[::2]:7844",
            "[::3]:1"
        ]
    );
    let msg = err(&doc("", "").replace("edge: e.example.com", "edge: \"e:0\""));
    assert_eq!(msg, "edge[0]: \"e:0\": port is not a number in 1..=65535");
    let msg = err(&doc("", "").replace("edge: e.example.com", "edge: []"));
    assert_eq!(msg, "edge: at least one edge address is required");
}

#[test]
fn tokens() {
    let dir = TempDir::new();
    std::fs::write(dir.path().join("token"), "abc.def\n").unwrap();
    let yaml = doc("", "").replace("token: k", "token-file: token");
    assert_eq!(compile_str(&yaml, dir.path()).unwrap().token, "abc.def");
    let both = doc("token-file: token\n", "");
    assert_eq!(
        compile_str(&both, dir.path()).unwrap_err().to_string(),
        "token: give exactly one of `token`, `token-file` and `enroll`"
    );
    let none = doc("", "").replace("token: k\n", "");
    assert!(err(&none).contains("exactly one"));
    let masked = doc("", "").replace("token: k", "token: \"********\"");
    assert!(err(&masked).contains("--show-secrets"));
    let spaced = doc("", "").replace("token: k", "token: a b");
    assert_eq!(
        err(&spaced),
        "token: holds spaces, control or non-ASCII characters"
    );
}

#[test]
fn enrolment_keys_and_device_hostnames() {
    let yaml = doc(
        "",
        "  - hostname: \"{device}.fleet.example.com\"\n    service: http://localhost:8080\n  - hostname: ssh.{DEVICE}.fleet.example.com\n    service: ssh://localhost\n",
    )
    .replace("token: k", "enroll: mse1.abc.def");
    let config = compile(&yaml).unwrap();
    assert_eq!(config.enroll_key(), Some("mse1.abc.def"));
    assert_eq!(
        config.ingress[1].hostname.as_deref(),
        Some("ssh.{device}.fleet.example.com")
    );
    // Through show and compile again: the same bytes, `enroll:` in place of `token:`.
    let shown = to_yaml(&config, true);
    assert!(
        shown.contains("\nenroll: mse1.abc.def\n") && !shown.contains("token"),
        "{shown}"
    );
    assert!(
        shown.contains("hostname: \"{device}.fleet.example.com\"\n"),
        "{shown}"
    );
    let back = compile_str(&shown, Path::new("/nonexistent")).unwrap();
    assert_eq!(encode(&back).unwrap(), encode(&config).unwrap());
    let masked = to_yaml(&config, false);
    assert!(
        masked.contains("\nenroll: \"********\"  # masked (12 bytes)"),
        "{masked}"
    );
    assert!(err(&masked).starts_with("enroll: this is the mask"));

    // `{device}` needs `enroll:`, and a whole label.
    let msg = err(&yaml.replace("enroll: mse1.abc.def", "token: k"));
    assert!(
        msg.starts_with(
            "ingress[0].hostname: \"{device}.fleet.example.com\": `{device}` stands for"
        ) && msg.contains("needs `enroll:`"),
        "{msg}"
    );
    let msg = err(&yaml.replace("\"{device}.fleet", "\"x{device}.fleet"));
    assert!(msg.contains("must be a whole label"), "{msg}");
    // Keys in the wrong place, and both at once.
    let msg = err(&doc("", "").replace("token: k", "token: mse1.abc"));
    assert_eq!(
        msg,
        "token: this is an enrolment key: write it as `enroll:`"
    );
    let msg = err(&doc("", "").replace("token: k", "enroll: mst1.abc"));
    assert!(msg.starts_with("enroll: not an enrolment key"), "{msg}");
    assert!(err(&doc("enroll: mse1.abc\n", "")).contains("exactly one"));
}

#[test]
fn hostnames_and_paths() {
    let config = compile(&doc("", "  - hostname: Dev42.Example.COM\n    service: http://x\n  - hostname: \"*.Example.com\"\n    service: http://x\n")).unwrap();
    assert_eq!(
        config.ingress[0].hostname.as_deref(),
        Some("dev42.example.com")
    );
    assert_eq!(config.ingress[1].hostname.as_deref(), Some("*.example.com"));
    let msg = err(&doc(
        "",
        "  - hostname: a..example.com\n    service: http://x\n",
    ));
    assert!(
        msg.starts_with("ingress[0].hostname: \"a..example.com\": empty label"),
        "{msg}"
    );
    let msg = err(&doc("", "  - hostname: a.*.com\n    service: http://x\n"));
    assert!(msg.contains("only allowed as a leading"), "{msg}");
    let msg = err(&doc("", "  - path: \"^/(v1\"\n    service: http://x\n"));
    assert!(
        msg.starts_with("ingress[0].path: \"^/(v1\" is not a valid regex"),
        "{msg}"
    );
}

#[test]
fn ha_connections_and_protocol() {
    assert_eq!(
        compile(&doc("ha-connections: 16\nprotocol: http2\n", ""))
            .unwrap()
            .protocol,
        Protocol::Http2
    );
    assert_eq!(
        err(&doc("ha-connections: 0\n", "")),
        "ha-connections: 0 is out of range 1..=16"
    );
    assert_eq!(
        err(&doc("ha-connections: 17\n", "")),
        "ha-connections: 17 is out of range 1..=16"
    );
    assert_eq!(
        err(&doc("ha-connections: 300\n", "")),
        "ha-connections: 300 is out of range 1..=16"
    );
    let msg = err(&doc("protocol: udp\n", ""));
    assert!(msg.contains("udp") && msg.contains("line 4"), "{msg}");
}

#[test]
fn show_output_compiles_back() {
    let config = sample_config();
    let yaml = to_yaml(&config, true);
    let back = compile_str(&yaml, Path::new("/nonexistent")).unwrap();
    assert_eq!(back, config);
    assert_eq!(encode(&back).unwrap(), encode(&config).unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// `show --show-secrets` then `compile` gives back the same bytes.
    #[test]
    fn show_then_compile_same_bytes(config in arb_config()) {
        let yaml = to_yaml(&config, true);
        let back = compile_str(&yaml, Path::new("/nonexistent")).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
        prop_assert_eq!(&back, &config, "{}", yaml);
        prop_assert!(encode(&back).unwrap() == encode(&config).unwrap());
    }
}

/// `data-cap` takes the sizes of the edge's config; `essential: true` marks rules;
/// a cap without an essential rule is warned about; bad caps are refused in words.
#[test]
fn data_cap_and_essential_rules() {
    let ssh = "  - hostname: ssh.example.com\n    service: ssh://localhost\n    essential: true\n  - hostname: web.example.com\n    service: http://localhost:8080\n";
    let config = compile(&doc("data-cap: 50MiB\n", ssh)).unwrap();
    assert_eq!(config.data_cap, Some(50 << 20));
    assert_eq!(config.essential, 0b1);
    assert!(config.is_essential(0) && !config.is_essential(1) && !config.is_essential(2));
    assert!(config.cap_warning().is_none());
    let yaml = to_yaml(&config, true);
    assert!(yaml.contains("data-cap: 50MiB\n"), "{yaml}");
    assert!(
        yaml.contains("    service: ssh://localhost\n    essential: true\n"),
        "{yaml}"
    );
    assert_eq!(compile(&yaml).unwrap(), config);
    assert_eq!(&encode(&config).unwrap()[4..6], &[4, 0]);

    for (text, bytes) in [
        ("64KiB", 64 << 10),
        ("1GiB", 1 << 30),
        ("1000", 1000),
        ("1000B", 1000),
        ("2M", 2 << 20),
        ("\"3 MiB\"", 3 << 20),
    ] {
        let c = compile(&doc(&format!("data-cap: {text}\n"), "")).unwrap();
        assert_eq!(c.data_cap, Some(bytes), "{text}");
    }
    assert_eq!(yaml_out::size(1536 << 10), "1536KiB");
    assert_eq!(yaml_out::size(1000), "1000B");
    assert_eq!(yaml_out::size(2 << 30), "2GiB");

    let bare = compile(&doc("data-cap: 1GiB\n", "")).unwrap();
    let warning = bare.cap_warning().unwrap();
    assert!(
        warning.contains("no rule is `essential: true`"),
        "{warning}"
    );
    assert!(compile(&doc("", "")).unwrap().cap_warning().is_none());
    assert_eq!(compile(&doc("", "")).unwrap().data_cap, None);

    let e = err(&doc("data-cap: 0\n", ""));
    assert!(e.contains("data-cap: must be more than 0"), "{e}");
    let e = err(&doc("data-cap: 2048GiB\n", ""));
    assert!(e.contains("above the limit of 1TiB"), "{e}");
    let e = err(&doc("data-cap: 5 parsecs\n", ""));
    assert!(e.contains("unknown size unit"), "{e}");
    let e = err(&doc("data-cap: -5\n", ""));
    assert!(e.contains("negative size"), "{e}");
    let e = err(&doc("data-cap: 99999999999999999999GiB\n", ""));
    assert!(e.contains("data-cap"), "{e}");
    let e = err(&doc(
        "",
        "  - hostname: a.example.com\n    service: http://x\n    essential: maybe\n",
    ));
    assert!(e.contains("essential"), "{e}");
}
