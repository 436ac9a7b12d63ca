//! Device instructions turned into what a leaf bin needs: each device's target document,
//! its hash, and the hash of its target path, computed in parallel before the commit.
//!
//! A batch file of a million instructions is parsed borrowing its strings from the file's
//! bytes ([`InstructionRef`]), and each instruction is serialised straight into its
//! target document, so a first publish never builds a million owned
//! [`DeviceInstruction`]s. Both the borrowed and the owned form serialise through
//! [`InstructionRef`], so the document bytes are the same whichever way a batch arrives.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Mutex;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::signing::sha256;
use super::{Batch, DeviceInstruction, PublishError, ReleaseArtifact};
use crate::model::MaintenanceWindow;
use crate::target::device_target_path;

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
}

/// [`super::ArtifactRef`], borrowed. A target path or hash written with JSON escapes
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
        }
    }
}

/// A batch file, parsed without copying its strings.
#[derive(Deserialize)]
struct BatchRef {
    #[serde(default)]
    upserts: Upserts,
    #[serde(default)]
    removals: Vec<String>,
    #[serde(default)]
    releases: Vec<ReleaseArtifact>,
}

/// The `upserts` of a batch file, prepared while they are parsed: chunks of borrowed
/// instructions are turned into documents on the thread pool while the parser goes on,
/// so the parsed instructions of the whole batch never sit in memory together.
struct Upserts(Result<Vec<PreparedDevice>, PublishError>);

impl Default for Upserts {
    fn default() -> Self {
        Upserts(Ok(Vec::new()))
    }
}

impl<'de> Deserialize<'de> for Upserts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Upserts;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of device instructions")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Upserts, A::Error> {
                const CHUNK: usize = 8192;
                // Each chunk is prepared on the thread pool while this thread parses the
                // next one.
                let prepared = Mutex::new(Vec::new());
                rayon::in_place_scope(|scope| {
                    let mut chunk: Vec<InstructionRef<'de>> = Vec::with_capacity(CHUNK);
                    loop {
                        let next = seq.next_element::<InstructionRef<'de>>()?;
                        let done = next.is_none();
                        chunk.extend(next);
                        if (done || chunk.len() == CHUNK) && !chunk.is_empty() {
                            let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                            let prepared = &prepared;
                            scope.spawn(move |_| {
                                // Sized once: the devices are not copied into growing vectors.
                                let mut devices = Vec::with_capacity(full.len());
                                let devices = full
                                    .iter()
                                    .try_for_each(|i| PreparedDevice::new(i).map(|d| devices.push(d)))
                                    .map(|()| devices);
                                prepared.lock().expect("no task panics holding it").push(devices);
                            });
                        }
                        if done {
                            return Ok(());
                        }
                    }
                })?;
                let mut out = Vec::with_capacity(UPSERTS_HINT.with(|h| h.take()));
                for chunk in prepared.into_inner().expect("no task panics holding it") {
                    match chunk {
                        Ok(devices) => out.extend(devices),
                        Err(e) => return Ok(Upserts(Err(e))),
                    }
                }
                Ok(Upserts(Ok(out)))
            }
        }
        deserializer.deserialize_seq(Visit)
    }
}

thread_local! {
    /// How many upserts the batch being parsed on this thread may hold.
    static UPSERTS_HINT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A batch file's bytes: mapped on Linux (a million-device batch is a few hundred
/// megabytes, already in the page cache when it was just written; mapping it costs no
/// copy into fresh memory), read elsewhere.
struct BatchFile {
    #[cfg(target_os = "linux")]
    map: Option<(*mut libc::c_void, usize)>,
    data: Vec<u8>,
}

impl BatchFile {
    fn open(path: &Path) -> Result<Self, PublishError> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(path).map_err(PublishError::io("read", path))?;
            let len = file.metadata().map_err(PublishError::io("read", path))?.len() as usize;
            if len > 0 {
                // SAFETY: a private, read-only mapping of a regular file we opened; it is
                // unmapped in Drop and only read through `bytes()` while `self` lives. The
                // file must not be truncated while it is read (a batch file is written
                // before the publish starts).
                let addr = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ,
                        libc::MAP_PRIVATE | libc::MAP_POPULATE,
                        file.as_raw_fd(),
                        0,
                    )
                };
                if addr != libc::MAP_FAILED {
                    return Ok(BatchFile { map: Some((addr, len)), data: Vec::new() });
                }
            }
        }
        let data = std::fs::read(path).map_err(PublishError::io("read", path))?;
        Ok(BatchFile {
            #[cfg(target_os = "linux")]
            map: None,
            data,
        })
    }

    fn bytes(&self) -> &[u8] {
        #[cfg(target_os = "linux")]
        if let Some((addr, len)) = self.map {
            // SAFETY: the mapping is `len` readable bytes and lives as long as `self`.
            return unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
        }
        &self.data
    }
}

impl Drop for BatchFile {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some((addr, len)) = self.map {
            // SAFETY: `addr`/`len` is a mapping made in `open` and not yet unmapped.
            unsafe { libc::munmap(addr, len) };
        }
    }
}

/// One device's target, ready for its leaf.
#[derive(Debug)]
pub(crate) struct PreparedDevice {
    /// The target path, `devices/<id>.json`.
    pub(crate) path: String,
    /// The target document.
    pub(crate) content: Vec<u8>,
    /// SHA-256 of `content`.
    pub(crate) hash: [u8; 32],
    /// SHA-256 of `path`: what places the target in its bin.
    pub(crate) path_hash: [u8; 32],
}

impl PreparedDevice {
    /// The device id, from the target path.
    pub(crate) fn id(&self) -> &str {
        &self.path["devices/".len()..self.path.len() - ".json".len()]
    }

    fn new(instruction: &InstructionRef<'_>) -> Result<Self, PublishError> {
        check_device_id(&instruction.device)?;
        let mut content = Vec::with_capacity(256);
        serde_json::to_writer(&mut content, instruction).map_err(|source| PublishError::Serialise {
            role: format!("device {}", instruction.device),
            source,
        })?;
        let path = device_target_path(&instruction.device);
        Ok(PreparedDevice { hash: sha256(&content), path_hash: sha256(path.as_bytes()), path, content })
    }
}

/// A batch with every device target document built and hashed: what
/// [`super::Repository::commit_prepared`] publishes.
#[derive(Debug, Default)]
pub struct PreparedBatch {
    pub(crate) devices: Vec<PreparedDevice>,
    pub(crate) removals: Vec<String>,
    pub(crate) releases: Vec<ReleaseArtifact>,
}

impl PreparedBatch {
    /// Prepares a batch, in parallel. Refuses malformed device ids.
    pub fn from_batch(batch: Batch) -> Result<Self, PublishError> {
        let devices =
            batch.upserts.par_iter().map(|i| PreparedDevice::new(&i.into())).collect::<Result<_, _>>()?;
        Ok(PreparedBatch { devices, removals: batch.removals, releases: batch.releases })
    }

    /// Reads a batch file: JSON (parsed without copying its strings, the fast path for the
    /// large batches of a first publish) or YAML.
    pub fn read(path: &Path) -> Result<Self, PublishError> {
        let file = BatchFile::open(path)?;
        let bytes = file.bytes();
        // Room for the smallest documents a batch holds (about 150 bytes each), reserved,
        // not touched: a million prepared devices are never copied to a larger vector.
        UPSERTS_HINT.with(|h| h.set(bytes.len() / 150));
        match serde_json::from_slice::<BatchRef>(bytes) {
            Ok(batch) => Ok(PreparedBatch {
                devices: batch.upserts.0?,
                removals: batch.removals,
                releases: batch.releases,
            }),
            Err(_) => {
                let batch: Batch = serde_yaml::from_slice(bytes)
                    .map_err(|e| PublishError::Config(format!("batch {}: {e}", path.display())))?;
                Self::from_batch(batch)
            }
        }
    }

    /// Device instructions in the batch.
    pub fn devices(&self) -> usize {
        self.devices.len()
    }
}

/// Refuses ids that would not stay one path segment of `devices/<id>.json`.
pub(crate) fn check_device_id(id: &str) -> Result<(), PublishError> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id == "." || id == ".." {
        "it is a relative path"
    } else if id.contains(['/', '\\']) {
        "it contains a path separator"
    } else if id.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(PublishError::InvalidDevice { id: id.to_owned(), reason })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::ArtifactRef;

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
            upserts: vec![instruction("a", vec![]), instruction("caf\u{e9}-1", vec![window])],
            ..Batch::default()
        };
        let dir = tempfile::TempDir::new().unwrap();
        let file = dir.path().join("batch.json");
        std::fs::write(&file, serde_json::to_vec_pretty(&batch).unwrap()).unwrap();
        let yaml = dir.path().join("batch.yaml");
        std::fs::write(&yaml, serde_yaml::to_string(&batch).unwrap()).unwrap();
        for prepared in [
            PreparedBatch::from_batch(batch.clone()).unwrap(),
            PreparedBatch::read(&file).unwrap(),
            PreparedBatch::read(&yaml).unwrap(),
        ] {
            assert_eq!(prepared.devices(), 2);
            for (p, i) in prepared.devices.iter().zip(&batch.upserts) {
                assert_eq!(p.content, serde_json::to_vec(i).unwrap());
                assert_eq!(p.hash, sha256(&p.content));
                assert_eq!(p.id(), i.device);
                assert_eq!(p.path_hash, crate::target::device_path_hash(&i.device));
            }
        }
    }
}
