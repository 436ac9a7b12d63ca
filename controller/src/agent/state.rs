//! What the agent remembers between runs, written atomically to its state directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tuf::Trusted;
use crate::protocol::UpdateState;

/// File of the agent's own state in the state directory.
pub const STATE_FILE: &str = "state.json";
/// File of the trusted TUF metadata in the state directory.
pub const TRUSTED_FILE: &str = "tuf-trusted.json";

/// Most failed attempts remembered.
const MAX_FAILURES: usize = 16;

/// Which instruction an attempt was for: a new rollout, release or version is a new
/// instruction, and only a new instruction is tried again after a failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionKey {
    /// The rollout that published it.
    pub rollout: String,
    /// The release.
    pub release: String,
    /// The version.
    pub version: String,
}

/// One failed install.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedAttempt {
    /// The instruction.
    pub instruction: InstructionKey,
    /// What went wrong.
    pub error: String,
    /// When, Unix milliseconds.
    pub at_ms: i64,
}

/// The agent's persisted state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    /// The release the device runs, if Waveguide installed one (a factory image may have
    /// none).
    pub release: Option<String>,
    /// The version it runs.
    pub version: semver::Version,
    /// The update progress reported in heartbeats.
    pub state: UpdateState,
    /// Health after the last install.
    pub healthy: bool,
    /// Detail of the last failure, reported with `failed`.
    #[serde(default)]
    pub detail: Option<String>,
    /// The last instruction acted on (installed, already running, or failed).
    #[serde(default)]
    pub handled: Option<InstructionKey>,
    /// Recent failed attempts, newest last.
    #[serde(default)]
    pub failures: Vec<FailedAttempt>,
    /// Whether enrollment succeeded.
    #[serde(default)]
    pub enrolled: bool,
    /// The timestamp of the last signed report: the next must be newer.
    #[serde(default)]
    pub last_report_ms: i64,
}

impl AgentState {
    /// The state of a device that has never run the agent.
    pub fn factory(release: Option<String>, version: semver::Version) -> AgentState {
        AgentState {
            release,
            version,
            state: UpdateState::Idle,
            healthy: true,
            detail: None,
            handled: None,
            failures: Vec::new(),
            enrolled: false,
            last_report_ms: 0,
        }
    }

    /// Records a failed attempt, keeping the newest few.
    pub fn record_failure(&mut self, instruction: InstructionKey, error: String, at_ms: i64) {
        self.failures.push(FailedAttempt { instruction, error, at_ms });
        let excess = self.failures.len().saturating_sub(MAX_FAILURES);
        self.failures.drain(..excess);
    }
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating) the directory.
    pub fn open(dir: &Path) -> std::io::Result<StateDir> {
        std::fs::create_dir_all(dir)?;
        Ok(StateDir { dir: dir.to_owned() })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The saved state, if any.
    pub fn load_state(&self) -> anyhow::Result<Option<AgentState>> {
        self.load(STATE_FILE)
    }

    /// The saved trusted metadata, if any.
    pub fn load_trusted(&self) -> anyhow::Result<Option<Trusted>> {
        self.load(TRUSTED_FILE)
    }

    /// Saves the state atomically.
    pub fn save_state(&self, state: &AgentState) -> std::io::Result<()> {
        self.save(STATE_FILE, &serde_json::to_vec_pretty(state).expect("state serialises"))
    }

    /// Saves the trusted metadata atomically.
    pub fn save_trusted(&self, trusted: &Trusted) -> std::io::Result<()> {
        self.save(TRUSTED_FILE, &serde_json::to_vec(trusted).expect("metadata serialises"))
    }

    fn load<T: serde::de::DeserializeOwned>(&self, name: &str) -> anyhow::Result<Option<T>> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("{} is corrupt: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// Writes `name` through a temporary file, fsync and rename, so a crash leaves the
    /// old or the new content, never a mix.
    fn save(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(name))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}
