//! Helpers shared by the config integration tests: temp folders, sample YAML, running
//! the real binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh folder under the system temp folder, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "mailslot-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

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

pub fn mailslot() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailslot"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Runs `mailslot config ARGS...`.
pub fn config(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = mailslot();
    cmd.arg("config");
    for a in args {
        cmd.arg(a);
    }
    cmd.output().unwrap()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
