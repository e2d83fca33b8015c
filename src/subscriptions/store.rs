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

/// Watches each (schema, table) (`walhook.watch` with its defaults) unless it already is
/// watched.
pub async fn watch_tables(
    conn: &mut AsyncPgConnection,
    tables: &[(String, String)],
) -> Result<(), StoreError> {
    for (schema, table) in tables {
        diesel::sql_query(
            "WITH t AS (SELECT pg_catalog.format('%I.%I', $1::pg_catalog.text, $2::pg_catalog.text)\
             ::pg_catalog.regclass AS oid) \
             SELECT walhook.watch(t.oid) FROM t WHERE NOT EXISTS (SELECT 1 FROM walhook.watched_tables w \
             WHERE w.schema_name OPERATOR(pg_catalog.=) $1::pg_catalog.text \
             AND w.table_name OPERATOR(pg_catalog.=) $2::pg_catalog.text)",
        )
        .bind::<diesel::sql_types::Text, _>(schema)
        .bind::<diesel::sql_types::Text, _>(table)
        .execute(conn)
        .await?;
    }
    Ok(())
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
