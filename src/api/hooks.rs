//! `/v1/hooks`: the caller's subscriptions — create, list (paginated), show, replace
//! (PUT), update (PATCH), delete, and unsubscribe by `target_url`.
//!
//! Rules: patterns must be valid (422) and inside the token's scopes (403), and so must the
//! patterns a subscription has now for any write of it (PUT, PATCH, DELETE, unsubscribe): a
//! narrower token of the same owner cannot touch hooks outside its scopes; the same target
//! with the same set of patterns twice is 409 with the existing one's `Location`; an owner
//! holding `api.max_subscriptions_per_owner` gets 409 `subscription_limit`; column rules
//! (URL form, SSRF, secret form, expiry in the future, object shapes, denied `headers`) are
//! the `check_subscription` trigger's — the one place they live — reported as 422 naming the
//! column. The secret is shown once, in the answer to POST.
//!
//! Intent verification (POST, and PUT/PATCH changing `target_url`) runs while the request
//! holds no database connection, so slow targets cannot take the API's pool.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::{Value, json};
use uuid::Uuid;

use super::ApiState;
use super::auth::Caller;
use super::body::{Fields, JsonObject};
use super::error::ApiError;
use super::store::{self, Hook, HookRow};
use crate::subscriptions::routing::{pattern_covers, pattern_valid};
use crate::subscriptions::store::Subscription;

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
    "batch_max",
    "batch_window_ms",
    "http2",
];

/// Largest `batch_max` and `batch_window_ms` (the `check_subscription` trigger's limits).
const MAX_BATCH: i64 = 1000;
const MAX_BATCH_WINDOW_MS: i64 = 10_000;
const BATCH_MAX_RULE: &str = "batch_max must be null or 1 (one event per request) or an integer from 2 to 1000 (events per request)";
const BATCH_WINDOW_RULE: &str =
    "batch_window_ms must be an integer from 0 to 10000 (milliseconds a batch may wait to fill)";

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
    batch_max: Option<Option<i32>>,
    batch_window_ms: Option<i32>,
    http2: Option<bool>,
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
            batch_max: f
                .nullable_integer("batch_max", 1, MAX_BATCH, BATCH_MAX_RULE)?
                .map(|n| n.map(|n| n as i32)),
            batch_window_ms: f
                .integer("batch_window_ms", 0, MAX_BATCH_WINDOW_MS, BATCH_WINDOW_RULE)?
                .map(|n| n as i32),
            http2: f.boolean("http2")?,
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
            batch_max: self.batch_max.flatten(),
            batch_window_ms: self.batch_window_ms.unwrap_or(0),
            http2: self.http2.unwrap_or(false),
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
            batch_max,
            batch_window_ms,
            http2,
        } = self;
        row.events = events.unwrap_or(std::mem::take(&mut row.events));
        row.target_url = target_url.unwrap_or(std::mem::take(&mut row.target_url));
        row.filter = filter.unwrap_or(row.filter.take());
        row.secret = secret.flatten().unwrap_or(std::mem::take(&mut row.secret));
        row.headers = headers.unwrap_or(row.headers.take());
        row.context = context.unwrap_or(row.context.take());
        row.expires_at = expires_at.unwrap_or(row.expires_at.take());
        row.active = active.unwrap_or(row.active);
        row.batch_max = batch_max.unwrap_or(row.batch_max);
        row.batch_window_ms = batch_window_ms.unwrap_or(row.batch_window_ms);
        row.http2 = http2.unwrap_or(row.http2);
    }
}

/// A fresh signing secret: `whsec_` + base64 of 32 random bytes.
pub(crate) fn new_secret() -> String {
    format!("whsec_{}", STANDARD.encode(rand::random::<[u8; 32]>()))
}

/// Patterns valid (422) and within scope (403).
pub(crate) fn check_patterns(caller: &Caller, events: &[String]) -> Result<(), ApiError> {
    if let Some(bad) = events.iter().find(|p| !pattern_valid(p)) {
        return Err(ApiError::invalid(
            "events",
            format!(
                "{bad:?} is not an event pattern: use noun.verb, noun.*, *.verb or *, with verb one of created, updated, deleted, truncated"
            ),
        ));
    }
    in_scope(caller, events)
}

/// Every pattern within the token's scopes (403 otherwise).
pub(crate) fn in_scope(caller: &Caller, events: &[String]) -> Result<(), ApiError> {
    match events
        .iter()
        .find(|p| !caller.scopes.iter().any(|s| pattern_covers(s, p)))
    {
        Some(outside) => Err(ApiError::OutOfScope {
            pattern: outside.clone(),
        }),
        None => Ok(()),
    }
}

/// Not a duplicate of another of the caller's subscriptions (409).
async fn check_duplicate(
    conn: &mut AsyncPgConnection,
    caller: &Caller,
    row: &HookRow,
    except: Option<Uuid>,
) -> Result<(), ApiError> {
    match store::duplicate(conn, &caller.owner, row, except).await? {
        Some(existing) => Err(ApiError::Duplicate { existing }),
        None => Ok(()),
    }
}

/// REST hooks intent verification of `target_url` when configured (422 when it fails).
/// Called with no database connection held.
pub(crate) async fn verify(state: &ApiState, target_url: &str) -> Result<(), ApiError> {
    if !state.verify_intent {
        return Ok(());
    }
    let url = reqwest::Url::parse(target_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"));
    if url.is_none() {
        return Err(ApiError::invalid(
            "target_url",
            format!("target_url must be an http:// or https:// URL, got {target_url:?}"),
        ));
    }
    let challenge = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
    state
        .sender
        .verify(target_url, &challenge)
        .await
        .map_err(ApiError::Verification)
}

/// Makes a committed write take effect for routing before the call answers: the one
/// subscription as written (`None`: deleted) goes into the live index, no reload.
fn take_effect(state: &ApiState, id: Uuid, hook: Option<&Hook>, owner: &str) {
    take_effect_as(state, id, hook, Some(owner));
}

/// [`take_effect`] for a subscription of `owner` (`None`: an admin's, made in SQL).
pub(crate) fn take_effect_as(state: &ApiState, id: Uuid, hook: Option<&Hook>, owner: Option<&str>) {
    let now = Utc::now();
    let routed = hook
        .filter(|h| h.active && h.expires_at.is_none_or(|t| t > now))
        .map(|h| Subscription {
            id: h.id,
            owner: owner.map(str::to_owned),
            events: h.events.clone(),
            target_url: h.target_url.clone(),
            filter: h.filter.clone(),
            secret: h.secret.clone(),
            headers: h.headers.clone(),
            context: h.context.clone(),
            active: h.active,
            expires_at: h.expires_at,
            batch_max: h.batch_max,
            batch_window_ms: h.batch_window_ms,
            http2: h.http2,
        });
    state.routing.apply(id, routed);
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
    check_patterns(&caller, &row.events)?;
    verify(&state, &row.target_url).await?;
    let mut conn = store::conn(&state.pool).await?;
    let limit = state.max_subscriptions_per_owner;
    let (caller, row) = (&caller, &row);
    let hook = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            {
                // One create at a time per owner, so concurrent ones cannot pass the limit.
                store::lock_owner(conn, &caller.owner).await?;
                if store::count(conn, &caller.owner).await? >= limit {
                    return Err(ApiError::SubscriptionLimit { limit });
                }
                check_duplicate(conn, caller, row, None).await?;
                store::insert(conn, row).await
            }
        })
        .await?;
    drop(conn);
    take_effect(&state, hook.id, Some(&hook), &caller.owner);
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

/// PUT and PATCH: reads the caller's subscription (its patterns must be in the token's
/// scopes), applies the body, checks, verifies a changed target (no connection held), writes.
async fn write(
    state: &ApiState,
    caller: &Caller,
    id: &str,
    body: JsonObject,
    how: Write,
) -> Result<Json<Value>, ApiError> {
    let uuid = parse_id(id)?;
    let input = Input::read(body)?;
    let current = {
        let mut conn = store::conn(&state.pool).await?;
        store::get(&mut conn, &caller.owner, uuid)
            .await?
            .ok_or_else(|| not_found(id))?
    };
    in_scope(caller, &current.events)?;
    let current_url = current.target_url.clone();
    let (row, check_events) = match how {
        Write::Replace => (input.whole(&caller.owner, current.secret)?, true),
        Write::Patch => {
            let check_events = input.events.is_some() || input.target_url.is_some();
            let mut row = HookRow::from_hook(current, Some(caller.owner.clone()));
            input.merge(&mut row);
            (row, check_events)
        }
    };
    check_patterns(caller, &row.events)?;
    if row.target_url != current_url {
        verify(state, &row.target_url).await?;
    }
    let mut conn = store::conn(&state.pool).await?;
    if check_events {
        check_duplicate(&mut conn, caller, &row, Some(uuid)).await?;
    }
    let hook = store::update(&mut conn, &caller.owner, uuid, &row)
        .await?
        .ok_or_else(|| not_found(id))?;
    drop(conn);
    take_effect(state, uuid, Some(&hook), &caller.owner);
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
    let current = store::get(&mut conn, &caller.owner, uuid)
        .await?
        .ok_or_else(|| not_found(&id))?;
    in_scope(&caller, &current.events)?;
    if !store::delete(&mut conn, &caller.owner, uuid).await? {
        return Err(not_found(&id));
    }
    drop(conn);
    take_effect(&state, uuid, None, &caller.owner);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/hooks/unsubscribe` `{"target_url"}`: deletes the caller's subscriptions to that
/// URL; 200 `{"deleted": [ids]}`, or 404 when there are none, or 403 (deleting nothing) when
/// one of them has patterns outside the token's scopes.
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
    let (caller, url) = (&caller, &url);
    let deleted = conn
        .transaction::<_, ApiError, _>(async move |conn| {
            {
                let deleted = store::delete_by_url(conn, &caller.owner, url).await?;
                for (_, events) in &deleted {
                    // Rolls the delete back.
                    in_scope(caller, events)?;
                }
                Ok(deleted)
            }
        })
        .await?;
    drop(conn);
    if deleted.is_empty() {
        return Err(ApiError::NotFound(format!("no subscription to {url}")));
    }
    let ids: Vec<Uuid> = deleted.into_iter().map(|(id, _)| id).collect();
    for id in &ids {
        take_effect(&state, *id, None, &caller.owner);
    }
    Ok(Json(json!({"deleted": ids})))
}
