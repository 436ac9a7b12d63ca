//! One update's lifecycle on the device: download → install → confirm → commit, or roll
//! back; then the health watch of the committed release.
//!
//! Every step saves the state before the next one, so an agent restarted (or a device
//! rebooted) in the middle of a confirmation continues it instead of installing again.

use std::time::Duration;

use tokio::time::Instant;

use super::install::{self, StepFailure, StepTarget};
use super::state::Confirmation;
use super::{now_ms, Agent, InstructionKey, PollOutcome};
use crate::protocol::{DeviceInstruction, FailureClass, UpdateState};

/// Longest wait between two health checks of a confirmation, whatever `--health-interval`
/// says: a confirmation is short and checked closely.
pub const CONFIRMATION_CHECK_CAP: Duration = Duration::from_secs(10);

/// How a confirmation ends on the device.
#[derive(Clone, Copy, Debug)]
enum Finish {
    Commit,
    Rollback,
}

impl Agent {
    /// Downloads and installs an instruction, then starts its confirmation with a first
    /// health check, reporting each step.
    pub(super) async fn install(
        &mut self,
        instruction: &DeviceInstruction,
        key: InstructionKey,
        version: semver::Version,
    ) -> PollOutcome {
        let id = self.config.device_id.clone();
        tracing::info!(device = %id, release = %key.release, version = %key.version, rollout = %key.rollout, attempt = key.attempt, "installing");
        // Progress reports are best effort: the outcome is saved and the heartbeat
        // repeats it until it is delivered.
        self.progress(UpdateState::Downloading).await;
        let result = async {
            self.installer.simulated_download(instruction)?;
            let files = if self.config.download_artifacts {
                install::download_artifacts(&self.http, &mut self.tuf, &self.config, instruction).await?
            } else {
                Vec::new()
            };
            self.progress(UpdateState::Installing).await;
            self.installer
                .install(&id, instruction, &files)
                .await
                .map_err(|error| StepFailure { class: FailureClass::Install, error })
        }
        .await;
        self.state.handled = Some(key.clone());
        if let Err(StepFailure { class, error }) = result {
            let error = format!("{error:#}");
            tracing::warn!(device = %id, release = %key.release, failure = class.as_str(), error = %error, "update failed");
            self.state.state = UpdateState::Failed;
            self.state.failure = Some(class);
            self.state.detail = Some(error.clone());
            self.state.record_failure(key, error.clone(), now_ms());
            self.save_and_report().await;
            return PollOutcome::Failed { failure: class, error };
        }
        self.state.confirming = Some(Confirmation {
            instruction: key.clone(),
            previous_release: self.state.release.replace(key.release.clone()),
            previous_version: std::mem::replace(&mut self.state.version, version),
            previous_installed_at_ms: self.state.installed_at_ms,
            previous_commit: std::mem::replace(&mut self.state.commit, instruction.commit.clone()),
            period_ms: instruction.confirmation_secs.unwrap_or(0).saturating_mul(1000),
            confirmed_ms: 0,
        });
        self.state.state = UpdateState::Confirming;
        self.state.installed_at_ms = now_ms();
        self.state.failure = None;
        self.state.detail = None;
        self.last_pass = None;
        tracing::info!(device = %id, release = %key.release, confirmation_secs = ?instruction.confirmation_secs, "installed; confirming");
        self.save_and_report().await;
        self.check_health().await.unwrap_or(PollOutcome::Confirming)
    }

    /// Runs the health check once. During a confirmation it is a step of it, and the
    /// outcome says where the confirmation stands; otherwise it watches the committed
    /// release and reports a change of health at once (`None`).
    pub async fn check_health(&mut self) -> Option<PollOutcome> {
        let health = {
            let state = &self.state;
            let version = state.version.to_string();
            let target = StepTarget {
                device_id: &self.config.device_id,
                release: state.release.as_deref().unwrap_or_default(),
                version: &version,
                previous: None,
                installed_at_ms: state.installed_at_ms,
            };
            self.installer.health(target).await
        };
        let outcome = if self.state.confirming.is_some() {
            Some(if health.healthy {
                self.confirm_passed().await
            } else {
                let detail = health.detail.unwrap_or_else(|| "health check failed".into());
                self.roll_back(FailureClass::Health, detail).await
            })
        } else {
            if health.healthy != self.state.healthy {
                tracing::warn!(device = %self.config.device_id, healthy = health.healthy, detail = ?health.detail, "health changed");
                self.state.healthy = health.healthy;
                if !matches!(self.state.state, UpdateState::Failed | UpdateState::RolledBack) {
                    self.state.detail = health.detail;
                }
                self.save_and_report().await;
            }
            None
        };
        self.next_health = Instant::now() + self.health_wait();
        outcome
    }

    /// How long until the next health check: the health interval, shorter during a
    /// confirmation (at most [`CONFIRMATION_CHECK_CAP`], and a last check when its period
    /// ends).
    fn health_wait(&self) -> Duration {
        let Some(confirming) = &self.state.confirming else { return self.config.health_interval };
        let remaining = Duration::from_millis(confirming.period_ms.saturating_sub(confirming.confirmed_ms));
        self.config.health_interval.min(CONFIRMATION_CHECK_CAP).min(remaining)
    }

    /// A passing check of the confirmation: adds the time since the previous passing
    /// check of this run (a restart starts counting again from its first check), and
    /// commits once the period is covered.
    async fn confirm_passed(&mut self) -> PollOutcome {
        let now = Instant::now();
        let since = self.last_pass.replace(now).map(|last| now - last);
        let confirming = self.state.confirming.as_mut().expect("called while confirming");
        confirming.confirmed_ms = confirming
            .confirmed_ms
            .saturating_add(since.map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX)));
        if confirming.confirmed_ms < confirming.period_ms {
            self.state.healthy = true;
            if let Err(e) = self.save() {
                tracing::error!(device = %self.config.device_id, error = %e, "saving the agent state");
            }
            return PollOutcome::Confirming;
        }
        let commit = self.finish(Finish::Commit).await;
        if let Err(e) = commit {
            // Not made permanent: an A/B device would boot the old slot again, so go back.
            return self.roll_back(FailureClass::Install, format!("{e:#}")).await;
        }
        tracing::info!(device = %self.config.device_id, release = ?self.state.release, "confirmed and committed");
        self.state.confirming = None;
        self.state.state = UpdateState::Installed;
        self.state.healthy = true;
        self.state.detail = None;
        self.save_and_report().await;
        PollOutcome::Installed { healthy: true }
    }

    /// Ends a confirmation that failed with `class`: runs the rollback command and reports
    /// `rolled_back` on the previous release, or `failed` on the new one when the rollback
    /// command fails too.
    async fn roll_back(&mut self, class: FailureClass, detail: String) -> PollOutcome {
        let confirming = self.confirmation().clone();
        let rollback = self.finish(Finish::Rollback).await;
        self.state.confirming = None;
        self.state.failure = Some(class);
        self.state.healthy = false;
        let outcome = match rollback {
            Ok(()) => {
                tracing::warn!(device = %self.config.device_id, release = %confirming.instruction.release, failure = class.as_str(), detail = %detail, "confirmation failed; rolled back");
                self.state.release = confirming.previous_release;
                self.state.version = confirming.previous_version;
                self.state.commit = confirming.previous_commit;
                self.state.installed_at_ms = confirming.previous_installed_at_ms;
                self.state.state = UpdateState::RolledBack;
                PollOutcome::RolledBack { failure: class, error: detail.clone() }
            }
            Err(e) => {
                let error = format!("{detail}; {e:#}");
                tracing::error!(device = %self.config.device_id, release = %confirming.instruction.release, error = %error, "confirmation failed and the rollback failed");
                self.state.state = UpdateState::Failed;
                PollOutcome::Failed { failure: class, error }
            }
        };
        let error = match &outcome {
            PollOutcome::RolledBack { error, .. } | PollOutcome::Failed { error, .. } => error.clone(),
            _ => unreachable!("a rollback ends rolled back or failed"),
        };
        self.state.detail = Some(error.clone());
        self.state.record_failure(confirming.instruction, error, now_ms());
        self.save_and_report().await;
        outcome
    }

    /// Runs the commit or the rollback command for the update being confirmed.
    async fn finish(&self, finish: Finish) -> anyhow::Result<()> {
        let confirming = self.confirmation();
        let version = self.state.version.to_string();
        let previous_version = confirming.previous_version.to_string();
        let target = StepTarget {
            device_id: &self.config.device_id,
            release: &confirming.instruction.release,
            version: &version,
            previous: Some((confirming.previous_release.as_deref().unwrap_or_default(), &previous_version)),
            installed_at_ms: self.state.installed_at_ms,
        };
        match finish {
            Finish::Commit => self.installer.commit(target).await,
            Finish::Rollback => self.installer.rollback(target).await,
        }
    }

    fn confirmation(&self) -> &Confirmation {
        self.state.confirming.as_ref().expect("called while confirming")
    }

    /// Saves the state, then reports it at once (the heartbeat retries a report that fails).
    pub(super) async fn save_and_report(&mut self) {
        if let Err(e) = self.save() {
            tracing::error!(device = %self.config.device_id, error = %e, "saving the agent state");
        }
        self.next_report = Instant::now();
        if let Err(e) = self.heartbeat().await {
            tracing::warn!(device = %self.config.device_id, error = %format!("{e:#}"), "reporting; the heartbeat retries");
        }
    }
}
