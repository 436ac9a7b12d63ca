//! `waveguide reconcile`: ask a running controller for a pass now, and show its status.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use super::rollout::{request, Connection, OutputFormat};

/// Trigger a pass of a running controller now (poll the fleet repository, step the
/// rollouts, publish), wait for it, and print the controller's status: the commit in
/// force, the last one attempted and why it failed, if it did.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// How long to wait for the pass.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

pub fn run(args: &ReconcileArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(reconcile(args)) {
        Ok((out, healthy)) => {
            print!("{out}");
            if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn status(c: &Connection) -> Result<serde_json::Value, String> {
    let text = request(c, reqwest::Method::GET, "/v1/status", None).await?;
    serde_json::from_str(&text).map_err(|e| format!("invalid status: {e}"))
}

async fn reconcile(args: &ReconcileArgs) -> Result<(String, bool), String> {
    let c = &args.connection;
    let before = status(c).await?["passes"].as_u64().unwrap_or(0);
    request(c, reqwest::Method::POST, "/v1/reconcile", None).await?;
    let until = Instant::now() + args.timeout;
    let now = loop {
        let now = status(c).await?;
        if now["passes"].as_u64().unwrap_or(0) > before + 1 {
            break now;
        }
        if Instant::now() > until {
            return Err(format!("no pass within {}", humantime::format_duration(args.timeout)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let source = &now["source"];
    let healthy = source["lastError"].is_null() && now["error"].is_null();
    if c.format == OutputFormat::Json {
        return Ok((format!("{now}\n"), healthy));
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    let mut out = format!("source:         {}\n", text(&source["url"]));
    out += &format!("in force:       {}\n", text(&source["lastApplied"]));
    out += &format!("last attempted: {}\n", text(&source["lastAttempted"]));
    if let Some(error) = source["lastError"].as_str() {
        out += &format!("error:          {error}\n");
    }
    if let Some(error) = now["error"].as_str() {
        out += &format!("engine error:   {error}\n");
    }
    out += &format!("devices:        {}\n", now["devices"]);
    Ok((out, healthy))
}
