//! Downloading artifacts and running the installer.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

use super::tuf::TufClient;
use super::AgentConfig;
use crate::protocol::{ArtifactRef, DeviceInstruction};

/// Bytes of an installer's standard error kept for the report.
const STDERR_TAIL: usize = 2048;

/// What installs a verified instruction.
#[derive(Clone, Debug)]
pub enum Installer {
    /// Shell commands (`waveguide agent`).
    Command(CommandInstaller),
    /// A timer that fails at a rate (`waveguide simulate`).
    Simulated(SimulatedInstaller),
}

/// The install and health commands, run with `sh -c`.
#[derive(Clone, Debug, Default)]
pub struct CommandInstaller {
    /// Installs the artifacts; without it a verified download is the install.
    pub install: Option<String>,
    /// Exit status 0 means healthy; without it the device is healthy once installed.
    pub health: Option<String>,
}

/// A simulated install.
#[derive(Clone, Debug)]
pub struct SimulatedInstaller {
    /// How long an install takes, randomised ±50 %.
    pub install_time: Duration,
    /// Probability that an install fails.
    pub fail_rate: f64,
    /// Only installs of this release fail; all releases when `None`.
    pub fail_release: Option<String>,
}

impl Installer {
    /// Installs `instruction` from the downloaded `files`; `Ok(healthy)` on success.
    pub(super) async fn install(
        &self,
        device_id: &str,
        instruction: &DeviceInstruction,
        files: &[PathBuf],
    ) -> anyhow::Result<bool> {
        match self {
            Installer::Command(c) => c.run(device_id, instruction, files).await,
            Installer::Simulated(s) => s.run(instruction).await,
        }
    }
}

impl CommandInstaller {
    async fn run(
        &self,
        device_id: &str,
        instruction: &DeviceInstruction,
        files: &[PathBuf],
    ) -> anyhow::Result<bool> {
        let artifacts = files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n");
        let env = [
            ("WAVEGUIDE_DEVICE_ID", device_id),
            ("WAVEGUIDE_RELEASE", instruction.release.as_str()),
            ("WAVEGUIDE_VERSION", instruction.version.as_str()),
            ("WAVEGUIDE_ARTIFACTS", artifacts.as_str()),
        ];
        if let Some(install) = &self.install {
            let output = shell(install, &env).await.context("running the install command")?;
            if !output.status.success() {
                bail!("install command failed ({}): {}", output.status, tail(&output.stderr));
            }
        }
        let Some(health) = &self.health else { return Ok(true) };
        let output = shell(health, &env).await.context("running the health command")?;
        if !output.status.success() {
            tracing::warn!(device = device_id, status = %output.status, stderr = %tail(&output.stderr), "health check failed");
        }
        Ok(output.status.success())
    }
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

/// The last [`STDERR_TAIL`] bytes of an output, trimmed, as text.
fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let mut start = text.len().saturating_sub(STDERR_TAIL);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    if text.is_empty() {
        "(no output on stderr)".into()
    } else {
        text[start..].to_owned()
    }
}

impl SimulatedInstaller {
    async fn run(&self, instruction: &DeviceInstruction) -> anyhow::Result<bool> {
        tokio::time::sleep(super::backoff::random_fraction(self.install_time, 0.5, 1.5)).await;
        let applies = self.fail_release.as_deref().is_none_or(|r| r == instruction.release);
        if applies && self.fail_rate > 0.0 && rand::thread_rng().gen::<f64>() < self.fail_rate {
            bail!("simulated install failure of {} {}", instruction.release, instruction.version);
        }
        Ok(true)
    }
}

/// Downloads every artifact of `instruction`, checking each against its signed length and
/// SHA-256: from the repository's targets (`targets/releases/<release>/<sha256>.<file>`)
/// or, when the repository does not hold the file, from the `custom.url` of the verified
/// `releases` target. Returns the files written (none without an artifact directory).
pub(super) async fn download_artifacts(
    http: &reqwest::Client,
    tuf: &mut TufClient,
    config: &AgentConfig,
    instruction: &DeviceInstruction,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for artifact in &instruction.artifacts {
        let file_name = artifact_file_name(artifact)?;
        let dest = config.artifact_dir.as_ref().map(|d| d.join(&instruction.release).join(file_name));
        if let Some(dir) = dest.as_ref().and_then(|d| d.parent()) {
            tokio::fs::create_dir_all(dir).await.with_context(|| format!("creating {}", dir.display()))?;
        }
        let url = tuf.target_url(&artifact.target, &artifact.sha256)?;
        let fetched = download(http, &url, artifact, dest.as_deref()).await?;
        if !fetched {
            let record = tuf
                .target(&artifact.target)
                .await?
                .with_context(|| format!("{} is not in the repository's releases role", artifact.target))?;
            if hex::encode(&*record.hashes.sha256) != artifact.sha256 || record.length != artifact.length {
                bail!(
                    "{}: the instruction and the releases role disagree on its hash or length",
                    artifact.target
                );
            }
            let url = record
                .custom
                .get("url")
                .and_then(|u| u.as_str())
                .and_then(|u| Url::parse(u).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .with_context(|| {
                    format!("{} is not in the repository and has no http(s) url", artifact.target)
                })?;
            if !download(http, &url, artifact, dest.as_deref()).await? {
                bail!("{}: {url} not found", artifact.target);
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
) -> anyhow::Result<bool> {
    let mut response = http.get(url.clone()).send().await.with_context(|| format!("GET {url}"))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::FORBIDDEN {
        return Ok(false);
    }
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}");
    }
    let part = dest.map(|d| {
        let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        d.with_file_name(format!(".{name}.part"))
    });
    let mut file = match &part {
        Some(p) => {
            Some(tokio::fs::File::create(p).await.with_context(|| format!("creating {}", p.display()))?)
        }
        None => None,
    };
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    while let Some(chunk) = response.chunk().await.with_context(|| format!("GET {url}"))? {
        length += chunk.len() as u64;
        if length > artifact.length {
            bail!("{}: longer than its signed length {}", artifact.target, artifact.length);
        }
        hasher.update(&chunk);
        if let Some(f) = &mut file {
            f.write_all(&chunk).await?;
        }
    }
    if length != artifact.length {
        bail!("{}: {length} bytes, signed length {}", artifact.target, artifact.length);
    }
    let sha = hex::encode(hasher.finalize());
    if sha != artifact.sha256 {
        bail!("{}: sha256 {sha} does not match the signed {}", artifact.target, artifact.sha256);
    }
    if let (Some(mut f), Some(part), Some(dest)) = (file, part, dest) {
        f.flush().await?;
        f.sync_all().await?;
        tokio::fs::rename(&part, dest).await.with_context(|| format!("writing {}", dest.display()))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stderr_tail_keeps_the_end() {
        let long = "x".repeat(5000) + "the real error";
        let t = tail(long.as_bytes());
        assert!(t.ends_with("the real error"));
        assert_eq!(t.len(), STDERR_TAIL);
        assert_eq!(tail(b"  \n"), "(no output on stderr)");
    }
}
