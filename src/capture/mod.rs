//! Capture: row changes out of PostgreSQL, in commit order, acknowledged only when safe.
//!
//! [`start`] spawns the replication task and returns a [`Capture`]: a bounded channel of
//! [`CaptureMessage`]s (backpressure reaches the socket, not RAM) and an [`Acknowledger`]
//! the consumer advances with each [`Commit::end_lsn`](crate::change::Commit) it has made
//! durable. The slot's `confirmed_flush_lsn` never passes what was acknowledged.

mod catalog;
pub mod connection;
pub mod error;
pub mod outbox;
pub mod slot;
mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use error::CaptureError;

use crate::change::CaptureMessage;
use crate::database::Database;
use crate::lsn::Lsn;

/// How to capture: where, which slot and publication, and the stream's timings.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// The watched database (a role with `REPLICATION` or superuser).
    pub database: Database,
    /// Logical replication slot name (`[a-z0-9_]`, at most 63 characters).
    pub slot: String,
    /// Publication name.
    pub publication: String,
    /// Tables, as (schema, table), to add to the publication when missing.
    pub tables: Vec<(String, String)>,
    /// How often to report a moved position (coalesced standby status updates; well under
    /// `wal_sender_timeout`).
    pub status_interval: Duration,
    /// Messages buffered between the stream and its consumer.
    pub channel_capacity: usize,
    /// First reconnect delay after a connection loss.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
}

impl CaptureConfig {
    /// Defaults for everything but the database: slot and publication `walhook`.
    pub fn new(database: Database) -> Self {
        CaptureConfig {
            database,
            slot: "walhook".into(),
            publication: "walhook".into(),
            tables: Vec::new(),
            status_interval: Duration::from_millis(150),
            channel_capacity: 1024,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }

    /// Checks names the server would reject, naming the offending key.
    pub fn validate(&self) -> Result<(), CaptureError> {
        let slot_ok = !self.slot.is_empty()
            && self.slot.len() <= 63
            && self
                .slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !slot_ok {
            return Err(CaptureError::Config(format!(
                "capture.slot {:?}: use 1-63 characters of a-z, 0-9 and _",
                self.slot
            )));
        }
        if self.publication.is_empty() || self.publication.len() > 63 {
            return Err(CaptureError::Config(format!(
                "capture.publication {:?}: use 1-63 characters",
                self.publication
            )));
        }
        if self.status_interval.is_zero() || self.channel_capacity == 0 {
            return Err(CaptureError::Config(
                "capture.status_interval_ms and capture.channel_capacity must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// The consumer's side of acknowledgement: the highest LSN whose changes are durable.
#[derive(Debug, Clone, Default)]
pub struct Acknowledger {
    acked: Arc<AtomicU64>,
    streaming: Arc<AtomicBool>,
}

impl Acknowledger {
    /// Marks everything up to `lsn` (a commit's `end_lsn`) durable. Never moves backwards.
    pub fn acknowledge(&self, lsn: Lsn) {
        self.acked.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// The highest acknowledged LSN.
    pub fn acknowledged(&self) -> Lsn {
        Lsn(self.acked.load(Ordering::Acquire))
    }

    /// Whether the replication stream is connected and streaming now.
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::Acquire)
    }

    fn set_streaming(&self, on: bool) {
        self.streaming.store(on, Ordering::Release);
    }
}

/// A running capture.
pub struct Capture {
    /// Changes in commit order.
    pub changes: mpsc::Receiver<CaptureMessage>,
    /// Where to acknowledge durable commits.
    pub ack: Acknowledger,
    /// The replication task; ends on cancellation (`Ok`) or a definite error.
    pub task: JoinHandle<Result<(), CaptureError>>,
}

/// Validates the configuration and starts streaming in a background task.
pub fn start(config: CaptureConfig, cancel: CancellationToken) -> Result<Capture, CaptureError> {
    config.validate()?;
    let (tx, changes) = mpsc::channel(config.channel_capacity);
    let ack = Acknowledger::default();
    let task = tokio::spawn(stream::run(config, tx, ack.clone(), cancel));
    Ok(Capture { changes, ack, task })
}
