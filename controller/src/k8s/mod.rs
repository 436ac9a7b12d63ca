//! Kubernetes: the `Fleet` and `FleetRollout` resources and the in-cluster controller.
//!
//! The controller drives the same engine as `waveguide run` ([`crate::standalone`]): the
//! Fleet reconciler ([`fleet`]) holds one engine per Fleet, and Kubernetes only appears at
//! the edges — Secrets in, status, Events and FleetRollouts out, a Lease per Fleet for
//! leader election ([`lease`]).

pub mod crd;
pub mod events;
pub mod fleet;
pub mod lease;
pub mod metrics;
pub mod rollout;
pub mod serve;
mod settings;
mod status;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use jiff::SignedDuration;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};

use crate::rollout::control::ControlError;
use crd::{Fleet, FleetRollout};

/// Why a reconciliation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A request to the API server failed.
    #[error("{context}: {source}")]
    Kube {
        /// What the request was for.
        context: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Taking, renewing or releasing a fleet's Lease failed.
    #[error("Lease {namespace}/{name}: {source}")]
    Lease {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// A Secret the Fleet references is missing or incomplete.
    #[error("Secret {namespace}/{name} {reason}")]
    Secret {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The Fleet's spec cannot be carried out.
    #[error("Fleet {namespace}/{name}: {reason}")]
    Spec {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The engine could not start or apply a commit.
    #[error("Fleet {namespace}/{name}: {source}")]
    Engine {
        /// The Fleet's namespace.
        namespace: String,
        /// The Fleet's name.
        name: String,
        /// The engine's error.
        #[source]
        source: crate::engine::EngineError,
    },
    /// An operator's change to a FleetRollout could not be applied.
    #[error("rollout {rollout}: {source}")]
    Rollout {
        /// The rollout id.
        rollout: String,
        /// Why.
        #[source]
        source: ControlError,
    },
    /// Adding or removing the finalizer failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    fn kube(context: impl Into<String>, source: kube::Error) -> Error {
        Error::Kube { context: context.into(), source }
    }

    fn spec(namespace: &str, name: &str, reason: impl Into<String>) -> Error {
        Error::Spec { namespace: namespace.into(), name: name.into(), reason: reason.into() }
    }

    fn engine(namespace: &str, name: &str, source: crate::engine::EngineError) -> Error {
        Error::Engine { namespace: namespace.into(), name: name.into(), source }
    }
}

/// How `waveguide controller` runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The reconcilers' settings.
    pub settings: fleet::Settings,
    /// This replica's identity in Leases (the pod name).
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub lease_duration: SignedDuration,
    /// Watch Fleets in this namespace only; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Where the device API and TUF files are served.
    pub listen: SocketAddr,
    /// Where health and metrics are served.
    pub health_listen: SocketAddr,
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(config: ControllerConfig) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let client = Client::try_default().await.context("cannot connect to the Kubernetes API server")?;
    let metrics = Arc::new(metrics::Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let routes = serve::FleetRoutes::default();

    let device = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let health = tokio::net::TcpListener::bind(config.health_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.health_listen))?;
    tracing::info!(device_api = %config.listen, health = %config.health_listen, "serving");
    let device_router = serve::device_router(routes.clone());
    tokio::spawn(crate::api::serve(device, device_router, std::future::pending()));
    let health_router = serve::health_router(metrics.clone(), ready.clone());
    tokio::spawn(crate::api::serve(health, health_router, std::future::pending()));

    let (fleets, rollouts): (Api<Fleet>, Api<FleetRollout>) = match &config.namespace {
        Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // Fail early and clearly when the CRDs are missing or RBAC forbids reading them.
    fleets
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .context("cannot list Fleets: are the CRDs installed (`waveguide crds`) and is RBAC granted?")?;
    ready.store(true, Ordering::Relaxed);

    let leases = lease::Leases::new(client.clone(), config.identity.clone(), config.lease_duration);
    let ctx = fleet::Context::new(client, leases, config.settings, routes, metrics);
    Controller::new(fleets, watcher::Config::default().any_semantic())
        // An operator's change to a FleetRollout wakes its Fleet at once.
        .owns(rollouts, watcher::Config::default().any_semantic())
        .shutdown_on_signal()
        .run(fleet::reconcile, fleet::error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((fleet, _)) => tracing::debug!(fleet = %fleet.name, "reconciled"),
                Err(e) => tracing::debug!("reconcile: {e}"),
            }
        })
        .await;
    ctx.leases().release_all().await;
    tracing::info!("controller stopped");
    Ok(())
}
