//! The agent's TUF client, over real HTTP on 127.0.0.1: it reads the same instruction as
//! tough's full client while fetching only the roles on the device's path, polls only
//! `timestamp.json` when nothing changed, follows an online-key rotation, and refuses a
//! tampered bin, an expired timestamp, a rolled-back snapshot, a bad target file, and a
//! role padded past the length the snapshot signs or past its cap.

use futures::TryStreamExt;
use tough::{RepositoryLoader, TargetName};
use waveguide::agent::{Trusted, TufClient, TufError};
use waveguide::protocol::target::device_target_path;
use waveguide::protocol::DeviceInstruction;
use waveguide::publish::{Batch, Expiries, Repository, SpecTargetPaths};
use waveguide_tests::agent::{instruction, Controller};
use waveguide_tests::tuf;

fn devices(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("store-{i:04}")).collect()
}

fn batch(ids: &[String], release: &str) -> Batch {
    Batch { upserts: ids.iter().map(|d| instruction(d, release, "2.0.0", &[])).collect(), ..Batch::default() }
}

fn client(c: &Controller) -> TufClient {
    let trusted = Trusted::from_root(&c.root_bytes()).unwrap();
    TufClient::new(reqwest::Client::new(), &c.base.join("tuf/").unwrap(), trusted).unwrap()
}

async fn read(client: &mut TufClient, id: &str) -> Result<Option<DeviceInstruction>, TufError> {
    Ok(client.instruction(id).await?.map(|v| v.instruction))
}

async fn tough_read(c: &Controller, id: &str) -> Option<DeviceInstruction> {
    tough_read_all(c, &[id]).await.pop().unwrap()
}

/// What tough's full client (which fetches every bin) reads for each device.
async fn tough_read_all(c: &Controller, ids: &[&str]) -> Vec<Option<DeviceInstruction>> {
    let tuf = c.base.join("tuf/").unwrap();
    let repo =
        RepositoryLoader::new(&c.root_bytes(), tuf.join("metadata/").unwrap(), tuf.join("targets/").unwrap())
            .transport(SpecTargetPaths(tough::HttpTransportBuilder::new().tries(1).build()))
            .load()
            .await
            .unwrap();
    let mut read = Vec::new();
    for id in ids {
        let name = TargetName::new(device_target_path(id)).unwrap();
        let Some(stream) = repo.read_target(&name).await.unwrap() else {
            read.push(None);
            continue;
        };
        let bytes: Vec<u8> = stream.map_ok(|b| b.to_vec()).try_concat().await.unwrap();
        read.push(Some(serde_json::from_slice(&bytes).unwrap()));
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_what_tough_reads_fetching_only_the_devices_path() {
    let c = Controller::start().await;
    let ids = devices(300);
    c.publish(batch(&ids, "r1"));
    let mut ours = client(&c);
    let sample = ["store-0000", "store-0150", "store-0299", "store-9999"];
    let theirs = tough_read_all(&c, &sample).await;
    for (id, theirs) in sample.iter().zip(theirs) {
        assert_eq!(read(&mut ours, id).await.unwrap(), theirs, "{id}");
    }
    assert_eq!(read(&mut ours, "store-9999").await.unwrap(), None);
    assert!(read(&mut ours, "store-0042").await.unwrap().is_some());

    // A fresh device: root check, timestamp, snapshot, targets, devices, one parent, one
    // leaf, its file.
    let mut fresh = client(&c);
    c.take_requests();
    assert_eq!(read(&mut fresh, "store-0007").await.unwrap().unwrap().release, "r1");
    let fetched = c.take_requests();
    let leaf_and_parent = fetched.iter().filter(|p| p.contains(".d-") || p.contains(".p-")).count();
    assert_eq!(leaf_and_parent, 2, "{fetched:?}");
    assert_eq!(fetched.len(), 8, "{fetched:?}");
    assert!(fetched[4].contains(".devices.json"), "{fetched:?}");
    assert!(fetched[0].ends_with("/2.root.json") && fetched[1].ends_with("/timestamp.json"), "{fetched:?}");
    assert!(fetched[7].starts_with("/tuf/targets/devices/") && fetched[7].ends_with(".store-0007.json"));

    // Nothing changed: only the timestamp.
    read(&mut fresh, "store-0007").await.unwrap();
    assert_eq!(c.take_requests(), ["/tuf/metadata/timestamp.json"]);

    // A wave elsewhere in the fleet: timestamp and snapshot; the device's bins are cached.
    c.publish(batch(&["store-0150".to_owned()], "r2"));
    let own_leaf_unchanged = read(&mut fresh, "store-0007").await.unwrap().unwrap();
    assert_eq!(own_leaf_unchanged.release, "r1");
    let fetched = c.take_requests();
    assert!(fetched.len() <= 5 && fetched[1].contains(".snapshot.json"), "{fetched:?}");
    assert_eq!(read(&mut fresh, "store-0150").await.unwrap(), tough_read(&c, "store-0150").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_a_tampered_bin() {
    let c = Controller::start().await;
    let report = c.publish(batch(&devices(1), "r1"));
    let leaf = c.tamper_leaf_bin(&report);
    let err = read(&mut client(&c), "store-0000").await.unwrap_err();
    assert!(matches!(&err, TufError::Signature { role, .. } if role == &leaf), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_an_expired_timestamp() {
    let c = Controller::start().await;
    let mut repo = Repository::open(&c.repo(), &c.keys).unwrap();
    repo.set_expiries(Expiries { timestamp: jiff::SignedDuration::from_secs(-60), ..Expiries::default() });
    repo.commit(batch(&devices(3), "r1")).unwrap();
    drop(repo);
    let err = read(&mut client(&c), "store-0000").await.unwrap_err();
    assert!(matches!(&err, TufError::Expired { role, .. } if role == "timestamp"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_a_rolled_back_snapshot_and_an_older_timestamp() {
    let c = Controller::start().await;
    c.publish(batch(&devices(3), "r1"));
    let old_snapshot = Repository::open(&c.repo(), &c.keys).unwrap().snapshot_version();
    let report = c.publish(batch(&devices(3), "r2"));
    let mut ours = client(&c);
    assert_eq!(read(&mut ours, "store-0001").await.unwrap().unwrap().release, "r2");

    // A holder of the online key signs a fresh timestamp naming the older snapshot.
    let old = std::fs::read(c.metadata().join(format!("{old_snapshot}.snapshot.json"))).unwrap();
    let forged = tuf::sign_timestamp(
        &c.keys.dir().join("online.pk8"),
        report.timestamp_version.unwrap() + 1,
        old_snapshot,
        &old,
    )
    .await;
    let genuine = std::fs::read(c.metadata().join("timestamp.json")).unwrap();
    std::fs::write(c.metadata().join("timestamp.json"), forged).unwrap();
    let err = read(&mut ours, "store-0001").await.unwrap_err();
    assert!(matches!(&err, TufError::Rollback { role, .. } if role == "snapshot"), "{err}");

    // A mirror replaying an older timestamp.
    std::fs::write(c.metadata().join("timestamp.json"), &genuine).unwrap();
    Repository::open(&c.repo(), &c.keys).unwrap().refresh(jiff::SignedDuration::from_hours(48)).unwrap();
    read(&mut ours, "store-0001").await.unwrap();
    std::fs::write(c.metadata().join("timestamp.json"), genuine).unwrap();
    let err = read(&mut ours, "store-0001").await.unwrap_err();
    assert!(matches!(&err, TufError::Rollback { role, .. } if role == "timestamp"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_a_target_file_that_does_not_match_its_hash() {
    let c = Controller::start().await;
    c.publish(batch(&devices(1), "r1"));
    let dir = c.repo().join("targets/devices");
    let file = std::fs::read_dir(&dir).unwrap().next().unwrap().unwrap().path();
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("\"r1\"", "\"r9\"")).unwrap();
    let err = read(&mut client(&c), "store-0000").await.unwrap_err();
    assert!(matches!(&err, TufError::Mismatch { field: "sha256", .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_an_online_key_rotation() {
    let c = Controller::start().await;
    c.publish(batch(&devices(5), "r1"));
    let mut ours = client(&c);
    assert_eq!(read(&mut ours, "store-0003").await.unwrap().unwrap().release, "r1");
    assert_eq!(ours.trusted().root_version(), 1);

    let mut repo = Repository::open(&c.repo(), &c.keys).unwrap();
    repo.rotate_online_key(&c.keys, jiff::SignedDuration::from_hours(24)).unwrap();
    drop(repo);
    let mut repo = Repository::open(&c.repo(), &c.keys).unwrap();
    repo.commit(batch(&devices(5), "r2")).unwrap();
    drop(repo);

    assert_eq!(read(&mut ours, "store-0003").await.unwrap().unwrap().release, "r2");
    assert_eq!(ours.trusted().root_version(), 2);
    assert_eq!(read(&mut ours, "store-0003").await.unwrap(), tough_read(&c, "store-0003").await);

    // A persisted trust round-trips.
    let saved = serde_json::to_vec(ours.trusted()).unwrap();
    let trusted: Trusted = serde_json::from_slice(&saved).unwrap();
    let mut again = TufClient::new(reqwest::Client::new(), &c.base.join("tuf").unwrap(), trusted).unwrap();
    assert_eq!(read(&mut again, "store-0003").await.unwrap().unwrap().release, "r2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_no_published_role_past_the_length_its_snapshot_signs() {
    let c = Controller::start().await;
    c.publish(batch(&devices(3), "r1"));
    let snapshot_version = Repository::open(&c.repo(), &c.keys).unwrap().snapshot_version();
    let snapshot: serde_json::Value = serde_json::from_slice(
        &std::fs::read(c.metadata().join(format!("{snapshot_version}.snapshot.json"))).unwrap(),
    )
    .unwrap();
    let meta = snapshot["signed"]["meta"].as_object().unwrap();
    // Every role but the leaf bins, which the agent caps from their share of the hash space.
    for (file, listed) in meta {
        let on_disk = std::fs::metadata(c.metadata().join(format!("{}.{file}", listed["version"]))).unwrap();
        let expected = if file.starts_with("d-") { None } else { Some(on_disk.len()) };
        assert_eq!(listed["length"].as_u64(), expected, "{file}");
    }
    // A mirror pads `targets` with whitespace (its signature still verifies).
    let targets = c.metadata().join(format!("{}.targets.json", meta["targets.json"]["version"]));
    let mut padded = std::fs::read(&targets).unwrap();
    let length = padded.len() as u64;
    padded.extend(std::iter::repeat_n(b' ', 1 << 20));
    std::fs::write(&targets, padded).unwrap();
    let err = read(&mut client(&c), "store-0001").await.unwrap_err();
    assert!(matches!(&err, TufError::TooLong { limit, .. } if *limit == length), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_no_leaf_bin_past_its_cap() {
    let c = Controller::start().await;
    let report = c.publish(batch(&devices(1), "r1"));
    let leaf = report.roles.iter().find(|r| r.role.starts_with("d-")).unwrap();
    let path = c.metadata().join(format!("{}.{}.json", leaf.version, leaf.role));
    // The snapshot lists no length for a leaf; 32 leaves are sized for a few devices
    // each, so the leaf is capped at the 256 KiB floor, far below the old 64 MiB.
    let mut padded = std::fs::read(&path).unwrap();
    padded.extend(std::iter::repeat_n(b' ', 1 << 20));
    std::fs::write(&path, padded).unwrap();
    let err = read(&mut client(&c), "store-0000").await.unwrap_err();
    assert!(matches!(&err, TufError::TooLong { limit: 262_144, .. }), "{err}");
}
