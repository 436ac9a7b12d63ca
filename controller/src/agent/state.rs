//! What the agent remembers between runs, written atomically to its state directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tuf::Trusted;
use crate::protocol::{FailureClass, UpdateState};

/// File of the agent's own state in the state directory.
pub const STATE_FILE: &str = "state.json";
/// File of the trusted TUF metadata in the state directory.
pub const TRUSTED_FILE: &str = "tuf-trusted.json";

/// Most failed attempts remembered.
const MAX_FAILURES: usize = 16;

/// Which instruction an attempt was for: a new rollout, release or version is a new
/// instruction, and only a new instruction, or the same with a higher attempt, is tried
/// again after a failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstructionKey {
    /// The rollout that published it.
    pub rollout: String,
    /// The release.
    pub release: String,
    /// The version.
    pub version: String,
    /// The instruction's attempt (a retry publishes the next).
    #[serde(default)]
    pub attempt: u32,
}

impl InstructionKey {
    /// Whether this instruction is to be tried although `failed` failed: another
    /// instruction, or the same one with a higher attempt.
    pub fn supersedes(&self, failed: &InstructionKey) -> bool {
        (&self.rollout, &self.release, &self.version) != (&failed.rollout, &failed.release, &failed.version)
            || self.attempt > failed.attempt
    }
}

/// An installed release whose health is being confirmed before it is committed; saved
/// after every check so that a restart continues it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Confirmation {
    /// The instruction installed.
    pub instruction: InstructionKey,
    /// The release run before it, which a rollback returns to.
    pub previous_release: Option<String>,
    /// Its version.
    pub previous_version: semver::Version,
    /// When it was installed, Unix milliseconds (0: before the agent).
    #[serde(default)]
    pub previous_installed_at_ms: i64,
    /// The fleet commit of the instruction behind it.
    #[serde(default)]
    pub previous_commit: Option<String>,
    /// How long health must keep passing, in milliseconds (0: one passing check).
    pub period_ms: u64,
    /// How long it has passed so far, in milliseconds, summed over the agent's runs.
    pub confirmed_ms: u64,
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
    /// The fleet commit of the instruction behind the release it runs, reported with it.
    #[serde(default)]
    pub commit: Option<String>,
    /// The update progress reported in heartbeats.
    pub state: UpdateState,
    /// Health after the last check.
    pub healthy: bool,
    /// Detail of the last failure or failed health check, reported with it.
    #[serde(default)]
    pub detail: Option<String>,
    /// Which step the last update failed at, reported with `failed` and `rolled_back`.
    #[serde(default)]
    pub failure: Option<FailureClass>,
    /// The update being confirmed, while `state` is `confirming`.
    #[serde(default)]
    pub confirming: Option<Confirmation>,
    /// When the release it runs was installed, Unix milliseconds (0: before the agent).
    #[serde(default)]
    pub installed_at_ms: i64,
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
            commit: None,
            state: UpdateState::Idle,
            healthy: true,
            detail: None,
            failure: None,
            confirming: None,
            installed_at_ms: 0,
            handled: None,
            failures: Vec::new(),
            enrolled: false,
            last_report_ms: 0,
        }
    }

    /// Whether the last update failed (or was rolled back) and `key` does not supersede it:
    /// it is not tried again.
    pub fn failed_before(&self, key: &InstructionKey) -> bool {
        matches!(self.state, UpdateState::Failed | UpdateState::RolledBack)
            && self.handled.as_ref().is_some_and(|failed| !key.supersedes(failed))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(release: &str, attempt: u32) -> InstructionKey {
        InstructionKey { rollout: "r".into(), release: release.into(), version: "1.0.0".into(), attempt }
    }

    #[test]
    fn only_another_instruction_or_a_higher_attempt_supersedes_a_failure() {
        assert!(!key("a", 0).supersedes(&key("a", 0)));
        assert!(!key("a", 0).supersedes(&key("a", 1)));
        assert!(key("a", 2).supersedes(&key("a", 1)));
        assert!(key("b", 0).supersedes(&key("a", 3)));
    }

    #[test]
    fn a_state_file_from_before_confirmations_reads() {
        let old = r#"{"release": "r1", "version": "1.0.0", "state": "failed", "healthy": true,
            "handled": {"rollout": "x", "release": "r2", "version": "2.0.0"}}"#;
        let state: AgentState = serde_json::from_str(old).unwrap();
        assert_eq!(state.handled.as_ref().map(|k| k.attempt), Some(0));
        assert_eq!((state.confirming, state.failure), (None, None));
    }
}
