//! When and how long to retry: bounded attempts, exponential backoff with
//! full jitter, and an overall deadline.

use std::time::{Duration, Instant};

/// Retry and timeout settings shared by the remote sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first one included.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled each time up to `max_delay`.
    pub base_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
    /// No new attempt starts after this much time on one request.
    pub deadline: Duration,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Longest one request (headers and body) may take; a stalled transfer
    /// is abandoned then and resumed from the last byte received.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            deadline: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `attempt` (1-based retries): uniform in
    /// `[0, min(max_delay, base_delay * 2^(attempt-1))]` ("full jitter").
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_delay);
        let mut r = [0u8; 8];
        let unit = match getrandom::fill(&mut r) {
            Ok(()) => (u64::from_le_bytes(r) >> 11) as f64 / (1u64 << 53) as f64,
            Err(_) => 0.5,
        };
        cap.mul_f64(unit)
    }

    /// True when another attempt may start: attempts left and deadline not passed.
    pub fn may_retry(&self, attempts: u32, started: Instant) -> bool {
        attempts < self.max_attempts && started.elapsed() < self.deadline
    }
}
