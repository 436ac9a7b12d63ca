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

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tough::schema::{Delegations, Metafile, RoleType, Root, Signed, Snapshot, Target, Targets};
use url::Url;

use crate::protocol::target::device_target_path;
use crate::protocol::DeviceInstruction;

mod delegation;
mod error;
mod fetch;

use delegation::{delegates, role_cap, MAX_ROOT_BYTES, MAX_SNAPSHOT_BYTES, MAX_TIMESTAMP_BYTES};
pub use error::TufError;
use error::{check_expiry, parse, rollback, signature};
use fetch::Expected;

/// How often the client looks for a new root when nothing else prompts it.
pub const ROOT_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// Most root versions followed in one update (§5.3.3).
const MAX_ROOT_ROTATIONS: u64 = 32;
/// Most roles visited looking for one target (§5.6.7), as python-tuf's
/// `max_delegations`.
const MAX_DELEGATIONS: usize = 32;

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
    /// Every role the snapshot lists (`targets.json`, `d-0a3.json`, ...).
    meta: BTreeMap<String, ListedRole>,
}

/// A role as the snapshot lists it: its version and, when given, its length and hash,
/// which the role file must match.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(from = "StoredListedRole")]
struct ListedRole {
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    length: Option<u64>,
    /// Hex SHA-256.
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
}

/// A [`ListedRole`] as persisted: agents before lengths were enforced stored the
/// version alone.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredListedRole {
    Version(u64),
    Listed { version: u64, length: Option<u64>, sha256: Option<String> },
}

impl From<StoredListedRole> for ListedRole {
    fn from(stored: StoredListedRole) -> Self {
        match stored {
            StoredListedRole::Version(version) => ListedRole { version, length: None, sha256: None },
            StoredListedRole::Listed { version, length, sha256 } => ListedRole { version, length, sha256 },
        }
    }
}

impl From<&Metafile> for ListedRole {
    fn from(file: &Metafile) -> Self {
        ListedRole {
            version: file.version.get(),
            length: file.length,
            sha256: file.hashes.as_ref().map(|h| hex::encode(&*h.sha256)),
        }
    }
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
        // §5.3.10 at every update, not only when the root is looked up again: a
        // long-running agent must not trust an expired root for up to an hour.
        check_expiry("root", self.trusted.root.signed.expires, now)?;
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

    /// §5.3: follows root versions until the next one is not found.
    async fn update_root(&mut self) -> Result<(), TufError> {
        for _ in 0..MAX_ROOT_ROTATIONS {
            let next = self.trusted.root.signed.version.get() + 1;
            let url = self.metadata_url(&format!("{next}.root.json"))?;
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
            let trust_changed = |role: RoleType| {
                let (old, new) = (self.trusted.root.signed.roles.get(&role), new.signed.roles.get(&role));
                old.map(|r| (&r.keyids, r.threshold)) != new.map(|r| (&r.keyids, r.threshold))
            };
            // §5.3.11: new timestamp or snapshot keys invalidate what the old ones signed,
            // so the client can recover from a fast-forward attack; a changed threshold
            // does too, so that a timestamp with too few signatures is refused at once
            // rather than trusted until it expires.
            if trust_changed(RoleType::Timestamp) || trust_changed(RoleType::Snapshot) {
                self.trusted.timestamp = None;
                self.trusted.snapshot = None;
            }
            self.trusted.roles.clear();
            tracing::info!(version = next, "trusting a new root");
            self.trusted.root = new;
            self.changed = true;
        }
        self.root_checked = Some(Instant::now());
        Ok(())
    }

    /// §5.4: the timestamp.
    async fn update_timestamp(&mut self, now: Timestamp) -> Result<(), TufError> {
        let url = self.metadata_url("timestamp.json")?;
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
        let expected = Expected { length: meta.length, sha256: meta.hashes.as_ref().map(|h| &h.sha256[..]) };
        let bytes = self.fetch_meta(&name, "snapshot", expected, MAX_SNAPSHOT_BYTES).await?;
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
        let listed: BTreeMap<String, ListedRole> =
            new.signed.meta.iter().map(|(name, file)| (name.clone(), file.into())).collect();
        if let Some(trusted) = &self.trusted.snapshot {
            for (role, old) in &trusted.meta {
                let old = old.version;
                match listed.get(role).map(|l| l.version) {
                    None => {
                        return Err(TufError::Missing {
                            role: role.clone(),
                            referrer: "the new snapshot".into(),
                        })
                    }
                    Some(v) if v < old => return Err(rollback(role.trim_end_matches(".json"), old, v)),
                    Some(_) => {}
                }
            }
        }
        check_expiry("snapshot", new.signed.expires, now)?;
        self.trusted.snapshot = Some(TrustedSnapshot {
            version: new.signed.version.get(),
            expires: new.signed.expires,
            meta: listed,
        });
        self.changed = true;
        Ok(())
    }

    /// §5.6: `targets`, then a pre-order depth-first search of the delegations that
    /// match `path`, until a role lists it or a terminating delegation ends the search.
    /// A role already visited in this search is skipped (§5.6.7.2), so a cyclic or
    /// diamond-shaped delegation graph costs each role one download, and at most
    /// [`MAX_DELEGATIONS`] roles are visited.
    async fn find_target(&mut self, path: &str) -> Result<Option<Target>, TufError> {
        let now = Timestamp::now();
        let path_hash = hex::encode(Sha256::digest(path.as_bytes()));
        // (role, the delegations of the role that delegates to it; none for `targets`)
        let mut to_visit: Vec<(String, Option<Arc<Delegations>>)> = vec![("targets".into(), None)];
        let mut visited = HashSet::new();
        while let Some((role, delegator)) = to_visit.pop() {
            if visited.contains(&role) {
                continue;
            }
            if visited.len() >= MAX_DELEGATIONS {
                tracing::warn!(
                    target = path,
                    "more than {MAX_DELEGATIONS} delegated roles visited; giving up"
                );
                break;
            }
            visited.insert(role.clone());
            let targets = self.load_role(&role, delegator.as_deref(), path, &visited, now).await?;
            if let Some((_, target)) = targets.targets.iter().find(|(name, _)| name.raw() == path) {
                return Ok(Some(target.clone()));
            }
            let Some(delegations) = targets.delegations.clone().map(Arc::new) else { continue };
            let mut children = Vec::new();
            for child in delegations.roles.iter().filter(|r| delegates(r, path, &path_hash)) {
                children.push((child.name.clone(), Some(delegations.clone())));
                if child.terminating {
                    to_visit.clear();
                    break;
                }
            }
            to_visit.extend(children.into_iter().rev());
        }
        Ok(None)
    }

    /// Makes `role` trusted at the version the snapshot lists and returns it: the cached
    /// copy when it is that version, else fetched (no longer than the snapshot's length
    /// and the role's cap), checked against the snapshot's length and hash, and verified
    /// with the keys `delegator` gives it (the root's for `targets`).
    async fn load_role(
        &mut self,
        role: &str,
        delegator: Option<&Delegations>,
        path: &str,
        visited: &HashSet<String>,
        now: Timestamp,
    ) -> Result<&Targets, TufError> {
        let snapshot = self.trusted.snapshot.as_ref().expect("the snapshot is updated first");
        let listed = snapshot
            .meta
            .get(&format!("{role}.json"))
            .cloned()
            .ok_or_else(|| TufError::Missing { role: role.into(), referrer: "snapshot".into() })?;
        let version = listed.version;
        let mut paths = vec![path.to_owned()];
        if let Some(cached) = self.trusted.roles.get(role) {
            if cached.version == version && cached.paths.iter().any(|p| p == path) {
                check_expiry(role, cached.targets.expires, now)?;
                return Ok(&self.trusted.roles[role].targets);
            }
            paths.extend(cached.paths.iter().filter(|p| *p != path).take(MAX_PATHS_PER_ROLE - 1).cloned());
        }
        let delegation = delegator.and_then(|d| d.roles.iter().find(|r| r.name == role));
        if delegator.is_some() && delegation.is_none() {
            return Err(TufError::Missing {
                role: role.into(),
                referrer: "its delegator's delegations".into(),
            });
        }
        let name = self.versioned(role, version);
        let sha256 = listed.sha256.as_deref().map(hex::decode).transpose().map_err(|e| TufError::Parse {
            role: "snapshot".into(),
            reason: format!("{role}'s sha256: {e}"),
        })?;
        let expected = Expected { length: listed.length, sha256: sha256.as_deref() };
        let bytes = self.fetch_meta(&name, role, expected, role_cap(delegation)).await?;
        let mut new: Signed<Targets> = parse(role, &bytes)?;
        match delegator {
            None => self.trusted.root.signed.verify_role(&new).map_err(|e| signature(role, e))?,
            Some(delegations) => delegations.verify_role(&new, role).map_err(|e| signature(role, e))?,
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
        // Roles this one delegates to were verified with its old keys: check them again,
        // unless this search just did (a delegation back up the graph).
        if let Some(delegations) = &new.signed.delegations {
            for child in delegations.roles.iter().filter(|c| !visited.contains(&c.name)) {
                self.trusted.roles.remove(&child.name);
            }
        }
        new.signed.targets.retain(|name, _| paths.iter().any(|p| p == name.raw()));
        self.changed = true;
        let entry = TrustedRole { version, targets: new.signed, paths };
        self.trusted.roles.insert(role.into(), entry);
        Ok(&self.trusted.roles[role].targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_persisted_before_lengths_were_kept_still_loads() {
        let old = r#"{"version":4,"expires":"2030-01-01T00:00:00Z","meta":{"targets.json":3}}"#;
        let snapshot: TrustedSnapshot = serde_json::from_str(old).unwrap();
        let targets = &snapshot.meta["targets.json"];
        assert_eq!((targets.version, targets.length, targets.sha256.as_deref()), (3, None, None));
        let new = serde_json::to_string(&TrustedSnapshot {
            meta: [("d-0.json".into(), ListedRole { version: 2, length: Some(9), sha256: None })].into(),
            ..snapshot
        })
        .unwrap();
        let again: TrustedSnapshot = serde_json::from_str(&new).unwrap();
        assert_eq!(again.meta["d-0.json"].length, Some(9));
    }
}
