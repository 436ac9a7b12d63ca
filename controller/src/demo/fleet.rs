//! The fleet `waveguide demo` (and the end-to-end test) runs: `examples/fleet`, made
//! runnable on one machine in a couple of minutes.
//!
//! [`prepare`] writes a Git repository with the example's groups, releases and policies
//! and a sample of its devices, changed in the few ways a demo needs:
//! - the devices' public keys are those of the simulated devices;
//! - maintenance windows are dropped (the example's stores update at night) and bake
//!   times shortened to seconds;
//! - the policy that will move to the beta ([`BETA_POLICY`]) watches its devices' health:
//!   a confirmation and bakes of seconds, and what it does on a halt ([`BetaWatch`]);
//! - each release artifact is a small local file, published in the TUF repository itself;
//! - every policy starts on the old release, so the fleet starts up to date.
//!
//! [`commit_change`] then commits what an operator would: `stable` and `gateways` move
//! to new releases, and `apac` to a new beta release (whose health the simulated devices
//! turn bad some seconds after installing it, at a rate the demo chooses).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::DemoError;
use crate::compile::load;
use crate::files::FileError;
use crate::model::{
    Artifact, DeviceSet, DeviceSetEntry, DeviceSetSpec, Labels, Metadata, Object, OnFailure, Release,
};
use crate::protocol::target::device_order_key;
use crate::source::read_dir;

/// The release every device starts on.
pub const OLD_RELEASE: &str = "edge-os-1-4-2";
/// Its version.
pub const OLD_VERSION: &str = "1.4.2";
/// The beta release `apac` moves to, which simulated devices may be told to fail.
pub const BETA_RELEASE: &str = "edge-os-1-6-0-beta";
/// The policy that moves to [`BETA_RELEASE`].
pub const BETA_POLICY: &str = "apac";

/// A prepared demo fleet repository.
#[derive(Debug, Clone)]
pub struct DemoFleet {
    /// The Git repository (branch `main`).
    pub repo: PathBuf,
    /// The devices it declares, sorted.
    pub devices: Vec<String>,
    /// Where the release artifacts are.
    pub artifacts: PathBuf,
}

/// How to cut the example down.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How many of the example's devices to keep (a stable sample across sites).
    pub devices: usize,
    /// The bake time every wave gets (but the beta policy's).
    pub bake: String,
    /// How the beta's policy watches its devices.
    pub beta: BetaWatch,
}

/// How [`BETA_POLICY`] watches the health of the release it rolls out.
#[derive(Debug, Clone)]
pub struct BetaWatch {
    /// Each device confirms the release's health this long before it commits it.
    pub confirmation: String,
    /// Each of the policy's baking waves must stay healthy this long.
    pub bake: String,
    /// What a halted rollout of the policy does.
    pub on_failure: OnFailure,
}

impl Default for BetaWatch {
    /// The demo's: a 5 s confirmation, 20 s bakes, and a rollback on a halt. A device
    /// that turns unhealthy some 10 s after the install passes its confirmation and fails
    /// during the bake.
    fn default() -> BetaWatch {
        BetaWatch { confirmation: "5s".into(), bake: "20s".into(), on_failure: OnFailure::Rollback }
    }
}

/// Writes the demo fleet repository under `work` from the example fleet in `example`.
/// `public_key(id)` gives each device's base64 public key.
pub fn prepare(
    example: &Path,
    work: &Path,
    options: &DemoOptions,
    public_key: impl Fn(&str) -> String,
) -> Result<DemoFleet, DemoError> {
    let files = read_dir(example)?;
    let (documents, diagnostics) = load::load(&files);
    if let Some(d) = diagnostics.iter().find(|d| d.is_error()) {
        return Err(DemoError::Example {
            example: example.to_owned(),
            file: d.location.file.to_string(),
            message: d.message.to_string(),
        });
    }
    let repo = work.join("fleet");
    let artifacts = work.join("artifacts");
    for dir in ["groups", "devices", "releases", "policies"] {
        let dir = repo.join(dir);
        std::fs::create_dir_all(&dir).map_err(FileError::on("create", &dir))?;
    }

    let mut groups = String::new();
    for g in &documents.groups {
        let mut group = g.value.clone();
        group.spec.maintenance_windows = None;
        push_doc(&mut groups, &group)?;
    }
    write(&repo.join("groups/groups.yaml"), &groups)?;

    for r in &documents.releases {
        let release = local_release(r.value.clone(), &artifacts)?;
        write(&repo.join(format!("releases/{}.yaml", release.metadata.name)), &to_yaml(&release)?)?;
    }

    // Every declared device with its group, labels and pin; then a stable sample.
    struct Declared {
        id: String,
        group: String,
        labels: Labels,
        pin: Option<String>,
    }
    let mut all = Vec::new();
    for d in &documents.devices {
        let spec = &d.value.spec;
        all.push(Declared {
            id: spec.id.clone().unwrap_or_else(|| d.value.metadata.name.clone()),
            group: spec.group.clone(),
            labels: spec.labels.clone(),
            pin: spec.pin.clone(),
        });
    }
    for set in &documents.device_sets {
        let spec = &set.value.spec;
        let entry = |id: String, own: &Labels, pin: &Option<String>| {
            let mut labels = spec.labels.clone();
            labels.extend(own.clone());
            Declared { id, group: spec.group.clone(), labels, pin: pin.clone().or_else(|| spec.pin.clone()) }
        };
        all.extend(spec.devices.iter().map(|e| entry(e.id.clone(), &e.labels, &e.pin)));
        if let Some(range) = &spec.range {
            all.extend(range.ids().map(|id| entry(id, &Labels::new(), &None)));
        }
    }
    all.sort_by_key(|d| device_order_key(&d.id));
    all.truncate(options.devices);
    all.sort_by(|a, b| a.id.cmp(&b.id));
    let mut by_group: BTreeMap<String, Vec<DeviceSetEntry>> = BTreeMap::new();
    for d in &all {
        by_group.entry(d.group.clone()).or_default().push(DeviceSetEntry {
            id: d.id.clone(),
            public_key: Some(public_key(&d.id)),
            labels: d.labels.clone(),
            pin: d.pin.clone(),
        });
    }
    for (group, devices) in by_group {
        let set: DeviceSet = Object {
            api_version: crate::model::API_VERSION.to_string(),
            kind: "DeviceSet".to_string(),
            metadata: metadata(&format!("{group}-devices")),
            spec: DeviceSetSpec { group: group.clone(), devices, ..DeviceSetSpec::default() },
        };
        write(&repo.join(format!("devices/{group}.yaml")), &to_yaml(&set)?)?;
    }

    for p in &documents.policies {
        let mut policy = p.value.clone();
        policy.spec.release = OLD_RELEASE.to_string();
        let rollout = &mut policy.spec.rollout;
        let mut bake = &options.bake;
        if policy.metadata.name == BETA_POLICY {
            bake = &options.beta.bake;
            rollout.confirmation = Some(options.beta.confirmation.clone());
            rollout.on_failure = options.beta.on_failure;
        }
        for wave in &mut rollout.waves {
            if wave.bake.is_some() {
                wave.bake = Some(bake.clone());
            }
        }
        write(&repo.join(format!("policies/{}.yaml", policy.metadata.name)), &to_yaml(&policy)?)?;
    }

    let git = git2::Repository::init_opts(&repo, git2::RepositoryInitOptions::new().initial_head("main"))?;
    commit_all(&git, &format!("Fleet of {} devices on edge-os {OLD_VERSION}", all.len()))?;
    Ok(DemoFleet { repo, devices: all.into_iter().map(|d| d.id).collect(), artifacts })
}

/// Commits the change the demo rolls out: `stable` → `edge-os-1-5-0`, `gateways` →
/// `edge-os-2-0-0`, and `apac` → a new beta release. Returns the commit id.
pub fn commit_change(fleet: &DemoFleet) -> Result<String, DemoError> {
    let policies = [("stable", "edge-os-1-5-0"), ("gateways", "edge-os-2-0-0"), ("apac", BETA_RELEASE)];
    // The beta is 1.5.0 rebuilt as 1.6.0-beta.1.
    let base_path = fleet.repo.join("releases/edge-os-1-5-0.yaml");
    let base = std::fs::read_to_string(&base_path).map_err(FileError::on("read", &base_path))?;
    let mut beta: Release = serde_yaml::from_str(&base)?;
    beta.metadata.name = BETA_RELEASE.to_string();
    beta.spec.version = "1.6.0-beta.1".to_string();
    for a in &mut beta.spec.artifacts {
        a.name = a.name.replace("1.5.0", "1.6.0-beta.1");
    }
    let beta = local_release(beta, &fleet.artifacts)?;
    write(&fleet.repo.join(format!("releases/{BETA_RELEASE}.yaml")), &to_yaml(&beta)?)?;
    for (policy, release) in policies {
        let path = fleet.repo.join(format!("policies/{policy}.yaml"));
        let text = std::fs::read_to_string(&path).map_err(FileError::on("read", &path))?;
        let mut doc: crate::model::Policy = serde_yaml::from_str(&text)?;
        doc.spec.release = release.to_string();
        write(&path, &to_yaml(&doc)?)?;
    }
    let git = git2::Repository::open(&fleet.repo)?;
    Ok(commit_all(&git, "Roll out edge-os 1.5.0 to stable, 2.0.0 to gateways, the 1.6.0 beta to apac")?)
}

/// Rewrites a release's artifacts as small local files, published with their content.
fn local_release(mut release: Release, artifacts: &Path) -> Result<Release, DemoError> {
    let dir = artifacts.join(&release.metadata.name);
    std::fs::create_dir_all(&dir).map_err(FileError::on("create", &dir))?;
    let dir = dir.canonicalize().map_err(FileError::on("resolve", &dir))?;
    for a in &mut release.spec.artifacts {
        let mut content = String::new();
        while content.len() < 4096 {
            let _ = writeln!(content, "{} {} {}", release.metadata.name, release.spec.version, a.name);
        }
        let path = dir.join(&a.name);
        std::fs::write(&path, &content).map_err(FileError::on("write", &path))?;
        *a = Artifact {
            name: a.name.clone(),
            url: format!("file://{}", path.display()),
            sha256: hex::encode(Sha256::digest(content.as_bytes())),
            length: content.len() as u64,
        };
    }
    Ok(release)
}

fn metadata(name: &str) -> Metadata {
    Metadata { name: name.to_string(), labels: Labels::new(), annotations: Labels::new() }
}

fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, DemoError> {
    Ok(serde_yaml::to_string(value)?)
}

fn push_doc<T: serde::Serialize>(out: &mut String, value: &T) -> Result<(), DemoError> {
    if !out.is_empty() {
        out.push_str("---\n");
    }
    out.push_str(&to_yaml(value)?);
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), DemoError> {
    Ok(std::fs::write(path, text).map_err(FileError::on("write", path))?)
}

/// Commits every file of the work tree on the current branch.
pub fn commit_all(repo: &git2::Repository, message: &str) -> Result<String, git2::Error> {
    let mut index = repo.index()?;
    index.add_all(["*"], git2::IndexAddOption::DEFAULT, None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let signature = git2::Signature::now("Waveguide demo", "demo@waveguide.invalid")?;
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let id = repo.commit(Some("HEAD"), &signature, &signature, message, &tree, &parents)?;
    Ok(id.to_string())
}
