//! The live routing index: reloaded from the database within a second of any change.
//!
//! Triggers on `walhook.subscriptions` and `walhook.watched_tables` send
//! `NOTIFY walhook_config`; a dedicated LISTEN session wakes the reloader, which rebuilds the
//! [`RoutingIndex`] and publishes it through a `watch` channel (readers take an `Arc`
//! snapshot per event, never a lock across an await). NOTIFY is only a wake-up: the index is
//! also rebuilt after every (re)connect and every `refresh` interval, so a missed
//! notification loses nothing.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::poll_fn;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::routing::RoutingIndex;
use super::store::{self, StoreError};

/// The channel the config triggers notify.
pub const CHANNEL: &str = "walhook_config";

/// A handle on the current routing index.
#[derive(Clone)]
pub struct LiveRouting {
    current: watch::Receiver<Arc<RoutingIndex>>,
}

impl LiveRouting {
    /// The index now (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<RoutingIndex> {
        self.current.borrow().clone()
    }

    /// Waits until the next reload is published.
    pub async fn changed(&mut self) -> bool {
        self.current.changed().await.is_ok()
    }

    /// Loads the index once, then keeps it current until `cancel`.
    pub async fn start(
        database_url: String,
        refresh: Duration,
        cancel: CancellationToken,
    ) -> Result<LiveRouting, StoreError> {
        let mut conn = store::connect(&database_url).await?;
        let (tables, subs) = store::load_routing(&mut conn).await?;
        let (tx, current) = watch::channel(Arc::new(RoutingIndex::build(tables, subs)));
        tokio::spawn(reload_forever(database_url, refresh, tx, cancel));
        Ok(LiveRouting { current })
    }
}

async fn reload_forever(
    url: String,
    refresh: Duration,
    tx: watch::Sender<Arc<RoutingIndex>>,
    cancel: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        match listen_and_reload(&url, refresh, &tx, &cancel).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?delay, "routing reload interrupted");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One LISTEN session: reload now, then on every notification and every `refresh`.
async fn listen_and_reload(
    url: &str,
    refresh: Duration,
    tx: &watch::Sender<Arc<RoutingIndex>>,
    cancel: &CancellationToken,
) -> Result<(), StoreError> {
    let (client, mut connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| StoreError::Listen(e.to_string()))?;
    let (wake_tx, mut wake) = mpsc::channel::<()>(1);
    let driver = tokio::spawn(async move {
        let mut messages = poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    let _ = wake_tx.try_send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|e| StoreError::Listen(e.to_string()))?;
        let mut conn = store::connect(url).await?;
        let mut ticker = tokio::time::interval(refresh);
        loop {
            let (tables, subs) = store::load_routing(&mut conn).await?;
            tx.send_replace(Arc::new(RoutingIndex::build(tables, subs)));
            tokio::select! {
                woke = wake.recv() => if woke.is_none() {
                    return Err(StoreError::Listen("LISTEN session closed".into()));
                },
                _ = ticker.tick() => {}
                _ = cancel.cancelled() => return Ok(()),
            }
        }
    }
    .await;
    driver.abort();
    result
}
