//! Content-addressed target files (`targets/devices/<sha256>.<id>.json`, release
//! artifacts), written once and never changed.
//!
//! A commit's device files are created by one writer thread while the other threads
//! build and sign the bins: creating files in one directory takes the directory's lock
//! in the kernel, so a second creating thread only waits for it (measured: 200,000
//! files took 5.0 s from one thread, 6.8 s from two), and the metadata work overlaps
//! the file work instead of following it. Each new file costs one
//! `openat(O_CREAT|O_EXCL)`, one `write` and one `close`; nothing is flushed per file
//! (one `syncfs` before the timestamp covers them all). In a large directory, the names
//! of each leaf's new files are first looked up from several threads, so that the
//! directory blocks the creates need are read in parallel rather than one create at a
//! time (a 10,000-device wave into a million-file directory: about half the time).

#[cfg(not(target_os = "linux"))]
use std::fs::OpenOptions;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;

use super::PublishError;

/// A device target file to write: `targets/devices/<hash>.<id>.json`.
pub(crate) struct NewFile<'a> {
    /// SHA-256 of `content`.
    pub(crate) hash: [u8; 32],
    /// The device id.
    pub(crate) id: &'a str,
    pub(crate) content: &'a [u8],
}

/// The file name of a device target with content hash `hash`: `<hex hash>.<id>.json`
/// (consistent snapshots put the hash on the file name), built into `name`.
pub(crate) fn device_file_name<'n>(name: &'n mut String, hash: &[u8; 32], id: &str) -> &'n str {
    let mut hex_hash = [0u8; 64];
    hex::encode_to_slice(hash, &mut hex_hash).expect("64 hex digits");
    name.clear();
    name.push_str(std::str::from_utf8(&hex_hash).expect("hex is ASCII"));
    name.push('.');
    name.push_str(id);
    name.push_str(".json");
    name
}

/// Up to `limit` of the device instructions published in the repository at `repo` (its
/// `targets/devices/` files, in no particular order; none when nothing was published):
/// a sample of what devices have been told, for checks that need no complete list.
pub fn sample_instructions(
    repo: &Path,
    limit: usize,
) -> Result<Vec<crate::protocol::DeviceInstruction>, PublishError> {
    let dir = repo.join("targets").join("devices");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PublishError::io("read", &dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries.take(limit) {
        let path = entry.map_err(PublishError::io("read", &dir))?.path();
        let bytes = fs::read(&path).map_err(PublishError::io("read", &path))?;
        let instruction = serde_json::from_slice(&bytes).map_err(|source| PublishError::ParseMetadata {
            role: "device target".into(),
            path: path.clone(),
            source,
        })?;
        out.push(instruction);
    }
    Ok(out)
}

/// What the writer wrote: files and bytes (files already there are not counted).
#[derive(Default)]
pub(crate) struct Written {
    pub(crate) files: u64,
    pub(crate) bytes: u64,
}

/// `targets/devices/`, open for a commit.
pub(crate) struct DeviceFiles {
    dir: File,
    path: PathBuf,
    /// Set once the writer has met a file that was already there: a repository
    /// republished from existing files finds nearly all of them, a first publish none.
    exist: AtomicBool,
    /// Whether the directory is large enough for [`DeviceFiles::look_up`] to pay.
    large: bool,
}

/// The directory size (bytes of entries, about 130 per file) from which the writer looks
/// new names up in parallel before creating them: about 60,000 files.
const LARGE_DIRECTORY: u64 = 8 << 20;

/// Threads looking names up ahead of the writer.
const LOOKUP_THREADS: usize = 8;

impl DeviceFiles {
    /// Opens (creating it if needed) the directory of device target files.
    pub(crate) fn open(path: PathBuf) -> Result<Self, PublishError> {
        fs::create_dir_all(&path).map_err(PublishError::io("create", &path))?;
        let dir = File::open(&path).map_err(PublishError::io("open", &path))?;
        let large = dir.metadata().map_err(PublishError::io("read", &path))?.len() >= LARGE_DIRECTORY;
        Ok(DeviceFiles { dir, path, exist: AtomicBool::new(false), large })
    }

    /// Whether `name` still has to be written: false when a complete copy (`length`
    /// bytes) is there. Looks only once the writer has found files already there, so a
    /// first publish pays nothing for it; the lookups run on the threads that call this,
    /// in parallel, and only the files to create reach the writer.
    pub(crate) fn needs(&self, hash: &[u8; 32], id: &str, length: u64) -> Result<bool, PublishError> {
        if !self.exist.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let mut name = String::with_capacity(128);
        let name = device_file_name(&mut name, hash, id);
        let len = len_in(&self.dir, &self.path, name).map_err(|e| PublishError::Io {
            action: "read",
            path: self.path.join(name),
            source: e,
        })?;
        Ok(len != Some(length))
    }

    /// Writes every file received on `files`, until the senders are gone. Stops at the
    /// first error; the senders then see a closed channel.
    pub(crate) fn write(&self, files: Receiver<Vec<NewFile<'_>>>) -> Result<Written, PublishError> {
        let mut written = Written::default();
        let mut expect_existing = false;
        let mut name = String::with_capacity(128);
        for batch in files {
            if self.large {
                self.look_up(&batch);
            }
            for file in batch {
                let name = device_file_name(&mut name, &file.hash, file.id);
                if write_target_file(&self.dir, &self.path, name, file.content, &mut expect_existing)? {
                    written.files += 1;
                    written.bytes += file.content.len() as u64;
                }
                if expect_existing {
                    self.exist.store(true, Ordering::Relaxed);
                }
            }
        }
        Ok(written)
    }

    /// Looks the names of `files` up from several threads. In a large directory whose
    /// blocks are not all cached (a wave into a repository of a million devices), each
    /// create first reads the directory block its name hashes to; lookups share the
    /// directory's lock where creates do not, so these reads overlap, and the creates
    /// that follow find their blocks in memory. What the lookups find changes nothing:
    /// the writer still creates each file exclusively.
    fn look_up(&self, files: &[NewFile<'_>]) {
        if files.len() < 2 * LOOKUP_THREADS {
            return;
        }
        std::thread::scope(|scope| {
            for part in files.chunks(files.len().div_ceil(LOOKUP_THREADS)) {
                scope.spawn(move || {
                    let mut name = String::with_capacity(128);
                    for file in part {
                        let _ =
                            len_in(&self.dir, &self.path, device_file_name(&mut name, &file.hash, file.id));
                    }
                });
            }
        });
    }
}

/// Writes a content-addressed target file unless it is already there. The name is the
/// content's hash, so an existing file of the right length is this content; a shorter one
/// is what a crash mid-write leaves, and is written again. Written in place, without a
/// temporary file: no client can have been told about a file before it is complete.
pub(crate) fn write_target_file(
    dir: &File,
    dir_path: &Path,
    name: &str,
    content: &[u8],
    expect_existing: &mut bool,
) -> Result<bool, PublishError> {
    let path = || dir_path.join(name);
    if *expect_existing {
        match len_in(dir, dir_path, name).map_err(|e| PublishError::Io {
            action: "read",
            path: path(),
            source: e,
        })? {
            Some(len) if len == content.len() as u64 => return Ok(false),
            Some(_) => return rewrite(&path(), content),
            None => *expect_existing = false,
        }
    }
    let mut file = match create_new_in(dir, dir_path, name) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            *expect_existing = true;
            let len = len_in(dir, dir_path, name)
                .map_err(|e| PublishError::Io { action: "read", path: path(), source: e })?
                .unwrap_or(0);
            if len == content.len() as u64 {
                return Ok(false);
            }
            return rewrite(&path(), content);
        }
        Err(e) => return Err(PublishError::Io { action: "create", path: path(), source: e }),
    };
    file.write_all(content).map_err(PublishError::io("write", path()))?;
    Ok(true)
}

fn rewrite(path: &PathBuf, content: &[u8]) -> Result<bool, PublishError> {
    fs::write(path, content).map_err(PublishError::io("write", path))?;
    Ok(true)
}

/// Creates `name` in the open directory `dir` (which is `dir_path`), failing if it exists.
#[cfg(target_os = "linux")]
fn create_new_in(dir: &File, _dir_path: &Path, name: &str) -> std::io::Result<File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let name = c_name(name)?;
    // SAFETY: `dir` is an open directory and `name` a NUL-terminated string; the returned
    // descriptor is new and owned by the File built from it.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o666 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a valid descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
fn create_new_in(_dir: &File, dir_path: &Path, name: &str) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(dir_path.join(name))
}

/// The length of `name` in the open directory `dir`, or `None` if there is no such file.
#[cfg(target_os = "linux")]
fn len_in(dir: &File, _dir_path: &Path, name: &str) -> std::io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let name = c_name(name)?;
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `dir` is an open directory, `name` NUL-terminated, `st` large enough.
    let rc =
        unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::NotFound { Ok(None) } else { Err(e) };
    }
    // SAFETY: fstatat succeeded and filled `st`.
    Ok(Some(unsafe { st.assume_init() }.st_size as u64))
}

#[cfg(not(target_os = "linux"))]
fn len_in(_dir: &File, dir_path: &Path, name: &str) -> std::io::Result<Option<u64>> {
    match fs::symlink_metadata(dir_path.join(name)) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(target_os = "linux")]
fn c_name(name: &str) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_directory_gets_the_same_files_with_names_looked_up_first() {
        let tmp = tempfile::TempDir::new().unwrap();
        let docs: Vec<(String, Vec<u8>)> = (0..100)
            .map(|i| (format!("dev-{i}"), format!("{{\"device\":\"dev-{i}\"}}").into_bytes()))
            .collect();
        let files = || -> Vec<NewFile<'_>> {
            docs.iter()
                .map(|(id, content)| NewFile { hash: super::super::signing::sha256(content), id, content })
                .collect()
        };
        // One of them is there already, one is cut short as a crash would leave it.
        let mut name = String::new();
        let first = &files()[0];
        let dir = tmp.path().join("devices");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(device_file_name(&mut name, &first.hash, first.id)), first.content).unwrap();
        let second = &files()[1];
        fs::write(dir.join(device_file_name(&mut name, &second.hash, second.id)), b"{").unwrap();

        let mut device_files = DeviceFiles::open(dir.clone()).unwrap();
        device_files.large = true;
        let (sender, receiver) = std::sync::mpsc::sync_channel(4);
        sender.send(files()).unwrap();
        drop(sender);
        let written = device_files.write(receiver).unwrap();
        assert_eq!(written.files, 99);
        for file in files() {
            assert_eq!(
                fs::read(dir.join(device_file_name(&mut name, &file.hash, file.id))).unwrap(),
                file.content
            );
        }
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 100);
    }
}
