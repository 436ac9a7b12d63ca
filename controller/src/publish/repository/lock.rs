//! The repository's writer lock.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use fs4::fs_std::FileExt;

use crate::publish::PublishError;

use super::LOCK_FILE;

/// Takes the repository's writer lock without waiting, and records our pid in it.
pub(super) fn lock(dir: &Path) -> Result<File, PublishError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(PublishError::io("open", &path))?;
    match file.try_lock_exclusive() {
        Ok(true) => {}
        Ok(false) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            return Err(PublishError::Locked { repo: dir.to_owned(), holder: pid.trim().parse().ok() });
        }
        Err(e) => return Err(PublishError::Io { action: "lock", path, source: e }),
    }
    file.set_len(0).map_err(PublishError::io("write", &path))?;
    file.rewind().map_err(PublishError::io("write", &path))?;
    write!(file, "{}", std::process::id()).map_err(PublishError::io("write", &path))?;
    Ok(file)
}
