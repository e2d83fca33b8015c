//! Data access for walhook's own schema: migrations, and loading what routing needs.
//!
//! Connections come from the [`Database`] handle, pinned to `search_path = pg_catalog,
//! pg_temp`. The one exception is diesel's own bookkeeping table during [`migrate`]:
//! `__diesel_schema_migrations` is named unqualified by diesel, so the migration harness runs
//! with `search_path = public, pg_temp` (pg_catalog is then still searched first, implicitly),
//! and `sql/walhook.sql` is installed with the pinned path again.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::schema::{subscriptions, watched_tables};
use crate::database::{Database, DatabaseError, SEARCH_PATH};

/// The diesel migrations in `migrations/`.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Functions, triggers and views (`sql/walhook.sql`), reinstalled after every migration run.
pub const SQL: &str = include_str!("../../sql/walhook.sql");

/// The privilege model (`sql/roles.sql`): revocations from PUBLIC, roles `walhook_admin` and
/// `walhook_monitor` and their grants; installed after [`SQL`].
pub const ROLES: &str = include_str!("../../sql/roles.sql");

/// Advisory lock key serialising concurrent `migrate` runs ("walhook" in ASCII).
const MIGRATE_LOCK: i64 = 0x77_616c_686f_6f6b;

/// Data access failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Could not connect.
    #[error(transparent)]
    Connect(#[from] DatabaseError),
    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// The LISTEN session for configuration changes failed.
    #[error("listening for configuration changes failed: {0}")]
    Listen(String),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migration(String),
}

/// A watched table row.
#[derive(Debug, Clone, Queryable, Selectable, PartialEq, Eq)]
#[diesel(table_name = watched_tables)]
pub struct WatchedTable {
    /// Schema.
    pub schema_name: String,
    /// Table.
    pub table_name: String,
    /// Event noun.
    pub noun: String,
    /// Verbs produced.
    pub verbs: Vec<String>,
    /// The table's OID (changes are matched to the watch by it, so a rename keeps it).
    pub relid: Option<u32>,
    /// Only these columns reach subscribers (`None` = every column).
    pub column_list: Option<Vec<String>>,
    /// Columns that never reach subscribers.
    pub exclude_columns: Vec<String>,
    /// The row filter, as PostgreSQL prints it (shown by the catalog; capture applies it).
    pub row_filter: Option<String>,
}

/// A subscription row, as routing needs it.
#[derive(Debug, Clone, Queryable, Selectable, PartialEq)]
#[diesel(table_name = subscriptions)]
pub struct Subscription {
    /// Id.
    pub id: uuid::Uuid,
    /// Owner.
    pub owner: Option<String>,
    /// Event patterns.
    pub events: Vec<String>,
    /// Target URL.
    pub target_url: String,
    /// Filter object.
    pub filter: serde_json::Value,
    /// Signing secret.
    pub secret: String,
    /// Extra headers.
    pub headers: serde_json::Value,
    /// Context echoed in envelopes.
    pub context: Option<String>,
    /// Active flag.
    pub active: bool,
    /// Expiry.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Events per request (`None` or 1: no batching).
    pub batch_max: Option<i32>,
    /// How long a batch may wait to fill, in milliseconds.
    pub batch_window_ms: i32,
    /// Cleartext HTTP/2 with prior knowledge.
    pub http2: bool,
}

/// Applies pending migrations and (re)installs `sql/walhook.sql`, under an advisory lock so
/// concurrent runs are safe; records the publication name SQL functions keep in step.
pub async fn migrate(
    database: &Database,
    publication: &str,
    allow_private_targets: bool,
) -> Result<(), StoreError> {
    let conn = database.diesel().await?;
    let publication = publication.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
        conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATE_LOCK})"))?;
        let result = apply(&mut conn, &publication, allow_private_targets);
        conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATE_LOCK})"))?;
        result
    })
    .await
    .map_err(|e| StoreError::Migration(e.to_string()))?
}

fn apply(
    conn: &mut AsyncConnectionWrapper<AsyncPgConnection>,
    publication: &str,
    allow_private_targets: bool,
) -> Result<(), StoreError> {
    // diesel creates and reads `__diesel_schema_migrations` unqualified (see the module docs).
    conn.batch_execute("SET search_path = public, pg_temp")?;
    let migrated = conn
        .run_pending_migrations(MIGRATIONS)
        .map(|_| ())
        .map_err(|e| StoreError::Migration(e.to_string()));
    conn.batch_execute(&format!("SET search_path = {SEARCH_PATH}"))?;
    migrated?;
    conn.batch_execute(SQL)?;
    conn.batch_execute(ROLES)?;
    let query =
        diesel::sql_query("UPDATE walhook.settings SET value = $1 WHERE name = 'publication'")
            .bind::<diesel::sql_types::Text, _>(publication);
    diesel::RunQueryDsl::execute(query, conn)?;
    let query = diesel::sql_query(
        "UPDATE walhook.settings SET value = $1 WHERE name = 'allow_private_targets'",
    )
    .bind::<diesel::sql_types::Text, _>(allow_private_targets.to_string());
    diesel::RunQueryDsl::execute(query, conn)?;
    Ok(())
}

/// Watches each table (`walhook.watch` with its defaults) unless it already is watched.
/// A section that sets `columns`, `exclude_columns` or `where` is applied at every call
/// (keeping an existing watch's noun, verbs and identity), so the file stays the truth for
/// them; `walhook.watch` refuses unknown columns and invalid predicates, which fails the
/// start with its message. Names are found as [`crate::table_names`] describes; a table
/// that does not exist is skipped with a warning (it may have been dropped since the
/// configuration was written), so walhook still starts and delivers the others.
pub async fn watch_tables(
    conn: &mut AsyncPgConnection,
    tables: &[crate::config::TableSection],
) -> Result<(), StoreError> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    for section in tables {
        let table = &section.name;
        let candidates = crate::table_names::regclass_candidates(table);
        let found: Vec<Resolved> = diesel::sql_query(
            "SELECT r.oid::int8 AS oid FROM (SELECT coalesce(to_regclass($1), to_regclass($2))::oid AS oid) r \
             WHERE r.oid IS NOT NULL",
        )
        .bind::<Text, _>(&candidates[0])
        .bind::<Text, _>(candidates.last().unwrap_or(&candidates[0]))
        .load(conn)
        .await?;
        let Some(Resolved { oid }) = found.into_iter().next() else {
            tracing::warn!(table = %table, "[[tables]]: no such table; not watched");
            continue;
        };
        if !section.shapes_payload() {
            diesel::sql_query(
                "SELECT walhook.watch($1::oid::regclass) WHERE NOT EXISTS \
                 (SELECT 1 FROM walhook.watched_tables w WHERE w.relid = $1::oid)",
            )
            .bind::<BigInt, _>(oid)
            .execute(conn)
            .await?;
            continue;
        }
        diesel::sql_query(
            "SELECT walhook.watch($1::oid::regclass, noun => w.noun, verbs => w.verbs, \
                 full_identity => coalesce(w.full_identity, true), columns => $2, \
                 exclude_columns => $3, \"where\" => $4) \
             FROM (SELECT 1) one LEFT JOIN walhook.watched_tables w ON w.relid = $1::oid",
        )
        .bind::<BigInt, _>(oid)
        .bind::<Nullable<Array<Text>>, _>(&section.columns)
        .bind::<Nullable<Array<Text>>, _>(&section.exclude_columns)
        .bind::<Nullable<Text>, _>(&section.row_filter)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// A table name resolved to its OID.
#[derive(QueryableByName)]
struct Resolved {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    oid: i64,
}

/// One change `walhook.reconcile_watches()` made: `dropped`, `renamed`, `identity`,
/// `published` or `failed`, and what it concerned.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Reconciled {
    /// What was done.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub action: String,
    /// The table(s) and noun concerned.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub detail: String,
}

/// Brings the watches in step with DDL on watched tables (see `walhook.reconcile_watches`
/// in `sql/walhook.sql`): removes the watches of dropped tables, follows renames, gives
/// partitions attached since `REPLICA IDENTITY FULL`, keeps each table's publication entry
/// (column list, row filter) as its watch says. Logs and returns what it changed.
pub async fn reconcile_watches(
    conn: &mut AsyncPgConnection,
) -> Result<Vec<Reconciled>, StoreError> {
    let changes: Vec<Reconciled> =
        diesel::sql_query("SELECT action, detail FROM walhook.reconcile_watches()")
            .load(conn)
            .await?;
    for change in &changes {
        match change.action.as_str() {
            "dropped" => tracing::warn!(
                table = %change.detail,
                "watched table was dropped; its watch is removed"
            ),
            "renamed" => tracing::info!(
                table = %change.detail,
                "watched table was renamed; its watch follows it under the same noun"
            ),
            "identity" => tracing::info!(
                table = %change.detail,
                "partition of a watched table set to REPLICA IDENTITY FULL"
            ),
            "published" => tracing::info!(
                table = %change.detail,
                "publication entry brought in step with the watch"
            ),
            _ => tracing::warn!(problem = %change.detail, "cannot keep a watch in step"),
        }
    }
    Ok(changes)
}

/// Opens a connection for routing loads.
pub async fn connect(database: &Database) -> Result<AsyncPgConnection, StoreError> {
    Ok(database.diesel().await?)
}

/// Everything routing needs: watched tables and active, unexpired subscriptions.
pub async fn load_routing(
    conn: &mut AsyncPgConnection,
) -> Result<(Vec<WatchedTable>, Vec<Subscription>), StoreError> {
    let tables = watched_tables::table
        .select(WatchedTable::as_select())
        .load(conn)
        .await?;
    let subs = subscriptions::table
        .filter(subscriptions::active.eq(true))
        .filter(
            subscriptions::expires_at
                .is_null()
                .or(subscriptions::expires_at.gt(diesel::dsl::now)),
        )
        .select(Subscription::as_select())
        .load(conn)
        .await?;
    Ok((tables, subs))
}
