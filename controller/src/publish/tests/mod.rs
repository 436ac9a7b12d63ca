//! Publisher tests: each reads the result back with tough's client (from the file
//! system) or checks the files written. Crash safety: a failure is injected between each
//! pair of commit steps, and the repository must still serve the previous state and take
//! the next commit.

use std::collections::BTreeMap;
use std::path::Path;

use jiff::SignedDuration;
use tempfile::TempDir;
use tough::{RepositoryLoader, TargetName};

use super::repository::CommitStep;
use super::*;
use crate::protocol::target::{device_order_key, device_target_path};
use crate::protocol::{ArtifactRef, DeviceInstruction};

mod offline;

fn instruction(device: &str, release: &str) -> DeviceInstruction {
    DeviceInstruction {
        device: device.to_owned(),
        release: release.to_owned(),
        version: "1.0.0".to_owned(),
        artifacts: vec![ArtifactRef {
            target: format!("releases/{release}/image.raucb"),
            sha256: "ab".repeat(32),
            length: 42,
        }],
        rollout: "rollout-a".to_owned(),
        wave: 0,
        maintenance_windows: Vec::new(),
        confirmation_secs: None,
        attempt: 0,
        commit: None,
        allow_downgrade: false,
    }
}

fn batch(devices: impl IntoIterator<Item = String>, release: &str) -> Batch {
    Batch { upserts: devices.into_iter().map(|d| instruction(&d, release)).collect(), ..Batch::default() }
}

struct Fixture {
    _tmp: TempDir,
    keys: KeyDir,
    repo_dir: std::path::PathBuf,
}

fn fixture(devices: u64) -> (Fixture, Repository) {
    let tmp = TempDir::new().unwrap();
    let (keys, _) = KeyDir::init(&tmp.path().join("keys"), &KeySpec::without_release_keys()).unwrap();
    let repo_dir = tmp.path().join("repo");
    let config = RepoConfig { layout: BinLayout::for_fleet(devices), expiries: Expiries::default() };
    let repo = Repository::create(&repo_dir, &keys, config).unwrap();
    (Fixture { _tmp: tmp, keys, repo_dir }, repo)
}

/// Loads the repository with tough's client and returns each device's instruction (or
/// `None` when the device has no target).
fn client_view(
    repo_dir: &Path,
    devices: &[&str],
) -> Result<Vec<Option<DeviceInstruction>>, Box<tough::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let root = std::fs::read(repo_dir.join("metadata/1.root.json")).unwrap();
        let meta = url::Url::from_directory_path(repo_dir.join("metadata")).unwrap();
        let targets = url::Url::from_directory_path(repo_dir.join("targets")).unwrap();
        let repo = RepositoryLoader::new(&root, meta, targets)
            .transport(SpecTargetPaths(tough::FilesystemTransport))
            .load()
            .await?;
        let mut out = Vec::new();
        for d in devices {
            let name = TargetName::new(device_target_path(d)).unwrap();
            match repo.read_target(&name).await? {
                None => out.push(None),
                Some(stream) => {
                    use futures::TryStreamExt;
                    let bytes: Vec<u8> = stream.map_ok(|b| b.to_vec()).try_concat().await?;
                    out.push(Some(serde_json::from_slice(&bytes).unwrap()));
                }
            }
        }
        Ok::<_, tough::error::Error>(out)
    })
    .map_err(Box::new)
}

#[test]
fn tough_reads_a_device_instruction_through_two_levels_of_bins() {
    let (fx, mut repo) = fixture(1_000_000);
    assert_eq!(repo.config().layout.parents(), 64);
    let report = repo.commit(batch(["store-1".to_owned(), "store-2".to_owned()], "r1")).unwrap();
    assert_eq!(report.devices_changed, 2);
    assert_eq!(report.roles.last().unwrap().role, "timestamp");
    let view = client_view(&fx.repo_dir, &["store-1", "store-2", "store-3"]).unwrap();
    assert_eq!(view[0], Some(instruction("store-1", "r1")));
    assert_eq!(view[1], Some(instruction("store-2", "r1")));
    assert_eq!(view[2], None);
}

#[test]
fn an_unchanged_batch_writes_nothing_and_removal_withdraws_the_target() {
    let (fx, mut repo) = fixture(100);
    let b = batch(["a".to_owned(), "b".to_owned()], "r1");
    repo.commit(b.clone()).unwrap();
    let again = repo.commit(b).unwrap();
    assert!(again.roles.is_empty(), "{again:?}");
    assert_eq!(again.bytes_written(), 0);
    let removed =
        repo.commit(Batch { removals: vec!["a".into(), "never-there".into()], ..Batch::default() }).unwrap();
    assert_eq!(removed.devices_changed, 1);
    drop(repo);
    assert_eq!(client_view(&fx.repo_dir, &["a", "b"]).unwrap(), vec![None, Some(instruction("b", "r1"))]);
}

#[test]
fn leaves_merge_changes_in_target_path_order() {
    // Ids that sort otherwise than their target paths ("s00-1.json" < "s00.json"), several
    // to a leaf: a leaf written out of order would not verify.
    let (fx, mut repo) = fixture(10);
    let stems: Vec<String> = (0..40).map(|i| format!("s{i:02}")).collect();
    let with = |suffixes: &[&str]| -> Vec<String> {
        stems.iter().flat_map(|s| suffixes.iter().map(move |x| format!("{s}{x}"))).collect()
    };
    repo.commit(batch(with(&["", "-1", ".b"]), "r1")).unwrap();
    let mut second = batch(with(&["", "-0", "0"]), "r2");
    second.removals = with(&[".b"]);
    let report = repo.commit(second).unwrap();
    assert_eq!(report.devices_changed, 40 * 4, "changed, two added and removed per stem");
    drop(repo);
    let all = with(&["", "-1", ".b", "-0", "0"]);
    let ids: Vec<&str> = all.iter().map(String::as_str).collect();
    for (id, got) in ids.iter().zip(client_view(&fx.repo_dir, &ids).unwrap()) {
        let want = match id {
            _ if id.ends_with(".b") => None,
            _ if id.ends_with("-1") => Some(instruction(id, "r1")),
            _ => Some(instruction(id, "r2")),
        };
        assert_eq!(got, want, "{id}");
    }
}

#[test]
fn a_wave_cut_in_hash_order_rewrites_few_bins() {
    let (_fx, mut repo) = fixture(1_000_000);
    let mut ids: Vec<String> = (0..4_000).map(|i| format!("dev-{i:07}")).collect();
    let first = repo.commit(batch(ids.clone(), "r1")).unwrap();
    assert_eq!(first.devices_changed, 4_000);
    // The planner's order: by the device path hash.
    ids.sort_by_key(|id| device_order_key(id));
    let wave: Vec<String> = ids[1000..1040].to_vec();
    let report = repo.commit(batch(wave, "r2")).unwrap();
    // 40 of 4k devices in 2048 leaves: a contiguous ~1% of the hash space.
    let bins = report.roles.iter().filter(|r| r.role.starts_with("d-")).count();
    assert!((1..=25).contains(&bins), "{bins} bins rewritten");
    assert_eq!(report.roles.len(), bins + 2, "only bins, snapshot and timestamp: {:?}", report.roles);
}

#[test]
fn a_second_writer_fails_at_once_naming_the_holder() {
    let (fx, _repo) = fixture(10);
    let err = Repository::open(&fx.repo_dir, &fx.keys).unwrap_err();
    match err {
        PublishError::Locked { repo, holder } => {
            assert_eq!(repo, fx.repo_dir);
            assert_eq!(holder, Some(std::process::id()));
        }
        other => panic!("expected Locked, got {other}"),
    }
}

#[test]
fn bad_device_ids_and_duplicates_are_refused() {
    let (_fx, mut repo) = fixture(10);
    for bad in ["", "..", "a/b"] {
        let err = repo.commit(batch([bad.to_owned()], "r1")).unwrap_err();
        assert!(matches!(err, PublishError::InvalidDevice { .. }), "{err}");
    }
    let err = repo.commit(batch(["x".to_owned(), "x".to_owned()], "r1")).unwrap_err();
    assert!(matches!(err, PublishError::DuplicateDevice { .. }), "{err}");
    let mut both = batch(["y".to_owned()], "r1");
    both.removals.push("y".to_owned());
    let err = repo.commit(both).unwrap_err();
    assert!(matches!(err, PublishError::DuplicateDevice { ref id } if id == "y"), "{err}");
    assert!(!fx_has_device_files(&repo), "nothing is written for a refused batch");
}

fn fx_has_device_files(repo: &Repository) -> bool {
    std::fs::read_dir(repo.targets_dir().join("devices")).is_ok_and(|mut d| d.next().is_some())
}

#[test]
fn release_artifacts_are_recorded_and_local_files_checked() {
    let (fx, mut repo) = fixture(10);
    let content = b"firmware".to_vec();
    let file = fx.repo_dir.parent().unwrap().join("fw.bin");
    std::fs::write(&file, &content).unwrap();
    let sha = hex::encode(signing::sha256(&content));
    let artifact = ReleaseArtifact {
        release: "r1".into(),
        name: "fw.bin".into(),
        url: "https://example.invalid/fw.bin".into(),
        sha256: sha.clone(),
        length: content.len() as u64,
        file: Some(file.clone()),
    };
    let report = repo.commit(Batch { releases: vec![artifact.clone()], ..Batch::default() }).unwrap();
    assert_eq!(report.target_files, 1);
    assert!(fx.repo_dir.join(format!("targets/releases/r1/{sha}.fw.bin")).exists());
    let mut wrong = artifact;
    wrong.length += 1;
    let err = repo.commit(Batch { releases: vec![wrong], ..Batch::default() }).unwrap_err();
    assert!(matches!(err, PublishError::InvalidArtifact { .. }), "{err}");
}

fn metadata_files(repo_dir: &Path) -> BTreeMap<String, Vec<u8>> {
    dir_files(&repo_dir.join("metadata"))
}

fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_str().unwrap().to_owned(), std::fs::read(&p).unwrap())
        })
        .collect()
}

#[test]
fn a_timestamp_only_refresh_rewrites_nothing_else() {
    let (fx, mut repo) = fixture(100);
    repo.commit(batch(["a".to_owned()], "r1")).unwrap();
    let before = metadata_files(&fx.repo_dir);
    // Nothing is near expiry: nothing is written.
    assert!(repo.refresh(SignedDuration::from_hours(1)).unwrap().roles.is_empty());
    // Within two days, only the timestamp (1 day) expires.
    let report = repo.refresh(SignedDuration::from_hours(48)).unwrap();
    assert_eq!(report.roles.iter().map(|r| r.role.as_str()).collect::<Vec<_>>(), ["timestamp"]);
    let after = metadata_files(&fx.repo_dir);
    let changed: Vec<&String> = after.keys().filter(|k| before.get(*k) != after.get(*k)).collect();
    assert_eq!(changed, ["timestamp.json"]);
    drop(repo);
    assert!(client_view(&fx.repo_dir, &["a"]).unwrap()[0].is_some());
}

#[test]
fn a_refresh_near_bin_expiry_re_signs_bins_snapshot_and_timestamp() {
    let (fx, mut repo) = fixture(100);
    repo.commit(batch(["a".to_owned()], "r1")).unwrap();
    let leaves = repo.config().layout.leaves() as usize;
    // Within eight days, bins, parents and snapshot (7 days) expire, devices (90) does not.
    let report = repo.refresh(SignedDuration::from_hours(8 * 24)).unwrap();
    let bins = report.roles.iter().filter(|r| r.role.starts_with("d-")).count();
    assert_eq!(bins, leaves);
    assert!(report.roles.iter().all(|r| r.role != "targets" && r.role != "releases"));
    assert_eq!(report.roles.last().unwrap().role, "timestamp");
    drop(repo);
    assert_eq!(client_view(&fx.repo_dir, &["a"]).unwrap()[0], Some(instruction("a", "r1")));
}

#[test]
fn a_version_left_on_disk_by_a_crash_is_never_reused() {
    let (fx, mut repo) = fixture(10);
    repo.commit(batch(["a".to_owned()], "r1")).unwrap();
    let leaf = repo
        .config()
        .layout
        .leaf_name(repo.config().layout.leaf_of(&crate::protocol::target::device_path_hash("a")));
    let current = repo.snapshot_version();
    // Leftovers of a commit that never reached its timestamp.
    std::fs::write(fx.repo_dir.join(format!("metadata/3.{leaf}.json")), b"half").unwrap();
    std::fs::write(fx.repo_dir.join(format!("metadata/{}.snapshot.json", current + 1)), b"half").unwrap();
    let report = repo.commit(batch(["a".to_owned()], "r2")).unwrap();
    let written = report.roles.iter().find(|r| r.role == leaf).unwrap();
    assert_eq!(written.version, 4);
    assert_eq!(report.snapshot_version, Some(current + 2));
    drop(repo);
    assert_eq!(client_view(&fx.repo_dir, &["a"]).unwrap()[0], Some(instruction("a", "r2")));
}

#[test]
fn pruning_keeps_what_the_last_snapshots_name() {
    let (fx, mut repo) = fixture(100);
    let ids: Vec<String> = (0..50).map(|i| format!("dev-{i}")).collect();
    repo.commit(batch(ids.clone(), "r1")).unwrap();
    repo.commit(batch(ids[..10].to_vec(), "r2")).unwrap();
    repo.commit(batch(ids[..5].to_vec(), "r3")).unwrap();
    let current = repo.snapshot_version();
    let meta = fx.repo_dir.join("metadata");
    let device_files = || std::fs::read_dir(fx.repo_dir.join("targets/devices")).unwrap().count();
    assert_eq!(device_files(), 65);
    // A leftover of a commit that never reached its timestamp keeps its version number.
    let leftover = meta.join(format!("99.{}.json", repo.config().layout.leaf_name(0)));
    std::fs::write(&leftover, b"half").unwrap();

    let report = repo.prune(2).unwrap();
    assert_eq!(report.snapshots_kept, vec![current - 1, current]);
    // The r1 files of the first ten devices go; the previous snapshot still names r2.
    assert_eq!(report.target_files, 10);
    assert_eq!(device_files(), 55);
    assert!(report.metadata_files > 0 && report.bytes > 0, "{report:?}");
    assert!(leftover.exists());
    assert!(meta.join("1.root.json").exists());
    assert!(!meta.join(format!("{}.snapshot.json", current - 2)).exists());
    assert!(meta.join(format!("{}.snapshot.json", current - 1)).exists());
    let again = repo.prune(2).unwrap();
    assert_eq!((again.metadata_files, again.target_files), (0, 0), "{again:?}");

    // Keeping only the published snapshot drops what the previous one alone named.
    let one = repo.prune(1).unwrap();
    assert_eq!(one.snapshots_kept, vec![current]);
    assert_eq!(one.target_files, 5);
    assert!(one.metadata_files > 0);
    assert!(!meta.join(format!("{}.snapshot.json", current - 1)).exists());

    // The next commit goes on, and a client reads every device.
    repo.commit(batch(["dev-49".to_owned()], "r3")).unwrap();
    drop(repo);
    let names: Vec<&str> = ids.iter().map(String::as_str).collect();
    for (id, got) in names.iter().zip(client_view(&fx.repo_dir, &names).unwrap()) {
        let i: usize = id["dev-".len()..].parse().unwrap();
        let release = match i {
            0..5 | 49 => "r3",
            5..10 => "r2",
            _ => "r1",
        };
        assert_eq!(got, Some(instruction(id, release)), "{id}");
    }
}

#[test]
fn a_commit_failing_between_any_two_steps_leaves_the_previous_state_and_the_next_commit_succeeds() {
    for step in [CommitStep::TargetFiles, CommitStep::FirstRole, CommitStep::Roles, CommitStep::Snapshot] {
        let (fx, mut repo) = fixture(1_000);
        let devices: Vec<String> = (0..50).map(|i| format!("d{i}")).collect();
        let ids: Vec<&str> = devices.iter().map(String::as_str).collect();
        repo.commit(batch(devices.clone(), "r1")).unwrap();
        let timestamp_before = repo.timestamp_version();

        repo.fault = Some(step);
        let err = repo.commit(batch(devices.clone(), "r2")).unwrap_err();
        assert!(matches!(err, PublishError::InjectedFault(s) if s == step), "{step:?}: {err}");
        drop(repo); // as if the process died here

        let view = client_view(&fx.repo_dir, &ids).unwrap();
        assert!(view.iter().all(|i| i.as_ref().unwrap().release == "r1"), "{step:?}: clients still see r1");

        let mut repo = Repository::open(&fx.repo_dir, &fx.keys).unwrap();
        assert_eq!(repo.timestamp_version(), timestamp_before, "{step:?}");
        let report = repo.commit(batch(devices.clone(), "r2")).unwrap();
        assert!(report.timestamp_version.unwrap() > timestamp_before);
        drop(repo);
        let view = client_view(&fx.repo_dir, &ids).unwrap();
        assert!(view.iter().all(|i| i.as_ref().unwrap().release == "r2"), "{step:?}: clients see r2");
    }
}

#[test]
fn rotating_the_online_key_keeps_clients_working() {
    let (fx, mut repo) = fixture(1_000);
    repo.commit(batch(["a".to_owned()], "r1")).unwrap();
    let old = std::fs::read(fx.keys.dir().join("online.pk8")).unwrap();
    let report = repo.rotate_online_key(&fx.keys, SignedDuration::from_hours(24)).unwrap();
    assert!(report.roles.iter().any(|r| r.role == "targets"));
    assert_ne!(std::fs::read(fx.keys.dir().join("online.pk8")).unwrap(), old);
    assert!(fx.repo_dir.join("metadata/2.root.json").exists());
    repo.commit(batch(["b".to_owned()], "r1")).unwrap();
    drop(repo);
    // The client starts from root 1 and follows the chain to root 2.
    let view = client_view(&fx.repo_dir, &["a", "b"]).unwrap();
    assert_eq!(view, vec![Some(instruction("a", "r1")), Some(instruction("b", "r1"))]);
    // And the key directory opens the repository again with the new key.
    Repository::open(&fx.repo_dir, &fx.keys).unwrap();
}

fn snapshot_roles(repo_dir: &Path, version: u64) -> BTreeMap<String, u64> {
    let path = repo_dir.join(format!("metadata/{version}.snapshot.json"));
    let snap: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    snap["signed"]["meta"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.trim_end_matches(".json").to_owned(), v["version"].as_u64().unwrap()))
        .collect()
}

fn device_files(repo_dir: &Path) -> BTreeMap<String, Vec<u8>> {
    dir_files(&repo_dir.join("targets/devices"))
}

#[test]
fn rebinning_up_and_down_keeps_every_target_and_only_grows_versions() {
    let (fx, mut repo) = fixture(10);
    let four = BinLayout::with_leaves(4).unwrap();
    repo.rebin(four).unwrap();
    let devices: Vec<String> = (0..200).map(|i| format!("kiosk-{i:04}")).collect();
    let ids: Vec<&str> = devices.iter().map(String::as_str).collect();
    repo.commit(batch(devices.clone(), "r1")).unwrap();
    let files = device_files(&fx.repo_dir);
    let mut last = snapshot_roles(&fx.repo_dir, repo.snapshot_version());

    for leaves in [16, 128, 4] {
        let layout = BinLayout::with_leaves(leaves).unwrap();
        let report = repo.rebin(layout).unwrap();
        assert_eq!(report.devices_changed, 200);
        assert_eq!(report.target_files, 0, "target files are reused");
        assert_eq!(repo.config().layout, layout);
        assert_eq!(report.roles.last().unwrap().role, "timestamp");
        let now = snapshot_roles(&fx.repo_dir, repo.snapshot_version());
        for (role, version) in &last {
            // Every role stays listed (TUF clients refuse a snapshot that drops one) and
            // no version goes back.
            assert!(
                now[role] >= *version,
                "{leaves} leaves: {role} went from {version} to {:?}",
                now.get(role)
            );
        }
        for role in layout.role_names().chain(["devices".to_owned()]) {
            assert!(now[&role] > last.get(&role).copied().unwrap_or(0), "{role} has a new version");
        }
        last = now;
        let view = client_view(&fx.repo_dir, &ids).unwrap();
        assert!(view.iter().zip(&ids).all(|(v, id)| v.as_ref() == Some(&instruction(id, "r1"))), "{leaves}");
        assert_eq!(device_files(&fx.repo_dir), files, "no target file written or changed");
    }
    // The retired leaves of 128 are not re-signed by a refresh.
    let report = repo.refresh(SignedDuration::from_hours(8 * 24)).unwrap();
    let bins = report.roles.iter().filter(|r| r.role.starts_with("d-") || r.role.starts_with("p-")).count();
    assert_eq!(bins, 4);
    // The next commit and a reopen use the new layout.
    repo.commit(batch(devices[..3].to_vec(), "r2")).unwrap();
    drop(repo);
    let repo = Repository::open(&fx.repo_dir, &fx.keys).unwrap();
    assert_eq!(repo.config().layout, BinLayout::with_leaves(4).unwrap());
    drop(repo);
    let view = client_view(&fx.repo_dir, &ids[..4]).unwrap();
    let releases: Vec<&str> = view.iter().map(|v| v.as_ref().unwrap().release.as_str()).collect();
    assert_eq!(releases, ["r2", "r2", "r2", "r1"]);
}

#[test]
fn a_rebin_failing_between_any_two_steps_leaves_the_previous_state_and_can_run_again() {
    for step in [CommitStep::FirstRole, CommitStep::Roles, CommitStep::Snapshot] {
        let (fx, mut repo) = fixture(10);
        let devices: Vec<String> = (0..60).map(|i| format!("d{i}")).collect();
        let ids: Vec<&str> = devices.iter().map(String::as_str).collect();
        repo.commit(batch(devices.clone(), "r1")).unwrap();
        let before = repo.config().layout;
        let timestamp_before = repo.timestamp_version();

        repo.fault = Some(step);
        let err = repo.rebin(BinLayout::with_leaves(64).unwrap()).unwrap_err();
        assert!(matches!(err, PublishError::InjectedFault(s) if s == step), "{step:?}: {err}");
        assert_eq!(repo.config().layout, before, "{step:?}: the handle keeps the old layout");
        drop(repo);

        let view = client_view(&fx.repo_dir, &ids).unwrap();
        assert!(view.iter().all(|i| i.as_ref().unwrap().release == "r1"), "{step:?}: clients still see r1");
        let mut repo = Repository::open(&fx.repo_dir, &fx.keys).unwrap();
        assert_eq!(repo.config().layout, before, "{step:?}");
        assert_eq!(repo.timestamp_version(), timestamp_before, "{step:?}");
        // A commit in the old layout, then the rebin again, both succeed.
        repo.commit(batch(devices[..5].to_vec(), "r2")).unwrap();
        repo.rebin(BinLayout::with_leaves(64).unwrap()).unwrap();
        drop(repo);
        let view = client_view(&fx.repo_dir, &ids).unwrap();
        let r2 = view.iter().filter(|i| i.as_ref().unwrap().release == "r2").count();
        assert_eq!(r2, 5, "{step:?}");
    }
}

#[test]
fn a_rebin_stopped_after_its_timestamp_is_recorded_on_the_next_open() {
    let (fx, mut repo) = fixture(10);
    repo.commit(batch(["a".to_owned(), "b".to_owned()], "r1")).unwrap();
    let stored = std::fs::read(fx.repo_dir.join("waveguide-tuf.json")).unwrap();
    repo.rebin(BinLayout::with_leaves(256).unwrap()).unwrap();
    drop(repo);
    // As if the process died between the timestamp and recording the new layout.
    std::fs::write(fx.repo_dir.join("waveguide-tuf.json"), stored).unwrap();
    let mut repo = Repository::open(&fx.repo_dir, &fx.keys).unwrap();
    assert_eq!(repo.config().layout, BinLayout::with_leaves(256).unwrap());
    repo.commit(batch(["a".to_owned()], "r2")).unwrap();
    drop(repo);
    let view = client_view(&fx.repo_dir, &["a", "b"]).unwrap();
    assert_eq!(view, vec![Some(instruction("a", "r2")), Some(instruction("b", "r1"))]);
    let config: RepoConfig =
        serde_json::from_slice(&std::fs::read(fx.repo_dir.join("waveguide-tuf.json")).unwrap()).unwrap();
    assert_eq!(config.layout, BinLayout::with_leaves(256).unwrap());
}
