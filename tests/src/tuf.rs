//! TUF metadata a test forges, as an attacker holding a key could, or crafts to give the
//! client a repository shape Waveguide's publisher never writes.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::Path;

use serde::Serialize;
use sha2::Digest;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{Hashes, Metafile, Signature, Signed, Snapshot, Timestamp};

/// `role` signed with each key in `keys` (PKCS#8 files), as metadata JSON.
pub async fn sign<T: Serialize>(keys: &[&Path], role: &T) -> Vec<u8> {
    let mut canonical = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut canonical, olpc_cjson::CanonicalFormatter::new());
    role.serialize(&mut ser).unwrap();
    let mut signatures = Vec::new();
    for key in keys {
        let signer = LocalKeySource { path: key.to_path_buf() }.as_sign().await.unwrap();
        let sig = signer.sign(&canonical, &aws_lc_rs::rand::SystemRandom::new()).await.unwrap();
        signatures.push(Signature { keyid: signer.tuf_key().key_id().unwrap(), sig: sig.into() });
    }
    serde_json::to_vec(&Signed { signed: role, signatures }).unwrap()
}

/// The length, SHA-256 and version of a metadata file, as a snapshot or timestamp lists it.
pub fn metafile(bytes: &[u8], version: u64) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes { sha256: sha2::Sha256::digest(bytes).to_vec().into(), _extra: HashMap::new() }),
        version: NonZeroU64::new(version).unwrap(),
        _extra: HashMap::new(),
    }
}

/// An hour from now, in whole seconds.
pub fn in_an_hour() -> jiff::Timestamp {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 3600).unwrap()
}

/// Signs a timestamp with the online key, as a holder of that key could.
pub async fn sign_timestamp(key: &Path, version: u64, snapshot_version: u64, snapshot: &[u8]) -> Vec<u8> {
    let mut ts = Timestamp::new("1.0.0".into(), NonZeroU64::new(version).unwrap(), in_an_hour());
    ts.meta.insert("snapshot.json".into(), metafile(snapshot, snapshot_version));
    sign(&[key], &ts).await
}

/// Re-signs the snapshot named by `metadata/timestamp.json` with `meta` (role file name
/// → what the snapshot lists), as a holder of the online key could, and a timestamp one
/// version later naming it.
pub async fn resign_snapshot(metadata: &Path, key: &Path, meta: HashMap<String, Metafile>) {
    let ts: Signed<Timestamp> =
        serde_json::from_slice(&std::fs::read(metadata.join("timestamp.json")).unwrap()).unwrap();
    let version = ts.signed.meta["snapshot.json"].version.get();
    let path = metadata.join(format!("{version}.snapshot.json"));
    let mut snapshot: Signed<Snapshot> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    snapshot.signed.meta = meta;
    let bytes = sign(&[key], &snapshot.signed).await;
    std::fs::write(&path, &bytes).unwrap();
    let timestamp = sign_timestamp(key, ts.signed.version.get() + 1, version, &bytes).await;
    std::fs::write(metadata.join("timestamp.json"), timestamp).unwrap();
}

/// What the published snapshot lists, with every role's length and hash taken from its
/// file in `metadata`.
pub fn snapshot_with_lengths(metadata: &Path) -> HashMap<String, Metafile> {
    let ts: Signed<Timestamp> =
        serde_json::from_slice(&std::fs::read(metadata.join("timestamp.json")).unwrap()).unwrap();
    let version = ts.signed.meta["snapshot.json"].version.get();
    let snapshot: Signed<Snapshot> =
        serde_json::from_slice(&std::fs::read(metadata.join(format!("{version}.snapshot.json"))).unwrap())
            .unwrap();
    snapshot
        .signed
        .meta
        .iter()
        .map(|(name, file)| {
            let bytes = std::fs::read(metadata.join(format!("{}.{name}", file.version))).unwrap();
            (name.clone(), metafile(&bytes, file.version.get()))
        })
        .collect()
}
