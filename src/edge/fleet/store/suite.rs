//! The behaviour every [`Store`] shows, as test steps over any implementation.

use super::*;

/// A record of device `n` enrolled with key `key`.
pub(crate) fn record(n: u8, key: u8) -> DeviceRecord {
    let public_key = [n; 32];
    DeviceRecord {
        id: crate::identity::device_id(&public_key),
        public_key,
        name: format!("board{n}"),
        fleet: "shops".into(),
        key_id: [key; 16],
        hostnames: vec![format!("d{n}.shops.example.com")],
        version: "0.1.0".into(),
        arch: "aarch64".into(),
        board: "Raspberry Pi 4".into(),
        config_digest: "0011223344556677".into(),
        enrolled: 100,
        first_seen: 100,
        last_seen: 100,
        credential_expires: 1000,
        revoked: None,
        address: "192.0.2.1:4000".into(),
        health: None,
        health_at: 0,
        health_cost: None,
    }
}

/// New, again, quota full, another key, revoked; updates never undo a revocation.
pub(crate) fn enrol_new_again_revoked_and_quota(store: &dyn Store) {
    assert_eq!(store.enroll(&record(1, 7), Some(2)).unwrap(), Enrolled::New);
    let mut again = record(1, 7);
    again.last_seen = 200;
    again.first_seen = 200;
    again.enrolled = 200;
    assert_eq!(store.enroll(&again, Some(2)).unwrap(), Enrolled::Again);
    let kept = store.get(&again.id).unwrap().unwrap();
    assert_eq!(
        (kept.enrolled, kept.first_seen, kept.last_seen),
        (100, 100, 200)
    );
    assert_eq!(store.enroll(&record(2, 7), Some(2)).unwrap(), Enrolled::New);
    assert_eq!(
        store.enroll(&record(3, 7), Some(2)).unwrap(),
        Enrolled::QuotaFull { count: 2 }
    );
    assert_eq!(store.get(&record(3, 7).id).unwrap(), None);
    // Another key has its own quota; no quota is no limit.
    assert_eq!(store.enroll(&record(3, 8), None).unwrap(), Enrolled::New);
    assert!(store.revoke(&record(1, 7).id, 300).unwrap());
    assert!(!store.revoke("nosuchdevice", 300).unwrap());
    // A second revocation keeps the first time.
    assert!(store.revoke(&record(1, 7).id, 400).unwrap());
    assert_eq!(
        store.enroll(&record(1, 7), Some(2)).unwrap(),
        Enrolled::Revoked
    );
    // An update does not undo a revocation.
    store.update(&[record(1, 7)]).unwrap();
    assert_eq!(
        store.get(&record(1, 7).id).unwrap().unwrap().revoked,
        Some(300)
    );
    assert_eq!(store.list().unwrap().len(), 3);
}

/// A device moving to another key takes a place under it and frees its old one.
pub(crate) fn moving_to_another_key_moves_the_quota(store: &dyn Store) {
    assert_eq!(store.enroll(&record(1, 1), Some(1)).unwrap(), Enrolled::New);
    assert_eq!(store.enroll(&record(2, 2), Some(1)).unwrap(), Enrolled::New);
    assert_eq!(
        store.enroll(&record(1, 2), Some(1)).unwrap(),
        Enrolled::QuotaFull { count: 1 }
    );
    assert_eq!(
        store.enroll(&record(1, 3), Some(1)).unwrap(),
        Enrolled::Again
    );
    assert_eq!(
        store.get(&record(1, 3).id).unwrap().unwrap().key_id,
        [3; 16]
    );
    // Key 1 has room again.
    assert_eq!(store.enroll(&record(4, 1), Some(1)).unwrap(), Enrolled::New);
}

/// Updates write what exists, skip what does not, keep the key and the revocation.
pub(crate) fn updates_write_only_known_records(store: &dyn Store) {
    store.enroll(&record(1, 7), Some(1)).unwrap();
    let mut r = record(1, 7);
    r.last_seen = 555;
    r.key_id = [9; 16];
    r.health = Some(crate::wire::Health {
        uptime_secs: 9,
        ..Default::default()
    });
    r.health_cost = Some(crate::wire::HealthCostTail {
        today_wire: 4321,
        ..Default::default()
    });
    store.update(&[r, record(9, 9)]).unwrap();
    store.revoke(&record(1, 7).id, 600).unwrap();
    let all = store.list().unwrap();
    assert_eq!(all.len(), 1, "an update never creates a record");
    let r = &all[0];
    assert_eq!(r.last_seen, 555);
    assert_eq!(r.key_id, [7; 16], "the quota's key stays");
    assert_eq!(r.revoked, Some(600));
    assert_eq!(r.health.as_ref().unwrap().uptime_secs, 9);
    assert_eq!(r.health_cost.as_ref().unwrap().today_wire, 4321);
    assert_eq!(
        store.enroll(&record(2, 7), Some(1)).unwrap(),
        Enrolled::QuotaFull { count: 1 }
    );
}

/// `store` holds at most 2 records: the third new device is refused.
pub(crate) fn refuses_new_devices_beyond_its_bound(store: &dyn Store) {
    assert_eq!(store.enroll(&record(1, 1), None).unwrap(), Enrolled::New);
    assert_eq!(store.enroll(&record(2, 2), None).unwrap(), Enrolled::New);
    assert_eq!(
        store.enroll(&record(3, 3), None).unwrap(),
        Enrolled::Full { max: 2 }
    );
    assert_eq!(store.enroll(&record(1, 1), None).unwrap(), Enrolled::Again);
    assert_eq!(store.list().unwrap().len(), 2);
}

fn change(device: &str, id: &str, state: ChangeState) -> ChangeRecord {
    ChangeRecord {
        device: device.into(),
        kind: ChangeKind::Config,
        id: id.into(),
        rollout: format!("r-{id}"),
        state,
        at: 7,
    }
}

pub(crate) fn rollout(n: u32, ended: bool) -> RolloutRecord {
    RolloutRecord {
        id: format!("{n:016x}"),
        kind: ChangeKind::Config,
        change: format!("{n:016x}"),
        message: vec![1, 2, 3],
        wait_secs: 60,
        targets: vec!["a".into(), "b".into()],
        canaries: 1,
        created: u64::from(n),
        rest_started: false,
        stopped: None,
        ended: ended.then_some(u64::from(n)),
    }
}

/// A change never moves back for the same push; a new push replaces the last one;
/// the kinds are kept apart.
pub(crate) fn changes_only_move_forward(store: &dyn Store) {
    let pending = change("d1", "p1", ChangeState::Pending);
    let sent = change("d1", "p1", ChangeState::Sent { at: 9 });
    let applied = change("d1", "p1", ChangeState::Applied);
    assert_eq!(
        store.put_changes(std::slice::from_ref(&pending)).unwrap(),
        vec![true]
    );
    assert_eq!(
        store.put_changes(std::slice::from_ref(&applied)).unwrap(),
        vec![true]
    );
    // A late `Sent` (another edge) and a second end do not undo the end.
    assert_eq!(
        store
            .put_changes(&[sent, change("d1", "p1", ChangeState::Skipped)])
            .unwrap(),
        vec![false, false]
    );
    assert_eq!(store.changes_of("d1").unwrap(), vec![applied]);
    // The next push replaces it, whatever its state.
    assert_eq!(
        store
            .put_changes(&[change("d1", "p2", ChangeState::Waiting)])
            .unwrap(),
        vec![true]
    );
    let mut release = change("d1", "1.2.0", ChangeState::Pending);
    release.kind = ChangeKind::Release;
    store
        .put_changes(&[release.clone(), change("d2", "p2", ChangeState::Pending)])
        .unwrap();
    let of_d1 = store.changes_of("d1").unwrap();
    assert_eq!(of_d1.len(), 2);
    assert_eq!(of_d1[0].id, "p2");
    assert_eq!(of_d1[1], release);
    assert_eq!(store.list_changes().unwrap().len(), 3);
    assert!(store.changes_of("nosuchdevice").unwrap().is_empty());
}

/// Rollouts are kept up to MAX_ROLLOUTS: the oldest ended one makes room; when all
/// are running, a new one is refused.
pub(crate) fn running_rollouts_are_listed_until_they_end(store: &dyn Store) {
    assert!(store.running_rollouts().unwrap().is_empty());
    let (a, b) = (rollout(1, false), rollout(2, false));
    assert!(store.put_rollout(&a).unwrap());
    assert!(store.put_rollout(&b).unwrap());
    let mut ids: Vec<String> = store
        .running_rollouts()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.sort();
    assert_eq!(ids, vec![a.id.clone(), b.id.clone()]);
    let mut ended = a.clone();
    ended.ended = Some(900);
    assert!(store.put_rollout(&ended).unwrap());
    let running = store.running_rollouts().unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].id, b.id);
    assert_eq!(store.list_rollouts().unwrap().len(), 2);
}

pub(crate) fn rollouts_are_bounded(store: &dyn Store) {
    for n in 0..MAX_ROLLOUTS as u32 {
        assert!(store.put_rollout(&rollout(n, n < 2)).unwrap());
    }
    let mut updated = rollout(5, false);
    updated.rest_started = true;
    assert!(
        store.put_rollout(&updated).unwrap(),
        "an update always fits"
    );
    assert_eq!(
        store.get_rollout(&updated.id).unwrap(),
        Some(updated.clone())
    );
    assert!(store.put_rollout(&rollout(100, false)).unwrap());
    assert_eq!(
        store.get_rollout(&rollout(0, true).id).unwrap(),
        None,
        "oldest ended forgotten"
    );
    assert!(store.get_rollout(&rollout(1, true).id).unwrap().is_some());
    assert!(store.put_rollout(&rollout(101, false)).unwrap());
    assert!(
        !store.put_rollout(&rollout(102, false)).unwrap(),
        "all running: refused"
    );
    assert_eq!(store.list_rollouts().unwrap().len(), MAX_ROLLOUTS);
    // A late write of an older state (another edge) never goes back.
    let mut stopped = updated.clone();
    stopped.stopped = Some("device a rolled back".into());
    stopped.ended = Some(9);
    store.put_rollout(&stopped).unwrap();
    store.put_rollout(&rollout(5, false)).unwrap();
    assert_eq!(store.get_rollout(&updated.id).unwrap(), Some(stopped));
}

/// Twenty devices enrolling at once under a quota of five (two edges, or many
/// connections): exactly five get in.
pub(crate) fn concurrent_enrolment_never_exceeds_the_quota(store: std::sync::Arc<dyn Store>) {
    let handles: Vec<_> = (1..=20u8)
        .map(|n| {
            let store = store.clone();
            std::thread::spawn(move || store.enroll(&record(n, 5), Some(5)).unwrap())
        })
        .collect();
    let outcomes: Vec<Enrolled> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let new = outcomes.iter().filter(|o| **o == Enrolled::New).count();
    assert_eq!(new, 5, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .all(|o| matches!(o, Enrolled::New | Enrolled::QuotaFull { count: 5 })));
    assert_eq!(store.list().unwrap().len(), 5);
}
