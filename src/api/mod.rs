//! The REST hooks API (SPEC §5): subscriptions as a resource, owned by the caller's token.
//!
//! Served by `walhook run` on `api.listen`, beside capture and delivery, over its own small
//! database pool (`api.pool_size`, waits bounded by `api.pool_wait_ms`), so no load on the
//! API can take the connections delivery and acknowledgement need. Every write puts the one
//! subscription it wrote into the live routing index before it answers (no full reload), so
//! a subscription created (deleted) by a call receives (stops receiving) events of changes
//! committed after the call returns.
//!
//! Abuse limits: a connection cap (`api.max_connections`), a header-read timeout
//! (`api.header_timeout_ms`: a client that never finishes its headers is disconnected), a
//! per-request timeout (`api.request_timeout_ms`, 503), a per-token request rate
//! (`api.rate_limit_per_minute`, 429), and a subscription count per owner
//! (`api.max_subscriptions_per_owner`, 409). Intent verification (an outbound request to the
//! target) runs while the request holds no database connection.
//!
//! Modules: [`auth`] (tokens: create, list, revoke, and the `Caller` extractor), `error` (the
//! JSON error body), `body` (the 64 KiB JSON body extractor), `hooks` (`/v1/hooks`),
//! `catalog` (`/v1/events`), `health` (`/healthz`, `/readyz`, `/metrics`), `limit` (the
//! per-token rate) and `store` (the SQL behind them).

pub mod auth;
mod backfill;
mod body;
pub(crate) mod catalog;
mod error;
mod health;
pub(crate) mod hooks;
mod limit;
pub(crate) mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::capture::Acknowledger;
use crate::delivery::client::Sender;
use crate::delivery::queue::PgPool;
use crate::subscriptions::live::LiveRouting;

pub use error::ApiError;
pub use limit::RateLimiter;

/// Largest request body accepted (64 KiB); larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the handlers share.
pub struct ApiState {
    /// walhook's database.
    pub pool: PgPool,
    /// The live routing index (reloaded after every write).
    pub routing: LiveRouting,
    /// Capture's acknowledgement state: readiness and the acknowledged LSN.
    pub capture: Acknowledger,
    /// The replication slot, for `/metrics`.
    pub slot: String,
    /// Sends intent-verification requests (same SSRF rules as delivery).
    pub sender: Sender,
    /// Whether `POST /v1/hooks` (and a PUT/PATCH changing `target_url`) verifies intent first.
    pub verify_intent: bool,
    /// Most subscriptions one owner may hold.
    pub max_subscriptions_per_owner: u64,
    /// Per-token request rate.
    pub limiter: RateLimiter,
    /// Longest time one request may take.
    pub request_timeout: Duration,
    /// Raised while the slot retains more WAL than `capture.max_retained_wal` (`/readyz` 503).
    pub wal_alarm: crate::ops::WalAlarm,
}

/// How the listener treats connections.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    /// A client must send a request's headers within this time, or is disconnected.
    pub header_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

/// Every route: its path and its handlers by method. The router is built from this list
/// alone, so [`paths`] is exactly what it serves (a test holds it and `docs/openapi.yaml`
/// together, methods included).
fn routes() -> Vec<(&'static str, MethodRouter<Arc<ApiState>>)> {
    vec![
        ("/v1/hooks", post(hooks::create).get(hooks::list)),
        (
            "/v1/hooks/{id}",
            get(hooks::show)
                .put(hooks::replace)
                .patch(hooks::update)
                .delete(hooks::remove),
        ),
        ("/v1/hooks/unsubscribe", post(hooks::unsubscribe)),
        (
            "/v1/hooks/{id}/backfill",
            post(backfill::start).get(backfill::list),
        ),
        ("/v1/events", get(catalog::list)),
        ("/healthz", get(health::live)),
        ("/readyz", get(health::ready)),
        ("/metrics", get(health::metrics)),
    ]
}

/// The paths the router serves.
pub fn paths() -> Vec<&'static str> {
    routes().into_iter().map(|(path, _)| path).collect()
}

/// The API's router.
pub fn router(state: Arc<ApiState>) -> Router {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        })
        .fallback(error::no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .with_state(state)
}

/// Answers 503 for a request still running after `api.request_timeout_ms` (dropping it
/// cancels whatever it awaited: a verification, a pool wait, a query).
pub(crate) async fn time_limit(
    State(state): State<Arc<ApiState>>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let ms = u64::try_from(state.request_timeout.as_millis()).unwrap_or(u64::MAX);
            ApiError::TimedOut(ms).into_response()
        }
    }
}

/// Serves `router` on `listener` until `shutdown`, then finishes requests in flight.
///
/// HTTP/1.1 through hyper directly (rather than `axum::serve`) for the header-read timeout;
/// a semaphore of `max_connections` permits caps the connections served at once: accepting
/// waits for a permit, so excess clients wait in the kernel's backlog. At shutdown the
/// listener closes, idle connections close, busy ones finish their request; `serve` returns
/// once every permit is back.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    listening: Listening,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let max = listening
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Per-connection errors (reset before accept, out of descriptors): keep going.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(listening.header_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "API connection ended");
                    }
                }
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "API connection ended");
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    Ok(())
}
