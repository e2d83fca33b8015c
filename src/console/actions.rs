//! The console's state changes, each a POST carrying the session's CSRF token (the
//! [`Action`] extractor checks it): edit a subscription, enable or disable it, rotate its
//! secret (shown once), redeliver dead letters (one or all; `walhook.redeliver`), send a
//! signed test event, watch and unwatch tables (admin; `walhook.watch`/`walhook.unwatch`).
//!
//! Subscriptions are reached through [`visible`] and changed with the API's rules: an
//! owner token's writes need the subscription's patterns within its scopes
//! (`api::hooks::in_scope`) and new patterns valid and in scope (`check_patterns`); a new
//! target is verified like the API does (`api::hooks::verify`); column rules are the
//! `check_subscription` trigger's; the write takes effect in the routing index before the
//! answer (`api::hooks::take_effect_as`).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use diesel::sql_types::{Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};

use super::pages::{render_subscription, render_tables, visible};
use super::session::{Action, Viewer};
use super::{ConsoleError, ConsoleState};
use crate::api::auth::Caller;
use crate::api::hooks::{check_patterns, in_scope, new_secret, take_effect_as, verify};
use crate::api::store::{self, Hook, HookRow};
use crate::delivery::client::{Message, Target};
use crate::delivery::recent::{self, Attempt};

/// The caller whose scopes a write is checked against (an admin's: everything).
fn acting(viewer: &Viewer) -> Caller {
    if viewer.admin {
        Caller {
            owner: viewer.caller.owner.clone(),
            scopes: vec!["*".to_owned()],
        }
    } else {
        viewer.caller.clone()
    }
}

/// The subscription `id` as the viewer may act on it: visible to them (else 404) and its
/// events within their scopes (else 403).
async fn acted_on(
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    id: &str,
) -> Result<(Hook, Option<String>), ConsoleError> {
    let (hook, owner) = visible(conn, viewer, id).await?;
    in_scope(&acting(viewer), &hook.events)?;
    Ok((hook, owner))
}

/// Reads the subscription, lets `change` edit its row, writes it and applies it to routing.
async fn rewrite(
    state: &ConsoleState,
    viewer: &Viewer,
    id: &str,
    change: impl FnOnce(&mut HookRow) -> Result<(), ConsoleError>,
) -> Result<Hook, ConsoleError> {
    let caller = acting(viewer);
    let (hook, owner) = {
        let mut conn = store::conn(&state.api.pool).await?;
        acted_on(&mut conn, viewer, id).await?
    };
    let (hook_id, current_url) = (hook.id, hook.target_url.clone());
    let mut row = HookRow::from_hook(hook, owner.clone());
    change(&mut row)?;
    check_patterns(&caller, &row.events)?;
    if row.target_url != current_url {
        // No connection held while the target answers.
        verify(&state.api, &row.target_url).await?;
    }
    let mut conn = store::conn(&state.api.pool).await?;
    let written = if viewer.admin {
        store::update_any(&mut conn, hook_id, &row).await?
    } else {
        store::update(&mut conn, &viewer.caller.owner, hook_id, &row).await?
    };
    drop(conn);
    let written =
        written.ok_or_else(|| crate::api::ApiError::NotFound(format!("no subscription {id}")))?;
    take_effect_as(&state.api, written.id, Some(&written), owner.as_deref());
    Ok(written)
}

fn back(id: &str, notice: &str) -> Response {
    Redirect::to(&format!("/console/subscriptions/{id}?notice={notice}")).into_response()
}

/// `POST /console/subscriptions/{id}/edit`: `target_url`, `events` (comma-separated),
/// `context` (empty: none), `headers` (a JSON object).
pub async fn edit(
    State(state): State<Arc<ConsoleState>>,
    Path(id): Path<String>,
    action: Action,
) -> Result<Response, ConsoleError> {
    let events: Vec<String> = action
        .field("events")
        .split(',')
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    if events.is_empty() {
        return Err(ConsoleError::Invalid(
            "events: give at least one pattern".into(),
        ));
    }
    let headers: Value = match action.field("headers").trim() {
        "" => json!({}),
        text => serde_json::from_str(text)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| {
                ConsoleError::Invalid("headers must be a JSON object of strings".into())
            })?,
    };
    let target_url = action.field("target_url").trim().to_owned();
    let context = Some(action.field("context").to_owned()).filter(|c| !c.is_empty());
    rewrite(&state, &action.viewer, &id, |row| {
        row.events = events;
        row.target_url = target_url;
        row.context = context;
        row.headers = headers;
        Ok(())
    })
    .await?;
    Ok(back(&id, "saved"))
}

/// `POST /console/subscriptions/{id}/active` (`active` = `true` or `false`).
pub async fn active(
    State(state): State<Arc<ConsoleState>>,
    Path(id): Path<String>,
    action: Action,
) -> Result<Response, ConsoleError> {
    let on = action.field("active") == "true";
    rewrite(&state, &action.viewer, &id, |row| {
        row.active = on;
        Ok(())
    })
    .await?;
    Ok(back(&id, if on { "enabled" } else { "disabled" }))
}

/// `POST /console/subscriptions/{id}/rotate`: a new signing secret, shown once in the
/// answer (never again: pages show no secret).
pub async fn rotate(
    State(state): State<Arc<ConsoleState>>,
    Path(id): Path<String>,
    action: Action,
) -> Result<Response, ConsoleError> {
    let secret = new_secret();
    let new = secret.clone();
    rewrite(&state, &action.viewer, &id, |row| {
        row.secret = new;
        Ok(())
    })
    .await?;
    render_subscription(
        &state,
        &action.viewer,
        &id,
        "New secret: copy it now, it is not shown again.",
        &secret,
    )
    .await
}

/// `POST /console/subscriptions/{id}/redeliver` (`event_id`, empty: all): dead letters of
/// the subscription sent again, by `walhook.redeliver`.
pub async fn redeliver(
    State(state): State<Arc<ConsoleState>>,
    Path(id): Path<String>,
    action: Action,
) -> Result<Response, ConsoleError> {
    let mut conn = store::conn(&state.api.pool).await?;
    let (hook, _) = acted_on(&mut conn, &action.viewer, &id).await?;
    let event = Some(action.field("event_id").to_owned()).filter(|e| !e.is_empty());
    diesel::sql_query("SELECT walhook.redeliver($1, $2)")
        .bind::<Nullable<Text>, _>(event)
        .bind::<SqlUuid, _>(hook.id)
        .execute(&mut conn)
        .await?;
    Ok(back(&id, "redelivered"))
}

/// `POST /console/subscriptions/{id}/test`: sends a signed `walhook.test` event to the
/// target now (SSRF rules as for deliveries); its outcome appears in recent deliveries and
/// does not count towards the subscription's health.
pub async fn test(
    State(state): State<Arc<ConsoleState>>,
    Path(id): Path<String>,
    action: Action,
) -> Result<Response, ConsoleError> {
    let hook = {
        let mut conn = store::conn(&state.api.pool).await?;
        acted_on(&mut conn, &action.viewer, &id).await?.0
    };
    let event_id = format!("evt_test_{:016x}", rand::random::<u64>());
    let body = json!({
        "id": event_id,
        "type": "walhook.test",
        "timestamp": crate::api::store::timestamp(&chrono::Utc::now()),
        "data": {"subscription_id": hook.id, "message": "a test event sent from the walhook console"},
        "context": hook.context,
    });
    let target = Target::new(&hook.target_url, &hook.secret, &hook.headers).with_http2(hook.http2);
    let message = Message {
        target: &target,
        id: &event_id,
        body: serde_json::to_vec(&body).unwrap_or_default().into(),
    };
    let started = Instant::now();
    let outcome = state.api.sender.send(&message).await;
    let attempt = Attempt::new(&event_id, started.elapsed()).of_type("walhook.test");
    recent::log().record(hook.id, &attempt, 1, &outcome);
    Ok(back(&id, "tested"))
}

/// Runs `sql` with the `table` field; the database's message becomes the notice.
async fn table_call(
    state: &ConsoleState,
    action: &Action,
    sql: &str,
    done: &str,
) -> Result<Response, ConsoleError> {
    if !action.viewer.admin {
        return Err(ConsoleError::AdminOnly);
    }
    let table = action.field("table").trim();
    // Sessions of walhook have no schema on their search path: a bare name means public's
    // table; then exact spelling first, SQL syntax second, as for `[[tables]]` names.
    let name = if table.contains('.') || table.contains('"') {
        table.to_owned()
    } else {
        format!("public.{table}")
    };
    let candidates = crate::table_names::regclass_candidates(&name);
    let (exact, last) = match candidates.as_slice() {
        [first, .., last] => (first.clone(), last.clone()),
        [only] => (only.clone(), only.clone()),
        [] => (name.clone(), name.clone()),
    };
    let mut conn = store::conn(&state.api.pool).await?;
    let result = diesel::sql_query(sql)
        .bind::<Text, _>(exact)
        .bind::<Text, _>(last)
        .execute(&mut conn)
        .await;
    drop(conn);
    let notice = match result {
        Ok(_) => format!("{table}: {done}"),
        Err(diesel::result::Error::DatabaseError(_, info)) => {
            format!("{table}: {}", info.message())
        }
        Err(e) => return Err(e.into()),
    };
    render_tables(state, &action.viewer, &notice).await
}

/// `POST /console/tables/watch` (`table`: `schema.table`, or a table of `public`):
/// `walhook.watch(table)` (admin).
pub async fn watch(
    State(state): State<Arc<ConsoleState>>,
    action: Action,
) -> Result<Response, ConsoleError> {
    table_call(
        &state,
        &action,
        "SELECT walhook.watch(coalesce(pg_catalog.to_regclass($1), $2::regclass))",
        "watched",
    )
    .await
}

/// `POST /console/tables/unwatch` (`table`): `walhook.unwatch(table)` (admin).
pub async fn unwatch(
    State(state): State<Arc<ConsoleState>>,
    action: Action,
) -> Result<Response, ConsoleError> {
    table_call(
        &state,
        &action,
        "SELECT walhook.unwatch(coalesce(pg_catalog.to_regclass($1), $2::regclass))",
        "no longer watched",
    )
    .await
}
