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

/// Every counter of the service, each named once: its field, its Prometheus family (with its
/// label, for a family of several), and the fields of `/api/cache/metrics` it adds to. A
/// family of `""` is JSON only. `Counters::register` makes the families from this table and
/// `Counters::totals` the JSON, so the two forms cannot drift apart.
macro_rules! counters {
    ($( $(#[$doc:meta])* $field:ident: $family:literal $(($label:literal = $value:literal))?, $help:literal,
        json [$($json:literal),*]; )*) => {
        pub struct Counters {
            $( $(#[$doc])* pub(crate) $field: IntCounter, )*
        }

        impl Counters {
            fn register(registry: &Registry) -> Counters {
                let mut families = Families { registry, vecs: Vec::new() };
                Counters {
                    $( $field: families.counter($family, $help, &[$($label)?], &[$($value)?]), )*
                }
            }

            /// The counter fields of the JSON metrics (SPEC §8), each the sum of its counters.
            pub fn totals(&self) -> std::collections::BTreeMap<&'static str, u64> {
                let mut totals = std::collections::BTreeMap::new();
                $( for name in [$($json),*] {
                    *totals.entry(name).or_insert(0) += self.$field.get();
                } )*
                totals
            }
        }
    };
}

counters! {
    hits_l1: "tiercache_hits_total"("tier" = "l1"), "Cache hits, by tier", json ["hits"];
    hits_l2: "tiercache_hits_total"("tier" = "l2"), "Cache hits, by tier", json ["hits", "l2_hits"];
    misses: "tiercache_misses_total", "Lookups no tier could answer", json ["misses"];
    sets: "tiercache_sets_total", "Entries written", json ["sets"];
    deletes: "tiercache_deletes_total", "Keys removed by DELETE /api/cache/{key}", json ["deletes"];
    evicted_capacity: "tiercache_evictions_total"("reason" = "capacity"), "Entries that left L1, by reason",
        json ["evictions"];
    evicted_expired: "tiercache_evictions_total"("reason" = "expired"), "Entries that left L1, by reason",
        json ["expirations"];
    evicted_invalidated: "tiercache_evictions_total"("reason" = "invalidated"), "Entries that left L1, by reason",
        json [];
    evicted_manual: "tiercache_evictions_total"("reason" = "manual"), "Entries that left L1, by reason",
        json ["evictions"];
    l2_errors: "tiercache_l2_errors_total", "Failed L2 calls and malformed L2 values", json ["l2_errors"];
    /// L2 lookups that found nothing (JSON only: `tiercache_misses_total` counts whole misses).
    l2_misses: "", "", json ["l2_misses"];
    invalidations_published: "tiercache_invalidation_messages_total"("direction" = "published"),
        "Invalidation pub/sub messages, by direction", json ["invalidations_published"];
    invalidations_received: "tiercache_invalidation_messages_total"("direction" = "received"),
        "Invalidation pub/sub messages, by direction", json ["invalidations_received"];
    invalidations_malformed: "tiercache_invalidation_messages_total"("direction" = "malformed"),
        "Invalidation pub/sub messages, by direction", json ["invalidations_malformed"];
    /// Answers served from a copy past its expiry (grace); never counted as hits.
    stale_served: "tiercache_stale_served_total", "Answers served stale within cache.grace_secs",
        json ["stale_served"];
    /// Reads that joined a lookup already in flight for their key instead of starting one.
    coalesced: "tiercache_coalesced_total", "Reads that waited for a lookup of their key already in flight",
        json ["coalesced"];
    origin_ok: "tiercache_origin_fetches_total"("result" = "ok"), "Origin requests, by result",
        json ["origin_fetches"];
    origin_not_found: "tiercache_origin_fetches_total"("result" = "not_found"), "Origin requests, by result",
        json ["origin_fetches"];
    origin_errors: "tiercache_origin_fetches_total"("result" = "error"), "Origin requests, by result",
        json ["origin_fetches", "origin_errors"];
    /// Keys accepted into the prefetch queue.
    prefetch_requests: "tiercache_prefetch_requests_total", "Keys accepted into the prefetch queue",
        json ["prefetch_requests"];
    /// First reads of entries brought in by prefetch.
    prefetch_hits: "tiercache_prefetch_hits_total", "First reads of entries brought in by prefetch",
        json ["prefetch_hits"];
    /// Snapshot files found at start but not restored (truncated, corrupt, other version).
    snapshot_load_errors: "tiercache_snapshot_load_errors_total",
        "Snapshot files found at start but not restored (truncated, corrupt or another version)", json [];
}

/// The counter families being registered: one `IntCounterVec` per family name, its labels
/// fixed by the first counter of the family.
struct Families<'a> {
    registry: &'a Registry,
    vecs: Vec<(&'static str, IntCounterVec)>,
}

impl Families<'_> {
    fn counter(&mut self, family: &'static str, help: &'static str, labels: &[&str], values: &[&str]) -> IntCounter {
        if family.is_empty() {
            return IntCounter::new("unregistered", "json only").expect("valid metric");
        }
        let vec = match self.vecs.iter().find(|(name, _)| *name == family) {
            Some((_, vec)) => vec.clone(),
            None => {
                let vec = IntCounterVec::new(Opts::new(family, help), labels).expect("valid metric");
                self.registry.register(Box::new(vec.clone())).expect("metric names are unique");
                self.vecs.push((family, vec.clone()));
                vec
            }
        };
        vec.with_label_values(values)
    }
}

pub struct Metrics {
    registry: Registry,
    /// Unique per `Metrics`, process-wide: keys the per-thread handle cache of
    /// [`Metrics::record_request`], so two instances in one process never share handles.
    id: u64,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    pub(crate) counters: Counters,
    pub(crate) entries: IntGauge,
    pub(crate) bytes: IntGauge,
    pub(crate) l2_up: IntGauge,
    pub(crate) origin_duration: Histogram,
    pub(crate) prefetch_queue_size: IntGauge,
    pub(crate) warm_duration: Histogram,
    pub(crate) snapshot_duration: Histogram,
    /// Unix seconds of the last snapshot written; 0 = none yet.
    pub(crate) snapshot_last_success: Gauge,
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
        let entries = IntGauge::new("tiercache_entries", "Entries in L1").expect("valid metric");
        let bytes = IntGauge::new("tiercache_bytes", "Bytes held by L1 entries (key + value + metadata)")
            .expect("valid metric");
        let l2_up = IntGauge::new("tiercache_l2_up", "1 when L2 (Redis) is reachable, else 0").expect("valid metric");
        let origin_duration = Histogram::with_opts(
            HistogramOpts::new(
                "tiercache_origin_fetch_duration_seconds",
                "Time of one origin request, slot wait included",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
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
        let prefetch_queue_size =
            IntGauge::new("tiercache_prefetch_queue_size", "Keys waiting in the prefetch queue").expect("valid metric");

        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(http_duration.clone()),
            Box::new(entries.clone()),
            Box::new(bytes.clone()),
            Box::new(l2_up.clone()),
            Box::new(origin_duration.clone()),
            Box::new(prefetch_queue_size.clone()),
            Box::new(warm_duration.clone()),
            Box::new(snapshot_duration.clone()),
            Box::new(snapshot_last_success.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }

        Self {
            counters: Counters::register(&registry),
            registry,
            id: NEXT_METRICS_ID.fetch_add(1, Ordering::Relaxed),
            http_requests,
            http_duration,
            entries,
            bytes,
            l2_up,
            origin_duration,
            prefetch_queue_size,
            warm_duration,
            snapshot_duration,
            snapshot_last_success,
            compressed_original_bytes: AtomicU64::new(0),
            compressed_stored_bytes: AtomicU64::new(0),
        }
    }

    /// Counts one entry leaving L1.
    #[inline]
    pub fn record_eviction(&self, reason: EvictionReason) {
        let counters = &self.counters;
        match reason {
            EvictionReason::Capacity => counters.evicted_capacity.inc(),
            EvictionReason::Expired => counters.evicted_expired.inc(),
            EvictionReason::Invalidated => counters.evicted_invalidated.inc(),
            EvictionReason::Manual => counters.evicted_manual.inc(),
            EvictionReason::Replaced => {}
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
