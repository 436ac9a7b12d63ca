//! Publish: turns device instructions into a signed TUF repository, one metadata commit
//! per batch (wave).
//!
//! Layout (see `docs/tuf.md`): `root` (offline keys) → `targets` (offline keys) → a
//! `releases` role (offline release keys) for artifact targets
//! `releases/<release>/<file>`, and the online `devices` role → hashed bins
//! (`path_hash_prefixes`) for one target per device, `devices/<device-id>.json`; then
//! `snapshot` and `timestamp`. Consistent snapshots throughout, so every file except `timestamp.json` is
//! written once under a new versioned name and never changed; `timestamp.json` is renamed
//! into place last and is the commit point.
//!
//! The published files are the source of truth: [`Repository::open`] reads the current
//! versions from `timestamp.json` and the snapshot it names, so whatever a crashed commit
//! left behind is never referenced and never reused.
//!
//! ```no_run
//! # fn main() -> Result<(), waveguide::publish::PublishError> {
//! use waveguide::publish::{Batch, KeyDir, Repository};
//! let keys = KeyDir::open("keys".as_ref())?;
//! let mut repo = Repository::open("repo".as_ref(), &keys)?;
//! let report = repo.commit(Batch::default())?; // an empty batch writes nothing
//! assert!(report.roles.is_empty());
//! # Ok(()) }
//! ```

mod canonical;
mod client;
mod error;
mod keys;
mod layout;
mod leaf;
mod prepare;
mod releases;
mod repository;
mod signing;
mod target_files;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::protocol::target::release_target_path;
use crate::protocol::DeviceInstruction;

pub use client::SpecTargetPaths;
pub use error::PublishError;
pub use keys::{KeyCount, KeyDir, KeySpec, KeysCreated};
pub use layout::BinLayout;
pub use prepare::PreparedBatch;
pub use releases::sign_releases;
pub use repository::{PruneReport, RepoConfig, Repository};
pub(crate) use signing::write_atomic;
pub use target_files::sample_instructions;

/// The TUF specification version written into every role.
pub const SPEC_VERSION: &str = "1.0.0";

/// How long each role stays valid after it is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiries {
    /// `timestamp.json`; re-signed by [`Repository::refresh`] well before this runs out.
    pub timestamp: SignedDuration,
    /// The snapshot and the device bins (parents and leaves).
    pub snapshot: SignedDuration,
    /// The online `devices` role (and `releases` where the online key signs it).
    pub targets: SignedDuration,
    /// Root versions signed by `keys init` and `keys rotate-online`.
    pub root: SignedDuration,
}

impl Default for Expiries {
    fn default() -> Self {
        const DAY: i64 = 24 * 3600;
        Expiries {
            timestamp: SignedDuration::from_secs(DAY),
            snapshot: SignedDuration::from_secs(7 * DAY),
            targets: SignedDuration::from_secs(90 * DAY),
            root: SignedDuration::from_secs(365 * DAY),
        }
    }
}

/// The expiry `period` from now, in whole seconds (the TUF date format has no fraction).
pub(crate) fn expiry_after(period: SignedDuration) -> Timestamp {
    let t = Timestamp::now().saturating_add(period).expect("signed durations never fail to add");
    Timestamp::from_second(t.as_second()).expect("whole seconds of a valid timestamp are valid")
}

/// An artifact of a release, published as target `releases/<release>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseArtifact {
    /// The release name.
    pub release: String,
    /// The artifact's file name.
    pub name: String,
    /// Where devices download it (recorded in the target's `custom.url`).
    pub url: String,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    /// Length in bytes.
    pub length: u64,
    /// A local copy to publish into the repository's targets, checked against `sha256`
    /// and `length`. Without it only the signed record is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl ReleaseArtifact {
    /// The TUF target path, `releases/<release>/<name>`.
    pub fn target_path(&self) -> String {
        release_target_path(&self.release, &self.name)
    }
}

/// One metadata commit: device instructions added or changed, devices removed, and
/// release artifacts added or changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Instructions to publish; a device already holding the same instruction is untouched.
    #[serde(default)]
    pub upserts: Vec<DeviceInstruction>,
    /// Device ids whose targets are withdrawn.
    #[serde(default)]
    pub removals: Vec<String>,
    /// Release artifacts to publish in the `releases` role. Where release keys sign
    /// `releases`, each must be listed in the signed file (this batch's or the published
    /// one); only its local file is published.
    #[serde(default)]
    pub releases: Vec<ReleaseArtifact>,
    /// A `releases` file signed by the release keys (`waveguide release sign`), published
    /// as it is once checked.
    #[serde(skip)]
    pub signed_releases: Option<Vec<u8>>,
}

/// One metadata file written by a commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoleWrite {
    /// Role name (`timestamp`, `snapshot`, `targets`, `releases`, `p-0a`, `d-0a3`, ...).
    pub role: String,
    /// The version written.
    pub version: u64,
    /// File size.
    pub bytes: u64,
}

/// What a commit or refresh wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CommitReport {
    /// Metadata files written, in write order (timestamp last).
    pub roles: Vec<RoleWrite>,
    /// Devices whose target was added, changed or removed.
    pub devices_changed: usize,
    /// Target files written (device instructions, release artifacts).
    pub target_files: u64,
    /// Bytes of those target files.
    pub target_bytes: u64,
    /// The new snapshot version, if one was written.
    pub snapshot_version: Option<u64>,
    /// The new timestamp version, if one was written.
    pub timestamp_version: Option<u64>,
}

impl CommitReport {
    /// Bytes of metadata written.
    pub fn metadata_bytes(&self) -> u64 {
        self.roles.iter().map(|r| r.bytes).sum()
    }

    /// All bytes written: metadata and target files.
    pub fn bytes_written(&self) -> u64 {
        self.metadata_bytes() + self.target_bytes
    }
}
