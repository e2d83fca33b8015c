//! The dispatcher: captured transactions → routed deliveries → acknowledged LSNs.
//!
//! ```text
//! CaptureMessage ─▶ route (snapshot per transaction) ─▶ Job per (subscription, event)
//!                                                        │ chained per (subscription, row)
//!     ack(end_lsn) ◀── watermark ◀── completions ◀───────┤ fast path: POST in memory
//!                                                        └ slow path: spill to the queue table
//! ```
//!
//! Guarantees:
//! - A transaction's end LSN is acknowledged only when every job of it, and of every earlier
//!   transaction, finished: delivered (2xx) or durably written to the queue table. The fast
//!   path writes nothing to the database.
//! - Jobs of one (subscription, row) form a chain: each waits for its predecessor. If the
//!   predecessor was not delivered in memory (it failed and was queued), the job is queued
//!   too, behind it; the retrier serves queued rows oldest first per row.
//! - Each subscription has its own concurrency limit; a subscription with more than
//!   `max_waiting` jobs in memory gets new ones queued instead, so a slow endpoint costs
//!   neither memory nor other subscriptions' latency.
//! - A subscription whose endpoint cannot be reached has its [`Breaker`] opened: its new
//!   jobs are queued without an attempt until the breaker's probe time.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::breaker::{Breaker, Open};
use super::client::{Message, Sender};
use super::queue::{Claimed, Enqueue, Queue};
use super::retry::{Outcome, RetryPolicy};
use crate::capture::Acknowledger;
use crate::change::CaptureMessage;
use crate::events::Event;
use crate::lsn::Lsn;
use crate::subscriptions::live::LiveRouting;
use crate::subscriptions::routing::Route;

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Per-request timeout.
    pub timeout: Duration,
    /// Allow loopback/private targets.
    pub allow_private_targets: bool,
    /// Concurrent requests per subscription.
    pub max_in_flight: usize,
    /// Jobs a subscription may hold in memory before new ones are queued in the table.
    pub max_waiting: usize,
    /// Jobs in memory overall before the capture stream is paused.
    pub max_outstanding: usize,
    /// Retry schedule.
    pub retry: RetryPolicy,
    /// Disable a subscription failing without success for this long.
    pub disable_after: Duration,
    /// How often the retrier looks for due rows when idle.
    pub retry_poll: Duration,
}

type Key = (Uuid, Arc<str>);

/// Per (subscription, row) chain state.
#[derive(Default)]
struct KeyState {
    /// Completion of the newest job: `true` if it was delivered in memory.
    tail: Option<oneshot::Receiver<bool>>,
    /// Jobs of this key in memory.
    in_memory: usize,
    /// The table holds (or may hold) pending rows of this key: new jobs queue behind them.
    spilled: bool,
    /// Bumped on every spill, so the retrier can tell whether one happened meanwhile.
    generation: u64,
}

/// Rows of one subscription tracked one by one as queued; beyond, the whole subscription is
/// (memory stays bounded however many rows wait behind a dead endpoint).
pub const MAX_QUEUED_ROWS_TRACKED: usize = 10_000;

/// Per subscription limits.
struct SubState {
    permits: Semaphore,
    in_memory: AtomicUsize,
    failing: AtomicBool,
    breaker: Breaker,
    /// Rows marked queued (`KeyState::spilled`) in `keys`.
    queued_rows: AtomicUsize,
    /// Too many queued rows to track: every new job of the subscription queues behind them.
    all_queued: AtomicBool,
    /// Spills started and not yet committed.
    spilling: AtomicUsize,
    /// Bumped when a spill starts, so the retrier can tell whether one happened meanwhile.
    spills: AtomicU64,
}

/// One delivery in memory.
struct Job {
    route: Arc<Route>,
    event: Arc<Event>,
    key: Key,
    prev: Option<oneshot::Receiver<bool>>,
    done: oneshot::Sender<bool>,
    queue_only: bool,
    tx: u64,
}

/// How a job goes into the queue table.
struct Queued<'a> {
    attempts: i32,
    delay: Duration,
    error: Option<&'a str>,
    dead: bool,
}

impl Queued<'_> {
    /// Not attempted yet, due at once (behind its row's queued events).
    const WAITING: Queued<'static> = Queued {
        attempts: 0,
        delay: Duration::ZERO,
        error: None,
        dead: false,
    };

    /// Not attempted: the subscription's breaker is open; due when it closes.
    fn held(open: &Open) -> Queued<'_> {
        Queued {
            attempts: 0,
            delay: open.remaining,
            error: Some(&open.error),
            dead: false,
        }
    }
}

/// Where a transaction stands in the acknowledgement watermark.
enum TxEnd {
    Open,
    Committed(Lsn),
    /// Cut off by a reconnect; the server sends it again.
    Abandoned,
}

struct TxEntry {
    id: u64,
    end: TxEnd,
    outstanding: usize,
}

/// Delivery state shared by the dispatcher, its jobs and the retrier.
pub struct Delivery {
    config: DeliveryConfig,
    sender: Sender,
    queue: Queue,
    keys: Mutex<HashMap<Key, KeyState>>,
    subs: Mutex<HashMap<Uuid, Arc<SubState>>>,
    draining: CancellationToken,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Delivery {
    /// Delivery over `queue`; rows already pending in the table make their rows wait.
    pub async fn new(
        config: DeliveryConfig,
        queue: Queue,
    ) -> Result<Arc<Delivery>, super::queue::QueueError> {
        let pending = queue.pending_keys(MAX_QUEUED_ROWS_TRACKED).await?;
        let delivery = Arc::new(Delivery {
            sender: Sender::new(config.timeout, config.allow_private_targets),
            config,
            queue,
            keys: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            draining: CancellationToken::new(),
        });
        for (sub, key) in pending {
            let state = delivery.sub(sub);
            match key {
                Some(key) => {
                    state.queued_rows.fetch_add(1, Ordering::AcqRel);
                    let queued = KeyState {
                        spilled: true,
                        ..KeyState::default()
                    };
                    locked(&delivery.keys).insert((sub, Arc::from(key.as_str())), queued);
                }
                None => state.all_queued.store(true, Ordering::Release),
            }
        }
        Ok(delivery)
    }

    fn sub(&self, id: Uuid) -> Arc<SubState> {
        locked(&self.subs)
            .entry(id)
            .or_insert_with(|| {
                Arc::new(SubState {
                    permits: Semaphore::new(self.config.max_in_flight.max(1)),
                    in_memory: AtomicUsize::new(0),
                    // Unknown at start: the first success records itself (once).
                    failing: AtomicBool::new(true),
                    breaker: Breaker::default(),
                    queued_rows: AtomicUsize::new(0),
                    all_queued: AtomicBool::new(false),
                    spilling: AtomicUsize::new(0),
                    spills: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// Consumes the capture stream until `stop`, acknowledging what is safe. On `stop`, jobs
    /// not yet sent are queued, sends in flight finish, and the final watermark is
    /// acknowledged before returning.
    pub async fn run(
        self: Arc<Self>,
        mut changes: mpsc::Receiver<CaptureMessage>,
        ack: Acknowledger,
        routing: LiveRouting,
        stop: CancellationToken,
    ) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
        let mut txs: VecDeque<TxEntry> = VecDeque::new();
        let mut next_tx = 0u64;
        let mut outstanding = 0usize;
        let mut snapshot = routing.snapshot();
        let mut closed = false;
        loop {
            let stopping = stop.is_cancelled() || closed;
            if stopping {
                self.draining.cancel();
                if outstanding == 0 {
                    break;
                }
            }
            let intake = !stopping && outstanding < self.config.max_outstanding;
            tokio::select! {
                biased;
                Some(id) = done_rx.recv() => {
                    outstanding -= 1;
                    let front = txs.front().map_or(0, |t| t.id);
                    if let Some(entry) = txs.get_mut((id - front) as usize) {
                        entry.outstanding -= 1;
                    }
                    advance(&mut txs, &ack);
                }
                message = changes.recv(), if intake => match message {
                    None => closed = true,
                    Some(CaptureMessage::Begin(_)) => {
                        if let Some(last) = txs.back_mut().filter(|t| matches!(t.end, TxEnd::Open)) {
                            last.end = TxEnd::Abandoned;
                        }
                        txs.push_back(TxEntry { id: next_tx, end: TxEnd::Open, outstanding: 0 });
                        next_tx += 1;
                        snapshot = routing.snapshot();
                    }
                    Some(CaptureMessage::Change(change)) => {
                        let Some(entry) = txs.back_mut() else { continue };
                        let Some(watch) = snapshot.watch_table(&change.table) else { continue };
                        let Some(event) = Event::from_change(change, watch) else { continue };
                        let event = Arc::new(event);
                        let now = chrono::Utc::now().timestamp_micros();
                        for route in snapshot.route(&event, now) {
                            let job = self.chain(route.clone(), event.clone(), entry.id, outstanding);
                            entry.outstanding += 1;
                            outstanding += 1;
                            tokio::spawn(self.clone().run_job(job, routing.clone(), done_tx.clone()));
                        }
                    }
                    Some(CaptureMessage::Commit(commit)) => {
                        if let Some(entry) = txs.back_mut() {
                            entry.end = TxEnd::Committed(commit.end_lsn);
                        }
                        advance(&mut txs, &ack);
                    }
                },
                _ = stop.cancelled(), if !stopping => {}
            }
        }
        advance(&mut txs, &ack);
    }

    /// Creates the next job of its (subscription, row) chain. A subscription is overloaded —
    /// its new jobs wait in the table — when it holds `max_waiting` jobs in memory, the memory
    /// budget is half used, and it holds most of it: then it is what keeps the others waiting.
    /// Otherwise a full budget pauses the stream (backpressure) and nothing is written.
    fn chain(&self, route: Arc<Route>, event: Arc<Event>, tx: u64, outstanding: usize) -> Job {
        let id = route.subscription.id;
        let sub = self.sub(id);
        let mine = sub.in_memory.fetch_add(1, Ordering::AcqRel);
        let others = outstanding.saturating_sub(mine);
        let overloaded = mine >= self.config.max_waiting
            && outstanding >= self.config.max_outstanding / 2
            && others > 0
            && mine > others;
        let key: Key = (id, Arc::from(event.row_key.as_str()));
        let (done, rx) = oneshot::channel();
        let mut keys = locked(&self.keys);
        let state = keys.entry(key.clone()).or_default();
        let prev = state.tail.replace(rx);
        state.in_memory += 1;
        let queue_only = state.spilled || overloaded || sub.all_queued.load(Ordering::Acquire);
        Job {
            route,
            event,
            key,
            prev,
            done,
            queue_only,
            tx,
        }
    }

    async fn run_job(
        self: Arc<Self>,
        mut job: Job,
        routing: LiveRouting,
        completions: mpsc::UnboundedSender<u64>,
    ) {
        let sub_id = job.route.subscription.id;
        let sub = self.sub(sub_id);
        let prev_delivered = match job.prev.take() {
            Some(rx) => rx.await.unwrap_or(false),
            None => true,
        };
        let body = job.event.body(job.route.subscription.context.as_deref());
        // Waiting for a slot of a slow subscription must not hold up a shutdown.
        let skip = !prev_delivered || job.queue_only || sub.breaker.open().is_some();
        let permit = if skip || self.draining.is_cancelled() {
            None
        } else {
            tokio::select! {
                permit = sub.permits.acquire() => permit.ok(),
                _ = self.draining.cancelled() => None,
            }
        };
        // Deleted or deactivated since routing: nothing more is sent to it.
        let unsubscribed = || routing.snapshot().subscription(sub_id).is_none();
        // Checked after the wait for a slot: a concurrent attempt may have opened it.
        let open = sub.breaker.open();
        let delivered = match permit {
            _ if unsubscribed() => {
                tracing::debug!(subscription = %sub_id, event = %job.event.id, "dropped: no longer subscribed");
                true
            }
            _ if let Some(open) = open => {
                self.spill(&job, &body, Queued::held(&open)).await;
                false
            }
            Some(permit) if !self.draining.is_cancelled() => {
                let message = Message {
                    target: &job.route.target,
                    id: &job.event.id,
                    body: body.clone(),
                };
                let outcome = self.sender.send(&message).await;
                drop(permit);
                self.first_attempt(&job, &sub, &body, outcome).await
            }
            _ => {
                self.spill(&job, &body, Queued::WAITING).await;
                false
            }
        };
        sub.in_memory.fetch_sub(1, Ordering::AcqRel);
        {
            let mut keys = locked(&self.keys);
            if let Some(state) = keys.get_mut(&job.key) {
                state.in_memory -= 1;
                if state.in_memory == 0 && !state.spilled {
                    keys.remove(&job.key);
                }
            }
        }
        let _ = job.done.send(delivered);
        let _ = completions.send(job.tx);
    }

    /// Settles the in-memory attempt; `true` when delivered.
    async fn first_attempt(
        &self,
        job: &Job,
        sub: &SubState,
        body: &[u8],
        outcome: Outcome,
    ) -> bool {
        let id = job.route.subscription.id;
        match outcome {
            Outcome::Delivered => {
                if sub.failing.swap(false, Ordering::AcqRel) {
                    sub.breaker.close();
                    self.logged(self.queue.record_success(id).await);
                }
                true
            }
            Outcome::Unreachable { error } => {
                let (open_for, opened) = sub.breaker.trip(&error, &self.config.retry);
                if opened {
                    tracing::warn!(subscription = %id, error = %error, "endpoint unreachable; holding its events for {open_for:?}");
                    self.failure(sub, id, &error).await;
                }
                let queued = Queued {
                    attempts: 1,
                    delay: open_for,
                    error: Some(&error),
                    dead: self.config.retry.next_delay(1, None).is_none(),
                };
                self.spill(job, body, queued).await;
                false
            }
            Outcome::Gone => {
                self.gone(id).await;
                let queued = Queued {
                    attempts: 1,
                    delay: Duration::ZERO,
                    error: Some("HTTP 410 Gone"),
                    dead: true,
                };
                self.spill(job, body, queued).await;
                false
            }
            Outcome::Failed { error, retry_after } => {
                self.failure(sub, id, &error).await;
                let delay = self.config.retry.next_delay(1, retry_after);
                let queued = Queued {
                    attempts: 1,
                    delay: delay.unwrap_or_default(),
                    error: Some(&error),
                    dead: delay.is_none(),
                };
                self.spill(job, body, queued).await;
                false
            }
        }
    }

    async fn gone(&self, id: Uuid) {
        tracing::warn!(subscription = %id, "target answered 410 Gone; deactivating the subscription");
        self.logged(self.queue.deactivate(id, "target answered 410 Gone").await);
    }

    /// Records a failure in the health statistics; the next success records itself.
    async fn failure(&self, sub: &SubState, id: Uuid, error: &str) {
        sub.failing.store(true, Ordering::Release);
        let disabled = self
            .queue
            .record_failure(id, error, self.config.disable_after)
            .await;
        if let Ok(true) = disabled {
            tracing::warn!(subscription = %id, "disabled: failing without success for disable_after");
        }
        self.logged(disabled.map(|_| ()));
    }

    fn logged<E: std::fmt::Display>(&self, result: Result<(), E>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "recording delivery health failed");
        }
    }

    /// Writes a job to the queue table, retrying until it is durable (its transaction is not
    /// acknowledged before), and marks its row as queued.
    async fn spill(&self, job: &Job, body: &[u8], queued: Queued<'_>) {
        let (route, event) = (&job.route, &job.event);
        let sub = self.sub(route.subscription.id);
        sub.spilling.fetch_add(1, Ordering::AcqRel);
        sub.spills.fetch_add(1, Ordering::AcqRel);
        self.mark_queued(&sub, &job.key, !queued.dead);
        // Bodies are serde_json output: always UTF-8, so this borrows.
        let body = String::from_utf8_lossy(body);
        let row = Enqueue {
            subscription_id: route.subscription.id,
            event_id: &event.id,
            event_type: &event.event_type,
            row_key: &event.row_key,
            body: &body,
            attempts: queued.attempts,
            delay: queued.delay,
            last_error: queued.error,
            dead: queued.dead,
        };
        let mut wait = Duration::from_millis(100);
        while let Err(e) = self.queue.enqueue(&row).await {
            tracing::error!(error = %e, event = %event.id, "cannot queue event; retrying (its LSN stays unacknowledged)");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
        sub.spilling.fetch_sub(1, Ordering::AcqRel);
    }

    /// Marks a job's row as having queued events (`pending`), so its later events queue
    /// behind. Past [`MAX_QUEUED_ROWS_TRACKED`] rows, the subscription is marked as a whole
    /// and its per-row marks are dropped.
    fn mark_queued(&self, sub: &SubState, key: &Key, pending: bool) {
        let mut keys = locked(&self.keys);
        if sub.all_queued.load(Ordering::Acquire) {
            return;
        }
        let state = keys.entry(key.clone()).or_default();
        state.generation += 1;
        if !pending || state.spilled {
            return;
        }
        state.spilled = true;
        if sub.queued_rows.fetch_add(1, Ordering::AcqRel) + 1 > MAX_QUEUED_ROWS_TRACKED {
            sub.all_queued.store(true, Ordering::Release);
            sub.queued_rows.store(0, Ordering::Release);
            keys.retain(|(id, _), state| {
                if *id != key.0 {
                    return true;
                }
                state.spilled = false;
                state.in_memory > 0
            });
        }
    }

    /// Serves due rows of the queue table until `stop`.
    pub async fn run_retries(self: Arc<Self>, routing: LiveRouting, stop: CancellationToken) {
        let lease = self.config.timeout + Duration::from_secs(30);
        let mut running = tokio::task::JoinSet::new();
        while !stop.is_cancelled() {
            while running.try_join_next().is_some() {}
            let claimed = if running.len() < 256 {
                self.queue.claim_due(64, lease).await
            } else {
                Ok(Vec::new())
            };
            match claimed {
                Ok(rows) if !rows.is_empty() => {
                    for row in rows {
                        running.spawn(self.clone().retry_row(row, routing.clone(), stop.clone()));
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "claiming due deliveries failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.retry_poll) => {}
                _ = stop.cancelled() => {}
            }
        }
        while running.join_next().await.is_some() {}
    }

    async fn retry_row(
        self: Arc<Self>,
        row: Claimed,
        routing: LiveRouting,
        stop: CancellationToken,
    ) {
        let sub = self.sub(row.subscription_id);
        let spills = sub.spills.load(Ordering::Acquire);
        let key: Key = (row.subscription_id, Arc::from(row.row_key.as_str()));
        let generation = {
            let keys = locked(&self.keys);
            match keys.get(&key) {
                Some(state) if state.in_memory > 0 => None,
                Some(state) => Some(state.generation),
                None => Some(0),
            }
        };
        let Some(generation) = generation else {
            // Its row still has jobs in memory; they queue behind this one. Try again soon.
            self.logged(self.queue.release(row.id, Duration::from_millis(200)).await);
            return;
        };
        let attempts = row.attempts + 1;
        let snapshot = routing.snapshot();
        let result = match snapshot.subscription(row.subscription_id) {
            None => {
                self.queue
                    .failed(
                        row.id,
                        attempts - 1,
                        None,
                        "subscription inactive, expired or deleted",
                    )
                    .await
            }
            Some(route) => {
                if let Some(open) = sub.breaker.open() {
                    // Not attempted while the endpoint is known unreachable.
                    self.logged(self.queue.release(row.id, open.remaining).await);
                    return;
                }
                let permit = tokio::select! {
                    permit = sub.permits.acquire() => permit.ok(),
                    _ = stop.cancelled() => None,
                };
                if permit.is_none() {
                    // Shutting down: hand the row back for the next run (or another daemon).
                    self.logged(self.queue.release(row.id, Duration::ZERO).await);
                    return;
                }
                let message = Message {
                    target: &route.target,
                    id: &row.event_id,
                    body: row.body.into(),
                };
                let outcome = self.sender.send(&message).await;
                drop(permit);
                match outcome {
                    Outcome::Delivered => {
                        if sub.failing.swap(false, Ordering::AcqRel) {
                            sub.breaker.close();
                            self.logged(self.queue.record_success(row.subscription_id).await);
                        }
                        self.queue.delete(row.id).await
                    }
                    Outcome::Gone => {
                        self.gone(row.subscription_id).await;
                        self.queue
                            .failed(row.id, attempts, None, "HTTP 410 Gone")
                            .await
                    }
                    Outcome::Failed { error, retry_after } => {
                        self.failure(&sub, row.subscription_id, &error).await;
                        let delay = self.config.retry.next_delay(attempts as u32, retry_after);
                        self.queue.failed(row.id, attempts, delay, &error).await
                    }
                    Outcome::Unreachable { error } => {
                        let (open_for, opened) = sub.breaker.trip(&error, &self.config.retry);
                        if opened {
                            self.failure(&sub, row.subscription_id, &error).await;
                        }
                        let delay = self.config.retry.next_delay(attempts as u32, None);
                        let delay = delay.map(|d| d.max(open_for));
                        self.queue.failed(row.id, attempts, delay, &error).await
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "updating a queued delivery failed; its lease expires and it is retried");
            return;
        }
        // When the row has nothing left in the table, new jobs may go in memory again (rows
        // of a subscription marked as a whole have no marks of their own).
        if !sub.all_queued.load(Ordering::Acquire)
            && let Ok(0) = self
                .queue
                .pending_for(row.subscription_id, &row.row_key)
                .await
        {
            let mut keys = locked(&self.keys);
            if keys
                .get(&key)
                .is_some_and(|s| s.in_memory == 0 && s.generation == generation)
                && keys.remove(&key).is_some_and(|s| s.spilled)
            {
                sub.queued_rows.fetch_sub(1, Ordering::AcqRel);
            }
        }
        // A subscription marked as a whole returns to the fast path once nothing of it is
        // queued and no spill started or is still being written meanwhile.
        let quiet = |sub: &SubState| {
            sub.spilling.load(Ordering::Acquire) == 0
                && sub.spills.load(Ordering::Acquire) == spills
        };
        if sub.all_queued.load(Ordering::Acquire)
            && quiet(&sub)
            && let Ok(false) = self.queue.any_pending(row.subscription_id).await
            && quiet(&sub)
        {
            sub.all_queued.store(false, Ordering::Release);
        }
    }
}

/// Acknowledges the longest finished prefix of transactions.
fn advance(txs: &mut VecDeque<TxEntry>, ack: &Acknowledger) {
    while let Some(front) = txs.front() {
        match front.end {
            TxEnd::Committed(lsn) if front.outstanding == 0 => ack.acknowledge(lsn),
            TxEnd::Abandoned if front.outstanding == 0 => {}
            _ => return,
        }
        txs.pop_front();
    }
}
