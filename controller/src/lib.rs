//! Waveguide: a declarative GitOps reconciler for fleets of edge devices.
//!
//! Each stage of the loop lives in a module of its own name, with a narrow, typed
//! interface:
//!
//! ```text
//! source ──► compile ──► plan ──► rollout ──► publish ──► (TUF repo) ──► agent
//!                          ▲                                              │
//!                          └──────────── inventory ◄── api ◄──────────────┘
//! ```
//!
//! `model` holds the fleet repository's document types, shared by every stage;
//! `protocol` holds what the agent and the controller exchange. `engine` joins the stages
//! into one fleet's pass (read → decide → publish → record), which `standalone`
//! (`waveguide run`) and `k8s` (the Kubernetes controller) both run.
//! docs/architecture.md is the map.

pub mod agent;
pub mod api;
pub mod cli;
pub mod compile;
pub mod demo;
pub mod engine;
pub mod files;
pub mod inventory;
pub mod k8s;
pub mod model;
pub mod plan;
pub mod protocol;
pub mod publish;
pub mod rollout;
pub mod source;
pub mod standalone;
