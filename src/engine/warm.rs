//! Warming (SPEC §7): loading entries from `warm.url` (a JSON array or NDJSON of
//! `{"key","value","ttl"?,"tags"?}`) and `warm.keys` (read through the origin), and the status
//! `GET /api/cache/warm` reports. When and how often is the warmer task's business.
//!
//! The source body is streamed: a splitter cuts it into top-level items as bytes arrive, so
//! memory holds one item (at most `cache.max_value_bytes` plus slack), never the whole source.
//! A bad item is counted in `errors` and skipped; an unreachable source or a broken stream
//! fails the run (state `failed`) and is retried on the next interval. Warmed entries are
//! ordinary writes: L1 and L2, cascade and invalidation messages included.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};
use tokio::sync::Notify;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::entry::present_raw;
use super::{Brought, Cache, EngineError, ValidWrite, WriteRequest};
use crate::config::WarmConfig;

/// Writes per `set_many` call while warming from a URL.
const WRITE_BATCH: usize = 256;

/// `state` of a warm run as `GET /api/cache/warm` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarmState {
    Idle,
    Running,
    Done,
    Failed,
}

impl WarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            WarmState::Idle => "idle",
            WarmState::Running => "running",
            WarmState::Done => "done",
            WarmState::Failed => "failed",
        }
    }
}

/// The last or current run.
#[derive(Debug, Clone)]
pub struct WarmStatus {
    pub state: WarmState,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub loaded: u64,
    pub errors: u64,
    pub source: Option<String>,
}

/// The warm source and the status of its runs; at most one run at a time.
pub struct Warmer {
    config: WarmConfig,
    /// Only with `warm.url`: a cache without one builds no HTTP client.
    client: Option<reqwest::Client>,
    running: AtomicBool,
    status: Mutex<WarmStatus>,
    /// Wakes the warmer task after `POST /api/cache/warm` claimed a run.
    requested: Notify,
}

/// One source item, as the source gives it. Unknown fields are ignored: sources are other
/// programs' exports.
#[derive(Deserialize)]
struct WarmItem {
    key: String,
    /// `null` is a value; only a missing field is `None`.
    #[serde(default, deserialize_with = "present_raw")]
    value: Option<Box<RawValue>>,
    ttl: Option<u64>,
    tags: Option<Vec<String>>,
}

impl Warmer {
    pub fn new(config: WarmConfig) -> Warmer {
        let client = config.url.as_ref().map(|_| {
            super::origin::install_tls_provider();
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .expect("the warm client builds with a TLS provider installed")
        });
        let source = match (&config.url, config.keys.len()) {
            (Some(url), 0) => Some(url.to_string()),
            (Some(url), n) => Some(format!("{url} + {n} keys")),
            (None, 0) => None,
            (None, n) => Some(format!("{n} keys")),
        };
        let status = WarmStatus {
            state: WarmState::Idle,
            started_at_ms: None,
            finished_at_ms: None,
            loaded: 0,
            errors: 0,
            source,
        };
        Warmer { config, client, running: AtomicBool::new(false), status: Mutex::new(status), requested: Notify::new() }
    }

    pub fn is_configured(&self) -> bool {
        self.config.is_configured()
    }

    /// `warm.interval_secs`; `None` = warm only at start and on request.
    pub fn interval(&self) -> Option<Duration> {
        self.config.interval
    }

    /// Claims a run for a client and wakes the warmer task: false when one runs already.
    pub fn request(&self, now_ms: u64) -> bool {
        let claimed = self.try_begin(now_ms);
        if claimed {
            self.requested.notify_one();
        }
        claimed
    }

    /// Resolves when a client has claimed a run with [`Warmer::request`].
    pub async fn requested(&self) {
        self.requested.notified().await;
    }

    pub fn status(&self) -> WarmStatus {
        self.lock().clone()
    }

    /// Claims the run: false when one runs already. The claimer must call [`Warmer::run`].
    pub fn try_begin(&self, now_ms: u64) -> bool {
        if self.running.swap(true, Ordering::AcqRel) {
            return false;
        }
        let mut status = self.lock();
        status.state = WarmState::Running;
        status.started_at_ms = Some(now_ms);
        status.finished_at_ms = None;
        status.loaded = 0;
        status.errors = 0;
        true
    }

    /// Records a claimed run that shutdown cut short.
    pub fn abandon(&self, now_ms: u64) {
        if self.running.swap(false, Ordering::AcqRel) {
            let mut status = self.lock();
            status.state = WarmState::Failed;
            status.finished_at_ms = Some(now_ms);
        }
    }

    /// Runs a claimed warm to the end (bounded by `warm.timeout_secs`) and records it.
    pub async fn run(&self, engine: &Arc<Cache>) -> WarmStatus {
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.config.timeout, self.load(engine)).await;
        let failed = match outcome {
            Ok(Ok(())) => false,
            Ok(Err(err)) => {
                tracing::warn!(%err, "warm failed; it is retried on the next interval");
                true
            }
            Err(_) => {
                tracing::warn!(
                    timeout_secs = self.config.timeout.as_secs(),
                    "warm did not finish in warm.timeout_secs"
                );
                true
            }
        };
        engine.metrics().warm_duration.observe(started.elapsed().as_secs_f64());
        let status = {
            let mut status = self.lock();
            status.state = if failed { WarmState::Failed } else { WarmState::Done };
            status.finished_at_ms = Some(engine.clock().now_ms());
            if failed {
                status.errors += 1;
            }
            status.clone()
        };
        self.running.store(false, Ordering::Release);
        tracing::info!(state = status.state.as_str(), loaded = status.loaded, errors = status.errors, "warm finished");
        status
    }

    async fn load(&self, engine: &Arc<Cache>) -> Result<(), String> {
        if let Some(url) = &self.config.url {
            self.load_url(engine, url).await?;
        }
        if !self.config.keys.is_empty() {
            self.load_keys(engine).await;
        }
        Ok(())
    }

    async fn load_url(&self, engine: &Cache, url: &reqwest::Url) -> Result<(), String> {
        let client = self.client.as_ref().ok_or("warm source: no client")?;
        let mut response = client.get(url.clone()).send().await.map_err(|err| format!("warm source: {err}"))?;
        if !response.status().is_success() {
            return Err(format!("warm source answered {}", response.status()));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let format = if content_type.starts_with("application/x-ndjson") {
            Some(Format::Ndjson)
        } else if content_type.starts_with("application/json") {
            Some(Format::Array)
        } else {
            None // Decided by the first non-blank byte.
        };
        let mut splitter = Splitter::new(format, engine.limits.max_value_bytes + 64 * 1024);
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while let Some(chunk) = response.chunk().await.map_err(|err| format!("warm source stream: {err}"))? {
            for item in splitter.push(&chunk) {
                self.take_item(engine, item, &mut batch);
                if batch.len() >= WRITE_BATCH {
                    self.store(engine, std::mem::take(&mut batch)).await;
                }
            }
        }
        for item in splitter.finish() {
            self.take_item(engine, item, &mut batch);
        }
        self.store(engine, batch).await;
        Ok(())
    }

    fn take_item(&self, engine: &Cache, item: Result<Bytes, ItemError>, batch: &mut Vec<ValidWrite>) {
        match item.map_err(|err| err.to_string()).and_then(|bytes| parse_item(engine, &bytes)) {
            Ok(write) => batch.push(write),
            Err(err) => {
                tracing::debug!(%err, "warm item skipped");
                self.lock().errors += 1;
            }
        }
    }

    async fn store(&self, engine: &Cache, batch: Vec<ValidWrite>) {
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        match engine.set_many(batch).await {
            Ok(_) => self.lock().loaded += count,
            Err(err) => {
                tracing::warn!(%err, "warm batch not stored");
                self.lock().errors += count;
            }
        }
    }

    async fn load_keys(&self, engine: &Arc<Cache>) {
        let keys = self.config.keys.clone();
        let mut fetches = futures_util::stream::iter(keys)
            .map(|raw| async move {
                let key = engine.parse_writable_key(&raw).ok()?;
                engine.fetch_into_cache(&key, Brought::OnDemand).await.then_some(())
            })
            .buffer_unordered(self.config.parallelism.max(1));
        while let Some(result) = fetches.next().await {
            let mut status = self.lock();
            match result {
                Some(()) => status.loaded += 1,
                None => status.errors += 1,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WarmStatus> {
        self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn parse_item(engine: &Cache, bytes: &[u8]) -> Result<ValidWrite, String> {
    let item: WarmItem = serde_json::from_slice(bytes).map_err(|err| format!("not a warm item: {err}"))?;
    let value = item.value.ok_or("the item has no value")?;
    let key = engine.parse_key(&item.key).map_err(|err| err.to_string())?;
    engine
        .validate(WriteRequest {
            key,
            value: Bytes::copy_from_slice(value.get().as_bytes()),
            ttl_secs: item.ttl,
            tags: item.tags.unwrap_or_default(),
            depends_on: Vec::new(),
        })
        .map_err(|err: EngineError| err.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Array,
    Ndjson,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ItemError {
    #[error("an item is larger than the limit")]
    TooLarge,
    #[error("the source is not a JSON array")]
    NotAnArray,
}

/// Cuts a byte stream into top-level items: the elements of one JSON array, or the lines of
/// NDJSON. Tracks strings and nesting only; each item is parsed properly later.
pub(crate) struct Splitter {
    format: Option<Format>,
    max_item: usize,
    item: Vec<u8>,
    oversized: bool,
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Array: past the opening `[`; set once, and `closed` after the matching `]`.
    opened: bool,
    closed: bool,
    broken: bool,
}

impl Splitter {
    fn new(format: Option<Format>, max_item: usize) -> Self {
        Splitter {
            format,
            max_item,
            item: Vec::new(),
            oversized: false,
            depth: 0,
            in_string: false,
            escaped: false,
            opened: false,
            closed: false,
            broken: false,
        }
    }

    /// The items completed by `chunk`.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Result<Bytes, ItemError>> {
        let mut items = Vec::new();
        for &byte in chunk {
            if self.format.is_none() {
                if byte.is_ascii_whitespace() {
                    continue;
                }
                self.format = Some(if byte == b'[' { Format::Array } else { Format::Ndjson });
            }
            match self.format {
                Some(Format::Ndjson) => self.push_line_byte(byte, &mut items),
                _ => self.push_array_byte(byte, &mut items),
            }
        }
        items
    }

    /// The last item of a stream that ended (NDJSON without a final newline), or the error of
    /// an array that never closed.
    pub fn finish(&mut self) -> Vec<Result<Bytes, ItemError>> {
        let mut items = Vec::new();
        match self.format {
            Some(Format::Ndjson) => self.end_item(&mut items),
            Some(Format::Array) if self.opened && !self.closed && !self.broken => {
                items.push(Err(ItemError::NotAnArray));
            }
            _ => {}
        }
        items
    }

    fn push_line_byte(&mut self, byte: u8, items: &mut Vec<Result<Bytes, ItemError>>) {
        if byte == b'\n' {
            self.end_item(items);
        } else {
            self.keep(byte);
        }
    }

    fn push_array_byte(&mut self, byte: u8, items: &mut Vec<Result<Bytes, ItemError>>) {
        if self.broken || self.closed {
            return;
        }
        if !self.opened {
            if byte.is_ascii_whitespace() {
                return;
            }
            if byte != b'[' {
                self.broken = true;
                items.push(Err(ItemError::NotAnArray));
                return;
            }
            self.opened = true;
            return;
        }
        if self.in_string {
            self.keep(byte);
            if self.escaped {
                self.escaped = false;
            } else if byte == b'\\' {
                self.escaped = true;
            } else if byte == b'"' {
                self.in_string = false;
            }
            return;
        }
        match byte {
            b'"' => {
                self.in_string = true;
                self.keep(byte);
            }
            b'{' | b'[' => {
                self.depth += 1;
                self.keep(byte);
            }
            b'}' | b']' if self.depth > 0 => {
                self.depth -= 1;
                self.keep(byte);
            }
            b']' => {
                self.end_item(items);
                self.closed = true;
            }
            b',' if self.depth == 0 => self.end_item(items),
            _ => self.keep(byte),
        }
    }

    fn keep(&mut self, byte: u8) {
        if self.item.len() >= self.max_item {
            self.oversized = true;
            return;
        }
        self.item.push(byte);
    }

    fn end_item(&mut self, items: &mut Vec<Result<Bytes, ItemError>>) {
        let blank = self.item.iter().all(u8::is_ascii_whitespace);
        if self.oversized {
            items.push(Err(ItemError::TooLarge));
        } else if !blank {
            items.push(Ok(Bytes::from(std::mem::take(&mut self.item))));
        }
        self.item.clear();
        self.oversized = false;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn split(format: Option<Format>, chunks: &[&[u8]]) -> Vec<Result<String, ItemError>> {
        let mut splitter = Splitter::new(format, 64);
        let mut out: Vec<Result<Bytes, ItemError>> = Vec::new();
        for chunk in chunks {
            out.extend(splitter.push(chunk));
        }
        out.extend(splitter.finish());
        out.into_iter().map(|item| item.map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())).collect()
    }

    #[test]
    fn arrays_split_at_top_level_commas_across_chunk_boundaries() {
        let items = split(None, &[b" [{\"key\":\"a,]\",\"v\":[1,", b"2]}, {\"key\":\"b\\\"\"} ,3 ]  "]);
        assert_eq!(items, vec![Ok(r#"{"key":"a,]","v":[1,2]}"#.into()), Ok(r#"{"key":"b\""}"#.into()), Ok("3".into())]);
    }

    #[test]
    fn ndjson_splits_lines_and_skips_blank_ones() {
        let items = split(Some(Format::Ndjson), &[b"{\"a\":1}\n\n{\"b\"", b":2}\r\n{\"c\":3}"]);
        assert_eq!(items, vec![Ok(r#"{"a":1}"#.into()), Ok(r#"{"b":2}"#.into()), Ok(r#"{"c":3}"#.into())]);
        assert_eq!(split(None, &[b"{\"a\":1}\n"]), vec![Ok(r#"{"a":1}"#.into())], "sniffed: not an array");
    }

    #[test]
    fn oversized_items_and_broken_arrays_are_errors_not_memory() {
        let big = format!("[\"{}\", 1]", "x".repeat(100));
        assert_eq!(split(None, &[big.as_bytes()]), vec![Err(ItemError::TooLarge), Ok("1".into())]);
        assert_eq!(split(Some(Format::Array), &[b"{\"a\":1}"]), vec![Err(ItemError::NotAnArray)]);
        assert_eq!(split(Some(Format::Array), &[b"[1, 2"]), vec![Ok("1".into()), Err(ItemError::NotAnArray)]);
    }

    fn engine() -> Cache {
        crate::engine::test_support::cache_with(1000, 1 << 24, |parts| {
            parts.cache.limits.max_key_bytes = 16;
            parts.cache.limits.max_value_bytes = 64;
        })
    }

    /// Warm items: objects with the item's fields, each of some JSON type, and extra ones.
    fn item() -> impl Strategy<Value = Vec<u8>> {
        let field = prop_oneof![
            Just(serde_json::Value::Null),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|n| serde_json::json!(n)),
            "[ -~\\x{0}-\\x{1f}é]{0,20}".prop_map(serde_json::Value::from),
            prop::collection::vec("[ -~]{0,140}", 0..40).prop_map(|items| serde_json::json!(items)),
            Just(serde_json::json!({"nested": [1, {"a": null}]})),
        ];
        let names = prop::sample::select(vec!["key", "value", "ttl", "tags", "depends_on", "other"]);
        prop::collection::vec((names, field), 0..6).prop_map(|fields| {
            let object: serde_json::Map<String, serde_json::Value> =
                fields.into_iter().map(|(name, value)| (name.to_string(), value)).collect();
            serde_json::to_vec(&object).unwrap()
        })
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(512))]

        #[test]
        fn fuzz_warm_source_splitting(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..512) {
            let cut = cut.min(bytes.len());
            for format in [None, Some(Format::Ndjson), Some(Format::Array)] {
                let mut splitter = Splitter::new(format, 64);
                let mut items = splitter.push(&bytes[..cut]);
                items.extend(splitter.push(&bytes[cut..]));
                items.extend(splitter.finish());
                for item in items.into_iter().flatten() {
                    prop_assert!(item.len() <= 64, "an item over the limit is an error, not kept");
                }
            }
        }

        /// Every item is a valid write within the limits or a clean error message.
        #[test]
        fn fuzz_warm_items(bytes in prop_oneof![item(), proptest::collection::vec(any::<u8>(), 0..128)]) {
            let engine = engine();
            match parse_item(&engine, &bytes) {
                Ok(write) => {
                    prop_assert!(!write.key().as_str().is_empty() && write.key().as_str().len() <= 16);
                    prop_assert!(write.value.len() <= 64);
                }
                Err(message) => prop_assert!(!message.is_empty()),
            }
        }
    }
}
