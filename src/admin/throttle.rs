//! Log lines a failing dependency repeats: at most one per interval, so a
//! flood of requests against a dead upstream or introspection server does
//! not become a flood of identical lines. The metrics count every failure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Lets one line through per [`LogThrottle::INTERVAL`] and counts the rest.
#[derive(Debug)]
pub struct LogThrottle {
    /// Milliseconds since `origin` before which no line is written.
    next_ms: AtomicU64,
    /// Lines held back since the last one written.
    suppressed: AtomicU64,
    origin: Instant,
}

impl Default for LogThrottle {
    fn default() -> Self {
        Self {
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }
}

impl LogThrottle {
    /// The least time between two lines.
    pub const INTERVAL: Duration = Duration::from_secs(10);

    /// `Some(n)` when a line may be written now, `n` being how many were
    /// held back before it; `None` when this one is held back.
    pub fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(Self::INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now.saturating_add(interval),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_rest_counted() {
        let throttle = LogThrottle::default();
        assert_eq!(throttle.allow(), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.allow(), None);
        }
        // As if the interval had passed.
        throttle.next_ms.store(0, Ordering::Relaxed);
        assert_eq!(throttle.allow(), Some(5));
        assert_eq!(throttle.allow(), None);
    }
}
