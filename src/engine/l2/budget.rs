//! What one request may still do with L2.
//!
//! Every L2 call of a request goes through its budget. After one failed call the request makes
//! no more, so no request waits for Redis much longer than one `l2.timeout_ms`; and the budget
//! remembers the failure, because after it L2's state is unknown: the request's answer says so
//! (503 `l2_unavailable`, `"l2":"unavailable"`), and its invalidation messages are not sent
//! but still spend their `seq`, so every peer sees the gap and clears its L1 (`bus.rs`).

use std::future::Future;

use super::{L2Error, L2};

pub(crate) struct L2Budget<'a> {
    /// `None` without L2.
    l2: Option<&'a L2>,
    /// A call failed: no more calls, and L2 may not hold what this request meant it to.
    failed: bool,
}

impl<'a> L2Budget<'a> {
    pub fn new(l2: Option<&'a L2>) -> L2Budget<'a> {
        L2Budget { l2, failed: false }
    }

    /// Runs `call` unless L2 is absent or already failed in this request; `None` then, and
    /// when the call fails now (the failure is remembered).
    pub async fn call<T, Fut>(&mut self, call: impl FnOnce(&'a L2) -> Fut) -> Option<T>
    where
        Fut: Future<Output = Result<T, L2Error>>,
    {
        let l2 = self.usable()?;
        match call(l2).await {
            Ok(value) => Some(value),
            Err(err) => {
                tracing::debug!(%err, "l2 call failed: no more l2 calls in this request");
                self.failed = true;
                None
            }
        }
    }

    /// The L2 client while calls may still be made.
    pub fn usable(&self) -> Option<&'a L2> {
        self.l2.filter(|_| !self.failed)
    }

    pub fn is_configured(&self) -> bool {
        self.l2.is_some()
    }

    /// L2 is configured and a call of this request failed: L2's state is unknown.
    pub fn has_failed(&self) -> bool {
        self.l2.is_some() && self.failed
    }
}
