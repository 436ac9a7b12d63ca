//! The content of a leaf bin as the publisher works on it: target path → length and
//! SHA-256, nothing else (Waveguide writes no `custom` fields into leaves), parsed without
//! building tough's general `Targets` for each of a few thousand bins.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::canonical::LeafTarget;
use super::PublishError;

/// One device target in a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeafEntry {
    pub(crate) length: u64,
    pub(crate) sha256: [u8; 32],
}

/// A leaf's targets, sorted by path bytes (the order canonical JSON writes them in).
pub(crate) type LeafTargets = BTreeMap<String, LeafEntry>;

#[derive(Deserialize)]
struct File {
    signed: Signed,
}

#[derive(Deserialize)]
struct Signed {
    targets: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    hashes: Hashes,
    length: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Hashes {
    sha256: String,
}

/// Reads the targets of the leaf `role` from its metadata file. Refuses a leaf with
/// anything but a sha256 and a length per target.
pub(crate) fn read_leaf(role: &str, path: &Path, bytes: &[u8]) -> Result<LeafTargets, PublishError> {
    let file: File = serde_json::from_slice(bytes).map_err(|source| PublishError::ParseMetadata {
        role: role.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    file.signed
        .targets
        .into_iter()
        .map(|(name, e)| {
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(&e.hashes.sha256, &mut sha256).map_err(|_| PublishError::Inconsistent {
                role: role.to_owned(),
                path: path.to_owned(),
                reason: format!("target {name}: sha256 is not 64 hex digits"),
            })?;
            Ok((name, LeafEntry { length: e.length, sha256 }))
        })
        .collect()
}

/// The entries of `targets` as the leaf writer takes them.
pub(crate) fn leaf_entries(targets: &LeafTargets) -> Vec<LeafTarget<'_>> {
    targets.iter().map(|(name, e)| (name.as_str(), e.length, &e.sha256[..])).collect()
}
