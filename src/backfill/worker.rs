//! The backfill worker: takes the running backfills of `walhook.backfill_jobs` one after the
//! other and reads each in primary-key chunks bracketed by watermarks (see [`super`]).
//!
//! It works only while this instance's capture streams (a standby's watermarks would go
//! through another instance's stream). Each chunk: register it with the stage, emit LOW,
//! wait until the stage saw LOW, read up to `chunk_size` rows after `last_key` in key order
//! (one short autocommit query: no lock beyond the read's, no long snapshot), hand them to
//! the stage, emit HIGH, wait until HIGH's frame is acknowledged, then store `last_key` and
//! `rows_sent`; while a chunk's worth of backfilled events waits in the queue table (a
//! slow endpoint), the next chunk waits. A chunk shorter than `chunk_size` ends the
//! backfill (`done`). Progress is
//! re-read before every chunk, so `walhook.cancel_backfill` stops it within one chunk.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::BackfillError;
use super::interleave::{Chunk, HighDone, Interleave, payload};
use crate::capture::Acknowledger;
use crate::change::{BackfillOrigin, Row, Table, WATERMARK_PREFIX, WATERMARK_TABLE};
use crate::database::Database;
use crate::subscriptions::filter::Filter;

/// How long a watermark may take to come back through the stream before the chunk is
/// tried again.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the worker looks for running backfills when it has none.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The watched database.
    pub database: Database,
    /// Rows per chunk (`backfill.chunk_size`).
    pub chunk_size: i64,
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

/// A backfill as the worker reads it.
struct Job {
    id: uuid::Uuid,
    relid: u32,
    subscription: Option<uuid::Uuid>,
    filter: Value,
    last_key: Option<String>,
}

impl Worker {
    /// A worker emitting watermarks for `stage`, acknowledged through `ack`.
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
        let mut client: Option<Client> = None;
        while !stop.is_cancelled() {
            let wait = if !self.ack.is_streaming() {
                IDLE_POLL
            } else {
                match self.round(&mut client, &stop).await {
                    Ok(true) => Duration::ZERO,
                    Ok(false) => IDLE_POLL,
                    Err(e) => {
                        tracing::warn!(error = %e, "backfill interrupted; trying again");
                        client = None;
                        Duration::from_secs(1)
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => {}
            }
        }
        *self.stage.lock() = None;
    }

    /// Runs the oldest running backfill until it ends or stops; whether there was one.
    async fn round(
        &mut self,
        client: &mut Option<Client>,
        stop: &CancellationToken,
    ) -> Result<bool, BackfillError> {
        if client.as_ref().is_none_or(Client::is_closed) {
            let fresh = self.config.database.client().await?;
            fresh
                .batch_execute("SET TimeZone = 'UTC'; SET application_name = 'walhook backfill'")
                .await?;
            *client = Some(fresh);
        }
        let Some(client) = client.as_ref() else {
            return Ok(false);
        };
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
        match self.backfill(client, id, job, stop).await {
            Err(BackfillError::Definite(message)) => {
                tracing::warn!(error = %message, "backfill failed");
                Ok(true)
            }
            other => other.map(|()| true),
        }
    }

    async fn backfill(
        &mut self,
        client: &Client,
        id: uuid::Uuid,
        mut job: Job,
        stop: &CancellationToken,
    ) -> Result<(), BackfillError> {
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
        let first = format!("SELECT to_json(t)::text FROM {qualified} t ORDER BY {order} LIMIT $1");
        let next = format!(
            "SELECT to_json(t)::text FROM {qualified} t
             WHERE ({order}) > (SELECT {from_key} FROM jsonb_populate_record(NULL::{qualified}, $2::text::jsonb) r)
             ORDER BY {order} LIMIT $1"
        );
        let filter = Filter::compile(&job.filter);
        let origin = Arc::new(BackfillOrigin {
            id,
            subscription: job.subscription,
            trigger: self.config.trigger,
        });
        tracing::info!(backfill = %id, table = %qualified, "backfill running");
        loop {
            let state: Option<String> = client
                .query_opt(
                    "SELECT state FROM walhook.backfill_jobs WHERE id = $1::text::uuid",
                    &[&id.to_string()],
                )
                .await?
                .map(|r| r.get(0));
            if state.as_deref() != Some("running") {
                tracing::info!(backfill = %id, state = ?state, "backfill no longer running");
                return Ok(());
            }
            if stop.is_cancelled() || !self.ack.is_streaming() {
                return Ok(());
            }
            self.chunks += 1;
            let nonce = format!("{}:{}", self.run_id, self.chunks);
            let (low_tx, low_rx) = oneshot::channel();
            let (high_tx, high_rx) = oneshot::channel();
            *self.stage.lock() = Some(Chunk::new(
                nonce.clone(),
                origin.clone(),
                table.clone(),
                low_tx,
                high_tx,
            ));
            let outcome = self
                .chunk(
                    client,
                    &job,
                    &nonce,
                    (&first, &next),
                    &filter,
                    &table,
                    low_rx,
                    high_rx,
                    stop,
                )
                .await;
            *self.stage.lock() = None;
            let Some((done, read, last_key)) = outcome? else {
                return Ok(()); // stopping
            };
            client
                .execute(
                    "UPDATE walhook.backfill_jobs
                     SET last_key = coalesce($2::text::jsonb, last_key), rows_sent = rows_sent + $3,
                         updated_at = now(),
                         state = CASE WHEN $4 THEN 'done' ELSE state END,
                         finished_at = CASE WHEN $4 THEN now() END
                     WHERE id = $1::text::uuid AND state = 'running'",
                    &[
                        &id.to_string(),
                        &last_key,
                        &(done.sent as i64),
                        &(read < self.config.chunk_size),
                    ],
                )
                .await?;
            if read < self.config.chunk_size {
                tracing::info!(backfill = %id, "backfill done");
                return Ok(());
            }
            job.last_key = last_key;
        }
    }

    /// One chunk: LOW, read, HIGH, acknowledged. `None` when stopping.
    #[allow(clippy::too_many_arguments)]
    async fn chunk(
        &self,
        client: &Client,
        job: &Job,
        nonce: &str,
        (first, next): (&str, &str),
        filter: &Filter,
        table: &Table,
        low_rx: oneshot::Receiver<()>,
        high_rx: oneshot::Receiver<HighDone>,
        stop: &CancellationToken,
    ) -> Result<Option<(HighDone, i64, Option<String>)>, BackfillError> {
        self.emit(client, &payload(job.id, nonce, "low")).await?;
        if wait(low_rx, stop).await?.is_none() {
            return Ok(None);
        }
        let rows = match &job.last_key {
            None => client.query(first, &[&self.config.chunk_size]).await?,
            Some(key) => client.query(next, &[&self.config.chunk_size, key]).await?,
        };
        let read = rows.len() as i64;
        let mut last_key = None;
        let mut chosen = Vec::with_capacity(rows.len());
        for row in &rows {
            let Ok(Value::Object(mut image)) = serde_json::from_str::<Value>(row.get(0)) else {
                continue;
            };
            // Generated columns: the live stream does not carry them either.
            if image.len() > table.columns.len() {
                image.retain(|k, _| table.columns.iter().any(|c| c == k));
            }
            last_key = Some(key_object(&table.key, &image));
            if filter.matches_row(&image) {
                chosen.push(image);
            }
        }
        if let Some(chunk) = self.stage.lock().as_mut() {
            chunk.rows = Some(chosen);
        }
        self.emit(client, &payload(job.id, nonce, "high")).await?;
        let Some(done) = wait(high_rx, stop).await? else {
            return Ok(None);
        };
        // Acknowledged: the chunk's events are delivered or durably queued.
        loop {
            if self.ack.acknowledged() >= done.end_lsn {
                break;
            }
            if stop.is_cancelled() {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Gentle: while a slow endpoint has a chunk's worth of backfilled events waiting in
        // the queue table, the next chunk waits (the queue never fills with a whole table).
        loop {
            let queued: i64 = client
                .query_one(
                    "SELECT count(*) FROM (SELECT 1 FROM walhook.delivery_queue
                     WHERE status = 'pending' AND event_id LIKE 'evt_b%' LIMIT $1) q",
                    &[&self.config.chunk_size],
                )
                .await?
                .get(0);
            if queued < self.config.chunk_size {
                break;
            }
            if stop.is_cancelled() {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Some((done, read, last_key)))
    }

    /// Emits a watermark into the change stream.
    async fn emit(&self, client: &Client, payload: &str) -> Result<(), BackfillError> {
        if self.config.trigger {
            client
                .execute(
                    "WITH w AS (INSERT INTO walhook.outbox (schema_name, table_name, op, new_row)
                                VALUES ($1, $2, 'INSERT', $3::text::jsonb) RETURNING id)
                     SELECT pg_notify('walhook_outbox', '') FROM w",
                    &[&WATERMARK_TABLE.0, &WATERMARK_TABLE.1, &payload],
                )
                .await?;
        } else {
            client
                .execute(
                    "SELECT pg_logical_emit_message(true, $1::text, $2::text)",
                    &[&WATERMARK_PREFIX, &payload],
                )
                .await?;
        }
        Ok(())
    }
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
