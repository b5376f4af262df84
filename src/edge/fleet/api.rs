//! The fleet as the admin API shows it: the JSON shape of a device (version 1 of
//! `/api/v1/devices`), the list's filter and pages, and the small text helpers the
//! `devices` commands and the fleet page share (times, ages, query strings).
//!
//! The JSON shape is stable: fields are added, never renamed or removed, within `v1`.
//! Keys are hex, times are [`Time`] (Unix seconds and RFC 3339), health is in natural
//! units (load as a float, temperature in degrees Celsius). docs/fleet.md has an example.

use serde::{Deserialize, Serialize};

use super::rollout::Change;
use super::store::{kind_name, ChangeRecord, RolloutRecord};
use super::{DeviceView, Inventory};
use crate::wire::{ChangeKind, EdgeMsg};

/// Devices in one page of `/api/v1/devices` unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 500;
/// Most devices in one page (a device is about 1 KB of JSON: a page stays near 1 MB).
pub const MAX_LIMIT: usize = 1000;
/// Most query parameters read from one URL; the rest are ignored.
const MAX_PARAMS: usize = 16;

/// A point in time: Unix seconds and the same as RFC 3339 text (UTC).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    pub unix: u64,
    pub rfc3339: String,
}

impl Time {
    pub fn of(unix: u64) -> Time {
        Time {
            unix,
            rfc3339: rfc3339(unix),
        }
    }
}

/// One live connection of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnJson {
    /// `quic` or `http2`.
    pub protocol: String,
    /// Where it comes from now.
    pub address: String,
    /// Smoothed round-trip time, milliseconds.
    pub rtt_ms: u32,
}

/// The device's latest health report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthJson {
    /// When the edge received it.
    pub received: Time,
    pub uptime_secs: u64,
    /// Load averages over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    pub mem_available_kib: u64,
    pub mem_total_kib: u64,
    /// CPU temperature, degrees Celsius; `null` when the board has no sensor.
    pub temp_celsius: Option<f64>,
    pub root_free_kib: Option<u64>,
    pub root_total_kib: Option<u64>,
    /// Whether the board's clock is set (false: it runs on its last-known-good time).
    pub clock_set: bool,
    /// Bytes carried through the tunnel since the connector started, each way.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub last_error: Option<String>,
    /// What the device's tunnel carried and cost on the wire, today and yesterday;
    /// `null` from a connector that does not count it (an older version).
    #[serde(default)]
    pub cost: Option<CostJson>,
}

/// A device's bytes per UTC day of its own clock, counted on the device in memory and
/// sent with its health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostJson {
    /// The device's today, `YYYY-MM-DD`.
    pub day: String,
    pub today: DayCostJson,
    /// `null` when the device has no count of yesterday (it started today, or its
    /// clock stepped).
    pub yesterday: Option<DayCostJson>,
}

/// Bytes over (part of) one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayCostJson {
    /// Payload of the tunnel's streams, both ways.
    pub carried: u64,
    /// Bytes of the tunnel's connections on the wire, both ways (UDP or TCP payloads,
    /// DNS lookups of edge names estimated).
    pub wire: u64,
    /// `wire − carried` (0 when carried is larger): keep-alives, acknowledgements,
    /// handshakes, health reports, framing.
    pub overhead: u64,
    /// Seconds the figures cover: 86 400 for a whole day.
    pub covered_secs: u32,
}

impl CostJson {
    pub fn of(c: &crate::wire::HealthCostTail) -> CostJson {
        let day = |carried: u64, wire: u64, covered_secs: u32| DayCostJson {
            carried,
            wire,
            overhead: wire.saturating_sub(carried),
            covered_secs,
        };
        let mut date = rfc3339(u64::from(c.day) * 86_400);
        date.truncate(date.find('T').unwrap_or(date.len()));
        CostJson {
            day: date,
            today: day(c.today_carried, c.today_wire, c.today_secs),
            yesterday: (c.yesterday_secs > 0)
                .then(|| day(c.yesterday_carried, c.yesterday_wire, c.yesterday_secs)),
        }
    }
}

/// `n` bytes, short: `512 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB`, `2.0 TiB`.
pub fn bytes_text(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match (unit, UNITS.get(unit)) {
        (0, _) => format!("{n} B"),
        (_, Some(u)) => format!("{value:.1} {u}"),
        (_, None) => format!("{n} B"),
    }
}

/// One device, as `/api/v1/devices/ID` answers and `/api/v1/devices` lists.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceJson {
    pub id: String,
    pub name: String,
    pub fleet: String,
    /// `online`, `offline` or `revoked` (see [`state`]).
    pub state: String,
    /// At least one connection registered now.
    pub online: bool,
    /// Ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// Id of the enrolment key it enrolled with, 32 hex digits.
    pub enrolment_key: String,
    pub hostnames: Vec<String>,
    pub version: String,
    pub arch: String,
    pub board: String,
    /// First 8 bytes of the SHA-256 of its config, hex.
    pub config_digest: String,
    pub enrolled: Time,
    pub first_seen: Time,
    pub last_seen: Time,
    pub credential_expires: Time,
    pub revoked: Option<Time>,
    /// The address it connected from, last seen.
    pub address: String,
    pub connections: Vec<ConnJson>,
    pub health: Option<HealthJson>,
    /// The device's last config push, and where it stands.
    #[serde(default)]
    pub config_push: Option<ChangeJson>,
    /// The device's last release offer, and where it stands.
    #[serde(default)]
    pub release: Option<ChangeJson>,
}

/// A device's last change of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeJson {
    /// The push id or the release version.
    pub id: String,
    pub rollout: String,
    /// `waiting`, `pending`, `sent`, `applied`, `rolled back`, `refused`, `skipped`.
    pub state: String,
    /// Why, for `rolled back` and `refused`.
    pub reason: Option<String>,
    /// When the state was written.
    pub at: Time,
}

impl ChangeJson {
    pub fn of(c: &ChangeRecord) -> ChangeJson {
        ChangeJson {
            id: c.id.clone(),
            rollout: c.rollout.clone(),
            state: c.state.word().to_string(),
            reason: c.state.reason().map(str::to_string),
            at: Time::of(c.at),
        }
    }
}

/// One page of `/api/v1/devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceList {
    /// Devices matching the filter in all pages.
    pub total: usize,
    /// The devices of this page, ordered by id.
    pub devices: Vec<DeviceJson>,
    /// Pass as `after=` for the next page; `null` on the last one.
    pub next: Option<String>,
}

/// `online`, `offline` (known, not connected, not revoked) or `revoked`.
pub fn state(v: &DeviceView) -> &'static str {
    if v.record.revoked.is_some() {
        "revoked"
    } else if v.online {
        "online"
    } else {
        "offline"
    }
}

impl DeviceJson {
    pub fn of(v: &DeviceView) -> DeviceJson {
        let r = &v.record;
        DeviceJson {
            id: r.id.clone(),
            name: r.name.clone(),
            fleet: r.fleet.clone(),
            state: state(v).to_string(),
            online: v.online,
            public_key: crate::util::hex(&r.public_key),
            enrolment_key: crate::util::hex(&r.key_id),
            hostnames: r.hostnames.clone(),
            version: r.version.clone(),
            arch: r.arch.clone(),
            board: r.board.clone(),
            config_digest: r.config_digest.clone(),
            enrolled: Time::of(r.enrolled),
            first_seen: Time::of(r.first_seen),
            last_seen: Time::of(r.last_seen),
            credential_expires: Time::of(r.credential_expires),
            revoked: r.revoked.map(Time::of),
            address: r.address.clone(),
            connections: v
                .connections
                .iter()
                .map(|c| ConnJson {
                    protocol: c.protocol.clone(),
                    address: c.address.clone(),
                    rtt_ms: c.rtt_ms,
                })
                .collect(),
            health: r.health.as_ref().map(|h| HealthJson {
                received: Time::of(r.health_at),
                uptime_secs: h.uptime_secs,
                load: h.load_centi.map(|c| f64::from(c) / 100.0),
                mem_available_kib: h.mem_available_kib,
                mem_total_kib: h.mem_total_kib,
                temp_celsius: h.temp_millicelsius.map(|m| f64::from(m) / 1000.0),
                root_free_kib: h.root_free_kib,
                root_total_kib: h.root_total_kib,
                clock_set: h.clock_set,
                bytes_in: h.bytes_in,
                bytes_out: h.bytes_out,
                last_error: h.last_error.clone(),
                cost: r.health_cost.as_ref().map(CostJson::of),
            }),
            config_push: v
                .changes
                .iter()
                .find(|c| c.kind == ChangeKind::Config)
                .map(ChangeJson::of),
            release: v
                .changes
                .iter()
                .find(|c| c.kind == ChangeKind::Release)
                .map(ChangeJson::of),
        }
    }

    /// The protocols of its connections, `quic`, `http2` or `quic+http2`; empty offline.
    pub fn protocols(&self) -> String {
        let mut p: Vec<&str> = self
            .connections
            .iter()
            .map(|c| c.protocol.as_str())
            .collect();
        p.sort_unstable();
        p.dedup();
        p.join("+")
    }

    /// The lowest round trip of its connections.
    pub fn rtt_ms(&self) -> Option<u32> {
        self.connections.iter().map(|c| c.rtt_ms).min()
    }

    pub fn temp_celsius(&self) -> Option<f64> {
        self.health.as_ref().and_then(|h| h.temp_celsius)
    }

    /// The 1-minute load average.
    pub fn load1(&self) -> Option<f64> {
        self.health.as_ref().map(|h| h.load[0])
    }

    /// Bytes its tunnel put on the wire today, as last reported.
    pub fn wire_today(&self) -> Option<u64> {
        self.health.as_ref()?.cost.as_ref().map(|c| c.today.wire)
    }
}

/// Which devices a list shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only this fleet.
    pub fleet: Option<String>,
    /// Only offline devices (not revoked).
    pub offline: bool,
}

impl Filter {
    pub fn matches(&self, v: &DeviceView) -> bool {
        self.fleet.as_ref().is_none_or(|f| *f == v.record.fleet)
            && (!self.offline || state(v) == "offline")
    }
}

/// The query of `/api/v1/devices`: `fleet=F`, `offline=1`, `limit=N` (1 to
/// [`MAX_LIMIT`]), `after=ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub filter: Filter,
    pub limit: usize,
    pub after: Option<String>,
}

impl ListQuery {
    pub fn parse(query: &str) -> Result<ListQuery, String> {
        let mut q = ListQuery {
            filter: Filter::default(),
            limit: DEFAULT_LIMIT,
            after: None,
        };
        for (k, v) in params(query) {
            match k.as_str() {
                "fleet" if !v.is_empty() => q.filter.fleet = Some(v),
                "offline" => q.filter.offline = matches!(v.as_str(), "" | "1" | "true" | "yes"),
                "limit" => {
                    q.limit = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| format!("limit={v}: a number from 1 to {MAX_LIMIT}"))?
                }
                "after" if !v.is_empty() => q.after = Some(v),
                _ => {}
            }
        }
        Ok(q)
    }
}

/// One page of `views` (ordered by id, as [`super::Inventory::list`] returns them).
pub fn list_page(views: &[DeviceView], q: &ListQuery) -> DeviceList {
    let matching: Vec<&DeviceView> = views.iter().filter(|v| q.filter.matches(v)).collect();
    let total = matching.len();
    let rest: Vec<&&DeviceView> = matching
        .iter()
        .filter(|v| {
            q.after
                .as_ref()
                .is_none_or(|a| v.record.id.as_str() > a.as_str())
        })
        .collect();
    let devices: Vec<DeviceJson> = rest
        .iter()
        .take(q.limit)
        .map(|v| DeviceJson::of(v))
        .collect();
    let next = if rest.len() > q.limit {
        devices.last().map(|d| d.id.clone())
    } else {
        None
    };
    DeviceList {
        total,
        devices,
        next,
    }
}

/// Largest body of `POST /api/v1/push-config`: the config, base64, and the device ids.
pub const MAX_PUSH_BODY: usize = 1024 * 1024;
/// How long a device may take to report a config push by default: its rollback
/// deadline (120 s by default) and a reconnection.
pub const PUSH_WAIT: u64 = 300;

/// The body of `POST /api/v1/push-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// Device ids; or empty with `fleet`.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Every device of this fleet (not revoked).
    #[serde(default)]
    pub fleet: Option<String>,
    /// The compiled `config.bin`, base64.
    pub config: String,
    /// The canary share, percent (1 to 100); none: everyone at once.
    #[serde(default)]
    pub canary: Option<u8>,
    /// How long a device may take to report, seconds ([`PUSH_WAIT`] by default).
    #[serde(default)]
    pub wait_secs: Option<u64>,
}

/// The answer of `POST /api/v1/push-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushAnswer {
    pub rollout: String,
    /// The push id, 16 hex digits.
    pub push: String,
    pub fleet: String,
    pub devices: usize,
    pub canaries: usize,
}

/// One device of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutDeviceJson {
    pub id: String,
    pub canary: bool,
    /// Connected to this edge now.
    pub online: bool,
    /// As [`ChangeJson::state`]; `superseded` when a later change replaced it.
    pub state: String,
    pub reason: Option<String>,
}

/// `GET /api/v1/rollouts/ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutJson {
    pub id: String,
    /// `config` or `release`.
    pub kind: String,
    /// The push id or the release version.
    pub change: String,
    pub created: Time,
    /// `running`, `stopped` or `done`.
    pub state: String,
    /// Why it stopped.
    pub stopped: Option<String>,
    pub devices: Vec<RolloutDeviceJson>,
}

impl RolloutJson {
    pub fn of(
        r: &RolloutRecord,
        states: &[Option<ChangeRecord>],
        online: impl Fn(&str) -> bool,
    ) -> RolloutJson {
        let state = match (&r.stopped, r.ended) {
            (Some(_), _) => "stopped",
            (None, Some(_)) => "done",
            (None, None) => "running",
        };
        RolloutJson {
            id: r.id.clone(),
            kind: kind_name(r.kind).into(),
            change: r.change.clone(),
            created: Time::of(r.created),
            state: state.into(),
            stopped: r.stopped.clone(),
            devices: r
                .targets
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let c = states.get(i).and_then(|c| c.as_ref());
                    RolloutDeviceJson {
                        id: d.clone(),
                        canary: i < r.canaries as usize,
                        online: online(d),
                        state: c.map_or("superseded", |c| c.state.word()).into(),
                        reason: c.and_then(|c| c.state.reason().map(str::to_string)),
                    }
                })
                .collect(),
        }
    }

    /// Whether following it is over: ended, or nothing left but devices that are
    /// offline (pending: they get it when they come back) or waiting behind them.
    pub fn settled(&self) -> bool {
        if self.state != "running" {
            return true;
        }
        // A rollback or refusal stops a running rollout at the edge's next sweep (within
        // a second): until then it is not over, whatever the other devices show.
        if self
            .devices
            .iter()
            .any(|d| matches!(d.state.as_str(), "rolled back" | "refused"))
        {
            return false;
        }
        let canaries_done = self
            .devices
            .iter()
            .filter(|d| d.canary)
            .all(|d| d.state == "applied");
        self.devices.iter().all(|d| match d.state.as_str() {
            "sent" => false,
            "pending" => !d.online,
            "waiting" => !canaries_done,
            _ => true,
        })
    }
}

/// `POST /api/v1/push-config`: checks, signs and starts a rollout. Errors carry the
/// HTTP status to answer.
pub async fn push_config(
    inv: &Inventory,
    signing: Option<&ring::signature::Ed25519KeyPair>,
    body: &[u8],
) -> Result<PushAnswer, (u16, String)> {
    use base64::Engine as _;
    let bad = |e: String| (400u16, e);
    let req: PushRequest =
        serde_json::from_slice(body).map_err(|e| bad(format!("not a push request: {e}")))?;
    let config = base64::engine::general_purpose::STANDARD
        .decode(req.config.as_bytes())
        .map_err(|e| bad(format!("config: not base64: {e}")))?;
    let signing = signing.ok_or((
        409,
        "this edge has no signing-key: it cannot sign config pushes".to_string(),
    ))?;
    let (fleet, targets) = push_targets(inv, &req).map_err(bad)?;
    let push = super::push::sign_push(signing, &fleet, config).map_err(bad)?;
    let id = push.id_hex();
    let bytes = push.encode().map_err(|e| bad(e.to_string()))?;
    let change = Change {
        kind: ChangeKind::Config,
        id: id.clone(),
        message: EdgeMsg::PushConfig { push: bytes },
        wait: std::time::Duration::from_secs(req.wait_secs.unwrap_or(PUSH_WAIT).clamp(1, 86_400)),
    };
    let devices = targets.len();
    let canaries = super::rollout::canary_count(devices, req.canary);
    let rollout = inv
        .rollouts()
        .start(change, targets, req.canary)
        .await
        .map_err(|e| (503u16, e))?;
    Ok(PushAnswer {
        rollout,
        push: id,
        fleet,
        devices,
        canaries,
    })
}

/// The devices a push or an upgrade names: `devices` (each known and not revoked, once),
/// or every device of `fleet` not revoked; one of the two.
pub(super) fn chosen_devices<'a>(
    all: &'a [DeviceView],
    devices: &[String],
    fleet: Option<&str>,
) -> Result<Vec<&'a DeviceView>, String> {
    match (fleet, devices.is_empty()) {
        (Some(_), false) => Err("name devices or a fleet, not both".into()),
        (None, true) => Err("name the devices, or a fleet".into()),
        (Some(f), true) => Ok(all
            .iter()
            .filter(|v| v.record.fleet == f && v.record.revoked.is_none())
            .collect()),
        (None, false) => {
            let mut out: Vec<&DeviceView> = Vec::new();
            for id in devices {
                let v = all
                    .iter()
                    .find(|v| v.record.id == *id)
                    .ok_or_else(|| format!("no device {}", crate::wire::printable(id)))?;
                if v.record.revoked.is_some() {
                    return Err(format!("device {id} is revoked"));
                }
                if !out.iter().any(|o| o.record.id == *id) {
                    out.push(v);
                }
            }
            Ok(out)
        }
    }
}

/// The devices a push goes to (online ones first) and their one fleet.
fn push_targets(inv: &Inventory, req: &PushRequest) -> Result<(String, Vec<String>), String> {
    let all = inv.list();
    let mut chosen = chosen_devices(&all, &req.devices, req.fleet.as_deref())?;
    let Some(first) = chosen.first() else {
        return Err(format!(
            "no devices in fleet {}",
            crate::wire::printable(req.fleet.as_deref().unwrap_or(""))
        ));
    };
    let fleet = first.record.fleet.clone();
    if let Some(other) = chosen.iter().find(|v| v.record.fleet != fleet) {
        return Err(format!(
            "devices of fleets {} and {}: a push is signed for one fleet; push to each apart",
            crate::wire::printable(&fleet),
            crate::wire::printable(&other.record.fleet)
        ));
    }
    // Online devices make the canaries: an offline canary would hold the rest back.
    chosen.sort_by_key(|v| !v.online);
    Ok((fleet, chosen.iter().map(|v| v.record.id.clone()).collect()))
}

/// `GET /api/v1/rollouts/ID`.
pub async fn rollout(inv: &Inventory, id: &str) -> Result<RolloutJson, (u16, String)> {
    let plain = (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric());
    if !plain {
        return Err((404, format!("no rollout {}", crate::wire::printable(id))));
    }
    match inv.rollouts().get(id).await {
        Ok(Some((r, states))) => Ok(RolloutJson::of(&r, &states, |d| {
            inv.get(d).is_some_and(|v| v.online)
        })),
        Ok(None) => Err((404, format!("no rollout {id}"))),
        Err(e) => Err((503, e)),
    }
}

/// The parameters of a query string, percent-decoded (`+` is a space); at most
/// [`MAX_PARAMS`].
pub fn params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .take(MAX_PARAMS)
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` and `+`; a malformed escape stays as it is.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|&h| char::from(h).to_digit(16));
        match c {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(h), Some(l)) => {
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                _ => out.push(c),
            },
            b'+' => out.push(b' '),
            _ => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Unix seconds as RFC 3339 in UTC, e.g. `2026-12-05T14:09:56Z`.
pub fn rfc3339(unix: u64) -> String {
    let days = unix / 86400;
    let secs = unix % 86400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// How long ago `then` was at `now`, short: `12s ago`, `3m ago`, `5h ago`, `2d ago`;
/// `never` for 0.
pub fn ago(now: u64, then: u64) -> String {
    if then == 0 {
        return "never".into();
    }
    let d = now.saturating_sub(then);
    match d {
        0..=59 => format!("{d}s ago"),
        60..=3599 => format!("{}m ago", d / 60),
        3600..=172_799 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::edge::fleet::{ConnView, DeviceRecord};
    use crate::wire::Health;

    /// A followed rollout is not over while a rollback waits for the sweep that stops it,
    /// nor while a device online has it in flight.
    #[test]
    fn a_rollout_is_settled_only_once_its_outcome_is_known() {
        let dev = |id: &str, canary: bool, online: bool, state: &str| RolloutDeviceJson {
            id: id.into(),
            canary,
            online,
            state: state.into(),
            reason: None,
        };
        let rollout = |state: &str, devices: Vec<RolloutDeviceJson>| RolloutJson {
            id: "r".into(),
            kind: "config".into(),
            change: "c".into(),
            created: Time::of(0),
            state: state.into(),
            stopped: None,
            devices,
        };
        // The only device rolled back; the sweep has not stopped the rollout yet.
        assert!(!rollout("running", vec![dev("a", true, true, "rolled back")]).settled());
        let canary_refused = vec![
            dev("a", true, true, "refused"),
            dev("b", false, true, "waiting"),
        ];
        assert!(!rollout("running", canary_refused).settled());
        assert!(!rollout("running", vec![dev("a", true, true, "sent")]).settled());
        // Stopped, done, or only offline devices left: over.
        assert!(rollout("stopped", vec![dev("a", true, true, "rolled back")]).settled());
        assert!(rollout("running", vec![dev("a", true, false, "pending")]).settled());
        assert!(rollout("running", vec![dev("a", true, true, "applied")]).settled());
    }

    /// A device record for tests: `n` picks the key, hence the id.
    pub(crate) fn view(n: u8, name: &str, fleet: &str, online: bool) -> DeviceView {
        let public_key = [n; 32];
        DeviceView {
            record: DeviceRecord {
                id: crate::identity::device_id(&public_key),
                public_key,
                name: name.into(),
                fleet: fleet.into(),
                key_id: [7; 16],
                hostnames: vec![format!("{name}.{fleet}.example.com")],
                version: "0.1.0".into(),
                arch: "aarch64".into(),
                board: "Raspberry Pi 4 Model B".into(),
                config_digest: "00112233aabbccdd".into(),
                enrolled: 1_700_000_000,
                first_seen: 1_700_000_000,
                last_seen: 1_700_000_000 + u64::from(n) * 60,
                credential_expires: 1_800_000_000,
                revoked: None,
                address: "192.0.2.7:40000".into(),
                health: Some(Health {
                    uptime_secs: 3600,
                    load_centi: [u32::from(n) * 10, 5, 1],
                    mem_available_kib: 500_000,
                    mem_total_kib: 1_000_000,
                    temp_millicelsius: Some(40_000 + i32::from(n) * 1000),
                    root_free_kib: Some(1_000),
                    root_total_kib: Some(8_000),
                    clock_set: true,
                    bytes_in: 10,
                    bytes_out: 20,
                    last_error: None,
                }),
                health_at: 1_700_000_100,
                health_cost: Some(crate::wire::HealthCostTail {
                    day: 19_675,
                    today_secs: 80_000,
                    today_carried: u64::from(n) * 1_000_000,
                    today_wire: u64::from(n) * 1_572_864,
                    yesterday_secs: 86_400,
                    yesterday_carried: 10,
                    yesterday_wire: 4_000,
                }),
            },
            online,
            changes: Vec::new(),
            connections: if online {
                vec![ConnView {
                    protocol: "quic".into(),
                    address: "192.0.2.7:40000".into(),
                    rtt_ms: 30 + u32::from(n),
                }]
            } else {
                Vec::new()
            },
        }
    }

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn costs_saturate_and_read_short() {
        // Hostile figures: carried beyond wire, the largest values, the last day.
        let c = CostJson::of(&crate::wire::HealthCostTail {
            day: u32::MAX,
            today_secs: u32::MAX,
            today_carried: u64::MAX,
            today_wire: 5,
            yesterday_secs: 0,
            yesterday_carried: 1,
            yesterday_wire: 1,
        });
        assert_eq!((c.today.overhead, c.today.wire), (0, 5));
        assert_eq!(c.yesterday, None, "no count of yesterday");
        assert!(!c.day.is_empty() && !c.day.contains('T'), "{}", c.day);
        assert_eq!(bytes_text(0), "0 B");
        assert_eq!(bytes_text(1023), "1023 B");
        assert_eq!(bytes_text(1536), "1.5 KiB");
        assert_eq!(bytes_text(3 * 1024 * 1024 + 200 * 1024), "3.2 MiB");
        assert_eq!(bytes_text(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(ago(100, 0), "never");
        assert_eq!(ago(100, 100), "0s ago");
        assert_eq!(ago(1000, 820), "3m ago");
        assert_eq!(ago(100_000, 100_000 - 7200), "2h ago");
        assert_eq!(ago(1_000_000, 1_000_000 - 3 * 86400), "3d ago");
        assert_eq!(ago(5, 10), "0s ago");
    }

    #[test]
    fn query_values_are_decoded_and_bounded() {
        assert_eq!(
            params("fleet=shop%20a&offline=1&x=%zz+y"),
            vec![
                ("fleet".into(), "shop a".into()),
                ("offline".into(), "1".into()),
                ("x".into(), "%zz y".into())
            ]
        );
        assert_eq!(params(&"a=1&".repeat(100)).len(), MAX_PARAMS);
        assert_eq!(percent_decode(&percent_encode("<a b>&é")), "<a b>&é");
        let q = ListQuery::parse("fleet=f&offline=1&limit=2&after=abc").unwrap();
        assert_eq!(q.filter.fleet.as_deref(), Some("f"));
        assert!(q.filter.offline);
        assert_eq!((q.limit, q.after.as_deref()), (2, Some("abc")));
        assert!(ListQuery::parse("limit=0").is_err());
        assert!(ListQuery::parse("limit=100000").is_err());
        assert_eq!(ListQuery::parse("").unwrap().limit, DEFAULT_LIMIT);
    }

    #[test]
    fn pages_follow_each_other_and_filters_apply() {
        let mut views: Vec<DeviceView> = (1..=5)
            .map(|n| {
                view(
                    n,
                    &format!("d{n}"),
                    if n % 2 == 0 { "b" } else { "a" },
                    n != 3,
                )
            })
            .collect();
        views.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        let mut q = ListQuery::parse("limit=2").unwrap();
        let mut seen = Vec::new();
        loop {
            let page = list_page(&views, &q);
            assert_eq!(page.total, 5);
            assert!(page.devices.len() <= 2);
            seen.extend(page.devices.iter().map(|d| d.id.clone()));
            match page.next {
                Some(n) => q.after = Some(n),
                None => break,
            }
        }
        let all: Vec<String> = views.iter().map(|v| v.record.id.clone()).collect();
        assert_eq!(seen, all);

        let a = list_page(&views, &ListQuery::parse("fleet=a").unwrap());
        assert_eq!(a.total, 3);
        assert!(a.devices.iter().all(|d| d.fleet == "a"));
        let off = list_page(&views, &ListQuery::parse("offline=1").unwrap());
        assert_eq!(off.devices.len(), 1);
        assert_eq!(off.devices[0].name, "d3");
        assert_eq!(off.devices[0].state, "offline");
    }

    #[test]
    fn the_json_shape_is_stable() {
        let mut v = view(1, "pi-1", "shop", true);
        v.record.revoked = Some(1_700_000_500);
        let json = serde_json::to_value(DeviceJson::of(&v)).unwrap();
        assert_eq!(json["state"], "revoked");
        assert_eq!(json["public_key"], "01".repeat(32));
        assert_eq!(json["enrolment_key"], "07".repeat(16));
        assert_eq!(json["last_seen"]["unix"], 1_700_000_060);
        assert_eq!(json["last_seen"]["rfc3339"], "2023-11-14T22:14:20Z");
        assert_eq!(json["revoked"]["unix"], 1_700_000_500);
        assert_eq!(json["health"]["temp_celsius"], 41.0);
        assert_eq!(json["health"]["load"][0], 0.1);
        assert_eq!(json["health"]["received"]["unix"], 1_700_000_100);
        assert_eq!(json["connections"][0]["rtt_ms"], 31);
        let cost = &json["health"]["cost"];
        assert_eq!(cost["day"], "2023-11-14");
        assert_eq!(cost["today"]["carried"], 1_000_000);
        assert_eq!(cost["today"]["wire"], 1_572_864);
        assert_eq!(cost["today"]["overhead"], 572_864);
        assert_eq!(cost["today"]["covered_secs"], 80_000);
        assert_eq!(cost["yesterday"]["overhead"], 3_990);
        let back: DeviceJson = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, DeviceJson::of(&v));
        // An edge that predates the cost answers without it: the CLI reads that too.
        let mut old = json;
        old["health"].as_object_mut().unwrap().remove("cost");
        let back: DeviceJson = serde_json::from_value(old).unwrap();
        assert_eq!(back.health.unwrap().cost, None);
        // A connector that predates it: no cost.
        let mut v = view(1, "pi-1", "shop", true);
        v.record.health_cost = None;
        let json = serde_json::to_value(DeviceJson::of(&v)).unwrap();
        assert!(json["health"]["cost"].is_null());
        let mut bare = view(2, "pi-2", "shop", false);
        bare.record.health = None;
        let json = serde_json::to_value(DeviceJson::of(&bare)).unwrap();
        assert!(json["health"].is_null() && json["revoked"].is_null());
        assert_eq!(json["state"], "offline");
    }
}
