//! The circuit breaker of one subscription's endpoint.
//!
//! When an attempt cannot reach the endpoint at all (connection refused, reset, DNS, TLS,
//! timeout), the breaker opens for the next delay of the retry schedule (5 s, 30 s, 2 m, … as
//! consecutive trips grow). While it is open, new events of the subscription go straight to
//! the queue table, due when it closes, without an attempt and without a statistics write
//! each: a dead endpoint costs one batched INSERT per few hundred events. The first attempt
//! after it closes is the probe: success resets it, another transport failure reopens it for
//! longer. HTTP errors never open it: an endpoint that answers may be refusing one event only.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::retry::RetryPolicy;

/// Breaker state; shared by the dispatcher's jobs and the retrier.
#[derive(Debug, Default)]
pub struct Breaker(Mutex<State>);

#[derive(Debug, Default)]
struct State {
    open_until: Option<Instant>,
    trips: u32,
    error: String,
}

/// Why and how long the breaker stays open.
#[derive(Debug, Clone, PartialEq)]
pub struct Open {
    /// Time left until the next probe.
    pub remaining: Duration,
    /// `circuit open: ` + the transport error that opened it.
    pub error: String,
}

impl Breaker {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Some` while open.
    pub fn open(&self) -> Option<Open> {
        let state = self.state();
        let remaining = state.open_until?.checked_duration_since(Instant::now())?;
        Some(Open {
            remaining,
            error: format!("circuit open: {}", state.error),
        })
    }

    /// Records a transport failure. Returns how long the breaker is open and whether this
    /// call opened it (false when a concurrent attempt already had).
    pub fn trip(&self, error: &str, policy: &RetryPolicy) -> (Duration, bool) {
        let mut state = self.state();
        let now = Instant::now();
        if let Some(until) = state.open_until.filter(|u| *u > now) {
            return (until - now, false);
        }
        state.trips += 1;
        let last = policy
            .schedule
            .last()
            .copied()
            .unwrap_or(Duration::from_secs(5));
        let delay = policy.next_delay(state.trips, None).unwrap_or(last);
        state.open_until = Some(now + delay);
        state.error = error.to_owned();
        (delay, true)
    }

    /// Records a success: closed, trips forgotten.
    pub fn close(&self) {
        let mut state = self.state();
        state.open_until = None;
        state.trips = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_trip_for_the_schedule_and_closes_on_success() {
        let policy = RetryPolicy {
            schedule: vec![Duration::from_secs(10), Duration::from_secs(100)],
        };
        let breaker = Breaker::default();
        assert_eq!(breaker.open(), None);
        let (first, opened) = breaker.trip("connect: refused", &policy);
        assert!(opened);
        assert!(first >= Duration::from_secs(8) && first <= Duration::from_secs(12));
        let open = breaker.open().expect("open");
        assert_eq!(open.error, "circuit open: connect: refused");
        // A concurrent failure while open neither reopens nor counts a trip.
        let (_, again) = breaker.trip("connect: refused", &policy);
        assert!(!again);
        breaker.close();
        assert_eq!(breaker.open(), None);
        // Consecutive trips follow the schedule, then stay at its last step.
        let policy = RetryPolicy {
            schedule: vec![Duration::ZERO, Duration::from_secs(100)],
        };
        breaker.trip("timeout", &policy);
        let (second, opened) = breaker.trip("timeout", &policy);
        assert!(opened && second >= Duration::from_secs(80));
        breaker.close();
    }
}
