//! Write stripes and fill tokens: what orders writes of one key and keeps a fill (a copy read
//! from L2 or the origin) from resurrecting what a write, removal or clear changed while the
//! read was out.
//!
//! Invariants:
//! - Writes of one key are serialized by its stripe's mutex, so the index records of two
//!   concurrent writes of a key cannot interleave. Striped, not per key, so the memory does
//!   not grow with the key space. A stripe lock is never held across `.await` (L1 is
//!   synchronous) and never taken inside a quick_cache hook; no path holds two, but a clear
//!   during a restore, which takes all of them in order.
//! - Each write and removal bumps its stripe's epoch, each clear bumps the clear epoch; a fill
//!   is inserted only if neither moved since its token was taken.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use quick_cache::DefaultHashBuilder;

const STRIPES: usize = 1024;

pub(super) struct Stripes {
    locks: Box<[Mutex<()>]>,
    /// Per stripe: bumped by every write and removal of a key in it.
    epochs: Box<[AtomicU64]>,
    clear_epoch: AtomicU64,
    /// foldhash, seeded per instance (SipHash cost a write ~300 instructions).
    hasher: DefaultHashBuilder,
}

/// Proof that nothing changed a key between an L2 read and the fill of its result.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FillToken {
    stripe: usize,
    epoch: u64,
    clear_epoch: u64,
}

impl FillToken {
    pub(super) fn stripe(&self) -> usize {
        self.stripe
    }
}

impl Stripes {
    pub fn new() -> Stripes {
        Stripes {
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            epochs: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            clear_epoch: AtomicU64::new(0),
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// The stripe of `key`.
    pub fn of(&self, key: &[u8]) -> usize {
        self.hasher.hash_one(key) as usize % STRIPES
    }

    pub fn lock(&self, stripe: usize) -> MutexGuard<'_, ()> {
        self.locks[stripe].lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every stripe, in order (the one path that holds more than one).
    pub fn lock_all(&self) -> Vec<MutexGuard<'_, ()>> {
        self.locks.iter().map(|lock| lock.lock().unwrap_or_else(PoisonError::into_inner)).collect()
    }

    /// Records a write or removal in `stripe`: pending fills of its keys are cancelled.
    pub fn bump(&self, stripe: usize) {
        self.epochs[stripe].fetch_add(1, Ordering::AcqRel);
    }

    /// Records a clear: every pending fill is cancelled.
    pub fn bump_clear(&self) {
        self.clear_epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub fn token(&self, key: &[u8]) -> FillToken {
        let stripe = self.of(key);
        FillToken {
            stripe,
            epoch: self.epochs[stripe].load(Ordering::Acquire),
            clear_epoch: self.clear_epoch.load(Ordering::Acquire),
        }
    }

    /// Whether nothing wrote, removed or cleared the token's key since it was taken.
    pub fn is_unchanged(&self, token: FillToken) -> bool {
        self.epochs[token.stripe].load(Ordering::Acquire) == token.epoch
            && self.clear_epoch.load(Ordering::Acquire) == token.clear_epoch
    }
}
