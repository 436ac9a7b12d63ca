//! The persisted rollout state machine: rollouts, their waves and pinned members.

use sqlx::Row;

use super::reports::report_from_row;
use super::{multi_row, placeholders, query_error, Store, StoreError, ROWS_PER_STATEMENT};
use crate::inventory::DeviceReport;
use crate::protocol::FailureClass;

pub use crate::rollout::state::{RolloutPhase, Waiting, WaveState};

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
    /// What it waits for before its next wave, as the last pass decided.
    pub waiting: Option<Waiting>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
    /// Grows by one with every write: a write names the revision it read and is refused
    /// when the rollout changed since (see [`Store::update_rollout`]).
    pub revision: i64,
    /// For a rollback rollout: the rollout whose devices it returns to their previous
    /// release.
    pub rollback_of: Option<String>,
    /// What was asked of the rollout beyond its phase.
    pub requests: Requests,
}

/// What operators, or the rollout's policy, asked of a rollout, Unix milliseconds when
/// asked. A retry or an acceptance waits for the engine's next pass, which carries it out
/// and clears it; a rollback is kept: the rollout stays known as rolled back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// Re-publish the instructions of the failed members.
    pub retry_at: Option<i64>,
    /// Count the failed members' failures as accepted: their waves no longer count them.
    pub accept_at: Option<i64>,
    /// Return the rollout's devices to their previous release (a rollback rollout).
    pub rollback_at: Option<i64>,
}

/// A release as a device reported it: its name and version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReleaseRef {
    /// The release's name.
    pub release: String,
    /// Its version, as written.
    pub version: String,
}

/// A member of a rollout about to be created: its device and the release it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMember {
    /// The device id.
    pub device_id: String,
    /// The release the device reported when the rollout started, if it reported one.
    pub previous: Option<ReleaseRef>,
}

impl From<String> for NewMember {
    fn from(device_id: String) -> NewMember {
        NewMember { device_id, previous: None }
    }
}

impl From<&str> for NewMember {
    fn from(device_id: &str) -> NewMember {
        NewMember { device_id: device_id.to_string(), previous: None }
    }
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
    /// When its instruction was published, Unix milliseconds (its latest attempt's).
    pub published_at: Option<i64>,
    /// Its instruction's attempt: 0, then one more per retry.
    pub attempt: u32,
    /// The failure its wave counts for good (turned unhealthy during the bake).
    pub failure: Option<FailureClass>,
    /// The release it ran when the rollout started: where a rollback returns it.
    pub previous: Option<ReleaseRef>,
    /// An operator accepted its failure: its wave does not count it.
    pub accepted: bool,
}

impl Store {
    /// Creates a rollout with its waves and their pinned members, in one transaction.
    /// `members[i]` are the members of `waves[i]`.
    pub async fn create_rollout(
        &self,
        rollout: &RolloutRecord,
        waves: &[WaveRecord],
        members: &[Vec<NewMember>],
    ) -> Result<(), StoreError> {
        let action = "creating a rollout";
        let mut tx = self.begin_write().await.map_err(query_error(action))?;
        sqlx::query(
            "INSERT INTO rollouts (id, policy, release, version, commit_id, phase, paused, message, created_at, updated_at, \
             revision, waiting, rollback_of, rollback_at, retry_at, accept_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
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
        .bind(rollout.revision)
        .bind(rollout.waiting.map(|w| w.as_str().to_string()))
        .bind(rollout.rollback_of.clone())
        .bind(rollout.requests.rollback_at)
        .bind(rollout.requests.retry_at)
        .bind(rollout.requests.accept_at)
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
                    "INSERT INTO wave_devices (rollout_id, idx, device_id, position, previous_release, \
                     previous_version) VALUES ",
                    6,
                    chunk.len(),
                    "",
                );
                let mut query = sqlx::query(&sql);
                for m in chunk {
                    query = query
                        .bind(&rollout.id)
                        .bind(index as i64)
                        .bind(&m.device_id)
                        .bind(position)
                        .bind(m.previous.as_ref().map(|p| p.release.clone()))
                        .bind(m.previous.as_ref().map(|p| p.version.clone()));
                    position += 1;
                }
                query.execute(&mut *tx).await.map_err(query_error(action))?;
            }
        }
        tx.commit().await.map_err(query_error(action))
    }

    /// Writes a rollout's phase, pause flag, message, requests and update time, and the
    /// given waves' state and times, in one transaction, if the stored rollout is still at
    /// `rollout.revision`; the revision grows by one. Returns `false`, writing nothing,
    /// when another writer (an operator, the engine, another replica) changed the rollout
    /// since it was read: the caller reads it again and decides anew.
    pub async fn update_rollout(
        &self,
        rollout: &RolloutRecord,
        waves: &[WaveRecord],
    ) -> Result<bool, StoreError> {
        let action = "updating a rollout";
        let mut tx = self.begin_write().await.map_err(query_error(action))?;
        let updated = sqlx::query(
            "UPDATE rollouts SET phase = $1, paused = $2, message = $3, updated_at = $4, waiting = $5, \
             rollback_at = $6, retry_at = $7, accept_at = $8, revision = revision + 1 \
             WHERE id = $9 AND revision = $10",
        )
        .bind(rollout.phase.as_str())
        .bind(i64::from(rollout.paused))
        .bind(rollout.message.clone())
        .bind(rollout.updated_at)
        .bind(rollout.waiting.map(|w| w.as_str().to_string()))
        .bind(rollout.requests.rollback_at)
        .bind(rollout.requests.retry_at)
        .bind(rollout.requests.accept_at)
        .bind(&rollout.id)
        .bind(rollout.revision)
        .execute(&mut *tx)
        .await
        .map_err(query_error(action))?
        .rows_affected();
        if updated == 0 {
            return Ok(false);
        }
        for wave in waves {
            sqlx::query(
                "UPDATE waves SET state = $1, published_at = $2, healthy_at = $3, approved_at = $4, finished_at = $5 \
                 WHERE rollout_id = $6 AND idx = $7",
            )
            .bind(wave.state.as_str())
            .bind(wave.published_at)
            .bind(wave.healthy_at)
            .bind(wave.approved_at)
            .bind(wave.finished_at)
            .bind(&rollout.id)
            .bind(i64::from(wave.index))
            .execute(&mut *tx)
            .await
            .map_err(query_error(action))?;
        }
        tx.commit().await.map_err(query_error(action))?;
        Ok(true)
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
            "SELECT idx, position, device_id, published_at, attempt, failure, previous_release, previous_version, \
             accepted FROM wave_devices WHERE rollout_id = $1 ORDER BY position, device_id",
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
            "SELECT w.idx, w.position, w.device_id, w.published_at, w.attempt, w.failure, w.previous_release, \
             w.previous_version, w.accepted, s.release, s.version, s.state, s.healthy, s.reported_at, s.failure \
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
                let reported = row.try_get::<Option<String>, _>(10).map_err(query_error(action))?.is_some();
                let report = if reported { Some(report_from_row(row, &member.device_id, 9)?) } else { None };
                Ok((member, report))
            })
            .collect()
    }

    /// How many members of a rollout run the release of each fleet commit, as their latest
    /// reports say (members that reported no commit are not counted).
    pub async fn member_commits(&self, rollout_id: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let action = "counting rollout members by commit";
        let rows = sqlx::query(
            "SELECT s.commit_id, COUNT(*) FROM wave_devices w JOIN device_status s ON s.device_id = w.device_id \
             WHERE w.rollout_id = $1 AND s.commit_id IS NOT NULL GROUP BY s.commit_id ORDER BY s.commit_id",
        )
        .bind(rollout_id)
        .fetch_all(&self.pool)
        .await
        .map_err(query_error(action))?;
        rows.iter()
            .map(|row| {
                let count: i64 = row.try_get(1).map_err(query_error(action))?;
                Ok((row.try_get(0).map_err(query_error(action))?, count as u64))
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

    /// Records that the instructions of `device_ids`, members of a rollout, were published
    /// again with `attempt` (a retry) at `at`. Members already at that attempt or past it
    /// are left as they are, so recording a retry twice changes nothing.
    pub async fn mark_retried(
        &self,
        rollout_id: &str,
        device_ids: &[String],
        attempt: u32,
        at: i64,
    ) -> Result<(), StoreError> {
        let action = "recording retried devices";
        let mut tx = self.begin_write().await.map_err(query_error(action))?;
        for chunk in device_ids.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE wave_devices SET published_at = $1, attempt = $2, failure = NULL, accepted = 0 \
                 WHERE rollout_id = $3 \
                 AND attempt < $2 \
                 AND device_id IN ({})",
                placeholders(4, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(at).bind(i64::from(attempt)).bind(rollout_id);
            for id in chunk {
                query = query.bind(id);
            }
            query.execute(&mut *tx).await.map_err(query_error(action))?;
        }
        tx.commit().await.map_err(query_error(action))
    }

    /// Records that the wave of `device_ids`, members of a rollout, counts them as failed
    /// with `class` for good. Idempotent.
    pub async fn mark_failed(
        &self,
        rollout_id: &str,
        device_ids: &[String],
        class: FailureClass,
    ) -> Result<(), StoreError> {
        let action = "recording failed members";
        let mut tx = self.begin_write().await.map_err(query_error(action))?;
        for chunk in device_ids.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE wave_devices SET failure = $1 WHERE rollout_id = $2 AND device_id IN ({})",
                placeholders(3, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(class.as_str()).bind(rollout_id);
            for id in chunk {
                query = query.bind(id);
            }
            query.execute(&mut *tx).await.map_err(query_error(action))?;
        }
        tx.commit().await.map_err(query_error(action))
    }

    /// Records that an operator accepted the failures of `device_ids`, members of a
    /// rollout: their waves no longer count them. Idempotent; a retry clears it.
    pub async fn mark_accepted(&self, rollout_id: &str, device_ids: &[String]) -> Result<(), StoreError> {
        let action = "recording accepted failures";
        let mut tx = self.begin_write().await.map_err(query_error(action))?;
        for chunk in device_ids.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE wave_devices SET accepted = 1 WHERE rollout_id = $1 AND device_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(&sql).bind(rollout_id);
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
}

/// A member from its first nine columns: `idx, position, device_id, published_at, attempt,
/// failure, previous_release, previous_version, accepted`.
fn member_from_row(row: &sqlx::any::AnyRow, action: &'static str) -> Result<MemberRecord, StoreError> {
    Ok(MemberRecord {
        wave: row.try_get::<i64, _>(0).map_err(query_error(action))? as u32,
        position: row.try_get::<i64, _>(1).map_err(query_error(action))? as u64,
        device_id: row.try_get(2).map_err(query_error(action))?,
        published_at: row.try_get(3).map_err(query_error(action))?,
        attempt: u32::try_from(row.try_get::<i64, _>(4).map_err(query_error(action))?).unwrap_or(u32::MAX),
        failure: match row.try_get::<Option<String>, _>(5).map_err(query_error(action))? {
            Some(name) => Some(FailureClass::from_name(&name).ok_or_else(|| StoreError::Corrupt {
                what: "member failure class",
                key: row.try_get(2).unwrap_or_default(),
                value: name.clone(),
            })?),
            None => None,
        },
        previous: match (
            row.try_get::<Option<String>, _>(6).map_err(query_error(action))?,
            row.try_get::<Option<String>, _>(7).map_err(query_error(action))?,
        ) {
            (Some(release), Some(version)) => Some(ReleaseRef { release, version }),
            _ => None,
        },
        accepted: row.try_get::<i64, _>(8).map_err(query_error(action))? != 0,
    })
}

/// The columns [`rollout_from_row`] reads, in its order.
const ROLLOUT_COLUMNS: &str = "id, policy, release, version, commit_id, phase, paused, message, created_at, \
     updated_at, revision, waiting, rollback_of, rollback_at, retry_at, accept_at";

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
        revision: row.try_get(10).map_err(query_error(action))?,
        waiting: match row.try_get::<Option<String>, _>(11).map_err(query_error(action))? {
            // Unknown to this version (written by a newer one): shown as not known.
            Some(w) => w.parse().ok(),
            None => None,
        },
        rollback_of: row.try_get(12).map_err(query_error(action))?,
        requests: Requests {
            rollback_at: row.try_get(13).map_err(query_error(action))?,
            retry_at: row.try_get(14).map_err(query_error(action))?,
            accept_at: row.try_get(15).map_err(query_error(action))?,
        },
        id,
    })
}
