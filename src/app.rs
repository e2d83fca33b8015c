//! `walhook run`: wires capture → route → deliver → acknowledge and shuts down cleanly.
//!
//! Start: migrate, watch the tables named in the config, load the live routing index, start
//! capture (its publication gets every watched table), the dispatcher and the retrier.
//! Shutdown (SIGTERM/SIGINT or a definite capture error): the dispatcher stops taking changes,
//! queues jobs not yet sent, lets requests in flight finish, acknowledges the final
//! watermark; then capture sends its last status update and closes; then the retrier stops.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::capture::{self, CaptureError};
use crate::config::{Config, ConfigError};
use crate::delivery::Delivery;
use crate::delivery::queue::{self, Queue, QueueError};
use crate::subscriptions::live::LiveRouting;
use crate::subscriptions::store::{self, StoreError};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// walhook's schema could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The delivery queue is unusable.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Capture stopped with a definite error.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// A task panicked.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Runs the daemon until `shutdown` (or a definite capture error).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let url = config.database_url.clone();
    let delivery_config = config.delivery_config()?;
    let mut capture_config = config.capture_config()?;
    store::migrate(
        &url,
        &config.capture.publication,
        config.delivery.allow_private_targets,
    )
    .await?;
    let mut conn = store::connect(&url).await?;
    let tables: Vec<String> = config.tables.iter().map(|t| t.name.clone()).collect();
    store::watch_tables(&mut conn, &tables).await?;
    drop(conn);

    let background = CancellationToken::new();
    let routing =
        LiveRouting::start(url.clone(), Duration::from_secs(5), background.clone()).await?;
    capture_config.tables = routing.snapshot().watched_tables();
    let capture_cancel = CancellationToken::new();
    let capture = capture::start(capture_config, capture_cancel.clone())?;
    let delivery = Delivery::new(delivery_config, Queue::new(queue::pool(&url, 16)?)).await?;
    let retrier = tokio::spawn(
        delivery
            .clone()
            .run_retries(routing.clone(), background.clone()),
    );
    let ack = capture.ack.clone();
    let dispatcher = tokio::spawn(delivery.run(capture.changes, ack, routing, shutdown.clone()));
    tracing::info!("walhook running");

    let mut task = capture.task;
    let ended = tokio::select! {
        result = &mut task => Some(result),
        _ = shutdown.cancelled() => None,
    };
    tracing::info!("stopping: draining deliveries");
    shutdown.cancel();
    dispatcher
        .await
        .map_err(|e| AppError::Task(e.to_string()))?;
    capture_cancel.cancel();
    let captured = match ended {
        Some(result) => result,
        None => task.await,
    };
    background.cancel();
    retrier.await.map_err(|e| AppError::Task(e.to_string()))?;
    captured.map_err(|e| AppError::Task(e.to_string()))??;
    tracing::info!("stopped");
    Ok(())
}
