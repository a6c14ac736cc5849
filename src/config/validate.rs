//! The ranges and cross-key rules serde's types cannot express, checked before the parts are
//! made (`parts.rs` parses URLs and addresses and reports its own errors).
//!
//! Upper bounds keep every value representable where it is used (semaphore permits, timer
//! deadlines, expiry in milliseconds), far above any sensible setting.

use super::{ConfigError, Settings};

const TEN_YEARS_SECS: u64 = 10 * 365 * 24 * 3600;
const ONE_DAY_MS: u64 = 24 * 3600 * 1000;

impl Settings {
    /// Every range and cross-key rule, section by section; the first broken one is the error.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        self.check_server()?;
        self.check_cache()?;
        self.check_tiers()?;
        self.check_origin()?;
        self.check_loading()?;
        self.check_auth()
    }

    fn check_server(&self) -> Result<(), ConfigError> {
        let server = &self.server;
        within("server.max_concurrency", server.max_concurrency, 1, 1 << 20)?;
        within("server.request_timeout_ms", server.request_timeout_ms, 1, ONE_DAY_MS)?;
        within("server.shutdown_grace_ms", server.shutdown_grace_ms, 1, ONE_DAY_MS)?;
        within("server.max_body_bytes", server.max_body_bytes, 1, u64::MAX)?;
        within("server.max_header_bytes", server.max_header_bytes, 1, 16 << 20)?;
        within("metrics.interval_secs", self.metrics.interval_secs, 1, TEN_YEARS_SECS)
    }

    fn check_cache(&self) -> Result<(), ConfigError> {
        let cache = &self.cache;
        within("cache.max_ttl_secs", cache.max_ttl_secs, 1, TEN_YEARS_SECS)?;
        within("cache.default_ttl_secs", cache.default_ttl_secs, 1, u64::MAX)?;
        within("cache.max_key_bytes", cache.max_key_bytes, 1, u64::MAX)?;
        within("cache.max_value_bytes", cache.max_value_bytes, 1, u64::MAX)?;
        within("cache.max_tags", cache.max_tags, 1, u64::MAX)?;
        within("cache.max_deps", cache.max_deps, 1, u64::MAX)?;
        within("cache.grace_secs", cache.grace_secs, 0, TEN_YEARS_SECS)?;
        if cache.default_ttl_secs > cache.max_ttl_secs {
            return Err(ConfigError::new(
                "cache.default_ttl_secs",
                format!("must not exceed cache.max_ttl_secs ({})", cache.max_ttl_secs),
            ));
        }
        Ok(())
    }

    fn check_tiers(&self) -> Result<(), ConfigError> {
        within("l1.max_entries", self.l1.max_entries, 1, u64::MAX)?;
        within("l1.max_bytes", self.l1.max_bytes, 1024, u64::MAX)?;
        within("l1.cleanup_interval_secs", self.l1.cleanup_interval_secs, 1, TEN_YEARS_SECS)?;
        within("l1.max_ttl_secs", self.l1.max_ttl_secs, 0, TEN_YEARS_SECS)?;
        within("l2.timeout_ms", self.l2.timeout_ms, 1, ONE_DAY_MS)?;
        within("l2.breaker_failures", self.l2.breaker_failures, 1, u64::MAX)?;
        within("l2.breaker_open_secs", self.l2.breaker_open_secs, 1, u64::MAX)?;
        if self.invalidation.channel.is_empty() {
            return Err(ConfigError::new("invalidation.channel", "must not be empty"));
        }
        within("compression.threshold_bytes", self.compression.threshold_bytes, 1, u64::MAX)?;
        if !(1..=22).contains(&self.compression.level) {
            return Err(ConfigError::new("compression.level", "must be in 1..=22"));
        }
        Ok(())
    }

    fn check_origin(&self) -> Result<(), ConfigError> {
        within("origin.timeout_ms", self.origin.timeout_ms, 1, ONE_DAY_MS)?;
        within("origin.default_ttl_secs", self.origin.default_ttl_secs, 1, u64::MAX)?;
        within("origin.max_concurrency", self.origin.max_concurrency, 1, 1 << 20)
    }

    /// Warm, persistence and prefetch: what loads the cache besides reads.
    fn check_loading(&self) -> Result<(), ConfigError> {
        if !self.warm.keys.is_empty() && self.origin.url.is_empty() {
            return Err(ConfigError::new("warm.keys", "needs origin.url: warm keys are fetched through the origin"));
        }
        within("warm.timeout_secs", self.warm.timeout_secs, 1, TEN_YEARS_SECS)?;
        within("warm.interval_secs", self.warm.interval_secs, 0, TEN_YEARS_SECS)?;
        within("warm.parallelism", self.warm.parallelism, 1, u64::MAX)?;
        within("persistence.interval_secs", self.persistence.interval_secs, 1, TEN_YEARS_SECS)?;
        within("prefetch.workers", self.prefetch.workers, 1, 1024)?;
        within("prefetch.max_queue", self.prefetch.max_queue, 1, 1 << 24)
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
}

/// `value` of `key` in `min..=max`, or the error naming the bound it breaks.
fn within(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min {
        Err(ConfigError::new(key, format!("must be at least {min}, got {value}")))
    } else if value > max {
        Err(ConfigError::new(key, format!("must be at most {max}, got {value}")))
    } else {
        Ok(())
    }
}
