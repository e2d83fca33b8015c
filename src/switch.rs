//! Capture-mode switches without a lost or repeated event (docs/trigger-mode.md).
//!
//! `walhook.set_capture_mode()` installs or removes the capture triggers and records the WAL
//! position of the switch: transactions committed before it were captured the old way,
//! later ones the new way. Event ids differ between modes, so the stream is split exactly
//! there rather than deduplicated:
//!
//! - replication → trigger ([`to_trigger`]): the slot still holds what the stopped
//!   replication daemon had not delivered; it is streamed up to the switch, delivered, and
//!   the slot is dropped (it would pin WAL forever). Then the outbox is read.
//! - trigger → replication ([`to_replication`]): the slot is created first (capture starts),
//!   then the triggers go; the outbox — all written before the switch — is delivered, and
//!   the replication stream skips (acknowledges) transactions committed before the switch.
//!
//! Each drain runs its own short-lived [`Delivery`]; the main one, created afterwards, picks
//! up what the drain queued, so per-row order holds across the switch.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use crate::capture::outbox::{self, OutboxConfig};
use crate::capture::{self, Acknowledger, Capture, CaptureConfig, CaptureError};
use crate::change::CaptureMessage;
use crate::database::{Database, DatabaseError};
use crate::delivery::queue::{PgPool, Queue, QueueError};
use crate::delivery::{Delivery, DeliveryConfig};
use crate::lsn::Lsn;
use crate::subscriptions::live::LiveRouting;

/// A switch could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// A query failed.
    #[error("capture mode switch: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// Capture failed while draining.
    #[error("capture mode switch: {0}")]
    Capture(#[from] CaptureError),
    /// Delivery could not start.
    #[error("capture mode switch: {0}")]
    Queue(#[from] QueueError),
    /// The switch's session could not be opened.
    #[error("capture mode switch: {0}")]
    Connect(#[from] DatabaseError),
    /// Something did not happen in time.
    #[error("capture mode switch: {0}")]
    Stuck(String),
}

/// What a drain needs to deliver on its own.
#[derive(Clone)]
pub struct Drain {
    /// Delivery settings.
    pub config: DeliveryConfig,
    /// walhook's pool.
    pub pool: PgPool,
    /// Live routing.
    pub routing: LiveRouting,
}

impl Drain {
    /// Delivers `changes` until the channel closes and every event is done or queued.
    async fn deliver(
        self,
        changes: mpsc::Receiver<CaptureMessage>,
        ack: Acknowledger,
    ) -> Result<(), QueueError> {
        let delivery =
            Delivery::new(self.config, Queue::new(self.pool), self.routing.clone()).await?;
        delivery
            .run(changes, ack, self.routing, CancellationToken::new())
            .await;
        Ok(())
    }
}

/// A plain session for the switch's queries.
pub async fn connect(database: &Database) -> Result<Client, SwitchError> {
    Ok(database.client().await?)
}

/// Whether the installation is in trigger mode now (`walhook.settings`).
async fn in_trigger_mode(client: &Client) -> Result<bool, SwitchError> {
    let row = client
        .query_opt(
            "SELECT value FROM walhook.settings WHERE name = 'capture_mode'",
            &[],
        )
        .await?;
    Ok(row.is_some_and(|r| r.get::<_, &str>(0) == "trigger"))
}

/// `walhook.set_capture_mode(mode)`: the switch position when the mode changed.
async fn set_mode(client: &Client, mode: &str) -> Result<Option<Lsn>, SwitchError> {
    let row = client
        .query_one(
            "SELECT (walhook.set_capture_mode($1) - '0/0')::int8",
            &[&mode],
        )
        .await?;
    Ok(row.get::<_, Option<i64>>(0).map(|l| Lsn(l as u64)))
}

/// The slot's `confirmed_flush_lsn`; `None` when there is no such slot.
async fn slot_flushed(client: &Client, slot: &str) -> Result<Option<Lsn>, SwitchError> {
    let row = client
        .query_opt(
            "SELECT coalesce((confirmed_flush_lsn - '0/0')::int8, 0) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| Lsn(r.get::<_, i64>(0) as u64)))
}

/// Enters trigger mode: installs the triggers; after a switch from replication, delivers
/// what the slot holds before the switch and drops the slot.
pub async fn to_trigger(
    capture_config: CaptureConfig,
    drain: &Drain,
    client: &Client,
) -> Result<(), SwitchError> {
    set_mode(client, "trigger").await?;
    let slot = capture_config.slot.clone();
    if slot_flushed(client, &slot).await?.is_none() {
        return Ok(());
    }
    let at = client
        .query_opt(
            "SELECT (lsn - '0/0')::int8 FROM walhook.checkpoints WHERE name = 'mode_switch'",
            &[],
        )
        .await?
        .map(|r| Lsn(r.get::<_, i64>(0) as u64))
        .ok_or_else(|| {
            SwitchError::Stuck(format!(
                "slot {slot:?} exists but no switch position is recorded; drop the slot if it is not walhook's"
            ))
        })?;
    tracing::info!(%at, slot, "switching to trigger capture: delivering what the slot holds before the switch");
    let cancel = CancellationToken::new();
    let mut capture = capture::start(capture_config, cancel.clone())?;
    let (tx, rx) = mpsc::channel(1024);
    let delivering = tokio::spawn(drain.clone().deliver(rx, capture.ack.clone()));
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            message = capture.changes.recv() => match message {
                Some(CaptureMessage::Begin(b)) if b.commit_lsn >= at => break,
                Some(message) => if tx.send(message).await.is_err() { break },
                None => break,
            },
            _ = tick.tick() => if slot_flushed(client, &slot).await?.is_some_and(|f| f >= at) { break },
        }
    }
    drop(tx);
    delivering
        .await
        .map_err(|e| SwitchError::Stuck(e.to_string()))??;
    cancel.cancel();
    capture
        .task
        .await
        .map_err(|e| SwitchError::Stuck(e.to_string()))??;
    for _ in 0..200 {
        match client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
        {
            Ok(_) => {
                capture::progress::forget(client, &slot).await?;
                tracing::info!(slot, "replication slot dropped; trigger capture takes over");
                return Ok(());
            }
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(SwitchError::Stuck(format!("slot {slot:?} stayed in use")))
}

/// Enters replication mode with `capture` already started (it creates the slot): after a
/// switch from trigger mode, removes the triggers, delivers the outbox, and returns a stream
/// that skips transactions committed before the switch.
pub async fn to_replication(
    capture: Capture,
    slot: &str,
    outbox_config: OutboxConfig,
    drain: &Drain,
    client: &Client,
) -> Result<Capture, SwitchError> {
    if !in_trigger_mode(client).await? {
        return Ok(capture);
    }
    for waited in 0.. {
        if slot_flushed(client, slot).await?.is_some() {
            break;
        }
        if waited >= 600 || capture.task.is_finished() {
            return Err(SwitchError::Stuck(format!(
                "slot {slot:?} was not created; the switch to replication needs it first"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let Some(at) = set_mode(client, "replication").await? else {
        return Ok(capture);
    };
    tracing::info!(%at, "switching to replication capture: delivering the outbox first");
    let cancel = CancellationToken::new();
    let reader = outbox::start(outbox_config, cancel.clone());
    let delivering = tokio::spawn(drain.clone().deliver(reader.changes, reader.ack.clone()));
    loop {
        let left: i64 = client
            .query_one("SELECT count(*) FROM walhook.outbox", &[])
            .await?
            .get(0);
        if left == 0 {
            break;
        }
        if reader.task.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    reader
        .task
        .await
        .map_err(|e| SwitchError::Stuck(e.to_string()))??;
    delivering
        .await
        .map_err(|e| SwitchError::Stuck(e.to_string()))??;
    Ok(skip_before(capture, at))
}

/// Drops (and acknowledges) the transactions committed before `at`; forwards the rest.
fn skip_before(mut capture: Capture, at: Lsn) -> Capture {
    let (tx, changes) = mpsc::channel(1024);
    let ack = capture.ack.clone();
    tokio::spawn(async move {
        let mut skipping = false;
        while let Some(message) = capture.changes.recv().await {
            match &message {
                CaptureMessage::Begin(b) => skipping = b.commit_lsn < at,
                // Safe: skipped transactions all precede every forwarded one.
                CaptureMessage::Commit(c) if skipping => ack.acknowledge(c.end_lsn),
                CaptureMessage::Change(_)
                | CaptureMessage::Commit(_)
                | CaptureMessage::Settled(_) => {}
            }
            if !skipping && tx.send(message).await.is_err() {
                return;
            }
        }
    });
    Capture {
        changes,
        ack: capture.ack,
        task: capture.task,
    }
}
