//! `/v1/hooks/{id}/backfill`: backfills of one of the caller's subscriptions — start
//! (`POST {"tables": [...]}`, 202 with the backfill ids) and progress (`GET`).
//!
//! Rules: another owner's (or an unknown) subscription is 404; each table must be watched
//! (422 naming `tables`), and the token's scopes must cover some event of it (403); the
//! subscription must take some event of it and the table needs a primary key (422, the
//! message of `walhook.backfill`). All tables of one request start together or none does.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde_json::{Value, json};
use uuid::Uuid;

use super::ApiState;
use super::auth::Caller;
use super::body::{Fields, JsonObject};
use super::error::ApiError;
use super::store;
use crate::subscriptions::routing::pattern_covers;

/// Most tables one request may name.
const MAX_TABLES: usize = 100;

#[derive(QueryableByName)]
struct Watched {
    #[diesel(sql_type = Text)]
    schema_name: String,
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    noun: String,
    #[diesel(sql_type = diesel::sql_types::Array<Text>)]
    verbs: Vec<String>,
}

#[derive(QueryableByName)]
struct Started {
    #[diesel(sql_type = Text)]
    id: String,
}

#[derive(QueryableByName)]
struct Progress {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    table: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = BigInt)]
    rows_sent: i64,
    #[diesel(sql_type = BigInt)]
    estimated_total: i64,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    finished_at: Option<DateTime<Utc>>,
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no subscription {id}"))
}

/// The caller's subscription `id` (404 otherwise).
async fn hook(state: &ApiState, caller: &Caller, id: &str) -> Result<store::Hook, ApiError> {
    let uuid = Uuid::parse_str(id).map_err(|_| not_found(id))?;
    let mut conn = store::conn(&state.pool).await?;
    store::get(&mut conn, &caller.owner, uuid)
        .await?
        .ok_or_else(|| not_found(id))
}

/// A `walhook.backfill` refusal as 422 on `tables`; other errors as usual.
fn refused(e: diesel::result::Error) -> ApiError {
    if let diesel::result::Error::DatabaseError(_, info) = &e
        && let Some(message) = info.message().strip_prefix("walhook.backfill: ")
    {
        return ApiError::invalid("tables", message);
    }
    e.into()
}

/// `POST /v1/hooks/{id}/backfill`: 202 `{"backfills": [{"id", "table", "state"}]}`.
pub async fn start(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let hook = hook(&state, &caller, &id).await?;
    let fields = Fields::new(body, &["tables"])?;
    let tables = fields
        .strings("tables")?
        .ok_or_else(|| ApiError::missing("tables"))?;
    if tables.is_empty() || tables.len() > MAX_TABLES {
        return Err(ApiError::invalid(
            "tables",
            format!("tables must name 1 to {MAX_TABLES} watched tables"),
        ));
    }
    let mut conn = store::conn(&state.pool).await?;
    let watched: Vec<Watched> = diesel::sql_query(
        "SELECT schema_name, table_name, noun, verbs FROM walhook.watched_tables ORDER BY noun",
    )
    .load(&mut conn)
    .await?;
    let mut chosen: Vec<&Watched> = Vec::with_capacity(tables.len());
    for name in &tables {
        let found = watched
            .iter()
            .find(|w| {
                *name == format!("{}.{}", w.schema_name, w.table_name)
                    || (*name == w.table_name && w.schema_name == "public")
            })
            .or_else(|| watched.iter().find(|w| *name == w.table_name))
            .ok_or_else(|| {
                ApiError::invalid("tables", format!("{name:?} is not a watched table"))
            })?;
        let allowed = found.verbs.iter().any(|v| {
            let event = format!("{}.{v}", found.noun);
            caller.scopes.iter().any(|s| pattern_covers(s, &event))
        });
        if !allowed {
            return Err(ApiError::OutOfScope {
                pattern: format!("{}.*", found.noun),
            });
        }
        chosen.push(found);
    }
    let (hook_id, chosen) = (hook.id, &chosen);
    let started = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            let mut started = Vec::with_capacity(chosen.len());
            for table in chosen {
                let row: Started = diesel::sql_query(
                    "SELECT walhook.backfill(format('%I.%I', $1, $2)::regclass, $3)::text AS id",
                )
                .bind::<Text, _>(&table.schema_name)
                .bind::<Text, _>(&table.table_name)
                .bind::<diesel::sql_types::Uuid, _>(hook_id)
                .get_result(conn)
                .await
                .map_err(refused)?;
                started.push(json!({
                    "id": row.id,
                    "table": format!("{}.{}", table.schema_name, table.table_name),
                    "state": "running",
                }));
            }
            Ok(started)
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"backfills": started}))).into_response())
}

/// `GET /v1/hooks/{id}/backfill`: 200 `{"backfills": [...]}`, the subscription's backfills,
/// newest first, with their progress.
pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let hook = hook(&state, &caller, &id).await?;
    let mut conn = store::conn(&state.pool).await?;
    let rows: Vec<Progress> = diesel::sql_query(
        "SELECT id::text, format('%s.%s', schema_name, table_name) AS \"table\", state, rows_sent,
                estimated_total, error, created_at, finished_at
         FROM walhook.backfill_jobs WHERE subscription_id = $1 ORDER BY created_at DESC LIMIT 100",
    )
    .bind::<diesel::sql_types::Uuid, _>(hook.id)
    .load(&mut conn)
    .await?;
    let backfills: Vec<Value> = rows
        .into_iter()
        .map(|p| {
            json!({
                "id": p.id,
                "table": p.table,
                "state": p.state,
                "rows_sent": p.rows_sent,
                "estimated_total": p.estimated_total,
                "error": p.error,
                "created_at": store::timestamp(&p.created_at),
                "finished_at": p.finished_at.as_ref().map(store::timestamp),
            })
        })
        .collect();
    Ok(Json(json!({"backfills": backfills})))
}
