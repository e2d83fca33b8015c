//! The retrier: serves due rows of the queue table, oldest first per (subscription, row),
//! claimed with a lease so several daemons can share the table.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::batch::{array, batching};
use super::client::Message;
use super::queue::{Claimed, QueueError, RowRef};
use super::recent::Attempt;
use super::retry::Outcome;
use super::spill::key;
use super::{Delivery, SubState, Verdict};
use crate::subscriptions::live::LiveRouting;

impl Delivery {
    /// Serves due rows of the queue table until `stop`.
    pub async fn run_retries(self: Arc<Self>, routing: LiveRouting, stop: CancellationToken) {
        let mut running = tokio::task::JoinSet::new();
        while !stop.is_cancelled() {
            while running.try_join_next().is_some() {}
            let mut batches = 0;
            if running.len() < 256 {
                match self.queue.claim_batches(16, self.lease()).await {
                    Ok(rows) => {
                        for batch in rows.chunk_by(|a, b| {
                            (a.subscription_id, &a.batch_id) == (b.subscription_id, &b.batch_id)
                        }) {
                            batches += 1;
                            running.spawn(self.clone().retry_batch(batch.to_vec(), stop.clone()));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming due batches failed"),
                }
            }
            let claimed = if running.len() < 256 {
                self.queue.claim_due(64, self.lease()).await
            } else {
                Ok(Vec::new())
            };
            match claimed {
                Ok(rows) if !rows.is_empty() || batches > 0 => {
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
        let key = key(row.subscription_id, &row.row_key);
        let Some(generation) = self.idle_generation(&key) else {
            // Its row still has jobs in memory; they queue behind this one. Try again soon.
            self.logged(
                self.queue
                    .release(RowRef::Id(row.id), Duration::from_millis(200))
                    .await,
            );
            return;
        };
        let attempts = row.attempts + 1;
        let snapshot = routing.snapshot();
        let result = match snapshot.subscription(row.subscription_id) {
            None => {
                self.queue
                    .failed(
                        RowRef::Id(row.id),
                        attempts - 1,
                        None,
                        "subscription inactive, expired or deleted",
                    )
                    .await
            }
            Some(route) => {
                if let Some(open) = sub.breaker.open() {
                    // Not attempted while the endpoint is known unreachable.
                    self.logged(self.queue.release(RowRef::Id(row.id), open.remaining).await);
                    return;
                }
                let permit = tokio::select! {
                    permit = sub.permits.acquire() => permit.ok(),
                    _ = stop.cancelled() => None,
                };
                if permit.is_none() {
                    // Shutting down: hand the row back for the next run (or another daemon).
                    self.logged(self.queue.release(RowRef::Id(row.id), Duration::ZERO).await);
                    return;
                }
                // A batching subscription's receiver gets arrays: an event queued on its own
                // (it never joined a batch) is sent as an array of one.
                let body = match batching(route) {
                    Some(_) => array([row.body.as_bytes()]),
                    None => row.body.into(),
                };
                let message = Message {
                    target: &route.target,
                    id: &row.event_id,
                    body,
                };
                let started = std::time::Instant::now();
                let outcome = self.sender.send(&message).await;
                drop(permit);
                self.settle(
                    &sub,
                    row.subscription_id,
                    RowRef::Id(row.id),
                    attempts as u32,
                    outcome,
                    Attempt::new(&row.event_id, started.elapsed()),
                )
                .await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "updating a queued delivery failed; its lease expires and it is retried");
            return;
        }
        self.unmark_if_empty(&sub, &key, generation).await;
        self.unmark_sub_if_empty(&sub, row.subscription_id, spills)
            .await;
    }

    /// Settles a queued row after its `attempts`-th attempt: deleted when delivered, else
    /// rescheduled or made a dead letter.
    pub(super) async fn settle(
        &self,
        sub: &SubState,
        id: uuid::Uuid,
        row: RowRef<'_>,
        attempts: u32,
        outcome: Outcome,
        attempt: Attempt<'_>,
    ) -> Result<(), QueueError> {
        match self.judge(sub, id, attempts, outcome, attempt).await {
            Verdict::Delivered => self.queue.delete(row).await,
            Verdict::Retry { delay, error } => {
                self.queue
                    .failed(row, attempts as i32, Some(delay), &error)
                    .await
            }
            Verdict::Dead { error } => self.queue.failed(row, attempts as i32, None, &error).await,
        }
    }
}
