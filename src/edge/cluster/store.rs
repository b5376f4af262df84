//! [`RedisStore`]: the fleet's [`Store`] in the shared Redis, so that every edge of a
//! cluster knows every device, counts one quota per enrolment key, and refuses a revoked
//! device wherever it was revoked.
//!
//! ```text
//!  mailslot:dev:<device id>    hash  rec      postcard DeviceRecord
//!                                    key      enrolment key id (16 bytes): the quota it
//!                                             counts under (wins over rec's)
//!                                    revoked  Unix seconds (wins over rec's; set once)
//!  mailslot:devices            set   every device id (its size: the store's bound)
//!  mailslot:key:<key id hex>   set   the devices enrolled with that key (its quota)
//!  mailslot:changed            channel: the id of each device enrolled or revoked
//!  mailslot:chg:<device id>    hash  <kind>.id    change id     the last change of
//!                                    <kind>.rollout rollout id  each kind (config,
//!                                    <kind>.rank    its state's rank     release)
//!                                    <kind>.rec     postcard ChangeRecord
//!  mailslot:changed-devices    set   devices with a change record (at most the devices)
//!  mailslot:rollouts           hash  rollout id -> postcard RolloutRecord
//!  mailslot:rollouts:running   set   ids of the rollouts not ended (what every edge
//!                                    reads each second)
//!  mailslot:rollouts:indexed   string set once the running set was built from the hash
//!                                    (by the first edge that reads it)
//!  mailslot:revoked:tunnel     hash  tunnel id hex -> Unix seconds it was revoked
//!  mailslot:revoked:access-token hash  access token id hex -> Unix seconds
//! ```
//!
//! A tunnel or access token revoked is written by a short Lua script (kept once, at most
//! `MAX_REVOKED_IDS` of each kind) that publishes `fleet::revoked::CHANGED_MARK` on
//! `mailslot:changed`: every edge reads the revocations again and enforces them.
//!
//! A change is written by a short Lua script (the rule of
//! `fleet::store::change_replaces`) that compares the stored change id and
//! state rank first, so two edges writing one device's change (one sends it, the other
//! hears the report) never move it back. A rollout is written in a `WATCH`/`MULTI` over
//! the rollouts hash, forgetting the oldest ended one beyond `MAX_ROLLOUTS`.
//!
//! Enrolment is one `WATCH`/`MULTI` transaction over the device's hash, its key's set
//! and the set of all devices: two edges enrolling the last place of a quota at once
//! both read, one commits, the other's `EXEC` fails and it decides again on what the
//! first wrote. Revocation is a short Lua script (set `revoked` once if the device
//! exists, publish). `revoked` and `key` are fields of their own so that batched
//! updates of a record (last seen, health) never undo either.

use std::sync::Arc;

use super::conn::Redis;
use crate::edge::fleet::revoked::{RevokedId, RevokedKind, CHANGED_MARK, MAX_REVOKED_IDS};
use crate::edge::fleet::store::{kind_name, plan_rollout_write, too_many_revoked};
use crate::edge::fleet::{
    ChangeRecord, DeviceRecord, Enrolled, RolloutRecord, Store, StoreError, MAX_DEVICES,
};

/// Prefix of every key and channel.
const PREFIX: &str = "mailslot:";
/// The set of every device id.
const DEVICES: &str = "mailslot:devices";
/// The channel where the ids of enrolled and revoked devices are published.
pub(crate) const CHANGED: &str = "mailslot:changed";
/// Transactions tried before enrolment gives up on a contended key (each failure is
/// another edge's commit: progress, not a stall).
const MAX_TRIES: usize = 32;
/// Records read per round trip by `list`.
const LIST_CHUNK: usize = 500;

/// Writes `rec` of a device that exists.
const UPDATE: &str = "if redis.call('EXISTS', KEYS[1]) == 1 then \
                      redis.call('HSET', KEYS[1], 'rec', ARGV[1]) end return 0";
/// Revokes a device that exists (the first time stays) and publishes its id.
const REVOKE: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end \
                      redis.call('HSETNX', KEYS[1], 'revoked', ARGV[1]) \
                      redis.call('PUBLISH', KEYS[2], ARGV[2]) return 1";

/// Revokes a tunnel or access token once, within a bound, and tells the edges: KEYS
/// the kind's hash, the changes channel; ARGV id hex, Unix seconds, bound, the mark.
const REVOKE_ID: &str = "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 0 end \
    if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end \
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) \
    redis.call('PUBLISH', KEYS[2], ARGV[4]) return 1";

/// The hash of revoked ids of `kind`.
fn revoked_key(kind: RevokedKind) -> String {
    format!("{PREFIX}revoked:{}", kind.word())
}

/// The set of devices with a change record.
const CHANGED_DEVICES: &str = "mailslot:changed-devices";
/// The hash of rollouts.
const ROLLOUTS: &str = "mailslot:rollouts";
/// The set of the running rollouts' ids.
const RUNNING: &str = "mailslot:rollouts:running";
/// Set once [`RUNNING`] holds every running rollout (older edges wrote none).
const INDEXED: &str = "mailslot:rollouts:indexed";
/// Writes a change unless the stored one is the same change at a later state (or an
/// end already): KEYS chg, changed-devices; ARGV kind, id, rollout, rank, rec, device.
const PUT_CHANGE: &str = "local k = ARGV[1] \
    local old = redis.call('HMGET', KEYS[1], k .. '.id', k .. '.rollout', k .. '.rank') \
    if old[1] == ARGV[2] and old[2] == ARGV[3] and old[3] then \
      local o = tonumber(old[3]) local n = tonumber(ARGV[4]) \
      if n < o or (n == o and n >= 3) then return 0 end \
    end \
    redis.call('HSET', KEYS[1], k .. '.id', ARGV[2], k .. '.rollout', ARGV[3], \
      k .. '.rank', ARGV[4], k .. '.rec', ARGV[5]) \
    redis.call('SADD', KEYS[2], ARGV[6]) return 1";

fn chg_key(device: &str) -> String {
    format!("{PREFIX}chg:{device}")
}

fn decode_any<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt(crate::wire::bounded_reason(key)))
}

fn encode_any<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|e| StoreError::Engine(e.to_string()))
}

fn dev_key(id: &str) -> String {
    format!("{PREFIX}dev:{id}")
}

fn quota_key(key_id: &[u8; 16]) -> String {
    format!("{PREFIX}key:{}", crate::util::hex(key_id))
}

fn encode(record: &DeviceRecord) -> Result<Vec<u8>, StoreError> {
    crate::edge::fleet::store::encode_record(record).map_err(|e| StoreError::Engine(e.to_string()))
}

/// The `config.rec` and `release.rec` fields of a device's change hash.
type ChangeFields = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The fields of a device's hash: `rec`, `key`, `revoked`.
type Fields = (Option<Vec<u8>>, Option<Vec<u8>>, Option<u64>);

/// The record in a device's hash, its `key` and `revoked` fields applied.
fn assemble(id: &str, fields: Fields) -> Result<Option<DeviceRecord>, StoreError> {
    let (Some(rec), key, revoked) = fields else {
        return Ok(None);
    };
    let mut r = crate::edge::fleet::store::decode_record(&rec)
        .map_err(|_| StoreError::Corrupt(crate::wire::bounded_reason(id)))?;
    if let Some(k) = key.and_then(|k| <[u8; 16]>::try_from(k.as_slice()).ok()) {
        r.key_id = k;
    }
    r.revoked = revoked.or(r.revoked);
    Ok(Some(r))
}

fn fields_of(con: &mut redis::Connection, id: &str) -> redis::RedisResult<Fields> {
    redis::cmd("HMGET")
        .arg(dev_key(id))
        .arg("rec")
        .arg("key")
        .arg("revoked")
        .query(con)
}

/// The fleet's records in the shared Redis (see the module doc).
pub struct RedisStore {
    redis: Arc<Redis>,
    /// Most records kept: [`MAX_DEVICES`].
    max: u64,
}

impl RedisStore {
    pub(crate) fn new(redis: Arc<Redis>) -> RedisStore {
        RedisStore {
            redis,
            max: MAX_DEVICES,
        }
    }

    /// One try of an enrolment; `None` when another edge changed what it read.
    fn try_enroll(
        &self,
        con: &mut redis::Connection,
        record: &DeviceRecord,
        max_devices: Option<u32>,
    ) -> redis::RedisResult<Result<Option<Enrolled>, StoreError>> {
        let id = record.id.as_str();
        let dev = dev_key(id);
        let quota = quota_key(&record.key_id);
        redis::cmd("WATCH")
            .arg(&dev)
            .arg(&quota)
            .arg(DEVICES)
            .exec(con)?;
        let decided = self.decide(con, record, max_devices, &quota)?;
        let (outcome, mut pipe) = match decided {
            Ok(Decision::Write(outcome, pipe)) => (outcome, pipe),
            Ok(Decision::Done(outcome)) => {
                redis::cmd("UNWATCH").exec(con)?;
                return Ok(Ok(Some(outcome)));
            }
            Err(e) => {
                redis::cmd("UNWATCH").exec(con)?;
                return Ok(Err(e));
            }
        };
        pipe.publish(CHANGED, id);
        let committed: Option<redis::Value> = pipe.query(con)?;
        Ok(Ok(committed.map(|_| outcome)))
    }

    /// What enrolling `record` does, given what the store holds now.
    fn decide(
        &self,
        con: &mut redis::Connection,
        record: &DeviceRecord,
        max_devices: Option<u32>,
        quota: &str,
    ) -> redis::RedisResult<Result<Decision, StoreError>> {
        let id = record.id.as_str();
        let dev = dev_key(id);
        let full = |count: u32| max_devices.is_some_and(|max| count >= max);
        let old = match assemble(id, fields_of(con, id)?) {
            Ok(old) => old,
            Err(e) => return Ok(Err(e)),
        };
        let mut pipe = redis::pipe();
        pipe.atomic();
        let outcome = match old {
            Some(old) if old.revoked.is_some() => return Ok(Ok(Decision::Done(Enrolled::Revoked))),
            Some(old) => {
                if old.key_id != record.key_id {
                    // Moving to another key takes a place under it.
                    let count: u32 = redis::cmd("SCARD").arg(quota).query(con)?;
                    if full(count) {
                        return Ok(Ok(Decision::Done(Enrolled::QuotaFull { count })));
                    }
                    pipe.srem(quota_key(&old.key_id), id).sadd(quota, id);
                }
                let mut next = record.clone();
                next.enrolled = old.enrolled;
                next.first_seen = old.first_seen;
                Enrolled::Again.write(&mut pipe, &dev, &next)
            }
            None => {
                let total: u64 = redis::cmd("SCARD").arg(DEVICES).query(con)?;
                if total >= self.max {
                    return Ok(Ok(Decision::Done(Enrolled::Full { max: self.max })));
                }
                let count: u32 = redis::cmd("SCARD").arg(quota).query(con)?;
                if full(count) {
                    return Ok(Ok(Decision::Done(Enrolled::QuotaFull { count })));
                }
                pipe.sadd(quota, id).sadd(DEVICES, id);
                Enrolled::New.write(&mut pipe, &dev, record)
            }
        };
        Ok(outcome.map(|o| Decision::Write(o, pipe)))
    }
}

/// What an enrolment try decided.
enum Decision {
    /// Nothing to write: the outcome stands.
    Done(Enrolled),
    /// Commit the transaction (its commands queued), then the outcome stands.
    Write(Enrolled, redis::Pipeline),
}

impl Enrolled {
    /// Queues the writing of `record` (its `rec` and `key` fields) into `pipe`.
    fn write(
        self,
        pipe: &mut redis::Pipeline,
        dev: &str,
        record: &DeviceRecord,
    ) -> Result<Enrolled, StoreError> {
        pipe.hset(dev, "rec", encode(record)?)
            .hset(dev, "key", record.key_id.as_slice());
        Ok(self)
    }
}

impl Store for RedisStore {
    fn enroll(
        &self,
        record: &DeviceRecord,
        max_devices: Option<u32>,
    ) -> Result<Enrolled, StoreError> {
        for _ in 0..MAX_TRIES {
            let step = self
                .redis
                .call(|con| self.try_enroll(con, record, max_devices))??;
            if let Some(outcome) = step {
                return Ok(outcome);
            }
        }
        Err(StoreError::Engine(format!(
            "redis {}: enrolment of device {} kept conflicting with other edges; try again",
            self.redis.shown(),
            record.id
        )))
    }

    fn get(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let fields = self.redis.call(|con| fields_of(con, id))?;
        assemble(id, fields)
    }

    fn list(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let ids: Vec<String> = self
            .redis
            .call(|con| redis::cmd("SMEMBERS").arg(DEVICES).query(con))?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(LIST_CHUNK) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HMGET")
                    .arg(dev_key(id))
                    .arg("rec")
                    .arg("key")
                    .arg("revoked");
            }
            let all: Vec<Fields> = self.redis.call(|con| pipe.query(con))?;
            for (id, fields) in chunk.iter().zip(all) {
                out.extend(assemble(id, fields)?);
            }
        }
        Ok(out)
    }

    fn update(&self, records: &[DeviceRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for r in records {
            pipe.cmd("EVAL")
                .arg(UPDATE)
                .arg(1)
                .arg(dev_key(&r.id))
                .arg(encode(r)?)
                .ignore();
        }
        self.redis.call(|con| pipe.exec(con))
    }

    fn revoke(&self, id: &str, at: u64) -> Result<bool, StoreError> {
        let found: i64 = self.redis.call(|con| {
            redis::cmd("EVAL")
                .arg(REVOKE)
                .arg(2)
                .arg(dev_key(id))
                .arg(CHANGED)
                .arg(at)
                .arg(id)
                .query(con)
        })?;
        Ok(found == 1)
    }

    fn put_changes(&self, changes: &[ChangeRecord]) -> Result<Vec<bool>, StoreError> {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for c in changes {
            pipe.cmd("EVAL")
                .arg(PUT_CHANGE)
                .arg(2)
                .arg(chg_key(&c.device))
                .arg(CHANGED_DEVICES)
                .arg(kind_name(c.kind))
                .arg(&c.id)
                .arg(&c.rollout)
                .arg(c.state.rank())
                .arg(encode_any(c)?)
                .arg(&c.device);
        }
        let written: Vec<i64> = self.redis.call(|con| pipe.query(con))?;
        Ok(written.into_iter().map(|w| w == 1).collect())
    }

    fn changes_of(&self, device: &str) -> Result<Vec<ChangeRecord>, StoreError> {
        let recs: ChangeFields = self.redis.call(|con| {
            redis::cmd("HMGET")
                .arg(chg_key(device))
                .arg("config.rec")
                .arg("release.rec")
                .query(con)
        })?;
        [recs.0, recs.1]
            .into_iter()
            .flatten()
            .map(|b| decode_any(device, &b))
            .collect()
    }

    fn list_changes(&self) -> Result<Vec<ChangeRecord>, StoreError> {
        let ids: Vec<String> = self
            .redis
            .call(|con| redis::cmd("SMEMBERS").arg(CHANGED_DEVICES).query(con))?;
        let mut out = Vec::new();
        for chunk in ids.chunks(LIST_CHUNK) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("HMGET")
                    .arg(chg_key(id))
                    .arg("config.rec")
                    .arg("release.rec");
            }
            let all: Vec<ChangeFields> = self.redis.call(|con| pipe.query(con))?;
            for (id, recs) in chunk.iter().zip(all) {
                for b in [recs.0, recs.1].into_iter().flatten() {
                    out.push(decode_any(id, &b)?);
                }
            }
        }
        Ok(out)
    }

    fn put_rollout(&self, rollout: &RolloutRecord) -> Result<bool, StoreError> {
        for _ in 0..MAX_TRIES {
            let step = self.redis.call(|con| {
                redis::cmd("WATCH").arg(ROLLOUTS).exec(con)?;
                let all: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL").arg(ROLLOUTS).query(con)?;
                let kept: Result<Vec<RolloutRecord>, StoreError> =
                    all.iter().map(|(k, v)| decode_any(k, v)).collect();
                let (forget, merged) = match kept.map(|k| plan_rollout_write(&k, rollout)) {
                    Ok(Some(f)) => f,
                    Ok(None) => {
                        redis::cmd("UNWATCH").exec(con)?;
                        return Ok(Ok(Some(false)));
                    }
                    Err(e) => {
                        redis::cmd("UNWATCH").exec(con)?;
                        return Ok(Err(e));
                    }
                };
                let mut pipe = redis::pipe();
                pipe.atomic();
                for id in &forget {
                    pipe.hdel(ROLLOUTS, id);
                    pipe.srem(RUNNING, id);
                }
                if merged.ended.is_none() {
                    pipe.sadd(RUNNING, &rollout.id);
                } else {
                    pipe.srem(RUNNING, &rollout.id);
                }
                let rec = match encode_any(&merged) {
                    Ok(rec) => rec,
                    Err(e) => {
                        redis::cmd("UNWATCH").exec(con)?;
                        return Ok(Err(e));
                    }
                };
                pipe.hset(ROLLOUTS, &rollout.id, rec.as_slice());
                let committed: Option<redis::Value> = pipe.query(con)?;
                Ok(Ok(committed.map(|_| true)))
            })??;
            if let Some(done) = step {
                return Ok(done);
            }
        }
        Err(StoreError::Engine(format!(
            "redis {}: rollout {} kept conflicting with other edges; try again",
            self.redis.shown(),
            rollout.id
        )))
    }

    fn get_rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        let rec: Option<Vec<u8>> = self
            .redis
            .call(|con| redis::cmd("HGET").arg(ROLLOUTS).arg(id).query(con))?;
        rec.map(|b| decode_any(id, &b)).transpose()
    }

    fn list_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let all: Vec<(String, Vec<u8>)> = self
            .redis
            .call(|con| redis::cmd("HGETALL").arg(ROLLOUTS).query(con))?;
        all.iter().map(|(k, v)| decode_any(k, v)).collect()
    }

    fn running_rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let indexed: bool = self
            .redis
            .call(|con| redis::cmd("EXISTS").arg(INDEXED).query(con))?;
        if !indexed {
            // Rollouts written by edges that kept no index: build it once.
            let running: Vec<RolloutRecord> = self
                .list_rollouts()?
                .into_iter()
                .filter(|r| r.ended.is_none())
                .collect();
            self.redis.call(|con| {
                let mut pipe = redis::pipe();
                for r in &running {
                    pipe.sadd(RUNNING, &r.id).ignore();
                }
                pipe.set(INDEXED, 1).ignore().query::<()>(con)
            })?;
            return Ok(running);
        }
        let ids: Vec<String> = self
            .redis
            .call(|con| redis::cmd("SMEMBERS").arg(RUNNING).query(con))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let recs: Vec<Option<Vec<u8>>> = self
            .redis
            .call(|con| redis::cmd("HMGET").arg(ROLLOUTS).arg(&ids).query(con))?;
        let mut out = Vec::new();
        for (id, rec) in ids.iter().zip(recs) {
            if let Some(bytes) = rec {
                let r: RolloutRecord = decode_any(id, &bytes)?;
                if r.ended.is_none() {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    fn revoke_id(&self, revoked: &RevokedId) -> Result<bool, StoreError> {
        let written: i64 = self.redis.call(|con| {
            redis::cmd("EVAL")
                .arg(REVOKE_ID)
                .arg(2)
                .arg(revoked_key(revoked.kind))
                .arg(CHANGED)
                .arg(crate::util::hex(&revoked.id))
                .arg(revoked.at)
                .arg(MAX_REVOKED_IDS)
                .arg(CHANGED_MARK)
                .query(con)
        })?;
        match written {
            -1 => Err(too_many_revoked(revoked.kind)),
            w => Ok(w == 1),
        }
    }

    fn revoked_ids(&self) -> Result<Vec<RevokedId>, StoreError> {
        let mut out = Vec::new();
        for kind in [RevokedKind::Tunnel, RevokedKind::AccessToken] {
            let all: Vec<(String, u64)> = self
                .redis
                .call(|con| redis::cmd("HGETALL").arg(revoked_key(kind)).query(con))?;
            for (hex, at) in all {
                let id = crate::edge::fleet::revoked::parse_id(&hex)
                    .ok_or_else(|| StoreError::Corrupt(crate::wire::bounded_reason(&hex)))?;
                out.push(RevokedId { kind, id, at });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edge::cluster::testing::RedisServer;
    use crate::edge::fleet::store::suite;

    fn store(server: &RedisServer) -> RedisStore {
        RedisStore::new(Arc::new(Redis::new(&server.addr()).unwrap()))
    }

    #[test]
    fn enrol_new_again_revoked_and_quota() {
        let server = RedisServer::start("enrol");
        suite::enrol_new_again_revoked_and_quota(&store(&server));
    }

    #[test]
    fn moving_to_another_key_moves_the_quota() {
        let server = RedisServer::start("move");
        suite::moving_to_another_key_moves_the_quota(&store(&server));
    }

    #[test]
    fn updates_write_only_known_records() {
        let server = RedisServer::start("update");
        suite::updates_write_only_known_records(&store(&server));
    }

    #[test]
    fn the_store_refuses_new_devices_beyond_its_bound() {
        let server = RedisServer::start("bound");
        let mut s = store(&server);
        s.max = 2;
        suite::refuses_new_devices_beyond_its_bound(&s);
    }

    #[test]
    fn concurrent_enrolment_never_exceeds_the_quota() {
        let server = RedisServer::start("race");
        // Two edges: two stores, each with its own connections.
        let a: Arc<dyn Store> = Arc::new(store(&server));
        suite::concurrent_enrolment_never_exceeds_the_quota(a);
        let b = store(&server);
        assert_eq!(
            b.enroll(&suite::record(21, 5), Some(5)).unwrap(),
            Enrolled::QuotaFull { count: 5 }
        );
    }

    #[test]
    fn revocations_are_kept_once() {
        let server = RedisServer::start("revoked");
        crate::edge::fleet::revoked::suite::revocations_are_kept_once(&store(&server));
    }

    #[test]
    fn running_rollouts_are_listed_until_they_end() {
        let server = RedisServer::start("running");
        suite::running_rollouts_are_listed_until_they_end(&store(&server));
    }

    #[test]
    fn rollouts_written_before_the_index_are_found() {
        let server = RedisServer::start("index");
        let s = store(&server);
        let r = suite::rollout(3, false);
        assert!(s.put_rollout(&r).unwrap());
        // As an edge that kept no index left it.
        s.redis
            .call(|con| redis::cmd("DEL").arg(RUNNING).arg(INDEXED).query::<()>(con))
            .unwrap();
        let running = s.running_rollouts().unwrap();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].id, r.id);
        assert_eq!(s.running_rollouts().unwrap().len(), 1);
    }

    #[test]
    fn changes_only_move_forward() {
        let server = RedisServer::start("changes");
        suite::changes_only_move_forward(&store(&server));
    }

    #[test]
    fn rollouts_are_bounded() {
        let server = RedisServer::start("rollouts");
        suite::rollouts_are_bounded(&store(&server));
    }

    /// Two edges sharing the store: one starts a push to a device connected to the
    /// other only; the other's sweep delivers it, and the report it hears ends the
    /// rollout for both.
    #[tokio::test]
    async fn another_edge_of_the_cluster_delivers_a_pending_push() {
        use crate::edge::fleet::rollout::{Change, Rollouts};
        use crate::wire::{ChangeKind, ChangeOutcome, ChangeReport, EdgeMsg};
        let server = RedisServer::start("rollout");
        let a = Rollouts::new(Arc::new(store(&server)));
        let b = Rollouts::new(Arc::new(store(&server)));
        let (mut at_b, _guard) = b.attach("dev1", 1).await;
        let change = Change {
            kind: ChangeKind::Config,
            id: "p1".into(),
            message: EdgeMsg::PushConfig { push: vec![1, 2] },
            wait: std::time::Duration::from_secs(60),
        };
        let id = a.start(change, vec!["dev1".into()], None).await.unwrap();
        assert!(at_b.try_recv().is_err(), "not before edge b looks");
        b.sweep().await.unwrap();
        assert_eq!(
            at_b.try_recv().unwrap(),
            EdgeMsg::PushConfig { push: vec![1, 2] }
        );
        let report = ChangeReport {
            kind: ChangeKind::Config,
            id: "p1".into(),
            outcome: ChangeOutcome::Applied,
            config_digest: [0; 8],
        };
        assert!(b.report("dev1", &report).await.unwrap().is_some());
        a.sweep().await.unwrap();
        let (r, states) = a.get(&id).await.unwrap().unwrap();
        assert!(r.ended.is_some() && r.stopped.is_none(), "{r:?}");
        assert_eq!(states[0].as_ref().unwrap().state.word(), "applied");
        assert_eq!(a.cached("dev1")[0].state.word(), "applied");
    }

    #[test]
    fn an_unreadable_record_is_reported_not_a_panic() {
        let server = RedisServer::start("corrupt");
        let s = store(&server);
        s.enroll(&suite::record(1, 7), None).unwrap();
        s.redis
            .call(|con| {
                redis::cmd("HSET")
                    .arg(dev_key("broken"))
                    .arg("rec")
                    .arg([0xffu8; 3].as_slice())
                    .exec(con)?;
                redis::cmd("SADD").arg(DEVICES).arg("broken").exec(con)
            })
            .unwrap();
        assert!(matches!(s.get("broken"), Err(StoreError::Corrupt(id)) if id == "broken"));
        assert!(matches!(s.list(), Err(StoreError::Corrupt(_))));
        assert!(s.get(&suite::record(1, 7).id).unwrap().is_some());
    }

    #[test]
    fn redis_down_is_a_clear_error_and_redis_back_needs_no_new_store() {
        let mut server = RedisServer::start("down");
        let s = store(&server);
        assert_eq!(s.enroll(&suite::record(1, 1), None).unwrap(), Enrolled::New);
        server.stop();
        let e = s
            .enroll(&suite::record(2, 1), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("fleet store: redis unix://") && e.contains("unreachable"),
            "{e}"
        );
        assert!(s.revoke(&suite::record(1, 1).id, 5).is_err());
        server.restart();
        assert_eq!(s.enroll(&suite::record(2, 1), None).unwrap(), Enrolled::New);
        // What Redis had written to its append-only file came back with it.
        assert_eq!(s.list().unwrap().len(), 2);
    }
}
