//! `waveguide controller`: the in-cluster Kubernetes controller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::engine::EngineConfig;
use crate::k8s::{self, fleet::Settings, ControllerConfig};

/// Run the Kubernetes controller: reconcile every `Fleet` (source, compile, rollouts,
/// publish), keep `FleetRollout` resources current, and serve each fleet's device API and
/// TUF files under `/fleets/<namespace>/<name>/`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// The data directory: one subdirectory per fleet (TUF repository, SQLite inventory,
    /// keys, Git mirror).
    #[arg(long, env = "WAVEGUIDE_DATA", default_value = "/var/lib/waveguide")]
    pub data: PathBuf,
    /// Where the device API and the TUF files listen.
    #[arg(long, env = "WAVEGUIDE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    #[arg(long, env = "WAVEGUIDE_HEALTH_LISTEN", default_value = "0.0.0.0:9090")]
    pub health_listen: SocketAddr,
    /// Watch Fleets in this namespace only (default: every namespace).
    #[arg(long, env = "WAVEGUIDE_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// The inventory database (`postgres://...`) of Fleets that name none; an SQLite file
    /// per fleet in the data directory otherwise.
    #[arg(long, env = "WAVEGUIDE_DATABASE_URL", hide_env_values = true)]
    pub database: Option<String>,
    /// This replica's name in Leases; the pod name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a fleet's Lease stays valid without renewal; a standby replica takes over
    /// after this when the active one dies.
    #[arg(long, env = "WAVEGUIDE_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How often each fleet's engine checks the gates of running rollouts.
    #[arg(long, env = "WAVEGUIDE_STEP_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub step_interval: Duration,
    /// How long a device may stay silent after its instruction is published before it
    /// counts as stale.
    #[arg(long, env = "WAVEGUIDE_STALE_AFTER", default_value = "15m", value_parser = humantime::parse_duration)]
    pub stale_after: Duration,
}

/// Runs `waveguide controller`. Exit codes: 0 stopped by a signal, 2 could not start.
pub fn run(args: &ControllerArgs) -> ExitCode {
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("waveguide-{}", std::process::id()))
    });
    let mut settings = Settings::new(args.data.clone());
    settings.step_interval = args.step_interval;
    settings.database = args.database.clone();
    settings.engine = EngineConfig {
        stale_after: jiff::SignedDuration::try_from(args.stale_after).unwrap_or(jiff::SignedDuration::MAX),
    };
    let config = ControllerConfig {
        settings,
        identity,
        lease_duration: jiff::SignedDuration::try_from(args.lease_duration)
            .unwrap_or(jiff::SignedDuration::from_secs(15)),
        namespace: args.namespace.clone(),
        listen: args.listen,
        health_listen: args.health_listen,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(k8s::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
