//! The rollout stage: one policy moving its devices to one release, wave by wave.
//!
//! This module holds the rules, as pure functions: [`gate`] decides when the next wave
//! may be published (bake time, success and failure thresholds, approval, pause),
//! [`admission`] decides which devices of a wave get their instructions now (maintenance
//! windows, policy and group `maxConcurrent`).

pub mod admission;
pub mod control;
pub mod engine;
pub mod gate;
pub mod progress;
