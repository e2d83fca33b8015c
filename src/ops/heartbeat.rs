//! The heartbeat: one row per running `walhook run` in `walhook.instances`.
//!
//! Every `ops.heartbeat_interval_ms` one statement (on its own session, so a busy pool never
//! delays it) upserts this instance's row — role and since when, acknowledged LSN and commit
//! time, events/s and deliveries/s over the last minute — deletes the rows of dead instances
//! (older than [`STALE_INTERVALS`](super::STALE_INTERVALS) of their interval), and reads how
//! much WAL the slot retains, which raises or clears the [`WalAlarm`] `/readyz` reads. On a
//! clean stop the row is deleted. A failed beat is logged once per outage and retried at the
//! next one with a new session; the daemon never stops for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::rates::{RateWindow, Rates};
use super::{OpsError, STALE_INTERVALS, WalAlarm, human_bytes};
use crate::capture::{Acknowledger, Role};
use crate::config::CaptureMode;
use crate::database::Database;

/// Longest wait for the final delete at stop.
const GOODBYE_WITHIN: Duration = Duration::from_secs(2);

/// The upsert, the clean-up of dead rows and the retained-WAL reading, in one statement.
const BEAT: &str = "
WITH gone AS (
    DELETE FROM walhook.instances
    WHERE id <> $1::text::uuid
      AND heartbeat_at < now() - $15::int4 * heartbeat_interval_ms * interval '1 millisecond'
), slot AS (
    SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn)::int8 AS retained
    FROM pg_catalog.pg_replication_slots WHERE slot_name OPERATOR(pg_catalog.=) $13::text::name
), beat AS (
    INSERT INTO walhook.instances AS i (id, host, pid, version, started_at, capture_mode, role,
        role_since, heartbeat_at, heartbeat_interval_ms, acknowledged_lsn,
        acknowledged_commit_time, events_per_second, deliveries_per_second,
        retained_wal_over_limit)
    VALUES ($1::text::uuid, $2::text, $3::int4, $4::text,
        'epoch'::timestamptz + $5::int8 * interval '1 microsecond', $6::text, $7::text,
        'epoch'::timestamptz + $8::int8 * interval '1 microsecond', now(), $9::int4,
        $10::text::pg_lsn,
        'epoch'::timestamptz + $11::int8 * interval '1 microsecond', $12::float8, $16::float8,
        coalesce((SELECT retained FROM slot) > $14::int8, false))
    ON CONFLICT (id) DO UPDATE SET role = EXCLUDED.role, role_since = EXCLUDED.role_since,
        heartbeat_at = EXCLUDED.heartbeat_at, capture_mode = EXCLUDED.capture_mode,
        acknowledged_lsn = EXCLUDED.acknowledged_lsn,
        acknowledged_commit_time = EXCLUDED.acknowledged_commit_time,
        events_per_second = EXCLUDED.events_per_second,
        deliveries_per_second = EXCLUDED.deliveries_per_second,
        retained_wal_over_limit = EXCLUDED.retained_wal_over_limit
    RETURNING 1
)
SELECT (SELECT retained FROM slot), (SELECT count(*) FROM beat)";

/// What the heartbeat needs.
#[derive(Clone)]
pub struct Heartbeat {
    /// walhook's database.
    pub database: Database,
    /// How often to beat.
    pub interval: Duration,
    /// The capture mode this instance runs.
    pub capture_mode: CaptureMode,
    /// The replication slot whose retained WAL is watched.
    pub slot: String,
    /// `capture.max_retained_wal` in bytes.
    pub max_retained_wal: u64,
    /// Capture's role and acknowledged position.
    pub ack: Acknowledger,
    /// Delivery's counters.
    pub rates: Arc<Rates>,
    /// Raised while the slot retains more than `max_retained_wal`.
    pub wal_alarm: WalAlarm,
}

/// What stays the same in one instance's row.
struct Identity {
    id: Uuid,
    host: String,
    pid: i32,
    started_at: i64,
}

impl Heartbeat {
    /// Beats until `stop`, then deletes this instance's row.
    pub async fn run(self, stop: CancellationToken) {
        let identity = Identity {
            id: Uuid::new_v4(),
            host: super::host_name(),
            pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
            started_at: Utc::now().timestamp_micros(),
        };
        tracing::info!(instance = %identity.id, host = %identity.host, pid = identity.pid, "heartbeat started");
        let mut client: Option<Client> = None;
        let mut window = RateWindow::default();
        // Counted from zero: events routed before the first beat count in the first minute.
        window.sample(Instant::now(), (0, 0));
        let mut role = (self.ack.role(), Utc::now().timestamp_micros());
        let mut failing = false;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            let now_role = self.ack.role();
            if now_role != role.0 {
                role = (now_role, Utc::now().timestamp_micros());
            }
            let rates = window.sample(Instant::now(), self.rates.totals());
            match self.beat(&mut client, &identity, role, rates).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("heartbeat written again");
                        failing = false;
                    }
                }
                Err(e) => {
                    client = None;
                    if !failing {
                        tracing::warn!(error = %e, "heartbeat not written; retrying at every interval");
                        failing = true;
                    }
                }
            }
        }
        self.goodbye(client, identity.id).await;
    }

    /// One beat: upsert, clean up, read retained WAL, raise or clear the alarm.
    async fn beat(
        &self,
        client: &mut Option<Client>,
        identity: &Identity,
        role: (Role, i64),
        (events, deliveries): (f64, f64),
    ) -> Result<(), OpsError> {
        if client.is_none() {
            *client = Some(self.database.client().await?);
        }
        let Some(session) = client.as_ref() else {
            return Ok(());
        };
        let acked = self.ack.acknowledged();
        let acked_lsn = (acked.0 > 0).then(|| acked.to_string());
        let commit_time = self.ack.acknowledged_commit_time().map(|t| t.unix_micros());
        let interval_ms = i32::try_from(self.interval.as_millis()).unwrap_or(i32::MAX);
        let limit = i64::try_from(self.max_retained_wal).unwrap_or(i64::MAX);
        let mode = match self.capture_mode {
            CaptureMode::Replication => "replication",
            CaptureMode::Trigger => "trigger",
        };
        let row = session
            .query_one(
                BEAT,
                &[
                    &identity.id.to_string(),
                    &identity.host,
                    &identity.pid,
                    &env!("CARGO_PKG_VERSION"),
                    &identity.started_at,
                    &mode,
                    &role.0.as_str(),
                    &role.1,
                    &interval_ms,
                    &acked_lsn,
                    &commit_time,
                    &events,
                    &self.slot,
                    &limit,
                    &STALE_INTERVALS,
                    &deliveries,
                ],
            )
            .await
            .map_err(OpsError::from_query)?;
        let retained: Option<i64> = row.get(0);
        let reason = retained.filter(|r| *r > limit).map(|r| {
            format!(
                "replication slot {:?} retains {} of WAL, above capture.max_retained_wal ({})",
                self.slot,
                human_bytes(r),
                human_bytes(limit)
            )
        });
        match (&reason, self.wal_alarm.reason()) {
            (Some(reason), None) => tracing::warn!("{reason}; /readyz answers 503 until it falls"),
            (None, Some(_)) => tracing::info!(
                slot = %self.slot,
                "retained WAL is below capture.max_retained_wal again"
            ),
            _ => {}
        }
        self.wal_alarm.set(reason);
        Ok(())
    }

    /// Deletes this instance's row (best effort, bounded: a dead row expires anyway).
    async fn goodbye(&self, client: Option<Client>, id: Uuid) {
        let delete = async {
            let client = match client {
                Some(client) => client,
                None => self.database.client().await?,
            };
            client
                .execute(
                    "DELETE FROM walhook.instances WHERE id = $1::text::uuid",
                    &[&id.to_string()],
                )
                .await?;
            Ok::<_, OpsError>(())
        };
        match tokio::time::timeout(GOODBYE_WITHIN, delete).await {
            Ok(Ok(())) => tracing::debug!(instance = %id, "heartbeat row deleted"),
            Ok(Err(e)) => tracing::warn!(error = %e, "heartbeat row not deleted; it expires"),
            Err(_) => tracing::warn!("heartbeat row not deleted in time; it expires"),
        }
    }
}
