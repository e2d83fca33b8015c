//! The one place that decides what an attempt's outcome means and when to try again.

use std::time::Duration;

/// Default backoff: about 5 s, 30 s, 2 m, 10 m, 30 m, 1 h, 3 h, 6 h, 12 h, 24 h.
pub const DEFAULT_SCHEDULE_SECS: [u64; 10] =
    [5, 30, 120, 600, 1800, 3600, 10800, 21600, 43200, 86400];

/// What one HTTP attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx within the timeout.
    Delivered,
    /// 410 Gone: deactivate the subscription, never retry.
    Gone,
    /// The endpoint could not be reached (connect, DNS, TLS, timeout): retry later, and open
    /// the subscription's circuit breaker.
    Unreachable {
        /// The transport error, for `last_error`.
        error: String,
    },
    /// Any other failure: retry later (at least `retry_after` when the server said so).
    Failed {
        /// Status code or transport error, for `last_error`.
        error: String,
        /// `Retry-After` on 429/503.
        retry_after: Option<Duration>,
    },
}

/// Classifies a response status (and its `Retry-After` header value).
pub fn classify(status: u16, retry_after: Option<&str>) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        410 => Outcome::Gone,
        _ => Outcome::Failed {
            error: format!("HTTP {status}"),
            retry_after: (status == 429 || status == 503)
                .then(|| retry_after.and_then(|v| v.trim().parse::<u64>().ok()))
                .flatten()
                .map(Duration::from_secs),
        },
    }
}

/// The retry schedule.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Delay before retry n (1-based: `schedule[0]` after the first failure).
    pub schedule: Vec<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            schedule: DEFAULT_SCHEDULE_SECS
                .iter()
                .map(|&s| Duration::from_secs(s))
                .collect(),
        }
    }
}

impl RetryPolicy {
    /// The delay after the `attempts`-th failed attempt, with ±20 % jitter and at least
    /// `retry_after`; `None` when the schedule is exhausted (dead letter).
    pub fn next_delay(&self, attempts: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let base = *self.schedule.get(attempts.checked_sub(1)? as usize)?;
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        let delay = base.mul_f64(jitter);
        Some(retry_after.map_or(delay, |r| delay.max(r)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_and_schedules() {
        assert_eq!(classify(204, None), Outcome::Delivered);
        assert_eq!(classify(410, None), Outcome::Gone);
        assert_eq!(
            classify(429, Some("7")),
            Outcome::Failed {
                error: "HTTP 429".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert_eq!(
            classify(500, Some("7")),
            Outcome::Failed {
                error: "HTTP 500".into(),
                retry_after: None
            }
        );
        let policy = RetryPolicy::default();
        let first = policy.next_delay(1, None).unwrap();
        assert!(
            first >= Duration::from_secs(4) && first <= Duration::from_secs(6),
            "{first:?}"
        );
        assert!(
            policy.next_delay(1, Some(Duration::from_secs(60))).unwrap() >= Duration::from_secs(60)
        );
        assert_eq!(policy.next_delay(11, None), None);
        assert_eq!(policy.next_delay(0, None), None);
    }
}
