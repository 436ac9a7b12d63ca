//! `waveguide demo`: the whole loop on one machine, with simulated devices.

use std::collections::HashMap;
use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::demo::{self, DemoConfig, DemoFleet, Outcome, Show, BETA_POLICY, BETA_RELEASE, OLD_RELEASE};
use crate::protocol::FailureClass;
use crate::rollout::control::RolloutStatus;
use crate::rollout::state::{RolloutPhase, WaveState};

/// Run the whole loop on this machine: a fleet repository made from `examples/fleet`, the
/// controller with its embedded SQLite inventory and TUF repository, and simulated
/// devices that verify their instructions and report back. Commits a release change and
/// shows the waves advance on health; one policy's beta turns unhealthy during its bake,
/// halts and is rolled back.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many simulated devices (a sample of the example fleet's 2,001).
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Keep the demo's files (fleet repository, TUF repository, database, logs).
    #[arg(long)]
    pub keep: bool,
    /// Put the demo's files here instead of a temporary directory (implies --keep).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Share of the devices whose health turns bad after they install the beta release.
    #[arg(long, default_value_t = 0.5)]
    pub unhealthy_rate: f64,
    /// How long after installing the beta those devices turn unhealthy (its devices
    /// confirm it for 5 s, then its waves bake for 20 s).
    #[arg(long, default_value = "12s", value_parser = humantime::parse_duration)]
    pub unhealthy_after: Duration,
    /// How long a simulated install takes (±50%).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub install_time: Duration,
    /// The example fleet to start from.
    #[arg(long)]
    pub example: Option<PathBuf>,
    /// Give up after this long.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub fn run(args: &DemoArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(async { demo(args, super::shutdown_signal()).await }) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn example_fleet(args: &DemoArgs) -> PathBuf {
    if let Some(path) = &args.example {
        return path.clone();
    }
    let here = PathBuf::from("examples/fleet");
    if here.is_dir() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fleet")
}

/// Runs the demo and prints it; a SIGTERM or SIGINT (`signal`) stops it cleanly at any
/// point after the controller started, and the summary says where the files are. An
/// interrupted demo has not failed: it ends with `Ok(true)`.
async fn demo(args: &DemoArgs, signal: impl Future<Output = &'static str>) -> Result<bool, String> {
    let started = Instant::now();
    let (_temp, work) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            (None, dir.clone())
        }
        None => {
            let temp =
                tempfile::Builder::new().prefix("waveguide-demo-").tempdir().map_err(|e| e.to_string())?;
            let path = temp.path().to_owned();
            if args.keep {
                (None, temp.keep())
            } else {
                (Some(temp), path)
            }
        }
    };
    let keep = args.keep || args.dir.is_some();
    let log = work.join("waveguide.log");
    init_file_logging(&log)?;

    println!("Waveguide demo: {} simulated devices, files in {}", args.devices, work.display());
    let config = DemoConfig {
        example: example_fleet(args),
        work: work.clone(),
        devices: args.devices,
        unhealthy_rate: args.unhealthy_rate,
        unhealthy_after: args.unhealthy_after,
        install_time: args.install_time,
        timeout: args.timeout,
    };
    let mut printer = Printer::new();
    let outcome = demo::run(&config, &mut printer, signal).await;
    let fleet_repo = printer.finish();
    let ended = match outcome.map_err(|e| e.to_string())? {
        Outcome::Finished { ended, rollouts } => {
            println!();
            print!("{}", super::rollout::table(&rollouts));
            println!();
            if !ended {
                println!("gave up after {}", humantime::format_duration(args.timeout));
            }
            ended
        }
        Outcome::Interrupted => true,
    };
    println!("finished in {:.0?}", started.elapsed());
    let data = work.join("data");
    println!("TUF repository: {}", data.join("tuf").display());
    println!("inventory:      {}", data.join("inventory.sqlite").display());
    println!("logs:           {}", log.display());
    if let Some(repo) = fleet_repo {
        println!("fleet repo:     {}", repo.display());
    }
    if !keep {
        println!("(removed on exit; run with --keep to keep them)");
    }
    Ok(ended)
}

/// Prints the demo: progress bars on a terminal; without one (a CI log, a pipe) each
/// wave's changes as lines instead.
struct Printer {
    tty: bool,
    bars: MultiProgress,
    online: Option<ProgressBar>,
    waves: HashMap<(String, u32), ProgressBar>,
    printed: HashMap<(String, u32), WaveState>,
    fleet_repo: Option<PathBuf>,
}

impl Printer {
    fn new() -> Printer {
        Printer {
            tty: std::io::stdout().is_terminal(),
            bars: MultiProgress::with_draw_target(ProgressDrawTarget::stdout()),
            online: None,
            waves: HashMap::new(),
            printed: HashMap::new(),
            fleet_repo: None,
        }
    }

    fn line(&self, line: String) {
        if self.tty {
            self.bars.println(line).ok();
        } else {
            println!("{line}");
        }
    }

    /// Leaves the bars as they are, finished or not, and stops drawing them; returns the
    /// fleet repository, if the demo got as far as making it.
    fn finish(self) -> Option<PathBuf> {
        for bar in self.waves.values().chain(self.online.iter()) {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        self.fleet_repo
    }
}

impl Show for Printer {
    fn fleet(&mut self, fleet: &DemoFleet) {
        println!(
            "  fleet repository {} ({} devices, every policy on {OLD_RELEASE})",
            fleet.repo.display(),
            fleet.devices.len()
        );
        self.fleet_repo = Some(fleet.repo.clone());
    }

    fn controller(&mut self, addr: SocketAddr) {
        println!("  controller on http://{addr} (device API, TUF files under /tuf/, operators' API)");
    }

    fn online(&mut self, seen: u64, total: u64) {
        let bar = self.online.get_or_insert_with(|| {
            let bar = self.bars.add(ProgressBar::new(total));
            bar.set_style(style("devices online"));
            bar
        });
        bar.set_position(seen);
    }

    fn all_online(&mut self) {
        if let Some(bar) = &self.online {
            bar.finish_with_message("all reporting, all up to date");
        }
    }

    fn committed(&mut self, commit: &str, config: &DemoConfig) {
        println!(
            "committed {}: stable → edge-os 1.5.0, gateways → 2.0.0 (manual approval), {BETA_POLICY} → \
             {BETA_RELEASE} (turns unhealthy on {:.0}% of devices {} after the install)",
            &commit[..12.min(commit.len())],
            config.unhealthy_rate * 100.0,
            humantime::format_duration(config.unhealthy_after)
        );
    }

    fn started(&mut self, rollout: &RolloutStatus) {
        if let Some(of) = &rollout.rollback_of {
            self.line(format!(
                "{}: rollback of {of} started — the devices {of} reached ({}) go back to {}",
                rollout.id, rollout.total.size, rollout.release
            ));
        }
    }

    fn ended(&mut self, rollout: &RolloutStatus) {
        let line = match rollout.phase {
            RolloutPhase::Halted => format!("{}: halted — {}", rollout.id, halt_cause(rollout)),
            RolloutPhase::Completed if rollout.rollback_of.is_some() => format!(
                "{}: rollback completed — {}/{} back on {}",
                rollout.id, rollout.total.healthy, rollout.total.size, rollout.release
            ),
            phase => format!("{}: {phase}", rollout.id),
        };
        self.line(line);
    }

    fn rollouts(&mut self, rollouts: &[&RolloutStatus]) {
        for r in rollouts {
            for w in r.waves.iter().filter(|w| w.state != WaveState::Pending) {
                let bar = self.waves.entry((r.id.clone(), w.index)).or_insert_with(|| {
                    let bar = self.bars.add(ProgressBar::new(w.progress.size));
                    bar.set_style(style(&format!(
                        "{:<15} wave {}/{} {:<7}",
                        r.id,
                        w.index + 1,
                        r.waves.len(),
                        w.name
                    )));
                    bar
                });
                if !self.tty {
                    let key = (r.id.clone(), w.index);
                    if self.printed.get(&key) != Some(&w.state) {
                        println!(
                            "{} wave {}/{} {}: {} — {} devices, published {}, installed {}, failed {}",
                            r.id,
                            w.index + 1,
                            r.waves.len(),
                            w.name,
                            w.state,
                            w.progress.size,
                            w.progress.published(),
                            w.progress.healthy,
                            w.progress.failed
                        );
                        self.printed.insert(key, w.state);
                    }
                }
                if bar.is_finished() {
                    continue;
                }
                bar.set_position(w.progress.healthy);
                let line = format!(
                    "published {:>4}  installed {:>4}  failed {:>3}",
                    w.progress.published(),
                    w.progress.healthy,
                    w.progress.failed
                );
                match w.state {
                    WaveState::Succeeded => bar.finish_with_message(format!("{line}  ✔ healthy")),
                    WaveState::Failed => bar
                        .abandon_with_message(format!("{line}  ✘ {}", r.message.clone().unwrap_or_default())),
                    WaveState::Pending | WaveState::Published => bar.set_message(line),
                }
            }
        }
    }

    fn approving(&mut self, rollout: &RolloutStatus, wave: u32) {
        self.line(format!(
            "{}: {} — approving (as `waveguide rollout approve {} --wave {}` would)",
            rollout.id,
            rollout.message.as_deref().unwrap_or_default(),
            rollout.id,
            wave + 1
        ));
    }

    fn stopping(&mut self, signal: &str) {
        println!("{signal} received: stopping the devices and the controller");
    }
}

/// Why a rollout halted, in a user's words: health failures once its wave was baking
/// are named as such; the engine's message gives the threshold.
fn halt_cause(rollout: &RolloutStatus) -> String {
    let message = rollout.message.clone().unwrap_or_default();
    let Some(wave) = rollout.waves.get(rollout.current_wave as usize) else { return message };
    let unhealthy = wave.progress.failed_by.get(FailureClass::Health);
    if wave.healthy_at.is_some() && unhealthy > 0 {
        format!(
            "{unhealthy} of {} devices of wave {} ({}) turned unhealthy during its bake; {message}",
            wave.progress.size,
            wave.index + 1,
            wave.name
        )
    } else {
        message
    }
}

fn style(prefix: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!("{prefix} [{{bar:30}}] {{pos:>4}}/{{len:4}} {{msg}}"))
        .expect("valid template")
        .progress_chars("=> ")
}

/// Logs go to a file: the terminal shows the progress bars.
fn init_file_logging(path: &Path) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let file = std::fs::File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("WAVEGUIDE_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_ansi(false)
        .with_writer(Arc::new(file))
        .try_init();
    Ok(())
}
