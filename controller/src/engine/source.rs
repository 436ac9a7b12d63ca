//! The read of a pass on the source side: poll the fleet repository, compile a new
//! commit, record its declared devices in the inventory, and take it as the fleet in
//! force. A commit that does not compile is refused; the last good one stays in force.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::{upkeep, Desired, Engine, EngineError, Rollouts};
use crate::api::EnrollmentTokens;
use crate::compile::{DeviceDocuments, Documents, Severity};
use crate::inventory::store::DeclaredDevice;
use crate::source::Poll;

/// Where one [`Engine::sync_source`] spent its time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncTimings {
    /// Fetching and resolving the reference (and reading the fleet files).
    pub fetch: Duration,
    /// Compiling the fleet.
    pub compile: Duration,
    /// Recording the declared devices in the inventory.
    pub declare: Duration,
}

/// A digest of the declared devices (ids, groups, keys), in declaration order.
fn declared_digest(declared: &[DeclaredDevice]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for d in declared {
        hash.update(d.id.as_bytes());
        hash.update([0]);
        hash.update(d.group.as_bytes());
        hash.update([0]);
        hash.update(d.public_key.as_deref().unwrap_or("").as_bytes());
        hash.update([1]);
    }
    hash.finalize().into()
}

/// What syncing the source found.
#[derive(Debug)]
pub enum SourceOutcome {
    /// A new commit compiled and is now in force.
    Applied {
        /// The commit.
        commit: String,
        /// Devices it declares.
        devices: usize,
    },
    /// A new commit does not compile; the last good one stays in force.
    Refused {
        /// The commit.
        commit: String,
        /// Its errors, each naming file and line.
        errors: Vec<String>,
    },
    /// Nothing new.
    Unchanged,
    /// The source could not be read (fetch, signature); the last good commit stays.
    Failed(String),
}

impl Engine {
    /// Polls the source and, when its fleet changed, compiles it; a fleet that compiles
    /// is applied: its devices are recorded in the inventory and the engine takes it.
    pub async fn sync_source(&mut self) -> Result<SourceOutcome, EngineError> {
        self.timings = SyncTimings::default();
        let started = Instant::now();
        let mut source = self.source.take().expect("the source is only moved out during a poll");
        let (polled, source) = tokio::task::spawn_blocking(move || {
            // Caught here so that a panic in the Git code loses neither the source nor its
            // status: the pass fails, and the next one polls again.
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| source.poll()));
            (polled, source)
        })
        .await
        .map_err(|_| EngineError::Panicked { what: "source" })?;
        self.source = Some(source);
        let polled = polled.map_err(|_| EngineError::Panicked { what: "source" })?;
        self.timings.fetch = started.elapsed();
        let update = match polled {
            Poll::Changed(update) => update,
            Poll::Unchanged(_) => return Ok(SourceOutcome::Unchanged),
            Poll::Failed(e) => return Ok(SourceOutcome::Failed(e.to_string())),
        };
        let commit = update.revision.commit.to_string();
        let files = update.files;
        let compiling = Instant::now();
        let mut compiler = std::mem::take(&mut self.compiler);
        let compiled = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                (compiler.compile(&files), compiler)
            }))
        })
        .await;
        // After a panic the compiler's cache is dropped with it; the default one starts afresh.
        let Ok(Ok((compilation, compiler))) = compiled else {
            return Err(EngineError::Panicked { what: "compiler" });
        };
        self.compiler = compiler;
        self.timings.compile = compiling.elapsed();
        let source = self.source.as_mut().expect("source");
        let Some(fleet) = compilation.fleet else {
            let errors: Vec<String> = compilation
                .diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .map(|d| {
                    format!(
                        "{}:{}:{}: {} {}",
                        d.location.file, d.location.line, d.location.column, d.code, d.message
                    )
                })
                .collect();
            let summary =
                format!("{} errors, first: {}", errors.len(), errors.first().map_or("", String::as_str));
            tracing::error!(%commit, "commit refused: {summary}");
            source.rejected(&update.revision, &summary);
            return Ok(SourceOutcome::Refused { commit, errors });
        };
        let declaring = Instant::now();
        let declared_from = DeviceDocuments::of(&compilation.documents);
        if self.declared_from.as_ref() != Some(&declared_from) {
            let declared = declared_devices(&compilation.documents);
            let digest = declared_digest(&declared);
            if self.declared_digest != Some(digest) {
                if let Err(e) = self.store.sync_declared(&declared, Timestamp::now().as_millisecond()).await {
                    // Not applied, not refused either: the same commit is offered again
                    // once the backoff has passed.
                    source.apply_failed(&update.revision, &e);
                    return Err(e.into());
                }
                self.declared_digest = Some(digest);
            }
            self.declared_from = Some(declared_from);
        }
        self.timings.declare = declaring.elapsed();
        if let Some(api) = &self.api {
            api.forget_keys();
            api.set_enrollment_tokens(enrollment_tokens(&compilation.documents));
        }
        if self.rollouts.is_none() {
            let repo = match upkeep::open_repository(&self.setup, &self.keys, fleet.devices().len()) {
                Ok(repo) => repo,
                Err(e) => {
                    source.apply_failed(&update.revision, &e);
                    return Err(e);
                }
            };
            self.rollouts = Some(Rollouts::new(self.store.clone(), repo, self.setup.rollouts));
        }
        let devices = fleet.devices().len();
        tracing::info!(%commit, devices, "commit applied");
        source.applied(&update.revision);
        self.desired = Some(Desired { fleet: Arc::new(fleet), commit: Some(commit.clone()) });
        Ok(SourceOutcome::Applied { commit, devices })
    }
}

/// The devices a fleet declares, with their keys, for the inventory.
pub fn declared_devices(documents: &Documents) -> Vec<DeclaredDevice> {
    let mut out = Vec::new();
    for d in &documents.devices {
        let spec = &d.value.spec;
        out.push(DeclaredDevice {
            id: spec.id.clone().unwrap_or_else(|| d.value.metadata.name.clone()),
            group: spec.group.clone(),
            public_key: spec.public_key.clone(),
        });
    }
    for set in &documents.device_sets {
        let spec = &set.value.spec;
        for entry in &spec.devices {
            out.push(DeclaredDevice {
                id: entry.id.clone(),
                group: spec.group.clone(),
                public_key: entry.public_key.clone(),
            });
        }
        if let Some(range) = &spec.range {
            out.extend(range.ids().map(|id| DeclaredDevice {
                id,
                group: spec.group.clone(),
                public_key: None,
            }));
        }
    }
    out
}

/// The groups' enrollment tokens (their SHA-256), for the device API.
pub fn enrollment_tokens(documents: &Documents) -> EnrollmentTokens {
    documents
        .groups
        .iter()
        .filter_map(|g| {
            let enrollment = g.value.spec.enrollment.as_ref()?;
            Some((enrollment.token_sha256.clone(), g.value.metadata.name.clone()))
        })
        .collect()
}
