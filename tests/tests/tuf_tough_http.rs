//! The `tough` client, over real HTTP on 127.0.0.1, reads device instructions published
//! by Waveguide through the hashed bins, and refuses a tampered bin, an expired timestamp
//! and a rolled-back snapshot.

use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use jiff::SignedDuration;
use sha2::Digest;
use tempfile::TempDir;
use tough::error::Error as ToughError;
use tough::schema::RoleType;
use tough::{RepositoryLoader, TargetName};
use waveguide::protocol::target::device_target_path;
use waveguide::protocol::{ArtifactRef, DeviceInstruction};
use waveguide::publish::{
    Batch, BinLayout, Expiries, KeyCount, KeyDir, KeySpec, RepoConfig, Repository, SpecTargetPaths,
};
use waveguide_tests::tuf;

fn instruction(device: &str, release: &str) -> DeviceInstruction {
    DeviceInstruction {
        device: device.to_owned(),
        release: release.to_owned(),
        version: "2.0.0".to_owned(),
        artifacts: vec![ArtifactRef {
            target: format!("releases/{release}/image.raucb"),
            sha256: "cd".repeat(32),
            length: 1024,
        }],
        rollout: "spring".to_owned(),
        wave: 1,
        maintenance_windows: Vec::new(),
        confirmation_secs: None,
        attempt: 0,
        commit: None,
        allow_downgrade: false,
    }
}

fn batch(devices: &[String], release: &str) -> Batch {
    Batch { upserts: devices.iter().map(|d| instruction(d, release)).collect(), ..Batch::default() }
}

struct Served {
    tmp: TempDir,
    keys: KeyDir,
    base: url::Url,
}

impl Served {
    fn repo(&self) -> PathBuf {
        self.tmp.path().join("repo")
    }

    fn metadata(&self) -> PathBuf {
        self.repo().join("metadata")
    }

    /// A client with its own trusted-metadata cache, so rollbacks are visible to it.
    async fn load(&self, cache: &Path) -> Result<tough::Repository, ToughError> {
        let root = std::fs::read(self.metadata().join("1.root.json")).unwrap();
        std::fs::create_dir_all(cache).unwrap();
        RepositoryLoader::new(
            &root,
            self.base.join("metadata/").unwrap(),
            self.base.join("targets/").unwrap(),
        )
        .transport(SpecTargetPaths(tough::HttpTransportBuilder::new().tries(1).build()))
        .datastore(cache)
        .load()
        .await
    }
}

/// Creates keys and a repository sized for ten thousand devices (two levels of bins:
/// 16 parents over 128 leaves; tough fetches every bin on load, so a million-device
/// layout would only make the test slow) and serves it over HTTP on 127.0.0.1.
async fn serve() -> Served {
    let tmp = TempDir::new().unwrap();
    let (keys, _) = KeyDir::init(
        &tmp.path().join("keys"),
        &KeySpec { root: KeyCount { keys: 3, threshold: 2 }, ..KeySpec::without_release_keys() },
    )
    .unwrap();
    let config = RepoConfig { layout: BinLayout::for_fleet(10_000), expiries: Expiries::default() };
    assert_eq!(config.layout.parents(), 16);
    Repository::create(&tmp.path().join("repo"), &keys, config).unwrap();
    let app =
        axum::Router::new().fallback_service(tower_http::services::ServeDir::new(tmp.path().join("repo")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = url::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Served { tmp, keys, base }
}

fn devices(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("store-{i:04}")).collect()
}

fn publish(served: &Served, batch: Batch) -> waveguide::publish::CommitReport {
    let mut repo = Repository::open(&served.repo(), &served.keys).unwrap();
    repo.commit(batch).unwrap()
}

async fn read_instruction(repo: &tough::Repository, device: &str) -> Option<DeviceInstruction> {
    let name = TargetName::new(device_target_path(device)).unwrap();
    let stream = repo.read_target(&name).await.unwrap()?;
    let bytes: Vec<u8> = stream.map_ok(|b| b.to_vec()).try_concat().await.unwrap();
    Some(serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tough_reads_device_instructions_through_the_bins_over_http() {
    let served = serve().await;
    let ids = devices(300);
    publish(&served, batch(&ids, "r1"));
    let cache = served.tmp.path().join("cache");
    let repo = served.load(&cache).await.unwrap();
    for id in ["store-0000", "store-0150", "store-0299"] {
        assert_eq!(read_instruction(&repo, id).await, Some(instruction(id, "r1")));
    }
    assert_eq!(read_instruction(&repo, "store-9999").await, None);
    // The target sits in a leaf two delegations below targets.
    let name = TargetName::new(device_target_path("store-0000")).unwrap();
    let role = repo.targets().signed.find_target(&name, false).is_ok();
    assert!(role, "tough resolves the target through the delegation tree");

    // A second wave is visible to the same client after it reloads.
    publish(&served, batch(&ids[..10], "r2"));
    let repo = served.load(&cache).await.unwrap();
    assert_eq!(read_instruction(&repo, "store-0000").await.unwrap().release, "r2");
    assert_eq!(read_instruction(&repo, "store-0299").await.unwrap().release, "r1");
}

fn rebin(served: &Served, leaves: u32) -> waveguide::publish::CommitReport {
    let mut repo = Repository::open(&served.repo(), &served.keys).unwrap();
    repo.rebin(BinLayout::with_leaves(leaves).unwrap()).unwrap()
}

/// Every device's target resolves through the verified bins to the length and hash of
/// its instruction; every 20th is also downloaded and checked (tough's HTTP transport
/// builds a new client, loading every CA certificate, for each request, so downloading
/// all of them after each step would take minutes).
async fn assert_every_device_reads(repo: &tough::Repository, ids: &[String], release: &str) {
    for (i, id) in ids.iter().enumerate() {
        let name = TargetName::new(device_target_path(id)).unwrap();
        let target = repo.targets().signed.find_target(&name, false).unwrap_or_else(|e| panic!("{id}: {e}"));
        let content = serde_json::to_vec(&instruction(id, release)).unwrap();
        assert_eq!(target.length, content.len() as u64, "{id}");
        assert_eq!(target.hashes.sha256.to_vec(), sha2::Sha256::digest(&content).to_vec(), "{id}");
        if i % 20 == 0 {
            assert_eq!(read_instruction(repo, id).await, Some(instruction(id, release)), "{id}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tough_clients_follow_a_rebin_up_and_down() {
    let served = serve().await;
    rebin(&served, 4);
    let ids = devices(200);
    publish(&served, batch(&ids, "r1"));
    // A client that loaded the repository before the rebin, and refreshes after it.
    let early = served.tmp.path().join("early");
    assert_every_device_reads(&served.load(&early).await.unwrap(), &ids, "r1").await;

    for leaves in [16, 4] {
        let report = rebin(&served, leaves);
        assert_eq!(report.target_files, 0, "target files are reused");
        assert_every_device_reads(&served.load(&early).await.unwrap(), &ids, "r1").await;
        let fresh = served.tmp.path().join(format!("fresh-{leaves}"));
        assert_every_device_reads(&served.load(&fresh).await.unwrap(), &ids, "r1").await;
    }
    // Publishing goes on in the new layout.
    publish(&served, batch(&ids[..7], "r2"));
    let repo = served.load(&early).await.unwrap();
    assert_every_device_reads(&repo, &ids[..7], "r2").await;
    assert_every_device_reads(&repo, &ids[7..], "r1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tough_rejects_a_tampered_bin() {
    let served = serve().await;
    let report = publish(&served, batch(&devices(20), "r1"));
    let leaf = report.roles.iter().find(|r| r.role.starts_with("d-")).unwrap();
    let path = served.metadata().join(format!("{}.{}.json", leaf.version, leaf.role));
    let text = std::fs::read_to_string(&path).unwrap();
    // Point a device at another instruction: still valid JSON, same length, bad signature.
    let at = text.find("\"sha256\":\"").unwrap() + 10;
    let flipped = if &text[at..at + 1] == "0" { "1" } else { "0" };
    let tampered = format!("{}{}{}", &text[..at], flipped, &text[at + 1..]);
    std::fs::write(&path, tampered).unwrap();
    let err = served.load(&served.tmp.path().join("cache")).await.unwrap_err();
    assert!(
        matches!(err, ToughError::VerifyMetadata { role: RoleType::Targets, .. }),
        "expected a signature failure on the bin, got {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tough_rejects_an_expired_timestamp() {
    let served = serve().await;
    let mut repo = Repository::open(&served.repo(), &served.keys).unwrap();
    repo.set_expiries(Expiries { timestamp: SignedDuration::from_secs(-60), ..Expiries::default() });
    repo.commit(batch(&devices(5), "r1")).unwrap();
    drop(repo);
    let err = served.load(&served.tmp.path().join("cache")).await.unwrap_err();
    assert!(
        matches!(err, ToughError::ExpiredMetadata { role: RoleType::Timestamp, .. }),
        "expected an expired timestamp, got {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tough_rejects_a_rolled_back_snapshot() {
    let served = serve().await;
    publish(&served, batch(&devices(5), "r1"));
    let old_snapshot = Repository::open(&served.repo(), &served.keys).unwrap().snapshot_version();
    let report = publish(&served, batch(&devices(5), "r2"));
    let cache = served.tmp.path().join("cache");
    served.load(&cache).await.unwrap(); // the client now trusts the newer snapshot

    // An attacker holding the timestamp key serves a fresh timestamp that points at the
    // older snapshot.
    let old = std::fs::read(served.metadata().join(format!("{old_snapshot}.snapshot.json"))).unwrap();
    let forged = tuf::sign_timestamp(
        &served.keys.dir().join("online.pk8"),
        report.timestamp_version.unwrap() + 1,
        old_snapshot,
        &old,
    )
    .await;
    let genuine = std::fs::read(served.metadata().join("timestamp.json")).unwrap();
    std::fs::write(served.metadata().join("timestamp.json"), forged).unwrap();
    let err = served.load(&cache).await.unwrap_err();
    assert!(
        matches!(err, ToughError::OlderSnapshotInTimestamp { snapshot_new, snapshot_old, .. } if snapshot_new < snapshot_old),
        "expected a snapshot rollback refusal, got {err}"
    );

    // And a mirror replaying an older timestamp is refused too.
    std::fs::write(served.metadata().join("timestamp.json"), &genuine).unwrap();
    let mut repo = Repository::open(&served.repo(), &served.keys).unwrap();
    repo.refresh(SignedDuration::from_hours(48)).unwrap();
    drop(repo);
    served.load(&cache).await.unwrap();
    std::fs::write(served.metadata().join("timestamp.json"), genuine).unwrap();
    let err = served.load(&cache).await.unwrap_err();
    assert!(matches!(err, ToughError::OlderMetadata { role: RoleType::Timestamp, .. }), "got {err}");
}
