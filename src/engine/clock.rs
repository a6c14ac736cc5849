//! The engine's clock: wall-clock milliseconds that never run backwards.
//!
//! Entry deadlines are absolute Unix milliseconds (they are shown as RFC 3339 and will be
//! shared with other instances), but reading `SystemTime` on every hit would let a wall-clock
//! step expire or revive entries. So the clock reads the wall time once and advances it with
//! the monotonic clock (a vDSO call, no syscall).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct Clock {
    base_unix_ms: u64,
    start: Instant,
    /// Added to every reading; only tests move it, to expire entries without sleeping.
    skew_ms: Arc<AtomicU64>,
}

impl Clock {
    pub fn new() -> Self {
        let base_unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Self { base_unix_ms, start: Instant::now(), skew_ms: Arc::new(AtomicU64::new(0)) }
    }

    /// Milliseconds since the Unix epoch.
    #[inline]
    pub fn now_ms(&self) -> u64 {
        self.base_unix_ms + self.start.elapsed().as_millis() as u64 + self.skew_ms.load(Ordering::Relaxed)
    }

    /// Moves this clock (and its clones) forward.
    #[cfg(test)]
    pub fn advance_ms(&self, ms: u64) {
        self.skew_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Formats Unix milliseconds as RFC 3339 with millisecond precision, in UTC.
pub fn rfc3339(unix_ms: u64) -> String {
    let time = UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_is_utc_with_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_283_532_123), "2026-11-21T17:52:12.123Z");
    }

    #[test]
    fn advancing_moves_every_clone() {
        let clock = Clock::new();
        let clone = clock.clone();
        let before = clone.now_ms();
        clock.advance_ms(5_000);
        assert!(clone.now_ms() >= before + 5_000);
    }
}
