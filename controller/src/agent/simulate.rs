//! Many simulated devices in one process: each a real [`Agent`] with its own key, state
//! and trusted TUF metadata (every check verified), installing with a
//! [`SimulatedInstaller`] instead of commands. Faults on demand: failed or hung installs,
//! transient download failures, health that turns bad after an install, and agents
//! restarted during a confirmation.
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

use super::{Agent, AgentConfig, AgentState, Installer, InstructionKey, SimulatedInstaller, Trusted};
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

/// How long a stop waits for a device's step under way before it aborts it (a hung
/// install never finishes).
const STOP_GRACE: Duration = Duration::from_secs(2);

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
    /// Only updates to this release fail, in every way below (all when `None`).
    pub fail_release: Option<String>,
    /// Share of devices whose health turns bad `unhealthy_after` an install.
    pub unhealthy_rate: f64,
    /// How long after the install those devices turn unhealthy: within the confirmation
    /// period they roll back, after it they report the change.
    pub unhealthy_after: Duration,
    /// Probability that a download attempt fails (transient: a retry may pass).
    pub download_fail_rate: f64,
    /// Probability that an install attempt hangs (never finishes).
    pub hang_rate: f64,
    /// Probability that a device's agent restarts during the confirmation of an update
    /// (it continues from its saved state, as after a reboot).
    pub restart_rate: f64,
    /// How often each device runs its health check after an update is committed.
    pub health_interval: Duration,
    /// The release each device runs at start.
    pub initial_release: Option<String>,
    /// The version each device runs at start.
    pub initial_version: semver::Version,
    /// Download and verify the artifacts (off by default: the simulated install needs none).
    pub download_artifacts: bool,
}

impl SimConfig {
    /// Defaults: poll every 5 s, report every 30 s, check health every 30 s, installs of
    /// 2 s without any fault, devices on no release at version 0.0.0, key seed
    /// `waveguide-simulator`.
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
            unhealthy_rate: 0.0,
            unhealthy_after: Duration::ZERO,
            download_fail_rate: 0.0,
            hang_rate: 0.0,
            restart_rate: 0.0,
            health_interval: Duration::from_secs(30),
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
    /// Failed updates so far.
    pub failures: usize,
    /// Restarts of its agent so far.
    pub restarts: usize,
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
    /// Failed updates, summed over devices.
    pub failed_attempts: usize,
    /// Agent restarts, summed over devices.
    pub restarts: usize,
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
            unhealthy_rate: config.unhealthy_rate,
            unhealthy_after: config.unhealthy_after,
            download_fail_rate: config.download_fail_rate,
            hang_rate: config.hang_rate,
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
                        restarts: 0,
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
            agent_config.health_interval = config.health_interval;
            agent_config.enroll_token = config.enroll_token.clone();
            agent_config.download_artifacts = config.download_artifacts;
            agent_config.max_backoff = Duration::from_secs(60);
            let device = Device {
                index,
                config: agent_config,
                http: http.clone(),
                key: device_key(&config.key_seed, &id),
                installer: installer.clone(),
                gate: gate.clone(),
                views: views.clone(),
                restart: Arc::new(tokio::sync::Notify::new()),
                restart_rate: config.restart_rate,
                drawn: Arc::new(Mutex::new(None)),
            };
            let state = AgentState::factory(config.initial_release.clone(), config.initial_version.clone());
            let mut agent = device.agent(trusted.clone(), state)?;
            let mut stopped = stopped.clone();
            tasks.spawn(async move {
                loop {
                    let restart = device.restart.clone();
                    let mut stop = stopped.clone();
                    let stop_or_restart = async move {
                        tokio::select! {
                            _ = stop.wait_for(|s| *s) => {}
                            () = restart.notified() => {}
                        }
                    };
                    agent.run_until(stop_or_restart, true).await;
                    if *stopped.borrow_and_update() {
                        return;
                    }
                    // A restart: a new agent from what the old one saved.
                    device.views[index].lock().expect("view lock").restarts += 1;
                    match device.agent(agent.tuf().trusted().clone(), agent.state().clone()) {
                        Ok(next) => agent = next,
                        Err(e) => {
                            tracing::error!(device = %device.config.device_id, error = %format!("{e:#}"), "restarting the simulated agent");
                            return;
                        }
                    }
                }
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
            stats.restarts += view.restarts;
        }
        stats
    }

    /// Every device's view, in the order of the ids given to [`Simulation::start`].
    pub fn devices(&self) -> Vec<DeviceView> {
        self.views.iter().map(|v| v.lock().expect("view lock").clone()).collect()
    }

    /// Stops every agent and waits for the steps under way, aborting those still busy
    /// after a short grace (a hung install).
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let tasks = &mut self.tasks;
        let finished = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE, finished).await.is_err() {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

/// What a simulated device keeps across restarts of its agent.
struct Device {
    index: usize,
    config: AgentConfig,
    http: reqwest::Client,
    key: DeviceKey,
    installer: Installer,
    gate: Arc<tokio::sync::Semaphore>,
    views: Arc<Vec<Mutex<DeviceView>>>,
    /// Notified to restart the agent between two of its steps.
    restart: Arc<tokio::sync::Notify>,
    restart_rate: f64,
    /// The last update whose confirmation drew whether to restart.
    drawn: Arc<Mutex<Option<InstructionKey>>>,
}

impl Device {
    /// An agent for the device, starting from `state`, observed into its view.
    fn agent(&self, trusted: Trusted, state: AgentState) -> anyhow::Result<Agent> {
        let key = DeviceKey::from_pkcs8(self.key.pkcs8())
            .ok_or_else(|| anyhow::anyhow!("the simulated device key does not read back"))?;
        let mut agent = Agent::new(
            self.config.clone(),
            self.http.clone(),
            key,
            trusted,
            state,
            None,
            self.installer.clone(),
        )?;
        agent.limit_requests(self.gate.clone());
        let (views, index, restart, rate, drawn) =
            (self.views.clone(), self.index, self.restart.clone(), self.restart_rate, self.drawn.clone());
        agent.observe(Arc::new(move |state: &AgentState| {
            {
                let mut view = views[index].lock().expect("view lock");
                view.state = state.state;
                view.release.clone_from(&state.release);
                view.version.clone_from(&state.version);
                view.failures = state.failures.len();
            }
            // Each confirmation draws once whether the agent restarts during it.
            if let Some(confirming) = &state.confirming {
                let mut drawn = drawn.lock().expect("draw lock");
                if drawn.as_ref() != Some(&confirming.instruction) {
                    *drawn = Some(confirming.instruction.clone());
                    if rate > 0.0 && rand::random::<f64>() < rate {
                        restart.notify_one();
                    }
                }
            }
        }));
        Ok(agent)
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
