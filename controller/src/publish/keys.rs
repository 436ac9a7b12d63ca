//! The key directory: offline root keys, the online key, and every signed root version.
//!
//! ```text
//! KEYS/root-keys/root-<n>.pk8   offline root keys (ed25519, PKCS#8 DER, mode 0600)
//! KEYS/online.pk8               the online key: targets, releases, bins, snapshot, timestamp
//! KEYS/online.next.pk8          present only while an online-key rotation is under way
//! KEYS/roots/<version>.root.json every root version, signed by the root keys
//! ```
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
use tough::schema::{RoleKeys, RoleType, Root, Signed};

use super::signing::{sign_metadata, write_atomic, Signer};
use super::{expiry_after, PublishError, SPEC_VERSION};

const ROOT_KEYS: &str = "root-keys";
const ONLINE_KEY: &str = "online.pk8";
const NEXT_ONLINE_KEY: &str = "online.next.pk8";
const ROOTS: &str = "roots";

/// What `waveguide keys init` created.
#[derive(Debug, Clone)]
pub struct KeysCreated {
    /// Key ids of the offline root keys.
    pub root_keyids: Vec<String>,
    /// Signatures needed on a root.
    pub root_threshold: usize,
    /// Key id of the online key.
    pub online_keyid: String,
}

/// A key directory (see the module documentation for its layout).
#[derive(Debug, Clone)]
pub struct KeyDir {
    dir: PathBuf,
}

impl KeyDir {
    /// Generates `root_keys` offline root keys, of which `root_threshold` must sign a root,
    /// and one online key, and writes root version 1 (expiring after `root_expiry`).
    /// Refuses a directory that already holds keys.
    pub fn init(
        dir: &Path,
        root_keys: usize,
        root_threshold: usize,
        root_expiry: SignedDuration,
    ) -> Result<(KeyDir, KeysCreated), PublishError> {
        if root_keys == 0 || root_threshold == 0 || root_threshold > root_keys {
            return Err(PublishError::Config(format!(
                "root threshold must be between 1 and the number of root keys ({root_keys}), got {root_threshold}"
            )));
        }
        let keys = KeyDir { dir: dir.to_owned() };
        if keys.online_path().exists() || dir.join(ROOT_KEYS).exists() {
            return Err(PublishError::KeyDir { dir: dir.to_owned(), reason: "already holds keys".into() });
        }
        for sub in [ROOT_KEYS, ROOTS] {
            fs::create_dir_all(dir.join(sub)).map_err(PublishError::io("create", dir.join(sub)))?;
        }
        let mut root_signers = Vec::with_capacity(root_keys);
        for n in 1..=root_keys {
            let path = dir.join(ROOT_KEYS).join(format!("root-{n}.pk8"));
            generate_key(&path)?;
            root_signers.push(load_key(&path)?);
        }
        generate_key(&keys.online_path())?;
        let online = load_key(&keys.online_path())?;
        let root = build_root(1, expiry_after(root_expiry), &root_signers, root_threshold, &online);
        keys.write_root(&root, &root_signers)?;
        let created = KeysCreated {
            root_keyids: root_signers.iter().map(|s| hex::encode(s.keyid())).collect(),
            root_threshold,
            online_keyid: hex::encode(online.keyid()),
        };
        Ok((keys, created))
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
        let dir = self.dir.join(ROOT_KEYS);
        let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(PublishError::io("list", &dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pk8"))
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(PublishError::KeyDir {
                dir: self.dir.clone(),
                reason: "no root keys in root-keys/ (bring the offline root keys back for this operation)"
                    .into(),
            });
        }
        paths.iter().map(|p| load_key(p)).collect()
    }

    /// Every root version, in order: `(version, file bytes)`.
    pub(crate) fn roots(&self) -> Result<Vec<(u64, Vec<u8>)>, PublishError> {
        let dir = self.dir.join(ROOTS);
        let mut roots = Vec::new();
        for entry in fs::read_dir(&dir).map_err(PublishError::io("list", &dir))? {
            let path = entry.map_err(PublishError::io("list", &dir))?.path();
            let Some(version) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".root.json"))
                .and_then(|v| v.parse::<u64>().ok())
            else {
                continue;
            };
            roots.push((version, fs::read(&path).map_err(PublishError::io("read", &path))?));
        }
        roots.sort_by_key(|(v, _)| *v);
        if roots.is_empty() {
            return Err(PublishError::KeyDir {
                dir: self.dir.clone(),
                reason: "no signed root in roots/".into(),
            });
        }
        Ok(roots)
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

    fn write_root(&self, root: &Root, signers: &[Signer]) -> Result<(), PublishError> {
        let refs: Vec<&Signer> = signers.iter().collect();
        let bytes = sign_metadata("root", root, &refs)?;
        let path = self.dir.join(ROOTS).join(format!("{}.root.json", root.version));
        write_atomic(&path, &bytes, true)
    }

    /// First half of an online-key rotation: generates the next online key and signs root
    /// `v+1` that trusts it. Resumes a rotation that stopped half way instead of starting
    /// another. Returns the next online key.
    pub(crate) fn prepare_rotation(&self, root_expiry: SignedDuration) -> Result<Signer, PublishError> {
        let (version, current) = self.latest_root()?;
        let timestamp_keys = &current.signed.roles[&RoleType::Timestamp].keyids;
        if self.next_online_path().exists() {
            let next = load_key(&self.next_online_path())?;
            if timestamp_keys.iter().any(|k| k == next.keyid()) {
                return Ok(next); // root already signed for this key
            }
        } else {
            generate_key(&self.next_online_path())?;
        }
        let next = load_key(&self.next_online_path())?;
        let root_signers = self.root_signers()?;
        let threshold = current.signed.roles[&RoleType::Root].threshold.get() as usize;
        let root = build_root(version + 1, expiry_after(root_expiry), &root_signers, threshold, &next);
        self.write_root(&root, &root_signers)?;
        Ok(next)
    }

    /// Second half of a rotation, once the repository trusts the new key: it becomes the
    /// online key.
    pub(crate) fn finish_rotation(&self) -> Result<(), PublishError> {
        fs::rename(self.next_online_path(), self.online_path())
            .map_err(PublishError::io("rename into place", self.online_path()))
    }
}

/// Root metadata trusting `root_signers` (with `threshold`) for root and `online` for
/// every other top-level role.
fn build_root(
    version: u64,
    expires: Timestamp,
    root_signers: &[Signer],
    threshold: usize,
    online: &Signer,
) -> Root {
    let mut keys = HashMap::new();
    for s in root_signers.iter().chain([online]) {
        keys.insert(s.keyid().clone(), s.key().clone());
    }
    let role = |ids: Vec<_>, threshold: usize| RoleKeys {
        keyids: ids,
        threshold: NonZeroU64::new(threshold as u64).expect("threshold checked non-zero"),
        _extra: HashMap::new(),
    };
    let mut roles = HashMap::new();
    roles.insert(RoleType::Root, role(root_signers.iter().map(|s| s.keyid().clone()).collect(), threshold));
    for r in [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp] {
        roles.insert(r, role(vec![online.keyid().clone()], 1));
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
