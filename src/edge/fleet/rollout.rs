//! The rollout engine: one remote change (a config push, a release offer) taken to a
//! list of devices, a canary share first, stopped on the first rollback.
//!
//! ```text
//!  start ──▶ canaries: pending ──send──▶ sent ──report──▶ applied ─┐ all canaries
//!            the rest:  waiting                                    │ applied
//!                        └────────────────▶ pending ──▶ sent ──▶ applied ...
//!  a rollback, a refusal, or a canary silent for `wait`:
//!            stopped (why); every waiting or pending device: skipped
//! ```
//!
//! Its state lives in the [`Store`] (a [`RolloutRecord`], and each device's
//! [`ChangeRecord`]), so any edge sharing the store delivers a pending change to a
//! device it holds a connection of, and the inventory shows it after a restart. The
//! policy is [`step`], a function of the stored state and the time with no I/O; the
//! driver ([`Rollouts::sweep`], every [`SWEEP_EVERY`] on every edge while a rollout
//! runs) reads the store, applies what `step` decided and sends the pending changes it
//! can. A device that registers gets its pending change at once ([`Rollouts::attach`]);
//! an offline one stays pending until it comes back.
//!
//! Bounds: the store keeps each device's last change of each kind and at most
//! [`super::MAX_ROLLOUTS`] rollouts; a rollout has at most [`super::MAX_DEVICES`]
//! targets; [`Mailboxes`] holds one small channel per registered device connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::store::{ChangeRecord, ChangeState, RolloutRecord, Store, MAX_DEVICES};
use crate::util::lock;
use crate::wire::{self, ChangeKind, ChangeOutcome, ChangeReport, EdgeMsg};

/// How often each edge looks at the running rollouts.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Messages queued for one connection's control stream.
const MAILBOX: usize = 2;
/// A change sent this recently is not sent again when another connection of the
/// device registers (a device registers several at once; a push is up to a control
/// frame, on a link that may be metered).
const RESEND_AFTER: u64 = 30;

/// One remote change, to take to devices.
#[derive(Debug, Clone)]
pub struct Change {
    pub kind: ChangeKind,
    /// The push id (hex) or the release version.
    pub id: String,
    /// What each device is sent: `EdgeMsg::PushConfig` or `EdgeMsg::OfferRelease`.
    pub message: EdgeMsg,
    /// How long a device may take to report once sent: a canary silent that long stops
    /// the rollout.
    pub wait: Duration,
}

/// What [`step`] decided for one rollout.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The rollout's new state, when it changed.
    pub(crate) rollout: Option<RolloutRecord>,
    /// Device changes to write.
    pub(crate) writes: Vec<ChangeRecord>,
    /// Devices to send the change to now (pending in the current wave).
    pub(crate) deliver: Vec<String>,
}

/// The state of `device` in rollout `r`: its change record when it is this rollout's
/// (a later change of the same kind supersedes it: skipped).
fn state_in<'a>(
    r: &RolloutRecord,
    changes: &'a HashMap<String, ChangeRecord>,
    device: &str,
) -> Option<&'a ChangeState> {
    const SKIPPED: &ChangeState = &ChangeState::Skipped;
    match changes.get(device) {
        Some(c) if c.rollout == r.id => Some(&c.state),
        Some(_) => Some(SKIPPED),
        None => None,
    }
}

/// The policy: given a running rollout, its devices' changes (by device id, this kind
/// only) and the time, what to write and whom to send it to.
pub(crate) fn step(r: &RolloutRecord, changes: &HashMap<String, ChangeRecord>, now: u64) -> Plan {
    let mut plan = Plan::default();
    if r.ended.is_some() {
        return plan;
    }
    let canaries = (r.canaries as usize).min(r.targets.len());
    let wave = if r.rest_started {
        r.targets.len()
    } else {
        canaries
    };
    let mut next = r.clone();
    let record = |device: &str, state: ChangeState| ChangeRecord {
        device: device.to_string(),
        kind: r.kind,
        id: r.change.clone(),
        rollout: r.id.clone(),
        state,
        at: now,
    };
    // The first rollback, refusal or silent canary stops it.
    let stop =
        r.targets
            .iter()
            .take(wave)
            .enumerate()
            .find_map(|(i, d)| match state_in(r, changes, d)? {
                ChangeState::RolledBack { reason } => {
                    Some(format!("device {d} rolled back: {reason}"))
                }
                ChangeState::Refused { reason } => Some(format!("device {d} refused it: {reason}")),
                ChangeState::Sent { at }
                    if i < canaries && now.saturating_sub(*at) > r.wait_secs =>
                {
                    Some(format!("canary {d} did not report within {}s", r.wait_secs))
                }
                _ => None,
            });
    if let Some(why) = stop {
        for d in &r.targets {
            if matches!(
                state_in(r, changes, d),
                None | Some(ChangeState::Waiting | ChangeState::Pending)
            ) {
                plan.writes.push(record(d, ChangeState::Skipped));
            }
        }
        next.stopped = Some(wire::bounded_reason(why));
        next.ended = Some(now);
        plan.rollout = Some(next);
        return plan;
    }
    let canaries_applied = r
        .targets
        .iter()
        .take(canaries)
        .all(|d| matches!(state_in(r, changes, d), Some(ChangeState::Applied)));
    let wave = if !r.rest_started && canaries_applied {
        next.rest_started = true;
        for d in r.targets.iter().skip(canaries) {
            if matches!(state_in(r, changes, d), None | Some(ChangeState::Waiting)) {
                plan.writes.push(record(d, ChangeState::Pending));
                plan.deliver.push(d.clone());
            }
        }
        r.targets.len()
    } else {
        wave
    };
    for d in r.targets.iter().take(wave) {
        if matches!(state_in(r, changes, d), Some(ChangeState::Pending)) {
            plan.deliver.push(d.clone());
        }
    }
    let written: HashMap<&str, &ChangeState> = plan
        .writes
        .iter()
        .map(|c| (c.device.as_str(), &c.state))
        .collect();
    let all_final = r.targets.iter().all(|d| {
        written
            .get(d.as_str())
            .copied()
            .or_else(|| state_in(r, changes, d))
            .is_some_and(ChangeState::is_final)
    });
    if all_final {
        next.ended = Some(now);
    }
    if next != *r {
        plan.rollout = Some(next);
    }
    plan
}

/// The devices of a rollout of `n` targets that go first with a canary share of
/// `percent`: at least one.
pub(crate) fn canary_count(n: usize, percent: Option<u8>) -> usize {
    match percent {
        None => n,
        Some(p) => (n * usize::from(p)).div_ceil(100).clamp(1, n.max(1)),
    }
}

/// Channels into the control streams of registered device connections: how a change
/// reaches a device. One entry per connection (bounded by the registry's connection
/// limit), removed when the connection ends.
#[derive(Default)]
pub struct Mailboxes {
    boxes: Mutex<HashMap<String, Vec<Outlet>>>,
}

/// One connection's channel: the connection (its session id) and the sender.
type Outlet = (usize, mpsc::Sender<EdgeMsg>);

/// A connection's place in the [`Mailboxes`]; leaves them when dropped.
pub(crate) struct Mailbox {
    boxes: Arc<Mailboxes>,
    device: String,
    conn: usize,
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        let mut boxes = lock(&self.boxes.boxes);
        if let Some(list) = boxes.get_mut(&self.device) {
            list.retain(|(c, _)| *c != self.conn);
            if list.is_empty() {
                boxes.remove(&self.device);
            }
        }
    }
}

impl Mailboxes {
    /// Room for one message on one of the device's connections here; `None` when it
    /// has none (or all of them are busy).
    fn reserve(&self, device: &str) -> Option<mpsc::OwnedPermit<EdgeMsg>> {
        let boxes = lock(&self.boxes);
        boxes
            .get(device)?
            .iter()
            .find_map(|(_, tx)| tx.clone().try_reserve_owned().ok())
    }

    fn holds(&self, device: &str) -> bool {
        lock(&self.boxes).contains_key(device)
    }
}

/// The rollout engine of one edge (see the module doc).
pub struct Rollouts {
    store: Arc<dyn Store>,
    mailboxes: Arc<Mailboxes>,
    /// Every device's last changes as last read (bounded as the store's change
    /// records are): what the inventory's readers show. Read again on each sweep while
    /// a rollout runs and on the one after, every [`CACHE_EVERY`] sweeps otherwise, and
    /// written through on each write here.
    cache: Mutex<HashMap<String, Vec<ChangeRecord>>>,
    sweeps: std::sync::atomic::AtomicU64,
    /// Whether the last sweep saw a rollout running.
    was_running: std::sync::atomic::AtomicBool,
}

/// Sweeps between two reads of the change records while no rollout runs (a device's
/// late report to a stopped rollout, read at another edge).
const CACHE_EVERY: u64 = 60;

fn blocking_err(e: tokio::task::JoinError) -> String {
    format!("fleet store: {e}")
}

/// Runs a store call on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, super::StoreError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(blocking_err)?
        .map_err(|e| e.to_string())
}

impl Rollouts {
    pub fn new(store: Arc<dyn Store>) -> Rollouts {
        Rollouts {
            store,
            mailboxes: Arc::default(),
            cache: Mutex::default(),
            sweeps: Default::default(),
            was_running: Default::default(),
        }
    }

    /// Reads every change record into the cache (blocking: at start).
    pub(crate) fn load_cache(&self) {
        match self.store.list_changes() {
            Ok(all) => self.set_cache(all),
            Err(e) => log::warn!("fleet: remote changes not read: {e}"),
        }
    }

    fn set_cache(&self, all: Vec<ChangeRecord>) {
        let mut by_device: HashMap<String, Vec<ChangeRecord>> = HashMap::new();
        for c in all {
            by_device.entry(c.device.clone()).or_default().push(c);
        }
        *lock(&self.cache) = by_device;
    }

    /// Writes `c` into the cache, as the store now holds it.
    fn cache_one(&self, c: &ChangeRecord) {
        let mut cache = lock(&self.cache);
        let list = cache.entry(c.device.clone()).or_default();
        list.retain(|o| o.kind != c.kind);
        list.push(c.clone());
    }

    /// A device's last changes, as last read.
    pub fn cached(&self, device: &str) -> Vec<ChangeRecord> {
        lock(&self.cache).get(device).cloned().unwrap_or_default()
    }

    /// Starts taking `change` to `targets` (device ids; in this order, so put the
    /// online ones first: the canaries are the first `canary` percent, at least one).
    /// Returns the rollout id at once; the devices get it as [`Rollouts::sweep`] and
    /// their registrations find them.
    pub async fn start(
        &self,
        change: Change,
        targets: Vec<String>,
        canary: Option<u8>,
    ) -> Result<String, String> {
        if targets.is_empty() {
            return Err("no devices to send the change to".into());
        }
        if targets.len() as u64 > MAX_DEVICES {
            return Err(format!("more than {MAX_DEVICES} devices in one rollout"));
        }
        if let Some(p) = canary {
            if !(1..=100).contains(&p) {
                return Err(format!("canary share {p}% is not within 1..100%"));
            }
        }
        let message = postcard::to_allocvec(&change.message).map_err(|e| e.to_string())?;
        if message.len() > wire::MAX_CONTROL_FRAME {
            return Err("the change is larger than a control frame".into());
        }
        let now = crate::edge::token::now_unix();
        let canaries = canary_count(targets.len(), canary);
        let id = crate::util::hex(&crate::util::random_bytes::<8>());
        let rollout = RolloutRecord {
            id: id.clone(),
            kind: change.kind,
            change: change.id.clone(),
            message,
            wait_secs: change.wait.as_secs().max(1),
            canaries: u32::try_from(canaries).unwrap_or(u32::MAX),
            rest_started: canaries >= targets.len(),
            targets,
            created: now,
            stopped: None,
            ended: None,
        };
        let changes: Vec<ChangeRecord> = rollout
            .targets
            .iter()
            .enumerate()
            .map(|(i, d)| ChangeRecord {
                device: d.clone(),
                kind: change.kind,
                id: change.id.clone(),
                rollout: id.clone(),
                state: match i < canaries {
                    true => ChangeState::Pending,
                    false => ChangeState::Waiting,
                },
                at: now,
            })
            .collect();
        let store = self.store.clone();
        let cached = changes.clone();
        let room = blocking(move || {
            let room = store.put_rollout(&rollout)?;
            if room {
                store.put_changes(&changes)?;
            }
            Ok(room)
        })
        .await?;
        if room {
            for c in &cached {
                self.cache_one(c);
            }
        }
        if !room {
            return Err(format!(
                "{} rollouts are running already: wait for one to end",
                super::MAX_ROLLOUTS
            ));
        }
        log::info!(
            "fleet: rollout {id} of {} {} started: {canaries} first",
            super::store::kind_name(change.kind),
            change.id
        );
        if let Err(e) = self.sweep().await {
            log::warn!("fleet: rollout {id}: {e}; trying again");
        }
        Ok(id)
    }

    /// One rollout and its devices' states (in target order; `None`: no record).
    pub async fn get(
        &self,
        id: &str,
    ) -> Result<Option<(RolloutRecord, Vec<Option<ChangeRecord>>)>, String> {
        let store = self.store.clone();
        let owned = id.to_string();
        blocking(move || {
            let Some(r) = store.get_rollout(&owned)? else {
                return Ok(None);
            };
            let by_device = changes_by_device(store.list_changes()?, r.kind);
            let states = r
                .targets
                .iter()
                .map(|d| by_device.get(d).filter(|c| c.rollout == r.id).cloned())
                .collect();
            Ok(Some((r, states)))
        })
        .await
    }

    /// The last change of each kind of every device, by device id.
    pub async fn changes(&self) -> Result<HashMap<String, Vec<ChangeRecord>>, String> {
        let store = self.store.clone();
        let all = blocking(move || store.list_changes()).await?;
        let mut out: HashMap<String, Vec<ChangeRecord>> = HashMap::new();
        for c in all {
            out.entry(c.device.clone()).or_default().push(c);
        }
        Ok(out)
    }

    /// Looks at every running rollout: applies [`step`]'s plan and sends pending
    /// changes to the devices this edge holds.
    pub async fn sweep(&self) -> Result<(), String> {
        let store = self.store.clone();
        let n = self
            .sweeps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ran = self.was_running.load(std::sync::atomic::Ordering::Relaxed);
        let (running, changes) = blocking(move || {
            let running = store.running_rollouts()?;
            // Change records move while a rollout runs; after one ends they are read
            // once more (its last reports), then rarely (a late report).
            let read = !running.is_empty() || ran || n % CACHE_EVERY == 0;
            let changes = match read {
                false => None,
                true => Some(store.list_changes()?),
            };
            Ok((running, changes))
        })
        .await?;
        self.was_running
            .store(!running.is_empty(), std::sync::atomic::Ordering::Relaxed);
        let Some(changes) = changes else {
            return Ok(());
        };
        self.set_cache(changes.clone());
        if running.is_empty() {
            return Ok(());
        }
        let now = crate::edge::token::now_unix();
        for r in running {
            let by_device = changes_by_device(changes.iter().cloned(), r.kind);
            let plan = step(&r, &by_device, now);
            self.carry_out(&r, plan, now).await?;
        }
        Ok(())
    }

    /// Writes what `step` decided, then sends to the devices held here.
    async fn carry_out(&self, r: &RolloutRecord, plan: Plan, now: u64) -> Result<(), String> {
        let Plan {
            rollout,
            writes,
            deliver,
        } = plan;
        if !writes.is_empty() || rollout.is_some() {
            for w in &writes {
                self.cache_one(w);
            }
            let store = self.store.clone();
            let next = rollout.clone();
            blocking(move || {
                store.put_changes(&writes)?;
                if let Some(next) = &next {
                    store.put_rollout(next)?;
                }
                Ok(())
            })
            .await?;
        }
        if let Some(next) = &rollout {
            match (&next.stopped, next.ended) {
                (Some(why), _) => log::warn!("fleet: rollout {} stopped: {why}", r.id),
                (None, Some(_)) => log::info!("fleet: rollout {} applied everywhere", r.id),
                _ if next.rest_started && !r.rest_started => {
                    log::info!(
                        "fleet: rollout {}: the canaries applied; sending to the rest",
                        r.id
                    )
                }
                _ => {}
            }
        }
        let held: Vec<String> = deliver
            .into_iter()
            .filter(|d| self.mailboxes.holds(d))
            .collect();
        for d in held {
            self.send(r, &d, now).await?;
        }
        Ok(())
    }

    /// Marks the change sent to `device`, then sends it: a report that comes before the
    /// mark is written is never overwritten by it (the store orders states). Nothing
    /// is marked unless a connection here has room for it.
    async fn send(&self, r: &RolloutRecord, device: &str, now: u64) -> Result<(), String> {
        let msg: EdgeMsg = postcard::from_bytes(&r.message)
            .map_err(|_| format!("rollout {}: its message is unreadable", r.id))?;
        let Some(permit) = self.mailboxes.reserve(device) else {
            return Ok(());
        };
        let sent = ChangeRecord {
            device: device.to_string(),
            kind: r.kind,
            id: r.change.clone(),
            rollout: r.id.clone(),
            state: ChangeState::Sent { at: now },
            at: now,
        };
        let store = self.store.clone();
        let mine = sent.clone();
        let written = blocking(move || store.put_changes(&[sent])).await?;
        if written.first() == Some(&true) {
            self.cache_one(&mine);
            permit.send(msg);
            log::info!(
                "fleet: {} {} sent to device {device} (rollout {})",
                super::store::kind_name(r.kind),
                r.change,
                r.id
            );
        }
        Ok(())
    }

    /// A device connection registered: it gets a mailbox, and the device's pending (or
    /// sent but unanswered: the connection may have dropped) changes of running
    /// rollouts are sent to it.
    pub(crate) async fn attach(
        &self,
        device: &str,
        conn: usize,
    ) -> (mpsc::Receiver<EdgeMsg>, Mailbox) {
        let (tx, rx) = mpsc::channel(MAILBOX);
        lock(&self.mailboxes.boxes)
            .entry(device.to_string())
            .or_default()
            .push((conn, tx));
        let guard = Mailbox {
            boxes: self.mailboxes.clone(),
            device: device.to_string(),
            conn,
        };
        if let Err(e) = self.deliver_to(device).await {
            log::warn!("fleet: changes for device {device} not sent: {e}");
        }
        (rx, guard)
    }

    async fn deliver_to(&self, device: &str) -> Result<(), String> {
        let store = self.store.clone();
        let owned = device.to_string();
        let now = crate::edge::token::now_unix();
        let due = blocking(move || {
            let mut due = Vec::new();
            for c in store.changes_of(&owned)? {
                let resend = match c.state {
                    ChangeState::Pending => true,
                    ChangeState::Sent { at } => now.saturating_sub(at) >= RESEND_AFTER,
                    _ => false,
                };
                if !resend {
                    continue;
                }
                // A stopped rollout sends nothing more.
                if let Some(r) = store.get_rollout(&c.rollout)?.filter(|r| r.ended.is_none()) {
                    due.push(r);
                }
            }
            Ok(due)
        })
        .await?;
        for r in due {
            self.send(&r, device, now).await?;
        }
        Ok(())
    }

    /// A device's report of a change: its state in the store. `None` when it names no
    /// change of this device's (an old one, or made up).
    pub(crate) async fn report(
        &self,
        device: &str,
        report: &ChangeReport,
    ) -> Result<Option<ChangeState>, String> {
        let store = self.store.clone();
        let owned = device.to_string();
        let kind = report.kind;
        let id = report.id.clone();
        let state = match &report.outcome {
            ChangeOutcome::Applied => ChangeState::Applied,
            ChangeOutcome::RolledBack { reason } => ChangeState::RolledBack {
                reason: wire::bounded_reason(reason.clone()),
            },
            ChangeOutcome::Refused { reason } => ChangeState::Refused {
                reason: wire::bounded_reason(reason.clone()),
            },
        };
        let now = crate::edge::token::now_unix();
        let written = blocking(move || {
            let Some(mut c) = store
                .changes_of(&owned)?
                .into_iter()
                .find(|c| c.kind == kind && c.id == id)
            else {
                return Ok(None);
            };
            c.state = state;
            c.at = now;
            store.put_changes(std::slice::from_ref(&c))?;
            Ok(Some(c))
        })
        .await?;
        Ok(written.map(|c| {
            self.cache_one(&c);
            c.state
        }))
    }
}

/// The changes of `kind`, by device.
fn changes_by_device(
    all: impl IntoIterator<Item = ChangeRecord>,
    kind: ChangeKind,
) -> HashMap<String, ChangeRecord> {
    all.into_iter()
        .filter(|c| c.kind == kind)
        .map(|c| (c.device.clone(), c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(targets: &[&str], canaries: u32) -> RolloutRecord {
        RolloutRecord {
            id: "r1".into(),
            kind: ChangeKind::Config,
            change: "p1".into(),
            message: Vec::new(),
            wait_secs: 60,
            targets: targets.iter().map(|t| t.to_string()).collect(),
            canaries,
            created: 0,
            rest_started: canaries as usize >= targets.len(),
            stopped: None,
            ended: None,
        }
    }

    /// The stored changes after `plan` was written over `changes`.
    fn apply(changes: &mut HashMap<String, ChangeRecord>, r: &mut RolloutRecord, plan: &Plan) {
        for w in &plan.writes {
            changes.insert(w.device.clone(), w.clone());
        }
        if let Some(next) = &plan.rollout {
            *r = next.clone();
        }
    }

    fn set(changes: &mut HashMap<String, ChangeRecord>, d: &str, state: ChangeState) {
        changes.insert(
            d.into(),
            ChangeRecord {
                device: d.into(),
                kind: ChangeKind::Config,
                id: "p1".into(),
                rollout: "r1".into(),
                state,
                at: 0,
            },
        );
    }

    fn start(r: &RolloutRecord) -> HashMap<String, ChangeRecord> {
        let mut changes = HashMap::new();
        for (i, d) in r.targets.iter().enumerate() {
            let state = match i < r.canaries as usize {
                true => ChangeState::Pending,
                false => ChangeState::Waiting,
            };
            set(&mut changes, d, state);
        }
        changes
    }

    #[test]
    fn canaries_first_then_the_rest_then_done() {
        let mut r = rollout(&["a", "b", "c"], 1);
        let mut changes = start(&r);
        let plan = step(&r, &changes, 10);
        assert_eq!(plan.deliver, vec!["a".to_string()], "only the canary");
        assert!(plan.writes.is_empty());
        set(&mut changes, "a", ChangeState::Sent { at: 10 });
        let plan = step(&r, &changes, 20);
        assert!(
            plan.deliver.is_empty() && plan.rollout.is_none(),
            "{plan:?}"
        );
        set(&mut changes, "a", ChangeState::Applied);
        let plan = step(&r, &changes, 30);
        assert_eq!(plan.deliver, vec!["b".to_string(), "c".to_string()]);
        assert!(plan.rollout.as_ref().unwrap().rest_started);
        apply(&mut changes, &mut r, &plan);
        set(&mut changes, "b", ChangeState::Applied);
        // c is offline: it stays pending, delivered whenever it is held.
        let plan = step(&r, &changes, 40);
        assert_eq!(plan.deliver, vec!["c".to_string()]);
        assert_eq!(plan.rollout, None);
        set(&mut changes, "c", ChangeState::Applied);
        let plan = step(&r, &changes, 50);
        assert_eq!(plan.rollout.as_ref().unwrap().ended, Some(50));
        assert_eq!(plan.rollout.unwrap().stopped, None);
    }

    #[test]
    fn a_canary_rollback_stops_it_and_the_others_never_get_it() {
        let mut r = rollout(&["a", "b", "c", "d"], 2);
        let mut changes = start(&r);
        set(&mut changes, "a", ChangeState::Applied);
        set(
            &mut changes,
            "b",
            ChangeState::RolledBack {
                reason: "config p1 rolled back: edge unreachable".into(),
            },
        );
        let plan = step(&r, &changes, 10);
        assert!(plan.deliver.is_empty());
        let next = plan.rollout.clone().unwrap();
        assert_eq!(
            next.stopped.as_deref(),
            Some("device b rolled back: config p1 rolled back: edge unreachable")
        );
        assert_eq!(next.ended, Some(10));
        let skipped: Vec<&str> = plan.writes.iter().map(|w| w.device.as_str()).collect();
        assert_eq!(skipped, ["c", "d"]);
        assert!(plan.writes.iter().all(|w| w.state == ChangeState::Skipped));
        apply(&mut changes, &mut r, &plan);
        assert_eq!(
            step(&r, &changes, 20),
            Plan::default(),
            "ended: nothing more"
        );
    }

    #[test]
    fn a_refusal_or_a_silent_canary_stops_it() {
        let r = rollout(&["a", "b"], 1);
        let mut changes = start(&r);
        set(&mut changes, "a", ChangeState::Sent { at: 100 });
        assert_eq!(step(&r, &changes, 160).rollout, None, "within the wait");
        let plan = step(&r, &changes, 161);
        assert_eq!(
            plan.rollout.unwrap().stopped.as_deref(),
            Some("canary a did not report within 60s")
        );
        set(
            &mut changes,
            "a",
            ChangeState::Refused {
                reason: "bad signature".into(),
            },
        );
        let plan = step(&r, &changes, 101);
        assert_eq!(
            plan.rollout.unwrap().stopped.as_deref(),
            Some("device a refused it: bad signature")
        );
    }

    #[test]
    fn without_a_canary_everyone_gets_it_and_a_rollback_still_stops_it() {
        let r = rollout(&["a", "b", "c"], 3);
        let mut changes = start(&r);
        assert_eq!(step(&r, &changes, 1).deliver.len(), 3);
        set(&mut changes, "a", ChangeState::Sent { at: 1 });
        // Not a canary's silence: only canaries time out (3 of 3 here are).
        set(
            &mut changes,
            "b",
            ChangeState::RolledBack { reason: "x".into() },
        );
        let plan = step(&r, &changes, 2);
        assert!(plan.rollout.unwrap().stopped.is_some());
        assert_eq!(plan.writes.len(), 1, "c skipped, a (sent) left as it is");
    }

    #[test]
    fn a_later_change_supersedes_this_rollouts_state() {
        let r = rollout(&["a"], 1);
        let mut changes = start(&r);
        changes.get_mut("a").unwrap().rollout = "r2".into();
        let plan = step(&r, &changes, 5);
        assert_eq!(plan.rollout.unwrap().ended, Some(5));
        assert!(plan.deliver.is_empty());
    }

    fn engine(tag: &str) -> (Rollouts, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "mailslot-rollout-{tag}-{}-{}",
            std::process::id(),
            crate::util::hex(&crate::util::random_bytes::<4>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::edge::fleet::RedbStore::open(&dir.join("f.redb")).unwrap();
        (Rollouts::new(Arc::new(store)), dir)
    }

    fn change() -> Change {
        Change {
            kind: ChangeKind::Config,
            id: "p1".into(),
            message: EdgeMsg::PushConfig { push: vec![7; 10] },
            wait: Duration::from_secs(60),
        }
    }

    fn report(outcome: ChangeOutcome) -> ChangeReport {
        ChangeReport {
            kind: ChangeKind::Config,
            id: "p1".into(),
            outcome,
            config_digest: [0; 8],
        }
    }

    #[tokio::test]
    async fn the_engine_sends_the_canary_and_a_rollback_keeps_the_rest_from_it() {
        let (engine, dir) = engine("stop");
        let (mut a, _ga) = engine.attach("a", 1).await;
        let (mut b, _gb) = engine.attach("b", 2).await;
        let targets = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let id = engine.start(change(), targets, Some(10)).await.unwrap();
        assert!(
            matches!(a.try_recv(), Ok(EdgeMsg::PushConfig { .. })),
            "the canary has it"
        );
        assert!(b.try_recv().is_err(), "the others wait");
        let (_, states) = engine.get(&id).await.unwrap().unwrap();
        let words: Vec<&str> = states
            .iter()
            .map(|c| c.as_ref().unwrap().state.word())
            .collect();
        assert_eq!(words, ["sent", "waiting", "waiting"]);
        let why = "config p1 rolled back: no edge".to_string();
        let got = engine
            .report(
                "a",
                &report(ChangeOutcome::RolledBack {
                    reason: why.clone(),
                }),
            )
            .await
            .unwrap();
        assert_eq!(got, Some(ChangeState::RolledBack { reason: why }));
        engine.sweep().await.unwrap();
        engine.sweep().await.unwrap();
        assert!(b.try_recv().is_err(), "never sent to the others");
        let (r, states) = engine.get(&id).await.unwrap().unwrap();
        assert!(r.stopped.unwrap().starts_with("device a rolled back: "));
        let words: Vec<&str> = states
            .iter()
            .map(|c| c.as_ref().unwrap().state.word())
            .collect();
        assert_eq!(words, ["rolled back", "skipped", "skipped"]);
        // A device that registers later gets nothing of a stopped rollout.
        let (mut c, _gc) = engine.attach("c", 3).await;
        assert!(c.try_recv().is_err());
        assert_eq!(engine.cached("c")[0].state, ChangeState::Skipped);
        // A report of a change the device never had is ignored.
        let mut other = report(ChangeOutcome::Applied);
        other.id = "nope".into();
        assert_eq!(engine.report("b", &other).await.unwrap(), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn an_offline_device_gets_its_pending_change_when_it_registers() {
        let (engine, dir) = engine("pending");
        let id = engine
            .start(change(), vec!["a".into()], None)
            .await
            .unwrap();
        let (_, states) = engine.get(&id).await.unwrap().unwrap();
        assert_eq!(states[0].as_ref().unwrap().state, ChangeState::Pending);
        let (mut a, _ga) = engine.attach("a", 1).await;
        assert!(matches!(a.try_recv(), Ok(EdgeMsg::PushConfig { .. })));
        engine
            .report("a", &report(ChangeOutcome::Applied))
            .await
            .unwrap();
        engine.sweep().await.unwrap();
        let (r, _) = engine.get(&id).await.unwrap().unwrap();
        assert!(r.ended.is_some() && r.stopped.is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn canary_shares_round_up_to_at_least_one() {
        assert_eq!(canary_count(10, None), 10);
        assert_eq!(canary_count(10, Some(10)), 1);
        assert_eq!(canary_count(10, Some(25)), 3);
        assert_eq!(canary_count(3, Some(1)), 1);
        assert_eq!(canary_count(3, Some(100)), 3);
        assert_eq!(canary_count(1, Some(50)), 1);
    }
}
