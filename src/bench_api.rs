//! A narrow surface for the criterion benchmarks (`benches/engine.rs`): the engine is
//! crate-private, and benchmarks are another crate. Not an API: nothing here is stable.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;

use crate::config::Parts;
use crate::engine::l2::{Compression, Envelope};
use crate::engine::{Cache, Key, Lookup, WriteRequest};

/// An L1-only engine holding `entries` keys (`key:0000000`…) with values of `value_len` bytes.
pub struct L1Bench {
    engine: Arc<Cache>,
    keys: Vec<Key>,
    value: Bytes,
}

impl L1Bench {
    pub fn filled(entries: usize, value_len: usize) -> L1Bench {
        let parts = Parts::for_tests(entries * 2, (entries as u64).saturating_mul(1024).max(1 << 20));
        let engine = Arc::new(Cache::standalone(&parts, "bench"));
        let keys: Vec<Key> = (0..entries).map(|idx| engine.parse_key(&format!("key:{idx:07}")).unwrap()).collect();
        let value = Bytes::from(format!("\"{}\"", "x".repeat(value_len.saturating_sub(2))));
        let bench = L1Bench { engine, keys, value };
        for idx in 0..entries {
            bench.insert(idx);
        }
        bench
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// A read of key `idx`; true on a hit. L1 answers without awaiting anything.
    pub fn get(&self, idx: usize) -> bool {
        matches!(self.engine.read(&self.keys[idx]).now_or_never(), Some(Ok(Lookup::Hit(_))))
    }

    /// A write of key `idx` (replacing what is there), through validation as a PUT does.
    pub fn insert(&self, idx: usize) {
        let request = WriteRequest {
            key: self.keys[idx].clone(),
            value: self.value.clone(),
            ttl_secs: Some(3600),
            tags: Vec::new(),
            depends_on: Vec::new(),
        };
        let write = self.engine.validate(request).expect("a valid write");
        let stored = self.engine.set(write).now_or_never();
        assert!(matches!(stored, Some(Ok(_))), "an L1-only write completes at once");
    }

    /// Writes a snapshot of everything to `path`; returns the entries written.
    pub fn write_snapshot(&self, path: &Path) -> u64 {
        self.engine.write_snapshot(path).expect("snapshot written").entries
    }
}

/// Restores `path` into a new L1-only engine sized for `entries`; returns the entries restored.
pub fn restore_snapshot(path: &Path, entries: usize) -> u64 {
    let parts = Parts::for_tests(entries * 2, (entries as u64).saturating_mul(1024).max(1 << 20));
    let engine = Cache::standalone(&parts, "bench");
    engine.restore_snapshot(path, |_| crate::engine::snapshot::L2Check::Skip).expect("snapshot restored").restored
}

/// Cases per fuzz property (the `fuzz_` tests): `TIERCACHE_FUZZ_CASES` when set, else `short`,
/// the count the test command runs. `bench/fuzz.sh` sets 100 000.
pub fn fuzz_cases(short: u32) -> u32 {
    std::env::var("TIERCACHE_FUZZ_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(short)
}

/// Redis glob matching, as pattern invalidation uses it.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    crate::engine::glob::matches(pattern, text)
}

/// An L2 envelope: a value of `value_len` bytes with `tags` tags.
pub struct EnvelopeBench {
    envelope: Envelope,
    compression: Compression,
}

impl EnvelopeBench {
    pub fn new(value_len: usize, tags: usize, compressed: bool) -> EnvelopeBench {
        let value: String = (0..value_len).map(|idx| char::from(b'a' + (idx % 23) as u8)).collect();
        let envelope = Envelope {
            value: Bytes::from(value),
            cached_at_ms: 1_800_000_000_000,
            expires_at_ms: 1_800_000_360_000,
            tags: (0..tags).map(|idx| format!("tag:{idx}")).collect(),
            depends_on: Vec::new(),
        };
        let compression = Compression { zstd_level: compressed.then_some(3), threshold_bytes: 64 };
        EnvelopeBench { envelope, compression }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.envelope.encode(self.compression).bytes
    }

    pub fn decode(bytes: &[u8]) -> usize {
        Envelope::decode(bytes, 1 << 20).expect("a valid envelope").value.len()
    }
}
