//! The change model handed from capture to the rest of the pipeline.
//!
//! A transaction arrives as `Begin`, its row changes, then `Commit`, streamed as they are
//! decoded (a million-row transaction is never held in memory). Every change carries a
//! [`Position`] — its transaction's commit LSN and its index inside the transaction — which
//! is identical on every replay and becomes the event id. A consumer acknowledges a
//! transaction by its [`Commit::end_lsn`] once its changes are delivered or durably queued.

use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::lsn::Lsn;

/// A row as a JSON object, column name → `to_jsonb` value, in column order.
pub type Row = Map<String, Value>;

/// Where a change sits in the commit order; stable across replays and crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// LSN of the transaction's commit record.
    pub commit_lsn: Lsn,
    /// 0-based index of the change inside its transaction.
    pub index: u32,
}

impl fmt::Display for Position {
    /// `0000000004DC4880-0`: fixed width, so the text sorts like the position.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}-{}", self.commit_lsn.0, self.index)
    }
}

/// A commit timestamp: microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct CommitTime(pub i64);

impl CommitTime {
    /// Microseconds between the Unix epoch and PostgreSQL's.
    const UNIX_OFFSET_MICROS: i64 = 946_684_800_000_000;

    /// Microseconds since the Unix epoch.
    pub fn unix_micros(self) -> i64 {
        self.0 + Self::UNIX_OFFSET_MICROS
    }

    /// RFC 3339 in UTC with microseconds: `2026-11-23T04:53:33.420316Z`.
    pub fn to_rfc3339(self) -> String {
        let micros = self.unix_micros();
        let secs = micros.div_euclid(1_000_000);
        let frac = micros.rem_euclid(1_000_000);
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        if !(0..=9999).contains(&y) {
            return format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
                rem / 3600,
                rem / 60 % 60,
                rem % 60
            );
        }
        // Digit by digit: this runs once per event.
        let mut out = String::with_capacity(27);
        let fields = [
            (y, 4, '-'),
            (i64::from(m), 2, '-'),
            (i64::from(d), 2, 'T'),
            (rem / 3600, 2, ':'),
            (rem / 60 % 60, 2, ':'),
            (rem % 60, 2, '.'),
            (frac, 6, 'Z'),
        ];
        for (value, width, after) in fields {
            push_decimal(&mut out, value, width);
            out.push(after);
        }
        out
    }
}

/// Appends the non-negative `value`'s last `width` decimal digits, zero-padded.
fn push_decimal(out: &mut String, value: i64, width: u32) {
    for i in (0..width).rev() {
        let digit = (value / 10i64.pow(i)) % 10;
        out.push(char::from(b'0' + digit as u8));
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The operation a change records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// TRUNCATE (no rows).
    Truncate,
}

/// A captured table as the pipeline sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Relation OID.
    pub id: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Column names in order.
    pub columns: Vec<String>,
    /// Primary key columns (else the replica identity's), which identify a row for ordering.
    pub key: Vec<String>,
}

/// Start of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// Transaction id.
    pub xid: u32,
    /// LSN of its commit record.
    pub commit_lsn: Lsn,
    /// Commit time.
    pub commit_time: CommitTime,
}

/// End of a transaction: acknowledge `end_lsn` once its changes are safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Transaction id.
    pub xid: u32,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record.
    pub end_lsn: Lsn,
    /// Commit time.
    pub commit_time: CommitTime,
    /// Number of row changes the transaction carried.
    pub changes: u32,
}

/// Which capture produced a change: it decides the event id's form and `source.mode`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Origin {
    /// Logical replication: `position.commit_lsn` is the commit record's LSN.
    #[default]
    Replication,
    /// Trigger capture: `position.commit_lsn` holds the outbox row id (index 0).
    Trigger,
    /// A backfill's row image (`<noun>.backfilled`, see [`crate::backfill`]), carried inside
    /// its high watermark's transaction frame; routed only to the backfill's subscriptions.
    Backfill(Arc<BackfillOrigin>),
}

/// Which backfill a [`Origin::Backfill`] row belongs to and where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillOrigin {
    /// The backfill's id (`source.backfill`).
    pub id: uuid::Uuid,
    /// The one subscription it is for; `None`: every subscription taking the table's events.
    pub subscription: Option<uuid::Uuid>,
    /// Whether the capture is trigger capture (`source.mode`).
    pub trigger: bool,
}

/// Schema and table name a backfill watermark travels under through the change stream:
/// never a watched table, so a consumer that does not know watermarks skips them like any
/// unwatched change.
pub const WATERMARK_TABLE: (&str, &str) = ("walhook", "backfill_watermark");

/// The logical-message prefix of backfill watermarks (replication capture).
pub const WATERMARK_PREFIX: &str = "walhook.backfill";

impl Table {
    /// The pseudo table watermarks travel under ([`WATERMARK_TABLE`]).
    pub fn watermark() -> Table {
        Table {
            id: 0,
            schema: WATERMARK_TABLE.0.to_owned(),
            name: WATERMARK_TABLE.1.to_owned(),
            columns: Vec::new(),
            key: Vec::new(),
        }
    }
}

/// One row change.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChange {
    /// Stable position (commit LSN, index in transaction).
    pub position: Position,
    /// Transaction id.
    pub xid: u32,
    /// Commit time of the transaction.
    pub commit_time: CommitTime,
    /// The table changed.
    pub table: Arc<Table>,
    /// What happened.
    pub op: Op,
    /// New row (INSERT, UPDATE). Unchanged TOASTed values are filled from `old` when known.
    pub new: Option<Row>,
    /// Old row (UPDATE, DELETE): complete under `REPLICA IDENTITY FULL`, else key columns;
    /// `None` when the server sent no old image.
    pub old: Option<Row>,
    /// Columns of `new` left out because their unchanged TOASTed value was not sent and
    /// could not be filled in.
    pub unchanged_toast: Vec<String>,
    /// Which capture produced it.
    pub origin: Origin,
}

impl Op {
    /// Lower-case SQL verb: `insert`, `update`, `delete`, `truncate`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

impl RowChange {
    /// The payload of a backfill watermark (its `new` image), when this change is one.
    pub fn watermark(&self) -> Option<&Row> {
        if self.table.schema == WATERMARK_TABLE.0 && self.table.name == WATERMARK_TABLE.1 {
            self.new.as_ref()
        } else {
            None
        }
    }

    /// The change as a JSON object (what `walhook tail` prints).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "position": self.position.to_string(),
            "xid": self.xid,
            "commit_time": self.commit_time.to_rfc3339(),
            "schema": self.table.schema,
            "table": self.table.name,
            "op": self.op.as_str(),
            "key": self.table.key,
            "new": self.new,
            "old": self.old,
            "unchanged_toast": self.unchanged_toast,
        })
    }
}

/// What the capture stream yields, in commit order.
#[derive(Debug, Clone, PartialEq)]
pub enum CaptureMessage {
    /// A transaction starts.
    Begin(Begin),
    /// A row change of the current transaction.
    Change(RowChange),
    /// The current transaction committed.
    Commit(Commit),
    /// Between transactions: set by the consumer once every transaction before it is
    /// finished (its events delivered or durably queued). The backfill stage puts one after
    /// the frame carrying a chunk's last row, whose end LSN alone cannot say so: its own
    /// frames reuse the previous transaction's end.
    Settled(Settled),
}

/// A flag set once, that a task can wait for (see [`CaptureMessage::Settled`]).
#[derive(Clone, Default)]
pub struct Settled(Arc<SettledFlag>);

#[derive(Default)]
struct SettledFlag {
    set: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Settled {
    /// Sets it and wakes its waiters (again is a no-op).
    pub fn set(&self) {
        self.0.set.store(true, std::sync::atomic::Ordering::Release);
        self.0.notify.notify_waiters();
    }

    /// Whether it is set.
    pub fn is_set(&self) -> bool {
        self.0.set.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until it is set.
    pub async fn wait(&self) {
        notified_until(&self.0.notify, || self.is_set()).await;
    }
}

/// Waits until `ready()` holds, re-checking it each time `notify` wakes its waiters (it
/// registers before each check, so a wake-up between check and wait is not missed).
pub(crate) async fn notified_until(notify: &tokio::sync::Notify, ready: impl Fn() -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if ready() {
            return;
        }
        notified.await;
    }
}

impl PartialEq for Settled {
    /// The same flag.
    fn eq(&self, other: &Settled) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Settled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Settled({})", self.is_set())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_time_formats_rfc3339_utc() {
        assert_eq!(CommitTime(0).to_rfc3339(), "2000-01-01T00:00:00.000000Z");
        // 2026-11-23T04:53:33.420316Z
        let t = CommitTime(1_795_409_613_420_316 - 946_684_800_000_000);
        assert_eq!(t.to_rfc3339(), "2026-11-23T04:53:33.420316Z");
        assert_eq!(CommitTime(-1).to_rfc3339(), "1999-12-31T23:59:59.999999Z");
        // Digit by digit, as chrono prints it, across the years a commit can have.
        let mut micros = -CommitTime::UNIX_OFFSET_MICROS;
        while micros < 9_000_000_000_000_000 {
            let expected =
                chrono::DateTime::from_timestamp_micros(micros + CommitTime::UNIX_OFFSET_MICROS)
                    .unwrap()
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                    .to_string();
            assert_eq!(CommitTime(micros).to_rfc3339(), expected);
            micros += 3_141_592_653_589_793 / 977;
        }
    }

    #[test]
    fn positions_print_sortably() {
        let p = Position {
            commit_lsn: Lsn(0x4DC4880),
            index: 3,
        };
        assert_eq!(p.to_string(), "0000000004DC4880-3");
    }
}
