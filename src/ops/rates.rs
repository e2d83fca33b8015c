//! Events and deliveries per second over the last minute, computed in the daemon.
//!
//! Delivery bumps two monotonic counters ([`Rates::event`] for each event routed out of a
//! captured change, [`Rates::delivered`] for each 2xx, first attempt or retry); the heartbeat
//! samples them into a [`RateWindow`] at every beat and publishes the difference between the
//! newest sample and the oldest one within the last [`WINDOW`], divided by the time between
//! them. Relaxed atomics: the counts need no ordering with anything else.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The window the rates are computed over.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Counters of events and successful deliveries since the daemon started.
#[derive(Debug, Default)]
pub struct Rates {
    events: AtomicU64,
    deliveries: AtomicU64,
}

impl Rates {
    /// Counts one event captured on a watched table.
    pub fn event(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one successful request (2xx; a batch of events is one).
    pub fn delivered(&self) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
    }

    /// (events, deliveries) so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.events.load(Ordering::Relaxed),
            self.deliveries.load(Ordering::Relaxed),
        )
    }
}

/// Samples of [`Rates::totals`] over the last [`WINDOW`].
#[derive(Debug, Default)]
pub struct RateWindow {
    samples: VecDeque<(Instant, u64, u64)>,
}

impl RateWindow {
    /// Records `totals` taken at `now` and returns (events/s, deliveries/s) since the oldest
    /// sample still in the window (0 for the very first sample).
    pub fn sample(&mut self, now: Instant, totals: (u64, u64)) -> (f64, f64) {
        while self
            .samples
            .front()
            .is_some_and(|(at, _, _)| now.duration_since(*at) > WINDOW)
        {
            self.samples.pop_front();
        }
        self.samples.push_back((now, totals.0, totals.1));
        let Some(&(first, events, deliveries)) = self.samples.front() else {
            return (0.0, 0.0);
        };
        let secs = now.duration_since(first).as_secs_f64();
        if secs <= 0.0 {
            return (0.0, 0.0);
        }
        (
            totals.0.saturating_sub(events) as f64 / secs,
            totals.1.saturating_sub(deliveries) as f64 / secs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_cover_the_last_minute_only() {
        let start = Instant::now();
        let mut window = RateWindow::default();
        assert_eq!(window.sample(start, (0, 0)), (0.0, 0.0));
        let at = |secs| start + Duration::from_secs(secs);
        assert_eq!(window.sample(at(10), (100, 50)), (10.0, 5.0));
        assert_eq!(window.sample(at(60), (600, 300)), (10.0, 5.0));
        // The sample at 0 s leaves the window: 10 s → 70 s, (700 - 100) / 60 s.
        assert_eq!(window.sample(at(70), (700, 350)), (10.0, 5.0));
        // Idle for a minute and more: nothing counted within the window.
        assert_eq!(window.sample(at(135), (700, 350)), (0.0, 0.0));
        assert_eq!(window.sample(at(195), (700, 350)), (0.0, 0.0));
    }

    #[test]
    fn counters_count() {
        let rates = Rates::default();
        rates.event();
        rates.event();
        rates.delivered();
        assert_eq!(rates.totals(), (2, 1));
    }
}
