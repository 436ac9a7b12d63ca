//! The signed `releases` role: release engineers sign it offline (`waveguide release
//! sign`), the controller checks it against the release keys that `targets` names and
//! publishes it as it is.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::Path;

use jiff::{SignedDuration, Timestamp};
use tough::schema::{Signed, Targets};

use super::keys::{KeyDir, RELEASES_ROLE};
use super::repository::{new_target, target_name};
use super::signing::{sign_metadata, Signer};
use super::{expiry_after, PublishError, ReleaseArtifact, SPEC_VERSION};

/// Signs a `releases` role listing `artifacts` with every release key in `keys`: version
/// one more than `previous` (a `releases` file signed before), else one more than the
/// newest in the key directory (`keys init` signs an empty version 1), else 1. Returns
/// the version and the file.
pub fn sign_releases(
    keys: &KeyDir,
    artifacts: &[ReleaseArtifact],
    previous: Option<&Path>,
    expiry: SignedDuration,
) -> Result<(u64, Vec<u8>), PublishError> {
    let previous = match previous {
        Some(path) => Some(std::fs::read(path).map_err(PublishError::io("read", path))?),
        None => keys.initial_releases()?,
    };
    let version = match previous {
        Some(bytes) => parse_releases(&bytes)?.signed.version.get() + 1,
        None => 1,
    };
    let mut releases = Targets::new(
        SPEC_VERSION.to_owned(),
        NonZeroU64::new(version).expect("versions start at 1"),
        expiry_after(expiry),
    );
    for artifact in artifacts {
        let (name, target) = release_target(artifact)?;
        if let Some(listed) = releases.targets.get(&name) {
            if *listed != target {
                return Err(PublishError::InvalidArtifact {
                    target: artifact.target_path(),
                    reason: "listed twice with different content".into(),
                });
            }
        }
        releases.targets.insert(name, target);
    }
    let signers = keys.release_signers()?;
    let refs: Vec<&Signer> = signers.iter().collect();
    Ok((version, sign_metadata(RELEASES_ROLE, &releases, &refs)?))
}

/// The target an artifact is listed as in `releases`: its path, and its length, sha256
/// and `custom.url`.
pub(crate) fn release_target(
    artifact: &ReleaseArtifact,
) -> Result<(tough::TargetName, tough::schema::Target), PublishError> {
    let target = artifact.target_path();
    let invalid = |reason: String| PublishError::InvalidArtifact { target: target.clone(), reason };
    for part in [&artifact.release, &artifact.name] {
        if part.is_empty() || part.contains(['/', '\\']) || part == "." || part == ".." {
            return Err(invalid(format!("{part:?} cannot be a path segment")));
        }
    }
    let hash: [u8; 32] = hex::decode(&artifact.sha256)
        .ok()
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| invalid(format!("sha256 {:?} is not 64 hex digits", artifact.sha256)))?;
    let custom = HashMap::from([("url".to_owned(), serde_json::Value::String(artifact.url.clone()))]);
    Ok((target_name(target.clone())?, new_target(artifact.length, hash.to_vec(), custom)))
}

/// Parses a `releases` file.
pub(crate) fn parse_releases(bytes: &[u8]) -> Result<Signed<Targets>, PublishError> {
    serde_json::from_slice(bytes)
        .map_err(|e| PublishError::InvalidReleases { reason: format!("not a TUF targets role: {e}") })
}

/// Checks a signed `releases` file before it is published: signed by the threshold of
/// release keys that `targets` (`delegator`) names, a version above `published`, not
/// expired, only `releases/<release>/<file>` targets.
pub(crate) fn verify_releases(
    bytes: &[u8],
    delegator: &Targets,
    published: u64,
) -> Result<Signed<Targets>, PublishError> {
    let invalid = |reason: String| PublishError::InvalidReleases { reason };
    let releases = parse_releases(bytes)?;
    let delegations =
        delegator.delegations.as_ref().ok_or_else(|| invalid("targets delegates to no role".into()))?;
    delegations
        .verify_role(&releases, RELEASES_ROLE)
        .map_err(|e| invalid(format!("not signed by the release keys that targets names: {e}")))?;
    let version = releases.signed.version.get();
    if version <= published {
        return Err(invalid(format!(
            "version {version} is not above the published version {published} (a replayed or rolled-back file)"
        )));
    }
    if releases.signed.expires <= Timestamp::now() {
        return Err(invalid(format!("version {version} expired at {}", releases.signed.expires)));
    }
    if releases.signed.delegations.as_ref().is_some_and(|d| !d.roles.is_empty()) {
        return Err(invalid("releases may not delegate".into()));
    }
    for name in releases.signed.targets.keys() {
        let parts: Vec<&str> = name.raw().split('/').collect();
        if parts.len() != 3 || parts[0] != RELEASES_ROLE || parts[1..].iter().any(|p| p.is_empty()) {
            return Err(invalid(format!("target {:?} is not releases/<release>/<file>", name.raw())));
        }
    }
    Ok(releases)
}
