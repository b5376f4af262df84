//! A real `mailslot-edge` (init, serve, token) and a real connector (compile, run).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{run_ok, Proc, TempDir, EDGE, MAILSLOT};

fn addr_after(line: &str, marker: &str) -> SocketAddr {
    let rest = &line[line.find(marker).unwrap() + marker.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// A running edge with its folder.
pub struct EdgeProc {
    pub dir: TempDir,
    pub proc: Proc,
    pub tunnel: SocketAddr,
    pub http: SocketAddr,
    pub https: SocketAddr,
}

/// `mailslot-edge init` into a fresh folder, listeners rewritten to port 0.
pub fn init_edge(extra_yaml: &str) -> TempDir {
    let dir = TempDir::new("edge");
    run_ok(
        "mailslot-edge init",
        Command::new(EDGE)
            .args(["init", "--dir"])
            .arg(dir.path())
            .args(["--hostname", "127.0.0.1", "--hostname", "localhost"])
            .args([
                "--hostname",
                "dev42.example.com",
                "--hostname",
                "*.dev42.example.com",
            ]),
    );
    let yml = dir.path().join("edge.yml");
    let text = std::fs::read_to_string(&yml).unwrap();
    let overridden: Vec<&str> = extra_yaml
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, _)| k))
        .collect();
    let text = text
        .lines()
        .filter(|l| !overridden.iter().any(|k| l.starts_with(&format!("{k}:"))))
        .map(|l| {
            if l.starts_with("tunnel-listen:") {
                "tunnel-listen: 127.0.0.1:0".to_string()
            } else if l.starts_with("http-listen:") {
                "http-listen: 127.0.0.1:0".to_string()
            } else if l.starts_with("https-listen:") {
                "https-listen: 127.0.0.1:0".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&yml, format!("{text}\n{extra_yaml}\n")).unwrap();
    dir
}

/// Starts `mailslot-edge serve` on a folder made by [`init_edge`].
pub fn start_edge(dir: TempDir) -> EdgeProc {
    let proc = Proc::spawn(
        "edge",
        Command::new(EDGE)
            .arg("serve")
            .arg("--config")
            .arg(dir.path().join("edge.yml")),
    );
    let tunnel = addr_after(
        &proc.wait_line("tunnel listener on udp "),
        "tunnel listener on udp ",
    );
    let http = addr_after(&proc.wait_line(": HTTP on "), ": HTTP on ");
    let https = addr_after(&proc.wait_line(": HTTPS on "), ": HTTPS on ");
    EdgeProc {
        dir,
        proc,
        tunnel,
        http,
        https,
    }
}

impl EdgeProc {
    /// `mailslot-edge token` for this edge.
    pub fn token(&self, tunnel: &str, allow: &[&str], expires: &str) -> String {
        let mut cmd = Command::new(EDGE);
        cmd.arg("token")
            .arg("--config")
            .arg(self.dir.path().join("edge.yml"));
        cmd.args(["--tunnel", tunnel, "--expires", expires]);
        for a in allow {
            cmd.args(["--allow", a]);
        }
        let out = run_ok("mailslot-edge token", &mut cmd);
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The admin listener's address (an edge.yml with `admin-listen`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.proc.logged_addr("admin (/tunnels, /metrics) on ")
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// Compiles a device YAML (written into `dir`) into `dir/config.bin`.
pub fn compile(dir: &Path, yaml: &str) -> PathBuf {
    let yml = dir.join("config.yml");
    std::fs::write(&yml, yaml).unwrap();
    let bin = dir.join("config.bin");
    run_ok(
        "mailslot config compile",
        Command::new(MAILSLOT)
            .args(["config", "compile"])
            .arg(&yml)
            .arg("--output")
            .arg(&bin),
    );
    bin
}

/// Starts `mailslot run` and waits until `conns` connections registered.
pub fn start_connector(dir: &Path, yaml: &str, conns: usize) -> Proc {
    let bin = compile(dir, yaml);
    let p = Proc::spawn(
        "connector",
        Command::new(MAILSLOT).arg("run").arg("--config").arg(&bin),
    );
    p.wait_lines("registered: tunnel", conns);
    p
}

/// The standard device YAML: `rules` are YAML ingress list items.
pub fn device_yaml(edge: &EdgeProc, token: &str, ha: usize, rules: &str) -> String {
    device_yaml_over(edge, "quic", token, ha, rules)
}

/// The standard device YAML with another `protocol` (quic, http2, auto).
pub fn device_yaml_over(
    edge: &EdgeProc,
    protocol: &str,
    token: &str,
    ha: usize,
    rules: &str,
) -> String {
    device_yaml_with(
        &edge.tunnel.to_string(),
        &edge.ca(),
        protocol,
        token,
        ha,
        rules,
    )
}

/// Ingress rules serving `dev42.example.com` from `origin` and 404 for anything else.
pub fn dev42_rules(origin: SocketAddr) -> String {
    format!(
        "  - hostname: dev42.example.com\n    service: http://{origin}\n  - service: http_status:404\n"
    )
}

/// A device YAML for any edge address and protocol.
pub fn device_yaml_with(
    edge: &str,
    ca: &Path,
    protocol: &str,
    token: &str,
    ha: usize,
    rules: &str,
) -> String {
    format!(
        "tunnel: dev42\ntoken: {token}\nedge: [\"{edge}\"]\nedge-ca: {}\nprotocol: {protocol}\nha-connections: {ha}\ningress:\n{rules}",
        ca.display()
    )
}

/// A copy of the edge's `edge.yml` for the `devices` commands: its admin listener's
/// real port (the edge was started on port 0) and `token`.
pub fn cli_config(edge: &EdgeProc, token: &str) -> PathBuf {
    let yml = std::fs::read_to_string(edge.dir.join("edge.yml")).unwrap();
    let text: String = yml
        .lines()
        .map(|l| {
            if l.starts_with("admin-listen:") {
                format!("admin-listen: {}\n", edge.admin_addr())
            } else if l.starts_with("admin-token:") {
                format!("admin-token: {token}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let path = edge.dir.join(&format!("cli-{}.yml", &token[..8]));
    std::fs::write(&path, text).unwrap();
    path
}

/// `mailslot-edge devices ARGS --config CONFIG` (a [`cli_config`]), run to its end.
pub fn devices<S: AsRef<std::ffi::OsStr>>(config: &Path, args: &[S]) -> std::process::Output {
    Command::new(EDGE)
        .arg("devices")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap()
}

/// One device from the edge's admin API (`token`), as JSON.
pub fn api_device(edge: &EdgeProc, token: &str, id: &str) -> serde_json::Value {
    let url = format!("http://{}/api/v1/devices/{id}", edge.admin_addr());
    let r = super::curl(&["-H", &format!("Authorization: Bearer {token}"), &url]);
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_str(&r.text()).unwrap()
}
