//! `mailslot-edge devices ls|show|revoke|push-config`: the running edge's inventory,
//! read and changed through its admin listener (`admin-listen` and `admin-token` of
//! `edge.yml`), with a small HTTP/1.1 client. What the edge answers is
//! [`super::api`]'s JSON; `--json` prints it as it came.

use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use super::api::{self, DeviceJson, DeviceList};
use crate::edge::config::EdgeConfig;
use crate::wire::printable;

/// Longest wait for the edge: connecting, then the whole answer.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer read (a page of `/api/v1/devices` is about 1 MB).
const MAX_ANSWER: usize = 16 * 1024 * 1024;
/// Most pages `ls` follows (a million devices at [`api::MAX_LIMIT`] a page).
const MAX_PAGES: usize = 1000;
/// Widest name shown in the table.
const NAME_WIDTH: usize = 24;

/// What `devices` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ls {
        fleet: Option<String>,
        offline: bool,
    },
    Show(String),
    Revoke(String),
    /// `push-config (ID... | --fleet F) config.yml [--canary N%] [--no-wait]`.
    PushConfig {
        devices: Vec<String>,
        fleet: Option<String>,
        yaml: PathBuf,
        canary: Option<u8>,
        wait: bool,
        /// `--canary-wait`, seconds.
        canary_wait: Option<u64>,
    },
}

/// Most device ids one `push-config` names (more: push to a fleet).
const MAX_PUSH_IDS: usize = 10_000;
/// How often `push-config` asks how its rollout goes.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// `--canary-wait DURATION` (`10m`, `1h`): how long a device may take to report once
/// sent, in seconds; 1 s to 1 day (a canary silent that long stops the rollout).
pub(crate) fn parse_canary_wait(v: &str) -> Result<u64, String> {
    crate::edge::config::parse_duration(v)
        .ok()
        .map(|d| d.as_secs())
        .filter(|s| (1..=86_400).contains(s))
        .ok_or_else(|| format!("--canary-wait {v}: a duration from 1s to 1d (like 10m)"))
}

/// `--canary N%` (or `N`): 1 to 100.
pub(crate) fn parse_canary(v: &str) -> Result<u8, String> {
    v.trim_end_matches('%')
        .parse::<u8>()
        .ok()
        .filter(|n| (1..=100).contains(n))
        .ok_or_else(|| format!("--canary {v}: a share from 1% to 100%"))
}

/// `devices` and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    pub config: PathBuf,
    pub command: Command,
    pub json: bool,
}

impl Args {
    /// Parses what follows `devices`; `None` when `--help` was asked for.
    pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Option<Args>, String> {
        use lexopt::prelude::*;
        let mut parser = lexopt::Parser::from_args(args);
        let mut sub: Option<String> = None;
        let mut values: Vec<String> = Vec::new();
        let (mut config, mut fleet, mut offline, mut json) = (None, None, false, false);
        let (mut canary, mut no_wait, mut canary_wait) = (None, false, None);
        let err = |e: lexopt::Error| e.to_string();
        while let Some(arg) = parser.next().map_err(err)? {
            match arg {
                Long("help") | Short('h') => return Ok(None),
                Long("config") | Short('c') => {
                    config = Some(PathBuf::from(parser.value().map_err(err)?))
                }
                Long("fleet") => fleet = Some(parser.value().map_err(err)?.string().map_err(err)?),
                Long("offline") => offline = true,
                Long("json") => json = true,
                Long("canary") if sub.as_deref() == Some("push-config") => {
                    canary = Some(parse_canary(
                        &parser.value().map_err(err)?.string().map_err(err)?,
                    )?)
                }
                Long("no-wait") if sub.as_deref() == Some("push-config") => no_wait = true,
                Long("canary-wait") if sub.as_deref() == Some("push-config") => {
                    canary_wait = Some(parse_canary_wait(
                        &parser.value().map_err(err)?.string().map_err(err)?,
                    )?)
                }
                Value(v) if sub.is_none() => sub = Some(v.string().map_err(err)?),
                Value(v) if values.len() <= MAX_PUSH_IDS => values.push(v.string().map_err(err)?),
                other => return Err(other.unexpected().to_string()),
            }
        }
        let sub = sub.ok_or("devices: ls, show ID, revoke ID or push-config")?;
        if let (false, Some(extra)) = (sub == "push-config", values.get(1)) {
            return Err(format!("devices {sub}: unexpected argument {extra:?}"));
        }
        let id = values.first().cloned();
        let need_id = |what: &str| {
            id.clone()
                .ok_or(format!("devices {what}: the device ID is required"))
        };
        let command = match sub.as_str() {
            "ls" => {
                if let Some(extra) = &id {
                    return Err(format!("devices ls: unexpected argument {extra:?}"));
                }
                Command::Ls { fleet, offline }
            }
            "show" | "revoke" if fleet.is_some() || offline => {
                return Err(format!("devices {sub}: --fleet and --offline are for ls"))
            }
            "show" => Command::Show(need_id("show")?),
            "revoke" => Command::Revoke(need_id("revoke")?),
            "push-config" => {
                if offline {
                    return Err("devices push-config: --offline is for ls".into());
                }
                let yaml = values
                    .pop()
                    .ok_or("devices push-config: (ID... | --fleet F) config.yml is required")?;
                match (&fleet, values.is_empty()) {
                    (Some(_), false) => {
                        return Err(
                            "devices push-config: name device IDs or --fleet F, not both".into(),
                        )
                    }
                    (None, true) => {
                        return Err("devices push-config: name the device IDs or --fleet F".into())
                    }
                    _ => {}
                }
                Command::PushConfig {
                    devices: values,
                    fleet,
                    yaml: PathBuf::from(yaml),
                    canary,
                    wait: !no_wait,
                    canary_wait,
                }
            }
            other => {
                return Err(format!(
                    "devices {other:?}: not a command (ls, show, revoke, push-config)"
                ))
            }
        };
        let config = config.ok_or("devices: --config edge.yml is required (the running edge's)")?;
        Ok(Some(Args {
            config,
            command,
            json,
        }))
    }
}

/// Runs `mailslot-edge devices ...`; `usage` is printed for `--help`.
pub fn main(args: impl IntoIterator<Item = OsString>, usage: &str) -> Result<(), String> {
    let args: Vec<OsString> = args.into_iter().collect();
    if super::release::is_upgrade(&args) {
        return super::release::upgrade_cli(args, usage);
    }
    let Some(args) = Args::parse(args)? else {
        print!("{usage}");
        return Ok(());
    };
    let admin = Admin::from_config(&args.config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async {
        match &args.command {
            Command::Ls { fleet, offline } => {
                ls(&admin, fleet.as_deref(), *offline, args.json).await
            }
            Command::Show(id) => show(&admin, id, args.json).await,
            Command::Revoke(id) => revoke(&admin, id, args.json).await,
            Command::PushConfig {
                devices,
                fleet,
                yaml,
                canary,
                wait,
                canary_wait,
            } => {
                let mut req = push_request(devices, fleet.as_deref(), yaml, *canary)?;
                req.wait_secs = *canary_wait;
                push_config(&admin, &req, *wait, args.json).await
            }
        }
    })
}

/// Where the running edge's admin listener is and the token it wants.
pub(crate) struct Admin {
    addr: SocketAddr,
    token: Option<String>,
    config: PathBuf,
}

/// The two keys of `edge.yml` whose plain text the client needs (the edge keeps only
/// the token's hash).
#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct TokenKeys {
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
}

impl Admin {
    pub(crate) fn from_config(path: &Path) -> Result<Admin, String> {
        let cfg = EdgeConfig::load(path)?;
        let listen = cfg.admin_listen.ok_or_else(|| {
            format!(
                "{} has no admin-listen: the devices commands talk to the running edge's \
                 admin listener (add admin-listen: 127.0.0.1:7845 and restart the edge)",
                path.display()
            )
        })?;
        // A listener on every address is reached on loopback.
        let ip = match listen.ip() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            a => a,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let keys: TokenKeys = yaml_serde::from_str(&text).map_err(|e| e.to_string())?;
        let token = match (keys.admin_token, keys.admin_token_file) {
            (Some(t), _) => Some(t),
            (None, Some(f)) => {
                let f = path.parent().unwrap_or(Path::new(".")).join(f);
                let t = std::fs::read_to_string(&f)
                    .map_err(|e| format!("admin-token-file: cannot read {}: {e}", f.display()))?;
                Some(t.trim().to_string())
            }
            (None, None) => None,
        };
        Ok(Admin {
            addr: SocketAddr::new(ip, listen.port()),
            token,
            config: path.to_path_buf(),
        })
    }

    /// One request (with a body unless empty); the answer's status and body, or why
    /// there is none.
    async fn call_with(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        tokio::time::timeout(TIMEOUT, self.call_once(method, path, body))
            .await
            .map_err(|_| {
                format!(
                    "the edge on {} did not answer within {TIMEOUT:?}",
                    self.addr
                )
            })?
    }

    async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<(StatusCode, Bytes), String> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.map_err(|e| {
            format!(
                "no edge answers on {} (admin-listen of {}): {e}; is `mailslot-edge serve --config {}` running?",
                self.addr,
                self.config.display(),
                self.config.display()
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("admin listener {}: {e}", self.addr))?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.addr.to_string());
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if !body.is_empty() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("bad request {path}: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("admin listener {}: {e}", self.addr))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| {
                format!(
                    "admin listener {}: answer cut or over {MAX_ANSWER} bytes: {e}",
                    self.addr
                )
            })?
            .to_bytes();
        driver.abort();
        Ok((status, body))
    }

    /// A request whose answer must be 200: its body, or a clear error.
    async fn ok(&self, method: Method, path: &str, id: Option<&str>) -> Result<Bytes, String> {
        self.ok_with(method, path, id, Bytes::new()).await
    }

    pub(crate) async fn ok_with(
        &self,
        method: Method,
        path: &str,
        id: Option<&str>,
        sent: Bytes,
    ) -> Result<Bytes, String> {
        let (status, body) = self.call_with(method, path, sent).await?;
        if status == StatusCode::OK {
            return Ok(body);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        Err(match (status, id) {
            (StatusCode::UNAUTHORIZED, _) if self.token.is_none() => format!(
                "the edge requires an admin token: set admin-token in {} as the running edge has it",
                self.config.display()
            ),
            (StatusCode::UNAUTHORIZED, _) => format!(
                "the edge refused the admin token of {}: the running edge has another \
                 (after changing admin-token, reload the edge with SIGHUP)",
                self.config.display()
            ),
            (StatusCode::NOT_FOUND, Some(id)) => {
                format!("no device {id} on this edge (see mailslot-edge devices ls)")
            }
            _ => format!("the edge answered {status}: {message}"),
        })
    }
}

async fn ls(admin: &Admin, fleet: Option<&str>, offline: bool, json: bool) -> Result<(), String> {
    let mut all = DeviceList {
        total: 0,
        devices: Vec::new(),
        next: None,
    };
    let mut after: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut path = format!("/api/v1/devices?limit={}", api::MAX_LIMIT);
        if let Some(f) = fleet {
            path.push_str(&format!("&fleet={}", api::percent_encode(f)));
        }
        if offline {
            path.push_str("&offline=1");
        }
        if let Some(a) = &after {
            path.push_str(&format!("&after={}", api::percent_encode(a)));
        }
        let body = admin.ok(Method::GET, &path, None).await?;
        let page: DeviceList = serde_json::from_slice(&body)
            .map_err(|e| format!("the edge's answer is not a device list: {e}"))?;
        all.total = page.total;
        all.devices.extend(page.devices);
        match page.next {
            Some(n) if after.as_ref() != Some(&n) => after = Some(n),
            _ => break,
        }
    }
    if json {
        let text = serde_json::to_string_pretty(&all).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(());
    }
    if all.devices.is_empty() {
        println!(
            "no devices{}",
            match (fleet, offline) {
                (Some(f), true) => format!(" offline in fleet {}", printable(f)),
                (Some(f), false) => format!(" in fleet {}", printable(f)),
                (None, true) => " offline".into(),
                (None, false) => " enrolled yet".into(),
            }
        );
        return Ok(());
    }
    print!("{}", table(&all.devices, crate::edge::token::now_unix()));
    Ok(())
}

/// The devices as a table with a heading line.
fn table(devices: &[DeviceJson], now: u64) -> String {
    let mut rows: Vec<[String; 13]> = vec![[
        "ID",
        "NAME",
        "FLEET",
        "STATE",
        "LAST SEEN",
        "VERSION",
        "CONFIG",
        "LAST PUSH",
        "PROTOCOL",
        "RTT",
        "TEMP",
        "LOAD",
        "TODAY",
    ]
    .map(String::from)];
    for d in devices {
        rows.push([
            d.id.clone(),
            printable(&d.name).chars().take(NAME_WIDTH).collect(),
            printable(&d.fleet),
            d.state.clone(),
            if d.online {
                "now".into()
            } else {
                api::ago(now, d.last_seen.unix)
            },
            printable(&d.version),
            Some(printable(&d.config_digest))
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "-".into()),
            d.config_push
                .as_ref()
                .map_or_else(|| "-".into(), |c| c.state.clone()),
            Some(d.protocols())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "-".into()),
            d.rtt_ms()
                .map(|r| format!("{r}ms"))
                .unwrap_or_else(|| "-".into()),
            d.temp_celsius()
                .map(|t| format!("{t:.1}C"))
                .unwrap_or_else(|| "-".into()),
            d.load1()
                .map(|l| format!("{l:.2}"))
                .unwrap_or_else(|| "-".into()),
            d.wire_today()
                .map(api::bytes_text)
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = [0usize; 13];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One device as the edge answers `method` on `path` (a device or its revocation);
/// printed as JSON when `json` is set, and then `None`.
async fn device(
    admin: &Admin,
    method: Method,
    path: &str,
    id: &str,
    json: bool,
) -> Result<Option<DeviceJson>, String> {
    let body = admin.ok(method, path, Some(id)).await?;
    let d: DeviceJson = serde_json::from_slice(&body)
        .map_err(|e| format!("the edge's answer is not a device: {e}"))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&d).map_err(|e| e.to_string())?
        );
        return Ok(None);
    }
    Ok(Some(d))
}

async fn show(admin: &Admin, id: &str, json: bool) -> Result<(), String> {
    let path = format!("/api/v1/devices/{}", api::percent_encode(id));
    if let Some(d) = device(admin, Method::GET, &path, id, json).await? {
        print!("{}", details(&d, crate::edge::token::now_unix()));
    }
    Ok(())
}

/// Every field of one device, a line each.
fn details(d: &DeviceJson, now: u64) -> String {
    let time = |t: &api::Time| format!("{} ({})", t.rfc3339, api::ago(now, t.unix));
    let mut lines: Vec<(&str, String)> = vec![
        ("id", d.id.clone()),
        ("name", printable(&d.name)),
        ("fleet", printable(&d.fleet)),
        ("state", d.state.clone()),
        ("hostnames", printable(&d.hostnames.join(", "))),
        ("version", printable(&d.version)),
        ("arch", printable(&d.arch)),
        ("board", printable(&d.board)),
        ("config digest", printable(&d.config_digest)),
        ("last config push", change_line(d.config_push.as_ref(), now)),
        ("last upgrade", change_line(d.release.as_ref(), now)),
        ("address", printable(&d.address)),
        ("public key", d.public_key.clone()),
        ("enrolment key", d.enrolment_key.clone()),
        ("enrolled", time(&d.enrolled)),
        ("first seen", time(&d.first_seen)),
        ("last seen", time(&d.last_seen)),
        ("credential expires", d.credential_expires.rfc3339.clone()),
        (
            "revoked",
            d.revoked.as_ref().map_or_else(|| "no".into(), &time),
        ),
    ];
    match &d.health {
        None => lines.push(("health", "no report yet".into())),
        Some(h) => {
            let kib = |k: Option<u64>| {
                k.map_or_else(|| "unknown".into(), |k| format!("{} MiB", k / 1024))
            };
            lines.extend([
                ("health reported", time(&h.received)),
                ("uptime", format!("{}s", h.uptime_secs)),
                (
                    "load",
                    format!("{:.2} {:.2} {:.2}", h.load[0], h.load[1], h.load[2]),
                ),
                (
                    "memory available",
                    format!(
                        "{} of {}",
                        kib(Some(h.mem_available_kib)),
                        kib(Some(h.mem_total_kib))
                    ),
                ),
                (
                    "CPU temperature",
                    h.temp_celsius
                        .map_or_else(|| "unknown".into(), |t| format!("{t:.1} C")),
                ),
                (
                    "free on /",
                    format!("{} of {}", kib(h.root_free_kib), kib(h.root_total_kib)),
                ),
                ("clock", if h.clock_set { "set" } else { "not set" }.into()),
                (
                    "bytes carried",
                    format!("{} in, {} out", h.bytes_in, h.bytes_out),
                ),
                (
                    "last error",
                    printable(h.last_error.as_deref().unwrap_or("none")),
                ),
            ]);
            match &h.cost {
                None => lines.push(("cost", "not reported".into())),
                Some(c) => lines.extend([
                    ("cost today", cost_line(&c.today, &c.day)),
                    (
                        "cost yesterday",
                        c.yesterday
                            .as_ref()
                            .map_or_else(|| "not counted".into(), |y| cost_line(y, "")),
                    ),
                ]),
            }
        }
    }
    if d.connections.is_empty() {
        lines.push(("connections", "none".into()));
    }
    for c in &d.connections {
        lines.push((
            "connection",
            format!(
                "{} from {}, RTT {} ms",
                printable(&c.protocol),
                printable(&c.address),
                c.rtt_ms
            ),
        ));
    }
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!("{:<19} {v}\n", format!("{k}:")));
    }
    out
}

/// A day's bytes, one line: `1.5 MiB on the wire, 1.0 MiB carried, 512.0 KiB
/// overhead (2026-12-05, 22h13m counted)`.
fn cost_line(d: &api::DayCostJson, day: &str) -> String {
    let secs = d.covered_secs;
    let counted = match secs {
        86_400.. => "whole day".to_string(),
        _ => format!("{}h{:02}m counted", secs / 3600, secs / 60 % 60),
    };
    let when = match day {
        "" => counted,
        day => format!("{}, {counted}", printable(day)),
    };
    format!(
        "{} on the wire, {} carried, {} overhead ({when})",
        api::bytes_text(d.wire),
        api::bytes_text(d.carried),
        api::bytes_text(d.overhead)
    )
}

/// A device's last change, one line: `ID STATE (why), ROLLOUT, AGO`.
fn change_line(c: Option<&api::ChangeJson>, now: u64) -> String {
    let Some(c) = c else {
        return "none".into();
    };
    let why = c
        .reason
        .as_ref()
        .map_or_else(String::new, |r| format!(" ({})", printable(r)));
    format!(
        "{} {}{why}, rollout {}, {}",
        printable(&c.id),
        c.state,
        printable(&c.rollout),
        api::ago(now, c.at.unix)
    )
}

/// The request of `push-config`: the YAML compiled here (its relative file names are
/// taken from its folder), as `mailslot config compile` does.
fn push_request(
    devices: &[String],
    fleet: Option<&str>,
    yaml: &Path,
    canary: Option<u8>,
) -> Result<api::PushRequest, String> {
    use base64::Engine as _;
    let bytes = super::push::compile_yaml(yaml)?;
    Ok(api::PushRequest {
        devices: devices.to_vec(),
        fleet: fleet.map(str::to_string),
        config: base64::engine::general_purpose::STANDARD.encode(bytes),
        canary,
        wait_secs: None,
    })
}

/// `push-config`: sends the push, prints the rollout id, then follows the rollout until
/// it ends or only offline devices are left (unless `wait` is off). A rollout stopped
/// by a rollback is an error.
async fn push_config(
    admin: &Admin,
    req: &api::PushRequest,
    wait: bool,
    json: bool,
) -> Result<(), String> {
    let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    let answer = admin
        .ok_with(Method::POST, "/api/v1/push-config", None, Bytes::from(body))
        .await?;
    let a: api::PushAnswer = serde_json::from_slice(&answer)
        .map_err(|e| format!("the edge's answer is not a push: {e}"))?;
    if json && !wait {
        println!("{}", String::from_utf8_lossy(&answer));
        return Ok(());
    }
    println!(
        "rollout {}: config push {} to {} device(s) of fleet {}{}",
        a.rollout,
        a.push,
        a.devices,
        printable(&a.fleet),
        if a.canaries < a.devices {
            format!(", {} canary device(s) first", a.canaries)
        } else {
            String::new()
        }
    );
    if !wait {
        return Ok(());
    }
    follow(admin, &a.rollout, json).await
}

/// Prints each device's state as it changes until the rollout settles.
pub(super) async fn follow(admin: &Admin, id: &str, json: bool) -> Result<(), String> {
    let path = format!("/api/v1/rollouts/{}", api::percent_encode(id));
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    loop {
        let body = admin.ok(Method::GET, &path, None).await?;
        let r: api::RolloutJson = serde_json::from_slice(&body)
            .map_err(|e| format!("the edge's answer is not a rollout: {e}"))?;
        for d in &r.devices {
            if seen.get(&d.id) != Some(&d.state) {
                seen.insert(d.id.clone(), d.state.clone());
                if !json {
                    let why = d
                        .reason
                        .as_ref()
                        .map_or_else(String::new, |w| format!(": {}", printable(w)));
                    println!("  {} {}{why}", d.id, d.state);
                }
            }
        }
        if r.settled() {
            if json {
                println!("{}", String::from_utf8_lossy(&body));
            }
            return summary(&r);
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}

/// The last line of a followed rollout; an error when it stopped.
fn summary(r: &api::RolloutJson) -> Result<(), String> {
    let count = |s: &str| r.devices.iter().filter(|d| d.state == s).count();
    if let Some(why) = &r.stopped {
        return Err(format!(
            "rollout {} stopped: {}; {} applied, {} skipped",
            r.id,
            printable(why),
            count("applied"),
            count("skipped")
        ));
    }
    let pending = count("pending") + count("waiting");
    if pending > 0 {
        println!(
            "rollout {}: {} applied; {pending} offline device(s) still pending: they get it when they come back (mailslot-edge devices ls shows it)",
            r.id,
            count("applied")
        );
    } else {
        println!(
            "rollout {}: applied everywhere ({})",
            r.id,
            count("applied")
        );
    }
    Ok(())
}

async fn revoke(admin: &Admin, id: &str, json: bool) -> Result<(), String> {
    let path = format!("/api/v1/devices/{}/revoke", api::percent_encode(id));
    if let Some(d) = device(admin, Method::POST, &path, id, json).await? {
        println!(
            "device {} ({}, fleet {}) revoked: its connections are cut and it cannot register again",
            d.id,
            printable(&d.name),
            printable(&d.fleet)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::fleet::api::tests::view;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        Args::parse(args.iter().map(OsString::from))
    }

    #[test]
    fn arguments() {
        let a = parse(&[
            "ls",
            "--config",
            "e.yml",
            "--fleet",
            "shop",
            "--offline",
            "--json",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            a.command,
            Command::Ls {
                fleet: Some("shop".into()),
                offline: true
            }
        );
        assert!(a.json);
        assert_eq!(a.config, PathBuf::from("e.yml"));
        let a = parse(&["show", "abc", "-c", "e.yml"]).unwrap().unwrap();
        assert_eq!(a.command, Command::Show("abc".into()));
        let a = parse(&["revoke", "--config", "e.yml", "abc"])
            .unwrap()
            .unwrap();
        assert_eq!(a.command, Command::Revoke("abc".into()));
        assert_eq!(parse(&["ls", "--help"]).unwrap(), None);
        let a = parse(&[
            "push-config",
            "-c",
            "e.yml",
            "d1",
            "d2",
            "new.yml",
            "--canary",
            "10%",
            "--no-wait",
            "--canary-wait",
            "10m",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            a.command,
            Command::PushConfig {
                devices: vec!["d1".into(), "d2".into()],
                fleet: None,
                yaml: "new.yml".into(),
                canary: Some(10),
                wait: false,
                canary_wait: Some(600),
            }
        );
        for bad in ["0s", "2d", "soon"] {
            let e = parse(&[
                "push-config",
                "-c",
                "e.yml",
                "d1",
                "n.yml",
                "--canary-wait",
                bad,
            ])
            .unwrap_err();
            assert!(e.contains("--canary-wait"), "{bad}: {e}");
        }
        let a = parse(&["push-config", "-c", "e.yml", "--fleet", "shop", "new.yml"])
            .unwrap()
            .unwrap();
        assert!(matches!(
            a.command,
            Command::PushConfig {
                fleet: Some(_),
                wait: true,
                ..
            }
        ));
        for (args, err) in [
            (&["show", "--config", "e.yml"][..], "ID is required"),
            (&["revoke", "--config", "e.yml"][..], "ID is required"),
            (&["ls"][..], "--config edge.yml is required"),
            (&["ls", "--config", "e.yml", "x"][..], "unexpected argument"),
            (&["rm", "--config", "e.yml"][..], "not a command"),
            (&["show", "x", "--offline", "-c", "e"][..], "are for ls"),
            (&[][..], "ls, show ID, revoke ID or push-config"),
            (
                &["push-config", "-c", "e", "a", "b.yml", "--fleet", "f"][..],
                "not both",
            ),
            (&["push-config", "-c", "e"][..], "config.yml is required"),
            (
                &["push-config", "-c", "e", "c.yml"][..],
                "name the device IDs",
            ),
            (
                &["push-config", "-c", "e", "--canary", "0%", "a", "c.yml"][..],
                "1% to 100%",
            ),
            (&["ls", "-c", "e", "--canary", "5"][..], "--canary"),
            (&["ls", "--bogus"][..], "--bogus"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(err), "{args:?}: {e}");
        }
    }

    #[test]
    fn the_table_is_aligned_and_plain() {
        let mut a = DeviceJson::of(&view(1, "pi\x1b[31m-one", "shop", true));
        a.name.push_str(&"x".repeat(50));
        let b = DeviceJson::of(&view(2, "pi-2", "home", false));
        let mut c = DeviceJson::of(&view(3, "pi-3", "home", false));
        c.health = None;
        let now = 1_700_000_000 + 2 * 60 + 180;
        let t = table(&[a.clone(), b, c], now);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID  "), "{t}");
        assert!(!t.contains('\x1b'));
        assert!(
            lines[1].contains("pi?[31m-onexxx")
                && lines[1].contains("online")
                && lines[1].contains("now")
        );
        assert!(
            lines[1].contains("quic") && lines[1].contains("31ms") && lines[1].contains("41.0C")
        );
        assert!(
            lines[2].contains("offline") && lines[2].contains("3m ago"),
            "{t}"
        );
        assert!(
            lines[3].contains("2m ago")
                && lines[3].split_whitespace().rev().take(4).all(|c| c == "-"),
            "{t}"
        );
        // Columns line up.
        let col = lines[0].find("STATE").unwrap();
        assert!(lines[1][col..].starts_with("online "), "{t}");
        assert!(lines[2][col..].starts_with("offline "), "{t}");
        assert!(lines[0].trim_end().ends_with("TODAY"), "{t}");
        assert!(lines[1].trim_end().ends_with("1.5 MiB"), "{t}");
        assert!(lines[2].trim_end().ends_with("3.0 MiB"), "{t}");
        let d = details(&a, now);
        assert!(d.contains("state:              online"), "{d}");
        assert!(
            d.contains(
                "cost today:         1.5 MiB on the wire, 976.6 KiB carried, 559.4 KiB \
                 overhead (2023-11-14, 22h13m counted)"
            ),
            "{d}"
        );
        assert!(
            d.contains("cost yesterday:     3.9 KiB on the wire, 10 B carried, 3.9 KiB overhead (whole day)"),
            "{d}"
        );
        let mut old = a.clone();
        if let Some(h) = old.health.as_mut() {
            h.cost = None;
        }
        assert!(details(&old, now).contains("cost:               not reported"));
        assert!(
            d.contains("connection:         quic from 192.0.2.7:40000, RTT 31 ms"),
            "{d}"
        );
        assert!(!d.contains('\x1b'));
    }
}
