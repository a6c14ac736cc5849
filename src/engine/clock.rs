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
    let mut text = Vec::with_capacity(RFC3339_LEN);
    push_rfc3339(&mut text, unix_ms);
    String::from_utf8(text).expect("digits and ASCII punctuation")
}

/// Bytes of `2026-11-21T17:52:12.123Z` (years up to 9999).
pub const RFC3339_LEN: usize = 24;

/// Appends Unix milliseconds as RFC 3339 with millisecond precision, in UTC, to `out`: the
/// hit path renders two timestamps per answer, so this allocates and formats nothing else.
pub fn push_rfc3339(out: &mut Vec<u8>, unix_ms: u64) {
    let days = unix_ms / 86_400_000;
    let ms_of_day = unix_ms % 86_400_000;
    let (year, month, day) = civil_from_days(days);
    if year > 9999 {
        // Past year 9999 the year just grows (no panic, no fixed layout).
        push_digits(out, year, 4);
        out.extend_from_slice(&text_of(0, month, day, ms_of_day)[4..]);
        return;
    }
    out.extend_from_slice(&text_of(year, month, day, ms_of_day));
}

/// The fixed 24-byte layout, filled on the stack and appended once.
fn text_of(year: u64, month: u64, day: u64, ms_of_day: u64) -> [u8; RFC3339_LEN] {
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let secs = ms_of_day / 1000;
    let millis = ms_of_day % 1000;
    put_two_digits(&mut text, 0, year / 100 % 100);
    put_two_digits(&mut text, 2, year % 100);
    put_two_digits(&mut text, 5, month);
    put_two_digits(&mut text, 8, day);
    put_two_digits(&mut text, 11, secs / 3600);
    put_two_digits(&mut text, 14, secs / 60 % 60);
    put_two_digits(&mut text, 17, secs % 60);
    text[20] = b'0' + (millis / 100) as u8;
    put_two_digits(&mut text, 21, millis % 100);
    text
}

fn put_two_digits(text: &mut [u8; RFC3339_LEN], at: usize, value: u64) {
    text[at] = b'0' + (value / 10) as u8;
    text[at + 1] = b'0' + (value % 10) as u8;
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// `value` in decimal, zero-padded to at least `width` digits.
fn push_digits(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut rest = value;
    let mut start = digits.len();
    while rest > 0 || start > digits.len() - width {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The hand-written formatter says what humantime says, for every instant up to 9999.
        #[test]
        fn rfc3339_matches_humantime(unix_ms in 0u64..253_402_300_800_000) {
            let time = UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
            proptest::prop_assert_eq!(rfc3339(unix_ms), humantime::format_rfc3339_millis(time).to_string());
        }
    }

    #[test]
    fn rfc3339_edges() {
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(u64::MAX).len(), 29, "past year 9999 the year just grows: no panic");
    }

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
