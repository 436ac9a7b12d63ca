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

mod reports;
mod rollouts;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};

pub use reports::{IncomingReport, ReportOutcome, StoredReport};
pub use rollouts::{
    MemberRecord, NewMember, ReleaseRef, Requests, RolloutPhase, RolloutRecord, Waiting, WaveRecord,
    WaveState,
};

/// Reports kept per device, newest first; older ones are deleted as new ones arrive.
pub const HISTORY_PER_DEVICE: i64 = 20;

/// Rows per multi-row statement. Well under SQLite's and PostgreSQL's bind limits, and
/// small on purpose: binding `$N` parameters in SQLite costs time quadratic in their number
/// per statement (each is looked up by name), which made 500-row inserts spend a quarter
/// of the report path's CPU there.
const ROWS_PER_STATEMENT: usize = 64;

/// How long a query waits for a PostgreSQL connection (connecting included) before it
/// fails as unavailable: short, so that during an outage the device API answers 503 at
/// once instead of holding requests (and devices) for the pool's default 30 s.
const POSTGRES_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// The same for SQLite, where waiting means the other connections are busy.
const SQLITE_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

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

impl StoreError {
    /// True when the database could not be reached or was too busy to answer (connection
    /// refused or lost, no connection free in time, locked, shutting down, out of
    /// resources): the request may succeed if tried again later, unlike a refused query
    /// or corrupt data.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Connect { source, .. } | StoreError::Query { source, .. } => unavailable(source),
            _ => false,
        }
    }
}

/// `url` with its password, if any, replaced by `***`: what error messages and logs show
/// of a database URL.
pub fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

fn unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                // Connection exceptions, insufficient resources, operator intervention
                // (shutdown, cannot connect now), serialization failures and deadlocks.
                let code = pg.code();
                ["08", "53", "57P"].iter().any(|class| code.starts_with(class))
                    || matches!(code, "40001" | "40P01" | "55P03")
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // The primary result code: BUSY, LOCKED, IOERR, FULL, CANTOPEN.
                let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0);
                matches!(code & 0xff, 5 | 6 | 10 | 13 | 14)
            } else {
                false
            }
        }
        _ => false,
    }
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

/// What became of an enrollment ([`Store::enroll`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrollment {
    /// The device is recorded with the key it presented (now, or it already was).
    Enrolled(DeviceRecord),
    /// Refused: the device already has another key. Nothing changed.
    OtherKey(DeviceRecord),
    /// Refused: the device is declared in another group. Nothing changed.
    OtherGroup(DeviceRecord),
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
                return Err(StoreError::UnsupportedUrl { url: without_password(url) });
            } else {
                (Backend::Sqlite, sqlite_url(Path::new(url)), Some(Path::new(url)))
            };
        let options = AnyConnectOptions::from_str(&connect_url)
            .map_err(|source| StoreError::Connect { url: without_password(url), source })?;
        if let Some(path) = file {
            check_sqlite_file(path, &options).await?;
        }
        let pool = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(SQLITE_ACQUIRE_TIMEOUT)
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
                    .acquire_timeout(POSTGRES_ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
            }
        }
        .map_err(|source| StoreError::Connect { url: without_password(url), source })?;
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

    /// Records a device that enrolled with a group's token, unless that would change a
    /// key or a declared group: a device that has a key keeps it, and a declared device
    /// keeps its group. The write is conditional in the database itself, so of concurrent
    /// enrollments of one new id with different keys exactly one wins; enrolling again
    /// with the same key changes nothing and is [`Enrollment::Enrolled`].
    pub async fn enroll(
        &self,
        id: &str,
        group: &str,
        public_key: &str,
        now: i64,
    ) -> Result<Enrollment, StoreError> {
        let action = "enrolling a device";
        let mut tx = self.begin_write().await.map_err(query_error(action))?;
        sqlx::query(
            "INSERT INTO devices (id, group_name, public_key, declared, enrolled_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (id) DO UPDATE SET \
             public_key = excluded.public_key, enrolled_at = excluded.enrolled_at, updated_at = excluded.updated_at \
             WHERE devices.public_key IS NULL AND (devices.declared = 0 OR devices.group_name = excluded.group_name)",
        )
        .bind(id)
        .bind(group)
        .bind(public_key)
        .bind(0_i64)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(query_error(action))?;
        let row = sqlx::query(
            "SELECT id, group_name, public_key, declared, enrolled_at FROM devices WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(query_error(action))?;
        tx.commit().await.map_err(query_error(action))?;
        let record = device_from_row(&row)?;
        Ok(if record.declared && record.group != group {
            Enrollment::OtherGroup(record)
        } else if record.public_key.as_deref() != Some(public_key) {
            Enrollment::OtherKey(record)
        } else {
            Enrollment::Enrolled(record)
        })
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

#[cfg(test)]
mod url_tests {
    use super::without_password;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(without_password("postgres://wg:secret@db:5432/fleet"), "postgres://wg:***@db:5432/fleet");
        assert_eq!(without_password("postgres://wg@db/fleet"), "postgres://wg@db/fleet");
        assert_eq!(
            without_password("/var/lib/waveguide/inventory.sqlite"),
            "/var/lib/waveguide/inventory.sqlite"
        );
    }
}
