//! Capture errors, and the one place that decides which of them are worth a retry.
//!
//! Definite errors (bad credentials, missing privileges, `wal_level` too low, a bad
//! configuration) stop the capture: retrying cannot fix them. Everything else (I/O, a
//! terminated walsender, a slot still held by a dying process) is transient and the stream
//! reconnects with backoff, resuming from the last acknowledged LSN.

use std::fmt;
use std::io;

use crate::pgoutput::DecodeError;

/// An `ErrorResponse` sent by the server, with the fields operators need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL`, `PANIC`.
    pub severity: String,
    /// SQLSTATE, e.g. `28P01`.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// Optional detail line.
    pub detail: Option<String>,
    /// Optional hint line.
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong while capturing changes.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// No TCP/Unix connection could be made to any configured host.
    #[error("cannot connect to PostgreSQL at {addr}: {source}")]
    Connect {
        /// `host:port` or socket path tried last.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
    /// The connection broke or the server closed it.
    #[error("connection to PostgreSQL lost: {0}")]
    Io(#[from] io::Error),
    /// TLS negotiation failed or was required but refused.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server rejected our credentials.
    #[error("authentication as user {user:?} failed: {message}")]
    Auth {
        /// The user we tried to log in as.
        user: String,
        /// Why, in the server's or our words.
        message: String,
    },
    /// The server answered a command with an error.
    #[error("PostgreSQL: {0}")]
    Server(ServerError),
    /// The server sent something the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The capture was configured with something unusable.
    #[error("capture configuration: {0}")]
    Config(String),
    /// A replication message could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The consumer of the change stream went away.
    #[error("the change stream's consumer stopped")]
    ConsumerGone,
    /// An ordinary session of the replication capture failed: the lease session, or a
    /// query on the slot's record.
    #[error("capture session: {message}")]
    Session {
        /// SQLSTATE when the server answered with an error.
        code: Option<String>,
        /// What failed.
        message: String,
    },
    /// The lease session died or stopped answering: another instance may take over, so
    /// this one stops streaming at once (and stands by or takes the lease again).
    #[error("the capture lease was lost: {0}")]
    LeaseLost(String),
    /// The slot walhook streamed from was invalidated or has disappeared: the changes
    /// between the last delivered position and now are gone, and walhook will not skip
    /// them silently. `walhook slot reset` accepts the gap.
    #[error(
        "replication slot {slot:?} {state}; walhook last delivered up to {last_lsn} \
         (commit time {}). The changes after that position can no longer be streamed. \
         Nothing is skipped silently: to accept the gap and capture from now on, run \
         `walhook slot reset` (it creates a fresh slot and records the gap in walhook.gaps)",
        last_commit_time.as_deref().unwrap_or("unknown")
    )]
    SlotGap {
        /// The slot's name.
        slot: String,
        /// What happened to it: `was invalidated (wal_status = lost)` or `has disappeared`.
        state: &'static str,
        /// The last acknowledged (delivered or durably queued) position.
        last_lsn: crate::lsn::Lsn,
        /// Commit time of the transaction ending there (RFC 3339), when known.
        last_commit_time: Option<String>,
    },
    /// `walhook slot reset` cannot run now (nothing to reset, or an instance streams).
    #[error("walhook slot reset: {0}")]
    Reset(String),
    /// Trigger capture's session failed (connect, LISTEN, outbox query).
    #[error("trigger capture: {message}")]
    Outbox {
        /// SQLSTATE when the server answered with an error.
        code: Option<String>,
        /// What failed.
        message: String,
    },
}

impl From<tokio_postgres::Error> for CaptureError {
    fn from(e: tokio_postgres::Error) -> CaptureError {
        let code = e.code().map(|c| c.code().to_owned());
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        CaptureError::Outbox { code, message }
    }
}

impl CaptureError {
    /// A tokio-postgres error of the replication capture's ordinary sessions.
    pub fn session(e: tokio_postgres::Error) -> CaptureError {
        let code = e.code().map(|c| c.code().to_owned());
        let message = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        CaptureError::Session { code, message }
    }

    /// Whether reconnecting may succeed. Classified by SQLSTATE class for server errors.
    pub fn is_transient(&self) -> bool {
        match self {
            CaptureError::Connect { .. } | CaptureError::Io(_) => true,
            CaptureError::Server(e) => is_transient_sqlstate(&e.code),
            // No SQLSTATE: the connection itself failed or closed.
            CaptureError::Outbox { code, .. } | CaptureError::Session { code, .. } => {
                code.as_deref().is_none_or(is_transient_sqlstate)
            }
            CaptureError::LeaseLost(_) => true,
            CaptureError::Tls(_)
            | CaptureError::Auth { .. }
            | CaptureError::Protocol(_)
            | CaptureError::Config(_)
            | CaptureError::Decode(_)
            | CaptureError::ConsumerGone
            | CaptureError::SlotGap { .. }
            | CaptureError::Reset(_) => false,
        }
    }
}

/// Transient SQLSTATEs: connection exceptions (08), operator intervention such as
/// `pg_terminate_backend` or a shutdown (57), insufficient resources (53), system errors
/// (58), and "object in use" (55006: the slot is still held by a previous walsender).
fn is_transient_sqlstate(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "57" | "53" | "58")) || code == "55006" || code == "40001"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: &str) -> CaptureError {
        CaptureError::Server(ServerError {
            severity: "FATAL".into(),
            code: code.into(),
            message: "m".into(),
            detail: None,
            hint: None,
        })
    }

    #[test]
    fn classifies_by_sqlstate_class() {
        assert!(server("57P01").is_transient());
        assert!(server("55006").is_transient());
        assert!(!server("28P01").is_transient());
        assert!(!server("42501").is_transient());
        assert!(!server("55000").is_transient());
    }
}
