//! A specialised canonical-JSON writer for leaf bins.
//!
//! A leaf bin is a `targets` role listing up to a few thousand device targets, each with
//! only a length and a sha256. Building it through the generic path (serde into
//! `olpc-cjson`, which buffers and sorts every object and NFC-normalises every string)
//! costs more than everything else in an initial publish. This writer produces the same
//! bytes straight into one pre-sized buffer: the small envelope (`_type`, `delegations`,
//! `expires`, `spec_version`, `version`) still comes from the generic path, and only the `targets`
//! object is written here, its keys sorted by bytes as canonical JSON sorts them.
//!
//! It takes the fast path only where its output is the generic output by construction:
//! targets with no `custom` or unknown fields, and
//! target names of printable ASCII other than `"` and `\` (nothing to escape, and NFC
//! leaves ASCII unchanged). Anything else returns `None` and the caller uses the generic
//! path. A test compares both paths byte for byte.

use std::collections::HashMap;
use std::io::Write;

use tough::schema::Targets;

use super::leaf::{device_of, path_order};
use super::signing::canonical_json;
use super::PublishError;

const EMPTY_TARGETS: &[u8] = b"\"targets\":{}";

/// The canonical JSON of a leaf bin's `signed` object, or `None` when it needs the
/// generic path.
pub(crate) fn leaf_canonical_json(role: &str, targets: &Targets) -> Result<Option<Vec<u8>>, PublishError> {
    let mut entries: Vec<LeafTarget<'_>> = Vec::with_capacity(targets.targets.len());
    for (name, target) in &targets.targets {
        if !target.custom.is_empty() || !target._extra.is_empty() || !target.hashes._extra.is_empty() {
            return Ok(None);
        }
        let Some(id) = device_of(name.raw()) else {
            return Ok(None);
        };
        entries.push((id, target.length, &target.hashes.sha256[..]));
    }
    entries.sort_unstable_by(|a, b| path_order(a.0.as_bytes(), b.0.as_bytes()));
    let shell = Targets {
        spec_version: targets.spec_version.clone(),
        version: targets.version,
        expires: targets.expires,
        targets: HashMap::new(),
        delegations: targets.delegations.clone(),
        _extra: targets._extra.clone(),
    };
    leaf_body(role, &shell, &entries)
}

/// One target of a leaf, `devices/<id>.json`: the device id, the length and SHA-256.
pub(crate) type LeafTarget<'a> = (&'a str, u64, &'a [u8]);

/// The canonical JSON of a leaf bin whose envelope is `shell` (with no targets) and whose
/// targets are `entries`, sorted by target path ([`path_order`]); `None` when an id needs
/// the generic path.
pub(crate) fn leaf_body(
    role: &str,
    shell: &Targets,
    entries: &[LeafTarget<'_>],
) -> Result<Option<Vec<u8>>, PublishError> {
    // "devices/<id>.json":{"hashes":{"sha256":"<64 hex>"},"length":<up to 20 digits>},
    let mut size = 0;
    for (id, _, _) in entries {
        if !plain(id) {
            return Ok(None);
        }
        size += id.len() + 144;
    }
    // The envelope with an empty `targets` object, from the generic path.
    let shell = canonical_json(role, shell)?;
    let Some(at) = find_once(&shell, EMPTY_TARGETS) else {
        return Ok(None);
    };
    let open = at + EMPTY_TARGETS.len() - 1; // just before the closing brace

    let mut out = Vec::with_capacity(shell.len() + size);
    out.extend_from_slice(&shell[..open]);
    let mut hex_hash = [0u8; 64];
    for (i, (id, length, sha256)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"\"devices/");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b".json\":{\"hashes\":{\"sha256\":\"");
        let hex_len = sha256.len() * 2;
        if hex_len > hex_hash.len() {
            return Ok(None);
        }
        hex::encode_to_slice(sha256, &mut hex_hash[..hex_len]).expect("sized above");
        out.extend_from_slice(&hex_hash[..hex_len]);
        out.extend_from_slice(b"\"},\"length\":");
        write!(out, "{length}").expect("writing to a Vec cannot fail");
        out.push(b'}');
    }
    out.extend_from_slice(&shell[open..]);
    Ok(Some(out))
}

/// Printable ASCII with nothing canonical JSON escapes.
fn plain(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

/// The position of the only occurrence of `needle`, if it occurs exactly once.
fn find_once(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let mut hits = haystack.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i);
    let first = hits.next()?;
    hits.next().is_none().then_some(first)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::num::NonZeroU64;

    use tough::schema::decoded::{Decoded, Hex};
    use tough::schema::{Hashes, Target, Targets};
    use tough::TargetName;

    use super::leaf_canonical_json;
    use crate::publish::signing::{canonical_json, sha256};

    fn leaf(names: &[String]) -> Targets {
        let mut t = Targets::new(
            "1.0.0".to_owned(),
            NonZeroU64::new(7).unwrap(),
            "2030-01-02T03:04:05Z".parse().unwrap(),
        );
        for (i, name) in names.iter().enumerate() {
            t.targets.insert(
                TargetName::new(name.clone()).unwrap(),
                Target {
                    length: (i as u64) * 997 + 1,
                    hashes: Hashes {
                        sha256: Decoded::<Hex>::from(sha256(name.as_bytes()).to_vec()),
                        _extra: HashMap::new(),
                    },
                    custom: HashMap::new(),
                    _extra: HashMap::new(),
                },
            );
        }
        t
    }

    #[test]
    fn the_leaf_writer_matches_the_generic_path_byte_for_byte() {
        let mut ids: Vec<String> = (0..3000).map(|i| format!("dev-{i:07}")).collect();
        ids.extend(
            [
                "a", "A", "a-1", "a.b", "a0", "z.Z_9-", "x y", "~tilde", "{brace}", "a,b:c", "0", "dev-10",
                "dev-9",
            ]
            .map(String::from),
        );
        let names: Vec<String> = ids.iter().map(|i| format!("devices/{i}.json")).collect();
        for n in [0, 1, 2, names.len()] {
            let t = leaf(&names[..n]);
            let fast = leaf_canonical_json("d-00-00", &t).unwrap().expect("fast path");
            assert_eq!(fast, canonical_json("d-00-00", &t).unwrap(), "{n} targets");
        }
        // Sub-second expiries go through the same envelope.
        let mut t = leaf(&names[..5]);
        t.expires = "2030-01-02T03:04:05.250Z".parse().unwrap();
        assert_eq!(leaf_canonical_json("d", &t).unwrap().unwrap(), canonical_json("d", &t).unwrap());
    }

    #[test]
    fn names_needing_escapes_or_normalisation_take_the_generic_path() {
        for odd in ["quo\"te", "back\\slash", "caf\u{e9}", "cafe\u{301}", "\u{1f600}", "del\u{7f}"] {
            let names = vec![format!("devices/{odd}.json"), "devices/plain.json".to_owned()];
            let t = leaf(&names);
            assert!(leaf_canonical_json("d", &t).unwrap().is_none(), "{odd:?}");
        }
        // Only device targets are written by the leaf writer.
        assert!(leaf_canonical_json("d", &leaf(&["releases/r/x".to_owned()])).unwrap().is_none());
        let mut t = leaf(&["devices/x.json".to_owned()]);
        t.targets.values_mut().for_each(|v| {
            v.custom.insert("k".into(), serde_json::json!(1));
        });
        assert!(leaf_canonical_json("d", &t).unwrap().is_none());
    }
}
