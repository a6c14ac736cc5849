//! The typed parts of the settings: durations, non-zero counts, parsed URLs and addresses.
//! [`Settings::parts`] checks the settings and makes them once; `App::start` hands each
//! component its part. Split the way the service is: what the server needs, what every cache
//! of the instance shares (L2, the invalidation bus), and what one cache owns.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Settings};

/// Every part, made by [`Settings::parts`].
#[derive(Debug, Clone)]
pub struct Parts {
    pub server: ServerConfig,
    pub instance: InstanceConfig,
    pub cache: CacheConfig,
    pub auth: AuthConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

/// `log.*`: the filter is checked to parse, so the binary can install it without a fallback.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// The HTTP server's part.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `server.instance_id`; `None` = generated at start.
    pub instance_id: Option<String>,
    pub max_body_bytes: usize,
    /// The header section of a request (every field line) past which it is 431.
    pub max_header_bytes: usize,
    pub request_timeout: Duration,
    pub max_concurrency: usize,
    pub shutdown_grace: Duration,
}

/// What every cache of the instance shares: L2 and the invalidation bus.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// `None` without `l2.url` or `l2.cluster_nodes`: L1 only.
    pub l2: Option<L2Config>,
    pub bus: BusConfig,
    pub write_policy: WritePolicy,
}

/// How to reach Redis and how to treat it.
#[derive(Debug, Clone)]
pub struct L2Config {
    pub target: Target,
    pub key_prefix: String,
    pub timeout: Duration,
    pub breaker_failures: u32,
    pub breaker_open_for: Duration,
    pub compression: Compression,
    /// `cache.max_value_bytes`: a decoded value past it is malformed.
    pub max_value_bytes: usize,
}

/// One server or a cluster, by its parsed connection details (checked once, here).
#[derive(Clone)]
pub enum Target {
    Single(Box<redis::ConnectionInfo>),
    Cluster(Vec<redis::ConnectionInfo>),
}

impl std::fmt::Debug for Target {
    /// Connection details may carry a password: print only the shape.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Single(_) => f.write_str("Single(***)"),
            Target::Cluster(nodes) => write!(f, "Cluster({} nodes)", nodes.len()),
        }
    }
}

/// How values are compressed on the way to L2.
#[derive(Debug, Clone, Copy)]
pub struct Compression {
    /// `None` when `compression.algorithm = "none"`.
    pub zstd_level: Option<i32>,
    pub threshold_bytes: usize,
}

/// The invalidation bus (`invalidation.*`).
#[derive(Debug, Clone)]
pub struct BusConfig {
    pub channel: String,
    pub flush_l1_on_reconnect: bool,
}

/// `l2.write_policy`: what a write does when L2 cannot take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WritePolicy {
    /// Answer with `"l2":"unavailable"`; the value lives in this instance's L1 only.
    #[default]
    BestEffort,
    /// Answer 503 and leave nothing behind in L1.
    Required,
}

/// `compression.algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompressionAlgorithm {
    #[default]
    Zstd,
    None,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A setting that is one of a few names: the names are listed once, here, and serde reads and
/// writes them (a name not in the list is `must be "a" or "b"`, naming the key).
pub trait Mode: Sized + Copy + PartialEq + 'static {
    const NAMES: &'static [(&'static str, Self)];
}

impl Mode for WritePolicy {
    const NAMES: &'static [(&'static str, Self)] =
        &[("best_effort", WritePolicy::BestEffort), ("required", WritePolicy::Required)];
}

impl Mode for CompressionAlgorithm {
    const NAMES: &'static [(&'static str, Self)] =
        &[("zstd", CompressionAlgorithm::Zstd), ("none", CompressionAlgorithm::None)];
}

impl Mode for LogFormat {
    const NAMES: &'static [(&'static str, Self)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];
}

macro_rules! serde_by_name {
    ($($mode:ty),*) => {$(
        impl Serialize for $mode {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let name = <$mode as Mode>::NAMES.iter().find(|(_, mode)| mode == self).map(|(name, _)| *name);
                serializer.serialize_str(name.expect("every mode has a name"))
            }
        }

        impl<'de> Deserialize<'de> for $mode {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(deserializer)?;
                let names = <$mode as Mode>::NAMES;
                names.iter().find(|(name, _)| *name == raw).map(|(_, mode)| *mode).ok_or_else(|| {
                    let quoted: Vec<String> = names.iter().map(|(name, _)| format!("{name:?}")).collect();
                    serde::de::Error::custom(format!("must be {}", quoted.join(" or ")))
                })
            }
        }
    )*};
}

serde_by_name!(WritePolicy, CompressionAlgorithm, LogFormat);

/// What one cache owns: its entry rules, L1, origin, loading and persistence.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub limits: EntryLimits,
    pub l1: L1Config,
    pub lifetime: LifetimeConfig,
    pub origin: Option<OriginConfig>,
    pub prefetch: PrefetchConfig,
    pub warm: WarmConfig,
    /// `None` when `persistence.path` is empty: snapshots off.
    pub persistence: Option<PersistenceConfig>,
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

/// The bounds of the in-memory tier and its sweep.
#[derive(Debug, Clone)]
pub struct L1Config {
    pub max_entries: NonZeroUsize,
    pub max_bytes: u64,
    pub cleanup_interval: Duration,
}

/// How long copies live beyond their TTL rules: the L1 cap and the grace.
#[derive(Debug, Clone, Copy)]
pub struct LifetimeConfig {
    /// With L2, how long an L1 copy may live (`l1.max_ttl_secs`); `None` = the entry's TTL.
    pub l1_max_ttl: Option<Duration>,
    /// `cache.grace_secs`; zero = no stale serving.
    pub grace: Duration,
}

/// The origin's part (`origin.*`), present only when `origin.url` is set.
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

/// `prefetch.*`.
#[derive(Debug, Clone, Copy)]
pub struct PrefetchConfig {
    pub workers: usize,
    pub max_queue: usize,
}

/// Where warm data comes from (`warm.url`, `warm.keys`), and how.
#[derive(Debug, Clone, Default)]
pub struct WarmConfig {
    pub url: Option<reqwest::Url>,
    pub keys: Vec<String>,
    pub parallelism: usize,
    /// Bounds one whole run.
    pub timeout: Duration,
    /// `warm.interval_secs`; `None` = warm only at start (and on request).
    pub interval: Option<Duration>,
}

impl WarmConfig {
    pub fn is_configured(&self) -> bool {
        self.url.is_some() || !self.keys.is_empty()
    }
}

/// `persistence.*`, when a path is set.
#[derive(Debug, Clone)]
pub struct PersistenceConfig {
    pub path: PathBuf,
    pub interval: Duration,
}

/// `auth.*` and `metrics.require_auth`, for the HTTP layer. Token values are secrets: its
/// `Debug` prints how many there are, never what they are.
#[derive(Clone)]
pub struct AuthConfig {
    pub tokens: Vec<String>,
    pub read_tokens: Vec<String>,
    pub metrics_require_auth: bool,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tokens", &self.tokens.len())
            .field("read_tokens", &self.read_tokens.len())
            .field("metrics_require_auth", &self.metrics_require_auth)
            .finish()
    }
}

/// `metrics.*` but `require_auth` (which is auth's).
#[derive(Debug, Clone, Copy)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Gauges refresh and the counters' info line, every this long.
    pub interval: Duration,
}

impl Settings {
    /// Checks every range and rule, parses every URL and address, and makes the typed parts.
    ///
    /// # Errors
    /// The first [`ConfigError`] found, naming its key.
    pub fn parts(&self) -> Result<Parts, ConfigError> {
        self.check()?;
        Ok(Parts {
            server: self.server_config()?,
            instance: InstanceConfig {
                l2: self.l2_config()?,
                bus: BusConfig {
                    channel: self.invalidation.channel.clone(),
                    flush_l1_on_reconnect: self.invalidation.flush_l1_on_reconnect,
                },
                write_policy: self.l2.write_policy,
            },
            cache: self.cache_config()?,
            auth: self.auth_config(),
            metrics: MetricsConfig {
                enabled: self.metrics.enabled,
                interval: Duration::from_secs(self.metrics.interval_secs),
            },
            log: self.log_config()?,
        })
    }

    /// Whether [`Settings::parts`] can be made.
    ///
    /// # Errors
    /// As [`Settings::parts`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.parts().map(|_| ())
    }

    fn server_config(&self) -> Result<ServerConfig, ConfigError> {
        let server = &self.server;
        let listen: SocketAddr = server.listen.parse().map_err(|_| {
            ConfigError::new("server.listen", format!("not a socket address (ip:port): {:?}", server.listen))
        })?;
        if listen.port() == 0 {
            return Err(ConfigError::new("server.listen", "port must be in 1..=65535"));
        }
        Ok(ServerConfig {
            listen,
            instance_id: (!server.instance_id.is_empty()).then(|| server.instance_id.clone()),
            max_body_bytes: clamp_usize(server.max_body_bytes),
            max_header_bytes: clamp_usize(server.max_header_bytes),
            request_timeout: Duration::from_millis(server.request_timeout_ms),
            max_concurrency: clamp_usize(server.max_concurrency),
            shutdown_grace: Duration::from_millis(server.shutdown_grace_ms),
        })
    }

    fn l2_config(&self) -> Result<Option<L2Config>, ConfigError> {
        let Some(target) = self.l2_target()? else { return Ok(None) };
        Ok(Some(L2Config {
            target,
            key_prefix: self.l2.key_prefix.clone(),
            timeout: Duration::from_millis(self.l2.timeout_ms),
            breaker_failures: u32::try_from(self.l2.breaker_failures).unwrap_or(u32::MAX),
            breaker_open_for: Duration::from_secs(self.l2.breaker_open_secs),
            compression: Compression {
                zstd_level: (self.compression.algorithm == CompressionAlgorithm::Zstd)
                    .then_some(self.compression.level as i32),
                threshold_bytes: clamp_usize(self.compression.threshold_bytes),
            },
            max_value_bytes: clamp_usize(self.cache.max_value_bytes),
        }))
    }

    /// Where L2 lives: `None` without `l2.url` or `l2.cluster_nodes`. A `redis+cluster://` URL
    /// is a cluster seeded by that one node. URLs are never printed (they may carry a password).
    fn l2_target(&self) -> Result<Option<Target>, ConfigError> {
        let url = self.l2.url.expose();
        if !self.l2.cluster_nodes.is_empty() {
            let nodes =
                self.l2.cluster_nodes.iter().map(|node| redis_url("l2.cluster_nodes", &normalize_redis_url(node)));
            return Ok(Some(Target::Cluster(nodes.collect::<Result<_, _>>()?)));
        }
        if url.is_empty() {
            return Ok(None);
        }
        if let Some(rest) = url.strip_prefix("redis+cluster://") {
            return Ok(Some(Target::Cluster(vec![redis_url("l2.url", &format!("redis://{rest}"))?])));
        }
        Ok(Some(Target::Single(Box::new(redis_url("l2.url", url)?))))
    }

    fn cache_config(&self) -> Result<CacheConfig, ConfigError> {
        let cache = &self.cache;
        Ok(CacheConfig {
            limits: EntryLimits {
                default_ttl: Duration::from_secs(cache.default_ttl_secs),
                max_ttl: Duration::from_secs(cache.max_ttl_secs),
                max_key_bytes: clamp_usize(cache.max_key_bytes),
                max_value_bytes: clamp_usize(cache.max_value_bytes),
                max_tags: clamp_usize(cache.max_tags),
                max_deps: clamp_usize(cache.max_deps),
            },
            l1: L1Config {
                max_entries: NonZeroUsize::new(clamp_usize(self.l1.max_entries)).unwrap_or(NonZeroUsize::MIN),
                max_bytes: self.l1.max_bytes,
                cleanup_interval: Duration::from_secs(self.l1.cleanup_interval_secs),
            },
            lifetime: LifetimeConfig {
                l1_max_ttl: (self.l1.max_ttl_secs > 0).then(|| Duration::from_secs(self.l1.max_ttl_secs)),
                grace: Duration::from_secs(cache.grace_secs),
            },
            origin: self.origin_config()?,
            prefetch: PrefetchConfig {
                workers: clamp_usize(self.prefetch.workers),
                max_queue: clamp_usize(self.prefetch.max_queue),
            },
            warm: self.warm_config()?,
            persistence: (!self.persistence.path.is_empty()).then(|| PersistenceConfig {
                path: PathBuf::from(&self.persistence.path),
                interval: Duration::from_secs(self.persistence.interval_secs),
            }),
        })
    }

    fn origin_config(&self) -> Result<Option<OriginConfig>, ConfigError> {
        if self.origin.url.is_empty() {
            return Ok(None);
        }
        let url = OriginUrl::parse(&self.origin.url).map_err(|problem| ConfigError::new("origin.url", problem))?;
        let max_ttl_secs = self.cache.max_ttl_secs;
        Ok(Some(OriginConfig {
            url,
            timeout: Duration::from_millis(self.origin.timeout_ms),
            // Both capped at cache.max_ttl_secs, like every other TTL.
            default_ttl: Duration::from_secs(self.origin.default_ttl_secs.min(max_ttl_secs)),
            negative_ttl: (self.origin.negative_ttl_secs > 0)
                .then(|| Duration::from_secs(self.origin.negative_ttl_secs.min(max_ttl_secs))),
            max_ttl: Duration::from_secs(max_ttl_secs),
            max_concurrency: clamp_usize(self.origin.max_concurrency),
            max_value_bytes: clamp_usize(self.cache.max_value_bytes),
        }))
    }

    fn warm_config(&self) -> Result<WarmConfig, ConfigError> {
        let url = match self.warm.url.as_str() {
            "" => None,
            raw => {
                let url = reqwest::Url::parse(raw)
                    .map_err(|err| ConfigError::new("warm.url", format!("not a valid URL: {err}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(ConfigError::new("warm.url", "must be an http:// or https:// URL"));
                }
                Some(url)
            }
        };
        Ok(WarmConfig {
            url,
            keys: self.warm.keys.clone(),
            parallelism: clamp_usize(self.warm.parallelism),
            timeout: Duration::from_secs(self.warm.timeout_secs),
            interval: (self.warm.interval_secs > 0).then(|| Duration::from_secs(self.warm.interval_secs)),
        })
    }

    fn log_config(&self) -> Result<LogConfig, ConfigError> {
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(ConfigError::new("log.level", format!("not a log filter: {:?}", self.log.level)));
        }
        Ok(LogConfig { level: self.log.level.clone(), format: self.log.format })
    }

    fn auth_config(&self) -> AuthConfig {
        AuthConfig {
            tokens: self.auth.tokens.iter().map(|token| token.expose().trim().to_string()).collect(),
            read_tokens: self.auth.read_tokens.iter().map(|token| token.expose().trim().to_string()).collect(),
            metrics_require_auth: self.metrics.require_auth,
        }
    }
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

impl Parts {
    /// The defaults of SPEC §11 with a smaller L1, for unit tests and benchmarks.
    #[doc(hidden)]
    pub fn for_tests(max_entries: usize, max_bytes: u64) -> Parts {
        let mut parts = Settings::default().parts().expect("the defaults are valid");
        parts.cache.l1.max_entries = NonZeroUsize::new(max_entries).expect("at least 1");
        parts.cache.l1.max_bytes = max_bytes;
        parts
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

/// A Redis URL parsed into connection details, or the error naming `key` (never the URL).
fn redis_url(key: &str, url: &str) -> Result<redis::ConnectionInfo, ConfigError> {
    redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|_| ConfigError::new(key, "not a valid Redis URL (redis://[:password@]host[:port][/db] or rediss://)"))
}

fn clamp_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}
