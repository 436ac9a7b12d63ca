//! Writing a commit in its crash-safe order: role files, the snapshot, one flush, then the
//! timestamp (the commit point), with the fault points the crash-safety tests stop at.

use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroU64;
use std::path::Path;

use tough::schema::{Hashes, Metafile, Snapshot, Timestamp as TimestampRole};

use crate::publish::layout::BinLayout;
use crate::publish::signing::{sha256, sign_metadata, sync_dir, write_atomic};
use crate::publish::{expiry_after, CommitReport, PublishError, RoleWrite, SPEC_VERSION};

use super::{CommitStep, Repository, RoleFile};

impl Repository {
    /// Writes role files, then a snapshot listing them, then the timestamp.
    pub(super) fn publish(
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

    pub(super) fn write_roles(
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
            // A client reads no role past the length its snapshot signs. Leaf bins go
            // without: at a million devices their 2,048 lengths would add about 32 KB to
            // every update check (past its 150 KB budget); agents cap a leaf from its
            // share of the hash space instead.
            let length = (!BinLayout::is_leaf_name(&f.role)).then_some(f.len);
            self.snapshot.meta.insert(
                format!("{}.json", f.role),
                Metafile {
                    length,
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
    pub(super) fn write_role(&self, f: &mut RoleFile) -> Result<(), PublishError> {
        if let Some(file) = f.file.take() {
            file.write_new(&self.metadata_dir().join(format!("{}.{}.json", f.version, f.role)))?;
            self.fault_point(CommitStep::FirstRole)?;
        }
        Ok(())
    }

    /// Writes the next snapshot (from `self.snapshot.meta`) and then the timestamp.
    pub(super) fn write_snapshot_and_timestamp(
        &mut self,
        report: &mut CommitReport,
    ) -> Result<(), PublishError> {
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

    pub(super) fn write_timestamp(
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
    pub(super) fn fault_point(&self, step: CommitStep) -> Result<(), PublishError> {
        if self.fault == Some(step) {
            return Err(PublishError::InjectedFault(step));
        }
        Ok(())
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(super) fn fault_point(&self, _step: CommitStep) -> Result<(), PublishError> {
        Ok(())
    }
}

/// Flushes the file system holding `dir`: one call covers every target file of a commit
/// before the metadata that names them, instead of one fsync per file.
pub(super) fn sync_filesystem(dir: &Path) -> Result<(), PublishError> {
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
