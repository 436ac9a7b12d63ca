//! The offline roles: `targets` and `releases` are signed by keys the controller never
//! holds, and nothing the online key signs changes who signs `releases`.

use std::fs;
use std::path::PathBuf;

use tough::schema::{RoleType, Root, Signed, Targets};

use super::*;
use crate::publish::keys::{DEVICES_ROLE, RELEASES_ROLE};

/// Offline keys made by `keys init`, and the controller's copy of the key directory
/// without any offline key: the online key and the signed files only.
struct OfflineFixture {
    tmp: TempDir,
    offline: KeyDir,
    online: KeyDir,
}

fn offline_fixture(spec: &KeySpec) -> OfflineFixture {
    let tmp = TempDir::new().unwrap();
    let (offline, _) = KeyDir::init(&tmp.path().join("offline"), spec).unwrap();
    let online_dir = tmp.path().join("online");
    fs::create_dir(&online_dir).unwrap();
    fs::copy(offline.dir().join("online.pk8"), online_dir.join("online.pk8")).unwrap();
    copy_signed(&offline, &online_dir);
    let online = KeyDir::open(&online_dir).unwrap();
    OfflineFixture { tmp, offline, online }
}

/// Copies the signed files (never a key) to the controller's key directory, as an
/// operator hands them over.
fn copy_signed(offline: &KeyDir, online_dir: &Path) {
    for sub in ["roots", "targets", "releases"] {
        let from = offline.dir().join(sub);
        let Ok(entries) = fs::read_dir(&from) else { continue };
        fs::create_dir_all(online_dir.join(sub)).unwrap();
        for entry in entries {
            let entry = entry.unwrap();
            fs::copy(entry.path(), online_dir.join(sub).join(entry.file_name())).unwrap();
        }
    }
}

fn published<T: serde::de::DeserializeOwned>(repo_dir: &Path, role: &str, version: u64) -> Signed<T> {
    let file = if role == "root" { "root.json".to_owned() } else { format!("{version}.{role}.json") };
    serde_json::from_slice(&fs::read(repo_dir.join("metadata").join(file)).unwrap()).unwrap()
}

fn keyid(dir: &Path, sub: &str, file: &str) -> Vec<u8> {
    let key = crate::publish::keys::load_key_for_tests(&dir.join(sub).join(file));
    key.keyid().to_vec()
}

#[test]
fn the_controller_publishes_with_the_online_key_alone_and_cannot_sign_releases() {
    let fx = offline_fixture(&KeySpec::default());
    let repo_dir = fx.tmp.path().join("repo");
    let config = RepoConfig { layout: BinLayout::for_fleet(100), expiries: Expiries::default() };
    let mut repo = Repository::create(&repo_dir, &fx.online, config).unwrap();
    let ids: Vec<String> = (0..40).map(|i| format!("dev-{i}")).collect();
    repo.commit(batch(ids.clone(), "r1")).unwrap();
    repo.refresh(SignedDuration::from_hours(8 * 24)).unwrap();
    repo.rebin(BinLayout::with_leaves(128).unwrap()).unwrap();
    drop(repo);
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let view = client_view(&repo_dir, &refs).unwrap();
    assert!(view.iter().zip(&ids).all(|(v, id)| v.as_ref() == Some(&instruction(id, "r1"))));

    // Root gives `targets` to the targets key; `targets` gives `releases` to the release
    // key and only `devices` to the online key.
    let online = keyid(fx.offline.dir(), "", "online.pk8");
    let root: Signed<Root> = published(&repo_dir, "root", 1);
    assert_eq!(
        root.signed.roles[&RoleType::Targets].keyids[0].to_vec(),
        keyid(fx.offline.dir(), "targets-keys", "targets-1.pk8")
    );
    let targets: Signed<Targets> = published(&repo_dir, "targets", 1);
    let delegations = targets.signed.delegations.unwrap();
    let by_name = |name: &str| delegations.roles.iter().find(|r| r.name == name).unwrap();
    let release_ids: Vec<Vec<u8>> = by_name(RELEASES_ROLE).keyids.iter().map(|k| k.to_vec()).collect();
    assert_eq!(release_ids, [keyid(fx.offline.dir(), "release-keys", "release-1.pk8")]);
    assert!(!release_ids.contains(&online));
    assert_eq!(by_name(DEVICES_ROLE).keyids[0].to_vec(), online);
    assert!(targets.signatures.iter().all(|s| s.keyid.to_vec() != online));

    // The online key cannot list an artifact.
    let mut repo = Repository::open(&repo_dir, &fx.online).unwrap();
    let artifact = ReleaseArtifact {
        release: "evil".into(),
        name: "fw.bin".into(),
        url: "https://example.invalid/fw.bin".into(),
        sha256: "00".repeat(32),
        length: 1,
        file: None,
    };
    let err = repo.commit(Batch { releases: vec![artifact], ..Batch::default() }).unwrap_err();
    assert!(matches!(err, PublishError::ReleaseNotSigned { .. }), "{err}");
    // A refresh far past every expiry re-signs the online roles and leaves the offline ones.
    let report = repo.refresh(SignedDuration::from_hours(400 * 24)).unwrap();
    assert!(report.roles.iter().any(|r| r.role == DEVICES_ROLE));
    assert!(report.roles.iter().all(|r| r.role != "targets" && r.role != RELEASES_ROLE));
}

#[test]
fn a_targets_signed_offline_is_published_on_the_next_refresh() {
    let fx = offline_fixture(&KeySpec::default());
    let repo_dir = fx.tmp.path().join("repo");
    let config = RepoConfig { layout: BinLayout::for_fleet(10), expiries: Expiries::default() };
    let mut repo = Repository::create(&repo_dir, &fx.online, config).unwrap();
    repo.commit(batch(["a".to_owned()], "r1")).unwrap();
    // The controller's key directory has no targets key.
    assert!(matches!(
        fx.online.resign_targets(SignedDuration::from_hours(24), None),
        Err(PublishError::KeyDir { .. })
    ));
    assert_eq!(fx.offline.resign_targets(SignedDuration::from_hours(24 * 400), None).unwrap(), 2);
    assert!(repo.refresh(SignedDuration::from_hours(1)).unwrap().roles.is_empty(), "nothing handed over yet");
    copy_signed(&fx.offline, fx.online.dir());
    let report = repo.refresh(SignedDuration::from_hours(1)).unwrap();
    let roles: Vec<(&str, u64)> = report.roles.iter().map(|r| (r.role.as_str(), r.version)).collect();
    assert_eq!(roles, [("targets", 2), ("snapshot", 3), ("timestamp", 3)]);
    drop(repo);
    assert_eq!(client_view(&repo_dir, &["a"]).unwrap()[0], Some(instruction("a", "r1")));
}

#[test]
fn rotating_the_online_key_re_signs_targets_and_keeps_the_release_keys() {
    let tmp = TempDir::new().unwrap();
    let (keys, _) = KeyDir::init(&tmp.path().join("keys"), &KeySpec::default()).unwrap();
    let repo_dir = tmp.path().join("repo");
    let config = RepoConfig { layout: BinLayout::for_fleet(10), expiries: Expiries::default() };
    let mut repo = Repository::create(&repo_dir, &keys, config).unwrap();
    repo.commit(batch(["a".to_owned()], "r1")).unwrap();
    let report = repo.rotate_online_key(&keys, SignedDuration::from_hours(24)).unwrap();
    assert!(report.roles.iter().any(|r| r.role == "targets" && r.version == 2));
    assert!(report.roles.iter().all(|r| r.role != RELEASES_ROLE), "releases stays as its keys signed it");
    let new_online = keyid(keys.dir(), "", "online.pk8");
    let targets: Signed<Targets> = published(&repo_dir, "targets", 2);
    let delegations = targets.signed.delegations.unwrap();
    for role in &delegations.roles {
        let ids: Vec<Vec<u8>> = role.keyids.iter().map(|k| k.to_vec()).collect();
        assert_eq!(ids.contains(&new_online), role.name == DEVICES_ROLE, "{}", role.name);
    }
    repo.commit(batch(["a".to_owned()], "r2")).unwrap();
    drop(repo);
    assert_eq!(client_view(&repo_dir, &["a"]).unwrap()[0], Some(instruction("a", "r2")));
}

#[test]
fn thresholds_of_the_offline_roles_are_written_and_checked() {
    let tmp = TempDir::new().unwrap();
    let spec = KeySpec {
        targets: KeyCount { keys: 3, threshold: 2 },
        releases: KeyCount { keys: 3, threshold: 3 },
        ..KeySpec::default()
    };
    let (keys, created) = KeyDir::init(&tmp.path().join("keys"), &spec).unwrap();
    assert_eq!((created.targets_keyids.len(), created.release_keyids.len()), (3, 3));
    let (_, root) = keys.latest_root().unwrap();
    assert_eq!(root.signed.roles[&RoleType::Targets].threshold.get(), 2);
    let (_, bytes) = keys.latest_targets().unwrap();
    let targets: Signed<Targets> = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(targets.signatures.len(), 3);
    let releases =
        targets.signed.delegations.unwrap().roles.into_iter().find(|r| r.name == RELEASES_ROLE).unwrap();
    assert_eq!((releases.keyids.len(), releases.threshold.get()), (3, 3));
    let repo_dir = tmp.path().join("repo");
    let config = RepoConfig { layout: BinLayout::for_fleet(10), expiries: Expiries::default() };
    Repository::create(&repo_dir, &keys, config).unwrap().commit(batch(["a".to_owned()], "r1")).unwrap();
    assert_eq!(client_view(&repo_dir, &["a"]).unwrap()[0], Some(instruction("a", "r1")));
    for (targets, releases) in [((2, 3), (1, 1)), ((1, 1), (1, 2)), ((0, 0), (1, 1))] {
        let spec = KeySpec {
            targets: KeyCount { keys: targets.0, threshold: targets.1 },
            releases: KeyCount { keys: releases.0, threshold: releases.1 },
            ..KeySpec::default()
        };
        let err = KeyDir::init(&tmp.path().join(format!("bad-{targets:?}-{releases:?}")), &spec).unwrap_err();
        assert!(matches!(err, PublishError::Config(_)), "{err}");
    }
}

fn artifact(release: &str, content: &[u8], file: Option<PathBuf>) -> ReleaseArtifact {
    ReleaseArtifact {
        release: release.into(),
        name: "fw.bin".into(),
        url: format!("https://example.invalid/{release}/fw.bin"),
        sha256: hex::encode(signing::sha256(content)),
        length: content.len() as u64,
        file,
    }
}

#[test]
fn signed_releases_are_checked_then_published_as_they_are() {
    let fx = offline_fixture(&KeySpec::default());
    let repo_dir = fx.tmp.path().join("repo");
    let config = RepoConfig { layout: BinLayout::for_fleet(10), expiries: Expiries::default() };
    let mut repo = Repository::create(&repo_dir, &fx.online, config).unwrap();
    let content = b"firmware 1".to_vec();
    let local = fx.tmp.path().join("fw.bin");
    fs::write(&local, &content).unwrap();
    let first = fx.offline.dir().join("releases/1.releases.json");
    let year = SignedDuration::from_hours(24 * 365);
    let (version, signed) =
        sign_releases(&fx.offline, &[artifact("r1", &content, None)], Some(&first), year).unwrap();
    assert_eq!(version, 2);

    // Refused, and nothing written: a file the online key signed, an artifact it does not
    // list or lists with another length.
    let before = metadata_files(&repo_dir);
    let forger = fx.tmp.path().join("forger");
    fs::create_dir_all(forger.join("release-keys")).unwrap();
    fs::copy(fx.offline.dir().join("online.pk8"), forger.join("release-keys/online.pk8")).unwrap();
    let forger = KeyDir::open_release_keys(&forger).unwrap();
    let (_, forged) = sign_releases(&forger, &[artifact("evil", b"x", None)], Some(&first), year).unwrap();
    let refused = |batch: Batch, repo: &mut Repository| repo.commit(batch).unwrap_err();
    let err = refused(Batch { signed_releases: Some(forged), ..Batch::default() }, &mut repo);
    assert!(
        matches!(&err, PublishError::InvalidReleases { reason } if reason.contains("release keys")),
        "{err}"
    );
    let unlisted = artifact("r2", b"other", None);
    let err = refused(
        Batch { releases: vec![unlisted], signed_releases: Some(signed.clone()), ..Batch::default() },
        &mut repo,
    );
    assert!(
        matches!(&err, PublishError::ReleaseNotSigned { target, .. } if target == "releases/r2/fw.bin"),
        "{err}"
    );
    let mut longer = artifact("r1", &content, None);
    longer.length += 1;
    let err = refused(Batch { releases: vec![longer], ..Batch::default() }, &mut repo);
    assert!(matches!(&err, PublishError::ReleaseNotSigned { .. }), "{err}");
    assert_eq!(metadata_files(&repo_dir), before);

    // Accepted: published byte for byte, with the artifact's local file.
    let batch = Batch {
        upserts: vec![instruction("a", "r1")],
        releases: vec![artifact("r1", &content, Some(local))],
        signed_releases: Some(signed.clone()),
        ..Batch::default()
    };
    let report = repo.commit(batch).unwrap();
    assert!(report.roles.iter().any(|r| r.role == RELEASES_ROLE && r.version == 2));
    assert_eq!(fs::read(repo_dir.join("metadata/2.releases.json")).unwrap(), signed);
    // The same file again, or an older one, is a replay.
    let err = refused(Batch { signed_releases: Some(signed), ..Batch::default() }, &mut repo);
    assert!(
        matches!(&err, PublishError::InvalidReleases { reason } if reason.contains("not above")),
        "{err}"
    );
    // Later batches check their artifacts against the published file.
    repo.commit(Batch { releases: vec![artifact("r1", &content, None)], ..Batch::default() }).unwrap();
    drop(repo);
    assert_eq!(client_view(&repo_dir, &["a"]).unwrap()[0], Some(instruction("a", "r1")));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let read = rt.block_on(async {
        let root = fs::read(repo_dir.join("metadata/1.root.json")).unwrap();
        let meta = url::Url::from_directory_path(repo_dir.join("metadata")).unwrap();
        let targets = url::Url::from_directory_path(repo_dir.join("targets")).unwrap();
        let repo = tough::RepositoryLoader::new(&root, meta, targets)
            .transport(SpecTargetPaths(tough::FilesystemTransport))
            .load()
            .await
            .unwrap();
        let name = TargetName::new("releases/r1/fw.bin").unwrap();
        let length = repo.all_targets().find(|(n, _)| **n == name).map(|(_, t)| t.length);
        length
    });
    assert_eq!(read, Some(content.len() as u64), "tough trusts the artifact the release keys signed");
}
