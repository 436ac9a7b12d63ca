//! The device agent: verifies the device's TUF instruction, installs what it is told
//! when its maintenance windows allow, and reports back over the device API.
//!
//! One [`Agent`] is one device. Its work is split into steps the real agent
//! (`waveguide agent`) and the simulator (`waveguide simulate`, [`simulate`]) share:
//! [`Agent::poll`] (TUF update check, then at most one install), [`Agent::check_health`]
//! (a step of the confirmation of what was installed, or of the health watch after it
//! was committed) and [`Agent::heartbeat`] (a signed report of the current state), driven
//! by [`Agent::run_until`]. Only the [`Installer`] differs: commands for the real agent,
//! a timer with failure rates for the simulator.
//!
//! See `docs/agent.md` for the options, the states and what is verified.

mod backoff;
mod device_api;
mod install;
pub mod simulate;
pub mod state;
pub mod tuf;
mod update;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;
use url::Url;

pub use backoff::Backoff;
pub use install::{CommandInstaller, Installer, SimulatedInstaller};
pub use state::{AgentState, Confirmation, FailedAttempt, InstructionKey, StateDir};
pub use tuf::{Trusted, TufClient, TufError, VerifiedInstruction};
pub use update::CONFIRMATION_CHECK_CAP;

use crate::protocol::{DeviceId, DeviceKey, FailureClass, ReportBody, UpdateState, Windows};

/// Settings of one agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The controller's base URL (device API at `/v1/`, TUF files at `/tuf/`).
    pub server: Url,
    /// The device id.
    pub device_id: DeviceId,
    /// How often to check for a new instruction.
    pub poll_interval: Duration,
    /// How often to report the current state when nothing happens.
    pub report_interval: Duration,
    /// How often to run the health check of the committed release (a confirmation checks
    /// at most every [`CONFIRMATION_CHECK_CAP`]).
    pub health_interval: Duration,
    /// The enrollment token, for a device not declared in the fleet repository.
    pub enroll_token: Option<String>,
    /// Download artifacts before installing (the simulator skips it by default).
    pub download_artifacts: bool,
    /// Where downloaded artifacts are kept; without it they are verified and dropped.
    pub artifact_dir: Option<PathBuf>,
    /// Longest wait between retries after errors.
    pub max_backoff: Duration,
}

impl AgentConfig {
    /// Defaults for `device_id` at `server`: poll every 30 s, report every 60 s, check
    /// health every 30 s.
    pub fn new(server: Url, device_id: DeviceId) -> AgentConfig {
        AgentConfig {
            server,
            device_id,
            poll_interval: Duration::from_secs(30),
            report_interval: Duration::from_secs(60),
            health_interval: Duration::from_secs(30),
            enroll_token: None,
            download_artifacts: true,
            artifact_dir: None,
            max_backoff: Duration::from_secs(300),
        }
    }

    /// The TUF repository's base URL, `{server}/tuf/`.
    pub fn tuf_url(&self) -> Url {
        join(&self.server, "tuf/")
    }
}

fn join(base: &Url, path: &str) -> Url {
    let base = if base.path().ends_with('/') {
        base.clone()
    } else {
        Url::parse(&format!("{base}/")).expect("a URL with a slash is a URL")
    };
    base.join(path).expect("relative paths join")
}

/// What one [`Agent::poll`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// No role lists the device: nothing to do.
    NoInstruction,
    /// The device runs what it is told.
    UpToDate,
    /// The instruction failed before; it is tried again only when it changes or its
    /// attempt grows.
    AlreadyFailed,
    /// The installed release is being confirmed (its health checks go on).
    Confirming,
    /// A maintenance window must open first.
    Held {
        /// When the next window opens, if one ever does.
        next_open: Option<jiff::Timestamp>,
    },
    /// The instruction was installed, confirmed and committed.
    Installed {
        /// Whether the health check passed.
        healthy: bool,
    },
    /// The update failed (reported with the error as detail); the device runs what it
    /// ran before, unless a rollback failed too.
    Failed {
        /// The step that failed.
        failure: FailureClass,
        /// The error.
        error: String,
    },
    /// The confirmation failed and the device went back to the release it ran before.
    RolledBack {
        /// Why: `health`, or `install` when the commit command failed.
        failure: FailureClass,
        /// The failed check's output.
        error: String,
    },
}

/// Called with the state after every change (the simulator counts states with it).
pub type StateObserver = Arc<dyn Fn(&AgentState) + Send + Sync>;

/// One device's agent.
pub struct Agent {
    config: AgentConfig,
    http: reqwest::Client,
    key: DeviceKey,
    tuf: TufClient,
    state: AgentState,
    store: Option<StateDir>,
    installer: Installer,
    observer: Option<StateObserver>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
    next_report: Instant,
    next_health: Instant,
    /// The last passing check of the confirmation in this run (a restart starts anew).
    last_pass: Option<Instant>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("device", &self.config.device_id).field("state", &self.state).finish()
    }
}

impl Agent {
    /// An agent starting from `state` and `trusted` metadata. With a `store`, state and
    /// trusted metadata are saved there after every change; without, they live in memory.
    pub fn new(
        config: AgentConfig,
        http: reqwest::Client,
        key: DeviceKey,
        trusted: Trusted,
        state: AgentState,
        store: Option<StateDir>,
        installer: Installer,
    ) -> anyhow::Result<Agent> {
        let tuf = TufClient::new(http.clone(), &config.tuf_url(), trusted)?;
        Ok(Agent {
            config,
            http,
            key,
            tuf,
            state,
            store,
            installer,
            observer: None,
            gate: None,
            next_report: Instant::now(),
            next_health: Instant::now(),
            last_pass: None,
        })
    }

    /// An agent with its state in `state_dir`: the saved state and trusted metadata when
    /// there are any, else a factory state (`initial` release and version) trusting the
    /// root in `root_file`.
    pub fn open(
        config: AgentConfig,
        http: reqwest::Client,
        key: DeviceKey,
        state_dir: &Path,
        root_file: &Path,
        initial: (Option<String>, semver::Version),
        installer: Installer,
    ) -> anyhow::Result<Agent> {
        let store = StateDir::open(state_dir).with_context(|| format!("opening {}", state_dir.display()))?;
        let trusted = match store.load_trusted()? {
            Some(trusted) => trusted,
            None => {
                let bytes =
                    std::fs::read(root_file).with_context(|| format!("reading {}", root_file.display()))?;
                Trusted::from_root(&bytes).with_context(|| format!("trusting {}", root_file.display()))?
            }
        };
        let state = match store.load_state()? {
            Some(state) => state,
            None => AgentState::factory(initial.0, initial.1),
        };
        let mut config = config;
        if config.artifact_dir.is_none() {
            config.artifact_dir = Some(state_dir.join("artifacts"));
        }
        Agent::new(config, http, key, trusted, state, Some(store), installer)
    }

    /// Calls `observer` with the state now and after every change.
    pub fn observe(&mut self, observer: StateObserver) {
        observer(&self.state);
        self.observer = Some(observer);
    }

    /// Makes every update check and report hold a permit of `gate` while it talks to
    /// the server, so that many agents in one process (the simulator) keep a bounded
    /// number of requests, and connections, open at once.
    pub fn limit_requests(&mut self, gate: Arc<tokio::sync::Semaphore>) {
        self.gate = Some(gate);
    }

    async fn permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match &self.gate {
            Some(gate) => gate.clone().acquire_owned().await.ok(),
            None => None,
        }
    }

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.config.device_id
    }

    /// The current state.
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    /// The TUF client (what it trusts).
    pub fn tuf(&self) -> &TufClient {
        &self.tuf
    }

    /// Enrolls with the configured token, once.
    pub async fn enroll(&mut self) -> anyhow::Result<()> {
        let Some(token) = self.config.enroll_token.clone() else { return Ok(()) };
        if self.state.enrolled {
            return Ok(());
        }
        device_api::enroll(&self.http, &self.config.server, &self.config.device_id, &token, &self.key)
            .await?;
        tracing::info!(device = %self.config.device_id, "enrolled");
        self.state.enrolled = true;
        self.save()?;
        Ok(())
    }

    /// One update check: enroll if needed, verify the TUF metadata, and act on the
    /// instruction (install it, or say why not).
    pub async fn poll(&mut self) -> anyhow::Result<PollOutcome> {
        self.enroll().await?;
        if self.state.confirming.is_some() {
            // What is installed is confirmed (or rolled back) before anything else.
            return Ok(PollOutcome::Confirming);
        }
        let permit = self.permit().await;
        let verified = self.tuf.instruction(&self.config.device_id).await;
        drop(permit);
        if self.tuf.take_changed() {
            if let Some(store) = &self.store {
                store.save_trusted(self.tuf.trusted()).context("saving the trusted TUF metadata")?;
            }
        }
        let Some(verified) = verified? else { return Ok(PollOutcome::NoInstruction) };
        let instruction = verified.instruction;
        if instruction.device != self.config.device_id.as_str() {
            anyhow::bail!(
                "the instruction at devices/{}.json names device {:?}",
                self.config.device_id,
                instruction.device
            );
        }
        let key = InstructionKey {
            rollout: instruction.rollout.clone(),
            release: instruction.release.clone(),
            version: instruction.version.clone(),
            attempt: instruction.attempt,
        };
        let version: semver::Version = instruction
            .version
            .parse()
            .with_context(|| format!("instruction version {:?} is not semver", instruction.version))?;
        if self.state.release.as_deref() == Some(instruction.release.as_str())
            && self.state.version == version
        {
            // Failed, rolled back, or stopped in a download or an install (a restart).
            let unsettled = !self.state.state.is_settled();
            if self.state.handled.as_ref() != Some(&key) || unsettled {
                // Told to stay on (or go back to) what it runs: nothing failed any more,
                // nothing is under way.
                if unsettled {
                    self.state.state = UpdateState::Installed;
                    self.state.failure = None;
                    if self.state.healthy {
                        self.state.detail = None;
                    }
                }
                self.state.handled = Some(key);
                self.save()?;
            }
            return Ok(PollOutcome::UpToDate);
        }
        if self.state.failed_before(&key) {
            return Ok(PollOutcome::AlreadyFailed);
        }
        if version < self.state.version && !instruction.allow_downgrade {
            // Only an instruction whose policy allows it (or a rollback) moves a device
            // back: an online key alone cannot send it to an older, signed release.
            let error = format!(
                "refusing to downgrade from {} to {} {}: the instruction does not allow downgrades",
                self.state.version, instruction.release, version
            );
            tracing::warn!(device = %self.config.device_id, %error, "instruction refused");
            self.state.handled = Some(key.clone());
            self.state.state = UpdateState::Failed;
            self.state.failure = Some(FailureClass::Verification);
            self.state.detail = Some(error.clone());
            self.state.record_failure(key, error.clone(), now_ms());
            self.save_and_report().await;
            return Ok(PollOutcome::Failed { failure: FailureClass::Verification, error });
        }
        let windows = Windows::new(&instruction.maintenance_windows)?;
        let now = jiff::Timestamp::now();
        if !windows.is_open(now) {
            let next_open = windows.next_open(now);
            tracing::info!(device = %self.config.device_id, release = %key.release, ?next_open, "waiting for a maintenance window");
            return Ok(PollOutcome::Held { next_open });
        }
        Ok(self.install(&instruction, key, version).await)
    }

    /// Saves the step an update reached (a restart in the middle starts it again), then
    /// reports it, best effort.
    async fn progress(&mut self, state: UpdateState) {
        self.state.state = state;
        self.state.failure = None;
        if self.state.healthy {
            self.state.detail = None;
        }
        if let Err(e) = self.save() {
            tracing::error!(device = %self.config.device_id, error = %e, "saving the agent state");
        }
        if let Err(e) = self.heartbeat().await {
            tracing::warn!(device = %self.config.device_id, error = %e, state = state.as_str(), "progress report");
        }
    }

    /// Reports the current state now (a heartbeat).
    pub async fn heartbeat(&mut self) -> anyhow::Result<()> {
        let failed = matches!(self.state.state, UpdateState::Failed | UpdateState::RolledBack);
        let body = ReportBody {
            release: self.state.release.clone(),
            version: self.state.version.clone(),
            state: self.state.state,
            healthy: self.state.healthy,
            detail: if failed || !self.state.healthy { self.state.detail.clone() } else { None },
            failure: if failed { self.state.failure } else { None },
            commit: self.state.commit.clone(),
        };
        self.send(&body).await?;
        self.next_report = Instant::now() + self.config.report_interval;
        Ok(())
    }

    async fn send(&mut self, body: &ReportBody) -> anyhow::Result<()> {
        let _permit = self.permit().await;
        let ts = now_ms().max(self.state.last_report_ms + 1);
        self.state.last_report_ms = ts;
        device_api::report(&self.http, &self.config.server, &self.config.device_id, &self.key, ts, body)
            .await?;
        Ok(())
    }

    fn save(&self) -> anyhow::Result<()> {
        if let Some(observer) = &self.observer {
            observer(&self.state);
        }
        if let Some(store) = &self.store {
            store.save_state(&self.state).context("saving the agent state")?;
        }
        Ok(())
    }

    /// One poll, the whole confirmation of what it installed (or of one a restart
    /// interrupted), and one report, for `--once`.
    pub async fn once(&mut self) -> anyhow::Result<PollOutcome> {
        let mut outcome = self.poll().await;
        while self.state.confirming.is_some() {
            tokio::time::sleep_until(self.next_health).await;
            if let Some(step) = self.check_health().await {
                outcome = Ok(step);
            }
        }
        let report = self.heartbeat().await;
        self.save()?;
        let outcome = outcome?;
        report?;
        Ok(outcome)
    }

    /// Polls, checks health and reports until `stop` completes: a poll every poll interval
    /// (with ±10 % jitter), a health check every health interval (closer during a
    /// confirmation), a heartbeat every report interval, exponential backoff with jitter
    /// after errors. With `spread`, the first poll comes at a random point of the first
    /// interval, so many agents started together do not poll in step.
    pub async fn run_until(&mut self, stop: impl Future<Output = ()>, spread: bool) {
        tokio::pin!(stop);
        let mut backoff = Backoff::new(Duration::from_secs(1), self.config.max_backoff);
        let mut report_backoff = Backoff::new(Duration::from_secs(1), self.config.max_backoff);
        let start = Instant::now();
        let mut next_poll = if spread {
            start + backoff::random_fraction(self.config.poll_interval, 0.0, 1.0)
        } else {
            start
        };
        self.next_report = if spread { next_poll } else { start };
        // A confirmation a restart interrupted goes on at once; the watch after one check.
        self.next_health = if self.state.confirming.is_some() { start } else { next_poll };
        loop {
            let wake = next_poll.min(self.next_report).min(self.next_health);
            tokio::select! {
                () = &mut stop => {
                    // The step under way has finished (a stop is only taken between steps).
                    if let Err(e) = self.save() {
                        tracing::error!(device = %self.config.device_id, error = %e, "saving the agent state");
                    }
                    return;
                }
                () = tokio::time::sleep_until(wake) => {}
            }
            if Instant::now() >= next_poll {
                match self.poll().await {
                    Ok(outcome) => {
                        tracing::debug!(device = %self.config.device_id, ?outcome, "poll");
                        backoff.reset();
                        next_poll =
                            Instant::now() + backoff::random_fraction(self.config.poll_interval, 0.9, 1.1);
                    }
                    Err(e) => {
                        let wait = backoff
                            .next_delay()
                            .min(self.config.poll_interval.max(Duration::from_secs(1)) * 10);
                        tracing::warn!(device = %self.config.device_id, error = %format!("{e:#}"), retry_in = ?wait, "update check failed");
                        next_poll = Instant::now() + wait;
                    }
                }
            }
            if Instant::now() >= self.next_health {
                if let Some(outcome) = self.check_health().await {
                    tracing::debug!(device = %self.config.device_id, ?outcome, "confirmation");
                }
            }
            if Instant::now() >= self.next_report {
                match self.heartbeat().await {
                    Ok(()) => report_backoff.reset(),
                    Err(e) => {
                        let wait = report_backoff.next_delay();
                        tracing::warn!(device = %self.config.device_id, error = %format!("{e:#}"), retry_in = ?wait, "report failed");
                        self.next_report = Instant::now() + wait;
                    }
                }
                if let Err(e) = self.save() {
                    tracing::error!(device = %self.config.device_id, error = %e, "saving the agent state");
                }
            }
        }
    }
}

/// Reads the device key from `path`, or creates one there (mode 0600) when it is missing.
pub fn load_or_create_key(path: &Path) -> anyhow::Result<DeviceKey> {
    match std::fs::read(path) {
        Ok(bytes) => DeviceKey::from_pkcs8(&bytes)
            .with_context(|| format!("{} is not a PKCS#8 ed25519 key", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = DeviceKey::generate();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            file.write_all(key.pkcs8())?;
            file.sync_all()?;
            tracing::info!(path = %path.display(), public_key = %key.public_key_b64(), "created a device key");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Now, in Unix milliseconds.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
