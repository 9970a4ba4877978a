//! Retry policy: exponential backoff with jitter, bounded attempts, `Retry-After` honoured, and
//! deadlines: per HTTP request, per call (all its retries), per job (polling).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::super::RETRYABLE_REASONS;

/// How often and how long to retry a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (first try included); at least 1.
    pub max_attempts: u32,
    /// Delay before the second attempt (before jitter).
    pub base_delay: Duration,
    /// Upper bound of one delay.
    pub max_delay: Duration,
    /// Longest one HTTP request may take, connecting and reading the answer included (a
    /// stalled server that accepts and never answers fails the attempt after this).
    pub request_timeout: Duration,
    /// Longest one call may take with all its retries: no retry starts after it.
    pub call_deadline: Duration,
    /// Longest datasync waits for a job to finish (BigQuery's own limit for query and load
    /// jobs is 6 h: <https://cloud.google.com/bigquery/quotas#query_jobs>).
    pub job_deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(32),
            request_timeout: Duration::from_secs(120),
            call_deadline: Duration::from_secs(10 * 60),
            job_deadline: Duration::from_secs(6 * 60 * 60),
        }
    }
}

impl RetryPolicy {
    /// No retries (first attempt only).
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The timeout of one HTTP request that must be done by `deadline`.
    pub(crate) fn request_timeout_until(&self, deadline: Instant) -> Duration {
        self.request_timeout
            .min(deadline.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(1))
    }

    /// Whether a failed attempt number `attempt` (1-based) may be followed by another.
    pub fn should_retry(&self, attempt: u32) -> bool {
        attempt < self.max_attempts.max(1)
    }

    /// The delay after failed attempt `attempt` (1-based): `base * 2^(attempt-1)`, capped at
    /// `max_delay`, scaled by `jitter` in `[0, 1)` into `[50%, 100%]`; a server's
    /// `Retry-After` wins when it is longer (still capped at `max_delay`).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let backoff = self
            .base_delay
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let jittered = backoff.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        match retry_after {
            Some(wait) if wait > jittered => wait.min(self.max_delay),
            _ => jittered,
        }
    }
}

/// Whether an HTTP status / BigQuery reason is worth retrying.
pub(crate) fn is_retryable(status: u16, reason: &str) -> bool {
    status == 429 || status >= 500 || RETRYABLE_REASONS.contains(&reason)
}

/// Parses `Retry-After` in its delay-seconds form (HTTP dates are ignored).
pub(crate) fn parse_retry_after(value: Option<&str>) -> Option<Duration> {
    value?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A pseudo-random number in `[0, 1)`; good enough to spread retries, not for anything else.
pub(crate) fn jitter() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|time| time.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = nanos ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.delay(1, None, 1.0), Duration::from_millis(500));
        assert_eq!(policy.delay(1, None, 0.0), Duration::from_millis(250));
        assert_eq!(policy.delay(2, None, 1.0), Duration::from_secs(1));
        assert_eq!(policy.delay(4, None, 1.0), Duration::from_secs(4));
        assert_eq!(policy.delay(30, None, 1.0), Duration::from_secs(32));
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(7)), 1.0),
            Duration::from_secs(7)
        );
        assert_eq!(
            policy.delay(1, Some(Duration::from_secs(700)), 1.0),
            Duration::from_secs(32)
        );
        assert_eq!(
            policy.delay(3, Some(Duration::from_millis(1)), 1.0),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn attempts_are_bounded() {
        let policy = RetryPolicy::default();
        assert!((1..6).all(|attempt| policy.should_retry(attempt)));
        assert!(!policy.should_retry(6));
        assert!(!RetryPolicy::none().should_retry(1));
    }

    #[test]
    fn classification() {
        assert!(is_retryable(429, ""));
        assert!(is_retryable(500, ""));
        assert!(is_retryable(503, "backendError"));
        assert!(is_retryable(403, "rateLimitExceeded"));
        assert!(is_retryable(400, "internalError"));
        assert!(!is_retryable(400, "invalid"));
        assert!(!is_retryable(403, "accessDenied"));
        assert!(!is_retryable(409, "duplicate"));
        assert_eq!(parse_retry_after(Some(" 3 ")), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(None), None);
    }

    #[test]
    fn jitter_is_in_range() {
        assert!(
            (0..1000)
                .map(|_| jitter())
                .all(|value| (0.0..1.0).contains(&value))
        );
    }
}
