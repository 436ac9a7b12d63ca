//! `waveguide plan`: what the fleet repository (or a change to it) would roll out.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};

use crate::compile::{self, diagnostic, Compilation};
use crate::inventory::{self, Inventory};
use crate::plan::diff::{self, FleetDiff};
use crate::plan::report::{self, Discovered, DiscoveredSource, Warning};
use crate::source::{self, FleetFiles};

/// Show what the fleet would roll out: per policy, the devices to update and the waves.
///
/// Without `--base`/`--head` it plans the working directory. With `--head` only, that
/// commit. With `--base`, it also shows what the change from base to head does; without
/// `--inventory` it then assumes every device runs what base wants.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The fleet repository (a Git repository when `--base` or `--head` is given).
    #[arg(long, default_value = ".", env = "WAVEGUIDE_REPO")]
    pub repo: PathBuf,
    /// Base revision of a change (branch, tag or commit).
    #[arg(long)]
    pub base: Option<String>,
    /// Head revision of a change; default: the working directory.
    #[arg(long)]
    pub head: Option<String>,
    /// The fleet's directory inside the repository.
    #[arg(long, default_value = "")]
    pub path: String,
    /// Discovered state: an inventory snapshot file (JSON or YAML).
    #[arg(long)]
    pub inventory: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
    /// Print how long each stage took to standard error.
    #[arg(long)]
    pub timings: bool,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// Plain text.
    Text,
    /// Markdown for a pull-request comment.
    Markdown,
    /// Stable JSON (see docs/cli.md).
    Json,
}

/// Runs `waveguide plan`. Exit codes: 0 planned, 1 the head has errors, 2 the input
/// could not be read (reported in the chosen format).
pub fn run(args: &PlanArgs) -> ExitCode {
    match output(args) {
        Ok((output, ok)) => {
            print!("{output}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(message) => {
            match args.format {
                PlanFormat::Text => eprintln!("error: {message}"),
                PlanFormat::Json => {
                    print!("{}", diagnostic::render_fatal(&message, diagnostic::Format::Json))
                }
                PlanFormat::Markdown => {
                    print!("### Waveguide plan\n\n**The fleet could not be planned:** {message}\n")
                }
            }
            ExitCode::from(2)
        }
    }
}

fn read(repo: &Path, rev: Option<&str>, path: &str) -> Result<FleetFiles, String> {
    match rev {
        Some(rev) => source::read_commit(repo, rev, path),
        None => source::read_dir(&repo.join(path)),
    }
    .map_err(|e| e.to_string())
}

/// Time spent per stage, for `--timings`.
struct Stopwatch {
    last: Instant,
    started: Instant,
    stages: Vec<(&'static str, Duration)>,
}

impl Stopwatch {
    fn new() -> Stopwatch {
        let now = Instant::now();
        Stopwatch { last: now, started: now, stages: Vec::new() }
    }

    fn lap(&mut self, stage: &'static str) {
        let now = Instant::now();
        self.stages.push((stage, now - self.last));
        self.last = now;
    }

    fn print(&self) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let stages: Vec<String> = self.stages.iter().map(|(s, d)| format!("{s} {:.1} ms", ms(*d))).collect();
        eprintln!("timings: {}; total {:.1} ms", stages.join(", "), ms(self.started.elapsed()));
    }
}

/// What `waveguide plan` prints, and whether the head compiled (exit code 0) or not (1).
/// `Err` is a message for input that could not be read at all (exit code 2).
pub fn output(args: &PlanArgs) -> Result<(String, bool), String> {
    // The snapshot does not depend on the fleet: read it while the fleet compiles.
    std::thread::scope(|scope| {
        let snapshot = args.inventory.as_deref().map(|file| {
            scope.spawn(move || {
                let started = Instant::now();
                (inventory::read_snapshot(file), started.elapsed())
            })
        });
        output_with(args, move || {
            snapshot.map(|thread| thread.join().expect("the inventory reader does not panic"))
        })
    })
}

type Snapshot = (Result<Inventory, inventory::InventoryError>, Duration);

fn output_with(
    args: &PlanArgs,
    snapshot: impl FnOnce() -> Option<Snapshot>,
) -> Result<(String, bool), String> {
    let mut clock = Stopwatch::new();
    let head_files = read(&args.repo, args.head.as_deref(), &args.path)?;
    clock.lap("read");
    let head = compile::compile(&head_files);
    drop(head_files);
    clock.stages.push(("load", head.timings.load));
    clock.stages.push(("check", head.timings.check));
    clock.stages.push(("resolve", head.timings.resolve));
    clock.last = Instant::now();
    let Some(fleet) = &head.fleet else {
        if args.timings {
            clock.print();
        }
        return Ok((render_errors(&head, args.format), false));
    };

    let base = match &args.base {
        Some(rev) => Some((rev.as_str(), compile::compile(&read(&args.repo, Some(rev), &args.path)?))),
        None => None,
    };
    if base.is_some() {
        clock.lap("base");
    }

    let mut extra_warnings = Vec::new();
    let (inventory, source) = match (snapshot(), &base) {
        (Some((read, took)), _) => {
            clock.lap("inventory wait");
            clock.stages.push(("inventory read (concurrent)", took));
            (read.map_err(|e| e.to_string())?, DiscoveredSource::Inventory)
        }
        (None, Some((_, Compilation { fleet: Some(base_fleet), .. }))) => {
            (diff::assumed_inventory(base_fleet), DiscoveredSource::Base)
        }
        (None, _) => (Inventory::default(), DiscoveredSource::None),
    };
    clock.last = Instant::now();

    let mut plan = crate::plan::plan(fleet, &inventory);
    if source == DiscoveredSource::Base {
        // The assumed inventory is base's fleet: its "unknown" devices are the devices the
        // change removes, which the change report already lists.
        plan.unknown_devices.clear();
    }
    clock.lap("plan");

    let change: Option<(FleetDiff, &str)> = base.as_ref().map(|(rev, base)| match &base.fleet {
        Some(base_fleet) => (diff::diff(&base.documents, base_fleet, &head.documents, fleet), *rev),
        None => {
            extra_warnings.push(Warning {
                code: None,
                file: None,
                line: None,
                message: format!(
                    "the base {rev} has {} errors, so affected devices are not computed",
                    base.diagnostics.iter().filter(|d| d.is_error()).count()
                ),
            });
            let documents = diff::document_changes(&base.documents, &head.documents);
            (FleetDiff { documents, ..FleetDiff::default() }, *rev)
        }
    });
    let head_name = args.head.as_deref().unwrap_or("working directory");
    let discovered = Discovered { source, devices: inventory.len() };
    let mut built = report::build(
        fleet,
        &plan,
        discovered,
        &head.diagnostics,
        change.as_ref().map(|(d, base)| (d, *base, head_name)),
    );
    built.warnings.extend(extra_warnings);
    let format = match args.format {
        PlanFormat::Text => report::Format::Text,
        PlanFormat::Markdown => report::Format::Markdown,
        PlanFormat::Json => report::Format::Json,
    };
    let output = report::render(&built, format);
    clock.lap("report");
    if args.timings {
        clock.print();
    }
    // The process ends right after printing: freeing millions of small allocations one
    // by one would cost more than planning did, so the large values are left to the OS.
    std::mem::forget(change);
    std::mem::forget(plan);
    std::mem::forget(inventory);
    std::mem::forget(base);
    std::mem::forget(head);
    Ok((output, true))
}

/// The head's diagnostics, when it does not compile.
fn render_errors(head: &Compilation, format: PlanFormat) -> String {
    match format {
        PlanFormat::Text => diagnostic::render(&head.diagnostics, diagnostic::Format::Text, "."),
        PlanFormat::Json => diagnostic::render(&head.diagnostics, diagnostic::Format::Json, "."),
        PlanFormat::Markdown => format!(
            "### Waveguide plan\n\n**The fleet has errors; nothing would be published.**\n\n```text\n{}```\n",
            diagnostic::render(&head.diagnostics, diagnostic::Format::Text, ".")
        ),
    }
}
