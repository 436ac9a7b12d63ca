//! The one error type of the publish stage. Every variant names the file, role or
//! repository it concerns, so an operator can act on the message alone.

use std::path::PathBuf;

/// A boxed error from a key source or signer (tough's key sources report errors this way).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the TUF publisher.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// Another process holds the repository's writer lock.
    #[error(
        "TUF repository {} is locked by another writer{}; only one writer per repository may run",
        repo.display(),
        holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Locked {
        /// The repository directory.
        repo: PathBuf,
        /// Process id recorded by the holder, when it could be read.
        holder: Option<u32>,
    },

    /// A file system operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "write", "rename", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A metadata file could not be parsed.
    #[error("cannot parse {role} metadata {}: {source}", path.display())]
    ParseMetadata {
        /// The role whose metadata this is.
        role: String,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: serde_json::Error,
    },

    /// Metadata could not be serialised to canonical JSON.
    #[error("cannot serialise {role} metadata: {source}")]
    Serialise {
        /// The role being serialised.
        role: String,
        /// The underlying error.
        source: serde_json::Error,
    },

    /// The signer refused to sign.
    #[error("cannot sign {role} metadata: {source}")]
    Sign {
        /// The role being signed.
        role: String,
        /// The signer's error.
        source: BoxError,
    },

    /// A key file could not be loaded or created.
    #[error("cannot use key {}: {source}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// The key source's error.
        source: BoxError,
    },

    /// The key directory is missing something or is inconsistent.
    #[error("key directory {}: {reason}", dir.display())]
    KeyDir {
        /// The key directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A signed `releases` file was refused.
    #[error("signed releases refused: {reason}")]
    InvalidReleases {
        /// Why.
        reason: String,
    },

    /// A release artifact is not in the `releases` role signed by the release keys, or is
    /// listed there with another length or hash.
    #[error("release artifact {target} is not in the signed releases role{detail}")]
    ReleaseNotSigned {
        /// `releases/<release>/<file>`.
        target: String,
        /// Empty, or how the signed entry differs.
        detail: String,
    },

    /// The repository directory is not a Waveguide TUF repository, or already is one.
    #[error("TUF repository {}: {reason}", repo.display())]
    Repository {
        /// The repository directory.
        repo: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// Published metadata does not agree with itself (a file the snapshot names is missing,
    /// or holds another version).
    #[error("{role} metadata {} is inconsistent: {reason}", path.display())]
    Inconsistent {
        /// The role concerned.
        role: String,
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A device id breaks the rule of device ids.
    #[error("device id {id:?} cannot be published: {reason}")]
    InvalidDevice {
        /// The offending id.
        id: String,
        /// Why it is refused.
        reason: crate::protocol::DeviceIdError,
    },

    /// A device is named more than once in one batch.
    #[error("device {id} appears more than once in the batch")]
    DuplicateDevice {
        /// The device id.
        id: String,
    },

    /// A release artifact is malformed or its local file does not match it.
    #[error("release artifact {target}: {reason}")]
    InvalidArtifact {
        /// The artifact's target path, `releases/<release>/<file>`.
        target: String,
        /// What is wrong.
        reason: String,
    },

    /// A configuration value is out of range.
    #[error("invalid TUF configuration: {0}")]
    Config(String),

    /// `tough` refused a value (a target name, a key).
    #[error("{what}: {source}")]
    Tough {
        /// What was being built.
        what: String,
        /// tough's error (boxed: it carries a backtrace).
        source: Box<tough::error::Error>,
    },

    /// `tough` refused a metadata value (a key, a path pattern, a hash prefix).
    #[error("{what}: {source}")]
    ToughSchema {
        /// What was being built.
        what: String,
        /// tough's error (boxed: it carries a backtrace).
        source: Box<tough::schema::Error>,
    },

    /// A failure injected by the crash-safety tests between two commit steps.
    #[cfg(test)]
    #[error("injected failure after {0:?}")]
    InjectedFault(super::repository::CommitStep),
}

impl PublishError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| PublishError::Io { action, path, source }
    }
}
