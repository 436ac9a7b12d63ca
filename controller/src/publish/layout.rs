//! How device targets are partitioned into hashed bins.
//!
//! Leaf bins split the SHA-256 space of `devices/<id>.json` paths into `2^leaf_bits`
//! equal, contiguous ranges. Above a few dozen leaves, `targets` delegates to
//! `2^parent_bits` parent roles that each delegate to their share of the leaves, so that
//! no single delegating role grows with the fleet. The planner orders waves by the same
//! hash (see [`crate::protocol::target`]), so a wave is a contiguous hash range and lands in few
//! leaves.
//!
//! Sizes that drive the choice (canonical JSON, ed25519, short role names): a device
//! target costs about 130 bytes in its leaf, a role costs about 29 bytes in the
//! snapshot. An update check downloads the snapshot (∝ leaves) and one leaf
//! (∝ devices / leaves), so the total is smallest near `leaves = sqrt(130 · N / 29)`.

use serde::{Deserialize, Serialize};

use super::PublishError;

/// Bytes one device target adds to its leaf bin (measured on canonical JSON).
const TARGET_ENTRY_BYTES: f64 = 130.0;
/// Bytes one role adds to the snapshot.
const SNAPSHOT_ENTRY_BYTES: f64 = 29.0;
/// Up to this many leaves, `targets` delegates to them directly.
const MAX_FLAT_BITS: u8 = 6;
/// Above this, a leaf range no longer fits the role-name scheme sensibly.
const MAX_LEAF_BITS: u8 = 20;

/// The hashed-bin partition of device targets, fixed when the repository is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinLayout {
    /// `2^leaf_bits` leaf bins hold the device targets.
    pub leaf_bits: u8,
    /// `2^parent_bits` parent roles between `targets` and the leaves; 0 for none.
    pub parent_bits: u8,
}

impl BinLayout {
    /// The layout that keeps one update check smallest for a fleet of about `devices`.
    pub fn for_fleet(devices: u64) -> Self {
        let ideal_leaves = (TARGET_ENTRY_BYTES * devices.max(1) as f64 / SNAPSHOT_ENTRY_BYTES).sqrt();
        let leaf_bits = (ideal_leaves.log2().round() as i64).clamp(1, MAX_LEAF_BITS as i64) as u8;
        Self::with_leaf_bits(leaf_bits)
    }

    /// The layout with exactly `leaves` leaf bins (a power of two, 2 to 2^20), with parent
    /// roles above 64 leaves as [`BinLayout::for_fleet`] would choose them.
    pub fn with_leaves(leaves: u32) -> Result<Self, PublishError> {
        if !leaves.is_power_of_two() || !(2..=1 << MAX_LEAF_BITS).contains(&leaves) {
            return Err(PublishError::Config(format!(
                "the number of leaves must be a power of two from 2 to {}, got {leaves}",
                1u32 << MAX_LEAF_BITS
            )));
        }
        Ok(Self::with_leaf_bits(leaves.trailing_zeros() as u8))
    }

    fn with_leaf_bits(leaf_bits: u8) -> Self {
        let parent_bits = if leaf_bits <= MAX_FLAT_BITS { 0 } else { leaf_bits.div_ceil(2) };
        BinLayout { leaf_bits, parent_bits }
    }

    /// Checks the bit counts, as read from a configuration file.
    pub fn validate(&self) -> Result<(), PublishError> {
        if self.leaf_bits == 0 || self.leaf_bits > MAX_LEAF_BITS {
            return Err(PublishError::Config(format!(
                "leaf_bits must be 1..={MAX_LEAF_BITS}, got {}",
                self.leaf_bits
            )));
        }
        if self.parent_bits >= self.leaf_bits {
            return Err(PublishError::Config(format!(
                "parent_bits ({}) must be smaller than leaf_bits ({})",
                self.parent_bits, self.leaf_bits
            )));
        }
        Ok(())
    }

    /// Number of leaf bins.
    pub fn leaves(&self) -> u32 {
        1 << self.leaf_bits
    }

    /// Number of parent roles (0 when `targets` delegates to the leaves directly).
    pub fn parents(&self) -> u32 {
        if self.parent_bits == 0 {
            0
        } else {
            1 << self.parent_bits
        }
    }

    /// The leaf bin that holds the target whose path hashes to `hash`.
    pub fn leaf_of(&self, hash: &[u8; 32]) -> u32 {
        let top = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]);
        top >> (32 - u32::from(self.leaf_bits))
    }

    /// The parent role of a leaf (meaningful only when there are parents).
    pub fn parent_of(&self, leaf: u32) -> u32 {
        leaf >> (self.leaf_bits - self.parent_bits)
    }

    /// Leaves delegated by one parent, in order.
    pub fn leaves_of(&self, parent: u32) -> std::ops::Range<u32> {
        let per = 1 << (self.leaf_bits - self.parent_bits);
        parent * per..(parent + 1) * per
    }

    /// Role name of a leaf bin: `d-` and the leaf's index in hex.
    pub fn leaf_name(&self, leaf: u32) -> String {
        format!("d-{:0w$x}", leaf, w = hex_digits(self.leaf_bits))
    }

    /// Whether `role` is named as a leaf bin of any layout (`d-` and hex digits): a role
    /// left from an earlier layout is one too.
    pub fn is_leaf_name(role: &str) -> bool {
        role.strip_prefix("d-")
            .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
    }

    /// Role name of a parent role: `p-` and its index in hex.
    pub fn parent_name(&self, parent: u32) -> String {
        format!("p-{:0w$x}", parent, w = hex_digits(self.parent_bits))
    }

    /// The `path_hash_prefixes` of a leaf.
    pub fn leaf_prefixes(&self, leaf: u32) -> Vec<String> {
        hash_prefixes(leaf, self.leaf_bits)
    }

    /// The `path_hash_prefixes` of a parent role.
    pub fn parent_prefixes(&self, parent: u32) -> Vec<String> {
        hash_prefixes(parent, self.parent_bits)
    }

    /// Whether `role` is one of this layout's device roles (a parent or a leaf).
    pub fn has_role(&self, role: &str) -> bool {
        let index = |prefix: &str, bits: u8, count: u32| {
            role.strip_prefix(prefix).is_some_and(|hex| {
                hex.len() == hex_digits(bits) && u32::from_str_radix(hex, 16).is_ok_and(|i| i < count)
            })
        };
        index("d-", self.leaf_bits, self.leaves())
            || (self.parents() > 0 && index("p-", self.parent_bits, self.parents()))
    }

    /// Every delegated device role name (parents, then leaves).
    pub fn role_names(&self) -> impl Iterator<Item = String> + '_ {
        (0..self.parents()).map(|p| self.parent_name(p)).chain((0..self.leaves()).map(|l| self.leaf_name(l)))
    }
}

fn hex_digits(bits: u8) -> usize {
    usize::from(bits.div_ceil(4))
}

/// Hex prefixes covering the `index`-th of `2^bits` equal ranges of the hash space. TUF
/// prefixes are whole hex digits, so a range that ends inside a digit is listed as the
/// digits it spans.
fn hash_prefixes(index: u32, bits: u8) -> Vec<String> {
    let digits = hex_digits(bits);
    let spare = digits as u32 * 4 - u32::from(bits);
    (0..1u32 << spare).map(|j| format!("{:0w$x}", (index << spare) | j, w = digits)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::target::device_path_hash;
    use sha2::{Digest, Sha256};

    #[test]
    fn a_million_devices_get_two_levels_of_2048_leaves() {
        let layout = BinLayout::for_fleet(1_000_000);
        assert_eq!(layout, BinLayout { leaf_bits: 11, parent_bits: 6 });
        assert_eq!(layout.leaf_prefixes(0x0a3), vec!["146", "147"]);
        assert_eq!(layout.parent_prefixes(0x0a), vec!["28", "29", "2a", "2b"]);
        assert_eq!(layout.leaf_name(0x0a3), "d-0a3");
        assert_eq!(layout.parent_name(0x0a), "p-0a");
        assert_eq!(layout.leaves_of(1), 32..64);
    }

    #[test]
    fn an_explicit_leaf_count_gets_the_same_parents_and_names_its_roles() {
        assert_eq!(BinLayout::with_leaves(2048).unwrap(), BinLayout::for_fleet(1_000_000));
        assert_eq!(BinLayout::with_leaves(16).unwrap(), BinLayout { leaf_bits: 4, parent_bits: 0 });
        for bad in [0, 1, 3, 100, 1 << 21] {
            assert!(BinLayout::with_leaves(bad).is_err(), "{bad}");
        }
        let layout = BinLayout::with_leaves(128).unwrap();
        assert!(layout.has_role("d-7f") && layout.has_role("p-f"));
        assert!(!layout.has_role("d-80") && !layout.has_role("d-7") && !layout.has_role("p-10"));
        assert!(!BinLayout::with_leaves(16).unwrap().has_role("p-0"));
        assert!(layout.role_names().all(|r| layout.has_role(&r)));
    }

    #[test]
    fn small_fleets_are_flat() {
        let layout = BinLayout::for_fleet(10);
        assert_eq!(layout.parent_bits, 0);
        assert_eq!(layout.parents(), 0);
        assert!(layout.validate().is_ok());
    }

    #[test]
    fn a_device_matches_the_prefixes_of_its_leaf_and_parent() {
        let layout = BinLayout::for_fleet(1_000_000);
        for id in ["a", "store-0001", "x-99"] {
            let leaf = layout.leaf_of(&device_path_hash(id));
            let hex = hex::encode(Sha256::digest(format!("devices/{id}.json")));
            assert!(layout.leaf_prefixes(leaf).iter().any(|p| hex.starts_with(p.as_str())));
            let parent = layout.parent_of(leaf);
            assert!(layout.parent_prefixes(parent).iter().any(|p| hex.starts_with(p.as_str())));
            assert!(layout.leaves_of(parent).contains(&leaf));
        }
    }
}
