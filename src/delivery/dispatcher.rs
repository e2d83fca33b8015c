//! The dispatcher: captured transactions → routed jobs → acknowledged LSNs.
//!
//! ```text
//! CaptureMessage ─▶ route (snapshot per transaction) ─▶ Job per (subscription, event)
//!     ack(end_lsn) ◀── watermark ◀── jobs done ◀─────────┘ chained per (subscription, row)
//! ```
//!
//! On stop it finishes the transaction it is in — takes the rest of its changes, whose jobs
//! are queued rather than sent — so the final acknowledgement covers everything handed over
//! and a restart sends nothing twice. A transaction that does not end within
//! [`FINISH_TRANSACTION_WITHIN`] is left to be replayed after the restart.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::job::{Completed, Done, Job};
use super::lanes::Lanes;
use super::spill::key;
use super::watermark::Watermark;
use super::{Delivery, locked};
use crate::capture::Acknowledger;
use crate::change::CaptureMessage;
use crate::events::Event;
use crate::subscriptions::live::LiveRouting;
use crate::subscriptions::routing::Route;

/// On stop, how long to wait for the open transaction's remaining changes.
pub const FINISH_TRANSACTION_WITHIN: Duration = Duration::from_secs(10);

impl Delivery {
    /// Consumes the capture stream until `stop`, acknowledging what is safe. On `stop`, the
    /// open transaction is finished (its remaining jobs queued), jobs not yet sent are
    /// queued, sends in flight finish, and the final watermark is acknowledged before
    /// returning.
    pub async fn run(
        self: Arc<Self>,
        mut changes: mpsc::Receiver<CaptureMessage>,
        ack: Acknowledger,
        routing: LiveRouting,
        stop: CancellationToken,
    ) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Completed>();
        let mut watermark = Watermark::new(ack);
        let mut outstanding = 0usize;
        let mut snapshot = routing.snapshot();
        let mut closed = false;
        let mut finish_by: Option<Instant> = None;
        let mut lanes = Lanes::start(&self);
        loop {
            let stopping = stop.is_cancelled() || closed;
            if stopping {
                self.draining.cancel();
            }
            // Stopping inside a transaction: take its remaining changes first (bounded).
            let finishing = stopping
                && !closed
                && watermark.in_transaction()
                && *finish_by.get_or_insert_with(|| Instant::now() + FINISH_TRANSACTION_WITHIN)
                    > Instant::now();
            if stopping && !finishing && outstanding == 0 {
                break;
            }
            let intake = (!stopping || finishing) && outstanding < self.config.max_outstanding;
            let finish_timer = async {
                match finish_by {
                    Some(at) if finishing => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some((id, sub)) = done_rx.recv() => {
                    outstanding -= 1;
                    self.load.set(outstanding);
                    sub.in_memory.fetch_sub(1, Ordering::AcqRel);
                    watermark.done(id);
                }
                message = changes.recv(), if intake => match message {
                    None => closed = true,
                    Some(CaptureMessage::Begin(_)) => {
                        watermark.begin();
                        snapshot = routing.snapshot();
                    }
                    Some(CaptureMessage::Change(change)) => {
                        let Some(watch) = snapshot.watch_table(&change.table) else { continue };
                        let Some(event) = Event::from_change(change, watch) else { continue };
                        self.rates.event();
                        let event = Arc::new(event);
                        let now = chrono::Utc::now().timestamp_micros();
                        let mut routes = snapshot.route(&event, now).peekable();
                        let mut shared = false;
                        while let Some(route) = routes.next() {
                            shared |= routes.peek().is_some();
                            let Some(tx) = watermark.add_job() else { break };
                            let (job, next) = self.chain(route.clone(), event.clone(), outstanding, shared);
                            outstanding += 1;
                            self.load.set(outstanding);
                            let done = Done::new(next, tx, job.sub.clone(), done_tx.clone());
                            lanes.run(job, done);
                        }
                    }
                    Some(CaptureMessage::Commit(commit)) => watermark.commit(commit.end_lsn, commit.commit_time),
                    Some(CaptureMessage::Settled(settled)) => watermark.settle(settled),
                },
                _ = stop.cancelled(), if !stopping => {}
                _ = finish_timer => {
                    tracing::warn!("stopping inside a transaction that did not end within {FINISH_TRANSACTION_WITHIN:?}; it is sent again after a restart");
                }
            }
        }
        watermark.advance();
        // Attempts that outlived the hold end within the timeout; let them settle their rows.
        lanes.finish().await;
        while self.held_in_flight.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Creates the next job of its (subscription, row) chain, and the sender its successor
    /// waits on. A subscription is overloaded — its new jobs wait in the table — when it
    /// holds `max_waiting` jobs in memory, the memory budget is half used, it holds most of
    /// it, and others wait on it: another subscription holds jobs in memory, or this event
    /// goes to another subscription too (`shared`; a fast endpoint holds almost nothing in
    /// memory at any moment, yet a full budget would pause the stream for it). A lone busy
    /// subscription (a burst or a drain to one endpoint) is never overloaded: a full budget
    /// pauses the stream (backpressure) and nothing is written. Both counts are the
    /// dispatcher's own (a subscription's count is lowered where `outstanding` is).
    fn chain(
        &self,
        route: Arc<Route>,
        event: Arc<Event>,
        outstanding: usize,
        shared: bool,
    ) -> (Job, oneshot::Sender<bool>) {
        let id = route.subscription.id;
        let sub = self.sub(id);
        let mine = sub.in_memory.fetch_add(1, Ordering::AcqRel);
        let others = outstanding.saturating_sub(mine);
        let overloaded = mine >= self.config.max_waiting
            && outstanding >= self.config.max_outstanding / 2
            && mine > others
            && (others > 0 || shared);
        let key = key(id, &event.row_key);
        let (next, rx) = oneshot::channel();
        let mut keys = locked(&self.keys);
        let state = keys.entry(key.clone()).or_default();
        let prev = state.tail.replace(rx);
        state.in_memory += 1;
        let queue_only = state.spilled || overloaded || sub.all_queued.load(Ordering::Acquire);
        let job = Job {
            route,
            sub: sub.clone(),
            event,
            key,
            prev,
            queue_only,
            deadline: Instant::now() + self.config.max_hold,
        };
        (job, next)
    }
}
