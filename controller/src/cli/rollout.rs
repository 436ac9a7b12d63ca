//! `waveguide rollout`: watch and steer rollouts through a running controller's
//! operators' API.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use crate::rollout::control::RolloutStatus;

/// Where the controller is and how to authenticate.
#[derive(Debug, Args)]
pub struct Connection {
    /// The controller's address.
    #[arg(long, env = "WAVEGUIDE_SERVER", default_value = "http://127.0.0.1:8080", global = true)]
    pub server: String,
    /// The operators' bearer token. Also read from `WAVEGUIDE_TOKEN`, or from
    /// `<data>/admin-token` with `--data`.
    #[arg(long, env = "WAVEGUIDE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The controller's data directory, to read the token from.
    #[arg(long, global = true)]
    pub data: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text, global = true)]
    pub format: OutputFormat,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Text,
    /// The API's JSON.
    Json,
}

/// `waveguide rollout ...`
#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: RolloutCommand,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Every rollout with its phase and progress.
    List,
    /// One rollout, wave by wave.
    Show { id: String },
    /// Stop publishing new instructions.
    Pause { id: String },
    /// Go on after a pause (a halted rollout is re-evaluated).
    Resume { id: String },
    /// Approve a wave that waits (or will wait) for approval. Approving it again changes
    /// nothing, so a retry never approves the wave after it.
    Approve {
        id: String,
        /// The wave, by its number as shown (from 1).
        #[arg(long)]
        wave: u32,
    },
    /// Give the rollout up: nothing more is published.
    Abort { id: String },
    /// Publish the failed devices' instructions again (a halted rollout is re-evaluated,
    /// the retried devices counting as in flight).
    Retry { id: String },
    /// Count the current failures as accepted: their waves no longer count them, so a
    /// halted rollout can go on.
    Accept { id: String },
    /// Return the devices that took the rollout's release to the release they ran
    /// before, through a rollback rollout (`<id>-rollback`) gated like any other.
    Rollback { id: String },
}

pub fn run(args: &RolloutArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(call(args)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The operators' token from `--token`, `WAVEGUIDE_TOKEN` or `<data>/admin-token`.
pub(super) fn token(c: &Connection) -> Result<String, String> {
    match (&c.token, &c.data) {
        (Some(t), _) => Ok(t.clone()),
        (None, Some(data)) => Ok(std::fs::read_to_string(data.join("admin-token"))
            .map_err(|e| format!("cannot read {}: {e}", data.join("admin-token").display()))?
            .trim()
            .to_string()),
        (None, None) => Err("give the operators' token with --token, WAVEGUIDE_TOKEN or --data".into()),
    }
}

/// One request to the operators' API; the body of a successful answer, or the error
/// message the server gave.
pub(super) async fn request(
    c: &Connection,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<String, String> {
    let base = c.server.trim_end_matches('/');
    let mut request = reqwest::Client::new().request(method, format!("{base}{path}")).bearer_auth(token(c)?);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| format!("cannot reach {base}: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| format!("reading the answer of {base}: {e}"))?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        return Err(format!("{status}: {message}"));
    }
    Ok(text)
}

async fn call(args: &RolloutArgs) -> Result<String, String> {
    let c = &args.connection;
    let (method, path, body) = match &args.command {
        RolloutCommand::List => (reqwest::Method::GET, "/v1/rollouts".to_string(), None),
        RolloutCommand::Show { id } => (reqwest::Method::GET, format!("/v1/rollouts/{id}"), None),
        RolloutCommand::Pause { id } => (reqwest::Method::POST, format!("/v1/rollouts/{id}/pause"), None),
        RolloutCommand::Resume { id } => (reqwest::Method::POST, format!("/v1/rollouts/{id}/resume"), None),
        RolloutCommand::Abort { id } => (reqwest::Method::POST, format!("/v1/rollouts/{id}/abort"), None),
        RolloutCommand::Retry { id } => (reqwest::Method::POST, format!("/v1/rollouts/{id}/retry"), None),
        RolloutCommand::Accept { id } => (reqwest::Method::POST, format!("/v1/rollouts/{id}/accept"), None),
        RolloutCommand::Rollback { id } => {
            (reqwest::Method::POST, format!("/v1/rollouts/{id}/rollback"), None)
        }
        RolloutCommand::Approve { id, wave } => {
            let Some(index) = wave.checked_sub(1) else { return Err("waves are numbered from 1".into()) };
            let body = serde_json::json!({ "wave": index });
            (reqwest::Method::POST, format!("/v1/rollouts/{id}/approve"), Some(body))
        }
    };
    let text = request(c, method, &path, body).await?;
    if c.format == OutputFormat::Json {
        return Ok(format!("{text}\n"));
    }
    match &args.command {
        RolloutCommand::List => {
            let list: Vec<RolloutStatus> = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            Ok(table(&list))
        }
        _ => {
            let one: RolloutStatus = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            Ok(detail(&one))
        }
    }
}

/// `rollout list` as a table.
pub fn table(list: &[RolloutStatus]) -> String {
    let mut rows =
        vec![["ROLLOUT", "POLICY", "RELEASE", "PHASE", "WAVE", "UPDATED", "FAILED", "STALE", "MESSAGE"]
            .map(String::from)
            .to_vec()];
    for r in list {
        let wave = r
            .waves
            .get(r.current_wave as usize)
            .map_or("-".to_string(), |w| format!("{}/{} {}", r.current_wave + 1, r.waves.len(), w.name));
        rows.push(vec![
            r.id.clone(),
            r.policy.clone(),
            r.release.clone(),
            r.phase.to_string(),
            wave,
            format!("{}/{}", r.total.healthy, r.total.size),
            r.total.failed.to_string(),
            r.total.stale.to_string(),
            r.message.clone().unwrap_or_default(),
        ]);
    }
    render(&rows)
}

/// `rollout show` for one rollout.
pub fn detail(r: &RolloutStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "rollout {}: policy {} → {} {}", r.id, r.policy, r.release, r.version);
    let _ = writeln!(out, "phase:   {}{}", r.phase, if r.paused { " (paused)" } else { "" });
    if let Some(commit) = &r.commit {
        let _ = writeln!(out, "commit:  {commit}");
    }
    if let Some(of) = &r.rollback_of {
        let _ = writeln!(out, "returns the devices of {of} to the release they ran before");
    }
    if let Some(at) = r.rolled_back_at {
        let _ = writeln!(out, "rolled back since {}", at.strftime("%Y-%m-%dT%H:%M:%SZ"));
    }
    if let Some(message) = &r.message {
        let _ = writeln!(out, "message: {message}");
    }
    if !r.devices_by_commit.is_empty() {
        let counts: Vec<String> = r.devices_by_commit.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        let _ =
            writeln!(out, "running: {} (devices by the commit of the release they run)", counts.join(", "));
    }
    out.push('\n');
    let mut rows = vec![[
        "WAVE",
        "NAME",
        "STATE",
        "DEVICES",
        "PUBLISHED",
        "HEALTHY",
        "FAILED",
        "STALE",
        "ACCEPTED",
        "BAKE",
        "APPROVED",
    ]
    .map(String::from)
    .to_vec()];
    for w in &r.waves {
        rows.push(vec![
            (w.index + 1).to_string(),
            w.name.clone(),
            w.state.to_string(),
            w.progress.size.to_string(),
            w.progress.published().to_string(),
            w.progress.healthy.to_string(),
            w.progress.failed.to_string(),
            w.progress.stale.to_string(),
            w.progress.accepted.to_string(),
            w.bake.clone().unwrap_or_else(|| "-".into()),
            w.approved_at.map_or("-".into(), |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
        ]);
    }
    out.push_str(&render(&rows));
    out
}

fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> =
        (0..columns).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(
                |(c, cell)| {
                    if c + 1 == columns {
                        cell.clone()
                    } else {
                        format!("{cell:<w$}", w = widths[c])
                    }
                },
            )
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}
