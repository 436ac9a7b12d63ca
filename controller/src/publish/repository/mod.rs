//! The published repository: create and open it here; its operations live one per file:
//! committing a batch (`commit`), re-partitioning the bins (`rebin`), re-signing expiring
//! roles (`refresh`), rotating the online key (`rotate`), removing unreferenced files
//! (`prune`). `roles` signs the roles above the leaves, `write` writes a commit in its
//! crash-safe order, and `lock` holds the one writer's lock.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tough::schema::{RoleType, Root, Signed, Snapshot, Timestamp as TimestampRole};

use super::keys::{KeyDir, DEVICES_ROLE, RELEASES_ROLE};
use super::layout::BinLayout;
use super::signing::{sha256, write_atomic, SignedFile, Signer};
use super::{CommitReport, Expiries, PublishError, SPEC_VERSION};
use tough::schema::Targets;

use lock::lock;
use roles::empty_targets;

mod commit;
mod lock;
mod prune;
mod rebin;
mod refresh;
mod roles;
mod rotate;
mod write;

pub use prune::PruneReport;
pub(crate) use roles::{new_target, target_name};

const CONFIG_FILE: &str = "waveguide-tuf.json";
const LOCK_FILE: &str = ".lock";
const METADATA: &str = "metadata";
const TARGETS: &str = "targets";

/// Settings fixed when the repository is created (`waveguide-tuf.json` in its directory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// The hashed-bin partition of device targets.
    pub layout: BinLayout,
    /// Expiry periods; a command may override them for one run.
    pub expiries: Expiries,
}

/// Steps of a commit, for the crash-safety tests that fail between them.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitStep {
    /// Target files and changed leaves are written, nothing that names them yet.
    TargetFiles,
    /// One new role file is written.
    FirstRole,
    /// Every new role file is written.
    Roles,
    /// The new snapshot is written; the timestamp is not.
    Snapshot,
}

/// A published TUF repository, held open by its one writer.
///
/// Holding a `Repository` holds the repository's writer lock; a second `open` of the
/// same directory, from this or another process, fails at once with
/// [`PublishError::Locked`].
#[derive(Debug)]
pub struct Repository {
    dir: PathBuf,
    config: RepoConfig,
    online: Signer,
    /// Where newer `targets` versions, signed offline, are picked up from.
    keys: KeyDir,
    /// Whether `targets` delegates `releases` to the online key (a key directory made
    /// without release keys): only then does the repository sign `releases` itself.
    releases_online: bool,
    /// Open for as long as the repository is; the advisory lock lives with it.
    _lock: File,
    /// The snapshot currently published (its signed part).
    snapshot: Snapshot,
    timestamp_version: u64,
    /// Flush to disk before the commit point (see [`Repository::set_sync`]).
    sync: bool,
    #[cfg(test)]
    pub(crate) fault: Option<CommitStep>,
}

/// A role file signed for a commit: still to be written, or already written.
struct RoleFile {
    role: String,
    version: u64,
    len: u64,
    file: Option<SignedFile>,
}

impl RoleFile {
    /// A role signed elsewhere (offline), published as it is.
    fn signed_offline(role: &str, version: u64, bytes: Vec<u8>) -> RoleFile {
        RoleFile {
            role: role.to_owned(),
            version,
            len: bytes.len() as u64,
            file: Some(SignedFile::from_bytes(bytes)),
        }
    }
}

impl Repository {
    /// Creates a repository in `dir` (empty or absent) trusting the roots in `keys`, with
    /// the given partition and expiries, and publishes its first, empty state.
    pub fn create(dir: &Path, keys: &KeyDir, config: RepoConfig) -> Result<Repository, PublishError> {
        config.layout.validate()?;
        let config_path = dir.join(CONFIG_FILE);
        if config_path.exists() {
            return Err(PublishError::Repository { repo: dir.to_owned(), reason: "already exists".into() });
        }
        for sub in [METADATA, TARGETS] {
            fs::create_dir_all(dir.join(sub)).map_err(PublishError::io("create", dir.join(sub)))?;
        }
        let lock = lock(dir)?;
        let roots = keys.roots()?;
        let (root_version, root_bytes) = roots.last().cloned().expect("roots() is never empty");
        for (version, bytes) in &roots {
            write_atomic(&dir.join(METADATA).join(format!("{version}.root.json")), bytes, true)?;
        }
        let root = parse::<Signed<Root>>(
            "root",
            &dir.join(METADATA).join(format!("{root_version}.root.json")),
            &root_bytes,
        )?;
        let online = keys.online_signer(Some(timestamp_keyid(&root.signed)))?;
        let (targets_version, targets_bytes) = keys.latest_targets()?;
        let releases_online = releases_signed_by(&targets_bytes, &online)?;
        let mut repo = Repository {
            dir: dir.to_owned(),
            config,
            online,
            keys: keys.clone(),
            releases_online,
            _lock: lock,
            snapshot: Snapshot::new(SPEC_VERSION.into(), NonZeroU64::MIN, Timestamp::UNIX_EPOCH),
            timestamp_version: 0,
            sync: true,
            #[cfg(test)]
            fault: None,
        };
        let mut roles = vec![RoleFile::signed_offline("targets", targets_version, targets_bytes)];
        if !releases_online {
            let releases = keys.initial_releases()?.ok_or_else(|| PublishError::KeyDir {
                dir: keys.dir().to_owned(),
                reason: "targets delegates releases to release keys, but releases/1.releases.json is missing"
                    .into(),
            })?;
            roles.push(RoleFile::signed_offline(RELEASES_ROLE, 1, releases));
        }
        roles.extend(repo.all_delegating_roles(&BTreeMap::new())?);
        let leaves: Vec<u32> = (0..config.layout.leaves()).collect();
        let leaf_roles = leaves
            .par_iter()
            .map(|&leaf| {
                repo.sign_targets(
                    &repo.config.layout.leaf_name(leaf),
                    empty_targets(),
                    1,
                    repo.config.expiries.snapshot,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut report = CommitReport::default();
        repo.publish(roles.into_iter().chain(leaf_roles).collect(), &mut report, true)?;
        // root.json last: its presence marks a complete repository for `open`.
        write_atomic(&dir.join(METADATA).join("root.json"), &root_bytes, true)?;
        repo.save_config()?;
        Ok(repo)
    }

    /// Opens an existing repository, taking its writer lock, with the online key from
    /// `keys`.
    pub fn open(dir: &Path, keys: &KeyDir) -> Result<Repository, PublishError> {
        let config_path = dir.join(CONFIG_FILE);
        let bytes = fs::read(&config_path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => PublishError::Repository {
                repo: dir.to_owned(),
                reason: format!("no {CONFIG_FILE}: create the repository with `waveguide tuf init`"),
            },
            _ => PublishError::Io { action: "read", path: config_path.clone(), source: e },
        })?;
        let config: RepoConfig = serde_json::from_slice(&bytes).map_err(|source| {
            PublishError::ParseMetadata { role: "configuration".into(), path: config_path, source }
        })?;
        config.layout.validate()?;
        let lock = lock(dir)?;
        let meta = dir.join(METADATA);
        let root_path = meta.join("root.json");
        let root: Signed<Root> = parse("root", &root_path, &read(&root_path)?)?;
        let online = keys.online_signer(Some(timestamp_keyid(&root.signed)))?;
        let ts_path = meta.join("timestamp.json");
        let timestamp: Signed<TimestampRole> = parse("timestamp", &ts_path, &read(&ts_path)?)?;
        let snap_meta =
            timestamp.signed.meta.get("snapshot.json").ok_or_else(|| PublishError::Inconsistent {
                role: "timestamp".into(),
                path: ts_path.clone(),
                reason: "no snapshot.json entry".into(),
            })?;
        let snap_path = meta.join(format!("{}.snapshot.json", snap_meta.version));
        let snap_bytes = read(&snap_path)?;
        if let Some(hashes) = &snap_meta.hashes {
            if sha256(&snap_bytes)[..] != hashes.sha256[..] {
                return Err(PublishError::Inconsistent {
                    role: "snapshot".into(),
                    path: snap_path,
                    reason: "content does not match the hash in timestamp.json".into(),
                });
            }
        }
        let snapshot: Signed<Snapshot> = parse("snapshot", &snap_path, &snap_bytes)?;
        let targets_version = snapshot.signed.meta.get("targets.json").map_or(0, |m| m.version.get());
        let targets_path = meta.join(format!("{targets_version}.targets.json"));
        let releases_online = releases_signed_by(&read(&targets_path)?, &online)?;
        let mut repo = Repository {
            dir: dir.to_owned(),
            config,
            online,
            keys: keys.clone(),
            releases_online,
            _lock: lock,
            snapshot: snapshot.signed,
            timestamp_version: timestamp.signed.version.get(),
            sync: true,
            #[cfg(test)]
            fault: None,
        };
        // The published delegations are the partition in force. They differ from the
        // stored one only when a rebin published its timestamp and stopped before it
        // recorded the new partition; record it now.
        let published = repo.published_layout()?;
        if published != repo.config.layout {
            tracing::warn!(?published, stored = ?repo.config.layout, "recording the published bin layout");
            repo.config.layout = published;
            repo.save_config()?;
        }
        Ok(repo)
    }

    pub(super) fn save_config(&self) -> Result<(), PublishError> {
        let bytes = serde_json::to_vec_pretty(&self.config)
            .map_err(|source| PublishError::Serialise { role: "configuration".into(), source })?;
        write_atomic(&self.dir.join(CONFIG_FILE), &bytes, true)
    }

    /// The repository's settings.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// Overrides the expiry periods for roles signed from now on by this handle (the
    /// stored configuration is unchanged).
    pub fn set_expiries(&mut self, expiries: Expiries) {
        self.config.expiries = expiries;
    }

    /// Whether commits flush their files to disk before the timestamp (the default), so
    /// that a power loss never leaves a timestamp naming files that were not written. Turn
    /// it off only where the storage is made durable some other way; a killed process is
    /// safe either way.
    pub fn set_sync(&mut self, sync: bool) {
        self.sync = sync;
    }

    /// The directory clients fetch metadata from (`<repo>/metadata`).
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join(METADATA)
    }

    /// The directory clients fetch targets from (`<repo>/targets`).
    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join(TARGETS)
    }

    /// The published snapshot version.
    pub fn snapshot_version(&self) -> u64 {
        self.snapshot.version.get()
    }

    /// The published timestamp version.
    pub fn timestamp_version(&self) -> u64 {
        self.timestamp_version
    }
}

/// The roles `snapshot` lists (`<role>.json`), with their versions.
fn listed_roles(snapshot: &Snapshot) -> impl Iterator<Item = (&str, u64)> {
    snapshot
        .meta
        .iter()
        .filter_map(|(file, m)| file.strip_suffix(".json").map(|role| (role, m.version.get())))
}

/// Whether the `targets` file in `bytes` delegates `releases` to `online` (and so lets
/// the repository sign it).
fn releases_signed_by(bytes: &[u8], online: &Signer) -> Result<bool, PublishError> {
    let targets: Signed<Targets> = parse("targets", Path::new("targets.json"), bytes)?;
    let releases = targets
        .signed
        .delegations
        .and_then(|d| d.roles.into_iter().find(|r| r.name == RELEASES_ROLE))
        .ok_or_else(|| PublishError::Inconsistent {
            role: "targets".into(),
            path: "targets.json".into(),
            reason: format!("no {RELEASES_ROLE} delegation"),
        })?;
    Ok(releases.keyids.iter().any(|k| k == online.keyid()))
}

fn timestamp_keyid(root: &Root) -> &[u8] {
    root.roles.get(&RoleType::Timestamp).and_then(|r| r.keyids.first()).map_or(&[], |k| k.as_ref())
}

fn read(path: &Path) -> Result<Vec<u8>, PublishError> {
    fs::read(path).map_err(PublishError::io("read", path))
}

fn parse<T: serde::de::DeserializeOwned>(role: &str, path: &Path, bytes: &[u8]) -> Result<T, PublishError> {
    serde_json::from_slice(bytes).map_err(|source| PublishError::ParseMetadata {
        role: role.to_owned(),
        path: path.to_owned(),
        source,
    })
}
