//! Settings: load (built-in defaults < `config/default.toml` or `--config` < environment),
//! check, and turn into the typed parts each component receives.
//!
//! - `mod.rs`: [`Settings`], which mirrors `config/default.toml` one-to-one (serde,
//!   `deny_unknown_fields`): a key it does not know is an error, never ignored. Modes are serde
//!   enums, so a bad one fails where it is read.
//! - `load.rs`: layering the file and the environment (aliases, `TIERCACHE__` variables); the
//!   only reader of environment variables.
//! - `validate.rs`: the ranges serde's types cannot express.
//! - `parts.rs`: [`Parts`], the typed parts (durations, non-zero counts, parsed URLs and
//!   addresses), made once by [`Settings::parts`]. Part types live here, so the engine imports
//!   config and never the reverse.

mod load;
mod parts;
mod validate;

pub use self::parts::*;

use serde::{Deserialize, Serialize};

/// Every setting of SPEC §11. Field names are the config keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub cache: CacheSettings,
    pub l1: L1Settings,
    pub l2: L2Settings,
    pub invalidation: InvalidationSettings,
    pub origin: OriginSettings,
    pub compression: CompressionSettings,
    pub persistence: PersistenceSettings,
    pub warm: WarmSettings,
    pub prefetch: PrefetchSettings,
    pub auth: AuthSettings,
    pub metrics: MetricsSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    pub max_body_bytes: u64,
    pub max_header_bytes: u64,
    pub request_timeout_ms: u64,
    pub max_concurrency: u64,
    pub shutdown_grace_ms: u64,
    pub instance_id: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:4000".into(),
            max_body_bytes: 16 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            request_timeout_ms: 30_000,
            max_concurrency: 1024,
            shutdown_grace_ms: 10_000,
            instance_id: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    pub default_ttl_secs: u64,
    pub max_ttl_secs: u64,
    pub max_key_bytes: u64,
    pub max_value_bytes: u64,
    pub max_tags: u64,
    pub max_deps: u64,
    pub grace_secs: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            default_ttl_secs: 3600,
            max_ttl_secs: 2_592_000,
            max_key_bytes: 512,
            max_value_bytes: 1_048_576,
            max_tags: 32,
            max_deps: 64,
            grace_secs: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct L1Settings {
    pub max_entries: u64,
    pub max_bytes: u64,
    pub cleanup_interval_secs: u64,
    pub max_ttl_secs: u64,
}

impl Default for L1Settings {
    fn default() -> Self {
        Self { max_entries: 10_000, max_bytes: 268_435_456, cleanup_interval_secs: 60, max_ttl_secs: 0 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct L2Settings {
    pub url: Secret,
    pub cluster_nodes: Vec<String>,
    pub key_prefix: String,
    pub timeout_ms: u64,
    pub write_policy: WritePolicy,
    pub breaker_failures: u64,
    pub breaker_open_secs: u64,
}

impl Default for L2Settings {
    fn default() -> Self {
        Self {
            url: Secret::default(),
            cluster_nodes: Vec::new(),
            key_prefix: "tiercache:".into(),
            timeout_ms: 100,
            write_policy: WritePolicy::BestEffort,
            breaker_failures: 5,
            breaker_open_secs: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InvalidationSettings {
    pub channel: String,
    pub flush_l1_on_reconnect: bool,
}

impl Default for InvalidationSettings {
    fn default() -> Self {
        Self { channel: "tiercache:invalidation".into(), flush_l1_on_reconnect: true }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginSettings {
    pub url: String,
    pub timeout_ms: u64,
    pub default_ttl_secs: u64,
    pub negative_ttl_secs: u64,
    pub max_concurrency: u64,
}

impl Default for OriginSettings {
    fn default() -> Self {
        Self { url: String::new(), timeout_ms: 2000, default_ttl_secs: 300, negative_ttl_secs: 0, max_concurrency: 64 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionSettings {
    pub algorithm: CompressionAlgorithm,
    pub threshold_bytes: u64,
    pub level: i64,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self { algorithm: CompressionAlgorithm::Zstd, threshold_bytes: 1024, level: 3 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersistenceSettings {
    pub path: String,
    pub interval_secs: u64,
}

impl Default for PersistenceSettings {
    fn default() -> Self {
        Self { path: String::new(), interval_secs: 300 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarmSettings {
    pub url: String,
    pub keys: Vec<String>,
    pub interval_secs: u64,
    pub timeout_secs: u64,
    pub parallelism: u64,
}

impl Default for WarmSettings {
    fn default() -> Self {
        Self { url: String::new(), keys: Vec::new(), interval_secs: 0, timeout_secs: 30, parallelism: 8 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefetchSettings {
    pub workers: u64,
    pub max_queue: u64,
}

impl Default for PrefetchSettings {
    fn default() -> Self {
        Self { workers: 4, max_queue: 10_000 }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub tokens: Vec<Secret>,
    pub read_tokens: Vec<Secret>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    pub enabled: bool,
    pub require_auth: bool,
    pub interval_secs: u64,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self { enabled: true, require_auth: false, interval_secs: 10 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { level: "info".into(), format: LogFormat::Text }
    }
}

/// A string that must never reach a log: `Debug` prints `***`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

/// A configuration problem: the key it concerns and what is wrong, printed as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct ConfigError {
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { key: key.into(), problem: problem.into() }
    }
}
