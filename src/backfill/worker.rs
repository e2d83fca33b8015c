//! The backfill worker: takes the running backfills of `walhook.backfill_jobs` one after the
//! other and reads each in primary-key chunks bracketed by watermarks (see [`super`]).
//!
//! It works only while this instance's capture streams (a standby's watermarks would go
//! through another instance's stream). Chunks are pipelined: up to [`CHUNKS_IN_FLIGHT`]
//! chunks are read and handed to the stage while the earlier ones' events are delivered.
//!
//! ```text
//!  register N · emit HIGH(N-1)+LOW(N) in one transaction · LOW(N) seen · read N ·
//!  register N+1 · emit HIGH(N)+LOW(N+1) · …         (a short chunk ends the reading)
//!  meanwhile: the oldest in-flight chunk's events all delivered → store its last_key
//! ```
//!
//! Each read is one short autocommit statement (no lock beyond the read's, no long
//! snapshot) that also returns its own snapshot's in-progress xids: in replication mode a
//! transaction that came through the stream before LOW but was still invisible to the read
//! makes the worker read the chunk again (the stage's [`super::Interleave::committed_before`]).
//! Stored progress only advances to a chunk whose events are all delivered or queued
//! (the marker behind its last row's frame set), in chunk order, so after `kill -9` at most [`CHUNKS_IN_FLIGHT`] chunks are sent again. While
//! `CHUNKS_IN_FLIGHT` chunks' worth of backfilled events waits in the queue table (a slow
//! endpoint), the next chunk waits. Waiting is on notifications: the stage's oneshots for
//! the watermarks and the chunks' markers, and `LISTEN walhook_backfill`
//! (sent by `walhook.backfill` and `walhook.cancel_backfill`) for new and cancelled
//! backfills; only the slow-endpoint hold polls.

use futures_util::stream::poll_fn;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{Map, Value};
use tokio::sync::{Notify, oneshot};
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;

use super::BackfillError;
use super::interleave::{Chunk, HighDone, Interleave, LowSeen, Read, payload};
use crate::capture::Acknowledger;
use crate::change::{BackfillOrigin, Row, Table, WATERMARK_PREFIX, WATERMARK_TABLE};
use crate::database::Database;
use crate::subscriptions::filter::Filter;

/// How long a watermark may take to come back through the stream before the chunk is
/// tried again.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the worker looks at the capture's role while it is not streaming.
const ROLE_POLL: Duration = Duration::from_millis(250);

/// How long the worker waits for a `walhook_backfill` notification before looking for
/// running backfills anyway (a notification sent while the session reconnected).
const IDLE_FALLBACK: Duration = Duration::from_secs(10);

/// How often a chunk held back by the queue table (a slow endpoint) looks again.
const QUEUE_POLL: Duration = Duration::from_millis(100);

/// Chunks read and handed to the stage whose events may not be acknowledged yet: the
/// pipeline depth, and the bound on chunks sent again after `kill -9`.
pub(crate) const CHUNKS_IN_FLIGHT: usize = 4;

/// The channel `walhook.backfill` and `walhook.cancel_backfill` notify.
const CHANNEL: &str = "walhook_backfill";

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The watched database.
    pub database: Database,
    /// Rows per chunk (`backfill.chunk_size`).
    pub chunk_size: i64,
    /// Most rows read per second (`backfill.max_rows_per_second`; 0: no limit).
    pub max_rows_per_second: u64,
    /// Whether capture is trigger capture (watermarks are outbox rows) or replication
    /// (logical messages).
    pub trigger: bool,
}

/// The running worker's parts.
pub struct Worker {
    config: WorkerConfig,
    ack: Acknowledger,
    stage: Interleave,
    run_id: String,
    chunks: u64,
}

/// The worker's database session: a client and what its LISTEN hears.
struct Session {
    client: Client,
    /// Woken by every `walhook_backfill` notification (and when the session ends).
    wake: Arc<Notify>,
    /// Set by every notification: a backfill may have been cancelled.
    changed: Arc<AtomicBool>,
}

/// A backfill as the worker reads it.
struct Job {
    id: uuid::Uuid,
    relid: u32,
    subscription: Option<uuid::Uuid>,
    filter: Value,
    last_key: Option<String>,
}

/// A chunk handed to the stage whose progress is not stored yet.
struct InFlight {
    high: Option<oneshot::Receiver<HighDone>>,
    done: Option<HighDone>,
    last_key: Option<String>,
    last: bool,
}

/// The two statements reading a chunk (from the start, after a key).
struct Reads {
    first: String,
    next: String,
}

impl Worker {
    /// A worker emitting watermarks for `stage`, working while `ack` says this instance's
    /// capture streams.
    pub fn new(config: WorkerConfig, ack: Acknowledger, stage: Interleave) -> Worker {
        Worker {
            config,
            ack,
            stage,
            run_id: uuid::Uuid::new_v4().simple().to_string(),
            chunks: 0,
        }
    }

    /// Works through running backfills until `stop`.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut session: Option<Session> = None;
        while !stop.is_cancelled() {
            if !self.ack.is_streaming() {
                tokio::select! {
                    _ = tokio::time::sleep(ROLE_POLL) => {}
                    _ = stop.cancelled() => {}
                }
                continue;
            }
            let wait = match self.round(&mut session, &stop).await {
                Ok(true) => continue,
                Ok(false) => IDLE_FALLBACK,
                Err(e) => {
                    tracing::warn!(error = %e, "backfill interrupted; trying again");
                    session = None;
                    Duration::from_secs(1)
                }
            };
            let wake = session.as_ref().map(|s| s.wake.clone());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = async { match wake { Some(w) => w.notified().await, None => std::future::pending().await } } => {}
                _ = stop.cancelled() => {}
            }
        }
        self.stage.lock().clear();
    }

    /// A session listening on [`CHANNEL`].
    async fn connect(&self) -> Result<Session, BackfillError> {
        let (client, mut connection) = self.config.database.connect().await?;
        let wake = Arc::new(Notify::new());
        let changed = Arc::new(AtomicBool::new(false));
        let (w, c) = (wake.clone(), changed.clone());
        tokio::spawn(async move {
            let mut messages = poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => {
                        c.store(true, Ordering::Release);
                        w.notify_one();
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            w.notify_one();
        });
        client
            .batch_execute(&format!(
                "SET TimeZone = 'UTC'; SET application_name = 'walhook backfill'; LISTEN {CHANNEL}"
            ))
            .await?;
        Ok(Session {
            client,
            wake,
            changed,
        })
    }

    /// Runs the oldest running backfill until it ends or stops; whether there was one.
    async fn round(
        &mut self,
        session: &mut Option<Session>,
        stop: &CancellationToken,
    ) -> Result<bool, BackfillError> {
        if session.as_ref().is_none_or(|s| s.client.is_closed()) {
            *session = Some(self.connect().await?);
        }
        let Some(session) = session.as_ref() else {
            return Ok(false);
        };
        let client = &session.client;
        session.changed.store(false, Ordering::Release);
        let Some(row) = client
            .query_opt(
                "SELECT id::text, relid::int8, subscription_id::text, filter::text, last_key::text
                 FROM walhook.backfill_jobs WHERE state = 'running' ORDER BY created_at LIMIT 1",
                &[],
            )
            .await?
        else {
            return Ok(false);
        };
        let job = Job {
            id: parse_uuid(row.get(0))?,
            relid: row.get::<_, i64>(1) as u32,
            subscription: row.get::<_, Option<&str>>(2).map(parse_uuid).transpose()?,
            filter: serde_json::from_str(row.get::<_, &str>(3)).unwrap_or(Value::Null),
            last_key: row.get(4),
        };
        let id = job.id;
        let outcome = self.backfill(session, id, job, stop).await;
        // Whatever happened, no chunk of this run stays registered: their watermarks are
        // dropped when they come through.
        self.stage.lock().clear();
        match outcome {
            Err(BackfillError::Definite(message)) => {
                tracing::warn!(error = %message, "backfill failed");
                Ok(true)
            }
            other => other.map(|()| true),
        }
    }

    async fn backfill(
        &mut self,
        session: &Session,
        id: uuid::Uuid,
        job: Job,
        stop: &CancellationToken,
    ) -> Result<(), BackfillError> {
        let client = &session.client;
        let table = match describe(client, job.relid).await? {
            Ok(table) => Arc::new(table),
            Err(message) => {
                client
                    .execute(
                        "UPDATE walhook.backfill_jobs SET state = 'failed', error = $2,
                                finished_at = now(), updated_at = now()
                         WHERE id = $1::text::uuid AND state = 'running'",
                        &[&id.to_string(), &message],
                    )
                    .await?;
                return Err(BackfillError::Definite(message));
            }
        };
        let reads = reads(&table, !self.config.trigger);
        let filter = Filter::compile(&job.filter);
        let origin = Arc::new(BackfillOrigin {
            id,
            subscription: job.subscription,
            trigger: self.config.trigger,
        });
        tracing::info!(backfill = %id, table = %table.name, "backfill running");
        let mut key = job.last_key.clone();
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        // The chunk whose rows the stage has but whose HIGH is not emitted yet: it goes out
        // with the next chunk's LOW, in one transaction.
        let mut pending_high: Option<String> = None;
        let mut reading = true;
        let mut pace = Pace::new(self.config.max_rows_per_second);
        loop {
            if !self.settle(client, id, &mut in_flight).await? {
                return Ok(());
            }
            if session.changed.swap(false, Ordering::AcqRel) && !running(client, id).await? {
                tracing::info!(backfill = %id, "backfill no longer running");
                return Ok(());
            }
            if stop.is_cancelled() || !self.ack.is_streaming() {
                return Ok(());
            }
            if !reading {
                if let Some(nonce) = pending_high.take() {
                    self.emit(client, &[payload(id, &nonce, "high")]).await?;
                }
                let Some(front) = in_flight.front_mut() else {
                    return Ok(()); // the last chunk's progress (state done) is stored
                };
                if !self.finished(front, &session.wake, stop).await? {
                    return Ok(());
                }
                continue;
            }
            // Pipeline depth: the oldest chunk must be finished before another is read.
            if in_flight.len() >= CHUNKS_IN_FLIGHT {
                let Some(front) = in_flight.front_mut() else {
                    continue;
                };
                if !self.finished(front, &session.wake, stop).await? {
                    return Ok(());
                }
                continue;
            }
            if !self.queue_has_room(client, stop).await? || !pace.wait(stop).await {
                return Ok(());
            }
            self.chunks += 1;
            let nonce = format!("{}:{}", self.run_id, self.chunks);
            let (low_tx, low_rx) = oneshot::channel();
            let (high_tx, high_rx) = oneshot::channel();
            self.stage.lock().push(Chunk::new(
                nonce.clone(),
                origin.clone(),
                table.clone(),
                low_tx,
                high_tx,
            ));
            let mut marks = Vec::with_capacity(2);
            if let Some(previous) = pending_high.take() {
                marks.push(payload(id, &previous, "high"));
            }
            marks.push(payload(id, &nonce, "low"));
            self.emit(client, &marks).await?;
            let Some(low) = wait(low_rx, stop).await? else {
                return Ok(()); // stopping
            };
            let (rows, xips) = match &key {
                None => {
                    client
                        .query(&reads.first, &[&self.config.chunk_size])
                        .await?
                }
                Some(k) => {
                    client
                        .query(&reads.next, &[&self.config.chunk_size, k])
                        .await?
                }
            }
            .into_iter()
            .fold((Vec::new(), Vec::new()), |(mut rows, mut xips), row| {
                match row.get::<_, Option<String>>(0) {
                    Some(image) => rows.push(image),
                    None => xips = row.get::<_, Option<Vec<i64>>>(1).unwrap_or_default(),
                }
                (rows, xips)
            });
            if self.invisible_before_low(low, &xips) {
                self.stage.lock().forget(&nonce);
                continue; // read again behind a new LOW
            }
            let read = rows.len() as i64;
            pace.read(rows.len() as u64);
            let (chosen, last_key) = self.choose(&rows, &table, &filter).await;
            match self.stage.lock().get_mut(&nonce) {
                Some(chunk) => chunk.rows = Some(chosen),
                None => {
                    return Err(BackfillError::Timeout(
                        "the chunk's watermarks did not pair up".into(),
                    ));
                }
            }
            pending_high = Some(nonce);
            reading = read >= self.config.chunk_size;
            if last_key.is_some() {
                key.clone_from(&last_key);
            }
            in_flight.push_back(InFlight {
                high: Some(high_rx),
                done: None,
                last_key,
                last: !reading,
            });
        }
    }

    /// Whether, in replication mode, a transaction that came through the stream before
    /// LOW was still in progress for the chunk's read (PostgreSQL makes a commit visible
    /// just after writing its record, so this is a rare race): then the read is unsafe.
    fn invisible_before_low(&self, low: LowSeen, xips: &[i64]) -> bool {
        if self.config.trigger || xips.is_empty() {
            return false;
        }
        let xids: Vec<u32> = xips.iter().map(|x| *x as u32).collect();
        match self.stage.committed_before(low.commits_before, &xids) {
            Some(xid) => {
                tracing::info!(
                    xid,
                    "a transaction before the low watermark was not yet visible to the chunk's read; reading it again"
                );
                true
            }
            None => false,
        }
    }

    /// The rows the filter keeps (generated columns dropped), keyed, and the last row's
    /// key. A chunk's rows are parsed and keyed in the task's cooperative budget (it yields when the budget
    /// is spent), so a chunk does not hold a worker thread for its whole parse while live
    /// events wait on it.
    async fn choose(
        &self,
        rows: &[String],
        table: &Table,
        filter: &Filter,
    ) -> (Read, Option<String>) {
        let mut last_key = None;
        let mut chosen = Read::default();
        for text in rows {
            tokio::task::consume_budget().await;
            let Ok(Value::Object(mut image)) = serde_json::from_str::<Value>(text) else {
                continue;
            };
            // Generated columns: the live stream does not carry them either.
            if image.len() > table.columns.len() {
                image.retain(|k, _| table.columns.iter().any(|c| c == k));
            }
            last_key = Some(key_object(&table.key, &image));
            if filter.matches_row(&image) {
                chosen.push(&table.key, image);
            }
        }
        (chosen, last_key)
    }

    /// Waits until the events of `chunk` are delivered or queued (its marker set); `false`
    /// when stopping. Also returns (`true`) on a `walhook_backfill` notification, so that a
    /// cancel is seen while a slow endpoint holds the chunk's events.
    async fn finished(
        &self,
        chunk: &mut InFlight,
        wake: &Notify,
        stop: &CancellationToken,
    ) -> Result<bool, BackfillError> {
        if chunk.done.is_none() {
            let Some(rx) = chunk.high.take() else {
                return Err(BackfillError::Timeout(
                    "the chunk's watermarks did not pair up".into(),
                ));
            };
            let Some(done) = wait(rx, stop).await? else {
                return Ok(false);
            };
            chunk.done = Some(done);
        }
        let Some(done) = &chunk.done else {
            return Ok(false);
        };
        tokio::select! {
            _ = done.settled.wait() => Ok(true),
            _ = wake.notified() => Ok(true),
            _ = stop.cancelled() => Ok(false),
        }
    }

    /// Stores the progress of the in-flight chunks at the front whose events are all
    /// delivered or queued (their markers set), in chunk order; `false` when the backfill
    /// ended (done, or no longer running).
    async fn settle(
        &self,
        client: &Client,
        id: uuid::Uuid,
        in_flight: &mut VecDeque<InFlight>,
    ) -> Result<bool, BackfillError> {
        let (mut sent, mut last_key, mut last, mut settled) = (0u64, None, false, 0);
        while let Some(front) = in_flight.front_mut() {
            if front.done.is_none()
                && let Some(rx) = front.high.as_mut()
                && let Ok(done) = rx.try_recv()
            {
                front.done = Some(done);
                front.high = None;
            }
            let Some(done) = front.done.as_ref().filter(|d| d.settled.is_set()) else {
                break;
            };
            sent += done.sent;
            last = front.last;
            if front.last_key.is_some() {
                last_key.clone_from(&front.last_key);
            }
            settled += 1;
            in_flight.pop_front();
        }
        if settled == 0 {
            return Ok(true);
        }
        let stored = client
            .execute(
                "UPDATE walhook.backfill_jobs
                 SET last_key = coalesce($2::text::jsonb, last_key), rows_sent = rows_sent + $3,
                     updated_at = now(),
                     state = CASE WHEN $4 THEN 'done' ELSE state END,
                     finished_at = CASE WHEN $4 THEN now() END
                 WHERE id = $1::text::uuid AND state = 'running'",
                &[&id.to_string(), &last_key, &(sent as i64), &last],
            )
            .await?;
        if stored == 0 {
            tracing::info!(backfill = %id, "backfill no longer running");
        } else if last {
            tracing::info!(backfill = %id, "backfill done");
        }
        Ok(stored == 1 && !last)
    }

    /// Waits while [`CHUNKS_IN_FLIGHT`] chunks' worth of backfilled events waits in the
    /// queue table (a slow endpoint: the queue never fills with a whole table, and the
    /// rate follows the endpoint's); `false` when stopping.
    async fn queue_has_room(
        &self,
        client: &Client,
        stop: &CancellationToken,
    ) -> Result<bool, BackfillError> {
        let limit = self.config.chunk_size * CHUNKS_IN_FLIGHT as i64;
        loop {
            let queued: i64 = client
                .query_one(
                    "SELECT count(*) FROM (SELECT 1 FROM walhook.delivery_queue
                     WHERE status = 'pending' AND event_id LIKE 'evt_b%' LIMIT $1) q",
                    &[&limit],
                )
                .await?
                .get(0);
            if queued < limit {
                return Ok(true);
            }
            tokio::select! {
                _ = tokio::time::sleep(QUEUE_POLL) => {}
                _ = stop.cancelled() => return Ok(false),
            }
        }
    }

    /// Emits watermarks into the change stream, in order, in one transaction.
    async fn emit(&self, client: &Client, payloads: &[String]) -> Result<(), BackfillError> {
        if self.config.trigger {
            client
                .execute(
                    "WITH w AS (INSERT INTO walhook.outbox (schema_name, table_name, op, new_row)
                                SELECT $1, $2, 'INSERT', p::jsonb
                                FROM unnest($3::text[]) WITH ORDINALITY u (p, n) ORDER BY n
                                RETURNING id)
                     SELECT pg_notify('walhook_outbox', '') FROM w LIMIT 1",
                    &[&WATERMARK_TABLE.0, &WATERMARK_TABLE.1, &payloads],
                )
                .await?;
        } else {
            client
                .execute(
                    "SELECT pg_logical_emit_message(true, $1::text, p)
                     FROM unnest($2::text[]) WITH ORDINALITY u (p, n) ORDER BY n",
                    &[&WATERMARK_PREFIX, &payloads],
                )
                .await?;
        }
        Ok(())
    }
}

/// The `backfill.max_rows_per_second` limit of one run: the next chunk is read no sooner
/// than the rows read so far allow.
struct Pace {
    per_second: u64,
    started: tokio::time::Instant,
    rows: u64,
}

impl Pace {
    fn new(per_second: u64) -> Pace {
        Pace {
            per_second,
            started: tokio::time::Instant::now(),
            rows: 0,
        }
    }

    /// `rows` more were read.
    fn read(&mut self, rows: u64) {
        self.rows += rows;
    }

    /// Waits until the next read keeps within the limit; `false` when stopping.
    async fn wait(&self, stop: &CancellationToken) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let due = self.started + Duration::from_secs_f64(self.rows as f64 / self.per_second as f64);
        tokio::select! {
            _ = tokio::time::sleep_until(due) => true,
            _ = stop.cancelled() => false,
        }
    }
}

/// Whether backfill `id` is still running.
async fn running(client: &Client, id: uuid::Uuid) -> Result<bool, BackfillError> {
    let state: Option<String> = client
        .query_opt(
            "SELECT state FROM walhook.backfill_jobs WHERE id = $1::text::uuid",
            &[&id.to_string()],
        )
        .await?
        .map(|r| r.get(0));
    Ok(state.as_deref() == Some("running"))
}

/// The chunk reads of `table`: rows `(image text, NULL)`; with `snapshot`, also one row
/// `(NULL, in-progress xids of the statement's snapshot)` — the same snapshot the rows
/// were read in, since a statement reads under one snapshot.
fn reads(table: &Table, snapshot: bool) -> Reads {
    let qualified = format!("{}.{}", quote(&table.schema), quote(&table.name));
    let order = table
        .key
        .iter()
        .map(|k| format!("t.{}", quote(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let from_key = table
        .key
        .iter()
        .map(|k| format!("r.{}", quote(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let xips = if snapshot {
        "SELECT NULL::text, ARRAY(SELECT (x::text::int8 & 4294967295)
                                  FROM pg_catalog.pg_snapshot_xip(pg_catalog.pg_current_snapshot()) x)
         UNION ALL "
    } else {
        ""
    };
    let first = format!(
        "{xips}(SELECT to_json(t)::text, NULL::int8[] FROM {qualified} t ORDER BY {order} LIMIT $1)"
    );
    let next = format!(
        "{xips}(SELECT to_json(t)::text, NULL::int8[] FROM {qualified} t
          WHERE ({order}) > (SELECT {from_key} FROM jsonb_populate_record(NULL::{qualified}, $2::text::jsonb) r)
          ORDER BY {order} LIMIT $1)"
    );
    Reads { first, next }
}

/// Waits for the stage's answer: `None` when stopping; a timeout or a dropped chunk is an
/// error (the chunk is read again).
async fn wait<T>(
    rx: oneshot::Receiver<T>,
    stop: &CancellationToken,
) -> Result<Option<T>, BackfillError> {
    tokio::select! {
        answer = tokio::time::timeout(WATERMARK_TIMEOUT, rx) => match answer {
            Ok(Ok(value)) => Ok(Some(value)),
            Ok(Err(_)) => Err(BackfillError::Timeout("the chunk's watermarks did not pair up".into())),
            Err(_) => Err(BackfillError::Timeout(format!(
                "a watermark did not come through the change stream within {WATERMARK_TIMEOUT:?}"
            ))),
        },
        _ = stop.cancelled() => Ok(None),
    }
}

/// The key columns of `row` as a JSON object (what `last_key` stores).
fn key_object(key: &[String], row: &Row) -> String {
    let object: Map<String, Value> = key
        .iter()
        .map(|k| (k.clone(), row.get(k).cloned().unwrap_or(Value::Null)))
        .collect();
    Value::Object(object).to_string()
}

/// A uuid the database printed.
fn parse_uuid(text: &str) -> Result<uuid::Uuid, BackfillError> {
    uuid::Uuid::parse_str(text)
        .map_err(|e| BackfillError::Definite(format!("backfill id {text:?}: {e}")))
}

/// `"name"` with inner quotes doubled.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The table of `relid` as the live stream names it: schema, name, columns (not generated
/// ones), primary key. `Err` with a message when it cannot be backfilled any more.
async fn describe(client: &Client, relid: u32) -> Result<Result<Table, String>, BackfillError> {
    let row = client
        .query_opt(
            "SELECT n.nspname::text, c.relname::text,
                    array(SELECT attname::text FROM pg_catalog.pg_attribute
                          WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped
                            AND attgenerated = '' ORDER BY attnum),
                    walhook.primary_key_columns(c.oid::regclass)
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = $1::int8::oid",
            &[&i64::from(relid)],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Err("the backfilled table was dropped".into()));
    };
    let key: Vec<String> = row.get(3);
    if key.is_empty() {
        return Ok(Err(
            "the backfilled table has no primary key any more; backfills read in primary-key order"
                .into(),
        ));
    }
    Ok(Ok(Table {
        id: relid,
        schema: row.get(0),
        name: row.get(1),
        columns: row.get(2),
        key,
    }))
}
