//! One event on its way to one subscription, in memory.
//!
//! A job waits for its row's predecessor, then for a slot of its subscription, then makes
//! the first attempt. It is *done* — its transaction may be acknowledged, its row's next job
//! may go — when it was delivered or written to the queue table. Whatever the endpoint does,
//! that happens within `max_hold` of the job's creation: a job still waiting for a slot then
//! is queued as not attempted; one whose attempt is still in flight is queued as in flight
//! (not due before the attempt surely ended), and the attempt, when it ends, settles the
//! queued row like a retry would.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};

use super::batch::batching;
use super::client::Message;
use super::queue::RowRef;
use super::recent::Attempt;
use super::spill::Queued;
use super::{Delivery, Key, SubState, Verdict};
use crate::events::Event;
use crate::subscriptions::routing::Route;

/// Tries to settle the queued row of an attempt that outlived the hold (~30 s in all).
const SETTLE_TRIES: u32 = 10;

/// One delivery in memory.
pub(super) struct Job {
    pub(super) route: Arc<Route>,
    /// The state of its subscription.
    pub(super) sub: Arc<SubState>,
    pub(super) event: Arc<Event>,
    pub(super) key: Key,
    /// The predecessor's completion: `true` if it was delivered in memory.
    pub(super) prev: Option<oneshot::Receiver<bool>>,
    pub(super) queue_only: bool,
    /// When it must be done at the latest (created + `max_hold`).
    pub(super) deadline: Instant,
}

/// How a job tells its row's next job and the watermark that it is done — once.
pub(super) struct Done {
    next: Option<oneshot::Sender<bool>>,
    tx: u64,
    sub: Arc<SubState>,
    completions: mpsc::UnboundedSender<Completed>,
}

/// A job's completion as the dispatcher takes it: its transaction, and its subscription,
/// whose count of jobs in memory the dispatcher lowers (so that count and the dispatcher's
/// own total always agree, see `Delivery::chain`).
pub(super) type Completed = (u64, Arc<SubState>);

impl Done {
    /// For a job of transaction `tx` and subscription `sub` whose successor listens on
    /// `next`.
    pub(super) fn new(
        next: oneshot::Sender<bool>,
        tx: u64,
        sub: Arc<SubState>,
        completions: mpsc::UnboundedSender<Completed>,
    ) -> Done {
        Done {
            next: Some(next),
            tx,
            sub,
            completions,
        }
    }

    /// Says it (again is a no-op): `delivered` in memory, or queued.
    fn finish(&mut self, delivered: bool) {
        if let Some(next) = self.next.take() {
            let _ = next.send(delivered);
            let _ = self.completions.send((self.tx, self.sub.clone()));
        }
    }
}

impl Delivery {
    /// Runs a job to done, then lets its in-memory attempt (if one outlived the hold) end.
    /// Its rare paths (batching, spills, settling a held attempt) are boxed: the future is
    /// copied into its task at every spawn, and it is as large as its largest path.
    pub(super) async fn run_job(self: Arc<Self>, mut job: Job, mut done: Done) {
        let sub_id = job.route.subscription.id;
        let sub = job.sub.clone();
        let prev_delivered = match job.prev.take() {
            Some(rx) => rx.await.unwrap_or(false),
            None => true,
        };
        let body = job.event.body(job.route.subscription.context.as_deref());
        // Waiting for a slot of a slow subscription must hold up neither a shutdown nor,
        // past the hold bound, the acknowledgement.
        let skip = !prev_delivered || job.queue_only || sub.breaker.open().is_some();
        if !skip && !self.draining.is_cancelled() && batching(&job.route).is_some() {
            // Its batch takes the slot, makes the attempt and queues it if need be.
            let delivered = Box::pin(self.batched(&job, &sub, body)).await;
            done.finish(delivered);
            self.forget_job(&job.key);
            return;
        }
        let permit = if skip || self.draining.is_cancelled() {
            None
        } else if let Ok(permit) = sub.permits.try_acquire() {
            // A free slot: no timer, no wait.
            Some(permit)
        } else {
            tokio::select! {
                permit = sub.permits.acquire() => permit.ok(),
                _ = self.draining.cancelled() => None,
                _ = sleep_until(job.deadline) => None,
            }
        };
        // Deleted or deactivated since routing: nothing more is sent to it.
        let unsubscribed = || self.routing.snapshot().subscription(sub_id).is_none();
        // Checked after the wait for a slot: a concurrent attempt may have opened it.
        let open = sub.breaker.open();
        let mut held = None;
        match permit {
            _ if unsubscribed() => {
                tracing::debug!(subscription = %sub_id, event = %job.event.id, "dropped: no longer subscribed");
                done.finish(true);
            }
            _ if let Some(open) = open => {
                Box::pin(self.spill(&job, &body, Queued::held(&open))).await;
                done.finish(false);
            }
            Some(permit) if !self.draining.is_cancelled() => {
                let message = Message {
                    target: &job.route.target,
                    id: &job.event.id,
                    body: body.clone(),
                };
                let started = Instant::now();
                let send = self.sender.send(&message);
                tokio::pin!(send);
                let outcome = tokio::select! {
                    outcome = &mut send => Some(outcome),
                    _ = sleep_until(job.deadline) => None,
                };
                let delivered = match outcome {
                    Some(outcome) => {
                        drop(permit);
                        self.first_attempt(&job, &sub, &body, outcome, started.elapsed())
                            .await
                    }
                    None => {
                        // Held too long: make it durable so its transaction can be
                        // acknowledged, then let the attempt end and settle the row.
                        self.held_in_flight.fetch_add(1, Ordering::AcqRel);
                        Box::pin(self.spill(&job, &body, Queued::in_flight(self.lease()))).await;
                        done.finish(false);
                        held = Some((send.await, started.elapsed()));
                        drop(permit);
                        false
                    }
                };
                done.finish(delivered);
            }
            _ => {
                Box::pin(self.spill(&job, &body, Queued::WAITING)).await;
                done.finish(false);
            }
        }
        self.forget_job(&job.key);
        if let Some((outcome, latency)) = held {
            Box::pin(self.settle_held(&job, &sub, outcome, latency)).await;
            self.held_in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Settles the in-memory attempt; `true` when delivered.
    async fn first_attempt(
        &self,
        job: &Job,
        sub: &SubState,
        body: &[u8],
        outcome: super::retry::Outcome,
        latency: Duration,
    ) -> bool {
        let attempt = Attempt::new(&job.event.id, latency).of_type(&job.event.event_type);
        let verdict = self
            .judge(sub, job.route.subscription.id, 1, outcome, attempt)
            .await;
        if let Verdict::Delivered = verdict {
            return true;
        }
        Box::pin(self.spill(job, body, Queued::after_first(&verdict))).await;
        false
    }

    /// Settles the queued row of a job whose attempt outlived the hold bound.
    async fn settle_held(
        &self,
        job: &Job,
        sub: &SubState,
        outcome: super::retry::Outcome,
        latency: Duration,
    ) {
        let attempt = Attempt::new(&job.event.id, latency).of_type(&job.event.event_type);
        let id = job.route.subscription.id;
        let row = RowRef::Event(id, &job.event.id);
        let generation = self.idle_generation(&job.key);
        // A few tries (the database may be restarting); then the row's lease runs out and
        // the retrier attempts it again.
        let mut wait = Duration::from_millis(200);
        for tries in 1.. {
            match self.settle(sub, id, row, 1, outcome.clone(), attempt).await {
                Ok(()) => break,
                Err(e) if tries < SETTLE_TRIES => {
                    tracing::debug!(error = %e, event = %job.event.id, "settling a held delivery failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::warn!(error = %e, event = %job.event.id, "settling a held delivery failed; the retrier attempts it again");
                    break;
                }
            }
        }
        if let Some(generation) = generation {
            self.unmark_if_empty(sub, &job.key, generation).await;
        }
    }

    /// How long a queued row is claimed for (or, held in flight, not due): one attempt
    /// surely ends within it.
    pub(super) fn lease(&self) -> Duration {
        self.config.timeout + Duration::from_secs(30)
    }
}
