//! Re-partitioning the device targets into another bin layout, and reading the layout
//! the published `targets` role is in.

use rayon::prelude::*;
use tough::schema::{Signed, Targets};

use crate::protocol::target::device_path_hash;
use crate::publish::layout::BinLayout;
use crate::publish::leaf::{leaf_entries, path_order, LeafEntry, LeafTargets};
use crate::publish::{CommitReport, PublishError};

use super::{parse, read, Repository, DEVICES_ROLE, RELEASES_ROLE};

impl Repository {
    /// The bin layout of the published `devices` role: how many roles it delegates
    /// device paths to, and, when those are parents, how many leaves each delegates to.
    pub(super) fn published_layout(&self) -> Result<BinLayout, PublishError> {
        let delegated = |role: &str| -> Result<Vec<String>, PublishError> {
            let version = self.role_version(role);
            let path = self.metadata_dir().join(format!("{version}.{role}.json"));
            let signed: Signed<Targets> = parse(role, &path, &read(&path)?)?;
            let roles = signed.signed.delegations.map(|d| d.roles).unwrap_or_default();
            Ok(roles.into_iter().map(|r| r.name).filter(|n| n != RELEASES_ROLE).collect())
        };
        let top = delegated(DEVICES_ROLE)?;
        let bits = |n: usize, what: &str| -> Result<u8, PublishError> {
            if n.is_power_of_two() {
                Ok(n.trailing_zeros() as u8)
            } else {
                Err(PublishError::Repository {
                    repo: self.dir.clone(),
                    reason: format!(
                        "the published {DEVICES_ROLE} role delegates to {n} {what}, not a power of two"
                    ),
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

    /// Re-partitions the device targets into `layout`, as one metadata commit: a new
    /// `devices` delegating to the new roles, a new version of every parent and leaf of the
    /// new layout (a name the old layout used gets a version above its old one), then the
    /// snapshot, then the timestamp; the new layout is recorded in `waveguide-tuf.json`
    /// after that (`targets`, signed offline, delegates all device paths to `devices` and
    /// does not change). Device targets keep their content and hashes, so no target file is
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
    pub(super) fn is_live(&self, role: &str) -> bool {
        role == "targets"
            || role == DEVICES_ROLE
            || role == RELEASES_ROLE
            || self.config.layout.has_role(role)
    }
}
