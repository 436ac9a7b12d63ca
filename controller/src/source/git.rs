//! Fleet files from one commit of a Git repository, read from the object database without
//! a checkout, so any revision can be compiled without touching the working tree.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use git2::{ObjectType, Oid, Repository, TreeWalkMode, TreeWalkResult};

use super::{is_fleet_file, FleetFile, FleetFiles, SourceError};

/// Reads every `*.yaml` / `*.yml` file under `subdir` (`""` or `"."` for the whole tree)
/// in the commit that `rev` names: a branch, a tag (annotated or not), a commit id or
/// any other `git rev-parse` expression such as `HEAD~1`. Paths are relative to `subdir`.
/// Hidden entries, symbolic links and submodules are skipped.
pub fn read_commit(repository: &Path, rev: &str, subdir: &str) -> Result<FleetFiles, SourceError> {
    let repo = Repository::open(repository).map_err(|e| SourceError::OpenRepository {
        path: repository.to_owned(),
        message: e.message().to_owned(),
    })?;
    read_tree(&repo, repository, rev, subdir)
}

/// Reads the directory `dir` of a working tree as it is in commit `rev` of the Git
/// repository that contains it (found by walking up from `dir`, as `git` does). Paths
/// are relative to `dir`. This is what `waveguide validate DIR --rev REV` reads.
pub fn read_commit_of_dir(dir: &Path, rev: &str) -> Result<FleetFiles, SourceError> {
    let repo = Repository::discover(dir)
        .map_err(|e| SourceError::OpenRepository { path: dir.to_owned(), message: e.message().to_owned() })?;
    let subdir = match repo.workdir() {
        Some(workdir) => {
            let canonical =
                |p: &Path| p.canonicalize().map_err(|source| SourceError::Io { path: p.to_owned(), source });
            let (dir, workdir) = (canonical(dir)?, canonical(workdir)?);
            let relative = dir.strip_prefix(&workdir).unwrap_or(Path::new(""));
            // Git paths are `/`-separated on every platform.
            relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
        }
        None => String::new(),
    };
    read_tree(&repo, dir, rev, &subdir)
}

fn read_tree(
    repo: &Repository,
    repository: &Path,
    rev: &str,
    subdir: &str,
) -> Result<FleetFiles, SourceError> {
    let commit = repo.revparse_single(rev).and_then(|object| object.peel_to_commit()).map_err(|e| {
        SourceError::UnknownRevision {
            repository: repository.to_owned(),
            rev: rev.to_owned(),
            message: e.message().to_owned(),
        }
    })?;
    let tree = fleet_tree(repo, repository, &commit, rev, subdir)?;
    read_blobs(repo, repository, &tree, &mut Blobs::new())
}

/// A `git2` error as a [`SourceError::Git`] about reading `what` from `repository`.
pub(super) fn git_error(repository: &Path, what: &str) -> impl FnOnce(git2::Error) -> SourceError {
    let (repository, what) = (repository.to_owned(), what.to_owned());
    move |e| SourceError::Git { repository, what, message: e.message().to_owned() }
}

/// The tree of the fleet path `subdir` (`""` or `"."` for the root) in `commit`; `rev` is
/// how the caller named the commit, for errors.
pub(super) fn fleet_tree<'r>(
    repo: &'r Repository,
    repository: &Path,
    commit: &git2::Commit<'r>,
    rev: &str,
    subdir: &str,
) -> Result<git2::Tree<'r>, SourceError> {
    let commit_id = commit.id().to_string();
    let root = commit.tree().map_err(git_error(repository, "the commit's tree"))?;
    let subdir = subdir.trim_matches('/');
    if subdir.is_empty() || subdir == "." {
        return Ok(root);
    }
    let entry = root.get_path(Path::new(subdir)).map_err(|_| SourceError::PathNotInCommit {
        rev: rev.to_owned(),
        commit: commit_id.clone(),
        path: subdir.to_owned(),
    })?;
    if entry.kind() != Some(ObjectType::Tree) {
        return Err(SourceError::PathNotADirectory {
            rev: rev.to_owned(),
            commit: commit_id,
            path: subdir.to_owned(),
        });
    }
    repo.find_tree(entry.id()).map_err(git_error(repository, subdir))
}

/// Blob contents by blob id.
pub(super) type Blobs = HashMap<Oid, Arc<[u8]>>;

/// Reads the fleet files of `tree` from the object database. Hidden entries and
/// submodules are skipped; symbolic links are not followed but listed in
/// [`FleetFiles::links`], as a working directory's are. Blobs already in `known` are not
/// read again (and keep sharing their buffer, which lets the compiler see they are
/// unchanged); `known` then holds the blobs of `tree`.
pub(super) fn read_blobs(
    repo: &Repository,
    repository: &Path,
    tree: &git2::Tree<'_>,
    known: &mut Blobs,
) -> Result<FleetFiles, SourceError> {
    // Collect the blob ids first: reading blobs inside the walk callback could not report
    // errors with context.
    let mut blobs = Vec::new();
    let mut links = Vec::new();
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        let Ok(name) = entry.name() else { return TreeWalkResult::Skip };
        if name.starts_with('.') {
            return TreeWalkResult::Skip;
        }
        // 0o100644 and 0o100755 are regular files, 0o120000 a symbolic link (its blob is
        // the target's path), 0o160000 a submodule.
        let blob = entry.kind() == Some(ObjectType::Blob);
        match entry.filemode() & 0o170000 {
            0o100000 if blob && is_fleet_file(name) => blobs.push((format!("{dir}{name}"), entry.id())),
            0o120000 if blob => links.push(format!("{dir}{name}")),
            _ => {}
        }
        TreeWalkResult::Ok
    })
    .map_err(git_error(repository, "the commit's tree"))?;

    let mut files = Vec::with_capacity(blobs.len());
    let mut read = HashMap::with_capacity(blobs.len());
    for (path, id) in blobs {
        let contents = match known.get(&id) {
            Some(contents) => contents.clone(),
            None => {
                let blob = repo.find_blob(id).map_err(git_error(repository, &path))?;
                Arc::from(blob.content())
            }
        };
        read.insert(id, contents.clone());
        files.push(FleetFile { path: path.into(), contents });
    }
    *known = read;
    Ok(FleetFiles::new(files).with_links(links))
}

#[cfg(test)]
mod tests {
    use super::*;
    use git2::{Signature, Time};
    use std::fs;

    /// A repository with two commits on `main`, a lightweight tag on the first and an
    /// annotated tag on the second; the fleet lives under `fleet/`.
    fn repository() -> (tempfile::TempDir, git2::Oid, git2::Oid) {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let sig = Signature::new("Fleet Operator", "ops@example.com", &Time::new(1_700_000_000, 0)).unwrap();
        let commit = |files: &[(&str, &str)], parents: &[git2::Oid]| {
            for (path, text) in files {
                let full = dir.path().join(path);
                fs::create_dir_all(full.parent().unwrap()).unwrap();
                fs::write(full, text).unwrap();
            }
            let mut index = repo.index().unwrap();
            index.add_all(["*"], git2::IndexAddOption::DEFAULT, None).unwrap();
            index.write().unwrap();
            let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
            let parents: Vec<_> = parents.iter().map(|p| repo.find_commit(*p).unwrap()).collect();
            let parents: Vec<_> = parents.iter().collect();
            repo.commit(Some("refs/heads/main"), &sig, &sig, "change", &tree, &parents).unwrap()
        };
        let first = commit(&[("fleet/groups.yaml", "v1"), ("fleet/notes.txt", "x"), ("README.md", "r")], &[]);
        let second = commit(&[("fleet/groups.yaml", "v2"), ("fleet/eu/sites.yml", "s")], &[first]);
        repo.set_head("refs/heads/main").unwrap();
        repo.tag_lightweight("v1", &repo.find_object(first, None).unwrap(), false).unwrap();
        repo.tag("v2", &repo.find_object(second, None).unwrap(), &sig, "second", false).unwrap();
        (dir, first, second)
    }

    fn paths_and_text(files: &FleetFiles) -> Vec<(String, String)> {
        files
            .files()
            .iter()
            .map(|f| (f.path.to_string(), String::from_utf8(f.contents.to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn reads_a_branch_tags_and_commit_ids() {
        let (dir, first, second) = repository();
        let at = |rev: &str| paths_and_text(&read_commit(dir.path(), rev, "fleet").unwrap());
        let v1 = vec![("groups.yaml".to_owned(), "v1".to_owned())];
        let v2 =
            vec![("eu/sites.yml".to_owned(), "s".to_owned()), ("groups.yaml".to_owned(), "v2".to_owned())];
        assert_eq!(at("main"), v2);
        assert_eq!(at("v2"), v2);
        assert_eq!(at("v1"), v1);
        assert_eq!(at(&first.to_string()), v1);
        assert_eq!(at(&second.to_string()[..10]), v2);
        assert_eq!(at("main~1"), v1);
        let whole = read_commit(dir.path(), "main", "").unwrap();
        assert_eq!(whole.files()[0].path.as_ref(), "fleet/eu/sites.yml");
        // From a directory of the working tree: the same directory in the commit.
        let of_dir = |rev: &str| paths_and_text(&read_commit_of_dir(&dir.path().join("fleet"), rev).unwrap());
        assert_eq!(of_dir("v1"), v1);
        assert_eq!(of_dir("HEAD"), v2);
    }

    #[test]
    fn symbolic_links_are_listed_not_followed() {
        let (dir, _, _) = repository();
        let repo = Repository::open(dir.path()).unwrap();
        // Links as Git stores them: blobs holding the target, with mode 0o120000.
        let mut builder = repo.treebuilder(None).unwrap();
        let target = repo.blob(b"/etc/passwd").unwrap();
        builder.insert("secret.yaml", target, 0o120000).unwrap();
        let to_itself = repo.blob(b"loop.yaml").unwrap();
        builder.insert("loop.yaml", to_itself, 0o120000).unwrap();
        builder.insert("groups.yaml", repo.blob(b"g").unwrap(), 0o100644).unwrap();
        let tree = repo.find_tree(builder.write().unwrap()).unwrap();
        let files = read_blobs(&repo, dir.path(), &tree, &mut Blobs::new()).unwrap();
        assert_eq!(paths_and_text(&files), [("groups.yaml".to_owned(), "g".to_owned())]);
        let links: Vec<_> = files.links().iter().map(|l| &**l).collect();
        assert_eq!(links, ["loop.yaml", "secret.yaml"]);
    }

    #[test]
    fn reports_missing_revisions_and_paths() {
        let (dir, _, _) = repository();
        let err = read_commit(dir.path(), "nope", "fleet").unwrap_err();
        assert!(matches!(err, SourceError::UnknownRevision { .. }), "{err}");
        assert!(err.to_string().contains("\"nope\""), "{err}");
        let err = read_commit(dir.path(), "main", "missing/dir").unwrap_err();
        assert!(matches!(err, SourceError::PathNotInCommit { .. }), "{err}");
        let err = read_commit(dir.path(), "main", "README.md").unwrap_err();
        assert!(matches!(err, SourceError::PathNotADirectory { .. }), "{err}");
        let err = read_commit(&dir.path().join("not-a-repo"), "main", "").unwrap_err();
        assert!(matches!(err, SourceError::OpenRepository { .. }), "{err}");
    }
}
