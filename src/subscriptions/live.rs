//! The live routing index: reloaded from the database within a second of any change.
//!
//! Triggers on `walhook.subscriptions` and `walhook.watched_tables` send
//! `NOTIFY walhook_config`; a dedicated LISTEN session wakes the reloader, which rebuilds the
//! [`RoutingIndex`] and publishes it through a `watch` channel (readers take an `Arc`
//! snapshot per event, never a lock across an await). NOTIFY is only a wake-up: the index is
//! also rebuilt after every (re)connect and every `refresh` interval, so a missed
//! notification loses nothing.
//!
//! Beside it, a reconciler calls `walhook.reconcile_watches()` every second: watches of
//! dropped tables are removed, renamed tables' watches follow them, partitions attached to
//! a watched table get `REPLICA IDENTITY FULL`.
//!
//! A writer that must see its own change take effect (the REST API, before it answers) calls
//! [`LiveRouting::apply`] with the one subscription it wrote (no query: the current index
//! with that route replaced), or [`LiveRouting::reload`]. Loads and applies are numbered when
//! they start, and an index is published only if no later-started one was published first,
//! so a reload that starts after a commit leaves an index that includes it. (A full load
//! started before an apply is dropped; the writer's own NOTIFY starts a later one.)
//!
//! Any role may `NOTIFY walhook_config`, so notifications are coalesced: full reloads by the
//! LISTEN session start at least [`MIN_RELOAD_INTERVAL`] apart however many arrive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use futures_util::StreamExt;
use futures_util::stream::poll_fn;
use tokio::sync::{mpsc, watch};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::routing::RoutingIndex;
use super::store::{self, StoreError, Subscription};
use crate::database::Database;

/// The channel the config triggers notify.
pub const CHANNEL: &str = "walhook_config";

/// How often watches are brought in step with DDL on the watched tables (dropped, renamed,
/// partitions attached): see [`store::reconcile_watches`]. Its changes to
/// `walhook.watched_tables` notify [`CHANNEL`], so the index follows at once.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// Shortest time between the starts of two reloads woken by notifications.
pub const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(250);

/// A handle on the current routing index.
#[derive(Clone)]
pub struct LiveRouting {
    current: watch::Receiver<Arc<RoutingIndex>>,
    publisher: Arc<Publisher>,
}

/// Publishes indexes in the order their loads started.
struct Publisher {
    tx: watch::Sender<Arc<RoutingIndex>>,
    started: AtomicU64,
    published: Mutex<u64>,
    /// Full loads run (for `/metrics`).
    loads: AtomicU64,
}

impl Publisher {
    async fn load(&self, conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
        let number = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        self.loads.fetch_add(1, Ordering::Relaxed);
        let (tables, subs) = store::load_routing(conn).await?;
        let index = Arc::new(RoutingIndex::build(tables, subs));
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if number > *published {
            *published = number;
            self.tx.send_replace(index);
        }
        Ok(())
    }
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

    /// Reloads now over `conn` and returns once an index at least that recent is current:
    /// changes committed before the call are then in effect.
    pub async fn reload(&self, conn: &mut AsyncPgConnection) -> Result<(), StoreError> {
        self.publisher.load(conn).await
    }

    /// Puts one subscription's committed state into the index at once, without a query:
    /// `Some` replaces (or adds) its route, `None` removes it. Call it with the row as
    /// written (routing keeps only active, unexpired subscriptions: pass `None` otherwise).
    pub fn apply(&self, id: uuid::Uuid, subscription: Option<Subscription>) {
        let publisher = &self.publisher;
        let mut published = publisher
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let number = publisher.started.fetch_add(1, Ordering::SeqCst) + 1;
        let index = Arc::new(publisher.tx.borrow().with(id, subscription));
        *published = number;
        publisher.tx.send_replace(index);
    }

    /// Full loads of the index so far (at start, on notifications, periodic, by `reload`).
    pub fn full_reloads(&self) -> u64 {
        self.publisher.loads.load(Ordering::Relaxed)
    }

    /// Loads the index once, then keeps it current until `cancel`.
    pub async fn start(
        database: Database,
        refresh: Duration,
        cancel: CancellationToken,
    ) -> Result<LiveRouting, StoreError> {
        let (tx, current) = watch::channel(Arc::new(RoutingIndex::build(Vec::new(), Vec::new())));
        let publisher = Arc::new(Publisher {
            tx,
            started: AtomicU64::new(0),
            published: Mutex::new(0),
            loads: AtomicU64::new(0),
        });
        let mut conn = store::connect(&database).await?;
        if let Err(e) = store::reconcile_watches(&mut conn).await {
            tracing::warn!(error = %e, "cannot bring watches in step with the tables");
        }
        publisher.load(&mut conn).await?;
        tokio::spawn(reconcile_forever(
            database.clone(),
            RECONCILE_EVERY,
            cancel.clone(),
        ));
        tokio::spawn(reload_forever(database, refresh, publisher.clone(), cancel));
        Ok(LiveRouting { current, publisher })
    }
}

async fn reload_forever(
    database: Database,
    refresh: Duration,
    publisher: Arc<Publisher>,
    cancel: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        match listen_and_reload(&database, refresh, &publisher, &cancel).await {
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
    database: &Database,
    refresh: Duration,
    publisher: &Publisher,
    cancel: &CancellationToken,
) -> Result<(), StoreError> {
    let (client, mut connection) = database
        .connect()
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
        let mut conn = store::connect(database).await?;
        let mut ticker = tokio::time::interval(refresh);
        let mut last: Option<tokio::time::Instant> = None;
        loop {
            // Notifications arriving meanwhile collapse into the one pending wake-up.
            if let Some(last) = last {
                tokio::select! {
                    _ = tokio::time::sleep_until(last + MIN_RELOAD_INTERVAL) => {}
                    _ = cancel.cancelled() => return Ok(()),
                }
            }
            last = Some(tokio::time::Instant::now());
            publisher.load(&mut conn).await?;
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

/// Calls [`store::reconcile_watches`] every `every` until `cancel`, reconnecting after errors.
async fn reconcile_forever(database: Database, every: Duration, cancel: CancellationToken) {
    let mut conn = None;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = cancel.cancelled() => return,
        }
        if conn.is_none() {
            match store::connect(&database).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "watch reconciliation: cannot connect");
                    continue;
                }
            }
        }
        if let Some(c) = conn.as_mut()
            && let Err(e) = store::reconcile_watches(c).await
        {
            tracing::warn!(error = %e, "watch reconciliation failed");
            conn = None;
        }
    }
}
