//! The review of a fleet revision, and of the change from a base revision to it: what
//! `waveguide plan` prints, for a terminal or a pull-request comment.
//!
//! Reads the revisions (Git commits or the working directory), compiles them, reads the
//! discovered state (an inventory snapshot, or what the base wants), plans, diffs base
//! against head and renders the report.

use std::path::Path;
use std::time::{Duration, Instant};

use super::diff::{self, FleetDiff};
use super::report::{self, Discovered, DiscoveredSource, Format, Warning};
use super::Plan;
use crate::compile::{self, diagnostic, Compilation};
use crate::inventory::{self, Inventory, InventoryError};
use crate::source::{self, FleetFiles, SourceError};

/// What to review.
#[derive(Debug, Clone, Copy)]
pub struct ReviewInput<'a> {
    /// The fleet repository (a Git repository when `base` or `head` is given).
    pub repo: &'a Path,
    /// Base revision of a change (branch, tag or commit).
    pub base: Option<&'a str>,
    /// Head revision; `None` is the working directory.
    pub head: Option<&'a str>,
    /// The fleet's directory inside the repository.
    pub path: &'a str,
    /// Discovered state: an inventory snapshot file (JSON or YAML).
    pub inventory: Option<&'a Path>,
    /// How the report is rendered.
    pub format: Format,
}

/// Input that could not be read at all (as opposed to a fleet with errors, which is
/// reviewed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewError {
    /// A revision of the fleet could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The inventory snapshot could not be read.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
}

/// A rendered review.
pub struct Review {
    /// The report (or, when the head has errors, its diagnostics) in the chosen format.
    pub output: String,
    /// Whether the head compiled.
    pub compiled: bool,
    /// Time spent per stage, in order.
    pub stages: Vec<(&'static str, Duration)>,
    /// From the start of the review to the end of rendering.
    pub total: Duration,
    /// What the report was made from. Held, not dropped, so that a caller about to exit
    /// can skip freeing it (`std::mem::forget`): freeing millions of small allocations
    /// one by one costs more than planning did.
    _inputs: Option<Box<Inputs>>,
}

/// The large values a review is made from: head, base, inventory, plan and change.
type Inputs = (Compilation, Option<Compilation>, Inventory, Plan, Option<FleetDiff>);

/// Reviews `input.head` (and the change from `input.base`, when given). The inventory
/// snapshot is read on its own thread while the fleet compiles.
pub fn review(input: &ReviewInput<'_>) -> Result<Review, ReviewError> {
    std::thread::scope(|scope| {
        let snapshot = input.inventory.map(|file| {
            scope.spawn(move || {
                let started = Instant::now();
                (inventory::read_snapshot(file), started.elapsed())
            })
        });
        review_with(input, move || {
            snapshot.map(|thread| thread.join().expect("the inventory reader does not panic"))
        })
    })
}

type Snapshot = (Result<Inventory, InventoryError>, Duration);

/// Time spent per stage.
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

    fn finish(self, output: String, compiled: bool, inputs: Option<Box<Inputs>>) -> Review {
        Review { output, compiled, total: self.started.elapsed(), stages: self.stages, _inputs: inputs }
    }
}

fn read(repo: &Path, rev: Option<&str>, path: &str) -> Result<FleetFiles, SourceError> {
    match rev {
        Some(rev) => source::read_commit(repo, rev, path),
        None => source::read_dir(&repo.join(path)),
    }
}

fn review_with(
    input: &ReviewInput<'_>,
    snapshot: impl FnOnce() -> Option<Snapshot>,
) -> Result<Review, ReviewError> {
    let mut clock = Stopwatch::new();
    let head_files = read(input.repo, input.head, input.path)?;
    clock.lap("read");
    let head = compile::compile(&head_files);
    drop(head_files);
    clock.stages.push(("load", head.timings.load));
    clock.stages.push(("check", head.timings.check));
    clock.stages.push(("resolve", head.timings.resolve));
    clock.last = Instant::now();
    let Some(fleet) = &head.fleet else {
        return Ok(clock.finish(render_errors(&head, input.format), false, None));
    };

    let base = match input.base {
        Some(rev) => Some((rev, compile::compile(&read(input.repo, Some(rev), input.path)?))),
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
            (read?, DiscoveredSource::Inventory)
        }
        (None, Some((_, Compilation { fleet: Some(base_fleet), .. }))) => {
            (diff::assumed_inventory(base_fleet), DiscoveredSource::Base)
        }
        (None, _) => (Inventory::default(), DiscoveredSource::None),
    };
    clock.last = Instant::now();

    let mut plan = super::plan(fleet, &inventory);
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
    let head_name = input.head.unwrap_or("working directory");
    let discovered = Discovered { source, devices: inventory.len() };
    let mut built = report::build(
        fleet,
        &plan,
        discovered,
        &head.diagnostics,
        change.as_ref().map(|(d, base)| (d, *base, head_name)),
    );
    built.warnings.extend(extra_warnings);
    let output = report::render(&built, input.format);
    clock.lap("report");
    let inputs = (head, base.map(|(_, base)| base), inventory, plan, change.map(|(change, _)| change));
    Ok(clock.finish(output, true, Some(Box::new(inputs))))
}

/// The head's diagnostics, when it does not compile.
fn render_errors(head: &Compilation, format: Format) -> String {
    match format {
        Format::Text => diagnostic::render(&head.diagnostics, diagnostic::Format::Text, "."),
        Format::Json => diagnostic::render(&head.diagnostics, diagnostic::Format::Json, "."),
        Format::Markdown => format!(
            "### Waveguide plan\n\n**The fleet has errors; nothing would be published.**\n\n```text\n{}```\n",
            diagnostic::render(&head.diagnostics, diagnostic::Format::Text, ".")
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
    }

    fn input<'a>(repo: &'a Path, head: Option<&'a str>, inventory: Option<&'a Path>) -> ReviewInput<'a> {
        ReviewInput { repo, base: None, head, path: "", inventory, format: Format::Text }
    }

    #[test]
    fn the_example_fleet_is_reviewed_against_its_inventory() {
        let repo = examples().join("fleet");
        let inventory = examples().join("inventory.yaml");
        let review = review(&input(&repo, None, Some(&inventory))).unwrap();
        assert!(review.compiled);
        assert!(review.output.contains("\nPolicy "), "{}", review.output);
        let stages: Vec<&str> = review.stages.iter().map(|(stage, _)| *stage).collect();
        assert_eq!(stages.first(), Some(&"read"));
        assert_eq!(stages.last(), Some(&"report"));
    }

    #[test]
    fn a_revision_that_cannot_be_read_is_a_source_error() {
        let dir = tempfile::tempdir().unwrap();
        let result = review(&input(dir.path(), Some("main"), None));
        assert!(matches!(result, Err(ReviewError::Source(_))), "{:?}", result.err());
    }

    #[test]
    fn an_inventory_snapshot_that_cannot_be_read_is_an_inventory_error() {
        let repo = examples().join("fleet");
        let missing = examples().join("no-such-inventory.yaml");
        let result = review(&input(&repo, None, Some(&missing)));
        assert!(matches!(result, Err(ReviewError::Inventory(_))), "{:?}", result.err());
    }
}
