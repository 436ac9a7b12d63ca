//! A controller's edges for agent tests, on 127.0.0.1: the device API over a SQLite
//! inventory, serving a TUF repository published with Waveguide's own publisher.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tempfile::TempDir;
use waveguide::api::{Api, ApiConfig};
use waveguide::inventory::store::{DeclaredDevice, Store, StoredReport};
use waveguide::protocol::{ArtifactRef, DeviceInstruction, ReportBody, UpdateState};
use waveguide::publish::{
    Batch, BinLayout, CommitReport, Expiries, KeyDir, KeySpec, ReleaseArtifact, RepoConfig, Repository,
};

pub const TOKEN: &str = "lab-enrollment-token";

/// The states an agent reports through one update that is confirmed and committed, and
/// the heartbeat after it.
pub const CONFIRMED_UPDATE: [UpdateState; 5] = [
    UpdateState::Downloading,
    UpdateState::Installing,
    UpdateState::Confirming,
    UpdateState::Installed,
    UpdateState::Installed,
];

pub struct Controller {
    pub tmp: TempDir,
    pub keys: KeyDir,
    pub api: Arc<Api>,
    pub base: url::Url,
    /// Paths of every request the server answered, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// The body of every report the device API accepted, with its device id, in order:
    /// what the agent sent on the wire, whatever the inventory keeps of it.
    pub reports: Arc<Mutex<Vec<(String, ReportBody)>>>,
}

impl Controller {
    /// Keys, a repository with two levels of bins (4 parents over 32 leaves: small, so
    /// that tough's full client, which fetches every bin, stays quick), an inventory, and
    /// the device API serving both.
    pub async fn start() -> Controller {
        Controller::start_with(BinLayout { leaf_bits: 5, parent_bits: 2 }).await
    }

    /// The same with the bins of `layout`.
    pub async fn start_with(layout: BinLayout) -> Controller {
        let tmp = TempDir::new().unwrap();
        let (keys, _) = KeyDir::init(&tmp.path().join("keys"), &KeySpec::without_release_keys()).unwrap();
        let config = RepoConfig { layout, expiries: Expiries::default() };
        Repository::create(&tmp.path().join("tuf"), &keys, config).unwrap();
        let store = Store::open(tmp.path().join("inventory.db").to_str().unwrap()).await.unwrap();
        let api =
            Api::new(store, ApiConfig { tuf_dir: Some(tmp.path().join("tuf")), ..ApiConfig::default() });
        api.set_enrollment_tokens([(hex::encode(Sha256::digest(TOKEN)), "lab".to_string())].into());
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = requests.clone();
        let reports: Arc<Mutex<Vec<(String, ReportBody)>>> = Arc::default();
        let accepted = reports.clone();
        let router = api
            .router()
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    let accepted = accepted.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let device = path
                            .strip_prefix("/v1/devices/")
                            .and_then(|rest| rest.strip_suffix("/reports"))
                            .map(str::to_owned);
                        let Some(device) = device else { return next.run(req).await };
                        let (parts, body) = req.into_parts();
                        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                        let req =
                            axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes.clone()));
                        let response = next.run(req).await;
                        if response.status().is_success() {
                            let body: ReportBody = serde_json::from_slice(&bytes).unwrap();
                            accepted.lock().unwrap().push((device, body));
                        }
                        response
                    }
                },
            ))
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    log.lock().unwrap().push(req.uri().path().to_owned());
                    next.run(req)
                },
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = url::Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Controller { tmp, keys, api, base, requests, reports }
    }

    pub fn repo(&self) -> PathBuf {
        self.tmp.path().join("tuf")
    }

    pub fn metadata(&self) -> PathBuf {
        self.repo().join("metadata")
    }

    /// The root a device is shipped with.
    pub fn root_file(&self) -> PathBuf {
        self.metadata().join("1.root.json")
    }

    pub fn root_bytes(&self) -> Vec<u8> {
        std::fs::read(self.root_file()).unwrap()
    }

    /// Declares devices with their public keys, as a synced fleet repository would.
    pub async fn declare(&self, devices: &[(&str, String)]) {
        let declared: Vec<DeclaredDevice> = devices
            .iter()
            .map(|(id, key)| DeclaredDevice {
                id: id.to_string(),
                group: "lab".into(),
                public_key: Some(key.clone()),
            })
            .collect();
        self.api.store().sync_declared(&declared, 0).await.unwrap();
        self.api.forget_keys();
    }

    pub fn publish(&self, batch: Batch) -> CommitReport {
        Repository::open(&self.repo(), &self.keys).unwrap().commit(batch).unwrap()
    }

    /// Flips one digit of a target hash in the leaf bin `report` wrote: valid JSON that
    /// points elsewhere, under a signature that no longer matches. Returns the bin's role.
    pub fn tamper_leaf_bin(&self, report: &CommitReport) -> String {
        let leaf = report.roles.iter().find(|r| r.role.starts_with("d-")).unwrap();
        let path = self.metadata().join(format!("{}.{}.json", leaf.version, leaf.role));
        let text = std::fs::read_to_string(&path).unwrap();
        let at = text.find("\"sha256\":\"").unwrap() + 10;
        let flipped = if &text[at..at + 1] == "0" { "1" } else { "0" };
        std::fs::write(&path, format!("{}{}{}", &text[..at], flipped, &text[at + 1..])).unwrap();
        leaf.role.clone()
    }

    /// A release artifact with `content`, published into the repository's targets.
    pub fn artifact(&self, release: &str, name: &str, content: &[u8]) -> ReleaseArtifact {
        let file = self.tmp.path().join(format!("{release}-{name}"));
        std::fs::write(&file, content).unwrap();
        ReleaseArtifact {
            release: release.into(),
            name: name.into(),
            url: format!("https://downloads.example.com/{release}/{name}"),
            sha256: hex::encode(Sha256::digest(content)),
            length: content.len() as u64,
            file: Some(file),
        }
    }

    /// The file a release artifact was published as.
    pub fn artifact_file(&self, artifact: &ReleaseArtifact) -> PathBuf {
        self.repo()
            .join("targets/releases")
            .join(&artifact.release)
            .join(format!("{}.{}", artifact.sha256, artifact.name))
    }

    pub async fn history(&self, device: &str) -> Vec<StoredReport> {
        let mut h = self.api.store().history(device, 1000).await.unwrap();
        h.reverse(); // oldest first
        h
    }

    pub async fn states(&self, device: &str) -> Vec<UpdateState> {
        self.history(device).await.iter().map(|r| r.report.state).collect()
    }

    /// The reports `device` sent that the device API accepted, oldest first.
    pub fn reports(&self, device: &str) -> Vec<ReportBody> {
        self.reports.lock().unwrap().iter().filter(|(id, _)| id == device).map(|(_, r)| r.clone()).collect()
    }

    /// The last report `device` sent that the device API accepted.
    pub fn last_report(&self, device: &str) -> ReportBody {
        self.reports(device).pop().unwrap_or_else(|| panic!("{device} has sent no report"))
    }

    /// Requests for metadata or targets since the last call.
    pub fn take_requests(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

pub fn artifact_ref(artifact: &ReleaseArtifact) -> ArtifactRef {
    ArtifactRef { target: artifact.target_path(), sha256: artifact.sha256.clone(), length: artifact.length }
}

pub fn instruction(
    device: &str,
    release: &str,
    version: &str,
    artifacts: &[&ReleaseArtifact],
) -> DeviceInstruction {
    DeviceInstruction {
        device: device.into(),
        release: release.into(),
        version: version.into(),
        artifacts: artifacts.iter().map(|a| artifact_ref(a)).collect(),
        rollout: format!("rollout-{release}"),
        wave: 0,
        maintenance_windows: Vec::new(),
        confirmation_secs: None,
        attempt: 0,
        commit: None,
        allow_downgrade: false,
    }
}
