//! `GET /v1/events`: the event types that exist now — one per verb of each watched table —
//! with the table and its columns, limited to what the caller's scopes allow.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::ApiState;
use super::auth::Caller;
use super::error::ApiError;
use super::store;
use crate::subscriptions::routing::pattern_matches;

/// `{"data": [{"type", "table", "columns": [{"name", "type"}]}]}`, sorted by type.
pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"data": types(&state, &caller).await?})))
}

/// The event types `caller`'s scopes allow, `{"type", "table", "columns"}`, sorted by type
/// (also the console's event catalog).
pub(crate) async fn types(state: &ApiState, caller: &Caller) -> Result<Vec<Value>, ApiError> {
    let mut conn = store::conn(&state.pool).await?;
    let tables = store::watched_tables(&mut conn).await?;
    let mut data: Vec<Value> = Vec::new();
    for table in tables.as_array().into_iter().flatten() {
        let noun = table["noun"].as_str().unwrap_or_default();
        for verb in table["verbs"].as_array().into_iter().flatten() {
            let verb = verb.as_str().unwrap_or_default();
            if caller.scopes.iter().any(|s| pattern_matches(s, noun, verb)) {
                data.push(json!({
                    "type": format!("{noun}.{verb}"),
                    "table": table["table"],
                    "columns": table["columns"],
                }));
            }
        }
    }
    data.sort_by(|a, b| a["type"].as_str().cmp(&b["type"].as_str()));
    Ok(data)
}
