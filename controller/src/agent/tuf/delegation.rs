//! Which delegations cover a target path, and how large each role on the path may be.

use tough::schema::{DelegatedRole, PathSet};

/// Most bytes of `root` metadata read (its length is never signed elsewhere).
pub(super) const MAX_ROOT_BYTES: u64 = 512 * 1024;
/// Most bytes of `timestamp.json` read.
pub(super) const MAX_TIMESTAMP_BYTES: u64 = 64 * 1024;
/// Most bytes of a snapshot: a million-device layout lists about 2,100 roles in under
/// 100 KB; this leaves room for a re-bin to 2^18 leaves.
pub(super) const MAX_SNAPSHOT_BYTES: u64 = 16 * 1024 * 1024;
/// Most bytes of a role that delegates (`targets`, a parent bin) or lists releases: the
/// publisher keeps each under a few hundred delegations or releases, a few hundred KB.
pub(super) const MAX_ROLE_BYTES: u64 = 4 * 1024 * 1024;
/// Least cap of a hashed bin, whatever its share of the hash space.
const MIN_BIN_BYTES: u64 = 256 * 1024;
/// The most a device target can add to its bin: a 128-character id, its hash and length.
const MAX_TARGET_ENTRY_BYTES: u64 = 256;
/// How far a fleet may outgrow the size its layout was chosen for before a bin's cap
/// refuses it (`waveguide tuf rebin` is due long before).
const FLEET_GROWTH_MARGIN: u64 = 16;

/// The most bytes a role delegated by `delegation` may have. A hashed bin is capped from
/// its share of the hash space: the publisher picks about `sqrt(130 · N / 29)` leaves for
/// `N` devices (`publish::BinLayout::for_fleet`), so a layout of `L` leaves was made for
/// about `0.22 · L` devices per leaf; the cap allows [`FLEET_GROWTH_MARGIN`] times that.
/// Any other role gets [`MAX_ROLE_BYTES`].
pub(super) fn role_cap(delegation: Option<&DelegatedRole>) -> u64 {
    let Some(PathSet::PathHashPrefixes(prefixes)) = delegation.map(|d| &d.paths) else {
        return MAX_ROLE_BYTES;
    };
    // The share of the hash space, as a number of equal bins: a prefix of n hex digits
    // covers 16^-n of it.
    let share: f64 = prefixes.iter().map(|p| 16f64.powi(-(p.value().len().min(16) as i32))).sum();
    if share <= 0.0 {
        return MIN_BIN_BYTES;
    }
    let leaves = (1.0 / share).min(1e12);
    let devices_per_leaf = (29.0 * leaves / 130.0).ceil() as u64;
    (devices_per_leaf * FLEET_GROWTH_MARGIN * MAX_TARGET_ENTRY_BYTES).clamp(MIN_BIN_BYTES, MAX_ROLE_BYTES)
}

/// Whether a delegation covers `path` (whose hex SHA-256 is `path_hash`).
pub(super) fn delegates(role: &DelegatedRole, path: &str, path_hash: &str) -> bool {
    match &role.paths {
        PathSet::PathHashPrefixes(prefixes) => prefixes.iter().any(|p| path_hash.starts_with(p.value())),
        PathSet::Paths(patterns) => patterns.iter().any(|p| glob_matches(p.value(), path)),
    }
}

/// Shell-style matching as TUF's `PATHPATTERN`: `*` and `?` never match `/`, so a
/// pattern matches segment by segment.
fn glob_matches(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    pattern.len() == path.len()
        && pattern.iter().zip(&path).all(|(p, s)| segment_matches(p.as_bytes(), s.as_bytes()))
}

fn segment_matches(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            segment_matches(&pattern[1..], text) || (!text.is_empty() && segment_matches(pattern, &text[1..]))
        }
        (Some(b'?'), Some(_)) => segment_matches(&pattern[1..], &text[1..]),
        (Some(p), Some(t)) if p == t => segment_matches(&pattern[1..], &text[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_patterns_match_segment_by_segment() {
        assert!(glob_matches("releases/*/*", "releases/r1/image.raucb"));
        assert!(!glob_matches("releases/*/*", "releases/r1/sub/image.raucb"));
        assert!(!glob_matches("releases/*", "releases/r1/image.raucb"));
        assert!(glob_matches("devices/gw-?.json", "devices/gw-1.json"));
        assert!(!glob_matches("devices/gw-?.json", "devices/gw-12.json"));
        assert!(glob_matches("*.tgz", "foo.tgz"));
        assert!(!glob_matches("*.tgz", "foo.txt"));
    }

    fn bin(prefixes: &[&str]) -> DelegatedRole {
        serde_json::from_value(serde_json::json!({
            "name": "d-0", "keyids": [], "threshold": 1, "terminating": true,
            "path_hash_prefixes": prefixes,
        }))
        .unwrap()
    }

    #[test]
    fn a_bins_cap_follows_its_share_of_the_hash_space() {
        // 2,048 leaves (a million devices, about 488 each, 63 KB): capped at 16 times
        // the devices the layout was made for.
        let leaf = role_cap(Some(&bin(&["146", "147"])));
        assert_eq!(leaf, 457 * 16 * 256);
        // A small fleet's leaf keeps the floor; a parent (few, large shares) too.
        assert_eq!(role_cap(Some(&bin(&["0", "1", "2", "3"]))), MIN_BIN_BYTES);
        assert_eq!(role_cap(None), MAX_ROLE_BYTES);
        // A tiny share is capped, not unbounded.
        assert_eq!(role_cap(Some(&bin(&["00000000"]))), MAX_ROLE_BYTES);
    }
}
