//! Fetching metadata and target files: URLs (role names percent-encoded), size limits
//! and the checks against what the referrer signed.

use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tough::schema::Target;
use url::Url;

use super::{TufClient, TufError};

/// Characters a role name keeps in a metadata URL, as python-tuf's `quote(name, "")`:
/// letters, digits and `-._~`. Everything else (`/`, `?`, `#`, `%`, ...) is escaped, so
/// a role name stays one file name under the metadata URL.
const ROLE_NAME: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// What a referrer says of a metadata file.
#[derive(Debug, Default)]
pub(super) struct Expected<'a> {
    /// Signed length, if given.
    pub length: Option<u64>,
    /// Signed SHA-256, if given.
    pub sha256: Option<&'a [u8]>,
}

impl TufClient {
    /// The file name of `role` at `version` (`<version>.<role>.json` with consistent
    /// snapshots), the role name percent-encoded.
    pub(super) fn versioned(&self, role: &str, version: u64) -> String {
        let role = percent_encoding::utf8_percent_encode(role, ROLE_NAME);
        if self.trusted.root.signed.consistent_snapshot {
            format!("{version}.{role}.json")
        } else {
            format!("{role}.json")
        }
    }

    pub(super) fn metadata_url(&self, name: &str) -> Result<Url, TufError> {
        self.metadata.join(name).map_err(|e| TufError::Parse { role: name.into(), reason: e.to_string() })
    }

    /// Fetches a metadata file, reading no more than its signed length (when given) and
    /// its cap, and checks it against the length and hash its referrer signed.
    pub(super) async fn fetch_meta(
        &self,
        name: &str,
        role: &str,
        expected: Expected<'_>,
        cap: u64,
    ) -> Result<Vec<u8>, TufError> {
        if let Some(length) = expected.length.filter(|&l| l > cap) {
            return Err(TufError::OverCap { role: role.into(), length, cap });
        }
        let url = self.metadata_url(name)?;
        let limit = expected.length.unwrap_or(cap);
        let bytes = self
            .fetch(&url, limit)
            .await?
            .ok_or_else(|| TufError::Status { url: url.to_string(), status: StatusCode::NOT_FOUND })?;
        if expected.length.is_some_and(|l| l != bytes.len() as u64) {
            return Err(TufError::Mismatch { what: role.into(), field: "length" });
        }
        if expected.sha256.is_some_and(|sha| Sha256::digest(&bytes)[..] != sha[..]) {
            return Err(TufError::Mismatch { what: role.into(), field: "sha256" });
        }
        Ok(bytes)
    }

    /// The URL of a target file under its consistent-snapshot name
    /// (`targets/<dir>/<sha256>.<file>`).
    pub fn target_url(&self, path: &str, sha256_hex: &str) -> Result<Url, TufError> {
        let (dir, file) = match path.rsplit_once('/') {
            Some((dir, file)) => (format!("{dir}/"), file),
            None => (String::new(), path),
        };
        let name = if self.trusted.root.signed.consistent_snapshot {
            format!("{dir}{sha256_hex}.{file}")
        } else {
            format!("{dir}{file}")
        };
        self.targets
            .join(&name)
            .map_err(|e| TufError::Parse { role: "target path".into(), reason: e.to_string() })
    }

    /// Fetches a (small) target file and checks it against its signed record.
    pub async fn fetch_target(&self, path: &str, target: &Target) -> Result<Vec<u8>, TufError> {
        let sha = hex::encode(&*target.hashes.sha256);
        let url = self.target_url(path, &sha)?;
        let bytes = self
            .fetch(&url, target.length)
            .await?
            .ok_or_else(|| TufError::Status { url: url.to_string(), status: StatusCode::NOT_FOUND })?;
        if bytes.len() as u64 != target.length {
            return Err(TufError::Mismatch { what: path.into(), field: "length" });
        }
        if Sha256::digest(&bytes)[..] != target.hashes.sha256[..] {
            return Err(TufError::Mismatch { what: path.into(), field: "sha256" });
        }
        Ok(bytes)
    }

    /// GETs `url`, reading at most `limit` bytes. `None` on 404 (and 403, which static
    /// file servers and object stores answer for a missing file).
    pub(super) async fn fetch(&self, url: &Url, limit: u64) -> Result<Option<Vec<u8>>, TufError> {
        let http = |source| TufError::Http { url: url.to_string(), source };
        let mut response = self.http.get(url.clone()).send().await.map_err(http)?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND || status == StatusCode::FORBIDDEN {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(TufError::Status { url: url.to_string(), status });
        }
        let too_long = || TufError::TooLong { what: url.to_string(), limit };
        if response.content_length().is_some_and(|l| l > limit) {
            return Err(too_long());
        }
        let mut body = Vec::with_capacity(response.content_length().unwrap_or(0).min(limit) as usize);
        while let Some(chunk) = response.chunk().await.map_err(http)? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_long());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_one_escaped_file_name() {
        let encode = |s| percent_encoding::utf8_percent_encode(s, ROLE_NAME).to_string();
        assert_eq!(encode("d-0a3"), "d-0a3");
        assert_eq!(encode("a?b#c"), "a%3Fb%23c");
        assert_eq!(encode("../root"), "..%2Froot");
        assert_eq!(encode("x y%"), "x%20y%25");
    }
}
