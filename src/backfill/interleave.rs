//! The interleaving stage between capture and delivery: passes the change stream through,
//! takes backfill watermarks out of it, and at a chunk's HIGH watermark emits the chunk's
//! rows that did not change in the live stream since its LOW watermark.
//!
//! ```text
//!  capture ──▶ [ idle: one atomic load, forward ] ──▶ Delivery::run
//!              [ busy: chunks (registered in order, at most one window open),
//!                      recent commit xids (the visibility check),
//!                      rows past HIGH, released in slices ]
//! ```
//!
//! Several chunks may be registered at once (the [`super::Worker`] pipelines them), in the
//! order their watermarks travel; their windows never overlap in the stream, because the
//! worker emits a chunk's LOW only after (or in the same transaction as) the previous
//! chunk's HIGH. Between a chunk's LOW and HIGH the stage records the row keys of its table
//! that live changes touch (both the new and the old key of an UPDATE; a TRUNCATE drops the
//! whole chunk). The surviving rows go out as [`Origin::Backfill`] changes, paced (see
//! [`run`]): [`SLICE`] at a time in frames of their own while delivery has taken every
//! live message, and a kept row ahead of a live change of the same row. The end LSN of the
//! frame that carried a chunk's last row is handed back to the worker: once it is
//! acknowledged, every row of the chunk is delivered or queued.
//!
//! Idle path: while no chunk is registered, a live message costs one atomic load (no lock)
//! besides the channel hop; only a watermark (of a killed run, dropped) is looked at.
//!
//! While a chunk is registered the stage also remembers the xids of the last
//! [`RECENT_COMMITS`] transactions that passed, numbered in stream order, so the worker can
//! tell whether a transaction that came through *before* a LOW watermark was still
//! invisible to the chunk's read (see [`Interleave::committed_before`]).
//!
//! A watermark the stage does not expect (left in the slot or the outbox by a run that was
//! killed, or of a chunk the worker gave up) is dropped; its transaction frame passes on
//! empty and is acknowledged as usual.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::change::{
    BackfillOrigin, Begin, CaptureMessage, Commit, Op, Origin, Position, Row, RowChange, Settled,
    Table,
};
use crate::delivery::Load;
use crate::lsn::Lsn;

/// How many recent commit xids the stage remembers while a backfill runs (for the
/// visibility check): a transaction must become visible within this many later commits.
pub(super) const RECENT_COMMITS: usize = 65_536;

/// Messages taken from the input channel at once.
const BATCH: usize = 256;

/// The LOW or HIGH watermark payload: `{"backfill": id, "chunk": nonce, "mark": "low"}`.
pub(super) fn payload(backfill: uuid::Uuid, chunk: &str, mark: &str) -> String {
    serde_json::json!({"backfill": backfill.to_string(), "chunk": chunk, "mark": mark}).to_string()
}

/// What the stage reports when a chunk's last row went out.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct HighDone {
    /// Set once the frame that carried the chunk's last row, and every frame before it, is
    /// finished: the chunk's events are delivered or durably queued.
    pub settled: Settled,
    /// Rows emitted (read rows minus those changed between the watermarks).
    pub sent: u64,
}

/// What the stage reports when a chunk's LOW watermark went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LowSeen {
    /// Stream number of the last commit before LOW (for [`Interleave::committed_before`]).
    pub commits_before: u64,
}

/// A chunk the worker registered.
pub(super) struct Chunk {
    /// Nonce of this chunk (run id and number): watermarks of other runs do not match.
    pub nonce: String,
    /// The backfill.
    pub origin: Arc<BackfillOrigin>,
    /// The table as the live stream names it, with its primary key.
    pub table: Arc<Table>,
    /// Told when LOW went through (the window is open).
    pub low_seen: Option<oneshot::Sender<LowSeen>>,
    /// Told when HIGH's frame went through.
    pub high_done: Option<oneshot::Sender<HighDone>>,
    /// The rows read, set before HIGH is emitted.
    pub rows: Option<Read>,
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
        low_seen: oneshot::Sender<LowSeen>,
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

/// A chunk's rows as the worker read them, each with its row key, and the set of those
/// keys: both made by the worker, so that a chunk's HIGH costs the stream's path only the
/// removal of the rows that changed in its window.
#[derive(Default)]
pub(super) struct Read {
    rows: Vec<(String, Row)>,
    keys: HashSet<String>,
}

impl Read {
    /// Adds a row of a table keyed by `key` columns.
    pub fn push(&mut self, key: &[String], row: Row) {
        let row_key = row_key(key, &row);
        self.keys.insert(row_key.clone());
        self.rows.push((row_key, row));
    }
}

/// What the stage keeps while a backfill runs.
#[derive(Default)]
pub(super) struct Chunks {
    /// Registered chunks in watermark order.
    queue: VecDeque<Chunk>,
    /// Commits that passed since the stage became busy.
    commits: u64,
    /// xid → stream number of its last commit, for the last [`RECENT_COMMITS`] commits.
    recent: HashMap<u32, u64>,
    /// The same xids in stream order (for eviction).
    order: VecDeque<(u32, u64)>,
}

impl Chunks {
    /// Registers a chunk after those already registered.
    pub fn push(&mut self, chunk: Chunk) {
        self.queue.push_back(chunk);
    }

    /// The registered chunk `nonce`, to hand it its rows.
    pub fn get_mut(&mut self, nonce: &str) -> Option<&mut Chunk> {
        self.queue.iter_mut().find(|c| c.nonce == nonce)
    }

    /// Forgets chunk `nonce` (given up: its watermarks will be dropped).
    pub fn forget(&mut self, nonce: &str) {
        self.queue.retain(|c| c.nonce != nonce);
    }

    /// Forgets every chunk.
    pub fn clear(&mut self) {
        self.queue.clear();
    }

    fn remember_commit(&mut self, xid: u32) {
        self.commits += 1;
        let n = self.commits;
        self.recent.insert(xid, n);
        self.order.push_back((xid, n));
        if self.order.len() > RECENT_COMMITS
            && let Some((old, at)) = self.order.pop_front()
            && self.recent.get(&old) == Some(&at)
        {
            self.recent.remove(&old);
        }
    }
}

/// The worker's handle on the stage: where it registers the chunks it has in flight.
#[derive(Clone, Default)]
pub struct Interleave {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Whether any chunk is registered: the idle path reads only this. Written under the
    /// `chunks` lock; a stale `false` seen by the stage is harmless, because a chunk's
    /// watermarks are emitted only after its registration returned.
    busy: AtomicBool,
    chunks: Mutex<Chunks>,
}

/// The stage's lock, which keeps `busy` in step with the chunk queue when dropped.
pub(super) struct Guard<'a> {
    guard: MutexGuard<'a, Chunks>,
    busy: &'a AtomicBool,
}

impl std::ops::Deref for Guard<'_> {
    type Target = Chunks;
    fn deref(&self) -> &Chunks {
        &self.guard
    }
}

impl std::ops::DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut Chunks {
        &mut self.guard
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let busy = !self.guard.queue.is_empty();
        if !busy && self.busy.load(Ordering::Relaxed) {
            // Idle again: the commit history starts afresh with the next chunk.
            self.guard.recent.clear();
            self.guard.order.clear();
        }
        self.busy.store(busy, Ordering::Release);
    }
}

impl Interleave {
    pub(super) fn lock(&self) -> Guard<'_> {
        // A panic while holding the lock leaves a consistent queue; go on with it.
        Guard {
            guard: self
                .shared
                .chunks
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
            busy: &self.shared.busy,
        }
    }

    /// Whether one of `xids` (low 32 bits) committed in the stream at or before stream
    /// number `commits_before`, as far as the last [`RECENT_COMMITS`] commits tell.
    pub(super) fn committed_before(&self, commits_before: u64, xids: &[u32]) -> Option<u32> {
        let chunks = self.lock();
        xids.iter()
            .copied()
            .find(|x| chunks.recent.get(x).is_some_and(|&n| n <= commits_before))
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

/// Starts the stage on `changes`, pacing released rows by delivery's `load` and at most
/// `max_rows_per_second` (0: no limit); returns the stream for `Delivery::run` and the
/// handle the worker uses. The output channel has the same capacity as the input, and at
/// least room for one released slice's frame.
pub fn interleave(
    changes: mpsc::Receiver<CaptureMessage>,
    capacity: usize,
    load: Arc<Load>,
    max_rows_per_second: u64,
) -> (mpsc::Receiver<CaptureMessage>, Interleave) {
    let (tx, rx) = mpsc::channel(capacity.max(SLICE + 2));
    let handle = Interleave::default();
    let spacing = Spacing::new(max_rows_per_second);
    tokio::spawn(run(changes, tx, handle.clone(), load, spacing));
    (rx, handle)
}

/// When the next released slice may go out: slices are spread evenly at the backfill rate
/// rather than sent in bursts (a chunk read at once would otherwise go out as fast as
/// delivery takes it, and live events would wait behind that burst for CPU).
struct Spacing {
    /// Time per released row (`None`: no limit).
    per_row: Option<Duration>,
    /// The earliest moment of the next release.
    next: Instant,
}

impl Spacing {
    fn new(max_rows_per_second: u64) -> Spacing {
        Spacing {
            per_row: (max_rows_per_second > 0)
                .then(|| Duration::from_secs_f64(1.0 / max_rows_per_second as f64)),
            next: Instant::now(),
        }
    }

    /// Waits until the next slice may go out.
    async fn wait(&self) {
        if self.per_row.is_some() {
            tokio::time::sleep_until(self.next).await;
        }
    }

    /// `rows` went out at `now`: the next slice is due that many rows' time later (a
    /// release late by more than one slice's time does not earn a burst).
    fn released(&mut self, rows: usize, now: Instant) {
        if let Some(per_row) = self.per_row {
            let slice = per_row * SLICE as u32;
            let from = self.next.max(now.checked_sub(slice).unwrap_or(now));
            self.next = from + per_row * rows as u32;
        }
    }
}

/// Rows of a chunk past its HIGH watermark still to be emitted (see [`run`]).
struct Pending {
    /// The rows in key order, each with its row key.
    rows: VecDeque<(String, RowChange)>,
    /// The row keys of `rows`, so that a live change is checked without a scan.
    keys: HashSet<String>,
    /// Told when the last row went out, with the end of the frame that carried it.
    done: oneshot::Sender<HighDone>,
    /// Rows the chunk emits in all.
    sent: u64,
}

/// What the stage holds between messages: the frame it is in and the chunks whose rows
/// are not all out yet.
#[derive(Default)]
struct Stage {
    /// The open transaction frame's Begin (`None` between frames).
    begin: Option<Begin>,
    /// End LSN of the last frame passed on (a released slice's frame ends there too).
    last_end: Lsn,
    /// Chunks past HIGH with rows left, oldest first.
    pending: VecDeque<Pending>,
    /// Chunks whose last row went out in the open frame: told at its Commit.
    finished: Vec<(oneshot::Sender<HighDone>, u64)>,
}

impl Stage {
    /// Tells the chunks whose last row went out in the frame just handed on that they are
    /// done, with the marker that follows that frame; `None` when no chunk finished.
    fn settle_finished(&mut self) -> Option<Settled> {
        if self.finished.is_empty() {
            return None;
        }
        let settled = Settled::default();
        for (done, sent) in self.finished.drain(..) {
            let _ = done.send(HighDone {
                settled: settled.clone(),
                sent,
            });
        }
        Some(settled)
    }

    /// Takes out of the pending chunks every row whose key `change` (a live change of the
    /// same table) touches, so that it goes out before the change; a TRUNCATE takes all
    /// of that table's rows.
    fn due_before(&mut self, change: &RowChange) -> Vec<RowChange> {
        let mut due = Vec::new();
        // The change's row keys (new and old image), rendered once for all chunks.
        let mut keys: Option<Vec<String>> = None;
        for chunk in &mut self.pending {
            let Some((_, first)) = chunk.rows.front() else {
                continue;
            };
            if first.table.schema != change.table.schema || first.table.name != change.table.name {
                continue;
            }
            if change.op == Op::Truncate {
                chunk.keys.clear();
                due.extend(chunk.rows.drain(..).map(|(_, row)| row));
                continue;
            }
            let table_key = &first.table.key;
            let keys = keys.get_or_insert_with(|| {
                [&change.new, &change.old]
                    .into_iter()
                    .flatten()
                    .map(|image| row_key(table_key, image))
                    .collect()
            });
            for key in keys.iter() {
                if chunk.keys.remove(key)
                    && let Some(at) = chunk.rows.iter().position(|(k, _)| k == key)
                    && let Some((_, row)) = chunk.rows.remove(at)
                {
                    due.push(row);
                }
            }
        }
        self.settle_emptied();
        due
    }

    /// Up to `n` pending rows, oldest chunk first.
    fn slice(&mut self, n: usize) -> Vec<RowChange> {
        let mut out = Vec::with_capacity(n);
        for chunk in &mut self.pending {
            let take = (n - out.len()).min(chunk.rows.len());
            for (key, row) in chunk.rows.drain(..take) {
                chunk.keys.remove(&key);
                out.push(row);
            }
            if out.len() == n {
                break;
            }
        }
        self.settle_emptied();
        out
    }

    /// Moves chunks with no rows left to `finished` (told at the open frame's Commit).
    fn settle_emptied(&mut self) {
        while let Some(at) = self.pending.iter().position(|c| c.rows.is_empty()) {
            if let Some(chunk) = self.pending.remove(at) {
                self.finished.push((chunk.done, chunk.sent));
            }
        }
    }
}

/// Rows released per frame of their own while the stream is idle.
const SLICE: usize = 64;

/// The stage's loop. A chunk's surviving rows are not put into the stream at once at its
/// HIGH watermark (a chunk is a burst of up to `chunk_size` events that later live changes
/// would wait behind): they are kept and released [`SLICE`] at a time, in frames of their
/// own, spread evenly at the backfill rate ([`Spacing`]), and only while the output
/// channel is empty (delivery has taken every live message the stage passed on) and
/// delivery holds at most [`Load::EASED`] jobs in memory (backfilled events never fill its
/// budget ahead of live ones). A live change of a row still kept
/// takes that row out first, just before the change in the change's own frame, so a row's
/// backfill image always goes out before the row's newer live events. A chunk is reported
/// done after the frame that carried its last row, with a [`CaptureMessage::Settled`]
/// marker behind that frame: delivery sets it once that frame and every one before it are
/// finished. (A released frame reuses the previous transaction's end LSN, so that LSN's
/// acknowledgement would not cover it.)
async fn run(
    mut input: mpsc::Receiver<CaptureMessage>,
    output: mpsc::Sender<CaptureMessage>,
    handle: Interleave,
    load: Arc<Load>,
    mut spacing: Spacing,
) {
    let mut stage = Stage::default();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = if stage.pending.is_empty() || stage.begin.is_some() {
            input.recv_many(&mut batch, BATCH).await
        } else {
            tokio::select! {
                biased;
                n = input.recv_many(&mut batch, BATCH) => n,
                permits = async {
                    spacing.wait().await;
                    load.eased().await;
                    output.reserve_many(output.max_capacity()).await
                } => {
                    let Ok(permits) = permits else { return };
                    let rows = stage.slice(SLICE);
                    spacing.released(rows.len(), Instant::now());
                    if release(&mut stage, rows, permits).is_err() {
                        return;
                    }
                    continue;
                }
            }
        };
        if received == 0 {
            return;
        }
        for message in batch.drain(..) {
            if forward(&handle, &output, &mut stage, message)
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Sends `rows` in a frame of their own (the last frame's end, which is acknowledged
/// again), with the output channel's room already reserved.
fn release(
    stage: &mut Stage,
    rows: Vec<RowChange>,
    mut permits: mpsc::PermitIterator<'_, CaptureMessage>,
) -> Result<(), ()> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let (xid, commit_time) = (first.xid, first.commit_time);
    let changes = rows.len() as u32;
    let frame = std::iter::once(CaptureMessage::Begin(Begin {
        xid,
        commit_lsn: stage.last_end,
        commit_time,
    }))
    .chain(rows.into_iter().map(CaptureMessage::Change))
    .chain(std::iter::once(CaptureMessage::Commit(Commit {
        xid,
        commit_lsn: stage.last_end,
        end_lsn: stage.last_end,
        commit_time,
        changes,
    })));
    for message in frame {
        permits.next().ok_or(())?.send(message);
    }
    if let Some(settled) = stage.settle_finished() {
        permits
            .next()
            .ok_or(())?
            .send(CaptureMessage::Settled(settled));
    }
    Ok(())
}

/// Passes one message of the stream on, handling watermarks and kept rows.
async fn forward(
    handle: &Interleave,
    output: &mpsc::Sender<CaptureMessage>,
    stage: &mut Stage,
    message: CaptureMessage,
) -> Result<(), ()> {
    let send = |m| output.send(m);
    match &message {
        CaptureMessage::Begin(b) => stage.begin = Some(b.clone()),
        CaptureMessage::Change(change) => {
            if let Some(mark) = change.watermark() {
                // Rare: always under the lock (a watermark of a killed run or of a chunk
                // given up finds no chunk and is dropped).
                if let Some(Some((rows, keys, done))) =
                    watermark(handle, mark, stage.begin.as_ref(), change)
                {
                    let sent = rows.len() as u64;
                    if sent == 0 {
                        stage.finished.push((done, 0));
                    } else {
                        stage.pending.push_back(Pending {
                            keys,
                            rows: rows.into(),
                            done,
                            sent,
                        });
                    }
                }
                return Ok(());
            }
            if handle.shared.busy.load(Ordering::Acquire) {
                record(handle, change);
            }
            if !stage.pending.is_empty() {
                for row in stage.due_before(change) {
                    send(CaptureMessage::Change(row)).await.map_err(|_| ())?;
                }
            }
        }
        CaptureMessage::Commit(commit) => {
            let end_lsn = commit.end_lsn;
            if handle.shared.busy.load(Ordering::Acquire) || !stage.pending.is_empty() {
                handle.lock().remember_commit(commit.xid);
            }
            send(message).await.map_err(|_| ())?;
            stage.begin = None;
            stage.last_end = end_lsn;
            if let Some(settled) = stage.settle_finished() {
                send(CaptureMessage::Settled(settled))
                    .await
                    .map_err(|_| ())?;
            }
            return Ok(());
        }
        CaptureMessage::Settled(_) => {}
    }
    send(message).await.map_err(|_| ())
}

/// Records a live change of the open chunk's table.
fn record(handle: &Interleave, change: &RowChange) {
    let mut guard = handle.lock();
    let Some(chunk) = guard.queue.iter_mut().find(|c| c.open) else {
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

/// The surviving rows of a chunk (as changes positioned in HIGH's frame), each with its row
/// key, the set of those keys, and the sender to report the frame's end on.
type Emitted = (
    Vec<(String, RowChange)>,
    HashSet<String>,
    oneshot::Sender<HighDone>,
);

/// Handles a watermark: LOW opens the window (`Some(None)`); HIGH closes it and returns
/// the surviving rows (`Some(Some(..))`). `None`: not a watermark of a registered chunk.
fn watermark(
    handle: &Interleave,
    mark: &Row,
    begin: Option<&Begin>,
    change: &RowChange,
) -> Option<Option<Emitted>> {
    let text = |k: &str| mark.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut guard = handle.lock();
    let (backfill, nonce) = (text("backfill"), text("chunk"));
    let at = guard
        .queue
        .iter()
        .position(|c| c.nonce == nonce && c.origin.id.to_string() == backfill)?;
    match text("mark") {
        "low" => {
            let commits_before = guard.commits;
            let chunk = &mut guard.queue[at];
            chunk.open = true;
            if let Some(seen) = chunk.low_seen.take() {
                let _ = seen.send(LowSeen { commits_before });
            }
            Some(None)
        }
        "high" => {
            let chunk = guard.queue.remove(at)?;
            // Chunks registered before this one whose HIGH never came are given up.
            guard.queue.drain(..at);
            drop(guard);
            let (Some(rows), Some(done), true) = (chunk.rows, chunk.high_done, chunk.open) else {
                return None; // not ready: the worker times out and reads the chunk again
            };
            let (commit_lsn, xid, commit_time) = match begin {
                Some(b) => (b.commit_lsn, b.xid, b.commit_time),
                None => (change.position.commit_lsn, change.xid, change.commit_time),
            };
            let Read { mut rows, mut keys } = if chunk.truncated {
                Read::default()
            } else {
                rows
            };
            if !chunk.changed.is_empty() {
                rows.retain(|(key, _)| !chunk.changed.contains(key));
                for key in &chunk.changed {
                    keys.remove(key);
                }
            }
            let changes = rows
                .into_iter()
                .enumerate()
                .map(|(i, (key, row))| {
                    let change = RowChange {
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
                    };
                    (key, change)
                })
                .collect();
            Some(Some((changes, keys, done)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::CommitTime;

    fn table() -> Arc<Table> {
        Arc::new(Table {
            id: 1,
            schema: "public".into(),
            name: "items".into(),
            columns: vec!["id".into()],
            key: vec!["id".into()],
        })
    }

    fn row(id: i64) -> Row {
        let mut row = Row::new();
        row.insert("id".into(), Value::from(id));
        row
    }

    fn change(table: Arc<Table>, new: Row, lsn: u64) -> RowChange {
        RowChange {
            position: Position {
                commit_lsn: Lsn(lsn),
                index: 0,
            },
            xid: lsn as u32,
            commit_time: CommitTime(0),
            table,
            op: Op::Update,
            new: Some(new),
            old: None,
            unchanged_toast: Vec::new(),
            origin: Origin::Replication,
        }
    }

    /// One transaction frame holding `changes`, ending at `lsn`.
    fn frame(changes: Vec<RowChange>, lsn: u64) -> Vec<CaptureMessage> {
        let begin = Begin {
            xid: lsn as u32,
            commit_lsn: Lsn(lsn),
            commit_time: CommitTime(0),
        };
        let commit = Commit {
            xid: lsn as u32,
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn),
            commit_time: CommitTime(0),
            changes: changes.len() as u32,
        };
        std::iter::once(CaptureMessage::Begin(begin))
            .chain(changes.into_iter().map(CaptureMessage::Change))
            .chain(std::iter::once(CaptureMessage::Commit(commit)))
            .collect()
    }

    fn mark(origin: &BackfillOrigin, nonce: &str, which: &str) -> RowChange {
        let text = payload(origin.id, nonce, which);
        let Ok(Value::Object(image)) = serde_json::from_str::<Value>(&text) else {
            panic!("payload {text}");
        };
        change(Arc::new(Table::watermark()), image, 0)
    }

    /// What a message is, as `B`, `C@lsn`, `S` (a marker), `live:id` or `fill:id`.
    fn describe(message: &CaptureMessage) -> String {
        match message {
            CaptureMessage::Begin(_) => "B".into(),
            CaptureMessage::Commit(c) => format!("C@{}", c.end_lsn.0),
            CaptureMessage::Settled(_) => "S".into(),
            CaptureMessage::Change(c) => {
                let kind = match c.origin {
                    Origin::Backfill(_) => "fill",
                    _ => "live",
                };
                format!(
                    "{kind}:{}",
                    c.new.as_ref().map_or(Value::Null, |r| r["id"].clone())
                )
            }
        }
    }

    #[test]
    fn released_slices_are_spread_at_the_rate_without_a_catch_up_burst() {
        // A slice every 10 ms.
        let ms = Duration::from_millis;
        let mut spacing = Spacing::new(SLICE as u64 * 100);
        let start = spacing.next;
        assert!(start <= Instant::now());
        spacing.released(SLICE, start);
        assert_eq!(spacing.next, start + ms(10));
        // A short slice earns a shorter gap.
        spacing.released(SLICE / 2, start + ms(10));
        assert_eq!(spacing.next, start + ms(15));
        // Released late, after a second of nothing: the next slice is due one slice's time
        // after the late one at most, however long the pause was.
        let late = start + ms(1_015);
        spacing.released(SLICE, late);
        assert_eq!(spacing.next, late);
        spacing.released(SLICE, late);
        assert_eq!(spacing.next, late + ms(10));
        // No limit: never due later.
        let mut free = Spacing::new(0);
        let before = free.next;
        free.released(SLICE, late);
        assert_eq!(free.next, before);
    }

    #[tokio::test]
    async fn kept_rows_go_out_before_a_live_change_of_them_and_in_slices_when_idle() {
        let (input, rx) = mpsc::channel(1_000);
        let (mut out, handle) = interleave(rx, 1_000, Arc::default(), 0);
        let origin = Arc::new(BackfillOrigin {
            id: uuid::Uuid::nil(),
            subscription: None,
            trigger: false,
        });
        let (low_tx, low_rx) = oneshot::channel();
        let (high_tx, high_rx) = oneshot::channel();
        handle.lock().push(Chunk::new(
            "run:1".into(),
            origin.clone(),
            table(),
            low_tx,
            high_tx,
        ));
        for m in frame(vec![mark(&origin, "run:1", "low")], 10) {
            input.send(m).await.unwrap();
        }
        low_rx.await.unwrap();
        // The chunk read 1..=100; row 3 changes inside the window (dropped from the chunk).
        let mut read = Read::default();
        for id in 1..=100 {
            read.push(&table().key, row(id));
        }
        handle.lock().get_mut("run:1").unwrap().rows = Some(read);
        let mut messages = frame(vec![change(table(), row(3), 20)], 20);
        messages.extend(frame(vec![mark(&origin, "run:1", "high")], 30));
        // Delivery has not taken anything yet: rows are kept, except row 50, which a live
        // change touches and which goes out just before it.
        messages.extend(frame(vec![change(table(), row(50), 40)], 40));
        for m in messages {
            input.send(m).await.unwrap();
        }
        let mut seen = Vec::new();
        while seen.len() < 11 {
            seen.push(describe(&out.recv().await.unwrap()));
        }
        assert_eq!(
            seen,
            [
                "B", "C@10", "B", "live:3", "C@20", "B", "C@30", "B", "fill:50", "live:50", "C@40"
            ]
        );
        // Idle now: the other 98 rows come out in slices of their own frames, in key order.
        let mut fill = Vec::new();
        let mut frames = Vec::new();
        while fill.len() < 98 {
            let m = describe(&out.recv().await.unwrap());
            match m.strip_prefix("fill:") {
                Some(id) => fill.push(id.parse::<i64>().unwrap()),
                None => frames.push(m),
            }
        }
        let expected: Vec<i64> = (1..=100).filter(|i| *i != 3 && *i != 50).collect();
        assert_eq!(fill, expected);
        assert_eq!(frames, ["B", "C@40", "B"]);
        assert_eq!(describe(&out.recv().await.unwrap()), "C@40");
        // Done once its last row went out: a marker follows that frame, which the consumer
        // sets when the frame is finished (the frame's end LSN was acknowledged before).
        let Some(CaptureMessage::Settled(marker)) = out.recv().await else {
            panic!("no marker after the last frame");
        };
        let done = high_rx.await.unwrap();
        assert_eq!(done.sent, 99);
        assert_eq!(done.settled, marker);
        assert!(!done.settled.is_set());
        marker.set();
        assert!(done.settled.is_set());
    }
}
