//! Batched delivery, for subscriptions with `batch_max` ≥ 2: one request carries a JSON
//! array of up to `batch_max` envelopes.
//!
//! ```text
//! job (its row's predecessor done) ─▶ gatherer of its subscription ─▶ a request slot
//!    ─▶ up to batch_max jobs, within batch_window_ms ─▶ POST [env, env, …]
//!         webhook-id = bat_<hash of the member event ids>, signature over the array
//!    ├─ 2xx ─▶ every member delivered
//!    └─ failure / breaker open / no slot in time / in flight past max_hold
//!         ─▶ every member queued with the batch id ─▶ retrier sends the same batch again
//! ```
//!
//! Invariants:
//! - Per-row order: a job joins a batch only after its row's previous event was delivered
//!   (or it is queued behind it instead, as without batching). So a row's later event is
//!   never in a batch sent before the batch holding its earlier event finished.
//! - A batch's id is a function of its members' event ids, and a queued batch keeps its
//!   members (rows sharing `batch_id`) and their order (ids), so every retry sends the same
//!   `webhook-id` and the same body.
//! - The bounds of single deliveries hold for each member: done (delivered or durably
//!   queued) within `max_hold` of its creation; the subscription's request limit counts
//!   batches; the breaker and 410 judge the batch's one attempt.
//!
//! The gatherer takes a request slot *before* it closes a batch: while the subscription's
//! slots are busy, jobs pile up in its channel and the next batch leaves full. It holds the
//! [`Delivery`] only weakly while idle, so it ends with it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::client::Message;
use super::job::Job;
use super::queue::{Claimed, RowRef};
use super::recent::Attempt;
use super::retrier::Retry;
use super::retry::Outcome;
use super::spill::{Queued, key};
use super::{Delivery, Key, SubState, Verdict};
use crate::events::Event;
use crate::subscriptions::routing::Route;

/// Most events in one batch, whatever a row says (the SQL check allows up to this).
const MAX_BATCH: usize = 1000;

/// Tries to settle the queued rows of a batch that outlived the hold (~30 s in all).
const SETTLE_TRIES: u32 = 10;

/// Events per request for `route`, when it batches (`batch_max` ≥ 2).
pub(super) fn batching(route: &Route) -> Option<usize> {
    route
        .subscription
        .batch_max
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n >= 2)
        .map(|n| n.min(MAX_BATCH))
}

/// The `webhook-id` of a batch of these events: `bat_` + the first 16 bytes of SHA-256 over
/// the ids joined by `,`, in hex. The same members give the same id on every attempt.
pub fn batch_id<'a>(event_ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut hash = Sha256::new();
    for (i, id) in event_ids.into_iter().enumerate() {
        if i > 0 {
            hash.update(b",");
        }
        hash.update(id.as_bytes());
    }
    let digest = hash.finalize();
    let mut id = String::with_capacity(36);
    id.push_str("bat_");
    for byte in &digest[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// The body of a batch: a JSON array of the envelopes, in order.
pub fn array<'a>(bodies: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
    let mut out = BytesMut::new();
    out.extend_from_slice(b"[");
    for (i, body) in bodies.into_iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(body);
    }
    out.extend_from_slice(b"]");
    out.freeze()
}

/// What a batch needs of one job.
struct Item {
    route: Arc<Route>,
    event: Arc<Event>,
    key: Key,
    body: Bytes,
    deadline: Instant,
}

/// One job waiting in its subscription's gatherer.
pub(super) struct Member {
    item: Item,
    /// `true` when delivered in memory (or dropped: no longer subscribed), `false` when
    /// durably queued.
    result: oneshot::Sender<bool>,
}

impl Delivery {
    /// Hands a job whose predecessor was delivered to its subscription's gatherer and waits
    /// until its batch delivered it (`true`) or queued it (`false`).
    pub(super) async fn batched(
        self: &Arc<Self>,
        job: &Job,
        sub: &Arc<SubState>,
        body: Bytes,
    ) -> bool {
        let (result, outcome) = oneshot::channel();
        let member = Member {
            item: Item {
                route: job.route.clone(),
                event: job.event.clone(),
                key: job.key.clone(),
                body: body.clone(),
                deadline: job.deadline,
            },
            result,
        };
        let gatherer = sub.batcher.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(gather(Arc::downgrade(self), job.route.subscription.id, rx));
            tx
        });
        if gatherer.send(member).is_err() {
            self.spill(job, &body, Queued::WAITING).await;
            return false;
        }
        match outcome.await {
            Ok(delivered) => delivered,
            // The gatherer ended without an answer (its Delivery is gone): make it durable.
            Err(_) => {
                self.spill(job, &body, Queued::WAITING).await;
                false
            }
        }
    }

    /// Sends one gathered batch with `permit` (none: no slot in time, or stopping — the
    /// members are queued unattempted) and tells each member what became of it.
    async fn send_batch(
        self: Arc<Self>,
        sub: Arc<SubState>,
        members: Vec<Member>,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let (members, mut results): (Vec<Item>, Vec<oneshot::Sender<bool>>) =
            members.into_iter().map(|m| (m.item, m.result)).unzip();
        let notify = |results: &mut Vec<oneshot::Sender<bool>>, delivered: bool| {
            for result in results.drain(..) {
                let _ = result.send(delivered);
            }
        };
        let Some(newest) = members.last() else { return };
        let route = newest.route.clone();
        let sub_id = route.subscription.id;
        let id = batch_id(members.iter().map(|m| m.event.id.as_str()));
        let deadline = members
            .iter()
            .map(|m| m.deadline)
            .min()
            .unwrap_or_else(Instant::now);
        let rows: Vec<(&Key, &Event, &[u8])> = members
            .iter()
            .map(|m| (&m.key, &*m.event, &m.body[..]))
            .collect();
        let mut held = None;
        let delivered = if self.routing.snapshot().subscription(sub_id).is_none() {
            tracing::debug!(subscription = %sub_id, batch = %id, "dropped: no longer subscribed");
            true
        } else if let Some(open) = sub.breaker.open() {
            self.spill_rows(&sub, &rows, &Queued::held(&open), Some(&id))
                .await;
            false
        } else if let Some(permit) = permit.filter(|_| !self.draining.is_cancelled()) {
            let body = array(members.iter().map(|m| &m.body[..]));
            let message = Message {
                target: &route.target,
                id: &id,
                body,
            };
            let started = Instant::now();
            let send = self.sender.send(&message);
            tokio::pin!(send);
            let outcome = tokio::select! {
                outcome = &mut send => Some(outcome),
                _ = sleep_until(deadline) => None,
            };
            let attempt = |latency| {
                Attempt::new(&id, latency)
                    .of_type(&newest.event.event_type)
                    .events(members.len())
            };
            match outcome {
                Some(outcome) => {
                    drop(permit);
                    match self
                        .judge(&sub, sub_id, 1, outcome, attempt(started.elapsed()))
                        .await
                    {
                        Verdict::Delivered => true,
                        verdict => {
                            let queued = Queued::after_first(&verdict);
                            self.spill_rows(&sub, &rows, &queued, Some(&id)).await;
                            false
                        }
                    }
                }
                None => {
                    // Held too long: make the members durable so their transactions can be
                    // acknowledged, then let the attempt end and settle their rows.
                    self.held_in_flight.fetch_add(1, Ordering::AcqRel);
                    let queued = Queued::in_flight(self.lease());
                    self.spill_rows(&sub, &rows, &queued, Some(&id)).await;
                    notify(&mut results, false);
                    let outcome = send.await;
                    held = Some((outcome, permit, attempt(started.elapsed())));
                    false
                }
            }
        } else {
            self.spill_rows(&sub, &rows, &Queued::WAITING, Some(&id))
                .await;
            false
        };
        notify(&mut results, delivered);
        let keys: Vec<Key> = members.iter().map(|m| m.key.clone()).collect();
        if let Some((outcome, permit, attempt)) = held {
            drop(permit);
            self.settle_held_batch(&sub, sub_id, &id, &keys, outcome, attempt)
                .await;
            self.held_in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Settles the queued rows of a batch whose attempt outlived the hold bound.
    async fn settle_held_batch(
        &self,
        sub: &SubState,
        sub_id: uuid::Uuid,
        id: &str,
        keys: &[Key],
        outcome: Outcome,
        attempt: Attempt<'_>,
    ) {
        let generations: Vec<Option<u64>> = keys.iter().map(|k| self.idle_generation(k)).collect();
        let mut wait = Duration::from_millis(200);
        for tries in 1.. {
            match self
                .settle(
                    sub,
                    sub_id,
                    RowRef::Batch(sub_id, id),
                    1,
                    outcome.clone(),
                    attempt,
                )
                .await
            {
                Ok(()) => break,
                Err(e) if tries < SETTLE_TRIES => {
                    tracing::debug!(error = %e, batch = %id, "settling a held batch failed; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(e) => {
                    tracing::warn!(error = %e, batch = %id, "settling a held batch failed; the retrier attempts it again");
                    break;
                }
            }
        }
        for (key, generation) in keys.iter().zip(generations) {
            if let Some(generation) = generation {
                self.unmark_if_empty(sub, key, generation).await;
            }
        }
    }

    /// Sends a claimed batch again (its rows, in id order) and settles every row of it.
    pub(super) async fn retry_batch(self: Arc<Self>, rows: Vec<Claimed>, stop: CancellationToken) {
        let Some(first) = rows.first() else { return };
        let (sub_id, id) = (
            first.subscription_id,
            first.batch_id.clone().unwrap_or_default(),
        );
        let retry = Retry {
            sub_id,
            row: RowRef::Batch(sub_id, &id),
            keys: rows.iter().map(|r| key(sub_id, &r.row_key)).collect(),
            attempts: rows.iter().map(|r| r.attempts).max().unwrap_or(0) + 1,
            id: &id,
        };
        let body = |_: &Route| array(rows.iter().map(|r| r.body.as_bytes()));
        self.retry_claimed(retry, body, &stop).await;
    }
}

/// A subscription's gatherer: takes the first waiting job, a request slot (until that job's
/// hold deadline), then whatever else waits, up to `batch_max`, until `batch_window_ms`
/// after the first arrived; hands the batch to its own task and starts over. Ends when the
/// [`Delivery`] is gone.
async fn gather(
    delivery: Weak<Delivery>,
    sub_id: uuid::Uuid,
    mut waiting: mpsc::UnboundedReceiver<Member>,
) {
    while let Some(first) = waiting.recv().await {
        let arrived = Instant::now();
        let Some(delivery) = delivery.upgrade() else {
            return;
        };
        let sub = delivery.sub(sub_id);
        let max = batching(&first.item.route).unwrap_or(1);
        let window =
            Duration::from_millis(first.item.route.subscription.batch_window_ms.max(0) as u64);
        let deadline = first.item.deadline;
        let permit = if deadline <= Instant::now() || delivery.draining.is_cancelled() {
            None
        } else {
            tokio::select! {
                permit = sub.permits.clone().acquire_owned() => permit.ok(),
                _ = delivery.draining.cancelled() => None,
                _ = sleep_until(deadline) => None,
            }
        };
        let close_at = (arrived + window).min(deadline);
        let mut members = vec![first];
        while members.len() < max {
            match waiting.try_recv() {
                Ok(member) => {
                    members.push(member);
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
            if permit.is_none() || Instant::now() >= close_at {
                break;
            }
            tokio::select! {
                member = waiting.recv() => match member {
                    Some(member) => members.push(member),
                    None => break,
                },
                _ = sleep_until(close_at) => break,
                _ = delivery.draining.cancelled() => break,
            }
        }
        tokio::spawn(delivery.clone().send_batch(sub, members, permit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_ids_are_a_function_of_the_members() {
        let a = batch_id(["evt_1_0", "evt_1_1"]);
        assert_eq!(a, batch_id(["evt_1_0", "evt_1_1"]));
        assert_ne!(a, batch_id(["evt_1_1", "evt_1_0"]));
        assert_eq!(a.len(), 36);
        assert!(a.starts_with("bat_"));
        assert_eq!(&array([&b"{}"[..], b"{\"a\":1}"])[..], b"[{},{\"a\":1}]");
        assert_eq!(&array(std::iter::empty::<&[u8]>())[..], b"[]");
    }
}
