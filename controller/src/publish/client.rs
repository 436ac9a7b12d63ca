//! What a `tough`-based client needs to read this repository's target files.
//!
//! With consistent snapshots the specification names a target file `HASH.FILENAME.EXT`;
//! for a target path with directories, the reference client (python-tuf) and the
//! specification's examples put the hash on the file name: `devices/<hash>.<id>.json`.
//! `tough` puts it in front of the whole path instead (`<hash>.devices/<id>.json`).
//! The repository is written the specification's way; [`SpecTargetPaths`] wraps any
//! `tough` transport and maps tough's request onto that file. It changes only which URL
//! is fetched: tough still checks the length and hash of what comes back against the
//! signed metadata.

use tough::{Transport, TransportError, TransportStream};
use url::Url;

/// A `tough` transport that fetches consistent-snapshot target files at the name the
/// specification gives them (`dir/HASH.file`) rather than `HASH.dir/file`.
#[derive(Debug, Clone)]
pub struct SpecTargetPaths<T>(pub T);

#[tough::async_trait]
impl<T: Transport + Clone + 'static> Transport for SpecTargetPaths<T> {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        self.0.fetch(spec_target_url(url)).await
    }
}

/// Moves a `<64 hex>.` prefix from a directory segment of the path onto the file name.
fn spec_target_url(mut url: Url) -> Url {
    let segments: Vec<&str> = url.path().split('/').collect();
    let Some(at) = segments.iter().position(|s| is_hash_prefixed(s)) else {
        return url;
    };
    if at + 1 >= segments.len() {
        return url; // already HASH.file: nothing to move
    }
    let (hash, dir) = segments[at].split_at(65);
    let mut moved: Vec<String> = segments.iter().map(|s| (*s).to_owned()).collect();
    moved[at] = dir.to_owned();
    let last = moved.len() - 1;
    moved[last] = format!("{hash}{}", moved[last]);
    url.set_path(&moved.join("/"));
    url
}

fn is_hash_prefixed(segment: &str) -> bool {
    segment.len() > 65
        && segment.as_bytes()[64] == b'.'
        && segment.as_bytes()[..64].iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_moves_from_the_directory_to_the_file_name() {
        let h = "ab".repeat(32);
        let url = Url::parse(&format!("http://h/tuf/targets/{h}.devices/store-1.json")).unwrap();
        assert_eq!(spec_target_url(url).as_str(), format!("http://h/tuf/targets/devices/{h}.store-1.json"));
        let url = Url::parse(&format!("http://h/targets/{h}.releases/r1/image.raucb")).unwrap();
        assert_eq!(spec_target_url(url).as_str(), format!("http://h/targets/releases/r1/{h}.image.raucb"));
    }

    #[test]
    fn metadata_and_flat_targets_are_untouched() {
        for u in ["http://h/metadata/3.d-0a3.json", &format!("http://h/targets/{}.file", "cd".repeat(32))] {
            let url = Url::parse(u).unwrap();
            assert_eq!(spec_target_url(url.clone()), url);
        }
    }
}
