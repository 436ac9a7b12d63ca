//! Rotating the online key.

use jiff::SignedDuration;
use rayon::prelude::*;
use tough::schema::{Signed, Targets};

use crate::publish::keys::KeyDir;
use crate::publish::signing::write_atomic;
use crate::publish::{CommitReport, PublishError};

use super::{parse, read, Repository, RELEASES_ROLE};

impl Repository {
    /// Makes the repository trust a new online key: signs root `v+1` and `targets` `v+1`
    /// with the offline root and targets keys from `keys`, re-signs every online role with
    /// the new key, then publishes the new
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
        // Every online role names the online key (through root or a delegation), so each
        // gets a new version signed by the new key.
        let versions = self.published_versions();
        let mut files = self.all_delegating_roles(&versions)?;
        // `targets`, signed with the offline targets keys by `prepare_rotation`, delegates
        // `devices` to the new key.
        files.extend(self.newer_targets()?);
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
        if let Some(&version) = versions.get(RELEASES_ROLE).filter(|_| self.releases_online) {
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
}
