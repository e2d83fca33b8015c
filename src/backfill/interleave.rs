//! The interleaving stage between capture and delivery: passes the change stream through,
//! takes backfill watermarks out of it, and at a chunk's HIGH watermark emits the chunk's
//! rows that did not change in the live stream since its LOW watermark.
//!
//! Only one chunk is in flight at a time (the [`super::Worker`] reads them one after the
//! other). Between its LOW and HIGH the stage records the row keys of the chunk's table
//! that live changes touch (both the new and the old key of an UPDATE; a TRUNCATE drops the
//! whole chunk). The surviving rows go out as [`Origin::Backfill`] changes inside HIGH's
//! own transaction frame, so the dispatcher's watermark acknowledges HIGH's end LSN only
//! once they are delivered or queued; that end LSN is handed back to the worker.
//!
//! A watermark the stage does not expect (left in the slot or the outbox by a run that was
//! killed) is dropped; its transaction frame passes on empty and is acknowledged as usual.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::change::{
    BackfillOrigin, Begin, CaptureMessage, Op, Origin, Position, Row, RowChange, Table,
};
use crate::lsn::Lsn;

/// The LOW or HIGH watermark payload: `{"backfill": id, "chunk": nonce, "mark": "low"}`.
pub(super) fn payload(backfill: uuid::Uuid, chunk: &str, mark: &str) -> String {
    serde_json::json!({"backfill": backfill.to_string(), "chunk": chunk, "mark": mark}).to_string()
}

/// What the stage reports when a chunk's HIGH watermark went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HighDone {
    /// End LSN (trigger capture: sequence) of HIGH's transaction frame: acknowledged once
    /// the chunk's events are delivered or queued.
    pub end_lsn: Lsn,
    /// Rows emitted (read rows minus those changed between the watermarks).
    pub sent: u64,
}

/// The chunk the worker has open.
pub(super) struct Chunk {
    /// Nonce of this chunk (run id and number): watermarks of other runs do not match.
    pub nonce: String,
    /// The backfill.
    pub origin: Arc<BackfillOrigin>,
    /// The table as the live stream names it, with its primary key.
    pub table: Arc<Table>,
    /// Told when LOW went through (the window is open).
    pub low_seen: Option<oneshot::Sender<()>>,
    /// Told when HIGH went through.
    pub high_done: Option<oneshot::Sender<HighDone>>,
    /// The rows read, set before HIGH is emitted.
    pub rows: Option<Vec<Row>>,
    open: bool,
    truncated: bool,
    changed: HashSet<String>,
}

impl Chunk {
    /// A chunk about to be opened by its LOW watermark.
    pub fn new(
        nonce: String,
        origin: Arc<BackfillOrigin>,
        table: Arc<Table>,
        low_seen: oneshot::Sender<()>,
        high_done: oneshot::Sender<HighDone>,
    ) -> Chunk {
        Chunk {
            nonce,
            origin,
            table,
            low_seen: Some(low_seen),
            high_done: Some(high_done),
            rows: None,
            open: false,
            truncated: false,
            changed: HashSet::new(),
        }
    }
}

/// The worker's handle on the stage: where it puts the chunk it has open.
#[derive(Clone, Default)]
pub struct Interleave {
    chunk: Arc<Mutex<Option<Chunk>>>,
}

impl Interleave {
    pub(super) fn lock(&self) -> MutexGuard<'_, Option<Chunk>> {
        // A panic while holding the lock leaves a consistent Option; go on with it.
        self.chunk.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The row key of `row` under `key` columns, as compared between chunk rows and live
/// changes: the key values as a JSON array.
pub(super) fn row_key(key: &[String], row: &Row) -> String {
    let values: Vec<&Value> = key
        .iter()
        .map(|k| row.get(k).unwrap_or(&Value::Null))
        .collect();
    serde_json::to_string(&values).unwrap_or_default()
}

/// Starts the stage on `changes`; returns the stream for `Delivery::run` and the handle the
/// worker uses. The output channel has the same capacity as the input.
pub fn interleave(
    changes: mpsc::Receiver<CaptureMessage>,
    capacity: usize,
) -> (mpsc::Receiver<CaptureMessage>, Interleave) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let handle = Interleave::default();
    tokio::spawn(run(changes, tx, handle.clone()));
    (rx, handle)
}

async fn run(
    mut input: mpsc::Receiver<CaptureMessage>,
    output: mpsc::Sender<CaptureMessage>,
    handle: Interleave,
) {
    let mut begin: Option<Begin> = None;
    let mut high: Option<(oneshot::Sender<HighDone>, u64)> = None;
    while let Some(message) = input.recv().await {
        match &message {
            CaptureMessage::Begin(b) => begin = Some(b.clone()),
            CaptureMessage::Change(change) => {
                if let Some(mark) = change.watermark() {
                    let Some((rows, done)) = watermark(&handle, mark, begin.as_ref(), change)
                    else {
                        continue;
                    };
                    let sent = rows.len() as u64;
                    for row in rows {
                        if output.send(CaptureMessage::Change(row)).await.is_err() {
                            return;
                        }
                    }
                    high = Some((done, sent));
                    continue;
                }
                record(&handle, change);
            }
            CaptureMessage::Commit(commit) => {
                let end_lsn = commit.end_lsn;
                if output.send(message).await.is_err() {
                    return;
                }
                if let Some((done, sent)) = high.take() {
                    let _ = done.send(HighDone { end_lsn, sent });
                }
                continue;
            }
        }
        if output.send(message).await.is_err() {
            return;
        }
    }
}

/// Records a live change of the open chunk's table.
fn record(handle: &Interleave, change: &RowChange) {
    let mut guard = handle.lock();
    let Some(chunk) = guard.as_mut().filter(|c| c.open) else {
        return;
    };
    if change.table.schema != chunk.table.schema || change.table.name != chunk.table.name {
        return;
    }
    if change.op == Op::Truncate {
        chunk.truncated = true;
        return;
    }
    for image in [&change.new, &change.old].into_iter().flatten() {
        chunk.changed.insert(row_key(&chunk.table.key, image));
    }
}

/// Handles a watermark: LOW opens the window; HIGH closes it and returns the surviving rows
/// (as changes positioned in HIGH's frame) with the sender to report the frame's end on.
fn watermark(
    handle: &Interleave,
    mark: &Row,
    begin: Option<&Begin>,
    change: &RowChange,
) -> Option<(Vec<RowChange>, oneshot::Sender<HighDone>)> {
    let text = |k: &str| mark.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut guard = handle.lock();
    let chunk = guard.as_mut()?;
    if text("backfill") != chunk.origin.id.to_string() || text("chunk") != chunk.nonce {
        return None; // a watermark of another run: dropped
    }
    match text("mark") {
        "low" => {
            chunk.open = true;
            if let Some(seen) = chunk.low_seen.take() {
                let _ = seen.send(());
            }
            None
        }
        "high" => {
            let chunk = guard.take()?;
            let (Some(rows), Some(done), true) = (chunk.rows, chunk.high_done, chunk.open) else {
                return None; // not ready: the worker times out and reads the chunk again
            };
            let (commit_lsn, xid, commit_time) = match begin {
                Some(b) => (b.commit_lsn, b.xid, b.commit_time),
                None => (change.position.commit_lsn, change.xid, change.commit_time),
            };
            let rows = if chunk.truncated { Vec::new() } else { rows };
            let changes = rows
                .into_iter()
                .filter(|row| !chunk.changed.contains(&row_key(&chunk.table.key, row)))
                .enumerate()
                .map(|(i, row)| RowChange {
                    position: Position {
                        commit_lsn,
                        index: change.position.index + 1 + i as u32,
                    },
                    xid,
                    commit_time,
                    table: chunk.table.clone(),
                    op: Op::Insert,
                    new: Some(row),
                    old: None,
                    unchanged_toast: Vec::new(),
                    origin: Origin::Backfill(chunk.origin.clone()),
                })
                .collect();
            Some((changes, done))
        }
        _ => None,
    }
}
