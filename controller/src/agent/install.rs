//! Downloading artifacts and running the installer's steps: install, health check,
//! commit and rollback.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

use super::tuf::{TufClient, TufError};
use super::AgentConfig;
use crate::protocol::{ArtifactRef, DeviceInstruction, FailureClass};

/// Bytes of a command's output kept for the report.
const OUTPUT_TAIL: usize = 2048;

/// A failed step of an update, with the class the report gives it.
#[derive(Debug)]
pub(super) struct StepFailure {
    /// Which step failed.
    pub class: FailureClass,
    /// What went wrong.
    pub error: anyhow::Error,
}

impl StepFailure {
    fn new(class: FailureClass) -> impl Fn(anyhow::Error) -> StepFailure + Copy {
        move |error| StepFailure { class, error }
    }
}

/// The release a step acts on, as the commands see it in their environment.
#[derive(Clone, Copy, Debug)]
pub(super) struct StepTarget<'a> {
    /// The device id.
    pub device_id: &'a str,
    /// The release (the new one during an update, else the one it runs).
    pub release: &'a str,
    /// Its version.
    pub version: &'a str,
    /// The release run before the update (commit and rollback commands only).
    pub previous: Option<(&'a str, &'a str)>,
    /// When the release was installed, Unix milliseconds (the simulator's health uses it).
    pub installed_at_ms: i64,
}

/// The outcome of one health check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Health {
    /// Whether it passed.
    pub healthy: bool,
    /// The command's output when it failed.
    pub detail: Option<String>,
}

/// What installs a verified instruction.
#[derive(Clone, Debug)]
pub enum Installer {
    /// Shell commands (`waveguide agent`).
    Command(CommandInstaller),
    /// A timer that fails at a rate (`waveguide simulate`).
    Simulated(SimulatedInstaller),
}

/// The install, health, commit and rollback commands, run with `sh -c`.
#[derive(Clone, Debug, Default)]
pub struct CommandInstaller {
    /// Installs the artifacts; without it a verified download is the install.
    pub install: Option<String>,
    /// Exit status 0 means healthy; without it the device is healthy once installed.
    pub health: Option<String>,
    /// Makes a confirmed release permanent (e.g. marks the new A/B slot good).
    pub commit: Option<String>,
    /// Goes back to the release run before (e.g. switches back to the previous slot).
    pub rollback: Option<String>,
}

/// A simulated install. Every simulated fault is limited to `fail_release` when set.
#[derive(Clone, Debug)]
pub struct SimulatedInstaller {
    /// How long an install takes, randomised ±50 %.
    pub install_time: Duration,
    /// Probability that an install fails.
    pub fail_rate: f64,
    /// Only installs of this release fail; all releases when `None`.
    pub fail_release: Option<String>,
    /// Share of devices whose health turns bad `unhealthy_after` an install (the same
    /// devices for one release, across restarts).
    pub unhealthy_rate: f64,
    /// How long after the install those devices turn unhealthy.
    pub unhealthy_after: Duration,
    /// Probability that a download attempt fails (a transient failure).
    pub download_fail_rate: f64,
    /// Probability that an install attempt never finishes.
    pub hang_rate: f64,
}

impl SimulatedInstaller {
    fn applies(&self, release: &str) -> bool {
        self.fail_release.as_deref().is_none_or(|r| r == release)
    }

    /// Whether `device_id` is one of the devices whose health turns bad on `release`:
    /// a stable draw from a hash, so a restarted agent draws the same.
    fn turns_unhealthy(&self, device_id: &str, release: &str) -> bool {
        if self.unhealthy_rate <= 0.0 || !self.applies(release) {
            return false;
        }
        let hash = Sha256::new().chain_update(device_id).chain_update([0]).chain_update(release).finalize();
        let draw = u64::from_be_bytes(hash[..8].try_into().expect("8 bytes")) as f64 / u64::MAX as f64;
        draw < self.unhealthy_rate
    }

    fn chance(&self, rate: f64, release: &str) -> bool {
        rate > 0.0 && self.applies(release) && rand::thread_rng().gen::<f64>() < rate
    }
}

impl Installer {
    /// A simulated download failure, drawn per attempt; never for real commands.
    pub(super) fn simulated_download(&self, instruction: &DeviceInstruction) -> Result<(), StepFailure> {
        match self {
            Installer::Simulated(s) if s.chance(s.download_fail_rate, &instruction.release) => {
                Err(StepFailure {
                    class: FailureClass::Download,
                    error: anyhow!(
                        "simulated download failure of {} {}",
                        instruction.release,
                        instruction.version
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// Installs `instruction` from the downloaded `files`.
    pub(super) async fn install(
        &self,
        device_id: &str,
        instruction: &DeviceInstruction,
        files: &[PathBuf],
    ) -> anyhow::Result<()> {
        match self {
            Installer::Command(c) => {
                let Some(install) = &c.install else { return Ok(()) };
                let artifacts = files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n");
                let env = [
                    ("WAVEGUIDE_DEVICE_ID", device_id),
                    ("WAVEGUIDE_RELEASE", instruction.release.as_str()),
                    ("WAVEGUIDE_VERSION", instruction.version.as_str()),
                    ("WAVEGUIDE_ARTIFACTS", artifacts.as_str()),
                ];
                let output = shell(install, &env).await.context("running the install command")?;
                if !output.status.success() {
                    bail!("install command failed ({}): {}", output.status, output_tail(&output));
                }
                Ok(())
            }
            Installer::Simulated(s) => {
                if s.chance(s.hang_rate, &instruction.release) {
                    tracing::debug!(device = device_id, release = %instruction.release, "simulated install hangs");
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(super::backoff::random_fraction(s.install_time, 0.5, 1.5)).await;
                if s.chance(s.fail_rate, &instruction.release) {
                    bail!("simulated install failure of {} {}", instruction.release, instruction.version);
                }
                Ok(())
            }
        }
    }

    /// Runs the health check for the release `target` names.
    pub(super) async fn health(&self, target: StepTarget<'_>) -> Health {
        match self {
            Installer::Command(c) => {
                let Some(health) = &c.health else { return Health { healthy: true, detail: None } };
                match shell(health, &target.env()).await {
                    Ok(output) if output.status.success() => Health { healthy: true, detail: None },
                    Ok(output) => Health {
                        healthy: false,
                        detail: Some(format!(
                            "health command failed ({}): {}",
                            output.status,
                            output_tail(&output)
                        )),
                    },
                    Err(e) => {
                        Health { healthy: false, detail: Some(format!("running the health command: {e}")) }
                    }
                }
            }
            Installer::Simulated(s) => {
                let since = super::now_ms().saturating_sub(target.installed_at_ms);
                // Only what the agent installed turns bad, never the image it started on.
                if target.installed_at_ms > 0
                    && s.turns_unhealthy(target.device_id, target.release)
                    && since >= s.unhealthy_after.as_millis() as i64
                {
                    Health {
                        healthy: false,
                        detail: Some(format!(
                            "simulated health failure of {} {}",
                            target.release, target.version
                        )),
                    }
                } else {
                    Health { healthy: true, detail: None }
                }
            }
        }
    }

    /// Makes the confirmed release permanent.
    pub(super) async fn commit(&self, target: StepTarget<'_>) -> anyhow::Result<()> {
        match self {
            Installer::Command(CommandInstaller { commit: Some(commit), .. }) => {
                run_step("commit", commit, &target.env()).await
            }
            _ => Ok(()),
        }
    }

    /// Goes back to the release run before.
    pub(super) async fn rollback(&self, target: StepTarget<'_>) -> anyhow::Result<()> {
        match self {
            Installer::Command(CommandInstaller { rollback: Some(rollback), .. }) => {
                run_step("rollback", rollback, &target.env()).await
            }
            _ => Ok(()),
        }
    }
}

impl StepTarget<'_> {
    fn env(&self) -> Vec<(&str, &str)> {
        let mut env = vec![
            ("WAVEGUIDE_DEVICE_ID", self.device_id),
            ("WAVEGUIDE_RELEASE", self.release),
            ("WAVEGUIDE_VERSION", self.version),
        ];
        if let Some((release, version)) = self.previous {
            env.push(("WAVEGUIDE_PREVIOUS_RELEASE", release));
            env.push(("WAVEGUIDE_PREVIOUS_VERSION", version));
        }
        env
    }
}

async fn run_step(name: &str, command: &str, env: &[(&str, &str)]) -> anyhow::Result<()> {
    let output = shell(command, env).await.with_context(|| format!("running the {name} command"))?;
    if !output.status.success() {
        bail!("{name} command failed ({}): {}", output.status, output_tail(&output));
    }
    Ok(())
}

async fn shell(command: &str, env: &[(&str, &str)]) -> std::io::Result<std::process::Output> {
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
}

/// The last [`OUTPUT_TAIL`] bytes of a command's standard error, or of its standard
/// output when it wrote nothing on standard error, trimmed, as text.
fn output_tail(output: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        return tail(stderr.trim());
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    if stdout.trim().is_empty() {
        "(no output)".into()
    } else {
        tail(stdout.trim())
    }
}

/// The last [`OUTPUT_TAIL`] bytes of `text`, cut at a character boundary.
fn tail(text: &str) -> String {
    let mut start = text.len().saturating_sub(OUTPUT_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

/// Downloads every artifact of `instruction`, checking each against its signed length and
/// SHA-256: from the repository's targets (`targets/releases/<release>/<sha256>.<file>`)
/// or, when the repository does not hold the file, from the `custom.url` of the verified
/// `releases` target. Returns the files written (none without an artifact directory).
/// A failure is a `download` (network, server, disk) or a `verification` (what arrived or
/// what is signed does not match).
pub(super) async fn download_artifacts(
    http: &reqwest::Client,
    tuf: &mut TufClient,
    config: &AgentConfig,
    instruction: &DeviceInstruction,
) -> Result<Vec<PathBuf>, StepFailure> {
    let verification = StepFailure::new(FailureClass::Verification);
    let mut files = Vec::new();
    for artifact in &instruction.artifacts {
        let file_name = artifact_file_name(artifact).map_err(StepFailure::new(FailureClass::Verification))?;
        let dest = config.artifact_dir.as_ref().map(|d| d.join(&instruction.release).join(file_name));
        if let Some(dir) = dest.as_ref().and_then(|d| d.parent()) {
            tokio::fs::create_dir_all(dir)
                .await
                .with_context(|| format!("creating {}", dir.display()))
                .map_err(StepFailure::new(FailureClass::Download))?;
        }
        let url = tuf
            .target_url(&artifact.target, &artifact.sha256)
            .map_err(|e| StepFailure::new(FailureClass::Verification)(e.into()))?;
        let fetched = download(http, &url, artifact, dest.as_deref()).await?;
        if !fetched {
            let record = match tuf.target(&artifact.target).await {
                Ok(Some(record)) => record,
                Ok(None) => {
                    return Err(verification(anyhow!(
                        "{} is not in the repository's releases role",
                        artifact.target
                    )))
                }
                Err(e @ (TufError::Http { .. } | TufError::Status { .. })) => {
                    return Err(StepFailure::new(FailureClass::Download)(e.into()))
                }
                Err(e) => return Err(verification(e.into())),
            };
            if hex::encode(&*record.hashes.sha256) != artifact.sha256 || record.length != artifact.length {
                return Err(verification(anyhow!(
                    "{}: the instruction and the releases role disagree on its hash or length",
                    artifact.target
                )));
            }
            let Some(url) = record
                .custom
                .get("url")
                .and_then(|u| u.as_str())
                .and_then(|u| Url::parse(u).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"))
            else {
                return Err(verification(anyhow!(
                    "{} is not in the repository and has no http(s) url",
                    artifact.target
                )));
            };
            if !download(http, &url, artifact, dest.as_deref()).await? {
                return Err(StepFailure::new(FailureClass::Download)(anyhow!(
                    "{}: {url} not found",
                    artifact.target
                )));
            }
        }
        files.extend(dest);
    }
    Ok(files)
}

fn artifact_file_name(artifact: &ArtifactRef) -> anyhow::Result<&str> {
    let name = artifact.target.rsplit('/').next().unwrap_or_default();
    if name.is_empty() || name == "." || name == ".." || name.contains('\\') {
        bail!("artifact target {:?} has no usable file name", artifact.target);
    }
    Ok(name)
}

/// Streams `url` into `dest` (through a `.part` file) while hashing it. `Ok(false)` when
/// the server has no such file.
async fn download(
    http: &reqwest::Client,
    url: &Url,
    artifact: &ArtifactRef,
    dest: Option<&Path>,
) -> Result<bool, StepFailure> {
    let transfer = StepFailure::new(FailureClass::Download);
    let mut response = match http.get(url.clone()).send().await.with_context(|| format!("GET {url}")) {
        Ok(response) => response,
        Err(e) => return Err(transfer(e)),
    };
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
        return Ok(false);
    }
    if !status.is_success() {
        return Err(transfer(anyhow!("GET {url}: HTTP {status}")));
    }
    let part = dest.map(|d| {
        let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        d.with_file_name(format!(".{name}.part"))
    });
    let mut file = match &part {
        Some(p) => Some(
            tokio::fs::File::create(p)
                .await
                .with_context(|| format!("creating {}", p.display()))
                .map_err(StepFailure::new(FailureClass::Download))?,
        ),
        None => None,
    };
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    loop {
        let chunk = match response.chunk().await.with_context(|| format!("GET {url}")) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => return Err(StepFailure::new(FailureClass::Download)(e)),
        };
        length += chunk.len() as u64;
        if length > artifact.length {
            return Err(StepFailure::new(FailureClass::Verification)(anyhow!(
                "{}: longer than its signed length {}",
                artifact.target,
                artifact.length
            )));
        }
        hasher.update(&chunk);
        if let Some(f) = &mut file {
            f.write_all(&chunk).await.map_err(|e| StepFailure::new(FailureClass::Download)(e.into()))?;
        }
    }
    let verification = StepFailure::new(FailureClass::Verification);
    if length != artifact.length {
        return Err(verification(anyhow!(
            "{}: {length} bytes, signed length {}",
            artifact.target,
            artifact.length
        )));
    }
    let sha = hex::encode(hasher.finalize());
    if sha != artifact.sha256 {
        return Err(verification(anyhow!(
            "{}: sha256 {sha} does not match the signed {}",
            artifact.target,
            artifact.sha256
        )));
    }
    if let (Some(mut f), Some(part), Some(dest)) = (file, part, dest) {
        let written = async {
            f.flush().await?;
            f.sync_all().await?;
            tokio::fs::rename(&part, dest).await.with_context(|| format!("writing {}", dest.display()))
        };
        written.await.map_err(StepFailure::new(FailureClass::Download))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_tail_keeps_the_end_of_stderr_else_stdout() {
        use std::os::unix::process::ExitStatusExt;
        let output = |stdout: &str, stderr: &str| std::process::Output {
            status: std::process::ExitStatus::from_raw(256),
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
        };
        let long = "x".repeat(5000) + "the real error";
        let t = output_tail(&output("ignored", &long));
        assert!(t.ends_with("the real error"));
        assert_eq!(t.len(), OUTPUT_TAIL);
        assert_eq!(output_tail(&output(" service down\n", "  \n")), "service down");
        assert_eq!(output_tail(&output("", "  \n")), "(no output)");
    }
}
