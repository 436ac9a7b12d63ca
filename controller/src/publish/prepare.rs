//! Device instructions turned into what a leaf bin needs: each device's target document,
//! its hash, and the hash of its target path, computed in parallel before the commit.
//!
//! Nothing is allocated per device. Documents and device ids live in the batch's byte
//! [`Stores`] and devices point into them ([`Span`]): a batch file is mapped, and an
//! instruction written there exactly as its target document (compact JSON, fields in
//! order, as `serde_json` writes a [`DeviceInstruction`]) is used where it lies; any other
//! document, and every device id, is copied into one buffer per chunk of devices. Both the borrowed and
//! the owned form serialise through [`InstructionRef`], so the document bytes are the
//! same whichever way a batch arrives.

use std::borrow::Cow;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::signing::sha256;
use super::{Batch, PublishError, ReleaseArtifact};
use crate::protocol::target::device_path_hash;
use crate::protocol::{DeviceId, DeviceInstruction, MaintenanceWindow};

/// Devices prepared together, sharing one buffer for the documents they serialise.
const CHUNK: usize = 8192;

/// A device instruction as the target document writes it: the fields of
/// [`DeviceInstruction`], in its order, borrowed where possible.
#[derive(Serialize, Deserialize)]
struct InstructionRef<'a> {
    #[serde(borrow)]
    device: Cow<'a, str>,
    #[serde(borrow)]
    release: Cow<'a, str>,
    #[serde(borrow)]
    version: Cow<'a, str>,
    #[serde(borrow)]
    artifacts: Vec<ArtifactRefRef<'a>>,
    #[serde(borrow)]
    rollout: Cow<'a, str>,
    wave: u32,
    #[serde(default, skip_serializing_if = "<[_]>::is_empty")]
    maintenance_windows: Cow<'a, [MaintenanceWindow]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    confirmation_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "crate::protocol::is_first_attempt")]
    attempt: u32,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    commit: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "crate::protocol::is_false")]
    allow_downgrade: bool,
}

/// [`crate::protocol::ArtifactRef`], borrowed. A target path or hash written with JSON escapes
/// cannot be borrowed; such a file fails this parse and is read by the general (YAML)
/// path instead, with the same result.
#[derive(Serialize, Deserialize)]
struct ArtifactRefRef<'a> {
    target: &'a str,
    sha256: &'a str,
    length: u64,
}

impl<'a> From<&'a DeviceInstruction> for InstructionRef<'a> {
    fn from(i: &'a DeviceInstruction) -> Self {
        InstructionRef {
            device: Cow::Borrowed(&i.device),
            release: Cow::Borrowed(&i.release),
            version: Cow::Borrowed(&i.version),
            artifacts: i
                .artifacts
                .iter()
                .map(|a| ArtifactRefRef { target: &a.target, sha256: &a.sha256, length: a.length })
                .collect(),
            rollout: Cow::Borrowed(&i.rollout),
            wave: i.wave,
            maintenance_windows: Cow::Borrowed(&i.maintenance_windows),
            confirmation_secs: i.confirmation_secs,
            attempt: i.attempt,
            commit: i.commit.as_deref().map(Cow::Borrowed),
            allow_downgrade: i.allow_downgrade,
        }
    }
}

/// A batch file with its upserts left as raw JSON, each parsed later on the thread pool.
#[derive(Deserialize)]
struct BatchRaw<'a> {
    #[serde(default, borrow)]
    upserts: Vec<&'a RawValue>,
    #[serde(default)]
    removals: Vec<String>,
    #[serde(default)]
    releases: Vec<ReleaseArtifact>,
}

/// Where an instruction comes from.
trait Source: Sync {
    /// The instruction, or `None` when this path cannot read it.
    fn instruction(&self) -> Option<InstructionRef<'_>>;
    /// The instruction's own text in the batch file.
    fn text(&self) -> Option<&[u8]>;
}

impl Source for DeviceInstruction {
    fn instruction(&self) -> Option<InstructionRef<'_>> {
        Some(self.into())
    }

    fn text(&self) -> Option<&[u8]> {
        None
    }
}

impl Source for &RawValue {
    fn instruction(&self) -> Option<InstructionRef<'_>> {
        serde_json::from_str(self.get()).ok()
    }

    fn text(&self) -> Option<&[u8]> {
        Some(self.get().as_bytes())
    }
}

/// A run of bytes in one of a batch's [`Stores`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    start: usize,
    len: u32,
    store: u32,
}

impl Span {
    const EMPTY: Span = Span { start: 0, len: 0, store: 0 };

    /// The number of bytes.
    pub(crate) fn len(self) -> usize {
        self.len as usize
    }

    fn new(store: u32, start: usize, len: usize) -> Result<Span, PublishError> {
        let len =
            u32::try_from(len).map_err(|_| PublishError::Config("a device document over 4 GiB".into()))?;
        Ok(Span { start, len, store })
    }
}

/// The bytes a prepared batch's documents and device ids are in: the mapped batch file
/// (store 0, when the batch came from a file) and one buffer per chunk of devices.
#[derive(Debug, Default)]
pub(crate) struct Stores(Vec<Store>);

#[derive(Debug)]
enum Store {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Store {
    fn bytes(&self) -> &[u8] {
        match self {
            Store::Mapped(map) => map,
            Store::Owned(bytes) => bytes,
        }
    }
}

impl Stores {
    /// Store 0 is the batch file (or nothing); chunk k's buffer is store k + 1.
    fn new(file: Option<Store>, buffers: Vec<Vec<u8>>) -> Stores {
        let mut stores = Vec::with_capacity(buffers.len() + 1);
        stores.push(file.unwrap_or(Store::Owned(Vec::new())));
        stores.extend(buffers.into_iter().map(Store::Owned));
        Stores(stores)
    }

    /// The bytes of `span`.
    pub(crate) fn bytes(&self, span: Span) -> &[u8] {
        match self.0.get(span.store as usize) {
            Some(store) => &store.bytes()[span.start..span.start + span.len()],
            None => &[],
        }
    }

    /// The text of `span`, a device id.
    pub(crate) fn str(&self, span: Span) -> &str {
        std::str::from_utf8(self.bytes(span)).expect("device id spans are cut from strings")
    }
}

/// One device's target, ready for its leaf.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PreparedDevice {
    /// The device id.
    pub(crate) id: Span,
    /// The target document.
    pub(crate) doc: Span,
    /// SHA-256 of the document.
    pub(crate) hash: [u8; 32],
    /// SHA-256 of the target path: what places the target in its bin.
    pub(crate) path_hash: [u8; 32],
}

impl PreparedDevice {
    const EMPTY: PreparedDevice =
        PreparedDevice { id: Span::EMPTY, doc: Span::EMPTY, hash: [0; 32], path_hash: [0; 32] };
}

/// Prepares a chunk of instructions into `out`, copying into the returned buffer (store
/// `store`) the device ids and every document that is not in the mapped batch `file` as
/// it should be. `None` when an instruction cannot be read on this path.
fn prepare_chunk<S: Source>(
    items: &[S],
    out: &mut [PreparedDevice],
    store: u32,
    file: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, PublishError> {
    // The offset of `bytes` in the batch file, when they lie in it.
    let in_file = |bytes: &[u8]| {
        let file = file?;
        let at = (bytes.as_ptr() as usize).checked_sub(file.as_ptr() as usize)?;
        (at <= file.len() && bytes.len() <= file.len() - at).then_some(at)
    };
    let mut buffer = Vec::new();
    let mut doc = Vec::with_capacity(512);
    for (item, out) in items.iter().zip(out) {
        let Some(instruction) = item.instruction() else {
            return Ok(None);
        };
        publishable_id(&instruction.device)?;
        doc.clear();
        serde_json::to_writer(&mut doc, &instruction).map_err(|source| PublishError::Serialise {
            role: format!("device {}", instruction.device),
            source,
        })?;
        let mut span = |bytes: &[u8], in_place: Option<usize>| match in_place {
            Some(at) => Span::new(0, at, bytes.len()),
            None => {
                if buffer.is_empty() {
                    buffer.reserve(items.len() * (bytes.len() + 16));
                }
                buffer.extend_from_slice(bytes);
                Span::new(store, buffer.len() - bytes.len(), bytes.len())
            }
        };
        *out = PreparedDevice {
            doc: span(&doc, item.text().filter(|text| *text == &doc[..]).and_then(in_file))?,
            // Copied even when it is in the file: a commit reads every id in leaf order,
            // and a few megabytes of ids serve that better than the whole batch file.
            id: span(instruction.device.as_bytes(), None)?,
            hash: sha256(&doc),
            path_hash: device_path_hash(&instruction.device),
        };
    }
    Ok(Some(buffer))
}

/// Prepared devices and the buffer of each chunk, to become stores 1, 2, ...
type Prepared = (Vec<PreparedDevice>, Vec<Vec<u8>>);

/// Prepares every instruction of `items`, in parallel chunks. `None` when one cannot be
/// read on this path.
fn prepare_all<S: Source>(items: &[S], file: Option<&[u8]>) -> Result<Option<Prepared>, PublishError> {
    let mut devices = vec![PreparedDevice::EMPTY; items.len()];
    let buffers = devices
        .par_chunks_mut(CHUNK)
        .zip(items.par_chunks(CHUNK))
        .enumerate()
        .map(|(k, (out, items))| prepare_chunk(items, out, k as u32 + 1, file))
        .collect::<Result<Option<Vec<_>>, _>>()?;
    Ok(buffers.map(|buffers| (devices, buffers)))
}

/// A batch with every device target document built and hashed: what
/// [`super::Repository::commit_prepared`] publishes.
#[derive(Debug, Default)]
pub struct PreparedBatch {
    pub(crate) stores: Stores,
    pub(crate) devices: Vec<PreparedDevice>,
    pub(crate) removals: Vec<String>,
    pub(crate) releases: Vec<ReleaseArtifact>,
    pub(crate) signed_releases: Option<Vec<u8>>,
}

impl PreparedBatch {
    /// Publishes `bytes`, a `releases` file signed by the release keys, with the batch.
    pub fn with_signed_releases(mut self, bytes: Vec<u8>) -> Self {
        self.signed_releases = Some(bytes);
        self
    }

    /// Prepares a batch, in parallel. Refuses device ids that break the rule of
    /// [`DeviceId`].
    pub fn from_batch(batch: Batch) -> Result<Self, PublishError> {
        let (devices, buffers) =
            prepare_all(&batch.upserts, None)?.expect("owned instructions are always read");
        Ok(PreparedBatch {
            stores: Stores::new(None, buffers),
            devices,
            removals: batch.removals,
            releases: batch.releases,
            signed_releases: batch.signed_releases,
        })
    }

    /// Reads a batch file: JSON (mapped, each instruction parsed on the thread pool
    /// borrowing its strings, the fast path for the large batches of a first publish) or
    /// YAML.
    pub fn read(path: &Path) -> Result<Self, PublishError> {
        let file = open_batch(path)?;
        let fast = match serde_json::from_slice::<BatchRaw>(file.bytes()) {
            Ok(raw) => prepare_all(&raw.upserts, Some(file.bytes()))?
                .map(|(devices, buffers)| (devices, buffers, raw.removals, raw.releases)),
            Err(_) => None,
        };
        if let Some((devices, buffers, removals, releases)) = fast {
            return Ok(PreparedBatch {
                stores: Stores::new(Some(file), buffers),
                devices,
                removals,
                releases,
                signed_releases: None,
            });
        }
        let batch: Batch = serde_yaml::from_slice(file.bytes())
            .map_err(|e| PublishError::Config(format!("batch {}: {e}", path.display())))?;
        Self::from_batch(batch)
    }

    /// Device instructions in the batch.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// The id of `device`.
    #[cfg(test)]
    pub(crate) fn id(&self, device: &PreparedDevice) -> &str {
        self.stores.str(device.id)
    }
}

/// A batch file's bytes: mapped (a million-device batch is a few hundred megabytes,
/// already in the page cache when it was just written; mapping it costs no copy into
/// fresh memory), or read when it cannot be mapped.
fn open_batch(path: &Path) -> Result<Store, PublishError> {
    let file = std::fs::File::open(path).map_err(PublishError::io("read", path))?;
    let len = file.metadata().map_err(PublishError::io("read", path))?.len();
    if len > 0 {
        // SAFETY: a private read-only mapping of a batch file, which must not be changed
        // while it is published (it is written before the publish starts).
        if let Ok(map) = unsafe { memmap2::MmapOptions::new().populate().map(&file) } {
            return Ok(Store::Mapped(map));
        }
    }
    Ok(Store::Owned(std::fs::read(path).map_err(PublishError::io("read", path))?))
}

/// Refuses an id that breaks the rule of [`DeviceId`] (it would not stay one path
/// segment of `devices/<id>.json`).
pub(crate) fn publishable_id(id: &str) -> Result<(), PublishError> {
    DeviceId::check(id).map_err(|reason| PublishError::InvalidDevice { id: id.to_owned(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ArtifactRef;

    fn instruction(device: &str, windows: Vec<MaintenanceWindow>) -> DeviceInstruction {
        DeviceInstruction {
            device: device.to_owned(),
            release: "r\"1\u{e9}".to_owned(),
            version: "1.0.0".to_owned(),
            artifacts: vec![ArtifactRef {
                target: "releases/r/a b".into(),
                sha256: "ab".repeat(32),
                length: 7,
            }],
            rollout: "ro\\l\nl".to_owned(),
            wave: 3,
            maintenance_windows: windows,
            confirmation_secs: None,
            attempt: 0,
            commit: Some("0f\"c".into()),
            allow_downgrade: true,
        }
    }

    #[test]
    fn documents_are_the_serialised_instruction_whichever_way_the_batch_arrives() {
        let window = MaintenanceWindow {
            schedule: "0 2 * * *".into(),
            duration: "2h".into(),
            time_zone: Some("Europe/Berlin".into()),
        };
        let batch = Batch {
            upserts: vec![instruction("a", vec![]), instruction("cafe-1", vec![window])],
            ..Batch::default()
        };
        let dir = tempfile::TempDir::new().unwrap();
        let pretty = dir.path().join("batch.json");
        std::fs::write(&pretty, serde_json::to_vec_pretty(&batch).unwrap()).unwrap();
        let compact = dir.path().join("compact.json");
        std::fs::write(&compact, serde_json::to_vec(&batch).unwrap()).unwrap();
        let yaml = dir.path().join("batch.yaml");
        std::fs::write(&yaml, serde_yaml::to_string(&batch).unwrap()).unwrap();
        for (prepared, in_file) in [
            (PreparedBatch::from_batch(batch.clone()).unwrap(), false),
            (PreparedBatch::read(&pretty).unwrap(), false),
            (PreparedBatch::read(&compact).unwrap(), true),
            (PreparedBatch::read(&yaml).unwrap(), false),
        ] {
            assert_eq!(prepared.devices(), 2);
            for (p, i) in prepared.devices.iter().zip(&batch.upserts) {
                let doc = prepared.stores.bytes(p.doc);
                assert_eq!(doc, serde_json::to_vec(i).unwrap());
                assert_eq!(p.hash, sha256(doc));
                assert_eq!(prepared.id(p), i.device);
                assert_eq!(p.path_hash, device_path_hash(&i.device));
                // A document written in the file exactly as it is published is not copied.
                assert_eq!(p.doc.store == 0, in_file);
            }
        }
    }

    #[test]
    fn ids_written_with_escapes_are_unescaped() {
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("batch.json");
        let mut batch = Batch { upserts: vec![instruction("x", vec![])], ..Batch::default() };
        let text =
            serde_json::to_string(&batch).unwrap().replace("\"device\":\"x\"", "\"device\":\"\\u0078\"");
        std::fs::write(&file, text).unwrap();
        let prepared = PreparedBatch::read(&file).unwrap();
        assert_eq!(prepared.id(&prepared.devices[0]), "x");
        assert_eq!(
            prepared.stores.bytes(prepared.devices[0].doc),
            serde_json::to_vec(&batch.upserts[0]).unwrap()
        );
        batch.upserts[0].device = "a/b".into();
        std::fs::write(&file, serde_json::to_vec(&batch).unwrap()).unwrap();
        assert!(matches!(PreparedBatch::read(&file), Err(PublishError::InvalidDevice { .. })));
    }

    #[test]
    fn ids_that_break_the_rule_of_device_ids_are_refused() {
        // Each would stay one path segment, but the fleet repository, the device API and
        // the agent refuse it: the publisher follows the same rule.
        for bad in ["bad id", "-x", "caf\u{e9}", &"x".repeat(129)] {
            let batch = Batch { upserts: vec![instruction(bad, vec![])], ..Batch::default() };
            match PreparedBatch::from_batch(batch) {
                Err(PublishError::InvalidDevice { id, reason }) => {
                    assert_eq!(id, bad);
                    assert_eq!(Err(reason), DeviceId::check(bad));
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
