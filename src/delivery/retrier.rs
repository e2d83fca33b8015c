//! The retrier: serves due rows of the queue table, oldest first per (subscription, row),
//! claimed with a lease so several daemons can share the table.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use bytes::Bytes;

use super::batch::{array, batching};
use super::client::Message;
use super::queue::{Claimed, QueueError, RowRef};
use super::recent::Attempt;
use super::retry::Outcome;
use super::spill::key;
use super::{Delivery, Key, SubState, Verdict};
use crate::subscriptions::routing::Route;

/// Claimed rows or batches served at once, over all subscriptions.
const MAX_RETRIES_RUNNING: usize = 256;

/// The retries being served, each with its subscription. A retry is counted out when its
/// task ends in any way, a panic included (by its task id), so a failed task never leaves
/// its subscription's count too high.
#[derive(Default)]
struct Running {
    tasks: tokio::task::JoinSet<()>,
    /// The subscription of each running task.
    subs: HashMap<tokio::task::Id, uuid::Uuid>,
}

/// How a retry task ended: its id, or the error that carries it.
type Ended = Result<(tokio::task::Id, ()), tokio::task::JoinError>;

impl Running {
    /// Serves `work`, a retry of subscription `sub`.
    fn spawn(&mut self, sub: uuid::Uuid, work: impl Future<Output = ()> + Send + 'static) {
        let task = self.tasks.spawn(work).id();
        self.subs.insert(task, sub);
    }

    /// Counts out the retries that ended.
    fn reap(&mut self) {
        while let Some(ended) = self.tasks.try_join_next_with_id() {
            self.ended(ended);
        }
    }

    /// Waits for a retry to end and counts it out; `false` when none is running.
    async fn join_next(&mut self) -> bool {
        match self.tasks.join_next_with_id().await {
            Some(ended) => {
                self.ended(ended);
                true
            }
            None => false,
        }
    }

    fn ended(&mut self, ended: Ended) {
        let task = match ended {
            Ok((task, ())) => task,
            Err(e) => {
                tracing::error!(error = %e, "a retry task failed; its claimed rows are attempted again when their lease ends");
                e.id()
            }
        };
        self.subs.remove(&task);
    }

    /// Whether [`MAX_RETRIES_RUNNING`] are running.
    fn full(&self) -> bool {
        self.tasks.len() >= MAX_RETRIES_RUNNING
    }

    /// The subscriptions with `slots` or more retries running.
    fn saturated(&self, slots: usize) -> Vec<uuid::Uuid> {
        let mut per_sub: HashMap<uuid::Uuid, usize> = HashMap::new();
        for sub in self.subs.values() {
            *per_sub.entry(*sub).or_default() += 1;
        }
        per_sub
            .into_iter()
            .filter(|&(_, n)| n >= slots)
            .map(|(sub, _)| sub)
            .collect()
    }
}

/// A claimed queue row, or the rows of a claimed batch, to be sent again.
pub(super) struct Retry<'a> {
    pub(super) sub_id: uuid::Uuid,
    /// The row, or the batch, in the queue table.
    pub(super) row: RowRef<'a>,
    /// The (subscription, row) keys of its rows.
    pub(super) keys: Vec<Key>,
    /// Which attempt this is: one more than the most its rows had.
    pub(super) attempts: i32,
    /// Its `webhook-id`: the event id, or the batch id.
    pub(super) id: &'a str,
}

impl Delivery {
    /// Serves due rows of the queue table until `stop`. At most [`MAX_RETRIES_RUNNING`]
    /// claimed rows or batches are served at once, and a subscription that has as many
    /// running as it has request slots is not claimed for until one ends: a slow endpoint's
    /// backlog never takes the places of another subscription's due rows.
    pub async fn run_retries(self: Arc<Self>, stop: CancellationToken) {
        let mut running = Running::default();
        let slots = self.config.max_in_flight.max(1);
        while !stop.is_cancelled() {
            running.reap();
            let skip = running.saturated(slots);
            let mut claimed = false;
            // One warning per round when the database is away, not one per query.
            let mut failed = false;
            if !running.full() {
                match self.queue.claim_batches(16, self.lease(), &skip).await {
                    Ok(rows) => {
                        for batch in rows.chunk_by(|a, b| {
                            (a.subscription_id, &a.batch_id) == (b.subscription_id, &b.batch_id)
                        }) {
                            claimed = true;
                            let work = self.clone().retry_batch(batch.to_vec(), stop.clone());
                            running.spawn(batch[0].subscription_id, work);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming due batches failed");
                        failed = true;
                    }
                }
            }
            if !running.full() {
                match self.queue.claim_due(64, self.lease(), &skip).await {
                    Ok(rows) => {
                        for row in rows {
                            claimed = true;
                            let sub = row.subscription_id;
                            running.spawn(sub, self.clone().retry_row(row, stop.clone()));
                        }
                    }
                    Err(e) if failed => {
                        tracing::debug!(error = %e, "claiming due deliveries failed too");
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming due deliveries failed"),
                }
            }
            if claimed {
                continue;
            }
            // Nothing claimable now. While a subscription was skipped (or the limit was
            // reached), the end of one of its retries may make room before the next poll.
            let waiting = !skip.is_empty() || running.full();
            tokio::select! {
                _ = running.join_next(), if waiting => {}
                _ = tokio::time::sleep(self.config.retry_poll) => {}
                _ = stop.cancelled() => {}
            }
        }
        while running.join_next().await {}
    }

    /// Sends one claimed row (not a batch member) again and settles it.
    async fn retry_row(self: Arc<Self>, row: Claimed, stop: CancellationToken) {
        let retry = Retry {
            sub_id: row.subscription_id,
            row: RowRef::Id(row.id),
            keys: vec![key(row.subscription_id, &row.row_key)],
            attempts: row.attempts + 1,
            id: &row.event_id,
        };
        // A batching subscription's receiver gets arrays: an event queued on its own (it
        // never joined a batch) is sent as an array of one.
        let body = |route: &Route| match batching(route) {
            Some(_) => array([row.body.as_bytes()]),
            None => Bytes::copy_from_slice(row.body.as_bytes()),
        };
        self.retry_claimed(retry, body, &stop).await;
    }

    /// Sends a claimed row or batch again (`body` built for the subscription's current
    /// route) and settles it: what both have in common. Its rows must have no job in
    /// memory (else it is handed back, to come again soon); it is not attempted while the
    /// subscription's breaker is open, nor when stopping (handed back for the next run or
    /// another daemon); one of the subscription's request slots is taken for the attempt.
    pub(super) async fn retry_claimed(
        &self,
        retry: Retry<'_>,
        body: impl FnOnce(&Route) -> Bytes,
        stop: &CancellationToken,
    ) {
        let Retry {
            sub_id,
            row,
            keys,
            attempts,
            id,
        } = retry;
        let sub = self.sub(sub_id);
        let spills = sub.spills.load(Ordering::Acquire);
        let Some(generations) = keys
            .iter()
            .map(|k| self.idle_generation(k))
            .collect::<Option<Vec<u64>>>()
        else {
            // A row of it still has jobs in memory; they queue behind it. Soon again.
            self.logged(self.queue.release(row, Duration::from_millis(200)).await);
            return;
        };
        let snapshot = self.routing.snapshot();
        let result = match snapshot.subscription(sub_id) {
            None => {
                self.queue
                    .failed(
                        row,
                        attempts - 1,
                        None,
                        "subscription inactive, expired or deleted",
                    )
                    .await
            }
            Some(route) => {
                if let Some(open) = sub.breaker.open() {
                    // Not attempted while the endpoint is known unreachable.
                    self.logged(self.queue.release(row, open.remaining).await);
                    return;
                }
                let permit = tokio::select! {
                    permit = sub.permits.acquire() => permit.ok(),
                    _ = stop.cancelled() => None,
                };
                if permit.is_none() {
                    self.logged(self.queue.release(row, Duration::ZERO).await);
                    return;
                }
                let message = Message {
                    target: &route.target,
                    id,
                    body: body(route),
                };
                let started = std::time::Instant::now();
                let outcome = self.sender.send(&message).await;
                drop(permit);
                let attempt = Attempt::new(id, started.elapsed()).events(keys.len());
                self.settle(&sub, sub_id, row, attempts as u32, outcome, attempt)
                    .await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, webhook_id = %id, "updating a queued delivery failed; its lease expires and it is retried");
            return;
        }
        for (key, generation) in keys.iter().zip(generations) {
            self.unmark_if_empty(&sub, key, generation).await;
        }
        self.unmark_sub_if_empty(&sub, sub_id, spills).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_retry_that_panics_is_counted_out_of_its_subscription() {
        let (sub, other) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        let mut running = Running::default();
        running.spawn(sub, async { panic!("a retry failed") });
        running.spawn(sub, async {});
        running.spawn(other, std::future::pending());
        assert_eq!(running.saturated(2), vec![sub]);
        assert!(running.join_next().await);
        assert!(running.join_next().await);
        assert!(running.saturated(1) == vec![other], "{:?}", running.subs);
        assert_eq!(running.subs.len(), 1);
    }
}
