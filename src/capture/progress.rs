//! walhook's own record of its replication slot (`walhook.capture_progress`), the check
//! that refuses to stream over a gap, `walhook slot reset`, and the gaps it recorded
//! (`walhook.gaps`).
//!
//! The record holds where the slot was created (or first seen) and the last acknowledged
//! position with its commit time; the lease holder writes it at most once a second, only
//! when the position moved (see [`super::lease`]). Before every replication session —
//! at start and on every reconnect — [`check`] compares it with the server:
//!
//! | slot | record | outcome |
//! |---|---|---|
//! | missing | none | a new installation: the slot is created, the record written |
//! | present, `wal_status` not `lost` | any | stream (an older installation's slot is adopted) |
//! | present, `wal_status = 'lost'` | any | [`CaptureError::SlotGap`]: refuse |
//! | missing | present | [`CaptureError::SlotGap`]: refuse (failover, restore, dropped by hand) |
//!
//! [`reset`] accepts the gap: it drops the lost slot if present, creates a fresh one, and
//! records the positions and times between which nothing was captured, with the watched
//! tables, in `walhook.gaps`. Trigger mode has no slot: none of this applies there (a
//! switch to trigger mode drops the slot and [`forget`]s its record).

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

use super::connection::Connection;
use super::error::CaptureError;
use super::slot;
use crate::change::CommitTime;
use crate::database::Database;
use crate::lsn::Lsn;

/// One gap accepted by `walhook slot reset`: the changes of `tables` committed after
/// `from_lsn` (`from_time`) and before `to_lsn` (`to_time`) were never captured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    /// Row id in `walhook.gaps`.
    pub id: i64,
    /// The slot that was lost or missing.
    pub slot: String,
    /// `lost` (invalidated) or `missing` (it had disappeared).
    pub reason: String,
    /// The last acknowledged position before the gap.
    #[serde(serialize_with = "lsn_text")]
    pub from_lsn: Lsn,
    /// Commit time of the transaction ending at `from_lsn`, when known.
    pub from_time: Option<DateTime<Utc>>,
    /// Where the fresh slot starts.
    #[serde(serialize_with = "lsn_text")]
    pub to_lsn: Lsn,
    /// When the fresh slot was created.
    pub to_time: DateTime<Utc>,
    /// The watched tables (`schema.table`) at the time of the reset.
    pub tables: Vec<String>,
    /// When the gap was recorded.
    pub created_at: DateTime<Utc>,
}

/// An LSN in JSON as the server prints it (`0/4DC4880`).
fn lsn_text<S: serde::Serializer>(lsn: &Lsn, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(lsn)
}

/// What the server and the record say about the slot.
#[derive(Debug)]
struct SlotState {
    /// `wal_status` of the slot; `None` when there is no such slot.
    wal_status: Option<Option<String>>,
    /// The slot's `confirmed_flush_lsn`.
    confirmed: Option<Lsn>,
    /// The record: acknowledged position and its commit time (RFC 3339).
    record: Option<(Lsn, Option<String>)>,
}

fn lsn(text: Option<String>) -> Option<Lsn> {
    text.and_then(|t| t.parse().ok())
}

fn time(micros: Option<i64>) -> Option<DateTime<Utc>> {
    micros.and_then(DateTime::from_timestamp_micros)
}

/// Whether `walhook.capture_progress` exists (`walhook tail` may run without the schema).
pub(super) async fn table_exists(client: &Client) -> Result<bool, CaptureError> {
    let row = client
        .query_one(
            "SELECT pg_catalog.to_regclass('walhook.capture_progress') IS NOT NULL",
            &[],
        )
        .await
        .map_err(CaptureError::session)?;
    Ok(row.get(0))
}

async fn state(client: &Client, slot: &str) -> Result<SlotState, CaptureError> {
    let server = client
        .query_opt(
            "SELECT wal_status, confirmed_flush_lsn::pg_catalog.text \
             FROM pg_catalog.pg_replication_slots \
             WHERE slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name",
            &[&slot],
        )
        .await
        .map_err(CaptureError::session)?;
    let record = client
        .query_opt(
            "SELECT acknowledged_lsn::pg_catalog.text, \
               pg_catalog.to_char(acknowledged_commit_at AT TIME ZONE 'UTC', \
                 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
             FROM walhook.capture_progress WHERE slot_name OPERATOR(pg_catalog.=) $1",
            &[&slot],
        )
        .await
        .map_err(CaptureError::session)?;
    Ok(SlotState {
        wal_status: server.as_ref().map(|r| r.get(0)),
        confirmed: server.as_ref().and_then(|r| lsn(r.get(1))),
        record: record.and_then(|r| Some((lsn(r.get(0))?, r.get(1)))),
    })
}

/// Why the slot cannot be streamed from, if it cannot: `Some(("lost" | "missing", error))`.
fn gap_of(slot: &str, state: &SlotState) -> Option<(&'static str, CaptureError)> {
    let (reason, text) = match &state.wal_status {
        Some(Some(status)) if status == "lost" => ("lost", "was invalidated (wal_status = lost)"),
        Some(_) => return None,
        None if state.record.is_some() => ("missing", "has disappeared"),
        None => return None,
    };
    let (last_lsn, last_commit_time) = match &state.record {
        Some((lsn, time)) => (*lsn, time.clone()),
        None => (state.confirmed.unwrap_or_default(), None),
    };
    Some((
        reason,
        CaptureError::SlotGap {
            slot: slot.to_owned(),
            state: text,
            last_lsn,
            last_commit_time,
        },
    ))
}

/// Refuses ([`CaptureError::SlotGap`]) when the slot was invalidated, or is missing while
/// the record says walhook streamed from it.
pub(super) async fn check(client: &Client, slot: &str) -> Result<(), CaptureError> {
    match gap_of(slot, &state(client, slot).await?) {
        Some((_, error)) => Err(error),
        None => Ok(()),
    }
}

/// Writes the record of a slot walhook streams from, when it has none (a new slot, or one
/// created by an older walhook): `at` is the slot's starting position.
pub(super) async fn adopt(client: &Client, slot: &str, at: Lsn) -> Result<(), CaptureError> {
    client
        .execute(
            "INSERT INTO walhook.capture_progress (slot_name, created_lsn, acknowledged_lsn) \
             VALUES ($1, $2::pg_catalog.text::pg_catalog.pg_lsn, $2::pg_catalog.text::pg_catalog.pg_lsn) \
             ON CONFLICT (slot_name) DO NOTHING",
            &[&slot, &at.to_string()],
        )
        .await
        .map_err(CaptureError::session)?;
    Ok(())
}

/// Records the acknowledged position (never moving it backwards) and its commit time.
pub(super) async fn write(
    client: &Client,
    slot: &str,
    acknowledged: Lsn,
    commit_time: Option<CommitTime>,
) -> Result<(), CaptureError> {
    let commit_time = commit_time.map(CommitTime::to_rfc3339);
    client
        .execute(
            "UPDATE walhook.capture_progress SET \
               acknowledged_lsn = $2::pg_catalog.text::pg_catalog.pg_lsn, \
               acknowledged_commit_at = coalesce($3::pg_catalog.text::pg_catalog.timestamptz, acknowledged_commit_at), \
               updated_at = pg_catalog.now() \
             WHERE slot_name OPERATOR(pg_catalog.=) $1 \
               AND acknowledged_lsn OPERATOR(pg_catalog.<=) $2::pg_catalog.text::pg_catalog.pg_lsn",
            &[&slot, &acknowledged.to_string(), &commit_time],
        )
        .await
        .map_err(CaptureError::session)?;
    Ok(())
}

/// Forgets the record of a slot walhook dropped on purpose (a switch to trigger mode), so a
/// later switch back creates a new slot without ceremony.
pub async fn forget(client: &Client, slot: &str) -> Result<(), CaptureError> {
    if !table_exists(client).await? {
        return Ok(());
    }
    client
        .execute(
            "DELETE FROM walhook.capture_progress WHERE slot_name OPERATOR(pg_catalog.=) $1",
            &[&slot],
        )
        .await
        .map_err(CaptureError::session)?;
    Ok(())
}

/// Every recorded gap, oldest first (for `walhook status`). (`EXTRACT` is grammar, always
/// `pg_catalog.extract`.)
pub async fn gaps(client: &Client) -> Result<Vec<Gap>, CaptureError> {
    let rows = client
        .query(
            "SELECT id, slot_name, reason, from_lsn::pg_catalog.text, \
               (extract(epoch FROM from_time) * 1e6)::pg_catalog.int8, \
               to_lsn::pg_catalog.text, \
               (extract(epoch FROM to_time) * 1e6)::pg_catalog.int8, tables, \
               (extract(epoch FROM created_at) * 1e6)::pg_catalog.int8 \
             FROM walhook.gaps ORDER BY id",
            &[],
        )
        .await
        .map_err(CaptureError::session)?;
    Ok(rows
        .into_iter()
        .map(|r| Gap {
            id: r.get(0),
            slot: r.get(1),
            reason: r.get(2),
            from_lsn: lsn(r.get(3)).unwrap_or_default(),
            from_time: time(r.get(4)),
            to_lsn: lsn(r.get(5)).unwrap_or_default(),
            to_time: time(r.get(6)).unwrap_or_default(),
            tables: r.get(7),
            created_at: time(r.get(8)).unwrap_or_default(),
        })
        .collect())
}

/// `walhook slot reset`: accepts the gap of a lost or missing slot. Takes the capture lease
/// (refused while an instance streams), drops the lost slot if present, creates a fresh one
/// (after the publication), records the gap in `walhook.gaps` and starts the record at the
/// fresh slot. Refused when there is no gap to accept. Needs `walhook migrate` first.
pub async fn reset(
    database: &Database,
    slot: &str,
    publication: &str,
) -> Result<Gap, CaptureError> {
    let client = database.client().await.map_err(|e| match e {
        crate::database::DatabaseError::Connect { code, message } => {
            CaptureError::Session { code, message }
        }
        other => CaptureError::from(other),
    })?;
    let locked: bool = client
        .query_one(
            "SELECT pg_catalog.pg_try_advisory_lock($1, pg_catalog.hashtext($2))",
            &[&super::lease::LEASE_CLASS, &slot],
        )
        .await
        .map_err(CaptureError::session)?
        .get(0);
    if !locked {
        return Err(CaptureError::Reset(format!(
            "a walhook instance holds the capture lease of slot {slot:?}; stop every `walhook run` first"
        )));
    }
    let state = state(&client, slot).await?;
    let Some((reason, _)) = gap_of(slot, &state) else {
        return Err(CaptureError::Reset(match state.wal_status {
            Some(status) => format!(
                "replication slot {slot:?} is healthy (wal_status = {}); there is no gap to accept",
                status.as_deref().unwrap_or("unknown")
            ),
            None => format!(
                "replication slot {slot:?} does not exist and walhook never streamed from it; \
                 `walhook run` creates it"
            ),
        }));
    };
    let (from_lsn, from_time) = match &state.record {
        Some((lsn, time)) => (*lsn, time.clone()),
        None => (state.confirmed.unwrap_or_default(), None),
    };
    if state.wal_status.is_some() {
        drop_slot(&client, slot).await?;
    }
    let mut conn = Connection::connect(database, true).await?;
    slot::ensure_publication(&mut conn, publication, &[]).await?;
    let to_lsn = slot::ensure_slot(&mut conn, slot).await?;
    conn.terminate().await;
    let row = client
        .query_one(
            "WITH gap AS (INSERT INTO walhook.gaps \
               (slot_name, reason, from_lsn, from_time, to_lsn, to_time, tables) \
               SELECT $1, $2, $3::pg_catalog.text::pg_catalog.pg_lsn, $4::pg_catalog.text::pg_catalog.timestamptz, \
                 $5::pg_catalog.text::pg_catalog.pg_lsn, pg_catalog.now(), \
                 coalesce((SELECT pg_catalog.array_agg(pg_catalog.format('%s.%s', schema_name, table_name) \
                   ORDER BY schema_name, table_name) FROM walhook.watched_tables), '{}') \
               RETURNING id, (extract(epoch FROM to_time) * 1e6)::pg_catalog.int8, tables, \
                 (extract(epoch FROM created_at) * 1e6)::pg_catalog.int8), \
             progress AS (INSERT INTO walhook.capture_progress AS p \
               (slot_name, created_lsn, acknowledged_lsn) \
               VALUES ($1, $5::pg_catalog.text::pg_catalog.pg_lsn, $5::pg_catalog.text::pg_catalog.pg_lsn) \
               ON CONFLICT (slot_name) DO UPDATE SET created_lsn = excluded.created_lsn, \
                 created_at = pg_catalog.now(), acknowledged_lsn = excluded.acknowledged_lsn, \
                 acknowledged_commit_at = NULL, updated_at = pg_catalog.now()) \
             SELECT * FROM gap",
            &[
                &slot,
                &reason,
                &from_lsn.to_string(),
                &from_time,
                &to_lsn.to_string(),
            ],
        )
        .await
        .map_err(CaptureError::session)?;
    Ok(Gap {
        id: row.get(0),
        slot: slot.to_owned(),
        reason: reason.to_owned(),
        from_lsn,
        from_time: from_time.and_then(|t| t.parse().ok()),
        to_lsn,
        to_time: time(row.get(1)).unwrap_or_default(),
        tables: row.get(2),
        created_at: time(row.get(3)).unwrap_or_default(),
    })
}

/// Drops the slot, waiting (up to 10 s) for a walsender still attached to let go.
async fn drop_slot(client: &Client, slot: &str) -> Result<(), CaptureError> {
    for _ in 0..100 {
        match client
            .execute("SELECT pg_catalog.pg_drop_replication_slot($1)", &[&slot])
            .await
        {
            Ok(_) => {
                tracing::info!(slot, "dropped the lost replication slot");
                return Ok(());
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => return Err(CaptureError::session(e)),
        }
    }
    Err(CaptureError::Reset(format!(
        "replication slot {slot:?} stayed in use; stop the process using it"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(wal_status: Option<Option<&str>>, record: bool) -> SlotState {
        SlotState {
            wal_status: wal_status.map(|s| s.map(str::to_owned)),
            confirmed: Some(Lsn(0x100)),
            record: record.then(|| (Lsn(0x4DC4880), Some("2026-12-02T00:10:00.000000Z".into()))),
        }
    }

    #[test]
    fn a_gap_only_for_a_lost_slot_or_a_recorded_slot_gone_missing() {
        assert!(gap_of("s", &state(None, false)).is_none());
        assert!(gap_of("s", &state(Some(Some("reserved")), true)).is_none());
        assert!(gap_of("s", &state(Some(Some("unreserved")), false)).is_none());
        let (reason, error) = gap_of("s", &state(None, true)).unwrap();
        assert_eq!(reason, "missing");
        assert_eq!(
            error.to_string(),
            "replication slot \"s\" has disappeared; walhook last delivered up to 0/4DC4880 \
             (commit time 2026-12-02T00:10:00.000000Z). The changes after that position can \
             no longer be streamed. Nothing is skipped silently: to accept the gap and capture \
             from now on, run `walhook slot reset` (it creates a fresh slot and records the gap \
             in walhook.gaps)"
        );
        let (reason, error) = gap_of("s", &state(Some(Some("lost")), false)).unwrap();
        assert_eq!(reason, "lost");
        assert!(
            error
                .to_string()
                .starts_with("replication slot \"s\" was invalidated (wal_status = lost); walhook last delivered up to 0/100 (commit time unknown)."),
            "{error}"
        );
    }
}
