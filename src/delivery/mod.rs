//! Delivery: signed HTTP POSTs, at least once, in order per row, isolated per subscription.
//!
//! ```text
//! CaptureMessage ─▶ dispatcher (route per transaction) ─▶ job per (subscription, event)
//!                     │                                    chained per (subscription, row)
//!   ack(end_lsn) ◀── watermark ◀── job done ◀──────────────┤ fast path: POST in memory
//!                                                          ├ slow path: spill (queue table)
//!                                                          └ held past max_hold: spill, the
//!                                                            attempt in flight settles it
//!   queue table ─▶ retrier ─▶ client ─▶ settle (delete / reschedule / dead letter)
//! ```
//!
//! Stages: [`dispatcher`] (transactions → jobs, stopping at a transaction boundary),
//! [`batch`] (jobs of subscriptions with `batch_max` ≥ 2 gathered into one request),
//! [`job`] (one event to one subscription: wait for its row's predecessor, a slot, the
//! attempt), [`lanes`] (where jobs run: a live event's in a task of its own, backfilled
//! ones in a few bulk lanes that keep them from crowding the run queues), [`spill`] (into
//! the queue table, and the in-memory marks that keep later events of a row behind it),
//! [`retrier`] (due rows of the table), [`watermark`] (which transactions may be
//! acknowledged), [`client`] ([`guard`] + [`signing`]; HTTP/1.1 on the socket for cleartext
//! targets, reqwest for the others), whose outcome [`retry`] judges.
//! A subscription whose endpoint cannot be reached has its [`breaker`] opened: its events
//! queue without attempts until the next probe.
//!
//! Guarantees:
//! - A transaction's end LSN is acknowledged only when every job of it, and of every earlier
//!   transaction, is done: delivered (2xx) or durably written to the queue table. The fast
//!   path writes nothing to the database.
//! - No job stays in memory longer than `max_hold` (plus one queue write): then it is
//!   written to the queue table, so a slow endpoint never holds the slot back.
//! - Jobs of one (subscription, row) form a chain: each waits for its predecessor. If the
//!   predecessor was not delivered in memory (it failed, or was held and queued), the job is
//!   queued too, behind it; the retrier serves queued rows oldest first per row.
//! - Each subscription has its own concurrency limit; a subscription with more than
//!   `max_waiting` jobs in memory gets new ones queued instead, so a slow endpoint costs
//!   neither memory nor other subscriptions' latency.

mod batch;
pub mod breaker;
pub mod client;
mod direct;
mod dispatcher;
pub mod guard;
mod job;
mod lanes;
pub mod queue;
pub mod recent;
mod retrier;
pub mod retry;
pub mod signing;
mod spill;
mod watermark;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use breaker::Breaker;
use client::Sender;
use queue::Queue;
use retry::{Outcome, RetryPolicy};

use crate::ops::Rates;
use crate::subscriptions::live::LiveRouting;

pub use spill::MAX_QUEUED_ROWS_TRACKED;

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
    /// Longest a job stays only in memory before it is written to the queue table.
    pub max_hold: Duration,
    /// Retry schedule.
    pub retry: RetryPolicy,
    /// Disable a subscription failing without success for this long.
    pub disable_after: Duration,
    /// How often the retrier looks for due rows when idle.
    pub retry_poll: Duration,
    /// `delivery.proxy`: send through this proxy (environment proxies are ignored).
    pub proxy: Option<String>,
}

/// A (subscription, row) pair: the unit of ordering.
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

/// Per subscription limits.
struct SubState {
    /// Requests in flight (shared with the batch gatherer, which hands permits to batches).
    permits: Arc<Semaphore>,
    /// The subscription's batch gatherer, started by its first batched job.
    batcher: OnceLock<mpsc::UnboundedSender<batch::Member>>,
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

/// What an attempt's outcome means for its event, once health and breaker are updated.
enum Verdict {
    /// 2xx: done.
    Delivered,
    /// Try again after `delay`.
    Retry { delay: Duration, error: String },
    /// Never again: a dead letter.
    Dead { error: String },
}

/// Delivery state shared by the dispatcher, its jobs and the retrier.
pub struct Delivery {
    config: DeliveryConfig,
    sender: Sender,
    queue: Queue,
    keys: Mutex<HashMap<Key, KeyState>>,
    subs: Mutex<HashMap<Uuid, Arc<SubState>>>,
    draining: CancellationToken,
    /// Attempts still in flight whose jobs were already queued (past `max_hold`): a stop
    /// waits for them, so each settles its queued row instead of leaving it to be re-sent.
    held_in_flight: AtomicUsize,
    /// The live routing index, for subscriptions deactivated here.
    routing: LiveRouting,
    /// Events routed and deliveries made, for the heartbeat's rates.
    rates: Arc<Rates>,
    /// Jobs in memory, for producers that yield to live events (backfills).
    load: Arc<Load>,
}

/// How many jobs delivery holds in memory, kept by the dispatcher, so that a producer of
/// bulk events (a backfill's released rows) can wait until delivery is nearly idle rather
/// than fill its budget ahead of live events.
#[derive(Default)]
pub struct Load {
    outstanding: AtomicUsize,
    eased: tokio::sync::Notify,
}

impl Load {
    /// At or below this many jobs in memory delivery counts as eased.
    pub const EASED: usize = 64;

    /// Jobs in memory now.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Waits until at most [`Self::EASED`] jobs are in memory.
    pub async fn eased(&self) {
        crate::change::notified_until(&self.eased, || self.outstanding() <= Self::EASED).await;
    }

    /// The dispatcher's count changed to `n`.
    fn set(&self, n: usize) {
        let before = self.outstanding.swap(n, Ordering::AcqRel);
        if n <= Self::EASED && before > Self::EASED {
            self.eased.notify_waiters();
        }
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Delivery {
    /// Delivery over `queue`; rows already pending in the table make their rows wait.
    /// Subscriptions it deactivates (410, `disable_after`) leave `routing` at once.
    pub async fn new(
        config: DeliveryConfig,
        queue: Queue,
        routing: LiveRouting,
    ) -> Result<Arc<Delivery>, queue::QueueError> {
        let pending = queue.pending_keys(MAX_QUEUED_ROWS_TRACKED).await?;
        let delivery = Arc::new(Delivery {
            sender: Sender::new(
                config.timeout,
                config.allow_private_targets,
                config.proxy.as_deref(),
            )?,
            config,
            queue,
            keys: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            draining: CancellationToken::new(),
            held_in_flight: AtomicUsize::new(0),
            routing,
            rates: Arc::default(),
            load: Arc::default(),
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

    /// The counters of events routed and successful deliveries (for `walhook status`).
    pub fn rates(&self) -> Arc<Rates> {
        self.rates.clone()
    }

    /// How many jobs it holds in memory (for the backfill stage's pacing).
    pub fn load(&self) -> Arc<Load> {
        self.load.clone()
    }

    fn sub(&self, id: Uuid) -> Arc<SubState> {
        locked(&self.subs)
            .entry(id)
            .or_insert_with(|| {
                Arc::new(SubState {
                    permits: Arc::new(Semaphore::new(self.config.max_in_flight.max(1))),
                    batcher: OnceLock::new(),
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

    /// Records what the `attempts`-th attempt of an event came to — the recent-deliveries
    /// log, health statistics, breaker, deactivation on 410 — and says what becomes of the
    /// event.
    async fn judge(
        &self,
        sub: &SubState,
        id: Uuid,
        attempts: u32,
        outcome: Outcome,
        attempt: recent::Attempt<'_>,
    ) -> Verdict {
        recent::log().record(id, &attempt, attempts, &outcome);
        let retry = &self.config.retry;
        let verdict = |delay: Option<Duration>, error: String| match delay {
            Some(delay) => Verdict::Retry { delay, error },
            None => Verdict::Dead { error },
        };
        // The database writes below are rare (a change of health, a failure): boxed, so
        // that every job's future does not carry their size.
        match outcome {
            Outcome::Delivered => {
                self.rates.delivered();
                if sub.failing.swap(false, Ordering::AcqRel) {
                    sub.breaker.close();
                    self.logged(Box::pin(self.queue.record_success(id)).await);
                }
                Verdict::Delivered
            }
            Outcome::Gone => {
                tracing::warn!(subscription = %id, "target answered 410 Gone; deactivating the subscription");
                // Out of routing before the write, so that no transaction begun once it is
                // visible is routed here; and again after it, over any full load that read
                // the row still active in between.
                self.routing.apply(id, None);
                let deactivated =
                    Box::pin(self.queue.deactivate(id, "target answered 410 Gone")).await;
                if deactivated.is_ok() {
                    self.routing.apply(id, None);
                }
                self.logged(deactivated);
                Verdict::Dead {
                    error: "HTTP 410 Gone".into(),
                }
            }
            Outcome::Failed { error, retry_after } => {
                Box::pin(self.failure(sub, id, &error)).await;
                verdict(retry.next_delay(attempts, retry_after), error)
            }
            Outcome::Unreachable { error } => {
                let (open_for, opened) = sub.breaker.trip(&error, retry);
                if opened {
                    if attempts == 1 {
                        tracing::warn!(subscription = %id, error = %error, "endpoint unreachable; holding its events for {open_for:?}");
                    }
                    Box::pin(self.failure(sub, id, &error)).await;
                }
                // A first attempt is due when the breaker probes; later ones keep their
                // own (longer) step of the schedule.
                let delay = retry.next_delay(attempts, None).map(|d| {
                    if attempts == 1 {
                        open_for
                    } else {
                        d.max(open_for)
                    }
                });
                verdict(delay, error)
            }
        }
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
            self.routing.apply(id, None);
        }
        self.logged(disabled.map(|_| ()));
    }

    fn logged<E: std::fmt::Display>(&self, result: Result<(), E>) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "recording delivery health failed");
        }
    }
}
