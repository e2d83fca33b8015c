//! Trigger capture: row changes from `walhook.outbox`, for servers without logical
//! replication. The `walhook.capture_row` trigger writes one outbox row per change in the
//! writer's transaction and notifies `walhook_outbox`; this reader turns rows into the same
//! [`CaptureMessage`]s replication produces, and deletes them once acknowledged.
//!
//! # Order without skipping
//!
//! Outbox ids are taken before commit, so a slow transaction can commit an id smaller than
//! ids already read: a high-water mark would skip it. The reader keeps none. Each read takes
//! *every* committed row not already handed on (the ones in flight are excluded by id), in
//! id order; processed rows are deleted, so that set stays small. A later change of the
//! same table row waits for the earlier writer's row lock, so it gets a larger id and
//! commits after it: whenever the later change is visible, so is the earlier one, and id
//! order keeps per-row order. Rolled-back changes never become visible.
//!
//! Each row is handed on as its own transaction whose "LSN" is a sequence number of this
//! reader; the consumer acknowledges it like a commit, and acknowledged rows are deleted in
//! the next round. One reader per database: the session holds an advisory lock, and a
//! second daemon waits for it (takes over when the first dies). NOTIFY is only a wake-up;
//! the outbox is also read after every (re)connect and every `poll` interval.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::poll_fn;
use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc};
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;

use super::{Acknowledger, Capture, CaptureError, Role};
use crate::change::{
    Begin, CaptureMessage, Commit, CommitTime, Op, Origin, Position, Row, RowChange, Table,
};
use crate::database::Database;
use crate::lsn::Lsn;

/// The channel the capture trigger notifies.
pub const CHANNEL: &str = "walhook_outbox";

/// Advisory lock key held by the one reading session ("whoutbox" in ASCII).
const READER_LOCK: i64 = 0x7768_6f75_7462_6f78;

/// Trigger capture settings.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// The watched database.
    pub database: Database,
    /// Rows read per query.
    pub batch: i64,
    /// Rows handed on but not yet acknowledged before reading pauses.
    pub max_in_flight: usize,
    /// Read this often even without a notification.
    pub poll: Duration,
    /// Messages buffered between reader and consumer.
    pub channel_capacity: usize,
    /// Reconnect backoff: first and longest delay.
    pub reconnect_min: Duration,
    /// See `reconnect_min`.
    pub reconnect_max: Duration,
}

/// Starts the reader in a background task.
pub fn start(config: OutboxConfig, cancel: CancellationToken) -> Capture {
    let (tx, changes) = mpsc::channel(config.channel_capacity.max(3));
    let ack = Acknowledger::default();
    let task = tokio::spawn(run(config, tx, ack.clone(), cancel));
    Capture { changes, ack, task }
}

/// What survives reconnects: rows handed on and not yet deleted, and the table cache.
#[derive(Default)]
struct Reader {
    /// (sequence, outbox id) in hand-on order.
    in_flight: VecDeque<(u64, i64)>,
    /// Last sequence number used.
    sequence: u64,
    tables: HashMap<(String, String), Arc<Table>>,
}

async fn run(
    config: OutboxConfig,
    tx: mpsc::Sender<CaptureMessage>,
    ack: Acknowledger,
    cancel: CancellationToken,
) -> Result<(), CaptureError> {
    let mut reader = Reader::default();
    let mut delay = config.reconnect_min;
    loop {
        let result = session(&config, &mut reader, &tx, &ack, &cancel).await;
        ack.set_role(Role::Reconnecting);
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && !cancel.is_cancelled() => {
                tracing::warn!(error = %e, retry_in = ?delay, "trigger capture interrupted; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return Ok(()),
                }
                delay = (delay * 2).min(config.reconnect_max);
            }
            Err(e) => return Err(e),
        }
    }
}

/// One session: take the reader lock, LISTEN, then read/hand on/delete until cancelled.
async fn session(
    config: &OutboxConfig,
    reader: &mut Reader,
    tx: &mpsc::Sender<CaptureMessage>,
    ack: &Acknowledger,
    cancel: &CancellationToken,
) -> Result<(), CaptureError> {
    let (client, mut connection) = config.database.connect().await?;
    let wake = Arc::new(Notify::new());
    let notified = wake.clone();
    let driver = tokio::spawn(async move {
        let mut messages = poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => notified.notify_one(),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        notified.notify_one();
    });
    let result = async {
        loop {
            let locked: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&READER_LOCK])
                .await?
                .get(0);
            if locked {
                break;
            }
            if ack.role() != Role::Standby {
                tracing::info!("another walhook reads the outbox; standing by");
                ack.set_role(Role::Standby);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = cancel.cancelled() => return Ok(()),
            }
        }
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        ack.set_role(Role::Streaming);
        loop {
            delete_acknowledged(&client, reader, ack).await?;
            let read = if reader.in_flight.len() < config.max_in_flight {
                read_batch(&client, reader, config.batch, tx).await?
            } else {
                0
            };
            if cancel.is_cancelled() || tx.is_closed() {
                return Ok(());
            }
            if read as i64 == config.batch {
                continue;
            }
            // Acknowledgements are polled while rows are in flight; else wait for a wake-up.
            let wait = if reader.in_flight.is_empty() {
                config.poll
            } else {
                Duration::from_millis(20)
            };
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => {}
            }
            if client.is_closed() {
                return Err(CaptureError::Outbox {
                    code: None,
                    message: "connection closed".into(),
                });
            }
        }
    }
    .await;
    if result.is_ok() {
        // Last round: what was acknowledged while stopping is deleted now.
        let _ = delete_acknowledged(&client, reader, ack).await;
    }
    driver.abort();
    result
}

/// Deletes the rows whose sequence numbers are acknowledged.
async fn delete_acknowledged(
    client: &Client,
    reader: &mut Reader,
    ack: &Acknowledger,
) -> Result<(), CaptureError> {
    let acknowledged = ack.acknowledged().0;
    let done = reader
        .in_flight
        .iter()
        .take_while(|(sequence, _)| *sequence <= acknowledged)
        .count();
    if done == 0 {
        return Ok(());
    }
    let ids: Vec<i64> = reader
        .in_flight
        .iter()
        .take(done)
        .map(|(_, id)| *id)
        .collect();
    client
        .execute("DELETE FROM walhook.outbox WHERE id = ANY($1)", &[&ids])
        .await?;
    reader.in_flight.drain(..done);
    Ok(())
}

/// Reads up to `batch` committed rows not in flight, in id order, and hands them on.
async fn read_batch(
    client: &Client,
    reader: &mut Reader,
    batch: i64,
    tx: &mpsc::Sender<CaptureMessage>,
) -> Result<usize, CaptureError> {
    let in_flight: Vec<i64> = reader.in_flight.iter().map(|(_, id)| *id).collect();
    let rows = client
        .query(
            "SELECT id, txid::text::int8, schema_name, table_name, op, old_row::text, new_row::text,
                    ((extract(epoch FROM committed_at) - 946684800) * 1000000)::int8
             FROM walhook.outbox WHERE id <> ALL($1) ORDER BY id LIMIT $2",
            &[&in_flight, &batch],
        )
        .await?;
    for row in &rows {
        let id: i64 = row.get(0);
        let schema: String = row.get(2);
        let name: String = row.get(3);
        let table = reader.table(client, &schema, &name).await?;
        let change = RowChange {
            position: Position {
                commit_lsn: Lsn(id as u64),
                index: 0,
            },
            xid: row.get::<_, i64>(1) as u32,
            commit_time: CommitTime(row.get(7)),
            op: match row.get::<_, &str>(4) {
                "INSERT" => Op::Insert,
                "UPDATE" => Op::Update,
                "DELETE" => Op::Delete,
                _ => Op::Truncate,
            },
            old: image(&table, row.get(5)),
            new: image(&table, row.get(6)),
            table,
            unchanged_toast: Vec::new(),
            origin: Origin::Trigger,
        };
        if change_has_new_columns(&change) {
            reader.tables.remove(&(schema, name));
        }
        reader.sequence += 1;
        let lsn = Lsn(reader.sequence);
        let (xid, commit_time) = (change.xid, change.commit_time);
        let messages = [
            CaptureMessage::Begin(Begin {
                xid,
                commit_lsn: lsn,
                commit_time,
            }),
            CaptureMessage::Change(change),
            CaptureMessage::Commit(Commit {
                xid,
                commit_lsn: lsn,
                end_lsn: lsn,
                commit_time,
                changes: 1,
            }),
        ];
        for message in messages {
            if tx.send(message).await.is_err() {
                // The consumer stopped (shutdown): this row stays in the outbox.
                return Ok(0);
            }
        }
        reader.in_flight.push_back((reader.sequence, id));
    }
    Ok(rows.len())
}

/// A row image in the table's column order (columns the cache does not know yet last).
fn image(table: &Table, text: Option<&str>) -> Option<Row> {
    let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(text?) else {
        return None;
    };
    let mut row = Map::new();
    for column in &table.columns {
        if let Some(value) = map.remove(column) {
            row.insert(column.clone(), value);
        }
    }
    row.extend(map);
    Some(row)
}

/// Whether a row has a column the cached table lacks (then the cache is refreshed).
fn change_has_new_columns(change: &RowChange) -> bool {
    [&change.new, &change.old].into_iter().flatten().any(|row| {
        row.keys()
            .any(|k| !change.table.columns.iter().any(|c| c == k))
    })
}

impl Reader {
    /// Columns (no generated ones: pgoutput leaves them out too) and row-identifying key
    /// (primary key, else replica identity index, else every column) of a table.
    async fn table(
        &mut self,
        client: &Client,
        schema: &str,
        name: &str,
    ) -> Result<Arc<Table>, CaptureError> {
        let key = (schema.to_owned(), name.to_owned());
        if let Some(table) = self.tables.get(&key) {
            return Ok(table.clone());
        }
        let row = client
            .query_opt(
                "WITH t AS (SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n
                              ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                            WHERE n.nspname OPERATOR(pg_catalog.=) $1::pg_catalog.name
                              AND c.relname OPERATOR(pg_catalog.=) $2::pg_catalog.name),
                      k AS (SELECT i.indkey FROM pg_catalog.pg_index i, t
                            WHERE i.indrelid OPERATOR(pg_catalog.=) t.oid
                              AND (i.indisprimary OR i.indisreplident)
                            ORDER BY i.indisprimary DESC LIMIT 1)
                 SELECT t.oid::pg_catalog.int8,
                        array(SELECT attname::pg_catalog.text FROM pg_catalog.pg_attribute
                              WHERE attrelid OPERATOR(pg_catalog.=) t.oid
                                AND attnum OPERATOR(pg_catalog.>) 0::pg_catalog.int2 AND NOT attisdropped
                                AND attgenerated OPERATOR(pg_catalog.=) ''::pg_catalog.char
                              ORDER BY attnum),
                        array(SELECT a.attname::pg_catalog.text
                              FROM k, pg_catalog.unnest(k.indkey::pg_catalog.int2[]) WITH ORDINALITY u(attnum, ord)
                              JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) t.oid
                                AND a.attnum OPERATOR(pg_catalog.=) u.attnum
                              ORDER BY u.ord)
                 FROM t",
                &[&schema, &name],
            )
            .await?;
        let (id, columns, mut key_columns) = match row {
            Some(row) => (
                row.get::<_, i64>(0) as u32,
                row.get::<_, Vec<String>>(1),
                row.get::<_, Vec<String>>(2),
            ),
            None => (0, Vec::new(), Vec::new()), // dropped since: rows keep their own columns
        };
        if key_columns.is_empty() {
            key_columns = columns.clone();
        }
        let table = Arc::new(Table {
            id,
            schema: schema.to_owned(),
            name: name.to_owned(),
            columns,
            key: key_columns,
        });
        self.tables.insert(key, table.clone());
        Ok(table)
    }
}
