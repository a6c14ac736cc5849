//! The L2 circuit breaker. After `failures` consecutive failed calls it opens: calls skip
//! Redis for `open_for`. Then one probe call is let through (half-open): success closes the
//! breaker, failure opens it again.
//!
//! ```text
//!   Closed(n) --failure, n+1 = failures--> Open(until)
//!   Closed(n) --success--> Closed(0)
//!   Open(until) --now >= until, one caller--> HalfOpen
//!   HalfOpen --probe succeeds--> Closed(0)
//!   HalfOpen --probe fails--> Open(now + open_for)
//! ```
//! Time is passed in, so the state machine is tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub(crate) struct Breaker {
    failures: u32,
    open_for: Duration,
    /// A std mutex: every section is a few comparisons, never held across `.await`.
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// What a state change means for the service, to log it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    Opened,
    Closed,
}

impl Breaker {
    pub fn new(failures: u32, open_for: Duration) -> Self {
        Self { failures: failures.max(1), open_for, state: Mutex::new(State::Closed { consecutive_failures: 0 }) }
    }

    /// Whether a call may go to Redis now. In half-open state exactly one caller gets `true`.
    pub fn allow(&self, now: Instant) -> bool {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    pub fn record_success(&self) -> Option<Transition> {
        let mut state = self.lock();
        let was_open = !matches!(*state, State::Closed { .. });
        *state = State::Closed { consecutive_failures: 0 };
        was_open.then_some(Transition::Closed)
    }

    pub fn record_failure(&self, now: Instant) -> Option<Transition> {
        let mut state = self.lock();
        match *state {
            State::Closed { consecutive_failures } if consecutive_failures + 1 >= self.failures => {
                *state = State::Open { until: now + self.open_for };
                Some(Transition::Opened)
            }
            State::Closed { consecutive_failures } => {
                *state = State::Closed { consecutive_failures: consecutive_failures + 1 };
                None
            }
            State::HalfOpen | State::Open { .. } => {
                *state = State::Open { until: now + self.open_for };
                None
            }
        }
    }

    /// Closed means Redis is believed reachable.
    pub fn is_closed(&self) -> bool {
        matches!(*self.lock(), State::Closed { .. })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_secs(5);

    #[test]
    fn opens_after_consecutive_failures_only() {
        let breaker = Breaker::new(3, OPEN_FOR);
        let now = Instant::now();
        assert_eq!(breaker.record_failure(now), None);
        assert_eq!(breaker.record_failure(now), None);
        assert_eq!(breaker.record_success(), None, "a success resets the count");
        assert_eq!(breaker.record_failure(now), None);
        assert_eq!(breaker.record_failure(now), None);
        assert_eq!(breaker.record_failure(now), Some(Transition::Opened));
        assert!(!breaker.allow(now));
        assert!(!breaker.allow(now + OPEN_FOR - Duration::from_millis(1)));
        assert!(!breaker.is_closed());
    }

    #[test]
    fn half_open_lets_one_probe_through() {
        let breaker = Breaker::new(1, OPEN_FOR);
        let now = Instant::now();
        breaker.record_failure(now);
        let later = now + OPEN_FOR;
        assert!(breaker.allow(later), "the probe");
        assert!(!breaker.allow(later), "only one probe at a time");
        assert_eq!(breaker.record_success(), Some(Transition::Closed));
        assert!(breaker.allow(later) && breaker.is_closed());
    }

    #[test]
    fn a_failed_probe_reopens_for_the_full_period() {
        let breaker = Breaker::new(1, OPEN_FOR);
        let now = Instant::now();
        breaker.record_failure(now);
        let probe_at = now + OPEN_FOR;
        assert!(breaker.allow(probe_at));
        assert_eq!(breaker.record_failure(probe_at), None);
        assert!(!breaker.allow(probe_at + OPEN_FOR - Duration::from_millis(1)));
        assert!(breaker.allow(probe_at + OPEN_FOR));
    }
}
