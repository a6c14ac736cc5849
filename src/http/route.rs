//! The routes of SPEC §3, each path written once: the router, the guard's `route_of` (the
//! `route` label) and the tests all use these.

pub const CLEAR: &str = "/api/cache";
/// `/api/cache/` names the empty key: 400 for every method.
pub const EMPTY_KEY: &str = "/api/cache/";
pub const INVALIDATE: &str = "/api/cache/invalidate";
pub const BATCH_GET: &str = "/api/cache/batch/get";
pub const BATCH_SET: &str = "/api/cache/batch/set";
pub const EVICT: &str = "/api/cache/evict";
pub const PREFETCH: &str = "/api/cache/prefetch";
pub const WARM: &str = "/api/cache/warm";
pub const SNAPSHOT: &str = "/api/cache/snapshot";
pub const METRICS_JSON: &str = "/api/cache/metrics";
pub const PROMETHEUS: &str = "/metrics";
pub const HEALTH: &str = "/health";
pub const READY: &str = "/ready";
/// Every other name under `/api/cache/` is a key.
pub const KEY: &str = "/api/cache/{*key}";

/// The literal routes, each its own `route` label. They win over a key of the same name, for
/// every method.
pub const FIXED: [&str; 13] = [
    CLEAR,
    EMPTY_KEY,
    INVALIDATE,
    BATCH_GET,
    BATCH_SET,
    EVICT,
    PREFETCH,
    WARM,
    SNAPSHOT,
    METRICS_JSON,
    PROMETHEUS,
    HEALTH,
    READY,
];

/// Routes that must answer even when the service is saturated.
pub const NEVER_SHED: [&str; 3] = [HEALTH, READY, PROMETHEUS];
