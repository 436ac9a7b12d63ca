//! The inventory database: declared and enrolled devices, each device's latest report and
//! a bounded history, and the persisted rollout state machine.
//!
//! SQLite is the embedded default; a `postgres://` URL selects PostgreSQL. Both speak the
//! same SQL here (numbered `$n` parameters, `ON CONFLICT` upserts, Unix-millisecond
//! times), so there is one code path and one test suite for both.
//!
//! Work is done in bulk: a pass loads what it needs in one query, reports are written in
//! batches (one transaction, multi-row statements), and syncing the declared devices
//! compares before it writes, so an idle fleet causes no writes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};

use super::{DeviceReport, Inventory, UpdateState};

/// Reports kept per device, newest first; older ones are deleted as new ones arrive.
pub const HISTORY_PER_DEVICE: i64 = 20;

/// Rows per multi-row statement. Well under SQLite's and PostgreSQL's bind limits, and
/// small on purpose: binding `$N` parameters in SQLite costs time quadratic in their number
/// per statement (each is looked up by name), which made 500-row inserts spend a quarter
/// of the report path's CPU there.
const ROWS_PER_STATEMENT: usize = 64;

/// Errors of the inventory database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL is not one Waveguide understands.
    #[error("unsupported inventory database URL {url:?}: use a file path, sqlite://PATH or postgres://...")]
    UnsupportedUrl { url: String },
    /// Connecting failed.
    #[error("cannot open inventory database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    /// The SQLite file is not a database, or a damaged one.
    #[error(
        "inventory database {} is damaged or not an SQLite database ({source}); restore it from a \
         backup, or move it away to start with an empty inventory",
        path.display()
    )]
    Damaged { path: std::path::PathBuf, source: sqlx::Error },
    /// Applying the schema migrations failed.
    #[error("cannot migrate inventory database {url}: {source}")]
    Migrate { url: String, source: sqlx::migrate::MigrateError },
    /// A query failed.
    #[error("inventory database error while {action}: {source}")]
    Query { action: &'static str, source: sqlx::Error },
    /// A stored value could not be read back.
    #[error("inventory database holds an invalid {what} for {key}: {value:?}")]
    Corrupt { what: &'static str, key: String, value: String },
    /// A report names a device the inventory does not know.
    #[error("unknown device {0:?}")]
    UnknownDevice(String),
}

fn query_error(action: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { action, source }
}

/// Which database is behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file (the embedded default).
    Sqlite,
    /// A PostgreSQL server, for several controller replicas sharing one inventory.
    Postgres,
}

/// A device the fleet repository declares, as the inventory records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredDevice {
    /// The device id.
    pub id: String,
    /// Its group.
    pub group: String,
    /// Its base64 ed25519 public key, when the repository declares one.
    pub public_key: Option<String>,
}

/// What the inventory knows to authenticate a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device id.
    pub id: String,
    /// Its group.
    pub group: String,
    /// Base64 ed25519 public key, from the repository or from enrollment.
    pub public_key: Option<String>,
    /// Declared in the fleet repository.
    pub declared: bool,
    /// When it enrolled, Unix milliseconds.
    pub enrolled_at: Option<i64>,
}

/// What [`Store::sync_declared`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSummary {
    /// Devices newly recorded.
    pub added: usize,
    /// Devices whose group or key changed.
    pub updated: usize,
    /// Devices no longer declared (kept, with their history, but marked undeclared).
    pub undeclared: usize,
}

/// One authenticated report, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingReport {
    /// The reporting device.
    pub device_id: String,
    /// What it reported.
    pub report: DeviceReport,
    /// Free-form detail, e.g. an installer's error message.
    pub detail: Option<String>,
    /// When the device says it sent the report, Unix milliseconds.
    pub reported_at: i64,
    /// When the server received it, Unix milliseconds.
    pub received_at: i64,
}

/// A stored report, from the history.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReport {
    /// Per-device sequence number, growing by one per report.
    pub seq: i64,
    /// What the device reported.
    pub report: DeviceReport,
    /// Free-form detail.
    pub detail: Option<String>,
    /// When the device sent it, Unix milliseconds.
    pub reported_at: i64,
    /// When the server received it, Unix milliseconds.
    pub received_at: i64,
}

/// The persisted phase of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RolloutPhase {
    /// Publishing waves as their gates open.
    Progressing,
    /// Stopped by an operator; resumes where it stopped.
    Paused,
    /// Stopped by the failure threshold; needs an operator.
    Halted,
    /// Every wave done.
    Completed,
    /// Abandoned by an operator, or replaced by a newer rollout of the same policy.
    Aborted,
}

/// The persisted state of one wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaveState {
    /// Not published yet.
    Pending,
    /// Published; devices are installing, or the wave is baking.
    Published,
    /// Met its success threshold and baked.
    Succeeded,
    /// Crossed its failure threshold.
    Failed,
}

macro_rules! string_enum {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The name stored in the database and shown to operators.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }

        impl FromStr for $ty {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($text => Ok($ty::$variant),)+ _ => Err(()) }
            }
        }
    };
}

string_enum!(RolloutPhase {
    Progressing => "progressing",
    Paused => "paused",
    Halted => "halted",
    Completed => "completed",
    Aborted => "aborted",
});

string_enum!(WaveState {
    Pending => "pending",
    Published => "published",
    Succeeded => "succeeded",
    Failed => "failed",
});

fn parse_update_state(s: &str) -> Option<UpdateState> {
    [
        UpdateState::Idle,
        UpdateState::Downloading,
        UpdateState::Installing,
        UpdateState::Installed,
        UpdateState::Failed,
    ]
    .into_iter()
    .find(|state| state.as_str() == s)
}

/// A persisted rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutRecord {
    /// Unique id, e.g. `<policy>-<n>`.
    pub id: String,
    /// The policy rolling out.
    pub policy: String,
    /// The release it moves to, pinned at start.
    pub release: String,
    /// That release's version.
    pub version: String,
    /// The fleet repository commit that started it.
    pub commit: Option<String>,
    /// Where it is.
    pub phase: RolloutPhase,
    /// Paused by an operator (independent of the phase, so a halted rollout can be paused).
    pub paused: bool,
    /// Why it is in its phase, for operators.
    pub message: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
}

/// A persisted wave of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveRecord {
    /// Position in the rollout, from 0.
    pub index: u32,
    /// Its name, e.g. `canary`.
    pub name: String,
    /// Where it is.
    pub state: WaveState,
    /// Number of devices pinned to it.
    pub size: u64,
    /// Unix milliseconds.
    pub published_at: Option<i64>,
    /// When the wave first met its success threshold (its bake counts from here), Unix
    /// milliseconds.
    pub healthy_at: Option<i64>,
    /// Unix milliseconds.
    pub approved_at: Option<i64>,
    /// Unix milliseconds.
    pub finished_at: Option<i64>,
    /// How long the wave must stay healthy before the next one, milliseconds.
    pub bake_ms: Option<i64>,
}

/// One device of a rollout, as pinned when it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// The wave it belongs to.
    pub wave: u32,
    /// Its place in the rollout order.
    pub position: u64,
    /// The device id.
    pub device_id: String,
    /// When its instruction was published, Unix milliseconds.
    pub published_at: Option<i64>,
}

/// The inventory database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens (creating if needed) and migrates the inventory at `url`: a `postgres://` or
    /// `postgresql://` URL, a `sqlite://` URL, or a plain file path (SQLite).
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, connect_url, file) =
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                (Backend::Postgres, url.to_string(), None)
            } else if let Some(path) = url.strip_prefix("sqlite://") {
                (Backend::Sqlite, sqlite_url(Path::new(path)), Some(Path::new(path)))
            } else if url.contains("://") {
                return Err(StoreError::UnsupportedUrl { url: url.to_string() });
            } else {
                (Backend::Sqlite, sqlite_url(Path::new(url)), Some(Path::new(url)))
            };
        let options = AnyConnectOptions::from_str(&connect_url)
            .map_err(|source| StoreError::Connect { url: url.to_string(), source })?;
        if let Some(path) = file {
            check_sqlite_file(path, &options).await?;
        }
        let pool = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(4)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL lets the API read while the writer commits a batch;
                            // NORMAL sync is durable across process crashes in WAL mode.
                            for pragma in [
                                "PRAGMA journal_mode = WAL",
                                "PRAGMA synchronous = NORMAL",
                                "PRAGMA foreign_keys = ON",
                                "PRAGMA busy_timeout = 5000",
                            ] {
                                sqlx::query(pragma).execute(&mut *conn).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await
            }
        }
        .map_err(|source| StoreError::Connect { url: url.to_string(), source })?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate { url: url.to_string(), source })?;
        Ok(Store { pool, backend })
    }

    /// Begins a transaction that writes. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a deferred transaction that reads first and writes later
    /// fails with `SQLITE_BUSY` without waiting when another connection wrote meanwhile.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// The database behind this store.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Records the devices the fleet repository declares. Compares with what is stored
    /// and writes only the differences; devices that are no longer declared stay (with
    /// their history) but are marked undeclared, unless they enrolled.
    pub async fn sync_declared(
        &self,
        declared: &[DeclaredDevice],
        now: i64,
    ) -> Result<SyncSummary, StoreError> {
        let stored = self.devices().await?;
        let stored: HashMap<&str, &DeviceRecord> = stored.iter().map(|d| (d.id.as_str(), d)).collect();
        let mut upserts = Vec::new();
        let mut summary = SyncSummary::default();
        let mut seen = std::collections::HashSet::with_capacity(declared.len());
        for device in declared {
            seen.insert(device.id.as_str());
            match stored.get(device.id.as_str()) {
                None => {
                    summary.added += 1;
                    upserts.push(device);
                }
                Some(old) => {
                    let key_changed = device.public_key.is_some() && device.public_key != old.public_key;
                    if !old.declared || old.group != device.group || key_changed {
                        summary.updated += 1;
                        upserts.push(device);
                    }
                }
            }
        }
        let undeclare: Vec<&str> = stored
            .values()
            .filter(|d| d.declared && !seen.contains(d.id.as_str()))
            .map(|d| d.id.as_str())
            .collect();
        summary.undeclared = undeclare.len();
        if upserts.is_empty() && undeclare.is_empty() {
            return Ok(summary);
        }
        let mut tx = self.begin_write().await.map_err(query_error("syncing declared devices"))?;
        for chunk in upserts.chunks(ROWS_PER_STATEMENT) {
            let sql = multi_row(
                "INSERT INTO devices (id, group_name, public_key, declared, updated_at) VALUES ",
                5,
                chunk.len(),
                " ON CONFLICT (id) DO UPDATE SET group_name = excluded.group_name, \
                 public_key = COALESCE(excluded.public_key, devices.public_key), declared = excluded.declared, \
                 updated_at = excluded.updated_at",
            );
            let mut query = sqlx::query(&sql);
            for d in chunk {
                query = query.bind(&d.id).bind(&d.group).bind(d.public_key.clone()).bind(1_i64).bind(now);
            }
            query.execute(&mut *tx).await.map_err(query_error("syncing declared devices"))?;
        }
        for chunk in undeclare.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE devices SET declared = $1, updated_at = $2 WHERE id IN ({})",
                placeholders(3, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(0_i64).bind(now);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut *tx).await.map_err(query_error("syncing declared devices"))?;
        }
        tx.commit().await.map_err(query_error("syncing declared devices"))?;
        Ok(summary)
    }

    /// Records a device that enrolled with a group's token. A device that already exists
    /// keeps its declared group; its key is set. Returns the stored record.
    pub async fn enroll(
        &self,
        id: &str,
        group: &str,
        public_key: &str,
        now: i64,
    ) -> Result<DeviceRecord, StoreError> {
        sqlx::query(
            "INSERT INTO devices (id, group_name, public_key, declared, enrolled_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO UPDATE SET \
             public_key = excluded.public_key, enrolled_at = excluded.enrolled_at, updated_at = excluded.updated_at",
        )
        .bind(id)
        .bind(group)
        .bind(public_key)
        .bind(0_i64)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(query_error("enrolling a device"))?;
        self.device(id).await?.ok_or_else(|| StoreError::UnknownDevice(id.to_string()))
    }

    /// One device, if known.
    pub async fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, group_name, public_key, declared, enrolled_at FROM devices WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(query_error("reading a device"))?;
        row.map(|r| device_from_row(&r)).transpose()
    }

    /// Number of known devices (also a cheap check that the database answers).
    pub async fn devices_count(&self) -> Result<i64, StoreError> {
        sqlx::query("SELECT COUNT(*) FROM devices")
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
            .map_err(query_error("counting devices"))
    }

    /// How many devices report each (update state, release), from their latest reports,
    /// counted by the database; devices that never reported are not included.
    pub async fn device_counts(&self) -> Result<Vec<(String, Option<String>, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, release, COUNT(*) FROM device_status GROUP BY state, release")
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("counting devices by state and release"))?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(query_error("counting devices by state and release"))
    }

    /// Every known device, sorted by id.
    pub async fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT id, group_name, public_key, declared, enrolled_at FROM devices ORDER BY id")
                .fetch_all(&self.pool)
                .await
                .map_err(query_error("reading devices"))?;
        rows.iter().map(device_from_row).collect()
    }

    /// Stores a batch of reports in one transaction: each device's latest report, a new
    /// history row per report, and the history trimmed to [`HISTORY_PER_DEVICE`]. Reports
    /// of one device in a batch are applied in order. Every device must be known; if one
    /// is not, nothing of the batch is stored.
    pub async fn record_reports(&self, reports: &[IncomingReport]) -> Result<(), StoreError> {
        if reports.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await.map_err(query_error("storing reports"))?;
        // The current sequence number of every device in the batch, in one query per chunk.
        let mut ids: Vec<&str> = reports.iter().map(|r| r.device_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut known: HashMap<String, i64> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT d.id, COALESCE(s.seq, 0) FROM devices d LEFT JOIN device_status s ON s.device_id = d.id \
                 WHERE d.id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *tx).await.map_err(query_error("storing reports"))? {
                let id: String = row.try_get(0).map_err(query_error("storing reports"))?;
                let seq: i64 = row.try_get(1).map_err(query_error("storing reports"))?;
                known.insert(id, seq);
            }
        }
        if let Some(unknown) = ids.iter().find(|id| !known.contains_key(**id)) {
            return Err(StoreError::UnknownDevice(unknown.to_string()));
        }
        // Number the reports and keep the newest per device for the status table.
        let mut numbered = Vec::with_capacity(reports.len());
        let mut latest: BTreeMap<&str, usize> = BTreeMap::new();
        for report in reports {
            let seq = known.get_mut(&report.device_id).expect("checked above");
            *seq += 1;
            latest.insert(&report.device_id, numbered.len());
            numbered.push((*seq, report));
        }
        const COLUMNS: &str =
            "device_id, seq, release, version, state, healthy, detail, reported_at, received_at";
        for chunk in numbered.chunks(ROWS_PER_STATEMENT) {
            let sql =
                multi_row(&format!("INSERT INTO device_reports ({COLUMNS}) VALUES "), 9, chunk.len(), "");
            let mut query = sqlx::query(&sql);
            for (seq, r) in chunk {
                query = bind_report(query, *seq, r);
            }
            query.execute(&mut *tx).await.map_err(query_error("storing reports"))?;
        }
        let newest: Vec<&(i64, &IncomingReport)> = latest.values().map(|&i| &numbered[i]).collect();
        for chunk in newest.chunks(ROWS_PER_STATEMENT) {
            let sql = multi_row(
                &format!("INSERT INTO device_status ({COLUMNS}) VALUES "),
                9,
                chunk.len(),
                " ON CONFLICT (device_id) DO UPDATE SET seq = excluded.seq, release = excluded.release, \
                 version = excluded.version, state = excluded.state, healthy = excluded.healthy, \
                 detail = excluded.detail, reported_at = excluded.reported_at, received_at = excluded.received_at",
            );
            let mut query = sqlx::query(&sql);
            for (seq, r) in chunk {
                query = bind_report(query, *seq, r);
            }
            query.execute(&mut *tx).await.map_err(query_error("storing reports"))?;
        }
        // Trim each touched device's history to the newest HISTORY_PER_DEVICE reports
        // (only devices that have more than that).
        let full: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| known.get(*id).is_some_and(|&seq| seq > HISTORY_PER_DEVICE))
            .collect();
        for chunk in full.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "DELETE FROM device_reports WHERE device_id IN ({}) AND seq <= \
                 (SELECT s.seq FROM device_status s WHERE s.device_id = device_reports.device_id) - $1",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(HISTORY_PER_DEVICE);
            for id in chunk {
                query = query.bind(*id);
            }
            query.execute(&mut *tx).await.map_err(query_error("trimming report history"))?;
        }
        tx.commit().await.map_err(query_error("storing reports"))
    }

    /// The discovered state of the fleet: every device's latest report, for the planner.
    pub async fn inventory(&self) -> Result<Inventory, StoreError> {
        let rows = sqlx::query(
            "SELECT device_id, release, version, state, healthy, reported_at FROM device_status ORDER BY device_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading the inventory"))?;
        let mut reports = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get(0).map_err(query_error("reading the inventory"))?;
            let report = report_from_row(row, &id, 1)?;
            reports.push((id.into_boxed_str(), report));
        }
        Inventory::new(None, reports).map_err(|id| StoreError::Corrupt {
            what: "duplicate status row",
            key: id.to_string(),
            value: String::new(),
        })
    }

    /// The latest report of every device whose report the server received at or after
    /// `since` (Unix milliseconds), with the newest receive time seen: what changed since
    /// an earlier [`Store::inventory`] or `changed_since`.
    pub async fn changed_since(
        &self,
        since: i64,
    ) -> Result<(Vec<(Box<str>, DeviceReport)>, i64), StoreError> {
        let rows = sqlx::query(
            "SELECT device_id, release, version, state, healthy, reported_at, received_at FROM device_status \
             WHERE received_at >= $1",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading changed reports"))?;
        let mut newest = since;
        let mut reports = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: String = row.try_get(0).map_err(query_error("reading changed reports"))?;
            let report = report_from_row(row, &id, 1)?;
            newest = newest.max(row.try_get::<i64, _>(6).map_err(query_error("reading changed reports"))?);
            reports.push((id.into_boxed_str(), report));
        }
        Ok((reports, newest))
    }

    /// A device's report history, newest first, at most `limit` reports.
    pub async fn history(&self, device_id: &str, limit: i64) -> Result<Vec<StoredReport>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, release, version, state, healthy, reported_at, detail, received_at FROM device_reports \
             WHERE device_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(device_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading report history"))?;
        rows.iter()
            .map(|row| {
                let action = "reading report history";
                Ok(StoredReport {
                    seq: row.try_get(0).map_err(query_error(action))?,
                    report: report_from_row(row, device_id, 1)?,
                    detail: row.try_get(6).map_err(query_error(action))?,
                    reported_at: row.try_get(5).map_err(query_error(action))?,
                    received_at: row.try_get(7).map_err(query_error(action))?,
                })
            })
            .collect()
    }

    /// Creates a rollout with its waves and their pinned members, in one transaction.
    /// `members[i]` are the device ids of `waves[i]`.
    pub async fn create_rollout(
        &self,
        rollout: &RolloutRecord,
        waves: &[WaveRecord],
        members: &[Vec<String>],
    ) -> Result<(), StoreError> {
        let action = "creating a rollout";
        let mut tx = self.begin_write().await.map_err(query_error(action))?;
        sqlx::query(
            "INSERT INTO rollouts (id, policy, release, version, commit_id, phase, paused, message, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&rollout.id)
        .bind(&rollout.policy)
        .bind(&rollout.release)
        .bind(&rollout.version)
        .bind(rollout.commit.clone())
        .bind(rollout.phase.as_str())
        .bind(i64::from(rollout.paused))
        .bind(rollout.message.clone())
        .bind(rollout.created_at)
        .bind(rollout.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(query_error(action))?;
        for wave in waves {
            sqlx::query(
                "INSERT INTO waves (rollout_id, idx, name, state, size, published_at, healthy_at, approved_at, \
                 finished_at, bake_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(&rollout.id)
            .bind(i64::from(wave.index))
            .bind(&wave.name)
            .bind(wave.state.as_str())
            .bind(wave.size as i64)
            .bind(wave.published_at)
            .bind(wave.healthy_at)
            .bind(wave.approved_at)
            .bind(wave.finished_at)
            .bind(wave.bake_ms)
            .execute(&mut *tx)
            .await
            .map_err(query_error(action))?;
        }
        let mut position = 0i64;
        for (index, ids) in members.iter().enumerate() {
            for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                let sql = multi_row(
                    "INSERT INTO wave_devices (rollout_id, idx, device_id, position) VALUES ",
                    4,
                    chunk.len(),
                    "",
                );
                let mut query = sqlx::query(&sql);
                for id in chunk {
                    query = query.bind(&rollout.id).bind(index as i64).bind(id).bind(position);
                    position += 1;
                }
                query.execute(&mut *tx).await.map_err(query_error(action))?;
            }
        }
        tx.commit().await.map_err(query_error(action))
    }

    /// Updates a rollout's phase, pause flag and message.
    pub async fn update_rollout(&self, rollout: &RolloutRecord) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE rollouts SET phase = $1, paused = $2, message = $3, updated_at = $4 WHERE id = $5",
        )
        .bind(rollout.phase.as_str())
        .bind(i64::from(rollout.paused))
        .bind(rollout.message.clone())
        .bind(rollout.updated_at)
        .bind(&rollout.id)
        .execute(&self.pool)
        .await
        .map_err(query_error("updating a rollout"))?;
        Ok(())
    }

    /// Updates one wave's state and times.
    pub async fn update_wave(&self, rollout_id: &str, wave: &WaveRecord) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE waves SET state = $1, published_at = $2, healthy_at = $3, approved_at = $4, finished_at = $5 \
             WHERE rollout_id = $6 AND idx = $7",
        )
        .bind(wave.state.as_str())
        .bind(wave.published_at)
        .bind(wave.healthy_at)
        .bind(wave.approved_at)
        .bind(wave.finished_at)
        .bind(rollout_id)
        .bind(i64::from(wave.index))
        .execute(&self.pool)
        .await
        .map_err(query_error("updating a wave"))?;
        Ok(())
    }

    /// Every rollout, oldest first.
    pub async fn rollouts(&self) -> Result<Vec<RolloutRecord>, StoreError> {
        let rows = sqlx::query(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY created_at, id"))
            .fetch_all(&self.pool)
            .await
            .map_err(query_error("reading rollouts"))?;
        rows.iter().map(rollout_from_row).collect()
    }

    /// One rollout's waves, in order.
    pub async fn waves(&self, rollout_id: &str) -> Result<Vec<WaveRecord>, StoreError> {
        let action = "reading waves";
        let rows = sqlx::query(
            "SELECT idx, name, state, size, published_at, healthy_at, approved_at, finished_at, bake_ms FROM waves \
             WHERE rollout_id = $1 ORDER BY idx",
        )
        .bind(rollout_id)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error(action))?;
        rows.iter()
            .map(|row| {
                let state: String = row.try_get(2).map_err(query_error(action))?;
                Ok(WaveRecord {
                    index: row.try_get::<i64, _>(0).map_err(query_error(action))? as u32,
                    name: row.try_get(1).map_err(query_error(action))?,
                    state: state.parse().map_err(|()| StoreError::Corrupt {
                        what: "wave state",
                        key: rollout_id.to_string(),
                        value: state.clone(),
                    })?,
                    size: row.try_get::<i64, _>(3).map_err(query_error(action))? as u64,
                    published_at: row.try_get(4).map_err(query_error(action))?,
                    healthy_at: row.try_get(5).map_err(query_error(action))?,
                    approved_at: row.try_get(6).map_err(query_error(action))?,
                    finished_at: row.try_get(7).map_err(query_error(action))?,
                    bake_ms: row.try_get(8).map_err(query_error(action))?,
                })
            })
            .collect()
    }

    /// The device ids pinned to one wave of a rollout, sorted.
    pub async fn wave_members(&self, rollout_id: &str, index: u32) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT device_id FROM wave_devices WHERE rollout_id = $1 AND idx = $2 ORDER BY device_id",
        )
        .bind(rollout_id)
        .bind(i64::from(index))
        .fetch_all(&self.pool)
        .await
        .map_err(query_error("reading wave members"))?;
        rows.iter().map(|r| r.try_get(0).map_err(query_error("reading wave members"))).collect()
    }

    /// Every member of a rollout, in rollout order.
    pub async fn rollout_members(&self, rollout_id: &str) -> Result<Vec<MemberRecord>, StoreError> {
        let action = "reading rollout members";
        let rows = sqlx::query(
            "SELECT idx, position, device_id, published_at FROM wave_devices WHERE rollout_id = $1 \
             ORDER BY position, device_id",
        )
        .bind(rollout_id)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error(action))?;
        rows.iter().map(|row| member_from_row(row, action)).collect()
    }

    /// Every member of a rollout with its device's latest report, if any: a rollout's
    /// progress without reading the rest of the fleet.
    pub async fn member_reports(
        &self,
        rollout_id: &str,
    ) -> Result<Vec<(MemberRecord, Option<DeviceReport>)>, StoreError> {
        let action = "reading rollout members and their reports";
        let rows = sqlx::query(
            "SELECT w.idx, w.position, w.device_id, w.published_at, \
             s.release, s.version, s.state, s.healthy, s.reported_at \
             FROM wave_devices w LEFT JOIN device_status s ON s.device_id = w.device_id \
             WHERE w.rollout_id = $1 ORDER BY w.position, w.device_id",
        )
        .bind(rollout_id)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error(action))?;
        rows.iter()
            .map(|row| {
                let member = member_from_row(row, action)?;
                // `version` is never NULL in a status row: NULL means no report.
                let reported = row.try_get::<Option<String>, _>(5).map_err(query_error(action))?.is_some();
                let report = if reported { Some(report_from_row(row, &member.device_id, 4)?) } else { None };
                Ok((member, report))
            })
            .collect()
    }

    /// Records that the instructions of `device_ids`, members of a rollout, were published.
    pub async fn mark_published(
        &self,
        rollout_id: &str,
        device_ids: &[String],
        at: i64,
    ) -> Result<(), StoreError> {
        let action = "recording published devices";
        let mut tx = self.begin_write().await.map_err(query_error(action))?;
        for chunk in device_ids.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE wave_devices SET published_at = $1 WHERE rollout_id = $2 AND published_at IS NULL \
                 AND device_id IN ({})",
                placeholders(3, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(at).bind(rollout_id);
            for id in chunk {
                query = query.bind(id);
            }
            query.execute(&mut *tx).await.map_err(query_error(action))?;
        }
        tx.commit().await.map_err(query_error(action))
    }

    /// One rollout.
    pub async fn rollout(&self, id: &str) -> Result<Option<RolloutRecord>, StoreError> {
        let row = sqlx::query(&format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(query_error("reading a rollout"))?;
        row.as_ref().map(rollout_from_row).transpose()
    }

    /// Sets when one wave was approved; `None` withdraws the approval.
    pub async fn approve_wave(
        &self,
        rollout_id: &str,
        index: u32,
        at: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE waves SET approved_at = $1 WHERE rollout_id = $2 AND idx = $3")
            .bind(at)
            .bind(rollout_id)
            .bind(i64::from(index))
            .execute(&self.pool)
            .await
            .map_err(query_error("approving a wave"))?;
        Ok(())
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds one report row in the column order of `device_reports` / `device_status`.
fn bind_report<'q>(query: AnyQuery<'q>, seq: i64, r: &IncomingReport) -> AnyQuery<'q> {
    query
        .bind(r.device_id.clone())
        .bind(seq)
        .bind(r.report.release.clone())
        .bind(r.report.version.to_string())
        .bind(r.report.state.as_str())
        .bind(i64::from(r.report.healthy))
        .bind(r.detail.clone())
        .bind(r.reported_at)
        .bind(r.received_at)
}

/// Opens the SQLite file once and reads its header and schema, so that a file that is no
/// database (or a damaged one) is refused at once with its cause; the pool would retry
/// its connections until its timeout and then say only that it timed out.
async fn check_sqlite_file(path: &Path, options: &AnyConnectOptions) -> Result<(), StoreError> {
    use sqlx::{ConnectOptions, Connection};
    let connect = |source| StoreError::Connect { url: path.display().to_string(), source };
    let mut conn = options.connect().await.map_err(connect)?;
    let read = sqlx::query("SELECT count(*) FROM sqlite_master").fetch_one(&mut conn).await;
    let _ = conn.close().await;
    match read {
        Ok(_) => Ok(()),
        // SQLITE_NOTADB (26) and SQLITE_CORRUPT (11).
        Err(source)
            if source
                .as_database_error()
                .and_then(|e| e.code())
                .is_some_and(|code| code == "26" || code == "11") =>
        {
            Err(StoreError::Damaged { path: path.to_owned(), source })
        }
        Err(source) => Err(connect(source)),
    }
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

/// `$first, $first+1, ...` for `count` parameters.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ")
}

/// `prefix ($1, ..., $k), ($k+1, ...), ... suffix` for `rows` rows of `columns` values.
fn multi_row(prefix: &str, columns: usize, rows: usize, suffix: &str) -> String {
    let mut sql = String::with_capacity(prefix.len() + suffix.len() + rows * columns * 6);
    sql.push_str(prefix);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        sql.push_str(&placeholders(row * columns + 1, columns));
        sql.push(')');
    }
    sql.push_str(suffix);
    sql
}

fn device_from_row(row: &sqlx::any::AnyRow) -> Result<DeviceRecord, StoreError> {
    let action = "reading devices";
    Ok(DeviceRecord {
        id: row.try_get(0).map_err(query_error(action))?,
        group: row.try_get(1).map_err(query_error(action))?,
        public_key: row.try_get(2).map_err(query_error(action))?,
        declared: row.try_get::<i64, _>(3).map_err(query_error(action))? != 0,
        enrolled_at: row.try_get(4).map_err(query_error(action))?,
    })
}

/// Reads `release, version, state, healthy, reported_at` starting at column `first`.
fn report_from_row(row: &sqlx::any::AnyRow, device: &str, first: usize) -> Result<DeviceReport, StoreError> {
    let action = "reading reports";
    let release: Option<String> = row.try_get(first).map_err(query_error(action))?;
    let version: String = row.try_get(first + 1).map_err(query_error(action))?;
    let state: String = row.try_get(first + 2).map_err(query_error(action))?;
    let healthy = row.try_get::<i64, _>(first + 3).map_err(query_error(action))? != 0;
    let reported_at: i64 = row.try_get(first + 4).map_err(query_error(action))?;
    let corrupt =
        |what, value: &str| StoreError::Corrupt { what, key: device.to_string(), value: value.to_string() };
    Ok(DeviceReport {
        release,
        version: version.parse().map_err(|_| corrupt("version", &version))?,
        state: parse_update_state(&state).ok_or_else(|| corrupt("update state", &state))?,
        healthy,
        last_seen: Some(
            jiff::Timestamp::from_millisecond(reported_at)
                .map_err(|_| corrupt("report time", &reported_at.to_string()))?,
        ),
    })
}

/// A member from its first four columns: `idx, position, device_id, published_at`.
fn member_from_row(row: &sqlx::any::AnyRow, action: &'static str) -> Result<MemberRecord, StoreError> {
    Ok(MemberRecord {
        wave: row.try_get::<i64, _>(0).map_err(query_error(action))? as u32,
        position: row.try_get::<i64, _>(1).map_err(query_error(action))? as u64,
        device_id: row.try_get(2).map_err(query_error(action))?,
        published_at: row.try_get(3).map_err(query_error(action))?,
    })
}

/// The columns [`rollout_from_row`] reads, in its order.
const ROLLOUT_COLUMNS: &str =
    "id, policy, release, version, commit_id, phase, paused, message, created_at, updated_at";

fn rollout_from_row(row: &sqlx::any::AnyRow) -> Result<RolloutRecord, StoreError> {
    let action = "reading rollouts";
    let id: String = row.try_get(0).map_err(query_error(action))?;
    let phase: String = row.try_get(5).map_err(query_error(action))?;
    Ok(RolloutRecord {
        policy: row.try_get(1).map_err(query_error(action))?,
        release: row.try_get(2).map_err(query_error(action))?,
        version: row.try_get(3).map_err(query_error(action))?,
        commit: row.try_get(4).map_err(query_error(action))?,
        phase: phase.parse().map_err(|()| StoreError::Corrupt {
            what: "rollout phase",
            key: id.clone(),
            value: phase.clone(),
        })?,
        paused: row.try_get::<i64, _>(6).map_err(query_error(action))? != 0,
        message: row.try_get(7).map_err(query_error(action))?,
        created_at: row.try_get(8).map_err(query_error(action))?,
        updated_at: row.try_get(9).map_err(query_error(action))?,
        id,
    })
}
