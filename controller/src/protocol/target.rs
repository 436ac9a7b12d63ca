//! Where a device's instructions and a release's artifacts live in the TUF repository,
//! and the stable hash that places a device's instructions.
//!
//! One function decides both the TUF target path of a device and the hash the planner
//! uses to order devices (`spread` order and tie-breaking). Because TUF hashed bins are
//! keyed by the SHA-256 of the target path, a wave cut from that order covers a
//! contiguous range of the hash space, so publishing it rewrites only the few bins that
//! cover that range instead of nearly all of them.

use sha2::{Digest, Sha256};

/// The TUF target path of a device's instructions: `devices/<device-id>.json`.
pub fn device_target_path(device_id: &str) -> String {
    format!("devices/{device_id}.json")
}

/// The TUF target path of a release's artifact: `releases/<release>/<artifact>`.
pub fn release_target_path(release: &str, artifact: &str) -> String {
    format!("releases/{release}/{artifact}")
}

/// SHA-256 of the device's target path: the hash TUF `path_hash_prefixes` match on, and
/// the planner's stable per-device ordering key.
pub fn device_path_hash(device_id: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"devices/");
    hasher.update(device_id.as_bytes());
    hasher.update(b".json");
    hasher.finalize().into()
}

/// The first 8 bytes of [`device_path_hash`] as an integer, big-endian: compact, and
/// orders exactly as the full hash does on its leading bits (which is all bins use).
pub fn device_order_key(device_id: &str) -> u64 {
    let h = device_path_hash(device_id);
    u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_hash_is_sha256_of_target_path() {
        let expected: [u8; 32] = Sha256::digest(b"devices/store-0001.json").into();
        assert_eq!(device_path_hash("store-0001"), expected);
        assert_eq!(device_target_path("store-0001"), "devices/store-0001.json");
        assert_eq!(release_target_path("v2", "os.img"), "releases/v2/os.img");
    }

    #[test]
    fn order_key_follows_hash_prefix() {
        let h = device_path_hash("a");
        assert_eq!(device_order_key("a").to_be_bytes(), h[..8]);
    }
}
