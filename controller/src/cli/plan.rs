//! `waveguide plan`: what the fleet repository (or a change to it) would roll out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::compile::diagnostic;
use crate::plan::report;
use crate::plan::review::{review, ReviewInput};

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
    let format = match args.format {
        PlanFormat::Text => report::Format::Text,
        PlanFormat::Markdown => report::Format::Markdown,
        PlanFormat::Json => report::Format::Json,
    };
    let input = ReviewInput {
        repo: &args.repo,
        base: args.base.as_deref(),
        head: args.head.as_deref(),
        path: &args.path,
        inventory: args.inventory.as_deref(),
        format,
    };
    match review(&input) {
        Ok(review) => {
            if args.timings {
                let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                let stages: Vec<String> =
                    review.stages.iter().map(|(s, d)| format!("{s} {:.1} ms", ms(*d))).collect();
                eprintln!("timings: {}; total {:.1} ms", stages.join(", "), ms(review.total));
            }
            print!("{}", review.output);
            let code = if review.compiled { ExitCode::SUCCESS } else { ExitCode::from(1) };
            // The process ends right after printing: what the review was made from is left
            // to the OS (see `Review`).
            std::mem::forget(review);
            code
        }
        Err(e) => {
            let message = e.to_string();
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
