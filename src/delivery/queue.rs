//! The delivery queue table (`walhook.delivery_queue`): where events that must wait live —
//! after a failure, behind a failed event of the same row, or when a subscription is
//! overloaded — and where dead letters stay (`status = 'dead'`).
//!
//! Retries are claimed with a lease (`FOR UPDATE SKIP LOCKED` + pushing `next_attempt_at`),
//! so several daemons can share them; a row is claimable only when no older pending row of
//! the same subscription and row exists, which keeps per-row order.
//!
//! Writes are total: [`Queue::store`] either makes an event durable, or — when the database
//! refuses it in a way that will repeat ([`classify`]: data exception, integrity, program
//! limit…) — parks it as a dead letter carrying the reason, or, if even that is refused the
//! same way, logs and drops it. Only transient failures (connection, serialization,
//! resources) come back as errors for the caller to retry, so no event can hold the
//! acknowledgement watermark forever. Every duration handed to SQL is capped at
//! [`MAX_SQL_INTERVAL`], so no computed timestamp can leave PostgreSQL's range.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Double, Integer, Nullable, Text, Uuid as SqlUuid};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::client::{SenderError, bounded_text};

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
    /// The database refused a write (SQLSTATE and message).
    #[error("delivery queue write refused: {sqlstate} {message}")]
    Refused {
        /// The five-character SQLSTATE.
        sqlstate: String,
        /// The server's message.
        message: String,
    },
    /// A queue write failed, already classified by the batch writer.
    #[error("{message}")]
    Write {
        /// Whether it will fail again.
        failure: WriteFailure,
        /// The failure's message.
        message: String,
    },
    /// The delivery HTTP client could not be built: delivery cannot start.
    #[error(transparent)]
    Sender(#[from] SenderError),
}

/// Whether a failed queue write is worth trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailure {
    /// It may succeed later (connection, pool, serialization, lock, resources, shutdown).
    Transient,
    /// The same write will fail the same way (the data or a limit is the cause).
    Permanent,
}

/// The one classification of queue-write failures, by SQLSTATE class: `21` cardinality,
/// `22` data exception (e.g. timestamp out of range), `23` integrity constraint, `42`
/// syntax/access rule, `54` program limit (e.g. index row too large), `0A` feature not
/// supported and `XX001`/`XX002` (corrupted data or index) are permanent; everything else —
/// `08` connection, `40` rollback (serialization, deadlock), `53` insufficient resources
/// (disk full), `55` object state (lock timeout), `57` operator intervention (shutdown,
/// cancel), `25` read-only after failover, and any unknown code — is transient: retrying
/// costs time, never an event.
pub fn classify_sqlstate(sqlstate: &str) -> WriteFailure {
    let class = sqlstate.get(..2).unwrap_or_default();
    if matches!(class, "21" | "22" | "23" | "42" | "54" | "0A")
        || matches!(sqlstate, "XX001" | "XX002")
    {
        WriteFailure::Permanent
    } else {
        WriteFailure::Transient
    }
}

/// Classifies a queue error (see [`classify_sqlstate`]); errors without a SQLSTATE are
/// transient, except constraint violations diesel names.
pub fn classify(error: &QueueError) -> WriteFailure {
    use diesel::result::{DatabaseErrorKind as Kind, Error as Diesel};
    match error {
        QueueError::Refused { sqlstate, .. } => classify_sqlstate(sqlstate),
        QueueError::Write { failure, .. } => *failure,
        QueueError::Query(Diesel::DatabaseError(
            Kind::UniqueViolation
            | Kind::ForeignKeyViolation
            | Kind::NotNullViolation
            | Kind::CheckViolation
            | Kind::ExclusionViolation
            | Kind::RestrictViolation,
            _,
        )) => WriteFailure::Permanent,
        QueueError::Sender(_) => WriteFailure::Permanent,
        QueueError::Query(_) | QueueError::Pool(_) | QueueError::Batch(_) => {
            WriteFailure::Transient
        }
    }
}

/// How [`Queue::store`] settled an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Written as asked.
    Queued,
    /// Refused permanently; written as a dead letter with the reason instead.
    Parked,
    /// Refused permanently, and so was the dead letter: logged and dropped.
    Dropped,
}

/// Longest duration handed to SQL (100 years): `now() ± make_interval(secs => …)` stays in
/// range whatever a configuration or an endpoint asked for.
pub const MAX_SQL_INTERVAL: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Seconds for `make_interval(secs => …)`, capped at [`MAX_SQL_INTERVAL`].
fn sql_secs(duration: Duration) -> f64 {
    duration.min(MAX_SQL_INTERVAL).as_secs_f64()
}

/// Most bytes of a failure reason stored with a parked event.
const MAX_REASON: usize = 1024;

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
    /// The batch it was sent in (its `webhook-id`), retried as that batch.
    pub batch_id: Option<&'a str>,
}

/// What [`Queue::claim`] picks: single rows, or whole batches.
#[derive(Clone, Copy)]
enum Claim {
    /// Rows that are not members of a batch.
    Rows,
    /// Every row of each picked batch.
    Batches,
}

/// Which queued row an update is for.
#[derive(Debug, Clone, Copy)]
pub enum RowRef<'a> {
    /// By id: a row the retrier claimed.
    Id(i64),
    /// By subscription and event id: the row a job spilled while its attempt was in flight.
    Event(Uuid, &'a str),
    /// Every row of one batch (by subscription and batch id).
    Batch(Uuid, &'a str),
}

impl RowRef<'_> {
    /// The condition, over binds `$1` (id), `$2` (subscription), `$3` (event id), `$4`
    /// (batch id).
    const WHERE: &'static str = "(id = $1 OR (subscription_id = $2 AND event_id = $3) \
         OR (subscription_id = $2 AND batch_id = $4))";

    fn binds(&self) -> (Option<i64>, Option<Uuid>, Option<&str>, Option<&str>) {
        match *self {
            RowRef::Id(id) => (Some(id), None, None, None),
            RowRef::Event(subscription, event) => (None, Some(subscription), Some(event), None),
            RowRef::Batch(subscription, batch) => (None, Some(subscription), None, Some(batch)),
        }
    }
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
    /// The batch it belongs to (its rows are claimed and sent together).
    #[diesel(sql_type = Nullable<Text>)]
    pub batch_id: Option<String>,
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
    batch_id: Option<String>,
    done: oneshot::Sender<Result<(), (WriteFailure, String)>>,
}

impl Waiting {
    fn new(e: &Enqueue<'_>, done: oneshot::Sender<Result<(), (WriteFailure, String)>>) -> Waiting {
        Waiting {
            subscription_id: e.subscription_id,
            event_id: e.event_id.to_owned(),
            event_type: e.event_type.to_owned(),
            row_key: e.row_key.to_owned(),
            body: e.body.to_owned(),
            attempts: e.attempts,
            delay_secs: sql_secs(e.delay),
            last_error: e.last_error.map(str::to_owned),
            status: if e.dead { "dead" } else { "pending" },
            batch_id: e.batch_id.map(str::to_owned),
            done,
        }
    }
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
        let result = insert_batch(&pool, &batch).await;
        if batch.len() > 1
            && let Err(e) = &result
            && classify(e) == WriteFailure::Permanent
        {
            // One event spoils the batch: write each alone, so only that one is refused.
            for w in batch {
                let alone = insert_batch(&pool, std::slice::from_ref(&w)).await;
                let _ = w
                    .done
                    .send(alone.map_err(|e| (classify(&e), e.to_string())));
            }
            continue;
        }
        let result = result.map_err(|e| (classify(&e), e.to_string()));
        for w in batch {
            let _ = w.done.send(result.clone());
        }
    }
}

#[derive(QueryableByName)]
struct Refusal {
    #[diesel(sql_type = Nullable<Text>)]
    refused: Option<String>,
}

/// One INSERT for the batch, in order (ids follow it, which keeps per-row order).
async fn insert_batch(pool: &PgPool, batch: &[Waiting]) -> Result<(), QueueError> {
    let mut conn = pool
        .get()
        .await
        .map_err(|e| QueueError::Pool(e.to_string()))?;
    let column = |f: fn(&Waiting) -> &str| batch.iter().map(f).collect::<Vec<&str>>();
    // The function reports a refused INSERT with its SQLSTATE (see sql/walhook.sql).
    let rows: Vec<Refusal> = diesel::sql_query(
        "SELECT walhook.enqueue_deliveries($1::uuid[], $2::text[], $3::text[], $4::text[], \
         $5::text[], $6::int4[], $7::float8[], $8::text[], $9::text[], $10::text[]) AS refused",
    )
    .bind::<Array<SqlUuid>, _>(batch.iter().map(|w| w.subscription_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(column(|w| &w.event_id))
    .bind::<Array<Text>, _>(column(|w| &w.event_type))
    .bind::<Array<Text>, _>(column(|w| &w.row_key))
    .bind::<Array<Text>, _>(column(|w| &w.body))
    .bind::<Array<Integer>, _>(batch.iter().map(|w| w.attempts).collect::<Vec<_>>())
    .bind::<Array<Double>, _>(batch.iter().map(|w| w.delay_secs).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(
        batch
            .iter()
            .map(|w| w.last_error.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Text>, _>(column(|w| w.status))
    .bind::<Array<Nullable<Text>>, _>(
        batch
            .iter()
            .map(|w| w.batch_id.as_deref())
            .collect::<Vec<_>>(),
    )
    .load(&mut conn)
    .await?;
    match rows.into_iter().next().and_then(|r| r.refused) {
        None => Ok(()),
        Some(refused) => {
            let (sqlstate, message) = refused.split_once(':').unwrap_or(("XX000", &refused));
            Err(QueueError::Refused {
                sqlstate: sqlstate.to_owned(),
                message: message.to_owned(),
            })
        }
    }
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
        let stopped = || QueueError::Batch("the queue writer stopped".into());
        writer.send(Waiting::new(e, done)).map_err(|_| stopped())?;
        written
            .await
            .map_err(|_| stopped())?
            .map_err(|(failure, message)| QueueError::Write { failure, message })
    }

    /// Makes `e` durable, whatever it contains: written as asked ([`Stored::Queued`]); or,
    /// when the database refuses it permanently ([`classify`]), written as a dead letter
    /// whose `last_error` is the reason ([`Stored::Parked`]); or, when even that is refused
    /// permanently, logged and dropped ([`Stored::Dropped`]) so acknowledgement moves on.
    /// Errors are transient only: the caller retries.
    pub async fn store(&self, e: &Enqueue<'_>) -> Result<Stored, QueueError> {
        let refused = match self.enqueue(e).await {
            Ok(()) => return Ok(Stored::Queued),
            Err(error) if classify(&error) == WriteFailure::Permanent => error,
            Err(error) => return Err(error),
        };
        tracing::error!(error = %refused, subscription = %e.subscription_id, event = %e.event_id,
            "the queue refused an event; storing it as a dead letter");
        match self.park(e, &refused.to_string()).await {
            Ok(()) => Ok(Stored::Parked),
            Err(error) if classify(&error) == WriteFailure::Permanent => {
                tracing::error!(error = %error, first_error = %refused, subscription = %e.subscription_id,
                    event = %e.event_id, event_type = %e.event_type,
                    "the queue refused the event and its dead letter; dropped");
                Ok(Stored::Dropped)
            }
            Err(error) => Err(error),
        }
    }

    /// Writes `e` as a dead letter with `reason` (bounded, one line): no delay, no pending
    /// row (so no per-row index entry), text without NULs — a write that cannot fail the way
    /// the original did.
    async fn park(&self, e: &Enqueue<'_>, reason: &str) -> Result<(), QueueError> {
        let clean = |s: &str| s.replace('\0', " ");
        let reason = bounded_text(format!("cannot queue: {reason}").as_bytes(), MAX_REASON);
        let (event_type, row_key, body) = (clean(e.event_type), clean(e.row_key), clean(e.body));
        let dead = Enqueue {
            event_type: &event_type,
            row_key: &row_key,
            body: &body,
            delay: Duration::ZERO,
            last_error: Some(&reason),
            dead: true,
            batch_id: None,
            ..e.clone()
        };
        let (done, _written) = oneshot::channel();
        insert_batch(&self.pool, &[Waiting::new(&dead, done)]).await
    }

    /// Deletes dead letters dead (last attempted) for longer than `retention`, at most
    /// `batch` rows per statement, until none is left; returns how many.
    pub async fn purge_dead(&self, retention: Duration, batch: i64) -> Result<u64, QueueError> {
        let mut purged = 0u64;
        loop {
            let mut conn = self.conn().await?;
            let n = diesel::sql_query(
                "DELETE FROM walhook.delivery_queue WHERE id IN ( \
                   SELECT id FROM walhook.delivery_queue \
                   WHERE status = 'dead' AND next_attempt_at < now() - make_interval(secs => $1) \
                   LIMIT $2)",
            )
            .bind::<Double, _>(sql_secs(retention))
            .bind::<BigInt, _>(batch)
            .execute(&mut conn)
            .await?;
            purged += n as u64;
            if (n as i64) < batch {
                return Ok(purged);
            }
        }
    }

    /// Claims up to `limit` due rows for `lease`, oldest first, one per (subscription, row).
    pub async fn claim_due(
        &self,
        limit: i64,
        lease: Duration,
        skip: &[Uuid],
    ) -> Result<Vec<Claimed>, QueueError> {
        self.claim(Claim::Rows, limit, lease, skip).await
    }

    /// Claims every row of up to `limit` due batches for `lease` (rows of a batch share
    /// `next_attempt_at`, so they come due together), ordered by batch then id: a batch is
    /// sent again with its members in their first order. A batch is chosen by a due member
    /// that heads its row (no older pending row of the same subscription and row); the
    /// outer condition is re-checked on rows another daemon claimed meanwhile, so a batch is
    /// never claimed twice.
    pub async fn claim_batches(
        &self,
        limit: i64,
        lease: Duration,
        skip: &[Uuid],
    ) -> Result<Vec<Claimed>, QueueError> {
        let mut rows = self.claim(Claim::Batches, limit, lease, skip).await?;
        rows.sort_by(|a, b| {
            (a.subscription_id, &a.batch_id, a.id).cmp(&(b.subscription_id, &b.batch_id, b.id))
        });
        Ok(rows)
    }

    /// The one claiming statement: due rows that head their (subscription, row) — no older
    /// pending row of it — of subscriptions not in `skip`, picked in id order with
    /// `SKIP LOCKED`, leased for `lease`.
    async fn claim(
        &self,
        claim: Claim,
        limit: i64,
        lease: Duration,
        skip: &[Uuid],
    ) -> Result<Vec<Claimed>, QueueError> {
        let (outer, picked, batch) = match claim {
            Claim::Rows => ("q.id", "c.id", "IS NULL"),
            Claim::Batches => (
                "q.status = 'pending' AND q.next_attempt_at <= now() \
                 AND (q.subscription_id, q.batch_id)",
                "c.subscription_id, c.batch_id",
                "IS NOT NULL",
            ),
        };
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(format!(
            "UPDATE walhook.delivery_queue q SET next_attempt_at = now() + make_interval(secs => $2) \
             WHERE {outer} IN ( \
               SELECT {picked} FROM walhook.delivery_queue c \
               WHERE c.status = 'pending' AND c.next_attempt_at <= now() AND c.batch_id {batch} \
                 AND c.subscription_id <> ALL($3) \
                 AND NOT EXISTS (SELECT 1 FROM walhook.delivery_queue e \
                   WHERE e.subscription_id = c.subscription_id AND e.row_key = c.row_key \
                     AND e.status = 'pending' AND e.id < c.id) \
               ORDER BY c.id LIMIT $1 FOR UPDATE SKIP LOCKED) \
             RETURNING q.id, q.subscription_id, q.event_id, q.row_key, q.body, q.attempts, q.batch_id"
        ))
        .bind::<BigInt, _>(limit)
        .bind::<Double, _>(sql_secs(lease))
        .bind::<Array<SqlUuid>, _>(skip)
        .load(&mut conn)
        .await?)
    }

    /// Removes a delivered row.
    pub async fn delete(&self, row: RowRef<'_>) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        let (id, subscription, event, batch) = row.binds();
        diesel::sql_query(format!(
            "DELETE FROM walhook.delivery_queue WHERE {}",
            RowRef::WHERE
        ))
        .bind::<Nullable<BigInt>, _>(id)
        .bind::<Nullable<SqlUuid>, _>(subscription)
        .bind::<Nullable<Text>, _>(event)
        .bind::<Nullable<Text>, _>(batch)
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    /// Records a failed attempt: retry after `delay`, or dead when `delay` is `None`.
    pub async fn failed(
        &self,
        row: RowRef<'_>,
        attempts: i32,
        delay: Option<Duration>,
        error: &str,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        let (id, subscription, event, batch) = row.binds();
        diesel::sql_query(format!(
            "UPDATE walhook.delivery_queue SET attempts = $5, last_error = $6, \
             status = CASE WHEN $7 THEN 'pending' ELSE 'dead' END, \
             next_attempt_at = now() + make_interval(secs => $8) WHERE {}",
            RowRef::WHERE
        ))
        .bind::<Nullable<BigInt>, _>(id)
        .bind::<Nullable<SqlUuid>, _>(subscription)
        .bind::<Nullable<Text>, _>(event)
        .bind::<Nullable<Text>, _>(batch)
        .bind::<Integer, _>(attempts)
        .bind::<Text, _>(error)
        .bind::<diesel::sql_types::Bool, _>(delay.is_some())
        .bind::<Double, _>(sql_secs(delay.unwrap_or_default()))
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    /// Hands a claimed row (or batch) back, due again after `delay` (e.g. its row is busy in
    /// memory).
    pub async fn release(&self, row: RowRef<'_>, delay: Duration) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        let (id, subscription, event, batch) = row.binds();
        diesel::sql_query(format!(
            "UPDATE walhook.delivery_queue SET next_attempt_at = now() + make_interval(secs => $5) WHERE {}",
            RowRef::WHERE
        ))
        .bind::<Nullable<BigInt>, _>(id)
        .bind::<Nullable<SqlUuid>, _>(subscription)
        .bind::<Nullable<Text>, _>(event)
        .bind::<Nullable<Text>, _>(batch)
        .bind::<Double, _>(sql_secs(delay))
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
        .bind::<Double, _>(sql_secs(disable_after))
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

/// Purges dead letters older than `retention` at start and then every `every`, in batches,
/// until `stop` (see [`Queue::purge_dead`]); failures are logged and retried next time.
pub async fn purge_dead_letters(
    queue: Queue,
    retention: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        match queue.purge_dead(retention, 1000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                purged = n,
                "dead letters past delivery.dead_letter_retention purged"
            ),
            Err(e) => tracing::warn!(error = %e, "purging dead letters failed; trying again later"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_class() {
        for code in [
            "22008", "22021", "22P02", "23505", "23503", "23514", "54000", "42883", "0A000",
            "21000", "XX001",
        ] {
            assert_eq!(classify_sqlstate(code), WriteFailure::Permanent, "{code}");
        }
        for code in [
            "08006", "40001", "40P01", "53100", "53200", "55P03", "57014", "57P01", "25006",
            "XX000", "", "x",
        ] {
            assert_eq!(classify_sqlstate(code), WriteFailure::Transient, "{code}");
        }
        let refused = QueueError::Refused {
            sqlstate: "22008".into(),
            message: "timestamp out of range".into(),
        };
        assert_eq!(classify(&refused), WriteFailure::Permanent);
        assert_eq!(
            refused.to_string(),
            "delivery queue write refused: 22008 timestamp out of range"
        );
        assert_eq!(
            classify(&QueueError::Pool("timed out".into())),
            WriteFailure::Transient
        );
        assert_eq!(sql_secs(Duration::MAX), MAX_SQL_INTERVAL.as_secs_f64());
    }
}
