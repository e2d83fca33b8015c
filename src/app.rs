//! `walhook run`: wires capture → route → deliver → acknowledge and shuts down cleanly.
//!
//! Start: migrate, watch the tables named in the config, bind the API's address (a busy port
//! fails fast), load the live routing index, start capture — replication (its publication
//! gets every watched table) or trigger (outbox), completing a mode switch first when the
//! configured mode differs from the installation's (see [`crate::switch`]) — then the REST
//! API, the dispatcher and the retrier. The API stops taking
//! requests when shutdown begins. The preflight checks ([`crate::ops::preflight`]) are
//! logged before capture starts; the heartbeat ([`crate::ops::heartbeat`]) writes this
//! instance's row until the end and deletes it last.
//! Shutdown (SIGTERM/SIGINT or a definite capture error): the dispatcher stops taking changes,
//! queues jobs not yet sent, lets requests in flight finish, acknowledges the final
//! watermark (the backfill worker stops with it); then capture sends its last status update and closes; then the retrier stops.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::backfill;
use crate::capture::{self, CaptureError, outbox};
use crate::config::{CaptureMode, Config, ConfigError};
use crate::console;
use crate::database::DatabaseError;
use crate::delivery::Delivery;
use crate::delivery::client::{Sender, SenderError};
use crate::delivery::queue::{self, Queue, QueueError};
use crate::ops::{self, preflight};
use crate::subscriptions::live::LiveRouting;
use crate::subscriptions::store::{self, StoreError};
use crate::switch::{self, Drain, SwitchError};

/// Longest wait of delivery (queue writes, retries, health) for a pooled connection; past
/// it the operation fails and is retried by its caller rather than hanging.
const DELIVERY_POOL_WAIT: Duration = Duration::from_secs(10);

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
    /// The delivery HTTP client could not be built.
    #[error(transparent)]
    Sender(#[from] SenderError),
    /// The database cannot be reached, or its pool built.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// Capture stopped with a definite error.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// A capture-mode switch failed.
    #[error(transparent)]
    Switch(#[from] SwitchError),
    /// The API could not listen.
    #[error("api.listen {addr}: cannot listen: {source}")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A task panicked.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Logs the preflight checks for the configured mode (a failure to read them is a warning:
/// start-up goes on, and capture reports its own errors).
async fn preflight_at_start(
    config: &Config,
    database: &crate::database::Database,
    max_retained_wal: u64,
) {
    let settings = preflight::Settings {
        mode: config.capture.mode,
        slot: config.capture.slot.clone(),
        publication: config.capture.publication.clone(),
        max_retained_wal,
    };
    let facts = match database.client().await {
        Ok(client) => preflight::gather(&client, &settings).await,
        Err(e) => Err(e.into()),
    };
    match facts {
        Ok(facts) => preflight::log(&preflight::judge(
            &facts,
            &settings,
            preflight::Context::Start,
        )),
        Err(e) => tracing::warn!(error = %e, "preflight checks could not be read"),
    }
}

/// Runs the daemon until `shutdown` (or a definite capture error).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let database = config.database()?;
    let delivery_config = config.delivery_config()?;
    // Built first: a client that cannot be built (TLS, proxy) stops start-up here.
    let sender = Sender::new(
        delivery_config.timeout,
        delivery_config.allow_private_targets,
        delivery_config.proxy.as_deref(),
    )?;
    let dead_letter_retention = config.dead_letter_retention()?;
    let mut capture_config = config.capture_config(database.clone())?;
    store::migrate(
        &database,
        &config.capture.publication,
        config.delivery.allow_private_targets,
    )
    .await?;
    let mut conn = store::connect(&database).await?;
    store::watch_tables(&mut conn, &config.tables).await?;
    drop(conn);
    let max_retained_wal = config.max_retained_wal()?;
    let wal_alarm = ops::WalAlarm::default();
    let listener = if config.api.enabled {
        let addr = config.api.listen;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Listen { addr, source })?;
        Some(listener)
    } else {
        None
    };

    let background = CancellationToken::new();
    let routing =
        LiveRouting::start(database.clone(), Duration::from_secs(5), background.clone()).await?;
    let pool = database.pool(16, Some(DELIVERY_POOL_WAIT))?;
    let drain = Drain {
        config: delivery_config.clone(),
        pool: pool.clone(),
        routing: routing.clone(),
    };
    let client = switch::connect(&capture_config.database).await?;
    let capture_cancel = CancellationToken::new();
    capture_config.tables = routing.snapshot().watched_tables();
    let capture = match config.capture.mode {
        CaptureMode::Replication => {
            let slot = capture_config.slot.clone();
            let capture = capture::start(capture_config, capture_cancel.clone())?;
            switch::to_replication(
                capture,
                &slot,
                config.outbox_config(database.clone())?,
                &drain,
                &client,
            )
            .await?
        }
        CaptureMode::Trigger => {
            switch::to_trigger(capture_config, &drain, &client).await?;
            outbox::start(
                config.outbox_config(database.clone())?,
                capture_cancel.clone(),
            )
        }
    };
    drop(client);
    // After the switch: in trigger mode it is what installs the capture triggers.
    preflight_at_start(&config, &database, max_retained_wal).await;
    let api_pool = database.pool(
        config.api.pool_size,
        Some(Duration::from_millis(config.api.pool_wait_ms)),
    )?;
    let history = Arc::new(console::charts::History::default());
    let api_task = listener.map(|listener| {
        let state = Arc::new(ApiState {
            pool: api_pool,
            routing: routing.clone(),
            capture: capture.ack.clone(),
            slot: config.capture.slot.clone(),
            sender: sender.clone(),
            verify_intent: config.api.verify_intent,
            max_subscriptions_per_owner: config.api.max_subscriptions_per_owner,
            limiter: api::RateLimiter::new(config.api.rate_limit_per_minute),
            request_timeout: Duration::from_millis(config.api.request_timeout_ms),
            wal_alarm: wal_alarm.clone(),
        });
        let listening = api::Listening {
            header_timeout: Duration::from_millis(config.api.header_timeout_ms),
            max_connections: config.api.max_connections,
        };
        tracing::info!(listen = %config.api.listen, "REST API listening");
        let mut router = api::router(state.clone());
        if config.api.console {
            let console = console::ConsoleState::new(
                state,
                config.clone(),
                max_retained_wal,
                history.clone(),
            );
            router = router.merge(console::router(Arc::new(console)));
        }
        tokio::spawn(api::serve(listener, router, listening, shutdown.clone()))
    });
    let purge = tokio::spawn(queue::purge_dead_letters(
        Queue::new(pool.clone()),
        dead_letter_retention,
        Duration::from_secs(3600),
        background.clone(),
    ));
    let delivery = Delivery::new(delivery_config, Queue::new(pool), routing.clone()).await?;
    let retrier = tokio::spawn(delivery.clone().run_retries(background.clone()));
    tokio::spawn(console::charts::sample(
        history,
        delivery.rates(),
        background.clone(),
    ));
    let heartbeat_stop = CancellationToken::new();
    let heartbeat = tokio::spawn(
        ops::heartbeat::Heartbeat {
            database: database.clone(),
            interval: config.heartbeat_interval()?,
            capture_mode: config.capture.mode,
            slot: config.capture.slot.clone(),
            max_retained_wal,
            ack: capture.ack.clone(),
            rates: delivery.rates(),
            wal_alarm,
        }
        .run(heartbeat_stop.clone()),
    );
    let ack = capture.ack.clone();
    // Backfills: the stage interleaves their chunks with the stream; the worker reads them.
    let (changes, stage) = backfill::interleave(
        capture.changes,
        config.capture.channel_capacity,
        delivery.load(),
        config.backfill.max_rows_per_second,
    );
    let backfill_worker = tokio::spawn(
        backfill::Worker::new(
            backfill::WorkerConfig {
                database: database.clone(),
                chunk_size: config.backfill_chunk_size()?,
                max_rows_per_second: config.backfill.max_rows_per_second,
                trigger: config.capture.mode == CaptureMode::Trigger,
            },
            capture.ack.clone(),
            stage,
        )
        .run(shutdown.clone()),
    );
    let dispatcher = tokio::spawn(delivery.run(changes, ack, routing, shutdown.clone()));
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
    backfill_worker
        .await
        .map_err(|e| AppError::Task(e.to_string()))?;
    capture_cancel.cancel();
    let captured = match ended {
        Some(result) => result,
        None => task.await,
    };
    background.cancel();
    heartbeat_stop.cancel();
    heartbeat.await.map_err(|e| AppError::Task(e.to_string()))?;
    retrier.await.map_err(|e| AppError::Task(e.to_string()))?;
    purge.await.map_err(|e| AppError::Task(e.to_string()))?;
    if let Some(api_task) = api_task {
        match api_task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "REST API stopped with an error"),
            Err(e) => return Err(AppError::Task(e.to_string())),
        }
    }
    captured.map_err(|e| AppError::Task(e.to_string()))??;
    tracing::info!("stopped");
    Ok(())
}
