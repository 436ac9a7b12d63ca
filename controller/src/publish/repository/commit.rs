//! Committing a batch: device changes grouped by leaf, each touched leaf re-signed in
//! parallel while one thread writes the device files, release artifacts recorded.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::sync::mpsc::SyncSender;

use rayon::prelude::*;
use tough::schema::{Signed, Targets};

use crate::protocol::target::{device_path_hash, device_target_path};
use crate::publish::canonical::{leaf_body, LeafTarget};
use crate::publish::leaf::{path_order, read_leaf, LeafEntry, LeafTargets};
use crate::publish::prepare::{publishable_id, PreparedBatch, PreparedDevice, Stores};
use crate::publish::signing::{canonical_json, sha256, sign_canonical};
use crate::publish::target_files::{write_target_file, DeviceFiles, NewFile, Written};
use crate::publish::{Batch, CommitReport, PublishError, ReleaseArtifact};

use super::roles::{empty_targets, new_target, target_name};
use super::{parse, read, CommitStep, Repository, RoleFile, RELEASES_ROLE};
use crate::publish::releases::{release_target, verify_releases};

impl Repository {
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
        let PreparedBatch { stores, devices: mut upserts, removals, releases, signed_releases } = batch;
        // Checked before anything is written: a refused file publishes nothing.
        let signed_releases = match signed_releases {
            Some(bytes) => Some(self.check_signed_releases(bytes)?),
            None => None,
        };
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
            let signed = signed_releases.as_ref().map(|(_, signed)| signed);
            if let Some(r) = self.apply_releases(&releases, signed, &mut report)? {
                files.push(r);
            }
        }
        files.extend(signed_releases.map(|(file, _)| file));
        self.fault_point(CommitStep::TargetFiles)?;
        if files.is_empty() {
            return Ok(report);
        }
        self.publish(files, &mut report, false)?;
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
            publishable_id(&id)?;
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
    pub(super) fn read_leaf_version(&self, role: &str, version: u64) -> Result<LeafTargets, PublishError> {
        if version == 0 {
            return Ok(LeafTargets::new());
        }
        let path = self.metadata_dir().join(format!("{version}.{role}.json"));
        read_leaf(role, &path, &read(&path)?)
    }

    /// Signs a leaf's targets as `role` at the first unused version ≥ `version`.
    pub(super) fn sign_leaf(
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

    /// Checks a `releases` file signed offline against the release keys the published
    /// `targets` names and the published `releases` version (see [`verify_releases`]).
    fn check_signed_releases(&self, bytes: Vec<u8>) -> Result<(RoleFile, Targets), PublishError> {
        let version = self.role_version("targets");
        let path = self.metadata_dir().join(format!("{version}.targets.json"));
        let targets: Signed<Targets> = parse("targets", &path, &read(&path)?)?;
        let releases = verify_releases(&bytes, &targets.signed, self.role_version(RELEASES_ROLE))?;
        let version = releases.signed.version.get();
        Ok((RoleFile::signed_offline(RELEASES_ROLE, version, bytes), releases.signed))
    }

    /// Copies in the local files of release artifacts and, where the online key signs
    /// `releases`, records the artifacts there. Where release keys sign it, each artifact
    /// must be listed, with its length and hash, in `signed` (this commit's signed file)
    /// or else in the published `releases`.
    fn apply_releases(
        &self,
        artifacts: &[ReleaseArtifact],
        signed: Option<&Targets>,
        report: &mut CommitReport,
    ) -> Result<Option<RoleFile>, PublishError> {
        let version = self.role_version(RELEASES_ROLE);
        let path = self.metadata_dir().join(format!("{version}.{RELEASES_ROLE}.json"));
        let published = match signed {
            Some(_) => None,
            None => Some(parse::<Signed<Targets>>(RELEASES_ROLE, &path, &read(&path)?)?.signed),
        };
        let listed = signed.or(published.as_ref()).expect("one of them is set");
        let mut targets = listed.clone();
        let mut changed = false;
        for artifact in artifacts {
            let (name, new) = release_target(artifact)?;
            if !self.releases_online && listed.targets.get(&name) != Some(&new) {
                let detail = match listed.targets.get(&name) {
                    Some(t) => format!(
                        " as given (signed: length {}, sha256 {})",
                        t.length,
                        hex::encode(&t.hashes.sha256)
                    ),
                    None => String::new(),
                };
                return Err(PublishError::ReleaseNotSigned { target: artifact.target_path(), detail });
            }
            if let Some(file) = &artifact.file {
                let content = fs::read(file).map_err(PublishError::io("read", file))?;
                if content.len() as u64 != artifact.length || sha256(&content)[..] != new.hashes.sha256[..] {
                    return Err(PublishError::InvalidArtifact {
                        target: artifact.target_path(),
                        reason: format!("{} does not match the declared sha256 and length", file.display()),
                    });
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
            if self.releases_online && targets.targets.get(&name) != Some(&new) {
                targets.targets.insert(name, new);
                changed = true;
            }
        }
        if !changed {
            return Ok(None);
        }
        Ok(Some(self.sign_targets(RELEASES_ROLE, targets, version + 1, self.config.expiries.targets)?))
    }
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
