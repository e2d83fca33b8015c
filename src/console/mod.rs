//! The browser console at `/console`, served by `walhook run` on the API listener.
//!
//! ```text
//!  browser ── GET page ──▶ session::Viewer (cookie → walhook.console_sessions → api_tokens)
//!    │                       ├─ admin token: every subscription (api::store::get_any/all)
//!    │                       └─ owner token: api::store::get/page + api::hooks::in_scope,
//!    │                          the same owner-scoped code as the REST API
//!    │  ◀── HTML (askama templates, auto-escaped) + /console/assets (CSS, JS, embedded)
//!    ├─ every second: GET the same page, swap its [data-live] parts (console.js)
//!    └─ POST form (csrf field = the session's CSRF token, checked in session::Action)
//!         ─▶ the API's write paths (api::hooks, walhook.redeliver, walhook.watch)
//! ```
//!
//! Data: the overview is `walhook status` ([`crate::ops::status`]) read on the console's
//! own session (cached for a second), plus the hour of rates [`charts`] samples every 10 s;
//! recent deliveries are [`crate::delivery::recent`], failures the queue table.
//!
//! Security: the token is typed into a form (never in a URL) and exchanged for a random
//! session id in an `HttpOnly`, `SameSite=Strict` cookie (`Secure` with
//! `api.console_secure_cookie`); only hashes of session ids and login codes are stored; every
//! state change is a POST carrying the session's CSRF token; every answer has a strict
//! Content-Security-Policy (`script-src 'self'`, no inline script or style), `nosniff`,
//! `frame-ancestors 'none'` and `no-store`.
//!
//! Modules: [`session`] (login, logout, one-time links, the `Viewer` and `Action`
//! extractors), `pages` (the HTML pages), `actions` (the POSTs), [`charts`] (rate history
//! and its SVG), `assets` (CSS and JS).

mod actions;
mod assets;
pub mod charts;
mod pages;
pub mod session;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

use crate::api::{ApiError, ApiState};
use crate::config::Config;
use crate::ops::OpsError;
use crate::ops::status::Status;

/// The Content-Security-Policy of every console answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// How long an overview read is reused.
const STATUS_FRESH: Duration = Duration::from_secs(1);

/// Why a console request failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The API layer refused or failed (not found, scope, validation, database).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Operations data could not be read.
    #[error("reading the status failed: {0}")]
    Ops(#[from] OpsError),
    /// A query failed.
    #[error("query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// A page could not be rendered.
    #[error("rendering failed: {0}")]
    Render(#[from] askama::Error),
    /// The page is for admin tokens.
    #[error("this page is for admin tokens")]
    AdminOnly,
    /// A state-changing request without the session's CSRF token.
    #[error("missing or wrong CSRF token: reload the page and try again")]
    Csrf,
    /// Bad form input.
    #[error("{0}")]
    Invalid(String),
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            ConsoleError::Api(e) => e.status(),
            ConsoleError::AdminOnly | ConsoleError::Csrf => StatusCode::FORBIDDEN,
            ConsoleError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if status.is_server_error() {
            tracing::error!(error = %self, "console request failed");
            "internal error; see the daemon's log".to_owned()
        } else {
            self.to_string()
        };
        (status, Html(pages::error_page(status, &message))).into_response()
    }
}

/// What the console's handlers share.
pub struct ConsoleState {
    /// The API's state: pool, routing, sender, limits.
    pub api: Arc<ApiState>,
    /// The daemon's configuration (for the overview's status read).
    pub config: Config,
    /// `capture.max_retained_wal` in bytes.
    pub max_retained_wal: u64,
    /// Mark the session cookie `Secure`.
    pub secure_cookie: bool,
    /// How long a session lasts.
    pub session_ttl: Duration,
    /// The rates of the last hour.
    pub history: Arc<charts::History>,
    /// The console's own session for status reads, and the last read.
    status: tokio::sync::Mutex<StatusCache>,
}

#[derive(Default)]
struct StatusCache {
    client: Option<tokio_postgres::Client>,
    last: Option<(Instant, Arc<Status>)>,
}

impl ConsoleState {
    /// The console's state over the API's.
    pub fn new(
        api: Arc<ApiState>,
        config: Config,
        max_retained_wal: u64,
        history: Arc<charts::History>,
    ) -> ConsoleState {
        ConsoleState {
            api,
            secure_cookie: config.api.console_secure_cookie,
            session_ttl: Duration::from_secs(config.api.console_session_minutes.max(1) * 60),
            config,
            max_retained_wal,
            history,
            status: tokio::sync::Mutex::default(),
        }
    }

    /// `walhook status` as of at most [`STATUS_FRESH`] ago, read on the console's session
    /// (reopened after an error).
    async fn status(&self) -> Result<Arc<Status>, ConsoleError> {
        let mut cache = self.status.lock().await;
        if let Some((at, status)) = &cache.last
            && at.elapsed() < STATUS_FRESH
        {
            return Ok(status.clone());
        }
        if cache.client.as_ref().is_none_or(|c| c.is_closed()) {
            let database = self
                .config
                .database()
                .map_err(|e| ConsoleError::Invalid(e.to_string()))?;
            cache.client = Some(database.client().await.map_err(OpsError::from)?);
        }
        let Some(client) = cache.client.as_ref() else {
            return Err(ConsoleError::Invalid("no database session".into()));
        };
        match crate::ops::status::read(client, &self.config, self.max_retained_wal).await {
            Ok(status) => {
                let status = Arc::new(status);
                cache.last = Some((Instant::now(), status.clone()));
                Ok(status)
            }
            Err(e) => {
                cache.client = None;
                Err(e.into())
            }
        }
    }
}

/// The console's routes, under `/console`.
pub fn router(state: Arc<ConsoleState>) -> Router {
    Router::new()
        .route("/console", get(pages::home))
        .route("/console/", get(pages::home))
        .route(
            "/console/login",
            get(session::login_page).post(session::login),
        )
        .route("/console/logout", post(session::logout))
        .route("/console/overview", get(pages::overview))
        .route("/console/subscriptions", get(pages::subscriptions))
        .route("/console/subscriptions/{id}", get(pages::subscription))
        .route(
            "/console/subscriptions/{id}/deliveries.json",
            get(pages::deliveries_json),
        )
        .route("/console/subscriptions/{id}/edit", post(actions::edit))
        .route("/console/subscriptions/{id}/active", post(actions::active))
        .route("/console/subscriptions/{id}/rotate", post(actions::rotate))
        .route(
            "/console/subscriptions/{id}/redeliver",
            post(actions::redeliver),
        )
        .route("/console/subscriptions/{id}/test", post(actions::test))
        .route("/console/events", get(pages::events))
        .route("/console/tables", get(pages::tables))
        .route("/console/tables/watch", post(actions::watch))
        .route("/console/tables/unwatch", post(actions::unwatch))
        .route("/console/assets/console.css", get(assets::css))
        .route("/console/assets/console.js", get(assets::js))
        .layer(DefaultBodyLimit::max(crate::api::MAX_BODY_BYTES))
        // The API's bound on one request (`api.request_timeout_ms`), then the headers.
        .layer(middleware::from_fn_with_state(
            state.api.clone(),
            crate::api::time_limit,
        ))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// Adds the CSP and the other protective headers to every console answer.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
