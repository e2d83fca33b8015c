//! `/v1/hooks`: the caller's subscriptions — create, list (paginated), show, replace
//! (PUT), update (PATCH), delete, and unsubscribe by `target_url`.
//!
//! Rules: patterns must be valid (422) and inside the token's scopes (403); the same target
//! with the same set of patterns twice is 409 with the existing one's `Location`; column
//! rules (URL form, SSRF, secret form, expiry in the future, object shapes) are the
//! `check_subscription` trigger's, reported as 422 naming the column. The secret is shown
//! once, in the answer to POST.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::ApiState;
use super::auth::Caller;
use super::body::{Fields, JsonObject};
use super::error::ApiError;
use super::store::{self, Hook, HookRow};
use crate::subscriptions::routing::{pattern_covers, pattern_valid};

/// Fields a subscription body may hold.
const FIELDS: &[&str] = &[
    "event",
    "events",
    "target_url",
    "filter",
    "secret",
    "headers",
    "context",
    "expires_at",
    "active",
];

/// Largest and default page size of `GET /v1/hooks`.
const MAX_PAGE: i64 = 100;
const DEFAULT_PAGE: i64 = 50;

/// A body's fields; `None` = absent.
struct Input {
    events: Option<Vec<String>>,
    target_url: Option<String>,
    filter: Option<Value>,
    secret: Option<Option<String>>,
    headers: Option<Value>,
    context: Option<Option<String>>,
    expires_at: Option<Option<DateTime<Utc>>>,
    active: Option<bool>,
}

impl Input {
    fn read(body: JsonObject) -> Result<Input, ApiError> {
        let f = Fields::new(body, FIELDS)?;
        let events = if f.has("event") && f.has("events") {
            return Err(ApiError::invalid(
                "event",
                "give either event (a string) or events (an array), not both",
            ));
        } else if f.has("event") {
            f.string("event")?.map(|e| vec![e])
        } else {
            f.strings("events")?
        };
        Ok(Input {
            events,
            target_url: f.string("target_url")?,
            filter: f.object("filter")?,
            secret: f.nullable_string("secret")?,
            headers: f.object("headers")?,
            context: f.nullable_string("context")?,
            expires_at: f.nullable_time("expires_at")?,
            active: f.boolean("active")?,
        })
    }

    /// A whole subscription (POST, PUT): events and target_url required, the rest defaulted;
    /// `secret` when none is given (a new one for POST, the current one for PUT).
    fn whole(self, owner: &str, secret: String) -> Result<HookRow, ApiError> {
        let missing = ApiError::missing;
        Ok(HookRow {
            owner: Some(owner.to_owned()),
            events: self.events.ok_or_else(|| missing("events"))?,
            target_url: self.target_url.ok_or_else(|| missing("target_url"))?,
            filter: self.filter.unwrap_or_else(|| json!({})),
            secret: self.secret.flatten().unwrap_or(secret),
            headers: self.headers.unwrap_or_else(|| json!({})),
            context: self.context.flatten(),
            active: self.active.unwrap_or(true),
            expires_at: self.expires_at.flatten(),
        })
    }

    /// Present fields over `row` (PATCH); a null secret keeps the current one.
    fn merge(self, row: &mut HookRow) {
        let Input {
            events,
            target_url,
            filter,
            secret,
            headers,
            context,
            expires_at,
            active,
        } = self;
        row.events = events.unwrap_or(std::mem::take(&mut row.events));
        row.target_url = target_url.unwrap_or(std::mem::take(&mut row.target_url));
        row.filter = filter.unwrap_or(row.filter.take());
        row.secret = secret.flatten().unwrap_or(std::mem::take(&mut row.secret));
        row.headers = headers.unwrap_or(row.headers.take());
        row.context = context.unwrap_or(row.context.take());
        row.expires_at = expires_at.unwrap_or(row.expires_at.take());
        row.active = active.unwrap_or(row.active);
    }
}

/// A fresh signing secret: `whsec_` + base64 of 32 random bytes.
fn new_secret() -> String {
    format!("whsec_{}", STANDARD.encode(rand::random::<[u8; 32]>()))
}

/// Patterns valid (422) and within scope (403); not a duplicate (409).
async fn check(
    conn: &mut diesel_async::AsyncPgConnection,
    caller: &Caller,
    row: &HookRow,
    except: Option<Uuid>,
) -> Result<(), ApiError> {
    if let Some(bad) = row.events.iter().find(|p| !pattern_valid(p)) {
        return Err(ApiError::invalid(
            "events",
            format!(
                "{bad:?} is not an event pattern: use noun.verb, noun.*, *.verb or *, with verb one of created, updated, deleted, truncated"
            ),
        ));
    }
    if let Some(outside) = row
        .events
        .iter()
        .find(|p| !caller.scopes.iter().any(|s| pattern_covers(s, p)))
    {
        return Err(ApiError::OutOfScope {
            pattern: outside.clone(),
        });
    }
    match store::duplicate(conn, &caller.owner, row, except).await? {
        Some(existing) => Err(ApiError::Duplicate { existing }),
        None => Ok(()),
    }
}

/// Makes a committed write take effect for routing before the call answers.
async fn reload(state: &ApiState, conn: &mut diesel_async::AsyncPgConnection) {
    if let Err(e) = state.routing.reload(conn).await {
        tracing::warn!(error = %e, "routing reload after an API write failed; NOTIFY will catch up");
    }
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| not_found(id))
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("no subscription {id}"))
}

/// `POST /v1/hooks`: 201, `Location`, the subscription with its secret.
pub async fn create(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    body: JsonObject,
) -> Result<Response, ApiError> {
    let row = Input::read(body)?.whole(&caller.owner, new_secret())?;
    let mut conn = store::conn(&state.pool).await?;
    check(&mut conn, &caller, &row, None).await?;
    if state.verify_intent {
        let url = reqwest::Url::parse(&row.target_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"));
        if url.is_none() {
            return Err(ApiError::invalid(
                "target_url",
                format!(
                    "target_url must be an http:// or https:// URL, got {:?}",
                    row.target_url
                ),
            ));
        }
        let challenge = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
        state
            .sender
            .verify(&row.target_url, &challenge)
            .await
            .map_err(ApiError::Verification)?;
    }
    let hook = store::insert(&mut conn, &row).await?;
    reload(&state, &mut conn).await;
    let location = format!("/v1/hooks/{}", hook.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(hook.to_json(true)),
    )
        .into_response())
}

/// A page cursor: base64url of `<created_at micros>.<id>`.
fn cursor(hook: &Hook) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{}.{}",
        hook.created_at.timestamp_micros(),
        hook.id
    ))
}

fn parse_cursor(text: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let raw = String::from_utf8(URL_SAFE_NO_PAD.decode(text).ok()?).ok()?;
    let (micros, id) = raw.split_once('.')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        Uuid::parse_str(id).ok()?,
    ))
}

/// `GET /v1/hooks?limit=&cursor=`: `{"data": [...], "next_cursor"}`, oldest first.
pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit = match params.get("limit") {
        None => DEFAULT_PAGE,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    "limit",
                    format!("limit must be an integer from 1 to {MAX_PAGE}"),
                )
            })?,
    };
    let after = match params.get("cursor") {
        None => None,
        Some(text) => Some(parse_cursor(text).ok_or_else(|| {
            ApiError::invalid(
                "cursor",
                "cursor must be a next_cursor value from a previous page",
            )
        })?),
    };
    let mut conn = store::conn(&state.pool).await?;
    let mut hooks = store::page(&mut conn, &caller.owner, after, limit + 1).await?;
    let more = hooks.len() as i64 > limit;
    hooks.truncate(limit as usize);
    let next = hooks.last().filter(|_| more).map(cursor);
    let data: Vec<Value> = hooks.iter().map(|h| h.to_json(false)).collect();
    Ok(Json(json!({"data": data, "next_cursor": next})))
}

/// `GET /v1/hooks/{id}`.
pub async fn show(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let uuid = parse_id(&id)?;
    let mut conn = store::conn(&state.pool).await?;
    let hook = store::get(&mut conn, &caller.owner, uuid)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(Json(hook.to_json(false)))
}

/// How a write treats fields the body leaves out.
#[derive(Clone, Copy)]
enum Write {
    /// PUT: defaults (the secret is kept).
    Replace,
    /// PATCH: kept.
    Patch,
}

/// PUT and PATCH: reads the caller's subscription, applies the body, checks, writes.
async fn write(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    body: JsonObject,
    how: Write,
) -> Result<Json<Value>, ApiError> {
    let uuid = parse_id(id)?;
    let input = Input::read(body)?;
    let mut conn = store::conn(&state.pool).await?;
    let current = store::get(&mut conn, &caller.owner, uuid)
        .await?
        .ok_or_else(|| not_found(id))?;
    let (row, check_events) = match how {
        Write::Replace => (input.whole(&caller.owner, current.secret)?, true),
        Write::Patch => {
            let check_events = input.events.is_some() || input.target_url.is_some();
            let mut row = HookRow::from_hook(current, &caller.owner);
            input.merge(&mut row);
            (row, check_events)
        }
    };
    if check_events {
        check(&mut conn, caller, &row, Some(uuid)).await?;
    }
    let hook = store::update(&mut conn, &caller.owner, uuid, &row)
        .await?
        .ok_or_else(|| not_found(id))?;
    reload(state, &mut conn).await;
    Ok(Json(hook.to_json(false)))
}

/// `PUT /v1/hooks/{id}`: replaces every field (absent ones get their defaults; an absent
/// secret keeps the current one).
pub async fn replace(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Json<Value>, ApiError> {
    write(&state, &caller, &id, body, Write::Replace).await
}

/// `PATCH /v1/hooks/{id}`: changes the fields given.
pub async fn update(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonObject,
) -> Result<Json<Value>, ApiError> {
    write(&state, &caller, &id, body, Write::Patch).await
}

/// `DELETE /v1/hooks/{id}`: 204; no event is sent to it once this answers.
pub async fn remove(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let uuid = parse_id(&id)?;
    let mut conn = store::conn(&state.pool).await?;
    if !store::delete(&mut conn, &caller.owner, uuid).await? {
        return Err(not_found(&id));
    }
    reload(&state, &mut conn).await;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/hooks/unsubscribe` `{"target_url"}`: deletes the caller's subscriptions to that
/// URL; 200 `{"deleted": [ids]}`, or 404 when there are none.
pub async fn unsubscribe(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    body: JsonObject,
) -> Result<Json<Value>, ApiError> {
    let fields = Fields::new(body, &["target_url"])?;
    let url = fields
        .string("target_url")?
        .ok_or_else(|| ApiError::missing("target_url"))?;
    let mut conn = store::conn(&state.pool).await?;
    let deleted = store::delete_by_url(&mut conn, &caller.owner, &url).await?;
    if deleted.is_empty() {
        return Err(ApiError::NotFound(format!("no subscription to {url}")));
    }
    reload(&state, &mut conn).await;
    Ok(Json(json!({"deleted": deleted})))
}
