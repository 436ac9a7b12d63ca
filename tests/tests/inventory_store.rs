//! The inventory database, against both backends: SQLite in a temporary directory, and a
//! real PostgreSQL server (started by `scripts/test`, found through
//! `WAVEGUIDE_TEST_POSTGRES_URL`). Every scenario runs on both.

use waveguide::inventory::store::{
    Backend, DeclaredDevice, Enrollment, IncomingReport, NewMember, ReleaseRef, ReportOutcome, RolloutPhase,
    RolloutRecord, Store, WaveRecord, WaveState, HISTORY_PER_DEVICE,
};
use waveguide::inventory::DeviceReport;
use waveguide::protocol::{FailureClass, UpdateState};
use waveguide_tests::fresh_postgres_database;

/// A fresh, empty database of each backend. The guard keeps the SQLite directory alive.
async fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(dir.path().join("inventory.db").to_str().unwrap()).await.unwrap();
    assert_eq!(sqlite.backend(), Backend::Sqlite);
    let postgres = Store::open(&fresh_postgres_database().await).await.unwrap();
    assert_eq!(postgres.backend(), Backend::Postgres);
    vec![(sqlite, Some(dir)), (postgres, None)]
}

fn declared(id: &str, group: &str, key: Option<&str>) -> DeclaredDevice {
    DeclaredDevice { id: id.into(), group: group.into(), public_key: key.map(Into::into) }
}

fn report(device: &str, version: &str, state: UpdateState, at: i64) -> IncomingReport {
    IncomingReport {
        device_id: device.into(),
        report: DeviceReport {
            release: Some(format!("v{version}")),
            version: version.parse().unwrap(),
            state,
            healthy: state != UpdateState::Failed,
            failure: None,
            last_seen: None,
        },
        detail: None,
        commit: Some("c0ffee".into()),
        reported_at: at,
        received_at: at + 1,
    }
}

#[tokio::test]
async fn declared_devices_sync_writes_only_differences() {
    for (store, _guard) in stores().await {
        let fleet = vec![declared("a", "berlin", Some("KEYA")), declared("b", "berlin", None)];
        let first = store.sync_declared(&fleet, 1).await.unwrap();
        assert_eq!((first.added, first.updated, first.undeclared), (2, 0, 0));

        let again = store.sync_declared(&fleet, 2).await.unwrap();
        assert_eq!((again.added, again.updated, again.undeclared), (0, 0, 0), "{:?}", store.backend());

        let moved = vec![declared("a", "munich", None), declared("c", "munich", None)];
        let third = store.sync_declared(&moved, 3).await.unwrap();
        assert_eq!((third.added, third.updated, third.undeclared), (1, 1, 1));

        let devices = store.devices().await.unwrap();
        let ids: Vec<_> = devices.iter().map(|d| (d.id.as_str(), d.group.as_str(), d.declared)).collect();
        assert_eq!(ids, [("a", "munich", true), ("b", "berlin", false), ("c", "munich", true)]);
        // A declaration without a key keeps the key the device already has.
        assert_eq!(devices[0].public_key.as_deref(), Some("KEYA"));
    }
}

#[tokio::test]
async fn enrolled_device_keeps_its_key() {
    for (store, _guard) in stores().await {
        let Enrollment::Enrolled(record) = store.enroll("new-1", "berlin", "PUB", 10).await.unwrap() else {
            panic!("a new device enrolls")
        };
        assert_eq!(record.public_key.as_deref(), Some("PUB"));
        assert_eq!(record.enrolled_at, Some(10));
        assert!(!record.declared);
        assert_eq!(store.device("new-1").await.unwrap(), Some(record.clone()));
        assert_eq!(store.device("nope").await.unwrap(), None);
        // The same key again: nothing changes. Another key, or a declared device's other
        // group: refused, nothing changes.
        assert_eq!(
            store.enroll("new-1", "berlin", "PUB", 11).await.unwrap(),
            Enrollment::Enrolled(record.clone())
        );
        assert_eq!(
            store.enroll("new-1", "berlin", "OTHER", 12).await.unwrap(),
            Enrollment::OtherKey(record.clone())
        );
        store.sync_declared(&[declared("gw-1", "munich", None)], 0).await.unwrap();
        let Enrollment::OtherGroup(gw) = store.enroll("gw-1", "berlin", "GW", 13).await.unwrap() else {
            panic!("a declared device keeps its group")
        };
        assert_eq!(gw.public_key, None);
        assert!(matches!(store.enroll("gw-1", "munich", "GW", 14).await.unwrap(), Enrollment::Enrolled(_)));
        assert_eq!(store.device("new-1").await.unwrap(), Some(record));
    }
}

/// Thirty enrollments of one new id with different keys at once: exactly one key wins and
/// stays, whatever the interleaving; the others are told so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_enrollments_cannot_overwrite_a_key() {
    for (store, _guard) in stores().await {
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    (i, store.enroll("racer", "berlin", &format!("KEY{i}"), i).await.unwrap())
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (i, Enrollment::Enrolled(_)) => winners.push(format!("KEY{i}")),
                (_, Enrollment::OtherKey(record)) => assert!(record.public_key.is_some()),
                (_, other) => panic!("{other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "{:?}: {winners:?}", store.backend());
        let stored = store.device("racer").await.unwrap().unwrap();
        assert_eq!(stored.public_key.as_deref(), Some(winners[0].as_str()));
    }
}

#[tokio::test]
async fn reports_keep_latest_and_bounded_history() {
    for (store, _guard) in stores().await {
        store.sync_declared(&[declared("a", "g", None), declared("b", "g", None)], 0).await.unwrap();
        let mut batch = Vec::new();
        for i in 0..(HISTORY_PER_DEVICE + 5) {
            batch.push(report("a", "1.0.0", UpdateState::Idle, 100 + i));
        }
        batch.push(report("b", "1.0.0", UpdateState::Downloading, 100));
        batch.push(report("b", "2.0.0", UpdateState::Installed, 200));
        let outcomes = store.record_reports(&batch).await.unwrap();
        assert!(outcomes.iter().all(|o| *o == ReportOutcome::Stored), "{outcomes:?}");

        let inventory = store.inventory().await.unwrap();
        assert_eq!(inventory.len(), 2);
        let b = inventory.get("b").unwrap();
        assert_eq!(b.version.to_string(), "2.0.0");
        assert_eq!(b.state, UpdateState::Installed);
        assert_eq!(b.last_seen.map(|t| t.as_millisecond()), Some(200));

        let history = store.history("a", 100).await.unwrap();
        assert_eq!(history.len() as i64, HISTORY_PER_DEVICE);
        assert_eq!(history[0].seq, HISTORY_PER_DEVICE + 5);
        assert_eq!(history[0].reported_at, 100 + HISTORY_PER_DEVICE + 4);
        assert_eq!(history[0].commit.as_deref(), Some("c0ffee"), "the commit the device runs is kept");
        let b_history = store.history("b", 100).await.unwrap();
        assert_eq!(b_history.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 1]);
    }
}

#[tokio::test]
async fn a_reports_failure_class_is_stored_with_it() {
    for (store, _guard) in stores().await {
        store.sync_declared(&[declared("a", "g", None)], 0).await.unwrap();
        let mut failed = report("a", "1.0.0", UpdateState::Failed, 100);
        failed.report.failure = Some(FailureClass::Download);
        let rolled_back = IncomingReport {
            report: DeviceReport {
                state: UpdateState::RolledBack,
                failure: Some(FailureClass::Health),
                ..failed.report.clone()
            },
            reported_at: 200,
            received_at: 201,
            ..failed.clone()
        };
        store.record_reports(&[failed, rolled_back]).await.unwrap();
        let latest = store.inventory().await.unwrap().get("a").cloned().unwrap();
        assert_eq!((latest.state, latest.failure), (UpdateState::RolledBack, Some(FailureClass::Health)));
        let (changed, _) = store.changed_since(0).await.unwrap();
        assert_eq!(changed[0].1.failure, Some(FailureClass::Health));
        let history = store.history("a", 10).await.unwrap();
        let classes: Vec<_> = history.iter().map(|r| r.report.failure).collect();
        assert_eq!(classes, [Some(FailureClass::Health), Some(FailureClass::Download)]);
    }
}

#[tokio::test]
async fn reports_of_unknown_devices_and_replays_are_refused_and_stored_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite_path = dir.path().join("inventory.db").to_str().unwrap().to_string();
    for url in [sqlite_path, fresh_postgres_database().await] {
        let store = Store::open(&url).await.unwrap();
        store.sync_declared(&[declared("a", "g", None), declared("b", "g", None)], 0).await.unwrap();
        let batch = vec![
            report("a", "1.0.0", UpdateState::Idle, 100),
            report("ghost", "1.0.0", UpdateState::Idle, 100),
            // Not newer than the report before it in the same batch.
            report("a", "2.0.0", UpdateState::Idle, 100),
            report("b", "1.0.0", UpdateState::Idle, 50),
        ];
        let outcomes = store.record_reports(&batch).await.unwrap();
        assert_eq!(
            outcomes,
            [
                ReportOutcome::Stored,
                ReportOutcome::UnknownDevice,
                ReportOutcome::NotNewer { latest: 100 },
                ReportOutcome::Stored
            ]
        );
        assert_eq!(store.history("a", 10).await.unwrap().len(), 1);
        assert!(store.device("ghost").await.unwrap().is_none());
        drop(store);

        // The check is against what is stored: after reopening (a restart, or another
        // replica), the same reports are still refused and an older one too.
        let reopened = Store::open(&url).await.unwrap();
        let again = reopened
            .record_reports(&[
                report("a", "1.0.0", UpdateState::Idle, 100),
                report("b", "9.0.0", UpdateState::Idle, 49),
            ])
            .await
            .unwrap();
        assert_eq!(again, [ReportOutcome::NotNewer { latest: 100 }, ReportOutcome::NotNewer { latest: 50 }]);
        let inventory = reopened.inventory().await.unwrap();
        assert_eq!(inventory.get("a").unwrap().version.to_string(), "1.0.0");
        assert_eq!(inventory.get("b").unwrap().version.to_string(), "1.0.0");
        assert_eq!(reopened.history("b", 10).await.unwrap().len(), 1);
        let newer = reopened.record_reports(&[report("a", "3.0.0", UpdateState::Idle, 101)]).await.unwrap();
        assert_eq!(newer, [ReportOutcome::Stored]);
    }
}

#[tokio::test]
async fn rollout_state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite_path = dir.path().join("inventory.db").to_str().unwrap().to_string();
    let postgres_url = fresh_postgres_database().await;
    for url in [sqlite_path, postgres_url] {
        let store = Store::open(&url).await.unwrap();
        let ids: Vec<DeclaredDevice> = (0..1200).map(|i| declared(&format!("d{i:04}"), "g", None)).collect();
        store.sync_declared(&ids, 0).await.unwrap();
        let mut rollout = RolloutRecord {
            id: "stable-1".into(),
            policy: "stable".into(),
            release: "v2".into(),
            version: "2.0.0".into(),
            commit: Some("abc123".into()),
            phase: RolloutPhase::Progressing,
            paused: false,
            message: None,
            waiting: None,
            created_at: 5,
            updated_at: 5,
            revision: 0,
            rollback_of: None,
            requests: Default::default(),
        };
        let waves = vec![
            WaveRecord {
                index: 0,
                name: "canary".into(),
                state: WaveState::Pending,
                size: 2,
                published_at: None,
                healthy_at: None,
                approved_at: None,
                finished_at: None,
                bake_ms: Some(60_000),
            },
            WaveRecord {
                index: 1,
                name: "rest".into(),
                state: WaveState::Pending,
                size: 1198,
                published_at: None,
                healthy_at: None,
                approved_at: None,
                finished_at: None,
                bake_ms: None,
            },
        ];
        let previous = ReleaseRef { release: "stable".into(), version: "1.0.0".into() };
        let members: Vec<Vec<NewMember>> = vec![
            vec![NewMember { device_id: "d0001".into(), previous: Some(previous.clone()) }, "d0000".into()],
            (2..1200).map(|i| format!("d{i:04}").into()).collect(),
        ];
        store.create_rollout(&rollout, &waves, &members).await.unwrap();
        let mut first = waves[0].clone();
        first.state = WaveState::Published;
        first.published_at = Some(7);
        first.healthy_at = Some(8);
        rollout.phase = RolloutPhase::Halted;
        rollout.message = Some("failure threshold crossed".into());
        rollout.updated_at = 9;
        assert!(store.update_rollout(&rollout, std::slice::from_ref(&first)).await.unwrap());
        rollout.revision += 1;
        // A write based on the revision before is refused and changes nothing: neither
        // the record nor the waves.
        let stale = RolloutRecord { revision: 0, phase: RolloutPhase::Progressing, ..rollout.clone() };
        let unpublished = WaveRecord { state: WaveState::Pending, ..first.clone() };
        assert!(!store.update_rollout(&stale, &[unpublished]).await.unwrap());
        store.mark_published("stable-1", &["d0001".to_string(), "d0002".to_string()], 10).await.unwrap();
        // Marking again keeps the first publication time.
        store.mark_published("stable-1", &["d0001".to_string()], 11).await.unwrap();
        let second = WaveRecord { approved_at: Some(12), ..waves[1].clone() };
        assert!(store.update_rollout(&rollout, &[second]).await.unwrap());
        rollout.revision += 1;
        drop(store);

        let reopened = Store::open(&url).await.unwrap();
        assert_eq!(reopened.rollouts().await.unwrap(), vec![rollout.clone()]);
        let stored_waves = reopened.waves("stable-1").await.unwrap();
        let mut second = waves[1].clone();
        second.approved_at = Some(12);
        assert_eq!(stored_waves, vec![first, second]);
        assert_eq!(reopened.wave_members("stable-1", 0).await.unwrap(), ["d0000", "d0001"]);
        assert_eq!(reopened.wave_members("stable-1", 1).await.unwrap().len(), 1198);
        assert_eq!(reopened.rollout("stable-1").await.unwrap(), Some(rollout.clone()));
        assert_eq!(reopened.rollout("nope").await.unwrap(), None);

        // Members keep the rollout order they were created in, across waves.
        let members = reopened.rollout_members("stable-1").await.unwrap();
        assert_eq!(members.len(), 1200);
        let ids: Vec<&str> = members.iter().take(3).map(|m| m.device_id.as_str()).collect();
        assert_eq!(ids, ["d0001", "d0000", "d0002"]);
        assert_eq!(members.iter().map(|m| m.position).collect::<Vec<_>>(), (0..1200).collect::<Vec<u64>>());
        assert_eq!((members[0].wave, members[2].wave), (0, 1));
        // Where a rollback would return each member: the release it reported at the start.
        assert_eq!((members[0].previous.as_ref(), members[1].previous.as_ref()), (Some(&previous), None));
        let published: Vec<(&str, i64)> =
            members.iter().filter_map(|m| Some((m.device_id.as_str(), m.published_at?))).collect();
        assert_eq!(published, [("d0001", 10), ("d0002", 10)]);

        // The same members, each with its device's latest report if it sent one.
        reopened.record_reports(&[report("d0000", "2.0.0", UpdateState::Idle, 20)]).await.unwrap();
        reopened.record_reports(&[report("d0002", "1.0.0", UpdateState::Failed, 21)]).await.unwrap();
        let joined = reopened.member_reports("stable-1").await.unwrap();
        assert_eq!(joined.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>(), members);
        let reports: Vec<(&str, Option<(String, UpdateState)>)> = joined
            .iter()
            .take(4)
            .map(|(m, r)| (m.device_id.as_str(), r.as_ref().map(|r| (r.version.to_string(), r.state))))
            .collect();
        assert_eq!(
            reports,
            [
                ("d0001", None),
                ("d0000", Some(("2.0.0".into(), UpdateState::Idle))),
                ("d0002", Some(("1.0.0".into(), UpdateState::Failed))),
                ("d0003", None),
            ]
        );
    }
}

#[tokio::test]
async fn unsupported_url_is_refused() {
    let err = Store::open("mysql://localhost/x").await.unwrap_err();
    assert!(err.to_string().contains("unsupported inventory database URL"), "{err}");
}
