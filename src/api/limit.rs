//! Per-token request rate: a token bucket per API token, in memory.
//!
//! Each token's bucket holds up to `per_minute` requests and refills continuously at
//! `per_minute` a minute, so a client may burst a minute's worth and then goes at the rate.
//! A request finding its bucket empty gets 429 with `Retry-After` (whole seconds until the
//! next request is allowed). The bucket is kept as its theoretical arrival time (GCRA): one
//! instant per token, exact integer arithmetic.
//!
//! Buckets are keyed by the token's hash and made only for tokens that authenticated, so
//! invented tokens cannot grow the map; a known token's bucket is checked *before* its
//! database lookup, so a throttled client costs no query. The map is pruned of buckets that
//! have refilled (they are the same as no bucket) when it grows past [`PRUNE_AT`].
//!
//! A `std::sync::Mutex` guards the map: it is held for a hash lookup and some arithmetic,
//! never across an await.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use std::time::Instant;

/// Buckets kept before full ones are pruned.
const PRUNE_AT: usize = 10_000;

/// The rate limiter shared by every request.
#[derive(Debug)]
pub struct RateLimiter {
    /// Time one request uses up (a minute / the rate).
    interval: Duration,
    /// A full bucket: `interval` × the rate.
    burst: Duration,
    /// Key → the instant its bucket is full again.
    buckets: Mutex<HashMap<String, Instant>>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` requests a minute per key (at least one).
    pub fn new(per_minute: u32) -> RateLimiter {
        let per_minute = per_minute.max(1);
        let interval = Duration::from_secs(60) / per_minute;
        RateLimiter {
            interval,
            burst: interval * per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket. `None` when `key` has no bucket and `create`
    /// is false (not yet authenticated); `Some(Err(wait))` when the bucket is empty, `wait`
    /// being how long until a request is allowed.
    pub fn take(&self, key: &str, create: bool) -> Option<Result<(), Duration>> {
        self.take_at(key, create, Instant::now())
    }

    /// [`take`](Self::take) at `now`.
    fn take_at(&self, key: &str, create: bool, now: Instant) -> Option<Result<(), Duration>> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if !buckets.contains_key(key) {
            if !create {
                return None;
            }
            if buckets.len() >= PRUNE_AT {
                buckets.retain(|_, full_at| *full_at > now);
            }
        }
        let full_at = buckets.entry(key.to_owned()).or_insert(now);
        let next = (*full_at).max(now) + self.interval;
        let used = next - now;
        if used <= self.burst {
            *full_at = next;
            Some(Ok(()))
        } else {
            Some(Err(used - self.burst))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_a_minute_then_refills_at_the_rate() {
        let limiter = RateLimiter::new(6);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(
            limiter.take_at("a", false, t0),
            None,
            "unknown keys get no bucket"
        );
        for _ in 0..6 {
            assert_eq!(limiter.take_at("a", true, t0), Some(Ok(())));
        }
        let wait = |secs| Some(Err(Duration::from_secs(secs)));
        assert_eq!(limiter.take_at("a", false, t0), wait(10));
        assert_eq!(limiter.take_at("b", true, t0), Some(Ok(())), "per key");
        assert_eq!(limiter.take_at("a", false, at(4)), wait(6));
        assert_eq!(limiter.take_at("a", false, at(10)), Some(Ok(())));
        assert_eq!(limiter.take_at("a", false, at(10)), wait(10));
        for _ in 0..6 {
            assert_eq!(limiter.take_at("a", false, at(3600)), Some(Ok(())));
        }
        assert_eq!(
            limiter.take_at("a", false, at(3600)),
            wait(10),
            "never more than 6"
        );
    }

    #[test]
    fn full_buckets_are_pruned() {
        let limiter = RateLimiter::new(60);
        let t0 = Instant::now();
        for i in 0..PRUNE_AT {
            assert_eq!(limiter.take_at(&i.to_string(), true, t0), Some(Ok(())));
        }
        let later = t0 + Duration::from_secs(2);
        assert_eq!(limiter.take_at("new", true, later), Some(Ok(())));
        let kept = limiter.buckets.lock().unwrap().len();
        assert_eq!(kept, 1);
    }
}
