//! The delivery queue table (`walhook.delivery_queue`): where events that must wait live —
//! after a failure, behind a failed event of the same row, or when a subscription is
//! overloaded — and where dead letters stay (`status = 'dead'`).
//!
//! Retries are claimed with a lease (`FOR UPDATE SKIP LOCKED` + pushing `next_attempt_at`),
//! so several daemons can share them; a row is claimable only when no older pending row of
//! the same subscription and row exists, which keeps per-row order.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Double, Integer, Nullable, Text, Uuid as SqlUuid};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// A pool of diesel-async connections.
pub type PgPool = Pool<AsyncPgConnection>;

/// Queue access failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No connection from the pool.
    #[error("database pool: {0}")]
    Pool(String),
    /// A query failed.
    #[error("delivery queue query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// A batched write failed (the message of the query's error).
    #[error("delivery queue write failed: {0}")]
    Batch(String),
}

/// Builds a pool for `url` (max `size` connections); a caller waiting longer than
/// `wait_timeout` for a free connection gets an error instead of waiting on.
pub fn pool(url: &str, size: usize, wait_timeout: Duration) -> Result<PgPool, QueueError> {
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new(url);
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(wait_timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .map_err(|e| QueueError::Pool(e.to_string()))
}

/// An event to put in the queue.
#[derive(Debug, Clone)]
pub struct Enqueue<'a> {
    /// Subscription.
    pub subscription_id: Uuid,
    /// Event id.
    pub event_id: &'a str,
    /// Event type.
    pub event_type: &'a str,
    /// Row identity for ordering.
    pub row_key: &'a str,
    /// Exact body.
    pub body: &'a str,
    /// Attempts made so far.
    pub attempts: i32,
    /// Wait before the next attempt.
    pub delay: Duration,
    /// The last error, if an attempt failed.
    pub last_error: Option<&'a str>,
    /// Store as a dead letter right away.
    pub dead: bool,
}

/// A claimed queue row.
#[derive(Debug, Clone, QueryableByName)]
pub struct Claimed {
    /// Row id.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// Subscription.
    #[diesel(sql_type = SqlUuid)]
    pub subscription_id: Uuid,
    /// Event id.
    #[diesel(sql_type = Text)]
    pub event_id: String,
    /// Row identity.
    #[diesel(sql_type = Text)]
    pub row_key: String,
    /// Exact body.
    #[diesel(sql_type = Text)]
    pub body: String,
    /// Attempts made.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = SqlUuid)]
    subscription_id: Uuid,
    #[diesel(sql_type = Nullable<Text>)]
    row_key: Option<String>,
}

/// The queue, over a pool.
#[derive(Clone)]
pub struct Queue {
    pool: PgPool,
    /// The batch writer, started by the first `enqueue`.
    writer: Arc<OnceLock<mpsc::UnboundedSender<Waiting>>>,
}

/// An event waiting for the batch writer, and who to tell once it is committed.
struct Waiting {
    subscription_id: Uuid,
    event_id: String,
    event_type: String,
    row_key: String,
    body: String,
    attempts: i32,
    delay_secs: f64,
    last_error: Option<String>,
    status: &'static str,
    done: oneshot::Sender<Result<(), String>>,
}

/// Largest batch written by one INSERT.
const MAX_BATCH: usize = 500;

/// Writes waiting events: whatever has gathered while the previous INSERT ran goes into the
/// next one (up to [`MAX_BATCH`]), so a burst of failures costs one round trip per batch,
/// not per event. Ends when every `Queue` is gone.
async fn write_batches(pool: PgPool, mut waiting: mpsc::UnboundedReceiver<Waiting>) {
    while let Some(first) = waiting.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let result = insert_batch(&pool, &batch).await.map_err(|e| e.to_string());
        for w in batch {
            let _ = w.done.send(result.clone());
        }
    }
}

/// One INSERT for the batch, in order (ids follow it, which keeps per-row order).
async fn insert_batch(pool: &PgPool, batch: &[Waiting]) -> Result<(), QueueError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| QueueError::Pool(e.to_string()))?;
    let column = |f: fn(&Waiting) -> &str| batch.iter().map(f).collect::<Vec<&str>>();
    diesel::sql_query(
        "INSERT INTO walhook.delivery_queue \
         (subscription_id, event_id, event_type, row_key, body, attempts, next_attempt_at, last_error, status) \
         SELECT u.s, u.e, u.t, u.k, u.b, u.a, now() + make_interval(secs => u.d), u.l, u.st \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int4[], \
                     $7::float8[], $8::text[], $9::text[]) WITH ORDINALITY AS u(s, e, t, k, b, a, d, l, st, n) \
         WHERE EXISTS (SELECT 1 FROM walhook.subscriptions WHERE id = u.s) \
         ORDER BY u.n \
         ON CONFLICT (subscription_id, event_id) DO NOTHING",
    )
    .bind::<Array<SqlUuid>, _>(batch.iter().map(|w| w.subscription_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(column(|w| &w.event_id))
    .bind::<Array<Text>, _>(column(|w| &w.event_type))
    .bind::<Array<Text>, _>(column(|w| &w.row_key))
    .bind::<Array<Text>, _>(column(|w| &w.body))
    .bind::<Array<Integer>, _>(batch.iter().map(|w| w.attempts).collect::<Vec<_>>())
    .bind::<Array<Double>, _>(batch.iter().map(|w| w.delay_secs).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        batch.iter().map(|w| w.last_error.as_deref()).collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(column(|w| w.status))
    .execute(&mut conn)
    .await?;
    Ok(())
}

impl Queue {
    /// A queue over `pool`.
    pub fn new(pool: PgPool) -> Queue {
        Queue {
            pool,
            writer: Arc::new(OnceLock::new()),
        }
    }

    async fn conn(
        &self,
    ) -> Result<diesel_async::pooled_connection::deadpool::Object<AsyncPgConnection>, QueueError>
    {
        self.pool
            .get()
            .await
            .map_err(|e| QueueError::Pool(e.to_string()))
    }

    /// Inserts one event (idempotent per subscription and event id); nothing when the
    /// subscription has been deleted meanwhile. Returns once the row is committed. Concurrent
    /// calls are written together: one multi-row INSERT per batch (see [`write_batches`]).
    pub async fn enqueue(&self, e: &Enqueue<'_>) -> Result<(), QueueError> {
        let writer = self.writer.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_batches(self.pool.clone(), rx));
            tx
        });
        let (done, written) = oneshot::channel();
        let waiting = Waiting {
            subscription_id: e.subscription_id,
            event_id: e.event_id.to_owned(),
            event_type: e.event_type.to_owned(),
            row_key: e.row_key.to_owned(),
            body: e.body.to_owned(),
            attempts: e.attempts,
            delay_secs: e.delay.as_secs_f64(),
            last_error: e.last_error.map(str::to_owned),
            status: if e.dead { "dead" } else { "pending" },
            done,
        };
        let stopped = || QueueError::Batch("the queue writer stopped".into());
        writer.send(waiting).map_err(|_| stopped())?;
        written
            .await
            .map_err(|_| stopped())?
            .map_err(QueueError::Batch)
    }

    /// Claims up to `limit` due rows for `lease`, oldest first, one per (subscription, row).
    pub async fn claim_due(&self, limit: i64, lease: Duration) -> Result<Vec<Claimed>, QueueError> {
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(
            "UPDATE walhook.delivery_queue q SET next_attempt_at = now() + make_interval(secs => $2) \
             WHERE q.id IN ( \
               SELECT c.id FROM walhook.delivery_queue c \
               WHERE c.status = 'pending' AND c.next_attempt_at <= now() \
                 AND NOT EXISTS (SELECT 1 FROM walhook.delivery_queue e \
                   WHERE e.subscription_id = c.subscription_id AND e.row_key = c.row_key \
                     AND e.status = 'pending' AND e.id < c.id) \
               ORDER BY c.id LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING q.id, q.subscription_id, q.event_id, q.row_key, q.body, q.attempts",
        )
        .bind::<BigInt, _>(limit)
        .bind::<Double, _>(lease.as_secs_f64())
        .load(&mut conn)
        .await?)
    }

    /// Removes a delivered row.
    pub async fn delete(&self, id: i64) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        diesel::sql_query("DELETE FROM walhook.delivery_queue WHERE id = $1")
            .bind::<BigInt, _>(id)
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    /// Records a failed attempt: retry after `delay`, or dead when `delay` is `None`.
    pub async fn failed(
        &self,
        id: i64,
        attempts: i32,
        delay: Option<Duration>,
        error: &str,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        diesel::sql_query(
            "UPDATE walhook.delivery_queue SET attempts = $2, last_error = $3, \
             status = CASE WHEN $4 THEN 'pending' ELSE 'dead' END, \
             next_attempt_at = now() + make_interval(secs => $5) WHERE id = $1",
        )
        .bind::<BigInt, _>(id)
        .bind::<Integer, _>(attempts)
        .bind::<Text, _>(error)
        .bind::<diesel::sql_types::Bool, _>(delay.is_some())
        .bind::<Double, _>(delay.unwrap_or_default().as_secs_f64())
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    /// Hands a claimed row back, due again after `delay` (e.g. its row is busy in memory).
    pub async fn release(&self, id: i64, delay: Duration) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        diesel::sql_query(
            "UPDATE walhook.delivery_queue SET next_attempt_at = now() + make_interval(secs => $2) WHERE id = $1",
        )
        .bind::<BigInt, _>(id)
        .bind::<Double, _>(delay.as_secs_f64())
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    /// Whether a subscription has pending rows at all.
    pub async fn any_pending(&self, subscription: Uuid) -> Result<bool, QueueError> {
        let mut conn = self.conn().await?;
        let rows: Vec<Count> = diesel::sql_query(
            "SELECT count(*) AS n FROM (SELECT 1 FROM walhook.delivery_queue \
             WHERE subscription_id = $1 AND status = 'pending' LIMIT 1) p",
        )
        .bind::<SqlUuid, _>(subscription)
        .load(&mut conn)
        .await?;
        Ok(rows.into_iter().next().is_some_and(|c| c.n > 0))
    }

    /// Pending rows of one (subscription, row).
    pub async fn pending_for(&self, subscription: Uuid, row_key: &str) -> Result<i64, QueueError> {
        let mut conn = self.conn().await?;
        let rows: Vec<Count> = diesel::sql_query(
            "SELECT count(*) AS n FROM walhook.delivery_queue \
             WHERE subscription_id = $1 AND row_key = $2 AND status = 'pending'",
        )
        .bind::<SqlUuid, _>(subscription)
        .bind::<Text, _>(row_key)
        .load(&mut conn)
        .await?;
        Ok(rows.into_iter().next().map_or(0, |c| c.n))
    }

    /// Every (subscription, row) with pending rows: at start these rows must wait behind them.
    /// A subscription with more than `max_rows` such rows comes back once, without a row
    /// (`None`: all its rows wait).
    pub async fn pending_keys(
        &self,
        max_rows: usize,
    ) -> Result<Vec<(Uuid, Option<String>)>, QueueError> {
        let mut conn = self.conn().await?;
        let rows: Vec<KeyRow> = diesel::sql_query(
            "WITH k AS (SELECT DISTINCT subscription_id, row_key FROM walhook.delivery_queue                         WHERE status = 'pending'),                   n AS (SELECT subscription_id, count(*) AS rows FROM k GROUP BY subscription_id)              SELECT k.subscription_id, k.row_key FROM k JOIN n USING (subscription_id) WHERE n.rows <= $1              UNION ALL SELECT subscription_id, NULL FROM n WHERE n.rows > $1",
        )
        .bind::<BigInt, _>(max_rows as i64)
        .load(&mut conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.subscription_id, r.row_key))
            .collect())
    }

    /// Records a success for health (only called after failures, so the fast path writes
    /// nothing).
    pub async fn record_success(&self, subscription: Uuid) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        diesel::sql_query(
            "INSERT INTO walhook.subscription_stats (subscription_id, last_success_at, consecutive_failures) \
             VALUES ($1, now(), 0) ON CONFLICT (subscription_id) DO UPDATE \
             SET last_success_at = now(), consecutive_failures = 0, failing_since = NULL",
        )
        .bind::<SqlUuid, _>(subscription)
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    /// Records a failure; disables the subscription when it has failed without a success for
    /// `disable_after`. Returns whether it was disabled now.
    pub async fn record_failure(
        &self,
        subscription: Uuid,
        error: &str,
        disable_after: Duration,
    ) -> Result<bool, QueueError> {
        let mut conn = self.conn().await?;
        // One round trip: record, then disable if failing for too long.
        let disabled = diesel::sql_query(
            "WITH st AS (INSERT INTO walhook.subscription_stats AS s \
             (subscription_id, last_error_at, last_error, consecutive_failures, failing_since) \
             VALUES ($1, now(), $2, 1, now()) ON CONFLICT (subscription_id) DO UPDATE \
             SET last_error_at = now(), last_error = $2, consecutive_failures = s.consecutive_failures + 1, \
                 failing_since = coalesce(s.failing_since, now()) \
             RETURNING failing_since) \
             UPDATE walhook.subscriptions s SET active = false, \
             disabled_reason = format('failing without a success since %s', st.failing_since) \
             FROM st WHERE s.id = $1 AND s.active \
               AND st.failing_since <= now() - make_interval(secs => $3)",
        )
        .bind::<SqlUuid, _>(subscription)
        .bind::<Text, _>(error)
        .bind::<Double, _>(disable_after.as_secs_f64())
        .execute(&mut conn)
        .await?;
        Ok(disabled > 0)
    }

    /// Deactivates a subscription (410 Gone).
    pub async fn deactivate(&self, subscription: Uuid, reason: &str) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        diesel::sql_query(
            "UPDATE walhook.subscriptions SET active = false, disabled_reason = $2 WHERE id = $1",
        )
        .bind::<SqlUuid, _>(subscription)
        .bind::<Text, _>(reason)
        .execute(&mut conn)
        .await?;
        Ok(())
    }
}
