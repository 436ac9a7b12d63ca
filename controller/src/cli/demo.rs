//! `waveguide demo`: the whole loop on one machine, with simulated devices.

use std::collections::HashMap;
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::{SignedDuration, Timestamp};

use crate::agent::simulate::{device_key, SimConfig, Simulation};
use crate::demo::{self, DemoOptions, BETA_RELEASE, OLD_RELEASE, OLD_VERSION};
use crate::reconcile::{self, RunConfig};
use crate::rollout::control::{self, Action, RolloutStatus};
use crate::rollout::engine::EngineConfig;

/// Run the whole loop on this machine: a fleet repository made from `examples/fleet`, the
/// controller with its embedded SQLite inventory and TUF repository, and simulated
/// devices that verify their instructions and report back. Commits a release change and
/// shows the waves advance on health; one policy's beta fails and halts.
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
    /// Share of the beta release's installs that fail.
    #[arg(long, default_value_t = 0.4)]
    pub fail_rate: f64,
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

/// The seed the simulated devices' keys are derived from.
const KEY_SEED: &str = "waveguide-demo";

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

/// Runs the demo; a SIGTERM or SIGINT (`signal`) stops it cleanly at any point after the
/// controller started: the devices and the controller stop, and the summary says where
/// the files are. An interrupted demo has not failed: it ends with `Ok(true)`.
async fn demo(args: &DemoArgs, signal: impl Future<Output = &'static str>) -> Result<bool, String> {
    let started = Instant::now();
    let (_temp, work) = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
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
    let fleet = demo::prepare(
        &example_fleet(args),
        &work,
        &DemoOptions { devices: args.devices, bake: "3s".into() },
        |id| device_key(KEY_SEED, id).public_key_b64(),
    )?;
    println!(
        "  fleet repository {} ({} devices, every policy on {OLD_RELEASE})",
        fleet.repo.display(),
        fleet.devices.len()
    );

    let mut config = RunConfig::new(fleet.repo.display().to_string(), work.join("data"));
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.poll_interval = Duration::from_secs(1);
    config.step_interval = Duration::from_millis(500);
    config.engine = EngineConfig { stale_after: SignedDuration::from_secs(30) };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (controller, task) = reconcile::start(config.clone(), async move {
        let _ = stop_rx.await;
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut simulation = None;
    let followed = {
        let follow = follow(args, &config, &controller, &fleet, started, &mut simulation);
        tokio::select! {
            followed = follow => Some(followed),
            name = signal => {
                println!("{name} received: stopping the devices and the controller");
                None
            }
        }
    };
    if let Some(simulation) = simulation {
        simulation.stop().await;
    }
    let _ = stop_tx.send(());
    let _ = task.await;
    let ended = match followed {
        Some(followed) => {
            let (ended, list) = followed?;
            println!();
            print!("{}", super::rollout::table(&list));
            println!();
            if !ended {
                println!("gave up after {}", humantime::format_duration(args.timeout));
            }
            ended
        }
        None => true,
    };
    println!("finished in {:.0?}", started.elapsed());
    let data = work.join("data");
    println!("TUF repository: {}", data.join("tuf").display());
    println!("inventory:      {}", data.join("inventory.sqlite").display());
    println!("logs:           {}", log.display());
    println!("fleet repo:     {}", fleet.repo.display());
    if !keep {
        println!("(removed on exit; run with --keep to keep them)");
    }
    Ok(ended)
}

/// The demo once the controller runs: waits for the first commit to be published, starts
/// the simulated devices (into `simulation`, for the caller to stop), commits the change
/// and follows the rollouts until they end or the timeout. Returns whether they ended, and
/// the rollouts.
async fn follow(
    args: &DemoArgs,
    config: &RunConfig,
    controller: &reconcile::Controller,
    fleet: &demo::DemoFleet,
    started: Instant,
    simulation: &mut Option<Simulation>,
) -> Result<(bool, Vec<RolloutStatus>), String> {
    let stale_after = config.engine.stale_after;
    let addr = controller.status.borrow().listening.ok_or("the controller has no address")?;
    let root = config.tuf_dir().join("metadata/1.root.json");
    wait_for("the first commit to be published", Duration::from_secs(30), || root.exists()).await?;
    println!("  controller on http://{addr} (device API, TUF files under /tuf/, operators' API)");

    let mut sim = SimConfig::new(
        format!("http://{addr}").parse().map_err(|e| format!("{e}"))?,
        std::fs::read(&root).map_err(|e| format!("cannot read {}: {e}", root.display()))?,
    );
    sim.key_seed = KEY_SEED.into();
    sim.initial_release = Some(OLD_RELEASE.into());
    sim.initial_version = OLD_VERSION.parse().expect("a valid version");
    sim.fail_rate = args.fail_rate;
    sim.fail_release = Some(BETA_RELEASE.into());
    sim.install_time = args.install_time;
    sim.poll_interval = Duration::from_secs(1);
    sim.report_interval = Duration::from_secs(5);
    *simulation = Some(Simulation::start(sim, fleet.devices.clone()).map_err(|e| e.to_string())?);

    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
    let online = bars.add(ProgressBar::new(fleet.devices.len() as u64));
    online.set_style(style("devices online"));
    let store = controller.store.clone();
    let deadline = started + args.timeout;
    loop {
        let seen = store.inventory().await.map_err(|e| e.to_string())?.len() as u64;
        online.set_position(seen);
        if seen >= fleet.devices.len() as u64 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {seen} of {} devices came online", fleet.devices.len()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    online.finish_with_message("all reporting, all up to date");

    let commit = demo::commit_change(fleet)?;
    println!(
        "committed {}: stable → edge-os 1.5.0, gateways → 2.0.0 (manual approval), apac → {BETA_RELEASE} \
         (fails on {:.0}% of devices)",
        &commit[..12],
        args.fail_rate * 100.0
    );

    // Without a terminal (a CI log, a pipe) the bars are hidden: print each wave's
    // changes as lines instead.
    let tty = std::io::stdout().is_terminal();
    let mut printed: HashMap<(String, u32), String> = HashMap::new();
    let mut wave_bars: HashMap<(String, u32), ProgressBar> = HashMap::new();
    let mut waiting_since: HashMap<String, Instant> = HashMap::new();
    let ended = loop {
        let list = control::list(&store, stale_after, Timestamp::now()).await.map_err(|e| e.to_string())?;
        let current: Vec<&RolloutStatus> =
            list.iter().filter(|r| r.commit.as_deref() == Some(commit.as_str())).collect();
        for r in &current {
            for w in r.waves.iter().filter(|w| w.state != "pending") {
                let bar = wave_bars.entry((r.id.clone(), w.index)).or_insert_with(|| {
                    let bar = bars.add(ProgressBar::new(w.progress.size));
                    bar.set_style(style(&format!(
                        "{:<11} wave {}/{} {:<7}",
                        r.id,
                        w.index + 1,
                        r.waves.len(),
                        w.name
                    )));
                    bar
                });
                if !tty {
                    let line = format!(
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
                    let key = (r.id.clone(), w.index);
                    if printed.get(&key) != Some(&w.state) {
                        println!("{line}");
                        printed.insert(key, w.state.clone());
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
                match w.state.as_str() {
                    "succeeded" => bar.finish_with_message(format!("{line}  ✔ healthy")),
                    "failed" => bar
                        .abandon_with_message(format!("{line}  ✘ {}", r.message.clone().unwrap_or_default())),
                    _ => bar.set_message(line),
                }
            }
            // An operator approving manual waves, as `waveguide rollout approve` does.
            let waits = r.message.as_deref().is_some_and(|m| m.contains("waits for approval"));
            if waits && r.phase == "progressing" {
                let since = *waiting_since.entry(r.id.clone()).or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(2) {
                    control::act(&store, &r.id, Action::Approve(r.current_wave + 1), Timestamp::now())
                        .await
                        .map_err(|e| e.to_string())?;
                    controller.wake.notify_one();
                    waiting_since.remove(&r.id);
                    let line = format!(
                        "{}: {} — approving (as `waveguide rollout approve {} --wave {}` would)",
                        r.id,
                        r.message.as_deref().unwrap_or_default(),
                        r.id,
                        r.current_wave + 2
                    );
                    if tty {
                        bars.println(line).ok();
                    } else {
                        println!("{line}");
                    }
                }
            }
        }
        let finished =
            current.len() >= 3 && current.iter().all(|r| matches!(r.phase.as_str(), "completed" | "halted"));
        if finished {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let list = control::list(&store, stale_after, Timestamp::now()).await.map_err(|e| e.to_string())?;
    for bar in wave_bars.values() {
        if !bar.is_finished() {
            bar.abandon();
        }
    }
    drop(bars);

    Ok((ended, list))
}

fn style(prefix: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!("{prefix} [{{bar:30}}] {{pos:>4}}/{{len:4}} {{msg}}"))
        .expect("valid template")
        .progress_chars("=> ")
}

async fn wait_for(what: &str, timeout: Duration, ready: impl Fn() -> bool) -> Result<(), String> {
    let until = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > until {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
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
