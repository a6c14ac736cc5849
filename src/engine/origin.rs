//! The HTTP origin of SPEC §6: one pooled client (connections are reused), the URL template,
//! the `origin.max_concurrency` gate, and the rules that turn a response into something to
//! cache. Knows nothing of tiers or coalescing: `flight.rs` decides when to call it and
//! `read.rs` what to do with the answer.
//!
//! Response rules (what a shared HTTP cache such as Varnish does by default):
//! - 200 with a JSON body: cached for `s-maxage`, else `max-age`, else `origin.default_ttl_secs`,
//!   capped at `cache.max_ttl_secs`. `no-store`, `no-cache`, `private` or a zero max-age: served
//!   once, not stored.
//! - 404: a miss (remembered for `origin.negative_ttl_secs` by the caller).
//! - Anything else, a body that is not JSON or is over `cache.max_value_bytes`, a connection
//!   error, or no answer within `origin.timeout_ms` (slot wait included): an error.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;

use super::key::Key;
use crate::config::OriginConfig;
use crate::metrics::Metrics;

pub(crate) struct Origin {
    client: reqwest::Client,
    config: OriginConfig,
    /// `origin.max_concurrency` permits; a fetch holds one for its whole request.
    slots: Semaphore,
}

/// What the origin said about a key.
#[derive(Debug, Clone)]
pub(crate) enum Fetched {
    /// A JSON value and how long to cache it; `None` = serve it once, do not store it.
    Value {
        value: Bytes,
        ttl: Option<Duration>,
    },
    NotFound,
}

/// Why a fetch failed. The detail is for the log; clients get a generic 502.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    #[error("the origin did not answer within origin.timeout_ms")]
    Timeout,
    #[error("origin request failed: {0}")]
    Failed(String),
}

impl Origin {
    pub fn new(config: OriginConfig) -> Origin {
        install_tls_provider();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(config.max_concurrency.min(1024))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("tiercache/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the origin client builds with a TLS provider installed");
        Origin { client, slots: Semaphore::new(config.max_concurrency), config }
    }

    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }

    pub fn negative_ttl(&self) -> Option<Duration> {
        self.config.negative_ttl
    }

    /// Fetches `key`, waiting for a slot and the answer until `deadline`; counts the result.
    pub async fn fetch(&self, key: &Key, deadline: Instant, metrics: &Metrics) -> Result<Fetched, OriginError> {
        let started = Instant::now();
        let result = match tokio::time::timeout_at(deadline.into(), self.fetch_unbounded(key)).await {
            Ok(result) => result,
            Err(_) => Err(OriginError::Timeout),
        };
        metrics.origin_duration.observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(Fetched::Value { .. }) => metrics.counters.origin_ok.inc(),
            Ok(Fetched::NotFound) => metrics.counters.origin_not_found.inc(),
            Err(err) => {
                metrics.counters.origin_errors.inc();
                tracing::warn!(key = key.as_str(), %err, "origin fetch failed");
            }
        }
        result
    }

    async fn fetch_unbounded(&self, key: &Key) -> Result<Fetched, OriginError> {
        let _slot = self.slots.acquire().await.map_err(|_| OriginError::Failed("origin gate closed".into()))?;
        let url = self.config.url.for_key(key.as_str());
        let mut response = self
            .client
            .get(&url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|err| OriginError::Failed(error_chain(&err)))?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(Fetched::NotFound),
            status => return Err(OriginError::Failed(format!("origin answered {status}"))),
        }
        let ttl = ttl_of(response.headers().get_all(reqwest::header::CACHE_CONTROL), &self.config);
        let limit = self.config.max_value_bytes;
        let announced = response.content_length().unwrap_or(0);
        if announced > limit as u64 {
            return Err(OriginError::Failed(format!("origin value is over cache.max_value_bytes ({limit})")));
        }
        let mut body = BytesMut::with_capacity(announced as usize);
        while let Some(chunk) = response.chunk().await.map_err(|err| OriginError::Failed(error_chain(&err)))? {
            if body.len() + chunk.len() > limit {
                return Err(OriginError::Failed(format!("origin value is over cache.max_value_bytes ({limit})")));
            }
            body.extend_from_slice(&chunk);
        }
        let value = trim_json(body.freeze());
        if serde_json::from_slice::<serde::de::IgnoredAny>(&value).is_err() {
            return Err(OriginError::Failed("origin answered a body that is not JSON".into()));
        }
        Ok(Fetched::Value { value, ttl })
    }
}

/// Makes ring the process's rustls provider unless one is installed already (the only one
/// this build compiles in; reqwest needs a process default to build a client).
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TTL a response's `Cache-Control` allows; `None` = do not store.
fn ttl_of<'a>(
    headers: impl IntoIterator<Item = &'a reqwest::header::HeaderValue>,
    config: &OriginConfig,
) -> Option<Duration> {
    let mut max_age = None;
    let mut s_maxage = None;
    for value in headers {
        let Ok(value) = value.to_str() else { continue };
        for directive in value.split(',') {
            let directive = directive.trim().to_ascii_lowercase();
            let (name, argument) = match directive.split_once('=') {
                Some((name, argument)) => {
                    (name.trim().to_string(), Some(argument.trim().trim_matches('"').to_string()))
                }
                None => (directive.clone(), None),
            };
            match (name.as_str(), argument) {
                ("no-store" | "no-cache" | "private", _) => return None,
                ("max-age", Some(secs)) => max_age = secs.parse::<u64>().ok().or(max_age),
                ("s-maxage", Some(secs)) => s_maxage = secs.parse::<u64>().ok().or(s_maxage),
                _ => {}
            }
        }
    }
    match s_maxage.or(max_age) {
        Some(0) => None,
        Some(secs) => Some(Duration::from_secs(secs).min(config.max_ttl)),
        None => Some(config.default_ttl),
    }
}

/// The body without surrounding whitespace: the value is embedded in responses as it is.
fn trim_json(body: Bytes) -> Bytes {
    let start = body.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(body.len());
    let end = body.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |idx| idx + 1);
    body.slice(start..end)
}

/// An error with its sources, for the log (reqwest's own message hides the cause).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;
    use crate::config::OriginUrl;

    fn config() -> OriginConfig {
        OriginConfig {
            url: OriginUrl::parse("http://127.0.0.1:1/items/{key}").unwrap(),
            timeout: Duration::from_secs(1),
            default_ttl: Duration::from_secs(300),
            negative_ttl: None,
            max_ttl: Duration::from_secs(3600),
            max_concurrency: 4,
            max_value_bytes: 1024,
        }
    }

    fn ttl(values: &[&'static str]) -> Option<u64> {
        let headers: Vec<HeaderValue> = values.iter().map(|value| HeaderValue::from_static(value)).collect();
        ttl_of(&headers, &config()).map(|ttl| ttl.as_secs())
    }

    #[test]
    fn cache_control_sets_or_forbids_the_ttl() {
        assert_eq!(ttl(&[]), Some(300), "no header: origin.default_ttl_secs");
        assert_eq!(ttl(&["max-age=60"]), Some(60));
        assert_eq!(ttl(&["public, max-age=60, s-maxage=30"]), Some(30), "s-maxage wins for a shared cache");
        assert_eq!(ttl(&["max-age=999999"]), Some(3600), "capped at cache.max_ttl_secs");
        assert_eq!(ttl(&["max-age=\"20\""]), Some(20));
        assert_eq!(ttl(&["max-age=0"]), None);
        assert_eq!(ttl(&["no-store"]), None);
        assert_eq!(ttl(&["max-age=60", "No-Cache"]), None);
        assert_eq!(ttl(&["private, max-age=60"]), None);
        assert_eq!(ttl(&["max-age=junk"]), Some(300));
    }

    #[test]
    fn keys_are_percent_encoded_into_one_segment() {
        let url = OriginUrl::parse("http://127.0.0.1:8081/items/{key}?v=1").unwrap();
        assert_eq!(url.for_key("users/1 ?#%é"), "http://127.0.0.1:8081/items/users%2F1%20%3F%23%25%C3%A9?v=1");
        assert_eq!(url.for_key("a-b.c_d~e"), "http://127.0.0.1:8081/items/a-b.c_d~e?v=1");
        assert!(OriginUrl::parse("http://127.0.0.1:8081/items").is_err(), "{{key}} is required");
        assert!(OriginUrl::parse("ftp://host/{key}").is_err());
        assert!(OriginUrl::parse("not a url {key}").is_err());
    }

    #[test]
    fn bodies_are_trimmed_of_surrounding_whitespace() {
        assert_eq!(&trim_json(Bytes::from_static(b" \n{\"a\": 1}\n")), &b"{\"a\": 1}"[..]);
        assert_eq!(&trim_json(Bytes::from_static(b"  ")), &b""[..]);
    }
}
