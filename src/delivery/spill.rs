//! Spilling: a job written to the queue table, and the in-memory marks that keep the later
//! events of its row (or, past [`MAX_QUEUED_ROWS_TRACKED`] rows, of its whole subscription)
//! behind it until the retrier has emptied the table of them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::breaker::Open;
use super::job::Job;
use super::queue::Enqueue;
use super::{Delivery, Key, SubState, Verdict, locked};
use crate::events::Event;

/// Rows of one subscription tracked one by one as queued; beyond, the whole subscription is
/// (memory stays bounded however many rows wait behind a dead endpoint).
pub const MAX_QUEUED_ROWS_TRACKED: usize = 10_000;

/// How a job goes into the queue table.
pub(super) struct Queued<'a> {
    attempts: i32,
    delay: Duration,
    error: Option<&'a str>,
    dead: bool,
}

impl Queued<'_> {
    /// Not attempted yet, due at once (behind its row's queued events).
    pub(super) const WAITING: Queued<'static> = Queued {
        attempts: 0,
        delay: Duration::ZERO,
        error: None,
        dead: false,
    };

    /// Not attempted: the subscription's breaker is open; due when it closes.
    pub(super) fn held(open: &Open) -> Queued<'_> {
        Queued {
            attempts: 0,
            delay: open.remaining,
            error: Some(&open.error),
            dead: false,
        }
    }

    /// An attempt is still in flight: not due before it has surely ended (`lease`), when the
    /// attempt settles the row itself (or, after a crash, the retrier tries again).
    pub(super) fn in_flight(lease: Duration) -> Queued<'static> {
        Queued {
            attempts: 1,
            delay: lease,
            error: Some("held in memory past delivery.max_hold_ms; attempt in flight"),
            dead: false,
        }
    }

    /// After the first attempt, as judged.
    pub(super) fn after_first(verdict: &Verdict) -> Queued<'_> {
        let (delay, error, dead) = match verdict {
            Verdict::Delivered => (Duration::ZERO, None, false),
            Verdict::Retry { delay, error } => (*delay, Some(error.as_str()), false),
            Verdict::Dead { error } => (Duration::ZERO, Some(error.as_str()), true),
        };
        Queued {
            attempts: 1,
            delay,
            error,
            dead,
        }
    }
}

impl Delivery {
    /// Writes a job to the queue table, retrying until it is durable (its transaction is not
    /// acknowledged before), and marks its row as queued.
    pub(super) async fn spill(&self, job: &Job, body: &[u8], queued: Queued<'_>) {
        let sub = self.sub(job.route.subscription.id);
        self.spill_rows(&sub, &[(&job.key, &*job.event, body)], &queued, None)
            .await;
    }

    /// Writes events of one subscription (its `sub` state) to the queue table, in order, as
    /// `queued` says and as members of `batch` when given; each is retried until it is
    /// durable, and their rows are marked as queued. Written concurrently, so the queue's
    /// batch writer puts them in one INSERT.
    pub(super) async fn spill_rows(
        &self,
        sub: &SubState,
        rows: &[(&Key, &Event, &[u8])],
        queued: &Queued<'_>,
        batch: Option<&str>,
    ) {
        let writes = rows.iter().map(|&(key, event, body)| async move {
            sub.spilling.fetch_add(1, Ordering::AcqRel);
            sub.spills.fetch_add(1, Ordering::AcqRel);
            self.mark_queued(sub, key, !queued.dead);
            // Bodies are serde_json output: always UTF-8, so this borrows.
            let body = String::from_utf8_lossy(body);
            let row = Enqueue {
                subscription_id: key.0,
                event_id: &event.id,
                event_type: &event.event_type,
                row_key: &event.row_key,
                body: &body,
                attempts: queued.attempts,
                delay: queued.delay,
                last_error: queued.error,
                dead: queued.dead,
                batch_id: batch,
            };
            // `store` parks or drops what the database refuses for good; only transient
            // failures come back, and are retried.
            let mut wait = Duration::from_millis(100);
            while let Err(e) = self.queue.store(&row).await {
                tracing::error!(error = %e, event = %event.id, "cannot queue event; retrying (its LSN stays unacknowledged)");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            sub.spilling.fetch_sub(1, Ordering::AcqRel);
        });
        futures_util::future::join_all(writes).await;
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

    /// The spill generation of a row that has no job in memory (`None` while it has one).
    pub(super) fn idle_generation(&self, key: &Key) -> Option<u64> {
        match locked(&self.keys).get(key) {
            Some(state) if state.in_memory > 0 => None,
            Some(state) => Some(state.generation),
            None => Some(0),
        }
    }

    /// A job of `key` left memory.
    pub(super) fn forget_job(&self, key: &Key) {
        let mut keys = locked(&self.keys);
        if let Some(state) = keys.get_mut(key) {
            state.in_memory -= 1;
            if state.in_memory == 0 && !state.spilled {
                keys.remove(key);
            }
        }
    }

    /// After a queued row of `key` was settled: when the row has nothing left in the table
    /// and nothing spilled since `generation`, new jobs of it may go in memory again (rows of
    /// a subscription marked as a whole have no marks of their own).
    pub(super) async fn unmark_if_empty(&self, sub: &SubState, key: &Key, generation: u64) {
        if sub.all_queued.load(Ordering::Acquire) {
            return;
        }
        if let Ok(0) = self.queue.pending_for(key.0, &key.1).await {
            let mut keys = locked(&self.keys);
            if keys
                .get(key)
                .is_some_and(|s| s.in_memory == 0 && s.generation == generation)
                && keys.remove(key).is_some_and(|s| s.spilled)
            {
                sub.queued_rows.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// A subscription marked as a whole returns to the fast path once nothing of it is
    /// queued and no spill started (`spills` is the count seen before) or is still being
    /// written meanwhile.
    pub(super) async fn unmark_sub_if_empty(&self, sub: &SubState, id: uuid::Uuid, spills: u64) {
        let quiet = |sub: &SubState| {
            sub.spilling.load(Ordering::Acquire) == 0
                && sub.spills.load(Ordering::Acquire) == spills
        };
        if sub.all_queued.load(Ordering::Acquire)
            && quiet(sub)
            && let Ok(false) = self.queue.any_pending(id).await
            && quiet(sub)
        {
            sub.all_queued.store(false, Ordering::Release);
        }
    }
}

/// A key for `(subscription, row_key)`.
pub(super) fn key(subscription: uuid::Uuid, row_key: &str) -> Key {
    (subscription, Arc::from(row_key))
}
