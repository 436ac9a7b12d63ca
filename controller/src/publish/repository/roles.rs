//! Signing the roles above the leaves, and the versions and expiries every role gets.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU64;

use jiff::{SignedDuration, Timestamp};
use rayon::prelude::*;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{DelegatedRole, Delegations, Hashes, PathHashPrefix, PathSet, Target, Targets};
use tough::TargetName;

use crate::publish::canonical::leaf_canonical_json;
use crate::publish::signing::{canonical_json, sign_canonical, Signer};
use crate::publish::{expiry_after, PublishError, SPEC_VERSION};

use super::{listed_roles, Repository, RoleFile, DEVICES_ROLE, RELEASES_ROLE};

impl Repository {
    /// The online roles above the leaves, signed at their next versions: `devices`, the
    /// parent roles, and an empty `releases` when the online key signs it and the
    /// repository has none yet. `versions` holds the published version of each role
    /// (empty for a new repository). `targets` is signed offline and not among them.
    pub(super) fn all_delegating_roles(
        &self,
        versions: &BTreeMap<String, u64>,
    ) -> Result<Vec<RoleFile>, PublishError> {
        let layout = self.config.layout;
        let next = |role: &str| versions.get(role).copied().unwrap_or(0) + 1;
        let mut top = Vec::new();
        if layout.parents() == 0 {
            for leaf in 0..layout.leaves() {
                top.push(delegated(
                    &layout.leaf_name(leaf),
                    prefixes(layout.leaf_prefixes(leaf))?,
                    &self.online,
                ));
            }
        } else {
            for parent in 0..layout.parents() {
                top.push(delegated(
                    &layout.parent_name(parent),
                    prefixes(layout.parent_prefixes(parent))?,
                    &self.online,
                ));
            }
        }
        let mut files = vec![self.sign_targets(
            DEVICES_ROLE,
            self.delegating(top),
            next(DEVICES_ROLE),
            self.config.expiries.targets,
        )?];
        if self.releases_online && !versions.contains_key(RELEASES_ROLE) {
            files.push(self.sign_targets(RELEASES_ROLE, empty_targets(), 1, self.config.expiries.targets)?);
        }
        let parents = (0..layout.parents())
            .into_par_iter()
            .map(|parent| {
                let roles = layout
                    .leaves_of(parent)
                    .map(|leaf| {
                        Ok(delegated(
                            &layout.leaf_name(leaf),
                            prefixes(layout.leaf_prefixes(leaf))?,
                            &self.online,
                        ))
                    })
                    .collect::<Result<Vec<_>, PublishError>>()?;
                let name = layout.parent_name(parent);
                self.sign_targets(&name, self.delegating(roles), next(&name), self.config.expiries.snapshot)
            })
            .collect::<Result<Vec<_>, _>>()?;
        files.extend(parents);
        Ok(files)
    }

    fn delegating(&self, roles: Vec<DelegatedRole>) -> Targets {
        let mut targets = empty_targets();
        targets.delegations = Some(Delegations {
            keys: HashMap::from([(self.online.keyid().clone(), self.online.key().clone())]),
            roles,
        });
        targets
    }

    /// Signs `targets` as `role` at the first unused version ≥ `version`, expiring after
    /// `period`.
    pub(super) fn sign_targets(
        &self,
        role: &str,
        mut targets: Targets,
        version: u64,
        period: SignedDuration,
    ) -> Result<RoleFile, PublishError> {
        let version = self.stamp(role, &mut targets, version, period);
        let body = match leaf_canonical_json(role, &targets)? {
            Some(body) => body,
            None => canonical_json(role, &targets)?,
        };
        let file = sign_canonical(role, body, &[&self.online])?;
        Ok(RoleFile { role: role.to_owned(), version, len: file.len() as u64, file: Some(file) })
    }

    /// Sets the version (the first unused one ≥ `version`), expiry and spec version of a
    /// role about to be signed; returns the version.
    pub(super) fn stamp(
        &self,
        role: &str,
        targets: &mut Targets,
        version: u64,
        period: SignedDuration,
    ) -> u64 {
        let version = self.unused_version(role, version);
        targets.version = NonZeroU64::new(version).expect("versions start at 1");
        targets.expires = expiry_after(period);
        targets.spec_version = SPEC_VERSION.to_owned();
        version
    }

    /// The first version ≥ `from` with no file on disk. A crashed commit may have left
    /// `<v>.<role>.json` behind without publishing it; that number is never reused with
    /// other content, so no cache or mirror can hold two files under one name.
    pub(super) fn unused_version(&self, role: &str, from: u64) -> u64 {
        let meta = self.metadata_dir();
        let mut version = from.max(1);
        while meta.join(format!("{version}.{role}.json")).exists() {
            version += 1;
        }
        version
    }

    /// Every role the published snapshot lists, with its version.
    pub(super) fn published_versions(&self) -> BTreeMap<String, u64> {
        listed_roles(&self.snapshot).map(|(role, version)| (role.to_owned(), version)).collect()
    }

    pub(super) fn role_version(&self, role: &str) -> u64 {
        self.snapshot.meta.get(&format!("{role}.json")).map_or(0, |m| m.version.get())
    }

    pub(super) fn expiry_of(&self, role: &str) -> SignedDuration {
        match role {
            DEVICES_ROLE | RELEASES_ROLE => self.config.expiries.targets,
            _ => self.config.expiries.snapshot,
        }
    }
}

/// An empty targets role (version and expiry are set when it is signed).
pub(super) fn empty_targets() -> Targets {
    Targets::new(SPEC_VERSION.to_owned(), NonZeroU64::MIN, Timestamp::UNIX_EPOCH)
}

fn delegated(name: &str, paths: PathSet, online: &Signer) -> DelegatedRole {
    DelegatedRole {
        name: name.to_owned(),
        keyids: vec![online.keyid().clone()],
        threshold: NonZeroU64::MIN,
        paths,
        // A target belongs to exactly one bin; once its bin is searched, stop.
        terminating: true,
        targets: None,
    }
}

fn prefixes(list: Vec<String>) -> Result<PathSet, PublishError> {
    Ok(PathSet::PathHashPrefixes(
        list.into_iter()
            .map(|p| {
                PathHashPrefix::new(p).map_err(|source| PublishError::ToughSchema {
                    what: "invalid hash prefix".into(),
                    source: Box::new(source),
                })
            })
            .collect::<Result<_, _>>()?,
    ))
}

pub(crate) fn target_name(path: String) -> Result<TargetName, PublishError> {
    TargetName::new(path.clone()).map_err(|source| PublishError::Tough {
        what: format!("invalid target name {path}"),
        source: Box::new(source),
    })
}

pub(crate) fn new_target(length: u64, sha256: Vec<u8>, custom: HashMap<String, serde_json::Value>) -> Target {
    Target {
        length,
        hashes: Hashes { sha256: Decoded::<Hex>::from(sha256), _extra: HashMap::new() },
        custom,
        _extra: HashMap::new(),
    }
}
