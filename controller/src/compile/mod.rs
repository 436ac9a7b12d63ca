//! The compiler: fleet files → validated documents → resolved fleet model.
//!
//! [`compile`] runs the whole pipeline: [`load`] (YAML → typed documents with their
//! positions), the static checks of [`validate`], then resolving (inheritance and each device's
//! desired state). Every problem comes back as a [`Diagnostic`] naming file and line;
//! the compiled fleet is only returned when there is no error, so an invalid commit can
//! never be planned or published.

pub mod diagnostic;
pub mod load;
mod resolve;
pub mod validate;

use std::time::{Duration, Instant};

pub use diagnostic::{Code, Diagnostic, Severity};
pub use load::{Documents, Located, Location};
pub use resolve::{
    CompiledDevice, CompiledFleet, CompiledGroup, CompiledPolicy, CompiledRelease, DeviceIx, GroupIx,
    PolicyIx, ReleaseIx,
};

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
/// the files that changed. The checks and resolving still see the whole fleet.
#[derive(Debug, Default)]
pub struct Compiler {
    cache: load::LoadCache,
}

impl Compiler {
    /// Compiles fleet files: load (from the cache where a file is unchanged), check,
    /// resolve.
    pub fn compile(&mut self, files: &FleetFiles) -> Compilation {
        let started = Instant::now();
        let (documents, mut diagnostics) = load::load_cached(files, &mut self.cache);
        let loaded = Instant::now();
        diagnostics.extend(validate::check(&documents));
        let checked = Instant::now();
        let mut timings =
            CompileTimings { load: loaded - started, check: checked - loaded, resolve: Duration::ZERO };
        let mut fleet = None;
        if !diagnostic::has_errors(&diagnostics) {
            let (compiled, more) = resolve::resolve(&documents);
            diagnostics.extend(more);
            timings.resolve = checked.elapsed();
            if !diagnostic::has_errors(&diagnostics) {
                fleet = Some(compiled);
            }
        }
        diagnostic::sort(&mut diagnostics);
        Compilation { fleet, diagnostics, documents, timings }
    }
}
