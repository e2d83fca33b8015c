//! The capture lease: which of any number of `walhook run` instances streams the slot.
//!
//! ```text
//!  instance A                         PostgreSQL                      instance B
//!  lease session ── pg_try_advisory_lock(slot) = t ──▶  lock held   ◀── = f, every 500 ms
//!    │ ping / progress write every second                              (Role::Standby)
//!    ▼
//!  replication session ── START_REPLICATION ──▶ walsender (slot active_pid)
//! ```
//!
//! The lease is a session-level advisory lock, keyed by the slot's name, on an ordinary
//! session kept open beside the replication connection. PostgreSQL releases it the moment
//! that session ends, so it is held exactly as long as its owner lives and answers:
//!
//! - The holder pings it (or writes the slot's progress record on it) every second, with a
//!   deadline; a failed or late answer, or the session closing, cancels [`Lease::lost`],
//!   and the stream stops at once (the replication connection is dropped) before doing
//!   anything else.
//! - The session runs with `idle_session_timeout` = [`LEASE_TIMEOUT`] (PostgreSQL 14+), so
//!   the server itself ends a lease whose holder vanished without closing its sockets (a
//!   dead host): the standby's takeover is bounded by that, not by TCP keepalives.
//! - A standby opens no replication connection: it polls the lock on its own session and
//!   logs one line when it starts waiting.
//! - On taking the lease, the new holder waits for the slot's `active_pid` to clear: the
//!   previous holder's walsender can linger until PostgreSQL notices its dead socket. The
//!   lease proves its owner is gone, so after [`TAKEOVER_GRACE`] that walsender is ended
//!   with `pg_terminate_backend`, and the new stream starts only once the process has left
//!   `pg_stat_replication`. PostgreSQL also lets one walsender at a time use a slot, so
//!   there are never two streaming.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::error::CaptureError;
use super::{Acknowledger, CaptureConfig, Role, progress};
use crate::database::DatabaseError;

/// First key of the two-key advisory lock ("whlk"); the second is `hashtext(slot)`.
pub(super) const LEASE_CLASS: i32 = 0x7768_6c6b;

/// How long a lease outlives a holder that stopped answering (its session's
/// `idle_session_timeout`); the holder gives up after half of it without an answer.
pub const LEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a standby asks for the lease.
const STANDBY_POLL: Duration = Duration::from_millis(500);

/// How long the new holder waits for a previous walsender to leave the slot before ending it.
pub const TAKEOVER_GRACE: Duration = Duration::from_secs(2);

/// How often the holder pings the lease session (and writes the progress record when the
/// acknowledged position moved).
const KEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A held lease. Dropping it stops the keeper; the session ends (and PostgreSQL releases
/// the lock) once the keeper's last write is done.
pub(super) struct Lease {
    /// The lease session, also used for the slot checks and the progress record.
    pub client: Arc<Client>,
    lost: CancellationToken,
    stop: CancellationToken,
    /// Whether `walhook.capture_progress` exists (it does once `walhook migrate` ran).
    pub recorded: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A connect error of the lease session, classified like the server's errors.
fn connect_error(e: DatabaseError) -> CaptureError {
    match e {
        DatabaseError::Connect { code, message } => CaptureError::Session { code, message },
        other => CaptureError::from(other),
    }
}

impl Lease {
    /// Waits for the lease (as [`Role::Standby`] while another instance holds it), then for
    /// the slot to be free. `None` when cancelled first.
    pub async fn acquire(
        config: &CaptureConfig,
        ack: &Acknowledger,
        cancel: &CancellationToken,
    ) -> Result<Option<Lease>, CaptureError> {
        let (client, connection) = config.database.connect().await.map_err(connect_error)?;
        let lost = CancellationToken::new();
        let closed = lost.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "capture lease session ended");
            }
            closed.cancel();
        });
        let client = Arc::new(client);
        // PostgreSQL 14+; older servers keep the lease until TCP keepalives end it.
        if let Err(e) = client
            .batch_execute(&format!(
                "SET idle_session_timeout = {}; SET application_name = 'walhook lease'",
                LEASE_TIMEOUT.as_millis()
            ))
            .await
        {
            tracing::debug!(error = %e, "idle_session_timeout not set on the lease session");
            client
                .batch_execute("SET application_name = 'walhook lease'")
                .await
                .map_err(CaptureError::session)?;
        }
        let mut standing_by = false;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&LEASE_CLASS, &config.slot];
        loop {
            let locked: bool = tokio::select! {
                row = client.query_one(
                    "SELECT pg_catalog.pg_try_advisory_lock($1, pg_catalog.hashtext($2))",
                    &params,
                ) => row.map_err(CaptureError::session)?.get(0),
                _ = lost.cancelled() => return Err(CaptureError::LeaseLost("the lease session closed".into())),
            };
            if locked {
                break;
            }
            if !standing_by {
                standing_by = true;
                tracing::info!(
                    slot = %config.slot,
                    "another walhook instance streams this slot; standing by (serving the API and retries)"
                );
            }
            ack.set_role(Role::Standby);
            tokio::select! {
                _ = tokio::time::sleep(STANDBY_POLL) => {}
                _ = cancel.cancelled() => return Ok(None),
            }
        }
        if standing_by {
            tracing::info!(slot = %config.slot, "took over the capture lease");
        }
        let recorded = progress::table_exists(&client).await?;
        let stop = CancellationToken::new();
        tokio::spawn(keep(
            client.clone(),
            config.slot.clone(),
            recorded,
            ack.clone(),
            lost.clone(),
            stop.clone(),
        ));
        Ok(Some(Lease {
            client,
            lost,
            stop,
            recorded,
        }))
    }

    /// Writes the slot's record now (on a clean stop, so the next start and `walhook status`
    /// see the final position); a failure is only logged.
    pub async fn record(&self, slot: &str, ack: &Acknowledger) {
        if !self.recorded || self.lost.is_cancelled() {
            return;
        }
        let write = progress::write(
            &self.client,
            slot,
            ack.acknowledged(),
            ack.acknowledged_commit_time(),
        );
        match tokio::time::timeout(LEASE_TIMEOUT / 2, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not record the final position"),
            Err(_) => tracing::warn!("could not record the final position: no answer"),
        }
    }

    /// Cancelled when the lease is lost: the session closed or stopped answering.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Waits until no walsender holds the slot: a previous holder's, after
    /// [`TAKEOVER_GRACE`], is terminated (the lease proves its owner is gone).
    pub async fn free_slot(&self, slot: &str) -> Result<(), CaptureError> {
        let started = Instant::now();
        let mut seen: Option<i32> = None;
        let mut terminated = false;
        loop {
            if self.lost.is_cancelled() {
                return Err(CaptureError::LeaseLost(
                    "the lease session closed while waiting for the slot".into(),
                ));
            }
            let row = self
                .client
                .query_opt(
                    "SELECT s.active_pid, EXISTS (SELECT 1 FROM pg_catalog.pg_stat_replication r \
                       WHERE r.pid OPERATOR(pg_catalog.=) $2) \
                     FROM (SELECT NULL::int4) AS dummy \
                     LEFT JOIN pg_catalog.pg_replication_slots s \
                       ON s.slot_name OPERATOR(pg_catalog.=) $1::pg_catalog.name",
                    &[&slot, &seen.unwrap_or(0)],
                )
                .await
                .map_err(CaptureError::session)?;
            let active: Option<i32> = row.as_ref().and_then(|r| r.get(0));
            let previous_alive = row.as_ref().is_some_and(|r| r.get::<_, bool>(1));
            match active {
                None if !previous_alive => return Ok(()),
                None => {}
                Some(pid) => {
                    seen = Some(pid);
                    if !terminated && started.elapsed() >= TAKEOVER_GRACE {
                        tracing::warn!(
                            slot,
                            pid,
                            "the slot is still held by a walsender whose walhook is gone; terminating it"
                        );
                        self.client
                            .execute("SELECT pg_catalog.pg_terminate_backend($1)", &[&pid])
                            .await
                            .map_err(CaptureError::session)?;
                        terminated = true;
                    }
                }
            }
            if started.elapsed() > LEASE_TIMEOUT * 3 {
                return Err(CaptureError::Session {
                    code: None,
                    message: format!("replication slot {slot:?} stayed in use"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The holder's side: ping the lease session every [`KEEP_INTERVAL`] (writing the progress
/// record when the position moved), each answer due within half the [`LEASE_TIMEOUT`];
/// cancels `lost` when one is late or fails. Writes the record a last time when stopped.
async fn keep(
    client: Arc<Client>,
    slot: String,
    recorded: bool,
    ack: Acknowledger,
    lost: CancellationToken,
    stop: CancellationToken,
) {
    let mut written = ack.acknowledged();
    let mut tick = tokio::time::interval(KEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.cancelled() => true,
            _ = lost.cancelled() => return,
        };
        let position = ack.acknowledged();
        let ping = async {
            if recorded && position != written {
                progress::write(&client, &slot, position, ack.acknowledged_commit_time()).await
            } else {
                client
                    .batch_execute("SELECT 1")
                    .await
                    .map_err(CaptureError::session)
            }
        };
        match tokio::time::timeout(LEASE_TIMEOUT / 2, ping).await {
            Ok(Ok(())) => written = position,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "capture lease session failed");
                lost.cancel();
                return;
            }
            Err(_) => {
                tracing::warn!(timeout = ?LEASE_TIMEOUT / 2, "capture lease session stopped answering");
                lost.cancel();
                return;
            }
        }
        if stopping {
            return;
        }
    }
}
