//! Log lines a failing dependency repeats: at most one per interval, so a
//! flood of requests against a dead upstream or introspection server does
//! not become a flood of identical lines. The metrics count every failure.
//! Likewise the lines other crates write about what a peer sent
//! ([`ForeignLines`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

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

/// Message sites of other crates throttled each on their own at most;
/// lines of sites past them share one throttle.
pub const MAX_FOREIGN_SITES: usize = 256;

/// Lets through at most one line per [`LogThrottle::INTERVAL`] from each
/// message site of another crate, at `info` or above (`debug` and `trace`,
/// which an operator asks for by name, pass as they are), and counts the
/// lines it holds back. A peer can have those crates write lines at will,
/// before any request: h2 warns of each PING acknowledgement it never
/// asked for (17 bytes of a client's, or an upstream's), rustls of each
/// malformed handshake message. Unthrottled, one connection filled the
/// log (whose queue drops lines past 8 192, access lines with them) at
/// wire speed. scopegate's own lines are not held back here.
#[derive(Debug, Default)]
pub struct ForeignLines {
    sites: Mutex<HashMap<u64, LogThrottle>>,
    /// For lines of sites past [`MAX_FOREIGN_SITES`].
    overflow: LogThrottle,
    held_back: Arc<AtomicU64>,
}

impl ForeignLines {
    /// The count of lines held back so far.
    pub fn held_back(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.held_back)
    }

    /// Whether a line of another crate's at `site` may be written now.
    fn allow(&self, site: u64) -> bool {
        let mut sites = self.sites.lock().unwrap_or_else(PoisonError::into_inner);
        let room = sites.len() < MAX_FOREIGN_SITES;
        let allowed = match sites.get(&site) {
            Some(throttle) => throttle.allow(),
            None if room => sites.entry(site).or_default().allow(),
            None => self.overflow.allow(),
        };
        if allowed.is_none() {
            self.held_back.fetch_add(1, Ordering::Relaxed);
        }
        allowed.is_some()
    }
}

/// Whether `target` is scopegate's own (the library's or the binary's).
fn is_own(target: &str) -> bool {
    target
        .strip_prefix("scopegate")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

impl<S: Subscriber> Layer<S> for ForeignLines {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::INFO || is_own(meta.target()) {
            return true;
        }
        // The site by target, file and line: lines passed on from the `log`
        // crate (rustls's) share one callsite per level.
        let mut site = std::collections::hash_map::DefaultHasher::new();
        (meta.target(), meta.file(), meta.line()).hash(&mut site);
        self.allow(site.finish())
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

    /// Each site of another crate's gets its own line; the sites past
    /// `MAX_FOREIGN_SITES` share one; what is held back is counted.
    #[test]
    fn other_crates_lines_are_throttled_per_site() {
        let lines = ForeignLines::default();
        for site in 0..MAX_FOREIGN_SITES as u64 + 10 {
            let first = lines.allow(site);
            assert_eq!(first, site <= MAX_FOREIGN_SITES as u64, "{site}");
            assert!(!lines.allow(site), "{site}");
        }
        let expected = MAX_FOREIGN_SITES as u64 + 2 * 10 - 1;
        assert_eq!(lines.held_back.load(Ordering::Relaxed), expected);
        assert!(is_own("scopegate") && is_own("scopegate::access"));
        assert!(!is_own("scopegate_x") && !is_own("h2::proto::ping_pong"));
    }
}
