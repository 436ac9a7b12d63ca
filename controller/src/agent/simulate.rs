//! Many simulated devices in one process: each a real [`Agent`] with its own key, state
//! and trusted TUF metadata (every check verified), installing with a
//! [`SimulatedInstaller`] instead of commands.
//!
//! ```no_run
//! # async fn demo(root: Vec<u8>) -> anyhow::Result<()> {
//! use waveguide::agent::simulate::{device_ids, SimConfig, Simulation};
//! let config = SimConfig::new("http://127.0.0.1:8080".parse()?, root);
//! let sim = Simulation::start(config, device_ids("sim-", 1000))?;
//! tokio::time::sleep(std::time::Duration::from_secs(30)).await;
//! println!("{:?}", sim.stats().by_state);
//! sim.stop().await;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinSet;
use url::Url;

use super::{Agent, AgentConfig, AgentState, Installer, SimulatedInstaller, Trusted};
use crate::protocol::{DeviceId, DeviceKey, UpdateState};

/// The key of a simulated device: the ed25519 key whose seed is
/// `sha256(seed || 0x00 || device_id)`. A fleet repository can declare these public keys,
/// so simulated devices report without enrolling.
pub fn device_key(seed: &str, device_id: &str) -> DeviceKey {
    let mut hasher = Sha256::new();
    hasher.update(seed.as_bytes());
    hasher.update([0]);
    hasher.update(device_id.as_bytes());
    DeviceKey::from_seed(&hasher.finalize().into())
}

/// `n` device ids: `prefix` and a zero-padded number from 0 (`sim-00000`, ...).
pub fn device_ids(prefix: &str, n: usize) -> Vec<String> {
    let width = n.saturating_sub(1).to_string().len().max(5);
    (0..n).map(|i| format!("{prefix}{i:0width$}")).collect()
}

/// Most requests the simulated devices have in flight at once (each holds a connection).
const MAX_REQUESTS: usize = 256;

/// Settings of a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The controller's base URL.
    pub server: Url,
    /// The TUF root every device trusts at first (`root.json` bytes).
    pub root: Vec<u8>,
    /// Seed of the device keys (see [`device_key`]).
    pub key_seed: String,
    /// Enroll with this token before the first report (for undeclared devices).
    pub enroll_token: Option<String>,
    /// How often each device checks for an instruction.
    pub poll_interval: Duration,
    /// How often each device reports when nothing happens.
    pub report_interval: Duration,
    /// How long an install takes (randomised ±50 %).
    pub install_time: Duration,
    /// Probability that an install fails.
    pub fail_rate: f64,
    /// Only installs of this release fail (all when `None`).
    pub fail_release: Option<String>,
    /// The release each device runs at start.
    pub initial_release: Option<String>,
    /// The version each device runs at start.
    pub initial_version: semver::Version,
    /// Download and verify the artifacts (off by default: the simulated install needs none).
    pub download_artifacts: bool,
}

impl SimConfig {
    /// Defaults: poll every 5 s, report every 30 s, installs of 2 s that never fail,
    /// devices on no release at version 0.0.0, key seed `waveguide-simulator`.
    pub fn new(server: Url, root: Vec<u8>) -> SimConfig {
        SimConfig {
            server,
            root,
            key_seed: "waveguide-simulator".into(),
            enroll_token: None,
            poll_interval: Duration::from_secs(5),
            report_interval: Duration::from_secs(30),
            install_time: Duration::from_secs(2),
            fail_rate: 0.0,
            fail_release: None,
            initial_release: None,
            initial_version: semver::Version::new(0, 0, 0),
            download_artifacts: false,
        }
    }
}

/// What one simulated device last reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    /// The device id.
    pub id: String,
    /// Update progress.
    pub state: UpdateState,
    /// The release it runs.
    pub release: Option<String>,
    /// The version it runs.
    pub version: semver::Version,
    /// Failed installs so far.
    pub failures: usize,
}

/// Counts over the simulated fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    /// Devices simulated.
    pub devices: usize,
    /// Devices per update state (`installed`, `failed`, ...).
    pub by_state: BTreeMap<String, usize>,
    /// Devices per release they run (`-` for none).
    pub by_release: BTreeMap<String, usize>,
    /// Failed installs, summed over devices.
    pub failed_attempts: usize,
}

/// A running simulation.
#[derive(Debug)]
pub struct Simulation {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    views: Arc<Vec<Mutex<DeviceView>>>,
}

impl Simulation {
    /// Starts one agent task per id on the current tokio runtime, sharing one HTTP client.
    /// Their first polls are spread over the first poll interval. Refuses an id that is
    /// not a device id, naming it.
    pub fn start(config: SimConfig, ids: Vec<String>) -> anyhow::Result<Simulation> {
        let ids = ids
            .into_iter()
            .map(|id| {
                DeviceId::new(id.as_str()).map_err(|e| anyhow::anyhow!("invalid device id {id:?}: {e}"))
            })
            .collect::<anyhow::Result<Vec<DeviceId>>>()?;
        let trusted = Trusted::from_root(&config.root)?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(MAX_REQUESTS)
            .build()?;
        let gate = Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS));
        let installer = Installer::Simulated(SimulatedInstaller {
            install_time: config.install_time,
            fail_rate: config.fail_rate,
            fail_release: config.fail_release.clone(),
        });
        let views: Arc<Vec<Mutex<DeviceView>>> = Arc::new(
            ids.iter()
                .map(|id| {
                    Mutex::new(DeviceView {
                        id: id.to_string(),
                        state: UpdateState::Idle,
                        release: config.initial_release.clone(),
                        version: config.initial_version.clone(),
                        failures: 0,
                    })
                })
                .collect(),
        );
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for (index, id) in ids.into_iter().enumerate() {
            let mut agent_config = AgentConfig::new(config.server.clone(), id.clone());
            agent_config.poll_interval = config.poll_interval;
            agent_config.report_interval = config.report_interval;
            agent_config.enroll_token = config.enroll_token.clone();
            agent_config.download_artifacts = config.download_artifacts;
            agent_config.max_backoff = Duration::from_secs(60);
            let mut agent = Agent::new(
                agent_config,
                http.clone(),
                device_key(&config.key_seed, &id),
                trusted.clone(),
                AgentState::factory(config.initial_release.clone(), config.initial_version.clone()),
                None,
                installer.clone(),
            )?;
            agent.limit_requests(gate.clone());
            let slots = views.clone();
            agent.observe(Arc::new(move |state: &AgentState| {
                let mut view = slots[index].lock().expect("view lock");
                view.state = state.state;
                view.release.clone_from(&state.release);
                view.version.clone_from(&state.version);
                view.failures = state.failures.len();
            }));
            let mut stopped = stopped.clone();
            tasks.spawn(async move {
                agent
                    .run_until(
                        async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        },
                        true,
                    )
                    .await;
            });
        }
        Ok(Simulation { stop, tasks, views })
    }

    /// Counts per state and release, now.
    pub fn stats(&self) -> SimStats {
        let mut stats = SimStats { devices: self.views.len(), ..SimStats::default() };
        for view in self.views.iter() {
            let view = view.lock().expect("view lock");
            *stats.by_state.entry(view.state.as_str().to_owned()).or_default() += 1;
            *stats.by_release.entry(view.release.clone().unwrap_or_else(|| "-".into())).or_default() += 1;
            stats.failed_attempts += view.failures;
        }
        stats
    }

    /// Every device's view, in the order of the ids given to [`Simulation::start`].
    pub fn devices(&self) -> Vec<DeviceView> {
        self.views.iter().map(|v| v.lock().expect("view lock").clone()).collect()
    }

    /// Stops every agent and waits for them.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_derived_from_seed_and_id() {
        let a = device_key("seed", "sim-1").public_key_b64();
        assert_eq!(a, device_key("seed", "sim-1").public_key_b64());
        assert_ne!(a, device_key("seed", "sim-2").public_key_b64());
        assert_ne!(a, device_key("other", "sim-1").public_key_b64());
    }

    #[test]
    fn ids_are_zero_padded() {
        assert_eq!(device_ids("sim-", 2), vec!["sim-00000", "sim-00001"]);
        assert_eq!(device_ids("d", 200_000)[0], "d000000");
    }
}
