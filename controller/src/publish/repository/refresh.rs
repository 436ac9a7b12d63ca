//! Re-signing roles that are about to expire.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use rayon::prelude::*;
use serde::Deserialize;
use tough::schema::{Signed, Targets, Timestamp as TimestampRole};

use crate::publish::{CommitReport, PublishError};

use super::{listed_roles, parse, read, Repository, RoleFile, RELEASES_ROLE};

impl Repository {
    /// Publishes a newer `targets` signed offline (`waveguide keys sign-targets`) if the
    /// key directory has one, re-signs every online role that expires within `margin`
    /// (with a new version), then the snapshot if anything it lists changed or it expires
    /// within `margin` itself, then the timestamp. When only the timestamp is near its
    /// expiry, only `timestamp.json` is rewritten. The controller calls this on a timer.
    /// Offline roles (`targets`, and `releases` when release keys sign it) near their
    /// expiry are logged: only their key holders can re-sign them.
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
        let (offline, stale): (Vec<_>, Vec<_>) =
            stale.into_iter().flatten().partition(|(role, _)| self.is_offline(role));
        for (role, version) in offline {
            tracing::warn!(
                role,
                version,
                "an offline role expires soon: re-sign it with its offline keys (docs/operations.md)"
            );
        }
        let mut files = self.newer_targets()?.into_iter().collect::<Vec<_>>();
        let resigned = stale
            .into_par_iter()
            .map(|(role, version)| {
                let path = meta.join(format!("{version}.{role}.json"));
                let signed: Signed<Targets> = parse(&role, &path, &read(&path)?)?;
                self.sign_targets(&role, signed.signed, version + 1, self.expiry_of(&role))
            })
            .collect::<Result<Vec<_>, _>>()?;
        files.extend(resigned);
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
}

impl Repository {
    /// Whether `role` is signed offline, never by this repository.
    fn is_offline(&self, role: &str) -> bool {
        role == "targets" || (role == RELEASES_ROLE && !self.releases_online)
    }

    /// The key directory's newest `targets`, if newer than the published one.
    pub(super) fn newer_targets(&self) -> Result<Option<RoleFile>, PublishError> {
        let (version, bytes) = self.keys.latest_targets()?;
        if version <= self.role_version("targets") {
            return Ok(None);
        }
        Ok(Some(RoleFile::signed_offline("targets", version, bytes)))
    }
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
