//! The recent-deliveries log the console shows: the last [`PER_SUBSCRIPTION`] attempts of
//! each subscription, in memory only (the fast path still writes nothing per event).
//!
//! Every attempt — first, batch or retry — passes through `Delivery::judge`, which makes
//! the one call to [`Recent::record`]. The log is one per process ([`log`]), keyed by
//! subscription id, so every `Delivery` of the process (the daemon's, and the short-lived
//! one that drains a capture-mode switch) records into the log the console reads, without
//! threading a handle through their constructors.
//!
//! Bounds: [`PER_SUBSCRIPTION`] entries per subscription (oldest dropped), at most
//! [`MAX_SUBSCRIPTIONS`] subscriptions (the one whose last attempt is oldest is dropped),
//! and an entry's text at most [`MAX_DETAIL`] bytes. A mutex: each record holds it for a
//! push into a ring, far below the cost of the HTTP request it records.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::client::bounded_text;
use super::retry::Outcome;

/// Attempts kept per subscription.
pub const PER_SUBSCRIPTION: usize = 50;

/// Subscriptions kept at once.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;

/// Longest error or response text kept per attempt (bytes).
pub const MAX_DETAIL: usize = 256;

/// What the caller of `judge` knows about one attempt besides its outcome.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The `webhook-id` sent: the event's id, or the batch's.
    pub event_id: &'a str,
    /// The event type (the newest member's for a batch); `None` when not at hand (a retry
    /// read from the queue table): then the type an earlier attempt of the same id recorded.
    pub event_type: Option<&'a str>,
    /// Events in the request (1, or a batch's size).
    pub events: usize,
    /// Time from sending the request to its outcome.
    pub latency: Duration,
    /// The response's status code when known (else read from the outcome).
    pub status: Option<u16>,
    /// The response's first bytes when read (a failure's are in its error already).
    pub response: Option<&'a [u8]>,
}

impl<'a> Attempt<'a> {
    /// An attempt of `event_id` that took `latency`; one event, type and answer unknown.
    pub fn new(event_id: &'a str, latency: Duration) -> Attempt<'a> {
        Attempt {
            event_id,
            event_type: None,
            events: 1,
            latency,
            status: None,
            response: None,
        }
    }

    /// The same, with the event type.
    pub fn of_type(mut self, event_type: &'a str) -> Attempt<'a> {
        self.event_type = Some(event_type);
        self
    }

    /// The same, counting `events` in the request.
    pub fn events(mut self, events: usize) -> Attempt<'a> {
        self.events = events;
        self
    }
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Recorded {
    /// When its outcome was judged.
    pub at: DateTime<Utc>,
    /// The `webhook-id` sent.
    pub event_id: String,
    /// The event type ("" when unknown).
    pub event_type: String,
    /// Events in the request.
    pub events: usize,
    /// Which attempt of the event it was (1 = the first).
    pub attempt: u32,
    /// `delivered`, `failed`, `unreachable` or `gone`.
    pub outcome: &'static str,
    /// The status code, when there was a response and it is known (`None` for a 2xx whose
    /// exact code the sender did not report).
    pub status: Option<u16>,
    /// Milliseconds from request to outcome.
    pub latency_ms: u64,
    /// The error, or the response's first bytes (at most [`MAX_DETAIL`] bytes).
    pub detail: Option<String>,
}

#[derive(Default)]
struct Log {
    subs: HashMap<Uuid, VecDeque<Recorded>>,
}

/// The per-subscription rings.
#[derive(Default)]
pub struct Recent {
    log: Mutex<Log>,
}

/// The process's log.
pub fn log() -> &'static Recent {
    static LOG: OnceLock<Recent> = OnceLock::new();
    LOG.get_or_init(Recent::default)
}

/// `HTTP 503: busy` → 503.
fn status_of(error: &str) -> Option<u16> {
    let rest = error.strip_prefix("HTTP ")?;
    rest.get(..3)?.parse().ok()
}

impl Recent {
    /// Records the `attempts`-th attempt of an event to subscription `sub`.
    pub fn record(&self, sub: Uuid, attempt: &Attempt<'_>, attempts: u32, outcome: &Outcome) {
        let (kind, status, error) = match outcome {
            Outcome::Delivered => ("delivered", attempt.status, None),
            Outcome::Gone => ("gone", Some(410), Some("HTTP 410 Gone")),
            Outcome::Failed { error, .. } => (
                "failed",
                attempt.status.or_else(|| status_of(error)),
                Some(error.as_str()),
            ),
            Outcome::Unreachable { error } => ("unreachable", None, Some(error.as_str())),
        };
        let detail = match (error, attempt.response) {
            (Some(error), _) => Some(bounded_text(error.as_bytes(), MAX_DETAIL)),
            (None, Some(bytes)) => Some(bounded_text(bytes, MAX_DETAIL)).filter(|t| !t.is_empty()),
            (None, None) => None,
        };
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if !log.subs.contains_key(&sub) && log.subs.len() >= MAX_SUBSCRIPTIONS {
            let stalest = log
                .subs
                .iter()
                .min_by_key(|(_, ring)| ring.back().map(|r| r.at))
                .map(|(id, _)| *id);
            if let Some(stalest) = stalest {
                log.subs.remove(&stalest);
            }
        }
        let ring = log.subs.entry(sub).or_default();
        let event_type = match attempt.event_type {
            Some(t) => t.to_owned(),
            None => ring
                .iter()
                .rev()
                .find(|r| r.event_id == attempt.event_id)
                .map(|r| r.event_type.clone())
                .unwrap_or_default(),
        };
        if ring.len() >= PER_SUBSCRIPTION {
            ring.pop_front();
        }
        ring.push_back(Recorded {
            at: Utc::now(),
            event_id: attempt.event_id.to_owned(),
            event_type,
            events: attempt.events,
            attempt: attempts,
            outcome: kind,
            status,
            latency_ms: u64::try_from(attempt.latency.as_millis()).unwrap_or(u64::MAX),
            detail,
        });
    }

    /// Subscription `sub`'s recorded attempts, newest first.
    pub fn of(&self, sub: Uuid) -> Vec<Recorded> {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        log.subs
            .get(&sub)
            .map(|ring| ring.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_are_bounded_newest_first_and_retries_keep_the_type() {
        let recent = Recent::default();
        let sub = Uuid::new_v4();
        let ms = Duration::from_millis(7);
        let failed = Outcome::Failed {
            error: "HTTP 503: busy <b>".into(),
            retry_after: None,
        };
        recent.record(
            sub,
            &Attempt::new("evt_1", ms).of_type("orders.created"),
            1,
            &failed,
        );
        recent.record(sub, &Attempt::new("evt_1", ms), 2, &Outcome::Delivered);
        let got = recent.of(sub);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (
                got[0].event_type.as_str(),
                got[0].attempt,
                got[0].outcome,
                got[0].status
            ),
            ("orders.created", 2, "delivered", None)
        );
        assert_eq!(
            (got[1].status, got[1].detail.as_deref(), got[1].latency_ms),
            (Some(503), Some("HTTP 503: busy <b>"), 7)
        );
        for i in 0..PER_SUBSCRIPTION + 5 {
            recent.record(
                sub,
                &Attempt::new(&format!("evt_{i}"), ms),
                1,
                &Outcome::Delivered,
            );
        }
        let got = recent.of(sub);
        assert_eq!(got.len(), PER_SUBSCRIPTION);
        assert_eq!(got[0].event_id, format!("evt_{}", PER_SUBSCRIPTION + 4));
        assert!(recent.of(Uuid::new_v4()).is_empty());
    }
}
