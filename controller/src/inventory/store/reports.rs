//! Device reports: each device's latest report and a bounded history.

use std::collections::{BTreeMap, HashMap};

use sqlx::Row;

use super::{
    multi_row, placeholders, query_error, Store, StoreError, HISTORY_PER_DEVICE, ROWS_PER_STATEMENT,
};
use crate::inventory::{DeviceReport, Inventory};
use crate::protocol::{FailureClass, UpdateState};

/// One authenticated report, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingReport {
    /// The reporting device.
    pub device_id: String,
    /// What it reported.
    pub report: DeviceReport,
    /// Free-form detail, e.g. an installer's error message.
    pub detail: Option<String>,
    /// The fleet commit of the instruction behind the release the device runs.
    pub commit: Option<String>,
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
    /// The fleet commit of the instruction behind the release the device ran.
    pub commit: Option<String>,
    /// When the device sent it, Unix milliseconds.
    pub reported_at: i64,
    /// When the server received it, Unix milliseconds.
    pub received_at: i64,
}

/// What became of one report of a batch given to [`Store::record_reports`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Stored: the device's latest report, and in its history.
    Stored,
    /// Refused, stored nowhere: its timestamp is not newer than the device's latest
    /// stored report (a replay, or a report overtaken by a newer one).
    NotNewer {
        /// The timestamp of the device's latest stored report, Unix milliseconds.
        latest: i64,
    },
    /// Refused, stored nowhere: the inventory does not know the device (removed meanwhile).
    UnknownDevice,
}

impl Store {
    /// Stores a batch of reports in one transaction: each device's latest report, a new
    /// history row per report, and the history trimmed to [`HISTORY_PER_DEVICE`]. Returns
    /// what became of each report, in order.
    ///
    /// A report is stored only when its `reported_at` is newer than the device's latest
    /// stored report (and than the device's earlier reports of the batch): the check
    /// against what is stored, inside the write transaction with the device rows
    /// locked, is what refuses a replayed report after a restart or on another replica
    /// sharing the database.
    pub async fn record_reports(&self, reports: &[IncomingReport]) -> Result<Vec<ReportOutcome>, StoreError> {
        if reports.is_empty() {
            return Ok(Vec::new());
        }
        let action = "storing reports";
        let mut tx = self.begin_write().await.map_err(query_error(action))?;
        let mut ids: Vec<&str> = reports.iter().map(|r| r.device_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        // SQLite's `BEGIN IMMEDIATE` already serialises writers. PostgreSQL locks the
        // device rows (in id order, so two batches cannot deadlock) before reading their
        // latest report, so that two replicas cannot both accept the same report; the
        // read below is a later statement and sees what the other committed.
        if self.backend == super::Backend::Postgres {
            for chunk in ids.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "SELECT id FROM devices WHERE id IN ({}) ORDER BY id FOR UPDATE",
                    placeholders(1, chunk.len())
                );
                let mut query = sqlx::query(&sql);
                for id in chunk {
                    query = query.bind(*id);
                }
                query.fetch_all(&mut *tx).await.map_err(query_error(action))?;
            }
        }
        // The sequence number and latest report time of every device in the batch.
        let mut known: HashMap<String, (i64, i64)> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT d.id, COALESCE(s.seq, 0), s.reported_at FROM devices d \
                 LEFT JOIN device_status s ON s.device_id = d.id WHERE d.id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *tx).await.map_err(query_error(action))? {
                let id: String = row.try_get(0).map_err(query_error(action))?;
                let seq: i64 = row.try_get(1).map_err(query_error(action))?;
                let latest: Option<i64> = row.try_get(2).map_err(query_error(action))?;
                let latest = latest.unwrap_or(i64::MIN);
                known.insert(id, (seq, latest));
            }
        }
        // Number the reports that are newer than what the device has, and keep the newest
        // per device for the status table.
        let mut outcomes = Vec::with_capacity(reports.len());
        let mut numbered = Vec::with_capacity(reports.len());
        let mut latest: BTreeMap<&str, usize> = BTreeMap::new();
        for report in reports {
            let Some((seq, newest)) = known.get_mut(&report.device_id) else {
                outcomes.push(ReportOutcome::UnknownDevice);
                continue;
            };
            if report.reported_at <= *newest {
                outcomes.push(ReportOutcome::NotNewer { latest: *newest });
                continue;
            }
            *seq += 1;
            *newest = report.reported_at;
            latest.insert(&report.device_id, numbered.len());
            numbered.push((*seq, report));
            outcomes.push(ReportOutcome::Stored);
        }
        if numbered.is_empty() {
            return Ok(outcomes);
        }
        const COLUMNS: &str =
            "device_id, seq, release, version, state, healthy, detail, reported_at, received_at, failure, commit_id";
        for chunk in numbered.chunks(ROWS_PER_STATEMENT) {
            let sql =
                multi_row(&format!("INSERT INTO device_reports ({COLUMNS}) VALUES "), 11, chunk.len(), "");
            let mut query = sqlx::query(&sql);
            for (seq, r) in chunk {
                query = bind_report(query, *seq, r);
            }
            query.execute(&mut *tx).await.map_err(query_error(action))?;
        }
        let newest: Vec<&(i64, &IncomingReport)> = latest.values().map(|&i| &numbered[i]).collect();
        for chunk in newest.chunks(ROWS_PER_STATEMENT) {
            let sql = multi_row(
                &format!("INSERT INTO device_status ({COLUMNS}) VALUES "),
                11,
                chunk.len(),
                " ON CONFLICT (device_id) DO UPDATE SET seq = excluded.seq, release = excluded.release, \
                 version = excluded.version, state = excluded.state, healthy = excluded.healthy, \
                 detail = excluded.detail, reported_at = excluded.reported_at, received_at = excluded.received_at, \
                 failure = excluded.failure, commit_id = excluded.commit_id",
            );
            let mut query = sqlx::query(&sql);
            for (seq, r) in chunk {
                query = bind_report(query, *seq, r);
            }
            query.execute(&mut *tx).await.map_err(query_error(action))?;
        }
        // Trim each touched device's history to the newest HISTORY_PER_DEVICE reports
        // (only devices that have more than that).
        let full: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| known.get(*id).is_some_and(|&(seq, _)| seq > HISTORY_PER_DEVICE))
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
        tx.commit().await.map_err(query_error(action))?;
        Ok(outcomes)
    }

    /// The discovered state of the fleet: every device's latest report, for the planner.
    pub async fn inventory(&self) -> Result<Inventory, StoreError> {
        let rows = sqlx::query(
            "SELECT device_id, release, version, state, healthy, reported_at, failure FROM device_status \
             ORDER BY device_id",
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
            "SELECT device_id, release, version, state, healthy, reported_at, failure, received_at \
             FROM device_status WHERE received_at >= $1",
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
            newest = newest.max(row.try_get::<i64, _>(7).map_err(query_error("reading changed reports"))?);
            reports.push((id.into_boxed_str(), report));
        }
        Ok((reports, newest))
    }

    /// A device's report history, newest first, at most `limit` reports.
    pub async fn history(&self, device_id: &str, limit: i64) -> Result<Vec<StoredReport>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, release, version, state, healthy, reported_at, failure, detail, received_at, commit_id \
             FROM device_reports WHERE device_id = $1 ORDER BY seq DESC LIMIT $2",
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
                    detail: row.try_get(7).map_err(query_error(action))?,
                    reported_at: row.try_get(5).map_err(query_error(action))?,
                    received_at: row.try_get(8).map_err(query_error(action))?,
                    commit: row.try_get(9).map_err(query_error(action))?,
                })
            })
            .collect()
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
        .bind(r.report.failure.map(FailureClass::as_str))
        .bind(r.commit.clone())
}

/// Reads `release, version, state, healthy, reported_at, failure` starting at column
/// `first`.
pub(super) fn report_from_row(
    row: &sqlx::any::AnyRow,
    device: &str,
    first: usize,
) -> Result<DeviceReport, StoreError> {
    let action = "reading reports";
    let release: Option<String> = row.try_get(first).map_err(query_error(action))?;
    let version: String = row.try_get(first + 1).map_err(query_error(action))?;
    let state: String = row.try_get(first + 2).map_err(query_error(action))?;
    let healthy = row.try_get::<i64, _>(first + 3).map_err(query_error(action))? != 0;
    let reported_at: i64 = row.try_get(first + 4).map_err(query_error(action))?;
    let failure: Option<String> = row.try_get(first + 5).map_err(query_error(action))?;
    let corrupt =
        |what, value: &str| StoreError::Corrupt { what, key: device.to_string(), value: value.to_string() };
    Ok(DeviceReport {
        release,
        version: version.parse().map_err(|_| corrupt("version", &version))?,
        state: UpdateState::from_name(&state).ok_or_else(|| corrupt("update state", &state))?,
        healthy,
        failure: match failure {
            Some(name) => {
                Some(FailureClass::from_name(&name).ok_or_else(|| corrupt("failure class", &name))?)
            }
            None => None,
        },
        last_seen: Some(
            jiff::Timestamp::from_millisecond(reported_at)
                .map_err(|_| corrupt("report time", &reported_at.to_string()))?,
        ),
    })
}
