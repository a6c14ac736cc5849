//! The Prometheus registry and every metric name, in one place.
//!
//! Each `App` owns its own `Metrics` (no global registry), so tests can run several instances
//! in one process. Labels come from small fixed sets: a route template, never a key or a tag.
//! Label values known in advance are resolved once here, so hot paths only increment atomics.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Why an entry left L1, the `reason` label of `tiercache_evictions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictionReason {
    /// The policy made room for another entry.
    Capacity,
    /// Its TTL ended (found on read or by the sweep).
    Expired,
    /// A delete, an invalidation, a cascade or a clear removed it.
    Invalidated,
    /// `POST /api/cache/evict` chose it.
    Manual,
    /// A newer write of the same key replaced it; not counted as an eviction.
    Replaced,
}

pub struct Metrics {
    registry: Registry,
    /// Unique per `Metrics`, process-wide: keys the per-thread handle cache of
    /// [`Metrics::record_request`], so two instances in one process never share handles.
    id: u64,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    pub(crate) hits_l1: IntCounter,
    pub(crate) hits_l2: IntCounter,
    pub(crate) misses: IntCounter,
    pub(crate) sets: IntCounter,
    pub(crate) deletes: IntCounter,
    evicted_capacity: IntCounter,
    evicted_expired: IntCounter,
    evicted_invalidated: IntCounter,
    evicted_manual: IntCounter,
    pub(crate) entries: IntGauge,
    pub(crate) bytes: IntGauge,
    pub(crate) l2_up: IntGauge,
    pub(crate) l2_errors: IntCounter,
    pub(crate) invalidations_published: IntCounter,
    pub(crate) invalidations_received: IntCounter,
    pub(crate) invalidations_malformed: IntCounter,
    /// Answers served from a copy past its expiry (grace); never counted as hits.
    pub(crate) stale_served: IntCounter,
    /// Reads that joined a lookup already in flight for their key instead of starting one.
    pub(crate) coalesced: IntCounter,
    pub(crate) origin_ok: IntCounter,
    pub(crate) origin_not_found: IntCounter,
    pub(crate) origin_errors: IntCounter,
    pub(crate) origin_duration: Histogram,
    /// Keys accepted into the prefetch queue.
    pub(crate) prefetch_requests: IntCounter,
    /// First reads of entries brought in by prefetch.
    pub(crate) prefetch_hits: IntCounter,
    pub(crate) prefetch_queue_size: IntGauge,
    pub(crate) warm_duration: Histogram,
    pub(crate) snapshot_duration: Histogram,
    /// Unix seconds of the last snapshot written; 0 = none yet.
    pub(crate) snapshot_last_success: Gauge,
    /// Snapshot files found at start but not restored (truncated, corrupt, other version).
    pub(crate) snapshot_load_errors: IntCounter,
    /// L2 lookups that found nothing (JSON only: `tiercache_misses_total` counts whole misses).
    pub(crate) l2_misses: AtomicU64,
    /// Value bytes before and after compression, over compressed values only.
    compressed_original_bytes: AtomicU64,
    compressed_stored_bytes: AtomicU64,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("tiercache_http_requests_total", "HTTP requests answered, by route template, method and status"),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let http_duration = HistogramVec::new(
            HistogramOpts::new("tiercache_http_request_duration_seconds", "Time to answer an HTTP request").buckets(
                vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
            ),
            &["route", "method"],
        )
        .expect("valid metric");
        let hits = IntCounterVec::new(Opts::new("tiercache_hits_total", "Cache hits, by tier"), &["tier"])
            .expect("valid metric");
        let misses = IntCounter::new("tiercache_misses_total", "Lookups no tier could answer").expect("valid metric");
        let sets = IntCounter::new("tiercache_sets_total", "Entries written").expect("valid metric");
        let deletes = IntCounter::new("tiercache_deletes_total", "Keys removed by DELETE /api/cache/{key}")
            .expect("valid metric");
        let evictions =
            IntCounterVec::new(Opts::new("tiercache_evictions_total", "Entries that left L1, by reason"), &["reason"])
                .expect("valid metric");
        let entries = IntGauge::new("tiercache_entries", "Entries in L1").expect("valid metric");
        let l2_up = IntGauge::new("tiercache_l2_up", "1 when L2 (Redis) is reachable, else 0").expect("valid metric");
        let l2_errors = IntCounter::new("tiercache_l2_errors_total", "Failed L2 calls and malformed L2 values")
            .expect("valid metric");
        let invalidation_messages = IntCounterVec::new(
            Opts::new("tiercache_invalidation_messages_total", "Invalidation pub/sub messages, by direction"),
            &["direction"],
        )
        .expect("valid metric");
        let bytes = IntGauge::new("tiercache_bytes", "Bytes held by L1 entries (key + value + metadata)")
            .expect("valid metric");
        let stale_served =
            IntCounter::new("tiercache_stale_served_total", "Answers served stale within cache.grace_secs")
                .expect("valid metric");
        let coalesced = IntCounter::new(
            "tiercache_coalesced_total",
            "Reads that waited for a lookup of their key already in flight",
        )
        .expect("valid metric");
        let origin_fetches =
            IntCounterVec::new(Opts::new("tiercache_origin_fetches_total", "Origin requests, by result"), &["result"])
                .expect("valid metric");
        let origin_duration = Histogram::with_opts(
            HistogramOpts::new(
                "tiercache_origin_fetch_duration_seconds",
                "Time of one origin request, slot wait included",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid metric");
        let prefetch_requests =
            IntCounter::new("tiercache_prefetch_requests_total", "Keys accepted into the prefetch queue")
                .expect("valid metric");
        let prefetch_hits =
            IntCounter::new("tiercache_prefetch_hits_total", "First reads of entries brought in by prefetch")
                .expect("valid metric");
        let slow_buckets = vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];
        let warm_duration = Histogram::with_opts(
            HistogramOpts::new("tiercache_warm_duration_seconds", "Time of one warm run").buckets(slow_buckets.clone()),
        )
        .expect("valid metric");
        let snapshot_duration = Histogram::with_opts(
            HistogramOpts::new("tiercache_snapshot_duration_seconds", "Time to write one snapshot")
                .buckets(slow_buckets),
        )
        .expect("valid metric");
        let snapshot_last_success = Gauge::new(
            "tiercache_snapshot_last_success_timestamp_seconds",
            "Unix time of the last snapshot written (0 = none)",
        )
        .expect("valid metric");
        let snapshot_load_errors = IntCounter::new(
            "tiercache_snapshot_load_errors_total",
            "Snapshot files found at start but not restored (truncated, corrupt or another version)",
        )
        .expect("valid metric");
        let prefetch_queue_size =
            IntGauge::new("tiercache_prefetch_queue_size", "Keys waiting in the prefetch queue").expect("valid metric");

        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(hits.clone()),
            Box::new(misses.clone()),
            Box::new(sets.clone()),
            Box::new(deletes.clone()),
            Box::new(evictions.clone()),
            Box::new(entries.clone()),
            Box::new(bytes.clone()),
            Box::new(l2_up.clone()),
            Box::new(l2_errors.clone()),
            Box::new(invalidation_messages.clone()),
            Box::new(stale_served.clone()),
            Box::new(coalesced.clone()),
            Box::new(origin_fetches.clone()),
            Box::new(origin_duration.clone()),
            Box::new(prefetch_requests.clone()),
            Box::new(prefetch_hits.clone()),
            Box::new(prefetch_queue_size.clone()),
            Box::new(warm_duration.clone()),
            Box::new(snapshot_duration.clone()),
            Box::new(snapshot_last_success.clone()),
            Box::new(snapshot_load_errors.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }

        Self {
            hits_l1: hits.with_label_values(&["l1"]),
            hits_l2: hits.with_label_values(&["l2"]),
            evicted_capacity: evictions.with_label_values(&["capacity"]),
            evicted_expired: evictions.with_label_values(&["expired"]),
            evicted_invalidated: evictions.with_label_values(&["invalidated"]),
            evicted_manual: evictions.with_label_values(&["manual"]),
            registry,
            id: NEXT_METRICS_ID.fetch_add(1, Ordering::Relaxed),
            http_requests,
            http_duration,
            misses,
            sets,
            deletes,
            entries,
            bytes,
            l2_up,
            l2_errors,
            invalidations_published: invalidation_messages.with_label_values(&["published"]),
            invalidations_received: invalidation_messages.with_label_values(&["received"]),
            invalidations_malformed: invalidation_messages.with_label_values(&["malformed"]),
            stale_served,
            coalesced,
            origin_ok: origin_fetches.with_label_values(&["ok"]),
            origin_not_found: origin_fetches.with_label_values(&["not_found"]),
            origin_errors: origin_fetches.with_label_values(&["error"]),
            origin_duration,
            prefetch_requests,
            prefetch_hits,
            prefetch_queue_size,
            warm_duration,
            snapshot_duration,
            snapshot_last_success,
            snapshot_load_errors,
            l2_misses: AtomicU64::new(0),
            compressed_original_bytes: AtomicU64::new(0),
            compressed_stored_bytes: AtomicU64::new(0),
        }
    }

    /// Counts one entry leaving L1.
    #[inline]
    pub fn record_eviction(&self, reason: EvictionReason) {
        match reason {
            EvictionReason::Capacity => self.evicted_capacity.inc(),
            EvictionReason::Expired => self.evicted_expired.inc(),
            EvictionReason::Invalidated => self.evicted_invalidated.inc(),
            EvictionReason::Manual => self.evicted_manual.inc(),
            EvictionReason::Replaced => {}
        }
    }

    pub fn evictions(&self, reason: EvictionReason) -> u64 {
        match reason {
            EvictionReason::Capacity => self.evicted_capacity.get(),
            EvictionReason::Expired => self.evicted_expired.get(),
            EvictionReason::Invalidated => self.evicted_invalidated.get(),
            EvictionReason::Manual => self.evicted_manual.get(),
            EvictionReason::Replaced => 0,
        }
    }

    pub fn record_compression(&self, original: usize, stored: usize) {
        self.compressed_original_bytes.fetch_add(original as u64, Ordering::Relaxed);
        self.compressed_stored_bytes.fetch_add(stored as u64, Ordering::Relaxed);
    }

    /// Stored / original bytes over compressed values; 1.0 when nothing was compressed.
    pub fn compression_ratio(&self) -> f64 {
        let original = self.compressed_original_bytes.load(Ordering::Relaxed);
        let stored = self.compressed_stored_bytes.load(Ordering::Relaxed);
        if original == 0 {
            1.0
        } else {
            stored as f64 / original as f64
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buffer = Vec::with_capacity(8 * 1024);
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("encoding to a Vec cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

static NEXT_METRICS_ID: AtomicU64 = AtomicU64::new(0);

/// The handles of one `(route, method, status)`: a label lookup in prometheus hashes the
/// label values and takes a lock, so each worker thread keeps the few it used last.
struct RequestHandles {
    metrics_id: u64,
    route: Box<str>,
    method: &'static str,
    status: u16,
    requests: IntCounter,
    duration: Histogram,
}

/// Handles cached per worker thread; a handful covers a service's hot routes.
const HANDLE_CACHE: usize = 16;

thread_local! {
    static HANDLES: std::cell::RefCell<Vec<RequestHandles>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Metrics {
    /// Counts one answered request and its duration under its route template, method and
    /// status, without a label lookup when this thread recorded the same triple recently.
    pub fn record_request(&self, route: &str, method: &'static str, status: u16, seconds: f64) {
        HANDLES.with(|cache| {
            let mut cache = cache.borrow_mut();
            let found = cache.iter().position(|handles| {
                handles.metrics_id == self.id
                    && handles.status == status
                    && handles.method == method
                    && &*handles.route == route
            });
            let idx = match found {
                Some(idx) => idx,
                None => {
                    if cache.len() == HANDLE_CACHE {
                        cache.remove(0);
                    }
                    let mut status_text = itoa::Buffer::new();
                    let status_text = status_text.format(status);
                    cache.push(RequestHandles {
                        metrics_id: self.id,
                        route: route.into(),
                        method,
                        status,
                        requests: self.http_requests.with_label_values(&[route, method, status_text]),
                        duration: self.http_duration.with_label_values(&[route, method]),
                    });
                    cache.len() - 1
                }
            };
            cache[idx].requests.inc();
            cache[idx].duration.observe(seconds);
        });
    }
}
