//! Reading the fleet repository's files: every `*.yaml` / `*.yml` file under a directory,
//! or under a path inside one Git commit, read straight from the object database.
//!
//! The result is a [`FleetFiles`]: relative paths and raw bytes, nothing parsed. Parsing is
//! the compiler's job; keeping the two apart lets the same compiler run on a working
//! tree, on any commit of a repository (for `plan --base --head`) and, later, on what the
//! Git source fetched.
//!
//! [`GitSource`] follows a branch, tag or commit of a remote repository: it keeps a bare
//! mirror up to date, verifies the head commit's signature when asked to, and hands the
//! caller the fleet files only when the fleet path's tree changed. Its [`SourceStatus`]
//! keeps the last good commit in force through fetch failures, refused signatures and
//! invalid commits, and spaces retries with exponential backoff. [`webhook`] and
//! [`LocalWatcher`] wake the source loop early; polling alone is enough for correctness.

mod dir;
mod fetch;
mod git;
mod known_hosts;
mod spec;
mod status;
mod verify;
mod watch;
pub mod webhook;

pub use dir::read_dir;
pub use fetch::{GitSource, Poll, Revision, Update};
pub use git::{read_commit, read_commit_of_dir};
pub use known_hosts::{HostKeyRefusal, KnownHosts};
pub use spec::{Auth, GitReference, Retry, SourceSpec, VerifyMode, VerifySpec};
pub use status::{backoff, SourceStatus};
pub use verify::{Refusal, Signer, Verifier};
pub use watch::LocalWatcher;

use std::path::PathBuf;
use std::sync::Arc;

/// One file of the fleet repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetFile {
    /// Path relative to the fleet root, with `/` separators (`groups/eu.yaml`).
    pub path: Arc<str>,
    /// The file's bytes, not yet decoded. Shared, so that documents loaded from the file
    /// can keep its text without a copy.
    pub contents: Arc<[u8]>,
}

/// The fleet files, sorted by path so that everything built from them is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetFiles {
    files: Vec<FleetFile>,
    links: Vec<Arc<str>>,
}

impl FleetFiles {
    /// Builds the set from files in any order; they are sorted by path.
    pub fn new(mut files: Vec<FleetFile>) -> FleetFiles {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        FleetFiles { files, links: Vec::new() }
    }

    /// The same files, with the symbolic links found next to them (paths relative to the
    /// fleet root, in any order; they are sorted).
    pub fn with_links(mut self, links: Vec<String>) -> FleetFiles {
        self.links = links.into_iter().map(Arc::from).collect();
        self.links.sort();
        self
    }

    /// The symbolic links under the fleet root, sorted by path. Readers never follow
    /// them (a link may lead out of the repository or into a loop); the compiler reports
    /// them.
    pub fn links(&self) -> &[Arc<str>] {
        &self.links
    }

    /// Builds the set from `(path, contents)` pairs, e.g. in tests.
    pub fn from_pairs<P: AsRef<str>, C: Into<Vec<u8>>>(
        pairs: impl IntoIterator<Item = (P, C)>,
    ) -> FleetFiles {
        FleetFiles::new(
            pairs
                .into_iter()
                .map(|(p, c)| FleetFile { path: p.as_ref().into(), contents: c.into().into() })
                .collect(),
        )
    }

    /// The files, sorted by path.
    pub fn files(&self) -> &[FleetFile] {
        &self.files
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when there is no fleet file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Total size of all files in bytes.
    pub fn total_bytes(&self) -> usize {
        self.files.iter().map(|f| f.contents.len()).sum()
    }
}

/// Whether a file name is a fleet document file.
pub fn is_fleet_file(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml")
}

/// Why the fleet files could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The fleet path does not exist or is not a directory.
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    /// The Git repository could not be opened.
    #[error("cannot open the Git repository at {path}: {message}")]
    OpenRepository { path: PathBuf, message: String },
    /// The revision names no commit.
    #[error("revision {rev:?} not found in {repository}: {message}")]
    UnknownRevision { repository: PathBuf, rev: String, message: String },
    /// The path does not exist in the commit.
    #[error("path {path:?} does not exist in commit {commit} ({rev})")]
    PathNotInCommit { rev: String, commit: String, path: String },
    /// The path exists in the commit but is not a directory.
    #[error("path {path:?} in commit {commit} ({rev}) is not a directory")]
    PathNotADirectory { rev: String, commit: String, path: String },
    /// Reading objects from the repository failed.
    #[error("cannot read {what} from {repository}: {message}")]
    Git { repository: PathBuf, what: String, message: String },
    /// Cloning or fetching the remote repository failed (unreachable, gone, refused the
    /// credentials...).
    #[error("cannot fetch {url}: {message}")]
    Fetch { url: String, message: String },
    /// The branch or tag does not exist in the remote repository, or the commit is not
    /// reachable from any of its branches and tags.
    #[error("{reference} not found in {url}")]
    MissingReference { url: String, reference: String },
    /// Signature verification refused the commit the reference points to.
    #[error("commit {commit} refused: {reason}")]
    Refused { commit: String, reason: Refusal },
    /// The verification settings could not be used (a malformed allowed signers file or
    /// OpenPGP key).
    #[error("invalid {what}: {message}")]
    InvalidVerifySettings { what: String, message: String },
    /// The SSH known hosts file could not be read or has a malformed line.
    #[error("invalid known hosts file {path}: {message}")]
    KnownHosts { path: PathBuf, message: String },
    /// The webhook receiver was given an empty secret.
    #[error("the webhook secret is empty")]
    EmptyWebhookSecret,
    /// Watching a local repository for changes failed.
    #[error("cannot watch {path}: {message}")]
    Watch { path: PathBuf, message: String },
}
