//! TUF metadata a test forges, as an attacker holding a key could.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::Path;

use sha2::Digest;
use tough::key_source::{KeySource, LocalKeySource};
use tough::schema::{Hashes, Metafile, Signature, Signed, Timestamp};

/// Signs a timestamp with the online key, as a holder of that key could.
pub async fn sign_timestamp(key: &Path, version: u64, snapshot_version: u64, snapshot: &[u8]) -> Vec<u8> {
    let signer = LocalKeySource { path: key.to_owned() }.as_sign().await.unwrap();
    let mut ts = Timestamp::new(
        "1.0.0".into(),
        NonZeroU64::new(version).unwrap(),
        jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 3600).unwrap(),
    );
    let sha: Vec<u8> = sha2::Sha256::digest(snapshot).to_vec();
    ts.meta.insert(
        "snapshot.json".into(),
        Metafile {
            length: Some(snapshot.len() as u64),
            hashes: Some(Hashes { sha256: sha.into(), _extra: HashMap::new() }),
            version: NonZeroU64::new(snapshot_version).unwrap(),
            _extra: HashMap::new(),
        },
    );
    let mut canonical = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut canonical, olpc_cjson::CanonicalFormatter::new());
    serde::Serialize::serialize(&ts, &mut ser).unwrap();
    let sig = signer.sign(&canonical, &aws_lc_rs::rand::SystemRandom::new()).await.unwrap();
    let keyid = signer.tuf_key().key_id().unwrap();
    serde_json::to_vec(&Signed { signed: ts, signatures: vec![Signature { keyid, sig: sig.into() }] })
        .unwrap()
}
