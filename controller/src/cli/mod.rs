//! The `waveguide` command line. Each group of subcommands has its own file; this one
//! only dispatches.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod agent;
mod controller;
mod crds;
mod demo;
mod gen_fleet;
pub mod keys;
mod plan;
mod reconcile;
pub mod release;
pub mod rollout;
mod run;
mod schemas;
pub mod simulate;
pub mod tuf;
mod validate;

/// Declarative GitOps reconciler for fleets of edge devices.
#[derive(Debug, Parser)]
#[command(name = "waveguide", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a fleet repository and report every error and warning with file and line.
    Validate(validate::ValidateArgs),
    /// Write the JSON Schemas of the fleet document kinds (for editors and CI).
    Schemas(schemas::SchemasArgs),
    /// Show what the fleet (or a change to it) would roll out, per policy and wave.
    Plan(plan::PlanArgs),
    /// Write a large deterministic fleet and inventory snapshot (for benchmarks).
    GenFleet(gen_fleet::GenFleetArgs),
    /// Manage the TUF signing keys.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Sign releases with the offline release keys.
    #[command(subcommand)]
    Release(release::ReleaseCommand),
    /// Manage the published TUF repository.
    #[command(subcommand)]
    Tuf(tuf::TufCommand),
    /// Run the controller: follow the fleet repository, roll out, publish, serve devices.
    Run(run::RunArgs),
    /// Watch and steer rollouts (list, show, pause, resume, approve, abort).
    Rollout(rollout::RolloutArgs),
    /// Ask a running controller for a pass now and show its status.
    Reconcile(reconcile::ReconcileArgs),
    /// Run the whole loop on this machine with simulated devices.
    Demo(demo::DemoArgs),
    /// Run the device agent: verify the TUF instruction, install, report.
    Agent(Box<agent::AgentArgs>),
    /// Simulate many devices, each a real agent with its own key and TUF metadata.
    Simulate(Box<simulate::SimulateArgs>),
    /// Write the Kubernetes CustomResourceDefinitions (Fleet, FleetRollout).
    Crds(crds::CrdsArgs),
    /// Run the Kubernetes controller (in a cluster, or against the current kubeconfig).
    Controller(controller::ControllerArgs),
}

/// Runs a parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    // Long-running commands log their progress; one-shot commands only warnings. The
    // demo logs to a file: the terminal shows its progress bars.
    match cli.command {
        Command::Demo(_) => {}
        Command::Run(_) | Command::Agent(_) | Command::Simulate(_) | Command::Controller(_) => {
            init_tracing("info")
        }
        _ => {
            default_sigpipe();
            init_tracing("warn")
        }
    }
    match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Schemas(args) => schemas::run(&args),
        Command::Plan(args) => plan::run(&args),
        Command::GenFleet(args) => gen_fleet::run(&args),
        Command::Keys(c) => keys::run(c),
        Command::Release(c) => release::run(c),
        Command::Tuf(c) => tuf::run(c),
        Command::Run(args) => run::run(&args),
        Command::Rollout(args) => rollout::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Reconcile(args) => reconcile::run(&args),
        Command::Agent(args) => agent::run(*args),
        Command::Simulate(args) => simulate::run(*args),
        Command::Crds(args) => crds::run(&args),
        Command::Controller(args) => controller::run(&args),
    }
}

/// Writes generated files (`name → text`) into `out`, created if missing, rewriting only
/// files whose content differs so an unchanged file keeps its timestamp. Exit codes: 0
/// written, 2 the files could not be written.
fn write_generated(out: &std::path::Path, files: impl IntoIterator<Item = (String, String)>) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(out) {
        eprintln!("error: cannot create {}: {e}", out.display());
        return ExitCode::from(2);
    }
    for (name, text) in files {
        let path = out.join(&name);
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            continue;
        }
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
        println!("wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

/// Waits for SIGTERM (what Kubernetes, systemd and `docker stop` send) or SIGINT (Ctrl-C)
/// and returns its name. The handlers are installed when this is called, not when the
/// future is first polled, so a signal that comes right after start is not missed. Call it
/// inside the runtime.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = &'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                },
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                    "SIGINT"
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

fn init_tracing(default: &str) {
    use tracing_subscriber::EnvFilter;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("WAVEGUIDE_LOG").unwrap_or_else(|_| EnvFilter::new(default)))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Lets a one-shot command end quietly when its output is closed early (`waveguide plan …
/// | head`), as Unix tools do: Rust ignores SIGPIPE, which turns a closed pipe into a
/// panic at the next print. Long-running commands keep ignoring it (their sockets report
/// a closed peer as an error instead).
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: sets one signal's disposition back to the default, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
