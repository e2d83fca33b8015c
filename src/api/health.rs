//! `/healthz` (the process answers), `/readyz` (capture is streaming, retained WAL within
//! `capture.max_retained_wal`; the body names this instance's role, e.g. `standby`) and
//! `/metrics`
//! (Prometheus text format). None needs a token.

use std::fmt::Write;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use super::store;
use crate::capture::Role;

/// Liveness: 200 while the process serves requests.
pub async fn live() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: 200 while capture streams and retained WAL is within
/// `capture.max_retained_wal`, else 503 with the reason; `role` names what this instance's
/// capture does (`starting`, `streaming`, `standby`, `reconnecting`). A standby serves the
/// API and retries but is not ready: readiness means "this instance streams".
pub async fn ready(State(state): State<Arc<ApiState>>) -> (StatusCode, Json<Value>) {
    let role = state.capture.role();
    if let Some(reason) = state.wal_alarm.reason() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "role": role.as_str(), "reason": reason})),
        );
    }
    match role {
        Role::Streaming => (
            StatusCode::OK,
            Json(json!({"status": "ready", "role": role.as_str()})),
        ),
        Role::Standby => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not ready",
                "role": role.as_str(),
                "reason": "another instance streams; this one serves the API and retries, and takes over when it stops"
            })),
        ),
        Role::Starting | Role::Reconnecting => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "not ready", "role": role.as_str(), "reason": "capture is not streaming"}),
            ),
        ),
    }
}

/// Prometheus metrics.
pub async fn metrics(State(state): State<Arc<ApiState>>) -> Result<impl IntoResponse, ApiError> {
    let mut conn = store::conn(&state.pool).await?;
    let g = store::gauges(&mut conn, &state.slot).await?;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(&str, i64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    gauge(
        "walhook_capture_streaming",
        "1 while the replication stream is connected.",
        &[("", i64::from(state.capture.is_streaming()))],
    );
    let role = state.capture.role();
    let roles = [
        Role::Starting,
        Role::Streaming,
        Role::Standby,
        Role::Reconnecting,
    ]
    .map(|r| (format!("{{role=\"{}\"}}", r.as_str()), i64::from(r == role)));
    let roles: Vec<(&str, i64)> = roles.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    gauge(
        "walhook_capture_role",
        "1 for this instance's capture role (streaming, standby, starting, reconnecting).",
        &roles,
    );
    gauge(
        "walhook_acknowledged_lsn",
        "Highest LSN acknowledged to the server (bytes).",
        &[("", state.capture.acknowledged().0 as i64)],
    );
    gauge(
        "walhook_slot_retained_wal_bytes",
        "WAL the replication slot keeps on the server.",
        &[("", g.retained_wal.unwrap_or(0))],
    );
    gauge(
        "walhook_queue_events",
        "Events in the delivery queue table, by status.",
        &[
            ("{status=\"pending\"}", g.pending),
            ("{status=\"dead\"}", g.dead),
        ],
    );
    gauge(
        "walhook_subscriptions",
        "Subscriptions, by state.",
        &[
            ("{state=\"active\"}", g.active),
            ("{state=\"inactive\"}", g.inactive),
        ],
    );
    let backfills = store::backfill_rows(&mut conn).await?;
    let _ = writeln!(
        out,
        "# HELP walhook_backfill_rows_total Rows a backfill has sent (running ones and those finished in the last day).\n# TYPE walhook_backfill_rows_total counter"
    );
    for b in &backfills {
        let _ = writeln!(
            out,
            "walhook_backfill_rows_total{{backfill=\"{}\",table=\"{}\",state=\"{}\"}} {}",
            b.id,
            b.table.replace('\\', "\\\\").replace('"', "\\\""),
            b.state,
            b.rows_sent
        );
    }
    let _ = writeln!(
        out,
        "# HELP walhook_routing_reloads_total Full loads of the routing index (start, NOTIFY walhook_config, periodic).\n# TYPE walhook_routing_reloads_total counter\nwalhook_routing_reloads_total {}",
        state.routing.full_reloads()
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    ))
}
