//! The rollout stage: one policy moving its devices to one release, wave by wave.
//!
//! This module holds the rules, as pure functions: [`gate`] decides when the next wave
//! may be published (bake time, success and failure thresholds, approval, pause),
//! [`admission`] decides which devices of a wave get their instructions now (maintenance
//! windows, policy and group `maxConcurrent`; the windows themselves are
//! [`crate::protocol::Windows`]). [`progress`] classifies each member of a rollout, [`retry`]
//! says when a failed one is retried, [`state`] names where a rollout
//! and its waves are, and [`control`] is what operators see and do. The [engine](crate::engine) composes these rules into a pass.

pub mod admission;
pub mod control;
pub mod gate;
pub mod progress;
pub mod retry;
pub mod state;
