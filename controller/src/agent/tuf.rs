//! A TUF client for one device: it walks only the metadata on the path to the device's
//! own target, `devices/<id>.json`, instead of every delegated role.
//!
//! It follows the client workflow of the TUF specification (§5): a trusted root shipped
//! with the device, root rotation (`<N+1>.root.json` until 404, each new root signed by
//! a threshold of the old and of the new root's keys), `timestamp`, `snapshot`,
//! `targets`, then the delegations whose `paths`/`path_hash_prefixes` match the target
//! (pre-order, depth first, honouring `terminating`), and finally the target file,
//! fetched under its consistent-snapshot name and checked for length and SHA-256.
//! Signatures and thresholds are checked with `tough`'s schema types.
//!
//! What is trusted is kept in [`Trusted`] (persisted by the agent, in memory in the
//! simulator). Roles are cached by version: when nothing changed, an update check
//! fetches `timestamp.json` alone, and an unchanged `timestamp.json` (byte for byte) is
//! not verified again. Root rotation is checked when the client starts, every
//! [`ROOT_CHECK_INTERVAL`], and at once when a role's signature no longer verifies with
//! the trusted root (an online-key rotation).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tough::schema::{DelegatedRole, Metafile, PathSet, RoleType, Root, Signed, Snapshot, Target, Targets};
use url::Url;

use crate::protocol::target::device_target_path;
use crate::protocol::DeviceInstruction;

mod error;

pub use error::TufError;
use error::{check_expiry, parse, rollback, signature};

/// How often the client looks for a new root when nothing else prompts it.
pub const ROOT_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// Most root versions followed in one update (§5.3.3).
const MAX_ROOT_ROTATIONS: u64 = 32;
/// Most delegated roles visited looking for one target (§5.6.7).
const MAX_DELEGATIONS: usize = 32;
/// Size limits for metadata whose length the repository does not state.
const MAX_ROOT_BYTES: u64 = 512 * 1024;
const MAX_TIMESTAMP_BYTES: u64 = 64 * 1024;
const MAX_METADATA_BYTES: u64 = 64 * 1024 * 1024;

/// The metadata a device trusts: what it verified last, kept between checks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trusted {
    root: Signed<Root>,
    #[serde(default)]
    timestamp: Option<TrustedTimestamp>,
    #[serde(default)]
    snapshot: Option<TrustedSnapshot>,
    /// Verified targets roles on the paths looked up, by role name.
    #[serde(default)]
    roles: BTreeMap<String, TrustedRole>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrustedTimestamp {
    version: u64,
    expires: Timestamp,
    /// Hex SHA-256 of the file as fetched: an identical file needs no second check.
    digest: String,
    snapshot: Metafile,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrustedSnapshot {
    version: u64,
    expires: Timestamp,
    /// Version of every role the snapshot lists (`targets.json`, `d-0a3.json`, ...).
    meta: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TrustedRole {
    version: u64,
    /// The role, with only the targets of `paths` kept: a leaf bin lists hundreds of
    /// devices, a device needs one of them.
    targets: Targets,
    /// The target paths looked up through this role; a lookup of another path fetches
    /// the role again.
    paths: Vec<String>,
}

/// Most target paths whose entries a cached role keeps.
const MAX_PATHS_PER_ROLE: usize = 64;

impl Trusted {
    /// Trust anchored in a root file shipped with the device. The root must carry a
    /// threshold of its own root keys' signatures.
    pub fn from_root(bytes: &[u8]) -> Result<Trusted, TufError> {
        let root: Signed<Root> = parse("root", bytes)?;
        root.signed.verify_role(&root).map_err(|e| signature("root", e))?;
        Ok(Trusted { root, timestamp: None, snapshot: None, roles: BTreeMap::new() })
    }

    /// The trusted root's version.
    pub fn root_version(&self) -> u64 {
        self.root.signed.version.get()
    }

    /// The trusted timestamp's version, if any.
    pub fn timestamp_version(&self) -> Option<u64> {
        self.timestamp.as_ref().map(|t| t.version)
    }

    /// The trusted snapshot's version, if any.
    pub fn snapshot_version(&self) -> Option<u64> {
        self.snapshot.as_ref().map(|s| s.version)
    }
}

/// A device instruction with the signed record of its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedInstruction {
    /// The instruction.
    pub instruction: DeviceInstruction,
    /// Hex SHA-256 of the instruction file.
    pub sha256: String,
}

/// Fetches and verifies one device's metadata from a repository over HTTP.
#[derive(Debug)]
pub struct TufClient {
    http: reqwest::Client,
    metadata: Url,
    targets: Url,
    trusted: Trusted,
    /// Set when `trusted` changed since [`TufClient::take_changed`].
    changed: bool,
    root_checked: Option<Instant>,
    /// The last instruction read, by the hash of its file.
    instruction: Option<VerifiedInstruction>,
}

impl TufClient {
    /// A client for the repository at `base` (the directory holding `metadata/` and
    /// `targets/`, e.g. `http://controller:8080/tuf/`), starting from `trusted`.
    pub fn new(http: reqwest::Client, base: &Url, trusted: Trusted) -> Result<TufClient, url::ParseError> {
        let base = if base.path().ends_with('/') { base.clone() } else { Url::parse(&format!("{base}/"))? };
        Ok(TufClient {
            http,
            metadata: base.join("metadata/")?,
            targets: base.join("targets/")?,
            trusted,
            changed: false,
            root_checked: None,
            instruction: None,
        })
    }

    /// What the client trusts now.
    pub fn trusted(&self) -> &Trusted {
        &self.trusted
    }

    /// True once when the trusted metadata changed since the last call (to persist it).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Finds the signed record of `path`: the root when due, then the timestamp, the
    /// snapshot, and the delegations on the path. When a signature fails and the root was
    /// not just checked, looks for a new root (an online-key rotation) and tries once more.
    async fn find(&mut self, path: &str) -> Result<Option<Target>, TufError> {
        let due = self.root_checked.is_none_or(|t| t.elapsed() >= ROOT_CHECK_INTERVAL);
        if due {
            self.update_root().await?;
        }
        match self.walk(path).await {
            Err(e) if e.is_signature() && !due => {
                tracing::info!(error = %e, "metadata no longer verifies with the trusted root; checking for a new root");
                self.update_root().await?;
                self.walk(path).await
            }
            other => other,
        }
    }

    async fn walk(&mut self, path: &str) -> Result<Option<Target>, TufError> {
        let now = Timestamp::now();
        self.update_timestamp(now).await?;
        self.update_snapshot(now).await?;
        self.find_target(path).await
    }

    /// The device's instruction: updates the metadata, finds `devices/<id>.json` through
    /// the delegations and fetches it. `None` when no role lists it.
    pub async fn instruction(&mut self, device_id: &str) -> Result<Option<VerifiedInstruction>, TufError> {
        let path = device_target_path(device_id);
        let found = self.find(&path).await?;
        let Some(target) = found else {
            self.instruction = None;
            return Ok(None);
        };
        let sha256 = hex::encode(&*target.hashes.sha256);
        if let Some(cached) = &self.instruction {
            if cached.sha256 == sha256 {
                return Ok(Some(cached.clone()));
            }
        }
        let bytes = self.fetch_target(&path, &target).await?;
        let instruction: DeviceInstruction = serde_json::from_slice(&bytes)
            .map_err(|e| TufError::Instruction { target: path.clone(), reason: e.to_string() })?;
        let verified = VerifiedInstruction { instruction, sha256 };
        self.instruction = Some(verified.clone());
        Ok(Some(verified))
    }

    /// Finds the signed record of any target (e.g. a release artifact), updating the
    /// metadata first.
    pub async fn target(&mut self, path: &str) -> Result<Option<Target>, TufError> {
        self.find(path).await
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

    /// §5.3: follows root versions until the next one is not found.
    async fn update_root(&mut self) -> Result<(), TufError> {
        for _ in 0..MAX_ROOT_ROTATIONS {
            let next = self.trusted.root.signed.version.get() + 1;
            let url = self.metadata_url(&format!("{next}.root.json"));
            let Some(bytes) = self.fetch(&url, MAX_ROOT_BYTES).await? else { break };
            let new: Signed<Root> = parse("root", &bytes)?;
            self.trusted
                .root
                .signed
                .verify_role(&new)
                .map_err(|e| signature("root (by the trusted root)", e))?;
            new.signed.verify_role(&new).map_err(|e| signature("root", e))?;
            if new.signed.version.get() != next {
                return Err(TufError::Version {
                    role: "root".into(),
                    referrer: format!("{next}.root.json"),
                    expected: next,
                    found: new.signed.version.get(),
                });
            }
            let keys_changed = |role: RoleType| {
                self.trusted.root.signed.roles.get(&role).map(|r| &r.keyids)
                    != new.signed.roles.get(&role).map(|r| &r.keyids)
            };
            // §5.3.11: a rotated timestamp or snapshot key invalidates what they signed,
            // so the client can recover from a fast-forward attack.
            if keys_changed(RoleType::Timestamp) || keys_changed(RoleType::Snapshot) {
                self.trusted.timestamp = None;
                self.trusted.snapshot = None;
            }
            self.trusted.roles.clear();
            tracing::info!(version = next, "trusting a new root");
            self.trusted.root = new;
            self.changed = true;
        }
        let expires = self.trusted.root.signed.expires;
        if expires <= Timestamp::now() {
            return Err(TufError::Expired { role: "root".into(), expires });
        }
        self.root_checked = Some(Instant::now());
        Ok(())
    }

    /// §5.4: the timestamp.
    async fn update_timestamp(&mut self, now: Timestamp) -> Result<(), TufError> {
        let url = self.metadata_url("timestamp.json");
        let bytes = self
            .fetch(&url, MAX_TIMESTAMP_BYTES)
            .await?
            .ok_or_else(|| TufError::Status { url: url.to_string(), status: StatusCode::NOT_FOUND })?;
        let digest = hex::encode(Sha256::digest(&bytes));
        if let Some(trusted) = &self.trusted.timestamp {
            if trusted.digest == digest {
                return check_expiry("timestamp", trusted.expires, now);
            }
        }
        let new: Signed<tough::schema::Timestamp> = parse("timestamp", &bytes)?;
        self.trusted.root.signed.verify_role(&new).map_err(|e| signature("timestamp", e))?;
        let version = new.signed.version.get();
        let snapshot = new.signed.meta.get("snapshot.json").cloned().ok_or_else(|| TufError::Missing {
            role: "snapshot.json".into(),
            referrer: "timestamp".into(),
        })?;
        if let Some(trusted) = &self.trusted.timestamp {
            if version < trusted.version {
                return Err(rollback("timestamp", trusted.version, version));
            }
            if version == trusted.version {
                // Same version, other bytes: keep what is trusted.
                return check_expiry("timestamp", trusted.expires, now);
            }
            if snapshot.version < trusted.snapshot.version {
                return Err(rollback("snapshot", trusted.snapshot.version.get(), snapshot.version.get()));
            }
        }
        check_expiry("timestamp", new.signed.expires, now)?;
        self.trusted.timestamp =
            Some(TrustedTimestamp { version, expires: new.signed.expires, digest, snapshot });
        self.changed = true;
        Ok(())
    }

    /// §5.5: the snapshot the timestamp names.
    async fn update_snapshot(&mut self, now: Timestamp) -> Result<(), TufError> {
        let meta = self.trusted.timestamp.as_ref().expect("the timestamp is updated first").snapshot.clone();
        if let Some(trusted) = &self.trusted.snapshot {
            if trusted.version == meta.version.get() {
                return check_expiry("snapshot", trusted.expires, now);
            }
        }
        let name = self.versioned("snapshot", meta.version.get());
        let bytes = self.fetch_meta(&name, &meta, "snapshot").await?;
        let new: Signed<Snapshot> = parse("snapshot", &bytes)?;
        self.trusted.root.signed.verify_role(&new).map_err(|e| signature("snapshot", e))?;
        if new.signed.version != meta.version {
            return Err(TufError::Version {
                role: "snapshot".into(),
                referrer: "timestamp".into(),
                expected: meta.version.get(),
                found: new.signed.version.get(),
            });
        }
        let versions: BTreeMap<String, u64> =
            new.signed.meta.iter().map(|(name, file)| (name.clone(), file.version.get())).collect();
        if let Some(trusted) = &self.trusted.snapshot {
            for (role, &old) in &trusted.meta {
                match versions.get(role) {
                    None => {
                        return Err(TufError::Missing {
                            role: role.clone(),
                            referrer: "the new snapshot".into(),
                        })
                    }
                    Some(&v) if v < old => return Err(rollback(role.trim_end_matches(".json"), old, v)),
                    Some(_) => {}
                }
            }
        }
        check_expiry("snapshot", new.signed.expires, now)?;
        self.trusted.snapshot = Some(TrustedSnapshot {
            version: new.signed.version.get(),
            expires: new.signed.expires,
            meta: versions,
        });
        self.changed = true;
        Ok(())
    }

    /// §5.6: `targets`, then a pre-order depth-first search of the delegations that
    /// match `path`, until a role lists it or a terminating delegation ends the search.
    async fn find_target(&mut self, path: &str) -> Result<Option<Target>, TufError> {
        let now = Timestamp::now();
        let path_hash = hex::encode(Sha256::digest(path.as_bytes()));
        self.load_role("targets", None, path, now).await?;
        // (role, the role that delegates to it)
        let mut to_visit: Vec<(String, Option<String>)> = vec![("targets".into(), None)];
        let mut visited = 0;
        while let Some((role, parent)) = to_visit.pop() {
            if visited >= MAX_DELEGATIONS {
                tracing::warn!(target = path, "more than {MAX_DELEGATIONS} delegations visited; giving up");
                break;
            }
            visited += 1;
            if role != "targets" {
                self.load_role(&role, parent.as_deref(), path, now).await?;
            }
            let targets = &self.trusted.roles[&role].targets;
            if let Some((_, target)) = targets.targets.iter().find(|(name, _)| name.raw() == path) {
                return Ok(Some(target.clone()));
            }
            let mut children = Vec::new();
            if let Some(delegations) = &targets.delegations {
                for child in delegations.roles.iter().filter(|r| delegates(r, path, &path_hash)) {
                    children.push((child.name.clone(), Some(role.clone())));
                    if child.terminating {
                        to_visit.clear();
                        break;
                    }
                }
            }
            to_visit.extend(children.into_iter().rev());
        }
        Ok(None)
    }

    /// Makes `role` trusted at the version the snapshot lists: the cached copy when it is
    /// that version, else fetched and verified with the keys `parent` delegates to it
    /// (the root's for `targets`).
    async fn load_role(
        &mut self,
        role: &str,
        parent: Option<&str>,
        path: &str,
        now: Timestamp,
    ) -> Result<(), TufError> {
        let snapshot = self.trusted.snapshot.as_ref().expect("the snapshot is updated first");
        let file = format!("{role}.json");
        let version = *snapshot
            .meta
            .get(&file)
            .ok_or_else(|| TufError::Missing { role: role.into(), referrer: "snapshot".into() })?;
        let mut paths = vec![path.to_owned()];
        if let Some(cached) = self.trusted.roles.get(role) {
            if cached.version == version && cached.paths.iter().any(|p| p == path) {
                return check_expiry(role, cached.targets.expires, now);
            }
            paths.extend(cached.paths.iter().filter(|p| *p != path).take(MAX_PATHS_PER_ROLE - 1).cloned());
        }
        let name = self.versioned(role, version);
        let meta = Metafile {
            length: None,
            hashes: None,
            version: std::num::NonZeroU64::new(version).expect("versions are positive"),
            _extra: Default::default(),
        };
        let bytes = self.fetch_meta(&name, &meta, role).await?;
        let mut new: Signed<Targets> = parse(role, &bytes)?;
        match parent {
            None => self.trusted.root.signed.verify_role(&new).map_err(|e| signature(role, e))?,
            Some(parent) => {
                let delegations =
                    self.trusted.roles[parent].targets.delegations.as_ref().ok_or_else(|| {
                        TufError::Missing { role: role.into(), referrer: format!("{parent}'s delegations") }
                    })?;
                delegations.verify_role(&new, role).map_err(|e| signature(role, e))?;
            }
        }
        if new.signed.version.get() != version {
            return Err(TufError::Version {
                role: role.into(),
                referrer: "snapshot".into(),
                expected: version,
                found: new.signed.version.get(),
            });
        }
        check_expiry(role, new.signed.expires, now)?;
        // Roles this one delegates to were verified with its old keys: check them again.
        if let Some(delegations) = &new.signed.delegations {
            for child in &delegations.roles {
                self.trusted.roles.remove(&child.name);
            }
        }
        new.signed.targets.retain(|name, _| paths.iter().any(|p| p == name.raw()));
        self.trusted.roles.insert(role.into(), TrustedRole { version, targets: new.signed, paths });
        self.changed = true;
        Ok(())
    }

    fn versioned(&self, role: &str, version: u64) -> String {
        if self.trusted.root.signed.consistent_snapshot {
            format!("{version}.{role}.json")
        } else {
            format!("{role}.json")
        }
    }

    fn metadata_url(&self, name: &str) -> Url {
        self.metadata.join(name).expect("role file names are valid URL paths")
    }

    /// Fetches a metadata file and checks it against the length and hash its referrer
    /// states, if it states them.
    async fn fetch_meta(&self, name: &str, meta: &Metafile, role: &str) -> Result<Vec<u8>, TufError> {
        let url = self.metadata_url(name);
        let limit = meta.length.unwrap_or(MAX_METADATA_BYTES);
        let bytes = self
            .fetch(&url, limit)
            .await?
            .ok_or_else(|| TufError::Status { url: url.to_string(), status: StatusCode::NOT_FOUND })?;
        if meta.length.is_some_and(|l| l != bytes.len() as u64) {
            return Err(TufError::Mismatch { what: role.into(), field: "length" });
        }
        if let Some(hashes) = &meta.hashes {
            if Sha256::digest(&bytes)[..] != hashes.sha256[..] {
                return Err(TufError::Mismatch { what: role.into(), field: "sha256" });
            }
        }
        Ok(bytes)
    }

    /// GETs `url`, reading at most `limit` bytes. `None` on 404 (and 403, which static
    /// file servers and object stores answer for a missing file).
    async fn fetch(&self, url: &Url, limit: u64) -> Result<Option<Vec<u8>>, TufError> {
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

/// Whether a delegation covers `path` (whose hex SHA-256 is `path_hash`).
fn delegates(role: &DelegatedRole, path: &str, path_hash: &str) -> bool {
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
}
