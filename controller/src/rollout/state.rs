//! The states of a rollout and of its waves. The engine moves them, operators' actions
//! ([`super::control`]) change them, and the inventory persists them.

use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a rollout is: `progressing`, `paused`, `halted`, `completed` or `aborted`
/// (the lowercase name wherever it is written: database, JSON, FleetRollouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RolloutPhase {
    /// Publishing waves as their gates open (where every rollout starts).
    #[default]
    Progressing,
    /// Stopped by an operator; resumes where it stopped.
    Paused,
    /// Stopped by the failure threshold; needs an operator.
    Halted,
    /// Every wave done.
    Completed,
    /// Abandoned by an operator, or replaced by a newer rollout of the same policy.
    Aborted,
}

/// Where a wave is: `pending`, `published`, `succeeded` or `failed` (written like
/// [`RolloutPhase`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WaveState {
    /// Not published yet.
    #[default]
    Pending,
    /// Published; devices are installing, or the wave is baking.
    Published,
    /// Met its success threshold and baked.
    Succeeded,
    /// Crossed its failure threshold.
    Failed,
}

/// What a rollout waits for before its next wave, as the engine's last pass decided
/// (see [`super::gate::Wait`]); persisted and shown as the lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Waiting {
    /// Paused by an operator.
    Paused,
    /// Devices of the current wave are held back by maintenance windows or caps.
    Publishing,
    /// Not enough of the current wave is healthy yet.
    Health,
    /// The current wave is healthy and baking.
    Baking,
    /// The next wave waits for an operator's approval.
    Approval,
}

macro_rules! string_enum {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The name stored in the database and shown to operators.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }

        impl FromStr for $ty {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($text => Ok($ty::$variant),)+ _ => Err(()) }
            }
        }
    };
}

string_enum!(RolloutPhase {
    Progressing => "progressing",
    Paused => "paused",
    Halted => "halted",
    Completed => "completed",
    Aborted => "aborted",
});

string_enum!(WaveState {
    Pending => "pending",
    Published => "published",
    Succeeded => "succeeded",
    Failed => "failed",
});

string_enum!(Waiting {
    Paused => "paused",
    Publishing => "publishing",
    Health => "health",
    Baking => "baking",
    Approval => "approval",
});

impl Waiting {
    /// The kind of a gate's wait.
    pub fn of(wait: &super::gate::Wait) -> Waiting {
        use super::gate::Wait;
        match wait {
            Wait::Paused => Waiting::Paused,
            Wait::Publishing { .. } => Waiting::Publishing,
            Wait::Health { .. } => Waiting::Health,
            Wait::Baking { .. } => Waiting::Baking,
            Wait::Approval { .. } => Waiting::Approval,
        }
    }
}

impl RolloutPhase {
    /// Every phase, in the order a rollout may pass through them.
    pub const ALL: [RolloutPhase; 5] = [
        RolloutPhase::Progressing,
        RolloutPhase::Paused,
        RolloutPhase::Halted,
        RolloutPhase::Completed,
        RolloutPhase::Aborted,
    ];

    /// Whether the rollout may still move: progressing, paused or halted.
    pub fn is_active(self) -> bool {
        matches!(self, RolloutPhase::Progressing | RolloutPhase::Paused | RolloutPhase::Halted)
    }

    /// Whether it is over for good: completed or aborted.
    pub fn is_finished(self) -> bool {
        !self.is_active()
    }
}

impl std::fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for WaveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
