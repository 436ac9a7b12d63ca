//! The compiler: fleet files → validated documents → resolved fleet model.
//!
//! [`compile`] runs the whole pipeline: [`load`] (YAML → typed documents with their
//! positions), the static checks of [`validate`] (which hand on the values they parse:
//! maintenance windows, bake times), then resolving (inheritance and each device's
//! desired state). Every problem comes back as a [`Diagnostic`] naming file and line;
//! the compiled fleet is only returned when there is no error, so an invalid commit can
//! never be planned or published.

pub mod diagnostic;
pub mod limits;
pub mod load;
mod resolve;
pub mod rules;
pub mod validate;

use std::time::{Duration, Instant};

pub use diagnostic::{Code, Diagnostic, Severity};
pub use load::{DeviceDocuments, Documents, Located, Location};
pub use resolve::{
    CompiledDevice, CompiledFleet, CompiledGroup, CompiledPolicy, CompiledRelease, DeviceIx, GroupIx,
    PolicyIx, ReleaseIx,
};

pub use rules::{FailureRules, Retries, RolloutRules};

use crate::source::FleetFiles;

/// What compiling a fleet repository produced.
#[derive(Debug, Clone)]
pub struct Compilation {
    /// The resolved fleet; `None` when any diagnostic is an error.
    pub fleet: Option<CompiledFleet>,
    /// Every error and warning, sorted by file, line and column.
    pub diagnostics: Vec<Diagnostic>,
    /// The parsed documents (kept for reports that compare two commits).
    pub documents: Documents,
    /// Time spent in each stage.
    pub timings: CompileTimings,
}

impl Compilation {
    /// True when any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        diagnostic::has_errors(&self.diagnostics)
    }
}

/// Wall-clock time of each compiler stage, for `--timings` and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompileTimings {
    /// Parsing YAML into documents.
    pub load: Duration,
    /// The static checks.
    pub check: Duration,
    /// Inheritance and desired state.
    pub resolve: Duration,
}

/// Compiles fleet files: load, check, resolve.
pub fn compile(files: &FleetFiles) -> Compilation {
    Compiler::default().compile(files)
}

/// A compiler that remembers the files it parsed: compiling the next commit parses only
/// the files that changed, and re-runs the device checks only when the devices or the
/// names they refer to changed. Resolving still sees the whole fleet.
#[derive(Debug, Default)]
pub struct Compiler {
    cache: load::LoadCache,
    checks: validate::CheckCache,
}

impl Compiler {
    /// Compiles fleet files: load (from the cache where a file is unchanged), check,
    /// resolve.
    pub fn compile(&mut self, files: &FleetFiles) -> Compilation {
        let started = Instant::now();
        let (documents, mut diagnostics) = load::load_cached(files, &mut self.cache);
        let loaded = Instant::now();
        if let Some(too_many) = limits::check_fleet_size(&documents) {
            // The checks and resolving cost time per device: not for a fleet this size.
            diagnostics.push(too_many);
            diagnostic::sort(&mut diagnostics);
            let timings = CompileTimings { load: loaded - started, ..CompileTimings::default() };
            return Compilation { fleet: None, diagnostics, documents, timings };
        }
        let mut checked = validate::check_cached(&documents, &mut self.checks);
        diagnostics.append(&mut checked.diagnostics);
        let checked_at = Instant::now();
        let mut timings =
            CompileTimings { load: loaded - started, check: checked_at - loaded, resolve: Duration::ZERO };
        let mut fleet = None;
        if !diagnostic::has_errors(&diagnostics) {
            let (compiled, more) = resolve::resolve(&documents, &checked);
            diagnostics.extend(more);
            timings.resolve = checked_at.elapsed();
            if !diagnostic::has_errors(&diagnostics) {
                fleet = Some(compiled);
            }
        }
        diagnostic::sort(&mut diagnostics);
        Compilation { fleet, diagnostics, documents, timings }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(c: &Compilation) -> Vec<String> {
        c.diagnostics.iter().map(|d| format!("{} {} {}", d.code, d.location, d.message)).collect()
    }

    /// Compiles `pairs` with the long-lived compiler and from scratch; both must agree.
    fn both(compiler: &mut Compiler, pairs: &[(&str, &str)]) -> Vec<String> {
        let files = FleetFiles::from_pairs(pairs.iter().map(|(p, t)| (*p, t.as_bytes().to_vec())));
        let cached = render(&compiler.compile(&files));
        assert_eq!(cached, render(&compile(&files)));
        cached
    }

    #[test]
    fn a_compiler_that_caches_reports_what_a_fresh_one_does() {
        let head = "apiVersion: waveguide.dev/v1alpha1\n";
        let groups = format!("{head}kind: Group\nmetadata: {{name: eu}}\nspec: {{}}\n");
        let set = format!(
            "{head}kind: DeviceSet\nmetadata: {{name: s}}\nspec:\n  group: eu\n  devices:\n    - id: a\n    - id: b\n      pin: r2\n    - id: 'bad id'\n"
        );
        let device = format!("{head}kind: Device\nmetadata: {{name: d}}\nspec:\n  group: asia\n");
        let release = |name: &str| {
            format!("{head}kind: Release\nmetadata: {{name: {name}}}\nspec: {{version: 1.0.0}}\n")
        };
        let policy = |release: &str| {
            format!(
                "{head}kind: Policy\nmetadata: {{name: p}}\nspec:\n  selector: {{}}\n  release: {release}\n"
            )
        };
        let r1 = release("r1");
        let mut compiler = Compiler::default();
        let first = both(
            &mut compiler,
            &[
                ("groups.yaml", &groups),
                ("set.yaml", &set),
                ("device.yaml", &device),
                ("r1.yaml", &r1),
                ("p.yaml", &policy("r1")),
            ],
        );
        assert!(first.iter().any(|d| d.contains("unknown release \"r2\"")), "{first:#?}");
        assert!(
            first.iter().any(|d| d.contains("device.yaml:5:10") && d.contains("unknown group")),
            "{first:#?}"
        );
        assert!(first.iter().any(|d| d.contains("invalid device id")), "{first:#?}");

        // Only the policy changes: the device findings are the cached ones, and the same.
        let second = both(
            &mut compiler,
            &[
                ("groups.yaml", &groups),
                ("set.yaml", &set),
                ("device.yaml", &device),
                ("r1.yaml", &r1),
                ("p.yaml", &policy("r1 ")),
            ],
        );
        assert_eq!(first, second);

        // The release the pin names appears, and a line moves the device's group down:
        // both findings follow.
        let r2 = release("r2");
        let moved = format!("# moved\n{device}");
        let third = both(
            &mut compiler,
            &[
                ("groups.yaml", &groups),
                ("set.yaml", &set),
                ("device.yaml", &moved),
                ("r1.yaml", &r1),
                ("r2.yaml", &r2),
                ("p.yaml", &policy("r1")),
            ],
        );
        assert!(!third.iter().any(|d| d.contains("unknown release")), "{third:#?}");
        assert!(
            third.iter().any(|d| d.contains("device.yaml:6:10") && d.contains("unknown group")),
            "{third:#?}"
        );
    }
}
