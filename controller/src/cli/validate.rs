//! `waveguide validate`: check a fleet repository and report every error and warning.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::compile::{self, diagnostic};
use crate::source;

/// Check a fleet repository: every document, reference, hierarchy, wave definition and
/// policy. Prints all errors and warnings, sorted by file and line.
///
/// Exit codes: 0 valid (warnings may be printed), 1 errors found, 2 the files could not
/// be read (reported in the chosen format) or the command line is wrong.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The fleet directory. With `--rev`, a directory inside a Git repository, read as it
    /// is in that revision.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ValidateFormat::Text)]
    pub format: ValidateFormat,
    /// Validate this revision (branch, tag or commit) of the Git repository that holds
    /// PATH instead of the files on disk.
    #[arg(long, value_name = "REV")]
    pub rev: Option<String>,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ValidateFormat {
    /// Compiler-style text.
    Text,
    /// One JSON document with every diagnostic.
    Json,
    /// GitHub Actions workflow annotations (`::error file=…,line=…::…`).
    Github,
}

impl From<ValidateFormat> for diagnostic::Format {
    fn from(format: ValidateFormat) -> Self {
        match format {
            ValidateFormat::Text => diagnostic::Format::Text,
            ValidateFormat::Json => diagnostic::Format::Json,
            ValidateFormat::Github => diagnostic::Format::Github,
        }
    }
}

/// Runs `waveguide validate`.
pub fn run(args: &ValidateArgs) -> ExitCode {
    let files = match &args.rev {
        Some(rev) => source::read_commit_of_dir(&args.path, rev),
        None => source::read_dir(&args.path),
    };
    let files = match files {
        Ok(files) => files,
        Err(e) => {
            let format = args.format.into();
            let report = diagnostic::render_fatal(&e.to_string(), format);
            if format == diagnostic::Format::Text {
                eprint!("{report}");
            } else {
                print!("{report}");
            }
            return ExitCode::from(2);
        }
    };
    let compilation = compile::compile(&files);
    let root = args.path.to_string_lossy();
    print!("{}", diagnostic::render(&compilation.diagnostics, args.format.into(), &root));
    if compilation.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
