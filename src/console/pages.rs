//! The console's pages: overview (admin), subscriptions, one subscription, the event
//! catalog and the watched tables (admin). Server-rendered by askama templates
//! (`templates/console/`), which escape every value; the parts marked `data-live` are
//! refreshed every second by `console.js`.
//!
//! Which subscriptions a viewer reaches is decided in one place, [`visible`]: an admin
//! token any (`api::store::get_any`), an owner token its owner's only (`api::store::get`,
//! the REST API's query); another owner's subscription is 404 like in the API.

use std::collections::HashMap;
use std::sync::Arc;

use askama::Template;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use diesel::prelude::*;
use diesel::sql_types::{Integer, Nullable, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use uuid::Uuid;

use super::session::Viewer;
use super::{ConsoleError, ConsoleState};
use crate::api::auth::Caller;
use crate::api::store::{self, Hook, timestamp};
use crate::api::{ApiError, catalog};
use crate::delivery::recent::{self, Recorded};
use crate::ops::human_bytes;
use crate::ops::preflight::Level;
use crate::ops::status::{Status, SubscriptionStatus};

/// Queue rows shown on a subscription's page.
const QUEUE_ROWS: i64 = 50;

/// Subscriptions listed at most.
const LIST_LIMIT: i64 = 500;

/// The subscription `id` if `viewer` may reach it, with its owner; 404 otherwise.
pub(super) async fn visible(
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    id: &str,
) -> Result<(Hook, Option<String>), ApiError> {
    let not_found = || ApiError::NotFound(format!("no subscription {id}"));
    let uuid = Uuid::parse_str(id).map_err(|_| not_found())?;
    let found = if viewer.admin {
        store::get_any(conn, uuid).await?
    } else {
        store::get(conn, &viewer.caller.owner, uuid)
            .await?
            .map(|hook| (hook, Some(viewer.caller.owner.clone())))
    };
    found.ok_or_else(not_found)
}

/// What every page's frame needs.
pub(super) struct Frame {
    pub(super) admin: bool,
    pub(super) owner: String,
    pub(super) csrf: String,
}

impl Frame {
    fn of(viewer: &Viewer) -> Frame {
        Frame {
            admin: viewer.admin,
            owner: viewer.caller.owner.clone(),
            csrf: viewer.csrf.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
struct ErrorPage<'a> {
    status: u16,
    message: &'a str,
}

/// The HTML of an error answer.
pub(super) fn error_page(status: StatusCode, message: &str) -> String {
    ErrorPage {
        status: status.as_u16(),
        message,
    }
    .render()
    .unwrap_or_else(|_| "error".to_owned())
}

fn html(template: impl Template) -> Result<Response, ConsoleError> {
    Ok(Html(template.render()?).into_response())
}

/// `GET /console`: the overview for admins, the subscriptions for owners.
pub async fn home(viewer: Viewer) -> Redirect {
    if viewer.admin {
        Redirect::to("/console/overview")
    } else {
        Redirect::to("/console/subscriptions")
    }
}

/// One failing or disabled subscription on the overview.
struct Trouble {
    id: String,
    target_url: String,
    state: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    frame: Frame,
    status: Arc<Status>,
    retained: String,
    limit: String,
    lag_bytes: String,
    lag_seconds: String,
    warnings: Vec<(&'static str, String, String)>,
    events: super::charts::Chart,
    deliveries: super::charts::Chart,
    trouble: Vec<Trouble>,
}

/// `GET /console/overview` (admin).
pub async fn overview(
    State(state): State<Arc<ConsoleState>>,
    viewer: Viewer,
) -> Result<Response, ConsoleError> {
    if !viewer.admin {
        return Err(ConsoleError::AdminOnly);
    }
    let status = state.status().await?;
    let c = &status.capture;
    let warnings = status
        .checks
        .iter()
        .filter(|check| check.level != Level::Ok)
        .map(|check| {
            (
                check.level.as_str(),
                format!("{}: {}", check.name, check.message),
                check.fix.clone().unwrap_or_default(),
            )
        })
        .collect();
    let trouble = status
        .subscriptions
        .iter()
        .filter(|s| s.failing || !s.active)
        .map(|s| Trouble {
            id: s.id.clone(),
            target_url: s.target_url.clone(),
            state: if s.active { "failing" } else { "disabled" }.to_owned(),
            detail: if s.active {
                s.last_error.clone().unwrap_or_default()
            } else {
                s.disabled_reason.clone().unwrap_or_default()
            },
        })
        .collect();
    let (events, deliveries) = state.history.charts();
    let page = OverviewPage {
        frame: Frame::of(&viewer),
        retained: c.retained_wal_bytes.map_or("-".into(), human_bytes),
        limit: human_bytes(i64::try_from(c.max_retained_wal_bytes).unwrap_or(i64::MAX)),
        lag_bytes: c.lag_bytes.map_or("-".into(), human_bytes),
        lag_seconds: c.lag_seconds.map_or("-".into(), |s| format!("{s:.1} s")),
        warnings,
        events,
        deliveries,
        trouble,
        status: status.clone(),
    };
    html(page)
}

/// One subscription in the list.
struct Row {
    id: String,
    owner: String,
    events: String,
    target_url: String,
    state: &'static str,
    health: Health,
}

/// A subscription's health, from `walhook status`.
#[derive(Default)]
struct Health {
    last_success: String,
    last_error_at: String,
    last_error: String,
    consecutive_failures: i32,
    pending: i64,
    dead: i64,
}

impl Health {
    fn of(status: Option<&SubscriptionStatus>) -> Health {
        status.map_or_else(Health::default, |s| Health {
            last_success: s.last_success_at.clone().unwrap_or_default(),
            last_error_at: s.last_error_at.clone().unwrap_or_default(),
            last_error: s.last_error.clone().unwrap_or_default(),
            consecutive_failures: s.consecutive_failures,
            pending: s.pending,
            dead: s.dead,
        })
    }
}

fn state_of(hook: &Hook, health: &Health) -> &'static str {
    if !hook.active {
        "disabled"
    } else if health.consecutive_failures > 0 {
        "failing"
    } else {
        "healthy"
    }
}

#[derive(Template)]
#[template(path = "console/subscriptions.html")]
struct SubscriptionsPage {
    frame: Frame,
    rows: Vec<Row>,
}

/// `GET /console/subscriptions`: the viewer's subscriptions (an admin's: all) with health.
pub async fn subscriptions(
    State(state): State<Arc<ConsoleState>>,
    viewer: Viewer,
) -> Result<Response, ConsoleError> {
    let mut conn = store::conn(&state.api.pool).await?;
    let hooks: Vec<(Hook, Option<String>)> = if viewer.admin {
        store::all(&mut conn, LIST_LIMIT).await?
    } else {
        store::page(&mut conn, &viewer.caller.owner, None, LIST_LIMIT)
            .await?
            .into_iter()
            .map(|h| (h, Some(viewer.caller.owner.clone())))
            .collect()
    };
    drop(conn);
    let status = state.status().await?;
    let health: HashMap<&str, &SubscriptionStatus> = status
        .subscriptions
        .iter()
        .map(|s| (s.id.as_str(), s))
        .collect();
    let rows = hooks
        .into_iter()
        .map(|(hook, owner)| {
            let id = hook.id.to_string();
            let health = Health::of(health.get(id.as_str()).copied());
            Row {
                state: state_of(&hook, &health),
                owner: owner.unwrap_or_else(|| "(admin)".into()),
                events: hook.events.join(", "),
                target_url: hook.target_url,
                id,
                health,
            }
        })
        .collect();
    html(SubscriptionsPage {
        frame: Frame::of(&viewer),
        rows,
    })
}

/// A queue row: a retry waiting or a dead letter.
#[derive(QueryableByName)]
struct QueueRow {
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    last_error: Option<String>,
    #[diesel(sql_type = Text)]
    next_attempt_at: String,
}

#[derive(Template)]
#[template(path = "console/subscription.html")]
struct SubscriptionPage {
    frame: Frame,
    id: String,
    owner: String,
    events: String,
    target_url: String,
    context: String,
    headers: String,
    filter: String,
    active: bool,
    disabled_reason: String,
    updated_at: String,
    state: &'static str,
    health: Health,
    recent: Vec<Recorded>,
    queue: Vec<QueueRow>,
    dead: usize,
    notice: String,
    secret: String,
}

/// `GET /console/subscriptions/{id}[?notice=…]`.
pub async fn subscription(
    State(state): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ConsoleError> {
    let notice = match query.get("notice").map(String::as_str) {
        Some("saved") => "Settings saved.",
        Some("enabled") => "Subscription enabled.",
        Some("disabled") => "Subscription disabled.",
        Some("redelivered") => "Dead letters queued for redelivery.",
        Some("tested") => "Test event sent: see recent deliveries.",
        _ => "",
    };
    render_subscription(&state, &viewer, &id, notice, "").await
}

/// Renders a subscription's page with a notice, and a new secret to show once.
pub(super) async fn render_subscription(
    state: &ConsoleState,
    viewer: &Viewer,
    id: &str,
    notice: &str,
    secret: &str,
) -> Result<Response, ConsoleError> {
    let mut conn = store::conn(&state.api.pool).await?;
    let (hook, owner) = visible(&mut conn, viewer, id).await?;
    let queue: Vec<QueueRow> = diesel::sql_query(format!(
        "SELECT event_id, event_type, status, attempts, last_error, {} AS next_attempt_at
         FROM walhook.delivery_queue WHERE subscription_id = $1
         ORDER BY status, id DESC LIMIT {QUEUE_ROWS}",
        "to_char(next_attempt_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
    ))
    .bind::<SqlUuid, _>(hook.id)
    .load(&mut conn)
    .await?;
    drop(conn);
    let status = state.status().await?;
    let hook_id = hook.id.to_string();
    let health = Health::of(status.subscriptions.iter().find(|s| s.id == hook_id));
    let page = SubscriptionPage {
        frame: Frame::of(viewer),
        id: hook_id,
        owner: owner.unwrap_or_else(|| "(admin)".into()),
        events: hook.events.join(", "),
        target_url: hook.target_url.clone(),
        context: hook.context.clone().unwrap_or_default(),
        headers: serde_json::to_string(&hook.headers).unwrap_or_default(),
        filter: serde_json::to_string(&hook.filter).unwrap_or_default(),
        active: hook.active,
        disabled_reason: hook.disabled_reason.clone().unwrap_or_default(),
        updated_at: timestamp(&hook.updated_at),
        state: state_of(&hook, &health),
        health,
        recent: recent::log().of(hook.id),
        dead: queue.iter().filter(|q| q.status == "dead").count(),
        queue,
        notice: notice.to_owned(),
        secret: secret.to_owned(),
    };
    html(page)
}

/// `GET /console/subscriptions/{id}/deliveries.json`: the recent deliveries as JSON
/// (`{"data": [...]}`, newest first); another owner's subscription is 404 in the API's
/// error shape.
pub async fn deliveries_json(
    State(state): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut conn = store::conn(&state.api.pool).await?;
    let (hook, _) = visible(&mut conn, &viewer, &id).await?;
    Ok(Json(json!({"data": recent::log().of(hook.id)})))
}

/// One event type in the catalog.
struct EventType {
    name: String,
    table: String,
    columns: Vec<(String, String)>,
    sample: String,
}

#[derive(Template)]
#[template(path = "console/events.html")]
struct EventsPage {
    frame: Frame,
    types: Vec<EventType>,
}

/// A plausible value of a column of PostgreSQL type `ty`, for sample payloads.
fn sample_value(ty: &str) -> Value {
    let ty = ty.to_ascii_lowercase();
    if ty.ends_with("[]") {
        json!([])
    } else if ty.starts_with("int") || ty.contains("serial") || ty == "smallint" || ty == "bigint" {
        json!(1)
    } else if ty.starts_with("numeric") || ty.starts_with("double") || ty == "real" {
        json!(12.5)
    } else if ty == "boolean" {
        json!(true)
    } else if ty.starts_with("timestamp") {
        json!("2026-12-03T10:00:00.000000Z")
    } else if ty == "date" {
        json!("2026-12-03")
    } else if ty == "uuid" {
        json!("00000000-0000-4000-8000-000000000000")
    } else if ty.starts_with("json") {
        json!({})
    } else {
        json!("text")
    }
}

/// `GET /console/events`: the event types the viewer's scopes allow (an admin's: all),
/// from the API's catalog, with their columns and a sample payload.
pub async fn events(
    State(state): State<Arc<ConsoleState>>,
    viewer: Viewer,
) -> Result<Response, ConsoleError> {
    let caller = if viewer.admin {
        Caller {
            owner: viewer.caller.owner.clone(),
            scopes: vec!["*".to_owned()],
        }
    } else {
        viewer.caller.clone()
    };
    let types = catalog::types(&state.api, &caller)
        .await?
        .into_iter()
        .map(|t| {
            let columns: Vec<(String, String)> = t["columns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c["name"].as_str().unwrap_or_default().to_owned(),
                        c["type"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            let data: serde_json::Map<String, Value> = columns
                .iter()
                .map(|(name, ty)| (name.clone(), sample_value(ty)))
                .collect();
            let name = t["type"].as_str().unwrap_or_default().to_owned();
            let table = t["table"].as_str().unwrap_or_default().to_owned();
            let (schema, table_name) = table.split_once('.').unwrap_or(("public", &table));
            let sample = json!({
                "id": "evt_0000000001A2B3C4_0",
                "type": name,
                "timestamp": "2026-12-03T10:00:00.000000Z",
                "data": data,
                "previous": null,
                "changed": null,
                "source": {"schema": schema, "table": table_name, "lsn": "0/1A2B3C4",
                           "xid": 1234, "mode": "replication"},
                "context": null,
            });
            EventType {
                sample: serde_json::to_string_pretty(&sample).unwrap_or_default(),
                name,
                table,
                columns,
            }
        })
        .collect();
    html(EventsPage {
        frame: Frame::of(&viewer),
        types,
    })
}

/// One watched table.
struct Watched {
    table: String,
    noun: String,
    verbs: String,
    columns: String,
}

#[derive(Template)]
#[template(path = "console/tables.html")]
struct TablesPage {
    frame: Frame,
    tables: Vec<Watched>,
    notice: String,
}

/// `GET /console/tables` (admin): the watched tables, watch and unwatch.
pub async fn tables(
    State(state): State<Arc<ConsoleState>>,
    viewer: Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ConsoleError> {
    let notice = query.get("notice").cloned().unwrap_or_default();
    render_tables(&state, &viewer, &notice).await
}

/// Renders the watched tables with a notice.
pub(super) async fn render_tables(
    state: &ConsoleState,
    viewer: &Viewer,
    notice: &str,
) -> Result<Response, ConsoleError> {
    if !viewer.admin {
        return Err(ConsoleError::AdminOnly);
    }
    let mut conn = store::conn(&state.api.pool).await?;
    let listed = store::watched_tables(&mut conn).await?;
    let text = |v: &Value| {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .or_else(|| x["name"].as_str().map(str::to_owned))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tables = listed
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| Watched {
            table: t["table"].as_str().unwrap_or_default().to_owned(),
            noun: t["noun"].as_str().unwrap_or_default().to_owned(),
            verbs: text(&t["verbs"]),
            columns: text(&t["columns"]),
        })
        .collect();
    html(TablesPage {
        frame: Frame::of(viewer),
        tables,
        notice: notice.to_owned(),
    })
}
