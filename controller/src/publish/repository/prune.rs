//! Removing what no retained snapshot refers to (`waveguide tuf prune`).
//!
//! A commit writes new versions of the roles it changes and new device files, and leaves
//! the old ones in place: a client that fetched the previous timestamp a moment ago may
//! still fetch what that timestamp names. Pruning keeps the current snapshot and the
//! `keep - 1` before it, every role version they name, every root version, and every
//! device file a kept leaf lists; it removes older snapshots, older role versions and
//! device files that no kept leaf lists. Versions above the published ones (written by a
//! commit that stopped before its timestamp) are kept, so that their numbers are never
//! reused for other content. Release artifacts are not touched.
//!
//! Everything removed is unreferenced by what clients are told, so a prune stopped at
//! any point leaves a consistent repository, and the next commit or prune goes on.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use rayon::prelude::*;
use serde::Serialize;
use tough::schema::{Signed, Snapshot};

use super::{listed_roles, parse, Repository, RELEASES_ROLE, TARGETS};
use crate::publish::target_files::device_file_name;
use crate::publish::PublishError;

/// What [`Repository::prune`] kept and removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// The snapshot versions kept, oldest first (the last is the published one).
    pub snapshots_kept: Vec<u64>,
    /// Metadata files removed.
    pub metadata_files: u64,
    /// Device target files removed.
    pub target_files: u64,
    /// Bytes of the files removed.
    pub bytes: u64,
}

impl Repository {
    /// Removes the metadata versions and device files that neither the published snapshot
    /// nor the `keep - 1` snapshots before it refer to (`keep` is at least 1).
    pub fn prune(&mut self, keep: u64) -> Result<PruneReport, PublishError> {
        let meta = self.metadata_dir();
        let current = self.snapshot.version.get();
        let mut report = PruneReport::default();
        let published = self.published_versions();
        let mut named: HashSet<(String, u64)> =
            published.iter().map(|(role, v)| (role.clone(), *v)).collect();
        for version in current.saturating_sub(keep.max(1) - 1).max(1)..current {
            let path = meta.join(format!("{version}.snapshot.json"));
            let snapshot = match fs::read(&path) {
                Ok(bytes) => parse::<Signed<Snapshot>>("snapshot", &path, &bytes)?.signed,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // pruned before
                Err(e) => return Err(PublishError::Io { action: "read", path, source: e }),
            };
            report.snapshots_kept.push(version);
            named.extend(listed_roles(&snapshot).map(|(role, v)| (role.to_owned(), v)));
        }
        report.snapshots_kept.push(current);
        let oldest_kept = report.snapshots_kept[0];

        // The device files the kept leaves list (parents and `targets` list none; the
        // `releases` role lists artifacts, which are not pruned).
        let roles: Vec<&(String, u64)> =
            named.iter().filter(|(role, _)| role != TARGETS && role != RELEASES_ROLE).collect();
        let lists = roles
            .par_iter()
            .map(|(role, version)| {
                let targets = self.read_leaf_version(role, *version)?;
                Ok(targets
                    .into_iter()
                    .map(|(id, e)| {
                        let mut name = String::new();
                        device_file_name(&mut name, &e.sha256, &id);
                        name
                    })
                    .collect::<Vec<_>>())
            })
            .collect::<Result<Vec<_>, PublishError>>()?;
        let listed: HashSet<String> = lists.into_iter().flatten().collect();

        for (path, name) in entries(&meta)? {
            let Some((version, role)) = versioned(&name) else {
                continue; // timestamp.json, temporary files
            };
            let unreferenced = match role {
                "root" => false,
                "snapshot" => version < oldest_kept,
                _ => published
                    .get(role)
                    .is_some_and(|&p| version < p && !named.contains(&(role.to_owned(), version))),
            };
            if unreferenced {
                report.bytes += remove(&path)?;
                report.metadata_files += 1;
            }
        }
        let devices = self.targets_dir().join("devices");
        if devices.exists() {
            for (path, name) in entries(&devices)? {
                if !listed.contains(&name) {
                    report.bytes += remove(&path)?;
                    report.target_files += 1;
                }
            }
        }
        tracing::info!(
            kept = ?report.snapshots_kept,
            metadata_files = report.metadata_files,
            target_files = report.target_files,
            "pruned the TUF repository"
        );
        Ok(report)
    }
}

/// `<version>.<role>.json` → (version, role).
fn versioned(name: &str) -> Option<(u64, &str)> {
    let (version, rest) = name.split_once('.')?;
    Some((version.parse().ok()?, rest.strip_suffix(".json")?))
}

/// The files of `dir` with their names.
fn entries(dir: &Path) -> Result<Vec<(std::path::PathBuf, String)>, PublishError> {
    let read = fs::read_dir(dir).map_err(PublishError::io("read", dir))?;
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(PublishError::io("read", dir))?;
        if let Ok(name) = entry.file_name().into_string() {
            out.push((entry.path(), name));
        }
    }
    Ok(out)
}

/// Removes a file, returning its size.
fn remove(path: &Path) -> Result<u64, PublishError> {
    let len = fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0);
    match fs::remove_file(path) {
        Ok(()) => Ok(len),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(PublishError::Io { action: "remove", path: path.to_owned(), source: e }),
    }
}
