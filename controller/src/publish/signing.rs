//! Canonical JSON, signatures and atomic file writes: the few primitives every role
//! write goes through.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::rand::SystemRandom;
use olpc_cjson::CanonicalFormatter;
use serde::Serialize;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::key::Key;
use tough::schema::Signature;
use tough::sign::Sign;

use super::PublishError;

/// A key that signs metadata, loaded through one of tough's key sources.
pub struct Signer {
    sign: Box<dyn Sign>,
    key: Key,
    keyid: Decoded<Hex>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("keyid", &hex::encode(&self.keyid)).finish()
    }
}

impl Signer {
    pub(crate) fn new(sign: Box<dyn Sign>) -> Result<Self, PublishError> {
        let key = sign.tuf_key();
        let keyid = key.key_id().map_err(|source| PublishError::ToughSchema {
            what: "cannot compute key id".into(),
            source: Box::new(source),
        })?;
        Ok(Signer { sign, key, keyid })
    }

    /// The public key, as it appears in root and delegations.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The TUF key id (SHA-256 of the canonical public key).
    pub fn keyid(&self) -> &Decoded<Hex> {
        &self.keyid
    }

    fn sign(&self, role: &str, msg: &[u8]) -> Result<Signature, PublishError> {
        // tough's signers are async so that remote key stores fit; local keys finish at
        // once, so polling the future on the calling (rayon) thread costs nothing.
        let sig = futures::executor::block_on(self.sign.sign(msg, &SystemRandom::new()))
            .map_err(|source| PublishError::Sign { role: role.to_owned(), source })?;
        Ok(Signature { keyid: self.keyid.clone(), sig: sig.into() })
    }
}

/// Canonical JSON (the form TUF signatures cover) of `value`.
pub(crate) fn canonical_json<T: Serialize>(role: &str, value: &T) -> Result<Vec<u8>, PublishError> {
    let mut out = Vec::with_capacity(4096);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, CanonicalFormatter::new());
    value.serialize(&mut ser).map_err(|source| PublishError::Serialise { role: role.to_owned(), source })?;
    Ok(out)
}

/// Signs `signed` with every signer and returns the metadata file: canonical JSON of
/// `{"signatures": [...], "signed": ...}`. The signed part is serialised once and spliced
/// in, which is exactly its canonical form because "signatures" sorts before "signed".
pub(crate) fn sign_metadata<T: Serialize>(
    role: &str,
    signed: &T,
    signers: &[&Signer],
) -> Result<Vec<u8>, PublishError> {
    let body = canonical_json(role, signed)?;
    Ok(sign_canonical(role, body, signers)?.into_bytes())
}

/// A signed metadata file kept in its two parts: the envelope up to the signed body, and
/// the body. A leaf bin is tens of kilobytes and a commit may sign thousands; writing the
/// parts one after the other saves copying every body into a new buffer.
pub(crate) struct SignedFile {
    head: Vec<u8>,
    body: Vec<u8>,
    /// The envelope's closing brace (empty for a file taken as it is).
    tail: &'static [u8],
}

const SIGNED_TAIL: &[u8] = b"}";

impl SignedFile {
    /// A file signed elsewhere, as it is.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> SignedFile {
        SignedFile { head: bytes, body: Vec::new(), tail: b"" }
    }

    /// The file's size.
    pub(crate) fn len(&self) -> usize {
        self.head.len() + self.body.len() + self.tail.len()
    }

    /// The whole file.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        let mut file = self.head;
        file.reserve_exact(self.body.len() + self.tail.len());
        file.extend_from_slice(&self.body);
        file.extend_from_slice(self.tail);
        file
    }

    /// Writes the file to `path`, which must not exist: versioned metadata files get a
    /// new name every time, and are referenced only by a snapshot written after them, so
    /// they need no temporary file and rename. What a crash leaves half written is never
    /// referenced, and its version is never used again (see `Repository::unused_version`).
    pub(crate) fn write_new(&self, path: &Path) -> Result<(), PublishError> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(PublishError::io("create", path))?;
        for part in [&self.head[..], &self.body, self.tail] {
            file.write_all(part).map_err(PublishError::io("write", path))?;
        }
        Ok(())
    }
}

/// Signs an already canonical `signed` body and wraps it in the signed-metadata envelope.
pub(crate) fn sign_canonical(
    role: &str,
    body: Vec<u8>,
    signers: &[&Signer],
) -> Result<SignedFile, PublishError> {
    let signatures = signers.iter().map(|s| s.sign(role, &body)).collect::<Result<Vec<_>, _>>()?;
    let sigs = canonical_json(role, &signatures)?;
    let mut head = Vec::with_capacity(sigs.len() + 32);
    head.extend_from_slice(b"{\"signatures\":");
    head.extend_from_slice(&sigs);
    head.extend_from_slice(b",\"signed\":");
    Ok(SignedFile { head, body, tail: SIGNED_TAIL })
}

/// SHA-256 of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).into()
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` so that readers see either the old file or the whole new
/// one: write a temporary file in the same directory, then rename it over `path`.
/// With `durable`, the data is flushed to disk before the rename, so that after a power
/// loss a visible file is never empty.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<(), PublishError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = File::create(&tmp).map_err(PublishError::io("create", &tmp))?;
        file.write_all(bytes).map_err(PublishError::io("write", &tmp))?;
        if durable {
            file.sync_all().map_err(PublishError::io("sync", &tmp))?;
        }
        fs::rename(&tmp, path).map_err(PublishError::io("rename into place", path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Flushes a directory, so that renames into it survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), PublishError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(PublishError::io("sync", dir))
}
