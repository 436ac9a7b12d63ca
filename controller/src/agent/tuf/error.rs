//! Why an update check was refused, and the constructors the client uses for the
//! common refusals.

use jiff::Timestamp;
use reqwest::StatusCode;

/// Why an update check was refused. Nothing of a refused check becomes trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TufError {
    /// The request failed.
    #[error("fetching {url}: {source}")]
    Http {
        /// What was fetched.
        url: String,
        /// Why it failed.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("fetching {url}: HTTP {status}")]
    Status {
        /// What was fetched.
        url: String,
        /// The status.
        status: StatusCode,
    },
    /// More bytes than the signed (or default) length.
    #[error("{what} is longer than {limit} bytes")]
    TooLong {
        /// The file.
        what: String,
        /// Its limit.
        limit: u64,
    },
    /// A role is listed with a length above what the agent reads of such a role.
    #[error("{role} is listed at {length} bytes, over its cap of {cap} bytes")]
    OverCap {
        /// The role.
        role: String,
        /// The length the snapshot (or timestamp) lists.
        length: u64,
        /// The most the agent reads of this role.
        cap: u64,
    },
    /// Not valid metadata JSON.
    #[error("{role} metadata does not parse: {reason}")]
    Parse {
        /// The role.
        role: String,
        /// The parser's message.
        reason: String,
    },
    /// A threshold of valid signatures is missing.
    #[error("{role} metadata is not signed by its keys: {reason}")]
    Signature {
        /// The role.
        role: String,
        /// tough's message.
        reason: String,
    },
    /// The metadata is past its expiry.
    #[error("{role} metadata expired at {expires}")]
    Expired {
        /// The role.
        role: String,
        /// When it expired.
        expires: Timestamp,
    },
    /// A role's version went back.
    #[error("{role} version {new} is older than the trusted version {trusted} (rollback)")]
    Rollback {
        /// The role.
        role: String,
        /// The version trusted.
        trusted: u64,
        /// The version offered.
        new: u64,
    },
    /// A role's version is not the one its referrer names.
    #[error("{role} has version {found}, {referrer} names version {expected}")]
    Version {
        /// The role.
        role: String,
        /// Who names it (`timestamp`, `snapshot`, a root file name).
        referrer: String,
        /// The version named.
        expected: u64,
        /// The version found.
        found: u64,
    },
    /// A file's hash or length does not match what signed metadata says.
    #[error("{what} does not match its signed {field}")]
    Mismatch {
        /// The file.
        what: String,
        /// `sha256` or `length`.
        field: &'static str,
    },
    /// A role the walk needs is not listed where it must be.
    #[error("{role} is missing from {referrer}")]
    Missing {
        /// The role.
        role: String,
        /// Where it should be listed.
        referrer: String,
    },
    /// The device's target is not valid instruction JSON.
    #[error("device instruction {target} does not parse: {reason}")]
    Instruction {
        /// The target path.
        target: String,
        /// The parser's message.
        reason: String,
    },
}

impl TufError {
    pub(super) fn is_signature(&self) -> bool {
        matches!(self, TufError::Signature { .. })
    }
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(role: &str, bytes: &[u8]) -> Result<T, TufError> {
    serde_json::from_slice(bytes).map_err(|e| TufError::Parse { role: role.into(), reason: e.to_string() })
}

pub(super) fn signature(role: &str, error: impl std::fmt::Display) -> TufError {
    TufError::Signature { role: role.into(), reason: error.to_string() }
}

pub(super) fn rollback(role: &str, trusted: u64, new: u64) -> TufError {
    TufError::Rollback { role: role.into(), trusted, new }
}

pub(super) fn check_expiry(role: &str, expires: Timestamp, now: Timestamp) -> Result<(), TufError> {
    if expires <= now {
        return Err(TufError::Expired { role: role.into(), expires });
    }
    Ok(())
}
