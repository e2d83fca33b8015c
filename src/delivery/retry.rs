//! The one place that decides what an attempt's outcome means and when to try again.
//!
//! Values from an endpoint are bounded here: a `Retry-After` (delay-seconds or HTTP-date)
//! longer than the schedule's last step is cut to it, a garbage or negative one is ignored,
//! so no endpoint can push a retry beyond the schedule (or a timestamp out of range).

use std::time::Duration;

/// Longest `Retry-After` value read (characters); a longer one is ignored.
pub const MAX_RETRY_AFTER_LEN: usize = 64;

/// Largest `Retry-After` kept before the schedule's clamp (100 years): parsing never
/// overflows, whatever the endpoint sends.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(100 * 365 * 86_400);

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
                .then(|| retry_after.and_then(|v| parse_retry_after(v, chrono::Utc::now())))
                .flatten(),
        },
    }
}

/// Reads a `Retry-After` value as of `now`: delay-seconds (`120`; too many digits count as
/// "very long") or an HTTP-date (IMF-fixdate, RFC 850 or asctime; a date in the past is
/// zero). Anything else — negative, fractional, garbage, longer than
/// [`MAX_RETRY_AFTER_LEN`] — is `None` (ignored). The result is at most 100 years;
/// [`RetryPolicy::next_delay`] then cuts it to the schedule's last step.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || value.len() > MAX_RETRY_AFTER_LEN {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let date = parse_http_date(value)?;
    let delta = date.signed_duration_since(now);
    Some(
        delta
            .to_std()
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// The three HTTP-date forms of RFC 9110 §5.6.7, all in GMT.
fn parse_http_date(value: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    use chrono::NaiveDateTime;
    let gmt = value.strip_suffix(" GMT");
    let naive = gmt
        .and_then(|v| NaiveDateTime::parse_from_str(v, "%a, %d %b %Y %H:%M:%S").ok())
        .or_else(|| {
            gmt.and_then(|v| NaiveDateTime::parse_from_str(v, "%A, %d-%b-%y %H:%M:%S").ok())
        })
        .or_else(|| NaiveDateTime::parse_from_str(value, "%a %b %e %H:%M:%S %Y").ok())?;
    Some(naive.and_utc())
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
    /// `retry_after` — itself cut to the schedule's last step, so an endpoint cannot ask for
    /// more than the schedule allows; `None` when the schedule is exhausted (dead letter).
    pub fn next_delay(&self, attempts: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let base = *self.schedule.get(attempts.checked_sub(1)? as usize)?;
        let jitter = 0.8 + rand::random::<f64>() * 0.4;
        let delay = base.mul_f64(jitter);
        let longest = self.schedule.last().copied().unwrap_or_default();
        Some(retry_after.map_or(delay, |r| delay.max(r.min(longest))))
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

    fn at(date: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(date).unwrap().into()
    }

    #[test]
    fn retry_after_is_parsed_and_bounded() {
        let now = at("2026-11-23T04:53:30Z");
        let parse = |v: &str| parse_retry_after(v, now);
        assert_eq!(parse("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse("10000000000000"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse("99999999999999999999999999999"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse("-5"), None);
        assert_eq!(parse("1.5"), None);
        assert_eq!(parse("soon"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse(&"9".repeat(65)), None);
        assert_eq!(
            parse("Mon, 23 Nov 2026 04:55:30 GMT"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse("Monday, 23-Nov-26 04:54:30 GMT"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse("Mon Nov 23 04:53:40 2026"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        assert_eq!(
            parse("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse("Mon, 23 Nov 2026 04:55:30 PST"), None);
        assert_eq!(
            classify(503, Some("10000000000000")),
            Outcome::Failed {
                error: "HTTP 503".into(),
                retry_after: Some(MAX_RETRY_AFTER)
            }
        );
    }

    #[test]
    fn retry_after_never_exceeds_the_last_step() {
        let policy = RetryPolicy {
            schedule: vec![Duration::from_secs(1), Duration::from_secs(60)],
        };
        for attempts in 1..=2 {
            let delay = policy.next_delay(attempts, Some(MAX_RETRY_AFTER)).unwrap();
            assert!(delay <= Duration::from_secs(72), "{delay:?}");
            assert!(delay >= Duration::from_secs(60), "{delay:?}");
        }
        let delay = policy.next_delay(1, Some(Duration::from_secs(30))).unwrap();
        assert_eq!(delay, Duration::from_secs(30));
        let empty = RetryPolicy { schedule: vec![] };
        assert_eq!(empty.next_delay(1, Some(MAX_RETRY_AFTER)), None);
    }
}
