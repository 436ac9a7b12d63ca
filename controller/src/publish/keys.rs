//! The key directory: offline root, targets and release keys, the online key, and every
//! root and `targets` version they signed.
//!
//! ```text
//! KEYS/root-keys/root-<n>.pk8         offline root keys (ed25519, PKCS#8 DER, mode 0600)
//! KEYS/targets-keys/targets-<n>.pk8   offline keys that sign the top-level `targets`
//! KEYS/release-keys/release-<n>.pk8   offline keys of the release engineers: `releases`
//! KEYS/online.pk8                     the online key: devices, bins, snapshot, timestamp
//! KEYS/online.next.pk8                present only while an online-key rotation is under way
//! KEYS/roots/<version>.root.json      every root version, signed by the root keys
//! KEYS/targets/<version>.targets.json every `targets` version, signed by the targets keys
//! KEYS/releases/1.releases.json       the first, empty `releases`, signed by the release keys
//! ```
//!
//! The controller needs only `online.pk8` and the signed files: nothing it can sign
//! changes which keys sign `releases` (see `docs/tuf.md`, threat model).
//!
//! Keys are read through tough's [`LocalKeySource`], so another of tough's key sources
//! (a KMS, an HSM) can replace the files without touching the rest of the publisher.

use std::collections::HashMap;
use std::fs;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use jiff::{SignedDuration, Timestamp};
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    DelegatedRole, Delegations, PathPattern, PathSet, RoleKeys, RoleType, Root, Signed, Targets,
};

use super::signing::{sign_metadata, write_atomic, Signer};
use super::{expiry_after, PublishError, SPEC_VERSION};

const ROOT_KEYS: &str = "root-keys";
const ONLINE_KEY: &str = "online.pk8";
const NEXT_ONLINE_KEY: &str = "online.next.pk8";
const ROOTS: &str = "roots";
const TARGETS_KEYS: &str = "targets-keys";
const RELEASE_KEYS: &str = "release-keys";
const SIGNED_TARGETS: &str = "targets";
const SIGNED_RELEASES: &str = "releases";
/// The online role between `targets` and the bins.
pub(crate) const DEVICES_ROLE: &str = "devices";
/// Glob of the `devices` role (one `*` per path segment, as the Python client matches).
const DEVICES_PATHS: &str = "devices/*";
/// The role that lists every artifact, signed by the release keys.
pub(crate) const RELEASES_ROLE: &str = "releases";
/// Glob of the `releases` role.
const RELEASES_PATHS: &str = "releases/*/*";

/// How many keys of one offline role `keys init` creates, and how many must sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCount {
    /// Keys created.
    pub keys: usize,
    /// Signatures required.
    pub threshold: usize,
}

impl KeyCount {
    /// One key, one signature.
    pub const ONE: KeyCount = KeyCount { keys: 1, threshold: 1 };

    fn check(&self, role: &str, zero_allowed: bool) -> Result<(), PublishError> {
        if zero_allowed && self.keys == 0 {
            return Ok(());
        }
        if self.keys == 0 || self.threshold == 0 || self.threshold > self.keys {
            return Err(PublishError::Config(format!(
                "{role} threshold must be between 1 and the number of {role} keys ({}), got {}",
                self.keys, self.threshold
            )));
        }
        Ok(())
    }
}

/// What `keys init` creates.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// Offline root keys.
    pub root: KeyCount,
    /// Offline keys that sign the top-level `targets`.
    pub targets: KeyCount,
    /// Offline release keys that sign `releases`. With none, the online key signs
    /// `releases` and can list any artifact (trials only).
    pub releases: KeyCount,
    /// How long root version 1 stays valid.
    pub root_expiry: SignedDuration,
    /// How long `targets` (and the first, empty `releases`) stay valid.
    pub targets_expiry: SignedDuration,
}

impl KeySpec {
    /// The defaults without release keys: the online key signs `releases` and can list
    /// any artifact. For trials and tests of the online key alone.
    pub fn without_release_keys() -> Self {
        KeySpec { releases: KeyCount { keys: 0, threshold: 0 }, ..KeySpec::default() }
    }
}

impl Default for KeySpec {
    fn default() -> Self {
        let year = SignedDuration::from_hours(24 * 365);
        KeySpec {
            root: KeyCount::ONE,
            targets: KeyCount::ONE,
            releases: KeyCount::ONE,
            root_expiry: year,
            targets_expiry: year,
        }
    }
}

/// What `waveguide keys init` created.
#[derive(Debug, Clone)]
pub struct KeysCreated {
    /// Key ids of the offline root keys.
    pub root_keyids: Vec<String>,
    /// Signatures needed on a root.
    pub root_threshold: usize,
    /// Key ids of the offline targets keys.
    pub targets_keyids: Vec<String>,
    /// Key ids of the offline release keys (none: the online key signs `releases`).
    pub release_keyids: Vec<String>,
    /// Key id of the online key.
    pub online_keyid: String,
}

/// A key directory (see the module documentation for its layout).
#[derive(Debug, Clone)]
pub struct KeyDir {
    dir: PathBuf,
}

impl KeyDir {
    /// Generates the offline root, targets and release keys and the online key as `spec`
    /// says, and signs root version 1, `targets` version 1 and an empty `releases`
    /// version 1. Refuses a directory that already holds keys.
    pub fn init(dir: &Path, spec: &KeySpec) -> Result<(KeyDir, KeysCreated), PublishError> {
        spec.root.check("root", false)?;
        spec.targets.check("targets", false)?;
        spec.releases.check("release", true)?;
        let keys = KeyDir { dir: dir.to_owned() };
        if keys.online_path().exists() || dir.join(ROOT_KEYS).exists() {
            return Err(PublishError::KeyDir { dir: dir.to_owned(), reason: "already holds keys".into() });
        }
        for sub in [ROOT_KEYS, ROOTS, SIGNED_TARGETS] {
            fs::create_dir_all(dir.join(sub)).map_err(PublishError::io("create", dir.join(sub)))?;
        }
        let root_signers = keys.generate_keys(ROOT_KEYS, "root", spec.root.keys)?;
        let targets_signers = keys.generate_keys(TARGETS_KEYS, "targets", spec.targets.keys)?;
        let release_signers = keys.generate_keys(RELEASE_KEYS, "release", spec.releases.keys)?;
        generate_key(&keys.online_path())?;
        let online = load_key(&keys.online_path())?;
        let root = build_root(
            1,
            expiry_after(spec.root_expiry),
            (&root_signers, spec.root.threshold),
            (&targets_signers, spec.targets.threshold),
            &online,
        );
        keys.write_root(&root, &root_signers)?;
        let release_keys: Vec<&Signer> =
            if release_signers.is_empty() { vec![&online] } else { release_signers.iter().collect() };
        let targets = build_targets(
            1,
            expiry_after(spec.targets_expiry),
            (&release_keys, spec.releases.threshold.max(1)),
            &online,
        )?;
        keys.write_targets(&targets, &targets_signers)?;
        if !release_signers.is_empty() {
            fs::create_dir_all(dir.join(SIGNED_RELEASES))
                .map_err(PublishError::io("create", dir.join(SIGNED_RELEASES)))?;
            let releases =
                Targets::new(SPEC_VERSION.to_owned(), NonZeroU64::MIN, expiry_after(spec.targets_expiry));
            keys.write_signed(SIGNED_RELEASES, RELEASES_ROLE, releases.version, &releases, &release_signers)?;
        }
        let ids = |signers: &[Signer]| signers.iter().map(|s| hex::encode(s.keyid())).collect();
        let created = KeysCreated {
            root_keyids: ids(&root_signers),
            root_threshold: spec.root.threshold,
            targets_keyids: ids(&targets_signers),
            release_keyids: ids(&release_signers),
            online_keyid: hex::encode(online.keyid()),
        };
        Ok((keys, created))
    }

    /// Generates `count` keys `<sub>/<prefix>-<n>.pk8` and loads them.
    fn generate_keys(&self, sub: &str, prefix: &str, count: usize) -> Result<Vec<Signer>, PublishError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let dir = self.dir.join(sub);
        fs::create_dir_all(&dir).map_err(PublishError::io("create", &dir))?;
        (1..=count)
            .map(|n| {
                let path = dir.join(format!("{prefix}-{n}.pk8"));
                generate_key(&path)?;
                load_key(&path)
            })
            .collect()
    }

    /// Opens an existing key directory.
    pub fn open(dir: &Path) -> Result<KeyDir, PublishError> {
        let keys = KeyDir { dir: dir.to_owned() };
        if !dir.join(ROOTS).is_dir() {
            return Err(PublishError::KeyDir {
                dir: dir.to_owned(),
                reason: "no roots/ directory: create keys with `waveguide keys init`".into(),
            });
        }
        Ok(keys)
    }

    /// Opens a directory holding release keys (`release-keys/`), as a release engineer
    /// keeps them: nothing else needs to be there.
    pub fn open_release_keys(dir: &Path) -> Result<KeyDir, PublishError> {
        if !dir.join(RELEASE_KEYS).is_dir() {
            return Err(PublishError::KeyDir {
                dir: dir.to_owned(),
                reason: format!(
                    "no {RELEASE_KEYS}/ directory: create release keys with `waveguide keys init`"
                ),
            });
        }
        Ok(KeyDir { dir: dir.to_owned() })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn online_path(&self) -> PathBuf {
        self.dir.join(ONLINE_KEY)
    }

    fn next_online_path(&self) -> PathBuf {
        self.dir.join(NEXT_ONLINE_KEY)
    }

    /// Loads the online key. While a rotation is under way, `trusted_keyid` (the key the
    /// published root trusts for timestamps) decides between the current and next key.
    pub(crate) fn online_signer(&self, trusted_keyid: Option<&[u8]>) -> Result<Signer, PublishError> {
        let current = load_key(&self.online_path())?;
        match trusted_keyid {
            Some(id) if current.keyid().as_ref() != id => {
                if self.next_online_path().exists() {
                    let next = load_key(&self.next_online_path())?;
                    if next.keyid().as_ref() == id {
                        return Ok(next);
                    }
                }
                Err(PublishError::KeyDir {
                    dir: self.dir.clone(),
                    reason: format!(
                        "the online key {} is not the key the published root trusts ({}); \
                         use the key directory this repository was created with, or finish a rotation \
                         with `waveguide keys rotate-online`",
                        hex::encode(current.keyid()),
                        hex::encode(id)
                    ),
                })
            }
            _ => Ok(current),
        }
    }

    /// Loads every offline root key. Needed only to sign a new root.
    pub(crate) fn root_signers(&self) -> Result<Vec<Signer>, PublishError> {
        self.offline_signers(ROOT_KEYS, "root")
    }

    /// Loads every offline targets key. Needed only to sign a new `targets`.
    pub(crate) fn targets_signers(&self) -> Result<Vec<Signer>, PublishError> {
        self.offline_signers(TARGETS_KEYS, "targets")
    }

    /// Loads every release key. Needed only to sign `releases`.
    pub(crate) fn release_signers(&self) -> Result<Vec<Signer>, PublishError> {
        self.offline_signers(RELEASE_KEYS, "release")
    }

    fn offline_signers(&self, sub: &str, what: &str) -> Result<Vec<Signer>, PublishError> {
        let dir = self.dir.join(sub);
        let mut paths: Vec<PathBuf> = match fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pk8"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(PublishError::Io { action: "list", path: dir, source: e }),
        };
        paths.sort();
        if paths.is_empty() {
            return Err(PublishError::KeyDir {
                dir: self.dir.clone(),
                reason: format!(
                    "no {what} keys in {sub}/ (bring the offline {what} keys back for this operation)"
                ),
            });
        }
        paths.iter().map(|p| load_key(p)).collect()
    }

    /// Every root version, in order: `(version, file bytes)`.
    pub(crate) fn roots(&self) -> Result<Vec<(u64, Vec<u8>)>, PublishError> {
        self.signed_versions(ROOTS, "root")
    }

    /// The newest signed `targets`: `(version, file bytes)`.
    pub(crate) fn latest_targets(&self) -> Result<(u64, Vec<u8>), PublishError> {
        Ok(self.signed_versions(SIGNED_TARGETS, "targets")?.pop().expect("never empty"))
    }

    /// The first, empty `releases` signed by the release keys, if there are release keys.
    pub(crate) fn initial_releases(&self) -> Result<Option<Vec<u8>>, PublishError> {
        let path = self.dir.join(SIGNED_RELEASES).join("1.releases.json");
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PublishError::Io { action: "read", path, source: e }),
        }
    }

    /// Every `<version>.<role>.json` in `sub`, in version order; never empty.
    fn signed_versions(&self, sub: &str, role: &str) -> Result<Vec<(u64, Vec<u8>)>, PublishError> {
        let dir = self.dir.join(sub);
        let mut found = Vec::new();
        let suffix = format!(".{role}.json");
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PublishError::KeyDir {
                    dir: self.dir.clone(),
                    reason: format!("no {sub}/ directory: create keys with `waveguide keys init`"),
                })
            }
            Err(e) => return Err(PublishError::Io { action: "list", path: dir, source: e }),
        };
        for entry in entries {
            let path = entry.map_err(PublishError::io("list", &dir))?.path();
            let Some(version) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(suffix.as_str()))
                .and_then(|v| v.parse::<u64>().ok())
            else {
                continue;
            };
            found.push((version, fs::read(&path).map_err(PublishError::io("read", &path))?));
        }
        found.sort_by_key(|(v, _)| *v);
        if found.is_empty() {
            return Err(PublishError::KeyDir {
                dir: self.dir.clone(),
                reason: format!("no signed {role} in {sub}/"),
            });
        }
        Ok(found)
    }

    /// The newest root version.
    pub(crate) fn latest_root(&self) -> Result<(u64, Signed<Root>), PublishError> {
        let (version, bytes) = self.roots()?.pop().expect("roots() is never empty");
        let path = self.dir.join(ROOTS).join(format!("{version}.root.json"));
        let root = serde_json::from_slice(&bytes).map_err(|source| PublishError::ParseMetadata {
            role: "root".into(),
            path,
            source,
        })?;
        Ok((version, root))
    }

    /// Signs `targets` version `v+1` with the offline targets keys, expiring after
    /// `expiry`: the same delegations, with the online key replaced by `online` (if given)
    /// where the current version names it. Returns the new version; a repository opened
    /// with this key directory publishes it on its next refresh.
    pub fn resign_targets(
        &self,
        expiry: SignedDuration,
        online: Option<&Signer>,
    ) -> Result<u64, PublishError> {
        let (version, bytes) = self.latest_targets()?;
        let path = self.dir.join(SIGNED_TARGETS).join(format!("{version}.targets.json"));
        let current: Signed<Targets> = serde_json::from_slice(&bytes).map_err(|source| {
            PublishError::ParseMetadata { role: "targets".into(), path: path.clone(), source }
        })?;
        let mut targets = current.signed;
        if let (Some(online), Some(delegations)) = (online, targets.delegations.as_mut()) {
            let old = delegations
                .roles
                .iter()
                .find(|r| r.name == DEVICES_ROLE)
                .map(|r| r.keyids.clone())
                .ok_or_else(|| PublishError::Inconsistent {
                    role: "targets".into(),
                    path: path.clone(),
                    reason: format!("no {DEVICES_ROLE} delegation"),
                })?;
            for role in &mut delegations.roles {
                if role.keyids == old {
                    role.keyids = vec![online.keyid().clone()];
                }
            }
            delegations.keys.insert(online.keyid().clone(), online.key().clone());
            let used: Vec<_> = delegations.roles.iter().flat_map(|r| r.keyids.clone()).collect();
            delegations.keys.retain(|id, _| used.contains(id));
        }
        targets.version = NonZeroU64::new(version + 1).expect("non-zero");
        targets.expires = expiry_after(expiry);
        let signers = self.targets_signers()?;
        self.write_targets(&targets, &signers)?;
        Ok(version + 1)
    }

    fn write_targets(&self, targets: &Targets, signers: &[Signer]) -> Result<(), PublishError> {
        self.write_signed(SIGNED_TARGETS, "targets", targets.version, targets, signers)
    }

    fn write_root(&self, root: &Root, signers: &[Signer]) -> Result<(), PublishError> {
        self.write_signed(ROOTS, "root", root.version, root, signers)
    }

    /// Signs `value` as `role` and writes it to `<sub>/<version>.<role>.json`.
    fn write_signed<T: serde::Serialize>(
        &self,
        sub: &str,
        role: &str,
        version: NonZeroU64,
        value: &T,
        signers: &[Signer],
    ) -> Result<(), PublishError> {
        let refs: Vec<&Signer> = signers.iter().collect();
        let bytes = sign_metadata(role, value, &refs)?;
        write_atomic(&self.dir.join(sub).join(format!("{version}.{role}.json")), &bytes, true)
    }

    /// First half of an online-key rotation: generates the next online key and signs root
    /// `v+1` and `targets` `v+1` that trust it (with the offline root and targets keys).
    /// Resumes a rotation that stopped half way instead of starting another. Returns the
    /// next online key.
    pub(crate) fn prepare_rotation(&self, root_expiry: SignedDuration) -> Result<Signer, PublishError> {
        if !self.next_online_path().exists() {
            generate_key(&self.next_online_path())?;
        }
        let next = load_key(&self.next_online_path())?;
        let (version, current) = self.latest_root()?;
        let timestamp_keys = &current.signed.roles[&RoleType::Timestamp].keyids;
        if !timestamp_keys.iter().any(|k| k == next.keyid()) {
            let root_signers = self.root_signers()?;
            let mut root = current.signed;
            // The same root and targets keys; the new online key for the online roles.
            for r in [RoleType::Snapshot, RoleType::Timestamp] {
                if let Some(keys) = root.roles.get_mut(&r) {
                    keys.keyids = vec![next.keyid().clone()];
                }
            }
            root.keys.insert(next.keyid().clone(), next.key().clone());
            let used: Vec<_> = root.roles.values().flat_map(|r| r.keyids.clone()).collect();
            root.keys.retain(|id, _| used.contains(id));
            root.version = NonZeroU64::new(version + 1).expect("non-zero");
            root.expires = expiry_after(root_expiry);
            self.write_root(&root, &root_signers)?;
        }
        if self.devices_keyids()? != [next.keyid().clone()] {
            self.resign_targets(root_expiry, Some(&next))?;
        }
        Ok(next)
    }

    /// The keys the newest `targets` delegates the `devices` role to.
    fn devices_keyids(&self) -> Result<Vec<Decoded<Hex>>, PublishError> {
        let (version, bytes) = self.latest_targets()?;
        let path = self.dir.join(SIGNED_TARGETS).join(format!("{version}.targets.json"));
        let targets: Signed<Targets> = serde_json::from_slice(&bytes)
            .map_err(|source| PublishError::ParseMetadata { role: "targets".into(), path, source })?;
        Ok(targets
            .signed
            .delegations
            .and_then(|d| d.roles.into_iter().find(|r| r.name == DEVICES_ROLE))
            .map(|r| r.keyids)
            .unwrap_or_default())
    }

    /// Second half of a rotation, once the repository trusts the new key: it becomes the
    /// online key.
    pub(crate) fn finish_rotation(&self) -> Result<(), PublishError> {
        fs::rename(self.next_online_path(), self.online_path())
            .map_err(PublishError::io("rename into place", self.online_path()))
    }
}

/// Root metadata trusting `root` keys for root, `targets` keys for `targets`, and
/// `online` for snapshot and timestamp.
fn build_root(
    version: u64,
    expires: Timestamp,
    (root_signers, root_threshold): (&[Signer], usize),
    (targets_signers, targets_threshold): (&[Signer], usize),
    online: &Signer,
) -> Root {
    let mut keys = HashMap::new();
    for s in root_signers.iter().chain(targets_signers).chain([online]) {
        keys.insert(s.keyid().clone(), s.key().clone());
    }
    let role = |signers: &[&Signer], threshold: usize| RoleKeys {
        keyids: signers.iter().map(|s| s.keyid().clone()).collect(),
        threshold: NonZeroU64::new(threshold as u64).expect("threshold checked non-zero"),
        _extra: HashMap::new(),
    };
    let mut roles = HashMap::new();
    roles.insert(RoleType::Root, role(&root_signers.iter().collect::<Vec<_>>(), root_threshold));
    roles.insert(RoleType::Targets, role(&targets_signers.iter().collect::<Vec<_>>(), targets_threshold));
    for r in [RoleType::Snapshot, RoleType::Timestamp] {
        roles.insert(r, role(&[online], 1));
    }
    Root {
        spec_version: SPEC_VERSION.to_owned(),
        consistent_snapshot: true,
        version: NonZeroU64::new(version).expect("root versions start at 1"),
        expires,
        keys,
        roles,
        _extra: HashMap::new(),
    }
}

/// The top-level `targets`: no targets of its own; `releases` delegated to the release
/// keys (with their threshold), device paths to the online `devices` role.
fn build_targets(
    version: u64,
    expires: Timestamp,
    (release_keys, release_threshold): (&[&Signer], usize),
    online: &Signer,
) -> Result<Targets, PublishError> {
    let pattern = |p: &str| {
        PathPattern::new(p).map_err(|source| PublishError::ToughSchema {
            what: format!("invalid path pattern {p}"),
            source: Box::new(source),
        })
    };
    let mut keys = HashMap::new();
    for s in release_keys.iter().chain([&online]) {
        keys.insert(s.keyid().clone(), s.key().clone());
    }
    let delegated = |name: &str, paths: &str, signers: &[&Signer], threshold: usize| {
        Ok::<_, PublishError>(DelegatedRole {
            name: name.to_owned(),
            keyids: signers.iter().map(|s| s.keyid().clone()).collect(),
            threshold: NonZeroU64::new(threshold as u64).expect("threshold checked non-zero"),
            paths: PathSet::Paths(vec![pattern(paths)?]),
            // A target lives in exactly one role: once its role is searched, stop.
            terminating: true,
            targets: None,
        })
    };
    let mut targets = Targets::new(
        SPEC_VERSION.to_owned(),
        NonZeroU64::new(version).expect("versions start at 1"),
        expires,
    );
    targets.delegations = Some(Delegations {
        keys,
        roles: vec![
            delegated(RELEASES_ROLE, RELEASES_PATHS, release_keys, release_threshold)?,
            delegated(DEVICES_ROLE, DEVICES_PATHS, &[online], 1)?,
        ],
    });
    Ok(targets)
}

/// Writes a fresh ed25519 key as PKCS#8 DER, readable by its owner only.
fn generate_key(path: &Path) -> Result<(), PublishError> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|e| PublishError::Key { path: path.to_owned(), source: e.to_string().into() })?;
    write_atomic(path, doc.as_ref(), true)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(PublishError::io("chmod", path))?;
    }
    Ok(())
}

/// Loads a key file, for tests that compare key ids.
#[cfg(test)]
pub(crate) fn load_key_for_tests(path: &Path) -> Signer {
    load_key(path).unwrap()
}

/// Loads a key file through tough's `LocalKeySource`. Key sources are async; this runs
/// the load on its own small runtime in a scoped thread, so it works whether or not the
/// caller is inside an async runtime.
fn load_key(path: &Path) -> Result<Signer, PublishError> {
    let source = LocalKeySource { path: path.to_owned() };
    let sign = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Box::new(e) as super::error::BoxError)?;
            rt.block_on(source.as_sign())
        })
        .join()
        .expect("key loading thread panicked")
    })
    .map_err(|source| PublishError::Key { path: path.to_owned(), source })?;
    Signer::new(sign)
}
