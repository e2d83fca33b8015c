//! Capture: row changes out of PostgreSQL, in commit order, acknowledged only when safe.
//!
//! [`start`] spawns the replication task and returns a [`Capture`]: a bounded channel of
//! [`CaptureMessage`]s (backpressure reaches the socket, not RAM) and an [`Acknowledger`]
//! the consumer advances with each [`Commit::end_lsn`](crate::change::Commit) it has made
//! durable. The slot's `confirmed_flush_lsn` never passes what was acknowledged.
//!
//! Any number of instances may capture one slot: the one holding the [`lease`] streams, the
//! others stand by ([`Role::Standby`]). Before every replication session, [`progress`]
//! checks walhook's record of the slot and refuses to stream over a gap (a lost or missing
//! slot) until `walhook slot reset` accepts it.

mod catalog;
pub mod connection;
pub mod error;
pub mod lease;
pub mod outbox;
pub mod progress;
pub mod slot;
mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use error::CaptureError;

use crate::change::{CaptureMessage, CommitTime};
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

/// What this instance's capture is doing now, as `status`, `/readyz` and `/metrics` show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Connecting for the first time.
    Starting = 0,
    /// Streaming changes: this instance holds the capture.
    Streaming = 1,
    /// Waiting for another instance's capture to end, ready to take over.
    Standby = 2,
    /// Lost its connection and is reconnecting.
    Reconnecting = 3,
}

impl Role {
    /// The role's name in `status`, `/readyz` and `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Streaming => "streaming",
            Role::Standby => "standby",
            Role::Reconnecting => "reconnecting",
        }
    }

    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Streaming,
            2 => Role::Standby,
            3 => Role::Reconnecting,
            _ => Role::Starting,
        }
    }
}

/// The consumer's side of acknowledgement: the highest LSN whose changes are durable, the
/// commit time of the transaction it ends, and the capture's current [`Role`].
#[derive(Debug, Clone, Default)]
pub struct Acknowledger {
    acked: Arc<AtomicU64>,
    acked_commit_time: Arc<AtomicI64>,
    role: Arc<AtomicU8>,
}

impl Acknowledger {
    /// Marks everything up to `lsn` (a commit's `end_lsn`) durable. Never moves backwards.
    pub fn acknowledge(&self, lsn: Lsn) {
        self.acked.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// [`Self::acknowledge`], remembering the transaction's commit time for lag reports.
    pub fn acknowledge_commit(&self, lsn: Lsn, commit_time: CommitTime) {
        self.acknowledge(lsn);
        self.acked_commit_time
            .fetch_max(commit_time.0, Ordering::AcqRel);
    }

    /// The highest acknowledged LSN.
    pub fn acknowledged(&self) -> Lsn {
        Lsn(self.acked.load(Ordering::Acquire))
    }

    /// Commit time of the last acknowledged transaction, if one was acknowledged.
    pub fn acknowledged_commit_time(&self) -> Option<CommitTime> {
        match self.acked_commit_time.load(Ordering::Acquire) {
            0 => None,
            t => Some(CommitTime(t)),
        }
    }

    /// Whether the capture is connected and streaming now.
    pub fn is_streaming(&self) -> bool {
        self.role() == Role::Streaming
    }

    /// What the capture is doing now.
    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Acquire))
    }

    /// Records what the capture is doing now.
    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Release);
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
