//! Wakes the source when a local repository's references move, so a commit to a repository
//! on the same machine is picked up at once instead of at the next poll.

use std::path::{Component, Path};
use std::sync::Arc;

use git2::Repository;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::Notify;

use super::SourceError;

/// Watches a local repository's `HEAD`, `packed-refs` and `refs/` for as long as it lives.
pub struct LocalWatcher {
    // Dropping the watcher stops it.
    _watcher: notify::RecommendedWatcher,
}

impl LocalWatcher {
    /// Watches the repository at `repository` (a working tree or a bare repository) and
    /// notifies `wake` whenever a reference changes: a commit, a push into it, a fetch,
    /// a tag. Object writes alone do not wake it: until a reference moves, nothing
    /// the source follows has changed.
    pub fn new(repository: &Path, wake: Arc<Notify>) -> Result<LocalWatcher, SourceError> {
        let repo = Repository::open(repository).map_err(|e| SourceError::OpenRepository {
            path: repository.to_owned(),
            message: e.message().to_owned(),
        })?;
        let git_dir = repo.path().to_owned();
        let watch_error =
            |e: notify::Error| SourceError::Watch { path: git_dir.clone(), message: e.to_string() };
        let events_dir = git_dir.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // An error from the watcher is a reason to look, too: the poll decides.
            let moved = event.map_or(true, |event| {
                changes(&event.kind)
                    && event
                        .paths
                        .iter()
                        .any(|path| is_reference(path.strip_prefix(&events_dir).unwrap_or(path)))
            });
            if moved {
                wake.notify_one();
            }
        })
        .map_err(watch_error)?;
        // The git directory itself holds HEAD and packed-refs; watching it recursively
        // would also report every object written.
        watcher.watch(&git_dir, RecursiveMode::NonRecursive).map_err(watch_error)?;
        watcher.watch(&git_dir.join("refs"), RecursiveMode::Recursive).map_err(watch_error)?;
        Ok(LocalWatcher { _watcher: watcher })
    }
}

/// Whether an event of this kind can mean that a reference moved. Reads do not: the
/// source's own fetch opens and reads `HEAD` and the references, and counting those
/// (inotify reports every open) would make each fetch wake the next one, for ever.
fn changes(kind: &EventKind) -> bool {
    !matches!(kind, EventKind::Access(_))
}

/// Whether `path`, relative to the git directory, is a reference (not a lock file being
/// written: the rename that completes the update is reported under the final name).
fn is_reference(path: &Path) -> bool {
    if path.extension().is_some_and(|e| e == "lock") {
        return false;
    }
    match path.components().next() {
        Some(Component::Normal(first)) => first == "refs" || first == "HEAD" || first == "packed-refs",
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_do_not_count() {
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        assert!(!changes(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!changes(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(changes(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(changes(&EventKind::Create(CreateKind::File)));
    }

    #[test]
    fn only_references_count() {
        for path in ["refs/heads/main", "HEAD", "packed-refs", "refs/tags/v1"] {
            assert!(is_reference(Path::new(path)), "{path}");
        }
        for path in ["refs/heads/main.lock", "objects/ab/cdef", "index", "logs/HEAD", "ORIG_HEAD"] {
            assert!(!is_reference(Path::new(path)), "{path}");
        }
    }
}
