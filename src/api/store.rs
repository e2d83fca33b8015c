//! The SQL behind the API. Every subscription query is scoped to the caller's owner, so
//! another owner's rows (and admin rows, owner NULL) are never read, changed or counted.

use chrono::{DateTime, SecondsFormat, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Jsonb, Nullable, Text};
use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::ApiError;
use crate::delivery::queue::PgPool;
use crate::subscriptions::schema::subscriptions;

/// A pooled connection, or 503.
pub async fn conn(pool: &PgPool) -> Result<Object<AsyncPgConnection>, ApiError> {
    pool.get()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))
}

/// A subscription as the API shows it.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = subscriptions)]
pub struct Hook {
    /// Id.
    pub id: Uuid,
    /// Event patterns.
    pub events: Vec<String>,
    /// Target.
    pub target_url: String,
    /// Filter.
    pub filter: Value,
    /// Signing secret (shown only in the answer to POST).
    pub secret: String,
    /// Extra headers.
    pub headers: Value,
    /// Context.
    pub context: Option<String>,
    /// Active.
    pub active: bool,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Why disabled.
    pub disabled_reason: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Updated.
    pub updated_at: DateTime<Utc>,
    /// Events per request (`None` or 1: one event, not an array).
    pub batch_max: Option<i32>,
    /// How long a batch may wait to fill, in milliseconds.
    pub batch_window_ms: i32,
    /// Cleartext HTTP/2 with prior knowledge.
    pub http2: bool,
}

/// RFC 3339 with microseconds, UTC.
pub fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Hook {
    /// The JSON body; the secret only when `with_secret`.
    pub fn to_json(&self, with_secret: bool) -> Value {
        let mut body = json!({
            "id": self.id,
            "events": self.events,
            "target_url": self.target_url,
            "filter": self.filter,
            "headers": self.headers,
            "context": self.context,
            "active": self.active,
            "expires_at": self.expires_at.as_ref().map(timestamp),
            "disabled_reason": self.disabled_reason,
            "created_at": timestamp(&self.created_at),
            "updated_at": timestamp(&self.updated_at),
            "batch_max": self.batch_max,
            "batch_window_ms": self.batch_window_ms,
            "http2": self.http2,
        });
        if with_secret {
            body["secret"] = json!(self.secret);
        }
        body
    }
}

/// The writable columns of a subscription (absent optional values are written as NULL).
#[derive(Debug, Clone, Insertable, AsChangeset)]
#[diesel(table_name = subscriptions, treat_none_as_null = true)]
pub struct HookRow {
    /// Owner (the caller's).
    pub owner: Option<String>,
    /// Event patterns.
    pub events: Vec<String>,
    /// Target.
    pub target_url: String,
    /// Filter.
    pub filter: Value,
    /// Signing secret.
    pub secret: String,
    /// Extra headers.
    pub headers: Value,
    /// Context.
    pub context: Option<String>,
    /// Active.
    pub active: bool,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Events per request.
    pub batch_max: Option<i32>,
    /// Batch window, milliseconds.
    pub batch_window_ms: i32,
    /// Cleartext HTTP/2.
    pub http2: bool,
}

impl HookRow {
    /// The row as `hook` has it now, owned by `owner` (`None`: an admin's).
    pub fn from_hook(hook: Hook, owner: Option<String>) -> HookRow {
        HookRow {
            owner,
            events: hook.events,
            target_url: hook.target_url,
            filter: hook.filter,
            secret: hook.secret,
            headers: hook.headers,
            context: hook.context,
            active: hook.active,
            expires_at: hook.expires_at,
            batch_max: hook.batch_max,
            batch_window_ms: hook.batch_window_ms,
            http2: hook.http2,
        }
    }
}

/// Inserts a subscription.
pub async fn insert(conn: &mut AsyncPgConnection, row: &HookRow) -> Result<Hook, ApiError> {
    Ok(diesel::insert_into(subscriptions::table)
        .values(row)
        .returning(Hook::as_returning())
        .get_result(conn)
        .await?)
}

/// One of `owner`'s subscriptions.
pub async fn get(
    conn: &mut AsyncPgConnection,
    owner: &str,
    id: Uuid,
) -> Result<Option<Hook>, ApiError> {
    Ok(subscriptions::table
        .filter(subscriptions::id.eq(id))
        .filter(subscriptions::owner.eq(owner))
        .select(Hook::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Up to `limit` of `owner`'s subscriptions after the cursor `(created_at, id)`, in that order.
pub async fn page(
    conn: &mut AsyncPgConnection,
    owner: &str,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<Hook>, ApiError> {
    let mut query = subscriptions::table
        .filter(subscriptions::owner.eq(owner))
        .select(Hook::as_select())
        .order((subscriptions::created_at, subscriptions::id))
        .limit(limit)
        .into_boxed();
    if let Some((at, id)) = after {
        query = query.filter(
            subscriptions::created_at
                .gt(at)
                .or(subscriptions::created_at
                    .eq(at)
                    .and(subscriptions::id.gt(id))),
        );
    }
    Ok(query.load(conn).await?)
}

/// Overwrites one of `owner`'s subscriptions.
pub async fn update(
    conn: &mut AsyncPgConnection,
    owner: &str,
    id: Uuid,
    row: &HookRow,
) -> Result<Option<Hook>, ApiError> {
    Ok(diesel::update(subscriptions::table)
        .filter(subscriptions::id.eq(id))
        .filter(subscriptions::owner.eq(owner))
        .set(row)
        .returning(Hook::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// Deletes one of `owner`'s subscriptions; whether it existed.
pub async fn delete(conn: &mut AsyncPgConnection, owner: &str, id: Uuid) -> Result<bool, ApiError> {
    let deleted = diesel::delete(subscriptions::table)
        .filter(subscriptions::id.eq(id))
        .filter(subscriptions::owner.eq(owner))
        .execute(conn)
        .await?;
    Ok(deleted > 0)
}

/// Deletes `owner`'s subscriptions to `target_url`; their ids and patterns.
pub async fn delete_by_url(
    conn: &mut AsyncPgConnection,
    owner: &str,
    target_url: &str,
) -> Result<Vec<(Uuid, Vec<String>)>, ApiError> {
    Ok(diesel::delete(subscriptions::table)
        .filter(subscriptions::target_url.eq(target_url))
        .filter(subscriptions::owner.eq(owner))
        .returning((subscriptions::id, subscriptions::events))
        .get_results(conn)
        .await?)
}

/// Takes a transaction-scoped advisory lock on `owner` (class 0x7768 "wh" and the owner's
/// hash): serialises creates of one owner so the per-owner limit holds under concurrency.
pub async fn lock_owner(conn: &mut AsyncPgConnection, owner: &str) -> Result<(), ApiError> {
    diesel::sql_query("SELECT pg_catalog.pg_advisory_xact_lock(30568, pg_catalog.hashtext($1))")
        .bind::<Text, _>(owner)
        .execute(conn)
        .await?;
    Ok(())
}

/// How many subscriptions `owner` has.
pub async fn count(conn: &mut AsyncPgConnection, owner: &str) -> Result<u64, ApiError> {
    let n: i64 = subscriptions::table
        .filter(subscriptions::owner.eq(owner))
        .count()
        .get_result(conn)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Another of `owner`'s subscriptions with the same target and the same set of patterns.
pub async fn duplicate(
    conn: &mut AsyncPgConnection,
    owner: &str,
    row: &HookRow,
    except: Option<Uuid>,
) -> Result<Option<Uuid>, ApiError> {
    let same_target: Vec<(Uuid, Vec<String>)> = subscriptions::table
        .filter(subscriptions::owner.eq(owner))
        .filter(subscriptions::target_url.eq(&row.target_url))
        .select((subscriptions::id, subscriptions::events))
        .load(conn)
        .await?;
    let set = |events: &[String]| {
        let mut events = events.to_vec();
        events.sort();
        events.dedup();
        events
    };
    let wanted = set(&row.events);
    Ok(same_target
        .into_iter()
        .find(|(id, events)| Some(*id) != except && set(events) == wanted)
        .map(|(id, _)| id))
}

#[derive(QueryableByName)]
struct Catalog {
    #[diesel(sql_type = Jsonb)]
    tables: Value,
}

/// Watched tables with the columns their events carry (hidden ones left out):
/// `[{"noun", "verbs", "table", "columns": [{"name", "type"}]}]`, by noun.
pub async fn watched_tables(conn: &mut AsyncPgConnection) -> Result<Value, ApiError> {
    let catalog: Catalog = diesel::sql_query(
        "SELECT coalesce(jsonb_agg(jsonb_build_object(
             'noun', w.noun, 'verbs', to_jsonb(w.verbs),
             'table', format('%s.%s', w.schema_name, w.table_name),
             'columns', coalesce((
                 SELECT jsonb_agg(jsonb_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum)
                 FROM pg_attribute a
                 WHERE a.attrelid = to_regclass(format('%I.%I', w.schema_name, w.table_name))
                   AND a.attnum > 0 AND NOT a.attisdropped
                   AND (w.columns IS NULL OR a.attname::text = ANY (w.columns))
                   AND NOT (a.attname::text = ANY (w.exclude_columns))), '[]'))
             ORDER BY w.noun), '[]') AS tables
         FROM walhook.watched_tables w",
    )
    .get_result(conn)
    .await?;
    Ok(catalog.tables)
}

/// Gauges for `/metrics` read from the database.
#[derive(Debug, QueryableByName)]
pub struct Gauges {
    /// Queue rows waiting for a retry.
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    /// Dead letters.
    #[diesel(sql_type = BigInt)]
    pub dead: i64,
    /// Active subscriptions.
    #[diesel(sql_type = BigInt)]
    pub active: i64,
    /// Inactive subscriptions.
    #[diesel(sql_type = BigInt)]
    pub inactive: i64,
    /// WAL the slot retains, bytes (NULL without a slot).
    #[diesel(sql_type = Nullable<BigInt>)]
    pub retained_wal: Option<i64>,
}

/// Reads the gauges; `slot` is walhook's replication slot.
pub async fn gauges(conn: &mut AsyncPgConnection, slot: &str) -> Result<Gauges, ApiError> {
    Ok(diesel::sql_query(
        "SELECT (SELECT count(*) FROM walhook.delivery_queue WHERE status = 'pending') AS pending,
                (SELECT count(*) FROM walhook.delivery_queue WHERE status = 'dead') AS dead,
                (SELECT count(*) FROM walhook.subscriptions WHERE active) AS active,
                (SELECT count(*) FROM walhook.subscriptions WHERE NOT active) AS inactive,
                (SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint
                 FROM pg_replication_slots WHERE slot_name = $1) AS retained_wal",
    )
    .bind::<Text, _>(slot)
    .get_result(conn)
    .await?)
}

/// Any subscription with its owner (`None`: an admin's): the console's admin view, which
/// sees every owner. Owner tokens go through [`get`].
pub async fn get_any(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> Result<Option<(Hook, Option<String>)>, ApiError> {
    Ok(subscriptions::table
        .filter(subscriptions::id.eq(id))
        .select((Hook::as_select(), subscriptions::owner))
        .first(conn)
        .await
        .optional()?)
}

/// Up to `limit` subscriptions of every owner, oldest first (the console's admin view).
pub async fn all(
    conn: &mut AsyncPgConnection,
    limit: i64,
) -> Result<Vec<(Hook, Option<String>)>, ApiError> {
    Ok(subscriptions::table
        .select((Hook::as_select(), subscriptions::owner))
        .order((subscriptions::created_at, subscriptions::id))
        .limit(limit)
        .load(conn)
        .await?)
}

/// Overwrites any subscription, keeping its owner (the console's admin view).
pub async fn update_any(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    row: &HookRow,
) -> Result<Option<Hook>, ApiError> {
    Ok(diesel::update(subscriptions::table)
        .filter(subscriptions::id.eq(id))
        .set(row)
        .returning(Hook::as_returning())
        .get_result(conn)
        .await
        .optional()?)
}

/// A backfill's row count for `/metrics`.
#[derive(Debug, QueryableByName)]
pub struct BackfillRows {
    /// Backfill id.
    #[diesel(sql_type = Text)]
    pub id: String,
    /// `schema.table`.
    #[diesel(sql_type = Text)]
    pub table: String,
    /// running, done, cancelled, failed.
    #[diesel(sql_type = Text)]
    pub state: String,
    /// Rows sent so far.
    #[diesel(sql_type = BigInt)]
    pub rows_sent: i64,
}

/// Running backfills and those finished within the last day (at most 100).
pub async fn backfill_rows(conn: &mut AsyncPgConnection) -> Result<Vec<BackfillRows>, ApiError> {
    Ok(diesel::sql_query(
        "SELECT id::text, format('%s.%s', schema_name, table_name) AS \"table\", state, rows_sent
         FROM walhook.backfill_jobs
         WHERE state = 'running' OR finished_at > now() - interval '1 day'
         ORDER BY created_at DESC LIMIT 100",
    )
    .load(conn)
    .await?)
}
