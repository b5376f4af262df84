//! Device config samples (YAML, a CA stand-in, a token) and `mailslot config`.

use std::path::PathBuf;
use std::process::{Command, Output};

use super::{run_ok, TempDir, MAILSLOT};

/// A 300-byte token of the characters tokens use.
pub fn token() -> String {
    "eyJ0dW5uZWwiOiJkZXY0MiJ9.".repeat(12)[..300].to_string()
}

/// A DER-shaped certificate stand-in as PEM (the config checks the DER outer shape
/// only; TLS code checks the rest).
pub fn ca_pem(tag: u8) -> String {
    let mut der = vec![0x30, 0x82, 0x01, 0x2c, tag];
    der.extend((0..299).map(|i| (i % 251) as u8));
    let b64 = base64(&der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The example config from the docs, `tunnel` and the first service port varied.
pub fn example_yaml(tunnel: &str, port: u16) -> String {
    format!(
        "\
tunnel: {tunnel}
token: {}
edge: [\"edge.example.com:7844\"]
edge-ca: ca.pem
protocol: auto
ha-connections: 4
keepalive: 15s
idle-timeout: 45s
grace-period: 30s
ingress:
  - hostname: dev42.example.com
    service: http://localhost:{port}
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

/// Writes `ca.pem` and `name` (the example YAML) into `dir`; returns the YAML's path.
pub fn write_example(dir: &TempDir, name: &str, tunnel: &str, port: u16) -> PathBuf {
    std::fs::write(dir.join("ca.pem"), ca_pem(1)).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, example_yaml(tunnel, port)).unwrap();
    path
}

/// `mailslot` with warnings only in its log.
pub fn mailslot() -> Command {
    let mut cmd = Command::new(MAILSLOT);
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// `mailslot config ARGS...`, not started yet.
fn config_cmd(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut cmd = mailslot();
    cmd.arg("config");
    for a in args {
        cmd.arg(a);
    }
    cmd
}

/// Runs `mailslot config ARGS...`.
pub fn config(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    config_cmd(args).output().unwrap()
}

/// Runs `mailslot config ARGS...` and asserts it succeeded.
pub fn config_ok(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    run_ok("mailslot config", &mut config_cmd(args))
}
