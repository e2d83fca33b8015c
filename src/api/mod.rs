//! The REST hooks API (SPEC §5): subscriptions as a resource, owned by the caller's token.
//!
//! Served by `walhook run` on `api.listen`, beside capture and delivery, over the same
//! database pool and live routing index. Every write reloads the routing index before it
//! answers, so a subscription created (deleted) by a call receives (stops receiving) events
//! of changes committed after the call returns.
//!
//! Modules: [`auth`] (tokens: create, list, revoke, and the `Caller` extractor), `error` (the
//! JSON error body), `body` (the 64 KiB JSON body extractor), `hooks` (`/v1/hooks`),
//! `catalog` (`/v1/events`), `health` (`/healthz`, `/readyz`, `/metrics`), and `store` (the
//! SQL behind them).

pub mod auth;
mod body;
mod catalog;
mod error;
mod health;
mod hooks;
mod store;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{MethodRouter, get, post};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::capture::Acknowledger;
use crate::delivery::client::Sender;
use crate::delivery::queue::PgPool;
use crate::subscriptions::live::LiveRouting;

pub use error::ApiError;

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
    /// Whether `POST /v1/hooks` verifies intent first.
    pub verify_intent: bool,
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
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown`, then finishes requests in flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
