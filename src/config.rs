//! Settings: load (built-in defaults < `config/default.toml` or `--config` < environment),
//! validate, and split into the typed parts each component receives.
//!
//! This is the only module that reads environment variables. `Settings` mirrors
//! `config/default.toml` one-to-one; a key it does not know is an error, never ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::l2::{Compression, L2Config, Target};

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
    pub write_policy: String,
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
            write_policy: "best_effort".into(),
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
    pub algorithm: String,
    pub threshold_bytes: u64,
    pub level: i64,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self { algorithm: "zstd".into(), threshold_bytes: 1024, level: 3 }
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
    pub format: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { level: "info".into(), format: "text".into() }
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

/// Environment aliases of SPEC §1 and the key each one sets.
/// `PORT`, `REDIS_PASSWORD` and `REDIS_DB` are special: they complete another value.
const ALIASES: &[(&str, &str)] = &[
    ("CACHE_L1_MAX_ENTRIES", "l1.max_entries"),
    ("CACHE_DEFAULT_TTL", "cache.default_ttl_secs"),
    ("CACHE_CLEANUP_INTERVAL", "l1.cleanup_interval_secs"),
    ("REDIS_URL", "l2.url"),
    ("METRICS_ENABLED", "metrics.enabled"),
    ("METRICS_INTERVAL", "metrics.interval_secs"),
];

const ENV_PREFIX: &str = "TIERCACHE__";

impl Settings {
    /// Loads settings from the built-in defaults, then `file` (or `config/default.toml` when it
    /// exists and no file is named), then `env`, and validates the result.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first key that is unknown, of the wrong type or out of range.
    pub fn load<I>(file: Option<&Path>, env: I) -> Result<Settings, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let known = known_keys();

        let mut builder = config::Config::builder();
        let default_file = Path::new("config/default.toml");
        let file = match file {
            Some(path) if !path.is_file() => {
                return Err(ConfigError::new("--config", format!("cannot read file {}", path.display())));
            }
            Some(path) => Some(path),
            None if default_file.is_file() => Some(default_file),
            None => None,
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|err| ConfigError::new("--config", format!("cannot read {}: {err}", path.display())))?;
            let table: toml::Table = text
                .parse()
                .map_err(|err: toml::de::Error| ConfigError::new(toml_error_key(&err), toml_error_message(&err)))?;
            check_known_keys(&toml::Value::Table(table), "", &known)?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }

        let file_settings: Settings = deserialize(builder.build_cloned())?;
        builder = apply_env(builder, &env, &known, &file_settings)?;
        let settings: Settings = deserialize(builder.build())?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks ranges and formats that serde's types cannot express.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let listen: SocketAddr = self.server.listen.parse().map_err(|_| {
            ConfigError::new("server.listen", format!("not a socket address (ip:port): {:?}", self.server.listen))
        })?;
        if listen.port() == 0 {
            return Err(ConfigError::new("server.listen", "port must be in 1..=65535"));
        }
        let at_least = |key: &str, value: u64, min: u64| {
            if value < min {
                Err(ConfigError::new(key, format!("must be at least {min}, got {value}")))
            } else {
                Ok(())
            }
        };
        // Upper bounds keep every value representable where it is used (semaphore permits,
        // timer deadlines, expiry in milliseconds), far above any sensible setting.
        let at_most = |key: &str, value: u64, max: u64| {
            if value > max {
                Err(ConfigError::new(key, format!("must be at most {max}, got {value}")))
            } else {
                Ok(())
            }
        };
        const TEN_YEARS_SECS: u64 = 10 * 365 * 24 * 3600;
        const ONE_DAY_MS: u64 = 24 * 3600 * 1000;
        at_most("server.max_concurrency", self.server.max_concurrency, 1 << 20)?;
        at_most("server.request_timeout_ms", self.server.request_timeout_ms, ONE_DAY_MS)?;
        at_most("server.shutdown_grace_ms", self.server.shutdown_grace_ms, ONE_DAY_MS)?;
        at_most("cache.max_ttl_secs", self.cache.max_ttl_secs, TEN_YEARS_SECS)?;
        at_most("l1.cleanup_interval_secs", self.l1.cleanup_interval_secs, TEN_YEARS_SECS)?;
        at_most("l1.max_ttl_secs", self.l1.max_ttl_secs, TEN_YEARS_SECS)?;
        at_most("metrics.interval_secs", self.metrics.interval_secs, TEN_YEARS_SECS)?;
        at_most("l2.timeout_ms", self.l2.timeout_ms, ONE_DAY_MS)?;
        at_most("origin.timeout_ms", self.origin.timeout_ms, ONE_DAY_MS)?;
        at_least("server.max_body_bytes", self.server.max_body_bytes, 1)?;
        at_least("server.max_header_bytes", self.server.max_header_bytes, 1)?;
        at_most("server.max_header_bytes", self.server.max_header_bytes, 16 << 20)?;
        at_least("server.request_timeout_ms", self.server.request_timeout_ms, 1)?;
        at_least("server.max_concurrency", self.server.max_concurrency, 1)?;
        at_least("server.shutdown_grace_ms", self.server.shutdown_grace_ms, 1)?;
        at_least("cache.default_ttl_secs", self.cache.default_ttl_secs, 1)?;
        at_least("cache.max_ttl_secs", self.cache.max_ttl_secs, 1)?;
        at_least("cache.max_key_bytes", self.cache.max_key_bytes, 1)?;
        at_least("cache.max_value_bytes", self.cache.max_value_bytes, 1)?;
        at_least("cache.max_tags", self.cache.max_tags, 1)?;
        at_least("cache.max_deps", self.cache.max_deps, 1)?;
        if self.cache.default_ttl_secs > self.cache.max_ttl_secs {
            return Err(ConfigError::new(
                "cache.default_ttl_secs",
                format!("must not exceed cache.max_ttl_secs ({})", self.cache.max_ttl_secs),
            ));
        }
        at_least("l1.max_entries", self.l1.max_entries, 1)?;
        at_least("l1.max_bytes", self.l1.max_bytes, 1024)?;
        at_least("l1.cleanup_interval_secs", self.l1.cleanup_interval_secs, 1)?;
        at_least("l2.timeout_ms", self.l2.timeout_ms, 1)?;
        at_least("l2.breaker_failures", self.l2.breaker_failures, 1)?;
        at_least("l2.breaker_open_secs", self.l2.breaker_open_secs, 1)?;
        self.l2_target()?;
        if !matches!(self.l2.write_policy.as_str(), "best_effort" | "required") {
            return Err(ConfigError::new("l2.write_policy", "must be \"best_effort\" or \"required\""));
        }
        if self.invalidation.channel.is_empty() {
            return Err(ConfigError::new("invalidation.channel", "must not be empty"));
        }
        at_least("origin.timeout_ms", self.origin.timeout_ms, 1)?;
        at_least("origin.default_ttl_secs", self.origin.default_ttl_secs, 1)?;
        at_least("origin.max_concurrency", self.origin.max_concurrency, 1)?;
        at_most("origin.max_concurrency", self.origin.max_concurrency, 1 << 20)?;
        at_most("cache.grace_secs", self.cache.grace_secs, TEN_YEARS_SECS)?;
        self.origin_url()?;
        if !self.warm.url.is_empty() {
            let url = reqwest::Url::parse(&self.warm.url)
                .map_err(|err| ConfigError::new("warm.url", format!("not a valid URL: {err}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::new("warm.url", "must be an http:// or https:// URL"));
            }
        }
        if !self.warm.keys.is_empty() && self.origin.url.is_empty() {
            return Err(ConfigError::new("warm.keys", "needs origin.url: warm keys are fetched through the origin"));
        }
        at_most("warm.timeout_secs", self.warm.timeout_secs, TEN_YEARS_SECS)?;
        at_most("warm.interval_secs", self.warm.interval_secs, TEN_YEARS_SECS)?;
        at_most("persistence.interval_secs", self.persistence.interval_secs, TEN_YEARS_SECS)?;
        if !matches!(self.compression.algorithm.as_str(), "zstd" | "none") {
            return Err(ConfigError::new("compression.algorithm", "must be \"zstd\" or \"none\""));
        }
        at_least("compression.threshold_bytes", self.compression.threshold_bytes, 1)?;
        if !(1..=22).contains(&self.compression.level) {
            return Err(ConfigError::new("compression.level", "must be in 1..=22"));
        }
        at_least("persistence.interval_secs", self.persistence.interval_secs, 1)?;
        at_least("warm.timeout_secs", self.warm.timeout_secs, 1)?;
        at_least("warm.parallelism", self.warm.parallelism, 1)?;
        at_least("prefetch.workers", self.prefetch.workers, 1)?;
        at_least("prefetch.max_queue", self.prefetch.max_queue, 1)?;
        at_most("prefetch.workers", self.prefetch.workers, 1024)?;
        at_most("prefetch.max_queue", self.prefetch.max_queue, 1 << 24)?;
        at_least("metrics.interval_secs", self.metrics.interval_secs, 1)?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::new("log.level", format!("not a log filter: {:?}", self.log.level)));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::new("log.format", "must be \"text\" or \"json\""));
        }
        self.check_auth()
    }

    /// Tokens are non-empty; read tokens and `metrics.require_auth` only mean something with
    /// write tokens (`auth.tokens` empty = open), so alone they are a mistake, not a no-op.
    fn check_auth(&self) -> Result<(), ConfigError> {
        for (key, tokens) in [("auth.tokens", &self.auth.tokens), ("auth.read_tokens", &self.auth.read_tokens)] {
            if tokens.iter().any(|token| token.expose().trim().is_empty()) {
                return Err(ConfigError::new(key, "tokens must not be empty"));
            }
        }
        if self.auth.tokens.is_empty() && !self.auth.read_tokens.is_empty() {
            return Err(ConfigError::new("auth.read_tokens", "needs auth.tokens (without it the API is open)"));
        }
        if self.auth.tokens.is_empty() && self.metrics.require_auth {
            return Err(ConfigError::new("metrics.require_auth", "needs auth.tokens"));
        }
        Ok(())
    }

    pub(crate) fn auth_config(&self) -> AuthConfig {
        AuthConfig {
            tokens: self.auth.tokens.iter().map(|token| token.expose().trim().to_string()).collect(),
            read_tokens: self.auth.read_tokens.iter().map(|token| token.expose().trim().to_string()).collect(),
            metrics_require_auth: self.metrics.require_auth,
        }
    }

    /// The listen address; valid after [`Settings::validate`].
    pub fn listen_addr(&self) -> SocketAddr {
        self.server.listen.parse().expect("server.listen was validated")
    }

    pub(crate) fn server_config(&self) -> ServerConfig {
        ServerConfig {
            max_body_bytes: clamp_usize(self.server.max_body_bytes),
            max_header_bytes: clamp_usize(self.server.max_header_bytes),
            request_timeout: Duration::from_millis(self.server.request_timeout_ms),
            max_concurrency: clamp_usize(self.server.max_concurrency),
            shutdown_grace: Duration::from_millis(self.server.shutdown_grace_ms),
        }
    }

    pub(crate) fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            limits: EntryLimits {
                default_ttl: Duration::from_secs(self.cache.default_ttl_secs),
                max_ttl: Duration::from_secs(self.cache.max_ttl_secs),
                max_key_bytes: clamp_usize(self.cache.max_key_bytes),
                max_value_bytes: clamp_usize(self.cache.max_value_bytes),
                max_tags: clamp_usize(self.cache.max_tags),
                max_deps: clamp_usize(self.cache.max_deps),
            },
            l1: L1Config {
                max_entries: NonZeroUsize::new(clamp_usize(self.l1.max_entries)).expect("validated: at least 1"),
                max_bytes: self.l1.max_bytes,
            },
            l2: self.l2_target().expect("l2 settings were validated").map(|target| L2Config {
                target,
                key_prefix: self.l2.key_prefix.clone(),
                timeout: Duration::from_millis(self.l2.timeout_ms),
                breaker_failures: u32::try_from(self.l2.breaker_failures).unwrap_or(u32::MAX),
                breaker_open_for: Duration::from_secs(self.l2.breaker_open_secs),
                compression: Compression {
                    zstd_level: (self.compression.algorithm == "zstd").then_some(self.compression.level as i32),
                    threshold_bytes: clamp_usize(self.compression.threshold_bytes),
                },
                max_value_bytes: clamp_usize(self.cache.max_value_bytes),
            }),
            write_policy: if self.l2.write_policy == "required" {
                WritePolicy::Required
            } else {
                WritePolicy::BestEffort
            },
            l1_max_ttl: (self.l1.max_ttl_secs > 0).then(|| Duration::from_secs(self.l1.max_ttl_secs)),
            channel: self.invalidation.channel.clone(),
            flush_l1_on_reconnect: self.invalidation.flush_l1_on_reconnect,
            grace: Duration::from_secs(self.cache.grace_secs),
            origin: self.origin_url().expect("origin.url was validated").map(|url| OriginConfig {
                url,
                timeout: Duration::from_millis(self.origin.timeout_ms),
                // Both capped at cache.max_ttl_secs, like every other TTL.
                default_ttl: Duration::from_secs(self.origin.default_ttl_secs.min(self.cache.max_ttl_secs)),
                negative_ttl: (self.origin.negative_ttl_secs > 0)
                    .then(|| Duration::from_secs(self.origin.negative_ttl_secs.min(self.cache.max_ttl_secs))),
                max_ttl: Duration::from_secs(self.cache.max_ttl_secs),
                max_concurrency: clamp_usize(self.origin.max_concurrency),
                max_value_bytes: clamp_usize(self.cache.max_value_bytes),
            }),
            prefetch_max_queue: clamp_usize(self.prefetch.max_queue),
        }
    }

    /// The origin URL template, checked: http or https, with `{key}` in it. `None` when unset.
    fn origin_url(&self) -> Result<Option<OriginUrl>, ConfigError> {
        if self.origin.url.is_empty() {
            return Ok(None);
        }
        OriginUrl::parse(&self.origin.url).map(Some).map_err(|problem| ConfigError::new("origin.url", problem))
    }

    /// `persistence.path`; `None` = snapshots off.
    pub(crate) fn persistence_path(&self) -> Option<std::path::PathBuf> {
        (!self.persistence.path.is_empty()).then(|| std::path::PathBuf::from(&self.persistence.path))
    }

    pub(crate) fn persistence_interval(&self) -> Duration {
        Duration::from_secs(self.persistence.interval_secs)
    }

    pub(crate) fn warm_config(&self) -> crate::engine::warm::WarmConfig {
        crate::engine::warm::WarmConfig {
            url: (!self.warm.url.is_empty()).then(|| self.warm.url.clone()),
            keys: self.warm.keys.clone(),
            parallelism: clamp_usize(self.warm.parallelism),
            timeout: Duration::from_secs(self.warm.timeout_secs),
        }
    }

    /// `warm.interval_secs`; `None` = warm only at start (and on request).
    pub(crate) fn warm_interval(&self) -> Option<Duration> {
        (self.warm.interval_secs > 0).then(|| Duration::from_secs(self.warm.interval_secs))
    }

    pub(crate) fn prefetch_workers(&self) -> usize {
        clamp_usize(self.prefetch.workers)
    }

    /// Where L2 lives: `None` without `l2.url` or `l2.cluster_nodes`. A `redis+cluster://` URL
    /// is a cluster seeded by that one node. URLs are checked here and never printed (they may
    /// carry a password).
    fn l2_target(&self) -> Result<Option<Target>, ConfigError> {
        let url = self.l2.url.expose();
        if !self.l2.cluster_nodes.is_empty() {
            let nodes = self.l2.cluster_nodes.iter().map(|node| normalize_redis_url(node)).collect::<Vec<_>>();
            for node in &nodes {
                check_redis_url("l2.cluster_nodes", node)?;
            }
            return Ok(Some(Target::Cluster(nodes)));
        }
        if url.is_empty() {
            return Ok(None);
        }
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            let node = format!("redis://{rest}");
            check_redis_url("l2.url", &node)?;
            return Ok(Some(Target::Cluster(vec![node])));
        }
        check_redis_url("l2.url", url)?;
        Ok(Some(Target::Single(url.to_string())))
    }

    pub(crate) fn cleanup_interval(&self) -> Duration {
        Duration::from_secs(self.l1.cleanup_interval_secs)
    }

    pub(crate) fn metrics_interval(&self) -> Duration {
        Duration::from_secs(self.metrics.interval_secs)
    }
}

/// `auth.*` and `metrics.require_auth`, for the HTTP layer. Token values are secrets: this
/// type has no `Debug`.
#[derive(Clone)]
pub(crate) struct AuthConfig {
    pub tokens: Vec<String>,
    pub read_tokens: Vec<String>,
    pub metrics_require_auth: bool,
}

/// The HTTP server's part of the settings.
#[derive(Debug, Clone)]
pub(crate) struct ServerConfig {
    pub max_body_bytes: usize,
    /// The header section of a request (every field line) past which it is 431.
    pub max_header_bytes: usize,
    pub request_timeout: Duration,
    pub max_concurrency: usize,
    pub shutdown_grace: Duration,
}

/// The engine's part of the settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub limits: EntryLimits,
    pub l1: L1Config,
    pub l2: Option<L2Config>,
    pub write_policy: WritePolicy,
    pub l1_max_ttl: Option<Duration>,
    pub channel: String,
    pub flush_l1_on_reconnect: bool,
    /// `cache.grace_secs`; zero = no stale serving.
    pub grace: Duration,
    pub origin: Option<OriginConfig>,
    pub prefetch_max_queue: usize,
}

/// The origin's part of the settings (`origin.*`), present only when `origin.url` is set.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    pub url: OriginUrl,
    /// Slot wait plus request; waiters of a coalesced fetch give up after it too.
    pub timeout: Duration,
    pub default_ttl: Duration,
    /// How long a 404 is remembered; `None` = not at all.
    pub negative_ttl: Option<Duration>,
    /// `cache.max_ttl_secs`: a `max-age` above it is capped.
    pub max_ttl: Duration,
    pub max_concurrency: usize,
    pub max_value_bytes: usize,
}

/// `origin.url` split around its `{key}` placeholders.
#[derive(Debug, Clone)]
pub struct OriginUrl {
    parts: Vec<String>,
}

impl OriginUrl {
    /// # Errors
    /// A one-line problem when the template is not an http(s) URL with `{key}` in it.
    pub fn parse(template: &str) -> Result<OriginUrl, String> {
        if !template.contains("{key}") {
            return Err("must contain {key}, e.g. http://127.0.0.1:8081/items/{key}".into());
        }
        let origin_url = OriginUrl { parts: template.split("{key}").map(str::to_string).collect() };
        let url = reqwest::Url::parse(&origin_url.for_key("k")).map_err(|err| format!("not a valid URL: {err}"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err("must be an http:// or https:// URL with a host".into());
        }
        Ok(origin_url)
    }

    /// The URL for `key`: every byte outside RFC 3986's unreserved set is percent-encoded, so
    /// `/`, `?` and `#` in a key stay inside the one path segment.
    pub fn for_key(&self, key: &str) -> String {
        const KEY_ESCAPES: &percent_encoding::AsciiSet =
            &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');
        let encoded = percent_encoding::utf8_percent_encode(key, KEY_ESCAPES).to_string();
        self.parts.join(&encoded)
    }
}

/// `l2.write_policy`: what a write does when L2 cannot take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePolicy {
    /// Answer with `"l2":"unavailable"`; the value lives in this instance's L1 only.
    BestEffort,
    /// Answer 503 and leave nothing behind in L1.
    Required,
}

/// What one entry may be: checked before anything is written.
#[derive(Debug, Clone)]
pub struct EntryLimits {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_tags: usize,
    pub max_deps: usize,
}

/// The bounds of the in-memory tier.
#[derive(Debug, Clone)]
pub struct L1Config {
    pub max_entries: NonZeroUsize,
    pub max_bytes: u64,
}

impl EngineConfig {
    /// The defaults of SPEC §11 with a smaller L1, for tests.
    pub fn for_tests(max_entries: usize, max_bytes: u64) -> Self {
        let mut config = Settings::default().engine_config();
        config.l1 = L1Config { max_entries: NonZeroUsize::new(max_entries).expect("at least 1"), max_bytes };
        config
    }
}

/// Cluster seed nodes may be given as `host:port`.
fn normalize_redis_url(node: &str) -> String {
    if node.contains("://") {
        node.to_string()
    } else {
        format!("redis://{node}")
    }
}

fn check_redis_url(key: &str, url: &str) -> Result<(), ConfigError> {
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|_| ConfigError::new(key, "not a valid Redis URL (redis://[:password@]host[:port][/db] or rediss://)"))
}

fn clamp_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

fn deserialize(built: Result<config::Config, config::ConfigError>) -> Result<Settings, ConfigError> {
    built.and_then(config::Config::try_deserialize).map_err(from_config_error)
}

/// Every dotted key `Settings` knows, with whether its value is a list.
fn known_keys() -> BTreeMap<String, bool> {
    let defaults = serde_json::to_value(Settings::default()).expect("settings serialize");
    let mut keys = BTreeMap::new();
    if let serde_json::Value::Object(sections) = defaults {
        for (section, fields) in sections {
            if let serde_json::Value::Object(fields) = fields {
                for (field, value) in fields {
                    keys.insert(format!("{section}.{field}"), value.is_array());
                }
            }
        }
    }
    keys
}

fn check_known_keys(value: &toml::Value, prefix: &str, known: &BTreeMap<String, bool>) -> Result<(), ConfigError> {
    let toml::Value::Table(table) = value else {
        return Ok(());
    };
    for (name, child) in table {
        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let is_section = known.keys().any(|known_key| known_key.starts_with(&format!("{key}.")));
        if is_section {
            if !child.is_table() {
                return Err(ConfigError::new(key, "must be a table"));
            }
            check_known_keys(child, &key, known)?;
        } else if !known.contains_key(&key) {
            return Err(ConfigError::new(key, "unknown key"));
        }
    }
    Ok(())
}

/// Layers the environment over the builder: aliases first, then `TIERCACHE__` variables, so
/// that the `TIERCACHE__` form wins when both are set.
fn apply_env(
    mut builder: config::ConfigBuilder<config::builder::DefaultState>,
    env: &BTreeMap<String, String>,
    known: &BTreeMap<String, bool>,
    file_settings: &Settings,
) -> Result<config::ConfigBuilder<config::builder::DefaultState>, ConfigError> {
    let set = |builder: config::ConfigBuilder<_>, key: &str, raw: &str| -> Result<_, ConfigError> {
        let value: config::Value = if known.get(key).copied().unwrap_or(false) {
            let items: Vec<String> =
                raw.split(',').map(str::trim).filter(|item| !item.is_empty()).map(String::from).collect();
            items.into()
        } else {
            raw.into()
        };
        builder.set_override(key, value).map_err(|err| ConfigError::new(key, err.to_string()))
    };

    for (alias, key) in ALIASES {
        if let Some(raw) = env.get(*alias) {
            builder = set(builder, key, raw)?;
        }
    }
    if let Some(port) = env.get("PORT") {
        let port: u16 = port
            .parse()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| ConfigError::new("PORT", format!("not a port in 1..=65535: {port:?}")))?;
        let listen =
            env.get("TIERCACHE__SERVER__LISTEN").cloned().unwrap_or_else(|| file_settings.server.listen.clone());
        let addr: SocketAddr = listen
            .parse()
            .map_err(|_| ConfigError::new("server.listen", format!("not a socket address (ip:port): {listen:?}")))?;
        builder = set(builder, "server.listen", &SocketAddr::new(addr.ip(), port).to_string())?;
    }
    if env.contains_key("REDIS_PASSWORD") || env.contains_key("REDIS_DB") {
        let url = env
            .get("TIERCACHE__L2__URL")
            .or_else(|| env.get("REDIS_URL"))
            .cloned()
            .unwrap_or_else(|| file_settings.l2.url.expose().to_string());
        if !url.is_empty() {
            let url = complete_redis_url(&url, env.get("REDIS_PASSWORD"), env.get("REDIS_DB"))?;
            builder = set(builder, "l2.url", &url)?;
        }
    }

    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let key = rest.split("__").map(str::to_ascii_lowercase).collect::<Vec<_>>().join(".");
        if !known.contains_key(&key) {
            return Err(ConfigError::new(key, format!("unknown key (from environment variable {name})")));
        }
        if key == "l2.url" && (env.contains_key("REDIS_PASSWORD") || env.contains_key("REDIS_DB")) {
            continue; // Already applied above, completed with the password and database.
        }
        builder = set(builder, &key, raw)?;
    }
    Ok(builder)
}

/// Adds `REDIS_PASSWORD` and `REDIS_DB` to a Redis URL that does not carry them already.
fn complete_redis_url(url: &str, password: Option<&String>, db: Option<&String>) -> Result<String, ConfigError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(ConfigError::new("l2.url", "not a URL (expected redis://host:port)"));
    };
    let (authority, path) = match rest.find('/') {
        Some(idx) => (&rest[..idx], &rest[idx..]),
        None => (rest, ""),
    };
    let authority = match password {
        Some(password) if !authority.contains('@') => {
            let encoded = percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC);
            format!(":{encoded}@{authority}")
        }
        _ => authority.to_string(),
    };
    let path = match db {
        Some(db) if path.trim_start_matches('/').is_empty() => {
            db.parse::<u32>().map_err(|_| ConfigError::new("REDIS_DB", "must be a database number"))?;
            format!("/{db}")
        }
        _ => path.to_string(),
    };
    Ok(format!("{scheme}://{authority}{path}"))
}

/// Turns the `config` crate's error into "key: problem". Its messages end in
/// "for key `x.y`" when they concern one key.
fn from_config_error(err: config::ConfigError) -> ConfigError {
    let text = err.to_string();
    if let Some(start) = text.find("for key `") {
        let after = &text[start + "for key `".len()..];
        if let Some(end) = after.find('`') {
            let problem = text[..start].trim_end().to_string();
            return ConfigError::new(&after[..end], problem);
        }
    }
    if let Some(field) = text.strip_prefix("unknown field `") {
        let name = field.split('`').next().unwrap_or_default();
        return ConfigError::new(name, "unknown key");
    }
    ConfigError::new("config", text)
}

fn toml_error_key(err: &toml::de::Error) -> String {
    err.span().map(|span| format!("config file (byte {})", span.start)).unwrap_or_else(|| "config file".into())
}

fn toml_error_message(err: &toml::de::Error) -> String {
    err.message().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_env(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load(Some(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml"))), env)
    }

    #[test]
    fn default_toml_documents_exactly_the_built_in_defaults() {
        assert_eq!(load_env(&[]).unwrap(), Settings::default());
    }

    #[test]
    fn every_known_key_appears_in_default_toml() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.toml")).unwrap();
        let table: toml::Table = text.parse().unwrap();
        for key in known_keys().keys() {
            let (section, field) = key.split_once('.').unwrap();
            assert!(table.get(section).and_then(|s| s.get(field)).is_some(), "{key} missing from default.toml");
        }
    }

    #[test]
    fn prefixed_env_overrides_file_and_alias() {
        let settings = load_env(&[("CACHE_L1_MAX_ENTRIES", "7"), ("TIERCACHE__L1__MAX_ENTRIES", "5000")]).unwrap();
        assert_eq!(settings.l1.max_entries, 5000);
        let settings = load_env(&[("CACHE_L1_MAX_ENTRIES", "7")]).unwrap();
        assert_eq!(settings.l1.max_entries, 7);
    }

    #[test]
    fn every_alias_sets_its_key() {
        let settings = load_env(&[
            ("CACHE_DEFAULT_TTL", "60"),
            ("CACHE_CLEANUP_INTERVAL", "9"),
            ("METRICS_ENABLED", "false"),
            ("METRICS_INTERVAL", "3"),
            ("PORT", "8123"),
        ])
        .unwrap();
        assert_eq!(settings.cache.default_ttl_secs, 60);
        assert_eq!(settings.l1.cleanup_interval_secs, 9);
        assert!(!settings.metrics.enabled);
        assert_eq!(settings.metrics.interval_secs, 3);
        assert_eq!(settings.server.listen, "0.0.0.0:8123");
    }

    #[test]
    fn port_alias_yields_to_prefixed_listen() {
        let settings = load_env(&[("PORT", "8123"), ("TIERCACHE__SERVER__LISTEN", "127.0.0.1:9000")]).unwrap();
        assert_eq!(settings.server.listen, "127.0.0.1:9000");
    }

    #[test]
    fn redis_aliases_complete_the_url() {
        assert_eq!(
            complete_redis_url("redis://cache:6379", Some(&"p@ss".into()), Some(&"2".into())).unwrap(),
            "redis://:p%40ss@cache:6379/2"
        );
        assert_eq!(
            complete_redis_url("redis://u:x@h:1/3", Some(&"y".into()), Some(&"4".into())).unwrap(),
            "redis://u:x@h:1/3"
        );
        let settings =
            load_env(&[("REDIS_URL", "redis://127.0.0.1:6379"), ("REDIS_DB", "1"), ("REDIS_PASSWORD", "pw")]).unwrap();
        assert_eq!(settings.l2.url.expose(), "redis://:pw@127.0.0.1:6379/1");
        let settings = load_env(&[("REDIS_URL", "redis://a:1"), ("TIERCACHE__L2__URL", "redis://b:2")]).unwrap();
        assert_eq!(settings.l2.url.expose(), "redis://b:2", "the TIERCACHE__ form wins");
        let err = load_env(&[("REDIS_URL", "http://nope")]).unwrap_err();
        assert_eq!(err.key, "l2.url");
        assert!(!err.problem.contains("nope"), "URLs are never printed: {err}");
    }

    #[test]
    fn lists_in_env_are_comma_separated() {
        let env = [("TIERCACHE__WARM__KEYS".to_string(), "a, b,c".to_string())];
        let err = Settings::load(None, env).unwrap_err();
        assert_eq!(err.key, "warm.keys", "parsed as a list, then refused without an origin: {err}");
        let env = [
            ("TIERCACHE__WARM__KEYS".to_string(), "a, b,c".to_string()),
            ("TIERCACHE__ORIGIN__URL".to_string(), "http://127.0.0.1:1/{key}".to_string()),
        ];
        assert_eq!(Settings::load(None, env).unwrap().warm.keys, ["a", "b", "c"]);
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(load_env(&[("TIERCACHE__L1__MAX_ENTRIES", "0")]).unwrap_err().key, "l1.max_entries");
        assert_eq!(load_env(&[("TIERCACHE__L1__MAX_ENTRIES", "many")]).unwrap_err().key, "l1.max_entries");
        assert_eq!(load_env(&[("TIERCACHE__L1__COLOUR", "red")]).unwrap_err().key, "l1.colour");
        assert_eq!(load_env(&[("TIERCACHE__SERVER__LISTEN", "nowhere")]).unwrap_err().key, "server.listen");
        assert_eq!(load_env(&[("TIERCACHE__LOG__FORMAT", "xml")]).unwrap_err().key, "log.format");
        assert_eq!(load_env(&[("PORT", "70000")]).unwrap_err().key, "PORT");
        let huge = "18446744073709551615";
        for (var, key) in [
            ("TIERCACHE__SERVER__MAX_CONCURRENCY", "server.max_concurrency"),
            ("CACHE_CLEANUP_INTERVAL", "l1.cleanup_interval_secs"),
            ("TIERCACHE__CACHE__MAX_TTL_SECS", "cache.max_ttl_secs"),
        ] {
            assert_eq!(load_env(&[(var, huge)]).unwrap_err().key, key);
        }
    }

    #[test]
    fn auth_settings_are_checked() {
        let mut blank = Settings::default();
        blank.auth.tokens = vec![Secret("a".into()), Secret("  ".into())];
        assert_eq!(blank.validate().unwrap_err().key, "auth.tokens");
        assert_eq!(load_env(&[("TIERCACHE__AUTH__READ_TOKENS", "r")]).unwrap_err().key, "auth.read_tokens");
        assert_eq!(load_env(&[("TIERCACHE__METRICS__REQUIRE_AUTH", "true")]).unwrap_err().key, "metrics.require_auth");
        let settings = load_env(&[("TIERCACHE__AUTH__TOKENS", "a, b"), ("TIERCACHE__AUTH__READ_TOKENS", "r")]).unwrap();
        let auth = settings.auth_config();
        assert_eq!((auth.tokens, auth.read_tokens), (vec!["a".to_string(), "b".into()], vec!["r".to_string()]));
    }

    #[test]
    fn origin_settings_are_checked_and_capped() {
        for url in ["http://127.0.0.1:8081/items", "ftp://host/{key}", "not a url/{key}"] {
            assert_eq!(load_env(&[("TIERCACHE__ORIGIN__URL", url)]).unwrap_err().key, "origin.url", "{url}");
        }
        assert_eq!(
            load_env(&[("TIERCACHE__CACHE__GRACE_SECS", "18446744073709551615")]).unwrap_err().key,
            "cache.grace_secs"
        );
        let settings = load_env(&[
            ("TIERCACHE__ORIGIN__URL", "https://origin.internal/v1/{key}.json"),
            ("TIERCACHE__ORIGIN__DEFAULT_TTL_SECS", "999999999"),
            ("TIERCACHE__CACHE__GRACE_SECS", "30"),
        ])
        .unwrap();
        let engine = settings.engine_config();
        let origin = engine.origin.expect("an origin");
        assert_eq!(origin.url.for_key("a/b"), "https://origin.internal/v1/a%2Fb.json");
        assert_eq!(
            origin.default_ttl,
            Duration::from_secs(settings.cache.max_ttl_secs),
            "capped at cache.max_ttl_secs"
        );
        assert_eq!(engine.grace, Duration::from_secs(30));
        assert!(load_env(&[]).unwrap().engine_config().origin.is_none());
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret("hunter2".into());
        assert_eq!(format!("{secret:?}"), "***");
    }
}
