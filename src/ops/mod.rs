//! Operations: what an operator sees of walhook without reading its logs.
//!
//! ```text
//!  walhook run ── heartbeat (every ops.heartbeat_interval_ms, one UPSERT) ──▶ walhook.instances
//!    │  role, acknowledged LSN + commit time,       │ also reads the slot's retained WAL:
//!    │  events/s, deliveries/s (Rates)              └─▶ WalAlarm ─▶ /readyz 503 while above
//!    └─ preflight checks logged at start                 capture.max_retained_wal
//!
//!  walhook status ── reads the database alone: walhook.instances (live rows only),
//!    pg_replication_slots, subscription_health, settings ── preflight ──▶ table or JSON, exit 0/1/2
//! ```
//!
//! Modules: [`heartbeat`] (the row writer), [`preflight`] (the checks: facts gathered in one
//! place, judged by pure functions), [`status`] (`walhook status`), [`rates`] (the counters
//! delivery bumps and the one-minute rates the heartbeat publishes).
//!
//! A heartbeat row older than [`STALE_INTERVALS`] of its own interval belongs to a dead
//! instance: `status` ignores it and the next heartbeat of any instance deletes it.

pub mod heartbeat;
pub mod preflight;
pub mod rates;
pub mod status;

use std::sync::{Arc, Mutex, PoisonError};

pub use rates::Rates;

use crate::database::DatabaseError;

/// A heartbeat row older than this many of its own intervals counts as a dead instance.
pub const STALE_INTERVALS: i32 = 3;

/// Reading or writing operations data failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// Could not connect.
    #[error(transparent)]
    Connect(#[from] DatabaseError),
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// walhook's schema is not installed (or too old) in this database.
    #[error(
        "walhook's schema is not installed or not up to date in this database: run `walhook migrate` ({0})"
    )]
    NoSchema(String),
    /// `walhook.gaps` could not be read.
    #[error("reading walhook.gaps: {0}")]
    Gaps(#[from] crate::capture::CaptureError),
}

impl OpsError {
    /// A query error, or [`OpsError::NoSchema`] when it says walhook's tables are missing.
    fn from_query(e: tokio_postgres::Error) -> OpsError {
        match e.code() {
            Some(code) if *code == tokio_postgres::error::SqlState::UNDEFINED_TABLE => {
                OpsError::NoSchema(e.to_string())
            }
            _ => OpsError::Query(e),
        }
    }
}

/// Why `/readyz` must answer 503 apart from capture: set by the heartbeat while the slot
/// retains more WAL than `capture.max_retained_wal`, cleared when it falls below. Shared by
/// the heartbeat (writer) and the API (reader); a mutex because it is read a few times a
/// second at most.
#[derive(Debug, Clone, Default)]
pub struct WalAlarm(Arc<Mutex<Option<String>>>);

impl WalAlarm {
    /// Raises the alarm with `reason`, or clears it (`None`).
    pub fn set(&self, reason: Option<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = reason;
    }

    /// The reason, while raised.
    pub fn reason(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// `1073741824` → `1.0 GiB`: sizes in messages and the status table.
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// This machine's host name (from the kernel), or `unknown`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// SQL rendering timestamp expression `expr` as RFC 3339 UTC text with microseconds.
fn rfc3339(expr: &str) -> String {
    format!("to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_uses_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 30), "1.0 GiB");
        assert_eq!(human_bytes(3 << 40), "3.0 TiB");
    }

    #[test]
    fn wal_alarm_sets_and_clears() {
        let alarm = WalAlarm::default();
        assert_eq!(alarm.reason(), None);
        alarm.clone().set(Some("too much".into()));
        assert_eq!(alarm.reason().as_deref(), Some("too much"));
        alarm.set(None);
        assert_eq!(alarm.reason(), None);
    }
}
