//! The content of a leaf bin as the publisher works on it: device id → length and
//! SHA-256 of its target `devices/<id>.json`, nothing else (Waveguide writes no `custom`
//! fields into leaves), parsed without building tough's general `Targets` for each of a
//! few thousand bins.

use std::cmp::Ordering;
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

/// A leaf's targets by device id, in the order of their target paths (the order
/// canonical JSON writes them in, [`path_order`]).
pub(crate) type LeafTargets = Vec<(String, LeafEntry)>;

/// Orders device ids as their target paths `devices/<id>.json` sort, by bytes: as the ids
/// do, except that an id sorts after its own extensions that continue with a byte below
/// `.` (`a-1` before `a`, because `a-1.json` is before `a.json`).
pub(crate) fn path_order(a: &[u8], b: &[u8]) -> Ordering {
    let n = a.len().min(b.len());
    a[..n].cmp(&b[..n]).then_with(|| a[n..].iter().chain(b".json").cmp(b[n..].iter().chain(b".json")))
}

/// The device id of target path `devices/<id>.json`.
pub(crate) fn device_of(path: &str) -> Option<&str> {
    path.strip_prefix("devices/")?.strip_suffix(".json")
}

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
/// anything but device targets with a sha256 and a length each.
pub(crate) fn read_leaf(role: &str, path: &Path, bytes: &[u8]) -> Result<LeafTargets, PublishError> {
    let file: File = serde_json::from_slice(bytes).map_err(|source| PublishError::ParseMetadata {
        role: role.to_owned(),
        path: path.to_owned(),
        source,
    })?;
    let inconsistent =
        |reason: String| PublishError::Inconsistent { role: role.to_owned(), path: path.to_owned(), reason };
    // A map sorted by path bytes: the ids come out in path order.
    file.signed
        .targets
        .into_iter()
        .map(|(name, e)| {
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(&e.hashes.sha256, &mut sha256)
                .map_err(|_| inconsistent(format!("target {name}: sha256 is not 64 hex digits")))?;
            let id = device_of(&name)
                .ok_or_else(|| inconsistent(format!("target {name} is not a device target")))?;
            Ok((id.to_owned(), LeafEntry { length: e.length, sha256 }))
        })
        .collect()
}

/// The entries of `targets` as the leaf writer takes them.
pub(crate) fn leaf_entries(targets: &LeafTargets) -> Vec<LeafTarget<'_>> {
    targets.iter().map(|(id, e)| (id.as_str(), e.length, &e.sha256[..])).collect()
}

#[cfg(test)]
mod tests {
    use super::path_order;

    #[test]
    fn ids_sort_as_their_target_paths() {
        let mut ids = ["a", "a-1", "a.b", "a0", "b", "A", "a/", "ab", "a.jsom", "a.jsonx", "é"];
        ids.sort_by(|a, b| path_order(a.as_bytes(), b.as_bytes()));
        let mut paths: Vec<String> = ids.iter().map(|id| format!("devices/{id}.json")).collect();
        let sorted = paths.clone();
        paths.sort();
        assert_eq!(paths, sorted);
    }
}
