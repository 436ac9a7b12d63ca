//! The published repository: open, commit a batch, refresh expiring roles, rotate the
//! online key.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::mpsc::SyncSender;

use fs4::fs_std::FileExt;
use jiff::{SignedDuration, Timestamp};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    DelegatedRole, Delegations, Hashes, Metafile, PathHashPrefix, PathPattern, PathSet, RoleType, Root,
    Signed, Snapshot, Target, Targets, Timestamp as TimestampRole,
};
use tough::TargetName;

use super::canonical::{leaf_body, leaf_canonical_json, LeafTarget};
use super::keys::KeyDir;
use super::layout::BinLayout;
use super::leaf::{leaf_entries, path_order, read_leaf, LeafEntry, LeafTargets};
use super::prepare::{check_device_id, PreparedBatch, PreparedDevice, Stores};
use super::signing::{
    canonical_json, sha256, sign_canonical, sign_metadata, sync_dir, write_atomic, SignedFile, Signer,
};
use super::target_files::{write_target_file, DeviceFiles, NewFile, Written};
use super::{
    expiry_after, Batch, CommitReport, Expiries, PublishError, ReleaseArtifact, RoleWrite, SPEC_VERSION,
};
use crate::target::{device_path_hash, device_target_path};

mod prune;

pub use prune::PruneReport;

const CONFIG_FILE: &str = "waveguide-tuf.json";
const LOCK_FILE: &str = ".lock";
const METADATA: &str = "metadata";
const TARGETS: &str = "targets";
const RELEASES_ROLE: &str = "releases";
/// Glob of the `releases` role. One `*` per path segment, because the Python client
/// matches segment by segment.
const RELEASES_PATHS: &str = "releases/*/*";

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
        let mut repo = Repository {
            dir: dir.to_owned(),
            config,
            online,
            _lock: lock,
            snapshot: Snapshot::new(SPEC_VERSION.into(), NonZeroU64::MIN, Timestamp::UNIX_EPOCH),
            timestamp_version: 0,
            sync: true,
            #[cfg(test)]
            fault: None,
        };
        let roles = repo.all_delegating_roles(&BTreeMap::new())?;
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
        let mut repo = Repository {
            dir: dir.to_owned(),
            config,
            online,
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

    /// The bin layout of the published `targets` role: how many roles it delegates
    /// device paths to, and, when those are parents, how many leaves each delegates to.
    fn published_layout(&self) -> Result<BinLayout, PublishError> {
        let delegated = |role: &str| -> Result<Vec<String>, PublishError> {
            let version = self.role_version(role);
            let path = self.metadata_dir().join(format!("{version}.{role}.json"));
            let signed: Signed<Targets> = parse(role, &path, &read(&path)?)?;
            let roles = signed.signed.delegations.map(|d| d.roles).unwrap_or_default();
            Ok(roles.into_iter().map(|r| r.name).filter(|n| n != RELEASES_ROLE).collect())
        };
        let top = delegated("targets")?;
        let bits = |n: usize, what: &str| -> Result<u8, PublishError> {
            if n.is_power_of_two() {
                Ok(n.trailing_zeros() as u8)
            } else {
                Err(PublishError::Repository {
                    repo: self.dir.clone(),
                    reason: format!("the published targets role delegates to {n} {what}, not a power of two"),
                })
            }
        };
        let layout = match top.first() {
            Some(first) if first.starts_with("p-") => {
                let parent_bits = bits(top.len(), "parents")?;
                let per_parent = bits(delegated(first)?.len(), "leaves per parent")?;
                BinLayout { leaf_bits: parent_bits + per_parent, parent_bits }
            }
            _ => BinLayout { leaf_bits: bits(top.len(), "leaves")?, parent_bits: 0 },
        };
        layout.validate()?;
        Ok(layout)
    }

    fn save_config(&self) -> Result<(), PublishError> {
        let bytes = serde_json::to_vec_pretty(&self.config)
            .map_err(|source| PublishError::Serialise { role: "configuration".into(), source })?;
        write_atomic(&self.dir.join(CONFIG_FILE), &bytes, true)
    }

    /// Re-partitions the device targets into `layout`, as one metadata commit: a new
    /// `targets` delegating to the new roles, a new version of every parent and leaf of the
    /// new layout (a name the old layout used gets a version above its old one), then the
    /// snapshot, then the timestamp; the new layout is recorded in `waveguide-tuf.json`
    /// after that. Device targets keep their content and hashes, so no target file is
    /// written. Roles of the old layout that the new one has not are no longer delegated
    /// but stay listed in the snapshot at their last version: TUF clients refuse a
    /// snapshot that drops a role their trusted snapshot lists (specification 5.5.5).
    pub fn rebin(&mut self, layout: BinLayout) -> Result<CommitReport, PublishError> {
        layout.validate()?;
        let old = self.config.layout;
        if layout == old {
            return Ok(CommitReport::default());
        }
        // Every device target of the old leaves, unchanged.
        let old_leaves = (0..old.leaves())
            .into_par_iter()
            .map(|leaf| {
                let role = old.leaf_name(leaf);
                let mut moved: Vec<(u32, String, LeafEntry)> = Vec::new();
                for (id, entry) in self.read_leaf_version(&role, self.role_version(&role))? {
                    moved.push((layout.leaf_of(&device_path_hash(&id)), id, entry));
                }
                Ok(moved)
            })
            .collect::<Result<Vec<_>, PublishError>>()?;
        let mut by_leaf: Vec<LeafTargets> = vec![LeafTargets::new(); layout.leaves() as usize];
        let mut devices = 0;
        for (leaf, id, entry) in old_leaves.into_iter().flatten() {
            by_leaf[leaf as usize].push((id, entry));
            devices += 1;
        }
        by_leaf
            .par_iter_mut()
            .for_each(|targets| targets.sort_unstable_by(|a, b| path_order(a.0.as_bytes(), b.0.as_bytes())));
        let versions = self.published_versions();
        let published = self.snapshot.clone();
        self.config.layout = layout;
        let result = (|| {
            let mut files = self.all_delegating_roles(&versions)?;
            let leaf_files = by_leaf
                .par_iter()
                .enumerate()
                .map(|(leaf, targets)| {
                    let role = layout.leaf_name(leaf as u32);
                    self.sign_leaf(
                        &role,
                        &leaf_entries(targets),
                        versions.get(&role).copied().unwrap_or(0) + 1,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            files.extend(leaf_files);
            let mut report = CommitReport { devices_changed: devices, ..CommitReport::default() };
            self.publish(files, &mut report, false)?;
            Ok(report)
        })();
        match result {
            Ok(report) => {
                self.save_config()?;
                tracing::info!(
                    from = old.leaves(),
                    to = layout.leaves(),
                    devices,
                    "re-binned device targets"
                );
                Ok(report)
            }
            Err(e) => {
                self.config.layout = old;
                self.snapshot = published;
                Err(e)
            }
        }
    }

    /// Whether `role` is delegated in the current layout (roles a rebin retired are
    /// still listed in the snapshot, but no client ever fetches them).
    fn is_live(&self, role: &str) -> bool {
        role == "targets" || role == RELEASES_ROLE || self.config.layout.has_role(role)
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

    /// Publishes a batch as one metadata commit: the target files, new versions of only
    /// the bins (and `releases`) whose content changed, then one snapshot, then the
    /// timestamp. Bins are read, changed, serialised and signed in parallel while one
    /// thread writes the device files. A batch that changes nothing writes nothing.
    pub fn commit(&mut self, batch: Batch) -> Result<CommitReport, PublishError> {
        self.commit_prepared(PreparedBatch::from_batch(batch)?)
    }

    /// [`Repository::commit`] of a batch whose documents are already built (see
    /// [`PreparedBatch::read`], the fast path for large batch files).
    pub fn commit_prepared(&mut self, batch: PreparedBatch) -> Result<CommitReport, PublishError> {
        let PreparedBatch { stores, devices: mut upserts, removals, releases } = batch;
        let by_leaf = self.group_by_leaf(&stores, &mut upserts, removals)?;
        let mut report = CommitReport::default();

        let device_files = if by_leaf.is_empty() {
            None
        } else {
            Some(DeviceFiles::open(self.targets_dir().join("devices"))?)
        };
        let (results, written) = std::thread::scope(|scope| {
            let Some(device_files) = &device_files else {
                return (Ok(Vec::new()), Ok(Written::default()));
            };
            let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<NewFile>>(256);
            let writer = scope.spawn(|| device_files.write(receiver));
            // Read, change and sign each touched leaf; its new device files go to the writer.
            let results = by_leaf
                .into_par_iter()
                .map(|changes| self.apply_to_leaf(changes, &stores, device_files, &sender))
                .collect::<Result<Vec<_>, _>>();
            drop(sender);
            let written = writer.join().expect("the target file writer does not panic");
            (results, written)
        });
        // The writer's error explains a leaf that found the writer gone.
        let written = written?;
        let results = results?;
        report.target_files = written.files;
        report.target_bytes = written.bytes;
        let mut files = Vec::new();
        for r in results.into_iter().flatten() {
            report.devices_changed += r.devices_changed;
            files.push(r.role);
        }
        if !releases.is_empty() {
            if let Some(r) = self.apply_releases(&releases, &mut report)? {
                files.push(r);
            }
        }
        self.fault_point(CommitStep::TargetFiles)?;
        if files.is_empty() {
            return Ok(report);
        }
        self.publish(files, &mut report, false)?;
        Ok(report)
    }

    /// Re-signs every role that expires within `margin` (with a new version), then the
    /// snapshot if anything it lists changed or it expires within `margin` itself, then the
    /// timestamp. When only the timestamp is near its expiry, only `timestamp.json` is
    /// rewritten. The controller calls this on a timer.
    pub fn refresh(&mut self, margin: SignedDuration) -> Result<CommitReport, PublishError> {
        let deadline = Timestamp::now().saturating_add(margin).expect("signed durations never fail to add");
        let meta = self.metadata_dir();
        let names: Vec<(String, u64)> = listed_roles(&self.snapshot)
            .filter(|(role, _)| self.is_live(role))
            .map(|(role, version)| (role.to_owned(), version))
            .collect();
        let stale = names
            .par_iter()
            .map(|(role, version)| {
                let path = meta.join(format!("{version}.{role}.json"));
                Ok((read_expires(&path)? <= deadline).then(|| (role.clone(), *version)))
            })
            .collect::<Result<Vec<_>, PublishError>>()?;
        let files = stale
            .into_par_iter()
            .flatten()
            .map(|(role, version)| {
                let path = meta.join(format!("{version}.{role}.json"));
                let signed: Signed<Targets> = parse(&role, &path, &read(&path)?)?;
                self.sign_targets(&role, signed.signed, version + 1, self.expiry_of(&role))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut report = CommitReport::default();
        if !files.is_empty() || self.snapshot.expires <= deadline {
            self.publish(files, &mut report, false)?;
            return Ok(report);
        }
        let ts_path = meta.join("timestamp.json");
        let timestamp: Signed<TimestampRole> = parse("timestamp", &ts_path, &read(&ts_path)?)?;
        if timestamp.signed.expires <= deadline {
            let snap_path = meta.join(format!("{}.snapshot.json", self.snapshot.version));
            let snap_bytes = read(&snap_path)?;
            self.write_timestamp(&snap_bytes, &mut report)?;
        }
        Ok(report)
    }

    /// Makes the repository trust a new online key: signs root `v+1` with the offline root
    /// keys from `keys`, re-signs every role with the new key, then publishes the new
    /// root and the timestamp. A rotation interrupted at any point is finished by running
    /// it again.
    pub fn rotate_online_key(
        &mut self,
        keys: &KeyDir,
        root_expiry: SignedDuration,
    ) -> Result<CommitReport, PublishError> {
        let next = keys.prepare_rotation(root_expiry)?;
        let (root_version, _) = keys.latest_root()?;
        self.online = next;
        // Every role names the online key (targets via root, bins via delegations), so
        // every role gets a new version signed by the new key.
        let versions = self.published_versions();
        let mut files = self.all_delegating_roles(&versions)?;
        let meta = self.metadata_dir();
        let leaves: Vec<u32> = (0..self.config.layout.leaves()).collect();
        let leaf_files = leaves
            .par_iter()
            .map(|&leaf| {
                let role = self.config.layout.leaf_name(leaf);
                let version = versions.get(&role).copied().unwrap_or(0);
                let path = meta.join(format!("{version}.{role}.json"));
                let signed: Signed<Targets> = parse(&role, &path, &read(&path)?)?;
                self.sign_targets(&role, signed.signed, version + 1, self.config.expiries.snapshot)
            })
            .collect::<Result<Vec<_>, _>>()?;
        files.extend(leaf_files);
        if let Some(&version) = versions.get(RELEASES_ROLE) {
            let path = meta.join(format!("{version}.{RELEASES_ROLE}.json"));
            let signed: Signed<Targets> = parse(RELEASES_ROLE, &path, &read(&path)?)?;
            files.push(self.sign_targets(
                RELEASES_ROLE,
                signed.signed,
                version + 1,
                self.config.expiries.targets,
            )?);
        }
        let mut report = CommitReport::default();
        self.write_roles(files, &mut report)?;
        // The new root goes out just before the timestamp that needs it: a client that
        // fetches it early still finds the current snapshot signed by the new key.
        for (version, bytes) in keys.roots()? {
            let path = meta.join(format!("{version}.root.json"));
            if !path.exists() {
                write_atomic(&path, &bytes, true)?;
            }
        }
        let (_, latest) = keys.roots()?.pop().expect("roots() is never empty");
        write_atomic(&meta.join("root.json"), &latest, true)?;
        self.write_snapshot_and_timestamp(&mut report)?;
        keys.finish_rotation()?;
        tracing::info!(root_version, "online key rotated");
        Ok(report)
    }

    /// Groups device changes by leaf (sorting `upserts` in place, so a million of them
    /// are not copied), refusing malformed or repeated device ids.
    fn group_by_leaf<'b>(
        &self,
        stores: &Stores,
        upserts: &'b mut [PreparedDevice],
        removals: Vec<String>,
    ) -> Result<Vec<LeafChanges<'b>>, PublishError> {
        let layout = self.config.layout;
        let leaf_of = |d: &PreparedDevice| layout.leaf_of(&d.path_hash);
        let mut removed: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for id in removals {
            check_device_id(&id)?;
            removed.entry(layout.leaf_of(&device_path_hash(&id))).or_default().push(id);
        }
        upserts.par_sort_unstable_by_key(leaf_of);
        let mut by_leaf = Vec::new();
        for slice in upserts.chunk_by_mut(|a, b| leaf_of(a) == leaf_of(b)) {
            let leaf = leaf_of(&slice[0]);
            by_leaf.push(LeafChanges {
                leaf,
                removals: removed.remove(&leaf).unwrap_or_default(),
                upserts: slice,
            });
        }
        by_leaf.extend(removed.into_iter().map(|(leaf, removals)| LeafChanges {
            leaf,
            upserts: &mut [],
            removals,
        }));
        // A device id always lands in the same leaf, so repeats are found leaf by leaf;
        // sorting by path is also the order the leaf is written in.
        by_leaf.par_iter_mut().try_for_each(|changes| {
            let id = |d: &PreparedDevice| stores.bytes(d.id);
            changes.upserts.sort_unstable_by(|a, b| path_order(id(a), id(b)));
            changes.removals.sort_unstable_by(|a, b| path_order(a.as_bytes(), b.as_bytes()));
            let upserts = &*changes.upserts;
            let repeated = upserts.windows(2).find(|w| id(&w[0]) == id(&w[1])).map(|w| stores.str(w[0].id));
            let repeated = repeated
                .or_else(|| changes.removals.windows(2).find(|w| w[0] == w[1]).map(|w| w[0].as_str()))
                .or_else(|| {
                    changes.removals.iter().map(String::as_str).find(|removed| {
                        upserts.binary_search_by(|u| path_order(id(u), removed.as_bytes())).is_ok()
                    })
                });
            match repeated {
                Some(id) => Err(PublishError::DuplicateDevice { id: id.to_owned() }),
                None => Ok(()),
            }
        })?;
        Ok(by_leaf)
    }

    /// Applies one leaf's changes, sending its new device files to the writer. Returns
    /// `None` when its content would not change.
    fn apply_to_leaf<'s>(
        &self,
        changes: LeafChanges<'_>,
        stores: &'s Stores,
        device_files: &DeviceFiles,
        files: &SyncSender<Vec<NewFile<'s>>>,
    ) -> Result<Option<LeafResult>, PublishError> {
        let role = self.config.layout.leaf_name(changes.leaf);
        let version = self.role_version(&role);
        let old = self.read_leaf_version(&role, version)?;
        let mut new_files = Vec::with_capacity(changes.upserts.len());
        // The leaf's new targets: its old ones merged with the changes, both in path order.
        let mut entries: Vec<LeafTarget<'_>> = Vec::with_capacity(old.len() + changes.upserts.len());
        let mut devices_changed = 0;
        let mut old_targets = old.iter().peekable();
        for device in changes.upserts.iter() {
            let id = stores.str(device.id);
            while let Some((old_id, e)) =
                old_targets.next_if(|(old_id, _)| path_order(old_id.as_bytes(), id.as_bytes()).is_lt())
            {
                entries.push((old_id, e.length, &e.sha256));
            }
            let entry = LeafEntry { length: device.doc.len() as u64, sha256: device.hash };
            if let Some((old_id, old_entry)) = old_targets.next_if(|(old_id, _)| old_id == id) {
                if *old_entry == entry {
                    // Read before write: the device already has this instruction.
                    entries.push((old_id, old_entry.length, &old_entry.sha256));
                    continue;
                }
            }
            if device_files.needs(&device.hash, id, entry.length)? {
                new_files.push(NewFile { hash: device.hash, id, content: stores.bytes(device.doc) });
            }
            entries.push((id, entry.length, &device.hash));
            devices_changed += 1;
        }
        entries.extend(old_targets.map(|(id, e)| (id.as_str(), e.length, &e.sha256[..])));
        if !changes.removals.is_empty() {
            // Removed ids are never among the upserts (a batch cannot do both to a device).
            let before = entries.len();
            entries.retain(|(id, ..)| {
                changes.removals.binary_search_by(|r| path_order(r.as_bytes(), id.as_bytes())).is_err()
            });
            devices_changed += before - entries.len();
        }
        if !new_files.is_empty() && files.send(new_files).is_err() {
            // The writer stopped on an error, which the commit reports.
            return Err(PublishError::Repository {
                repo: self.dir.clone(),
                reason: "the target file writer stopped".into(),
            });
        }
        if devices_changed == 0 {
            return Ok(None);
        }
        let mut role = self.sign_leaf(&role, &entries, version + 1)?;
        // Written now, so that a few thousand signed bins never sit in memory together.
        self.write_role(&mut role)?;
        Ok(Some(LeafResult { role, devices_changed }))
    }

    /// The targets of leaf `role` at `version` (none at version 0).
    fn read_leaf_version(&self, role: &str, version: u64) -> Result<LeafTargets, PublishError> {
        if version == 0 {
            return Ok(LeafTargets::new());
        }
        let path = self.metadata_dir().join(format!("{version}.{role}.json"));
        read_leaf(role, &path, &read(&path)?)
    }

    /// Signs a leaf's targets as `role` at the first unused version ≥ `version`.
    fn sign_leaf(
        &self,
        role: &str,
        targets: &[LeafTarget<'_>],
        version: u64,
    ) -> Result<RoleFile, PublishError> {
        let mut shell = empty_targets();
        let version = self.stamp(role, &mut shell, version, self.config.expiries.snapshot);
        let body = match leaf_body(role, &shell, targets)? {
            Some(body) => body,
            None => {
                for (id, length, sha256) in targets {
                    let sha256 = sha256.to_vec();
                    shell.targets.insert(
                        target_name(device_target_path(id))?,
                        new_target(*length, sha256, HashMap::new()),
                    );
                }
                canonical_json(role, &shell)?
            }
        };
        let file = sign_canonical(role, body, &[&self.online])?;
        Ok(RoleFile { role: role.to_owned(), version, len: file.len() as u64, file: Some(file) })
    }

    /// Records release artifacts in the `releases` role, copying in local files.
    fn apply_releases(
        &self,
        artifacts: &[ReleaseArtifact],
        report: &mut CommitReport,
    ) -> Result<Option<RoleFile>, PublishError> {
        let version = self.role_version(RELEASES_ROLE);
        let path = self.metadata_dir().join(format!("{version}.{RELEASES_ROLE}.json"));
        let mut targets = parse::<Signed<Targets>>(RELEASES_ROLE, &path, &read(&path)?)?.signed;
        let mut changed = false;
        for artifact in artifacts {
            let target = artifact.target_path();
            let invalid = |reason: String| PublishError::InvalidArtifact { target: target.clone(), reason };
            for part in [&artifact.release, &artifact.name] {
                if part.is_empty() || part.contains(['/', '\\']) || part == "." || part == ".." {
                    return Err(invalid(format!("{part:?} cannot be a path segment")));
                }
            }
            let hash: [u8; 32] = hex::decode(&artifact.sha256)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| invalid(format!("sha256 {:?} is not 64 hex digits", artifact.sha256)))?;
            if let Some(file) = &artifact.file {
                let content = fs::read(file).map_err(PublishError::io("read", file))?;
                if content.len() as u64 != artifact.length || sha256(&content) != hash {
                    return Err(invalid(format!(
                        "{} does not match the declared sha256 and length",
                        file.display()
                    )));
                }
                let dir = self.targets_dir().join(RELEASES_ROLE).join(&artifact.release);
                let name = format!("{}.{}", artifact.sha256, artifact.name);
                fs::create_dir_all(&dir).map_err(PublishError::io("create", &dir))?;
                let handle = File::open(&dir).map_err(PublishError::io("open", &dir))?;
                if write_target_file(&handle, &dir, &name, &content, &mut false)? {
                    report.target_files += 1;
                    report.target_bytes += content.len() as u64;
                }
            }
            let custom = HashMap::from([("url".to_owned(), serde_json::Value::String(artifact.url.clone()))]);
            let new = new_target(artifact.length, hash.to_vec(), custom);
            let name = target_name(target.clone())?;
            if targets.targets.get(&name) != Some(&new) {
                targets.targets.insert(name, new);
                changed = true;
            }
        }
        if !changed {
            return Ok(None);
        }
        Ok(Some(self.sign_targets(RELEASES_ROLE, targets, version + 1, self.config.expiries.targets)?))
    }

    /// The roles above the leaves, signed at their next versions: `targets`, the parent
    /// roles, and an empty `releases` when the repository has none yet. `versions` holds
    /// the published version of each role (empty for a new repository).
    fn all_delegating_roles(&self, versions: &BTreeMap<String, u64>) -> Result<Vec<RoleFile>, PublishError> {
        let layout = self.config.layout;
        let next = |role: &str| versions.get(role).copied().unwrap_or(0) + 1;
        let mut top =
            vec![delegated(RELEASES_ROLE, PathSet::Paths(vec![pattern(RELEASES_PATHS)?]), &self.online)];
        if layout.parents() == 0 {
            for leaf in 0..layout.leaves() {
                top.push(delegated(
                    &layout.leaf_name(leaf),
                    prefixes(layout.leaf_prefixes(leaf))?,
                    &self.online,
                ));
            }
        } else {
            for parent in 0..layout.parents() {
                top.push(delegated(
                    &layout.parent_name(parent),
                    prefixes(layout.parent_prefixes(parent))?,
                    &self.online,
                ));
            }
        }
        let mut files = vec![self.sign_targets(
            "targets",
            self.delegating(top),
            next("targets"),
            self.config.expiries.targets,
        )?];
        if !versions.contains_key(RELEASES_ROLE) {
            files.push(self.sign_targets(RELEASES_ROLE, empty_targets(), 1, self.config.expiries.targets)?);
        }
        let parents = (0..layout.parents())
            .into_par_iter()
            .map(|parent| {
                let roles = layout
                    .leaves_of(parent)
                    .map(|leaf| {
                        Ok(delegated(
                            &layout.leaf_name(leaf),
                            prefixes(layout.leaf_prefixes(leaf))?,
                            &self.online,
                        ))
                    })
                    .collect::<Result<Vec<_>, PublishError>>()?;
                let name = layout.parent_name(parent);
                self.sign_targets(&name, self.delegating(roles), next(&name), self.config.expiries.snapshot)
            })
            .collect::<Result<Vec<_>, _>>()?;
        files.extend(parents);
        Ok(files)
    }

    fn delegating(&self, roles: Vec<DelegatedRole>) -> Targets {
        let mut targets = empty_targets();
        targets.delegations = Some(Delegations {
            keys: HashMap::from([(self.online.keyid().clone(), self.online.key().clone())]),
            roles,
        });
        targets
    }

    /// Signs `targets` as `role` at the first unused version ≥ `version`, expiring after
    /// `period`.
    fn sign_targets(
        &self,
        role: &str,
        mut targets: Targets,
        version: u64,
        period: SignedDuration,
    ) -> Result<RoleFile, PublishError> {
        let version = self.stamp(role, &mut targets, version, period);
        let body = match leaf_canonical_json(role, &targets)? {
            Some(body) => body,
            None => canonical_json(role, &targets)?,
        };
        let file = sign_canonical(role, body, &[&self.online])?;
        Ok(RoleFile { role: role.to_owned(), version, len: file.len() as u64, file: Some(file) })
    }

    /// Sets the version (the first unused one ≥ `version`), expiry and spec version of a
    /// role about to be signed; returns the version.
    fn stamp(&self, role: &str, targets: &mut Targets, version: u64, period: SignedDuration) -> u64 {
        let version = self.unused_version(role, version);
        targets.version = NonZeroU64::new(version).expect("versions start at 1");
        targets.expires = expiry_after(period);
        targets.spec_version = SPEC_VERSION.to_owned();
        version
    }

    /// The first version ≥ `from` with no file on disk. A crashed commit may have left
    /// `<v>.<role>.json` behind without publishing it; that number is never reused with
    /// other content, so no cache or mirror can hold two files under one name.
    fn unused_version(&self, role: &str, from: u64) -> u64 {
        let meta = self.metadata_dir();
        let mut version = from.max(1);
        while meta.join(format!("{version}.{role}.json")).exists() {
            version += 1;
        }
        version
    }

    /// Every role the published snapshot lists, with its version.
    fn published_versions(&self) -> BTreeMap<String, u64> {
        listed_roles(&self.snapshot).map(|(role, version)| (role.to_owned(), version)).collect()
    }

    fn role_version(&self, role: &str) -> u64 {
        self.snapshot.meta.get(&format!("{role}.json")).map_or(0, |m| m.version.get())
    }

    fn expiry_of(&self, role: &str) -> SignedDuration {
        match role {
            "targets" | RELEASES_ROLE => self.config.expiries.targets,
            _ => self.config.expiries.snapshot,
        }
    }

    /// Writes role files, then a snapshot listing them, then the timestamp.
    fn publish(
        &mut self,
        files: Vec<RoleFile>,
        report: &mut CommitReport,
        initial: bool,
    ) -> Result<(), PublishError> {
        if initial {
            self.snapshot.meta.clear();
        }
        self.write_roles(files, report)?;
        self.write_snapshot_and_timestamp(report)
    }

    fn write_roles(
        &mut self,
        mut files: Vec<RoleFile>,
        report: &mut CommitReport,
    ) -> Result<(), PublishError> {
        for f in &mut files {
            self.write_role(f)?;
        }
        self.fault_point(CommitStep::Roles)?;
        for f in files {
            report.roles.push(RoleWrite { role: f.role.clone(), version: f.version, bytes: f.len });
            self.snapshot.meta.insert(
                format!("{}.json", f.role),
                Metafile {
                    length: None,
                    hashes: None,
                    version: NonZeroU64::new(f.version).expect("non-zero"),
                    _extra: HashMap::new(),
                },
            );
        }
        Ok(())
    }

    /// Writes a role file not written yet. Role files are flushed together with the
    /// snapshot, by one syncfs before the timestamp.
    fn write_role(&self, f: &mut RoleFile) -> Result<(), PublishError> {
        if let Some(file) = f.file.take() {
            file.write_new(&self.metadata_dir().join(format!("{}.{}.json", f.version, f.role)))?;
            self.fault_point(CommitStep::FirstRole)?;
        }
        Ok(())
    }

    /// Writes the next snapshot (from `self.snapshot.meta`) and then the timestamp.
    fn write_snapshot_and_timestamp(&mut self, report: &mut CommitReport) -> Result<(), PublishError> {
        let mut snapshot = self.snapshot.clone();
        // A new repository (no timestamp yet) starts at snapshot version 1.
        let from = if self.timestamp_version == 0 { 1 } else { self.snapshot.version.get() + 1 };
        let version = self.unused_version("snapshot", from);
        snapshot.version = NonZeroU64::new(version).expect("non-zero");
        snapshot.expires = expiry_after(self.config.expiries.snapshot);
        snapshot.spec_version = SPEC_VERSION.to_owned();
        let bytes = sign_metadata("snapshot", &snapshot, &[&self.online])?;
        write_atomic(&self.metadata_dir().join(format!("{version}.snapshot.json")), &bytes, false)?;
        // Everything the new timestamp will name (target files, roles, snapshot) reaches
        // the disk before it does: one syncfs instead of an fsync per file.
        if self.sync {
            sync_filesystem(&self.dir)?;
        }
        report.roles.push(RoleWrite { role: "snapshot".into(), version, bytes: bytes.len() as u64 });
        report.snapshot_version = Some(version);
        self.fault_point(CommitStep::Snapshot)?;
        self.write_timestamp_for(&snapshot, &bytes, report)?;
        self.snapshot = snapshot;
        Ok(())
    }

    fn write_timestamp(
        &mut self,
        snapshot_bytes: &[u8],
        report: &mut CommitReport,
    ) -> Result<(), PublishError> {
        let snapshot = self.snapshot.clone();
        self.write_timestamp_for(&snapshot, snapshot_bytes, report)
    }

    /// The commit point: `timestamp.json`, renamed into place.
    fn write_timestamp_for(
        &mut self,
        snapshot: &Snapshot,
        snapshot_bytes: &[u8],
        report: &mut CommitReport,
    ) -> Result<(), PublishError> {
        let version = self.timestamp_version + 1;
        let mut timestamp = TimestampRole::new(
            SPEC_VERSION.to_owned(),
            NonZeroU64::new(version).expect("non-zero"),
            expiry_after(self.config.expiries.timestamp),
        );
        timestamp.meta.insert(
            "snapshot.json".to_owned(),
            Metafile {
                length: Some(snapshot_bytes.len() as u64),
                hashes: Some(Hashes {
                    sha256: sha256(snapshot_bytes).to_vec().into(),
                    _extra: HashMap::new(),
                }),
                version: snapshot.version,
                _extra: HashMap::new(),
            },
        );
        let bytes = sign_metadata("timestamp", &timestamp, &[&self.online])?;
        let meta = self.metadata_dir();
        write_atomic(&meta.join("timestamp.json"), &bytes, self.sync)?;
        if self.sync {
            sync_dir(&meta)?;
        }
        self.timestamp_version = version;
        report.roles.push(RoleWrite { role: "timestamp".into(), version, bytes: bytes.len() as u64 });
        report.timestamp_version = Some(version);
        Ok(())
    }

    #[cfg(test)]
    fn fault_point(&self, step: CommitStep) -> Result<(), PublishError> {
        if self.fault == Some(step) {
            return Err(PublishError::InjectedFault(step));
        }
        Ok(())
    }

    #[cfg(not(test))]
    #[inline(always)]
    fn fault_point(&self, _step: CommitStep) -> Result<(), PublishError> {
        Ok(())
    }
}

/// An empty targets role (version and expiry are set when it is signed).
fn empty_targets() -> Targets {
    Targets::new(SPEC_VERSION.to_owned(), NonZeroU64::MIN, Timestamp::UNIX_EPOCH)
}

/// One leaf's share of a batch.
struct LeafChanges<'b> {
    leaf: u32,
    upserts: &'b mut [PreparedDevice],
    removals: Vec<String>,
}

struct LeafResult {
    role: RoleFile,
    devices_changed: usize,
}

fn delegated(name: &str, paths: PathSet, online: &Signer) -> DelegatedRole {
    DelegatedRole {
        name: name.to_owned(),
        keyids: vec![online.keyid().clone()],
        threshold: NonZeroU64::MIN,
        paths,
        // A target belongs to exactly one bin; once its bin is searched, stop.
        terminating: true,
        targets: None,
    }
}

fn prefixes(list: Vec<String>) -> Result<PathSet, PublishError> {
    Ok(PathSet::PathHashPrefixes(
        list.into_iter()
            .map(|p| {
                PathHashPrefix::new(p).map_err(|source| PublishError::ToughSchema {
                    what: "invalid hash prefix".into(),
                    source: Box::new(source),
                })
            })
            .collect::<Result<_, _>>()?,
    ))
}

fn pattern(p: &str) -> Result<PathPattern, PublishError> {
    PathPattern::new(p).map_err(|source| PublishError::ToughSchema {
        what: format!("invalid path pattern {p}"),
        source: Box::new(source),
    })
}

fn target_name(path: String) -> Result<TargetName, PublishError> {
    TargetName::new(path.clone()).map_err(|source| PublishError::Tough {
        what: format!("invalid target name {path}"),
        source: Box::new(source),
    })
}

fn new_target(length: u64, sha256: Vec<u8>, custom: HashMap<String, serde_json::Value>) -> Target {
    Target {
        length,
        hashes: Hashes { sha256: Decoded::<Hex>::from(sha256), _extra: HashMap::new() },
        custom,
        _extra: HashMap::new(),
    }
}

/// The roles `snapshot` lists (`<role>.json`), with their versions.
fn listed_roles(snapshot: &Snapshot) -> impl Iterator<Item = (&str, u64)> {
    snapshot
        .meta
        .iter()
        .filter_map(|(file, m)| file.strip_suffix(".json").map(|role| (role, m.version.get())))
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

/// The `expires` of a role file, read from the start of the file where canonical JSON
/// puts it for bins (`_type` < `expires` < `spec_version` < `targets`), so a refresh scan
/// of thousands of bins reads a few hundred bytes of each. Falls back to a full parse.
fn read_expires(path: &Path) -> Result<Timestamp, PublishError> {
    let mut head = vec![0u8; 1024];
    let mut file = File::open(path).map_err(PublishError::io("read", path))?;
    let n = file.read(&mut head).map_err(PublishError::io("read", path))?;
    head.truncate(n);
    const KEY: &[u8] = b"\"expires\":\"";
    if let Some(signed) = find(&head, b"\"signed\":{") {
        if let Some(at) = find(&head[signed..], KEY) {
            let start = signed + at + KEY.len();
            if let Some(len) = head[start..].iter().position(|&b| b == b'"') {
                if let Some(t) =
                    std::str::from_utf8(&head[start..start + len]).ok().and_then(|s| s.parse().ok())
                {
                    return Ok(t);
                }
            }
        }
    }
    #[derive(Deserialize)]
    struct Expiring {
        signed: ExpiringSigned,
    }
    #[derive(Deserialize)]
    struct ExpiringSigned {
        expires: Timestamp,
    }
    file.rewind().map_err(PublishError::io("read", path))?;
    let mut all = Vec::new();
    file.read_to_end(&mut all).map_err(PublishError::io("read", path))?;
    Ok(parse::<Expiring>("role", path, &all)?.signed.expires)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Takes the repository's writer lock without waiting, and records our pid in it.
fn lock(dir: &Path) -> Result<File, PublishError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(PublishError::io("open", &path))?;
    match file.try_lock_exclusive() {
        Ok(true) => {}
        Ok(false) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(PublishError::Locked { repo: dir.to_owned(), holder: pid.trim().parse().ok() });
        }
        Err(e) => return Err(PublishError::Io { action: "lock", path, source: e }),
    }
    file.set_len(0).map_err(PublishError::io("write", &path))?;
    file.rewind().map_err(PublishError::io("write", &path))?;
    write!(file, "{}", std::process::id()).map_err(PublishError::io("write", &path))?;
    Ok(file)
}

/// Flushes the file system holding `dir`: one call covers every target file of a commit
/// before the metadata that names them, instead of one fsync per file.
fn sync_filesystem(dir: &Path) -> Result<(), PublishError> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let d = File::open(dir).map_err(PublishError::io("open", dir))?;
        // SAFETY: syncfs takes a valid open file descriptor and has no other preconditions.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(PublishError::Io {
                action: "sync",
                path: dir.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
    }
    Ok(())
}
