//! Response bodies that embed stored values. The value bytes are copied in as they are:
//! a hit never parses or re-serializes a value.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;

use crate::engine::clock::push_rfc3339;
use crate::engine::{Hit, Key, Miss, Served, Source, Stale};

pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
pub const X_CACHE_SOURCE: HeaderName = HeaderName::from_static("x-cache-source");
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// `200` with the entry of SPEC §3, or `304` when `If-None-Match` names its ETag. An answer
/// from the origin says `"hit":false`; a stale one adds `"stale":true`.
pub fn hit(key: &Key, hit: &Hit, now_ms: u64, request_headers: &HeaderMap) -> Response {
    let entry = &hit.entry;
    let ttl_remaining = entry.ttl_remaining_secs(now_ms);
    // Room for the six headers set here and the content-length axum adds, without a regrow.
    let mut headers = HeaderMap::with_capacity(8);
    let (x_cache, is_hit) = match hit.served {
        Served::Fresh => ("HIT", true),
        Served::Fetched { .. } => ("MISS", false),
        Served::Stale(_) => ("STALE", true),
    };
    headers.insert(X_CACHE, HeaderValue::from_static(x_cache));
    headers.insert(X_CACHE_SOURCE, HeaderValue::from_static(hit.source.as_str()));
    headers.insert(CACHE_STATUS, cache_status_of_hit(hit, now_ms));
    let etag = entry.etag();
    if let Ok(etag) = HeaderValue::from_bytes(etag.as_bytes()) {
        headers.insert(header::ETAG, etag);
    }
    let cache_control = match hit.served {
        Served::Fetched { stored: false } => HeaderValue::from_static("no-store"),
        _ => max_age(ttl_remaining),
    };
    headers.insert(header::CACHE_CONTROL, cache_control);

    if let Some(condition) = request_headers.get(header::IF_NONE_MATCH) {
        if etag_matches(condition.as_bytes(), etag.as_str()) {
            return with_headers(StatusCode::NOT_MODIFIED, headers, Body::empty());
        }
    }

    let mut body = Vec::with_capacity(entry.value().len() + key.len() + 176);
    body.extend_from_slice(b"{\"key\":");
    push_json_str(&mut body, key.as_str());
    body.extend_from_slice(b",\"value\":");
    body.extend_from_slice(entry.value());
    body.extend_from_slice(if is_hit { b",\"hit\":true" } else { b",\"hit\":false" });
    if matches!(hit.served, Served::Stale(_)) {
        body.extend_from_slice(b",\"stale\":true");
    }
    body.extend_from_slice(b",\"source\":\"");
    body.extend_from_slice(hit.source.as_str().as_bytes());
    body.extend_from_slice(b"\",\"cached_at\":\"");
    push_rfc3339(&mut body, entry.cached_at_ms());
    body.extend_from_slice(b"\",\"expires_at\":\"");
    push_rfc3339(&mut body, entry.expires_at_ms());
    body.extend_from_slice(b"\",\"ttl_remaining\":");
    body.extend_from_slice(itoa::Buffer::new().format(ttl_remaining).as_bytes());
    body.extend_from_slice(b",\"tags\":[");
    for (idx, tag) in entry.tags().iter().enumerate() {
        if idx > 0 {
            body.push(b',');
        }
        push_json_str(&mut body, tag.as_str());
    }
    body.extend_from_slice(b"]}");
    headers.insert(header::CONTENT_TYPE, APPLICATION_JSON);
    with_headers(StatusCode::OK, headers, Body::from(body))
}

/// `404 {"key","hit":false}` with `X-Cache: MISS`.
pub fn miss(key: &Key, miss: Miss) -> Response {
    let mut body = Vec::with_capacity(key.len() + 24);
    body.extend_from_slice(b"{\"key\":");
    push_json_str(&mut body, key.as_str());
    body.extend_from_slice(b",\"hit\":false}");
    let mut headers = HeaderMap::with_capacity(3);
    headers.insert(X_CACHE, HeaderValue::from_static("MISS"));
    headers.insert(CACHE_STATUS, HeaderValue::from_static(cache_status_of_miss(miss)));
    headers.insert(header::CONTENT_TYPE, APPLICATION_JSON);
    with_headers(StatusCode::NOT_FOUND, headers, Body::from(body))
}

/// The RFC 9211 `Cache-Status` of an answered GET. `ttl` is the freshness left in seconds,
/// negative once stale (fresh hits leave it to `Cache-Control: max-age`); `detail` names what
/// the standard parameters cannot say.
fn cache_status_of_hit(hit: &Hit, now_ms: u64) -> HeaderValue {
    let entry = &hit.entry;
    let ttl = if entry.is_past_expiry(now_ms) {
        // Rounded away from zero: a stale answer never reports ttl=0 as if still fresh.
        -(((now_ms - entry.expires_at_ms()).div_ceil(1000).max(1)) as i64)
    } else {
        entry.ttl_remaining_secs(now_ms) as i64
    };
    let text = match (hit.served, hit.source) {
        // Fresh hits, the hot path, carry no ttl (`max-age` says it): a static value, no allocation.
        (Served::Fresh, Source::L2) => return HeaderValue::from_static("tiercache; hit; detail=l2"),
        (Served::Fresh, _) => return HeaderValue::from_static("tiercache; hit"),
        (Served::Fetched { stored: true }, _) => format!("tiercache; fwd=miss; fwd-status=200; stored; ttl={ttl}"),
        (Served::Fetched { stored: false }, _) => "tiercache; fwd=miss; fwd-status=200".to_string(),
        (Served::Stale(Stale::Refreshing), _) => format!("tiercache; hit; fwd=stale; ttl={ttl}"),
        (Served::Stale(Stale::OriginFailed), _) => format!("tiercache; hit; fwd=stale; ttl={ttl}; detail=fail-safe"),
        (Served::Stale(Stale::NoRefresh), _) => format!("tiercache; hit; ttl={ttl}; detail=stale"),
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("tiercache"))
}

fn cache_status_of_miss(miss: Miss) -> &'static str {
    match miss {
        Miss::Absent => "tiercache; detail=miss",
        Miss::NotFound { stored: true } => "tiercache; fwd=miss; fwd-status=404; stored",
        Miss::NotFound { stored: false } => "tiercache; fwd=miss; fwd-status=404",
        Miss::Negative => "tiercache; hit; detail=negative",
    }
}

/// The `Cache-Status` of a GET the origin failed for.
pub const CACHE_STATUS_ORIGIN_ERROR: HeaderValue = HeaderValue::from_static("tiercache; fwd=miss; detail=origin-error");

/// The `entries` object of a batch read: `{key:{value,source,expires_at}}` (plus
/// `"stale":true` for a stale copy), and `missing`.
pub fn batch_entries(found: &[(Key, Hit)], missing: &[Key]) -> Response {
    let value_bytes: usize = found.iter().map(|(key, hit)| key.len() + hit.entry.value().len() + 80).sum();
    let mut body = Vec::with_capacity(value_bytes + missing.len() * 16 + 32);
    body.extend_from_slice(b"{\"entries\":{");
    for (idx, (key, hit)) in found.iter().enumerate() {
        if idx > 0 {
            body.push(b',');
        }
        push_json_str(&mut body, key.as_str());
        body.extend_from_slice(b":{\"value\":");
        body.extend_from_slice(hit.entry.value());
        if matches!(hit.served, Served::Stale(_)) {
            body.extend_from_slice(b",\"stale\":true");
        }
        body.extend_from_slice(b",\"source\":\"");
        body.extend_from_slice(hit.source.as_str().as_bytes());
        body.extend_from_slice(b"\",\"expires_at\":\"");
        push_rfc3339(&mut body, hit.entry.expires_at_ms());
        body.extend_from_slice(b"\"}");
    }
    body.extend_from_slice(b"},\"missing\":[");
    for (idx, key) in missing.iter().enumerate() {
        if idx > 0 {
            body.push(b',');
        }
        push_json_str(&mut body, key.as_str());
    }
    body.extend_from_slice(b"]}");
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(header::CONTENT_TYPE, APPLICATION_JSON);
    with_headers(StatusCode::OK, headers, Body::from(body))
}

fn push_json_str(body: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(&mut *body, text).expect("writing a string to a Vec cannot fail");
}

/// `max-age=<secs>`, built on the stack: one allocation (the header's own), no formatting.
fn max_age(secs: u64) -> HeaderValue {
    let mut text = [0u8; 28];
    text[..8].copy_from_slice(b"max-age=");
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(secs).as_bytes();
    text[8..8 + digits.len()].copy_from_slice(digits);
    HeaderValue::from_bytes(&text[..8 + digits.len()]).unwrap_or_else(|_| HeaderValue::from_static("no-cache"))
}

fn with_headers(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// `If-None-Match` uses the weak comparison (RFC 9110 §8.8.3.2): `W/` prefixes are ignored on
/// both sides, `*` matches any current entry.
fn etag_matches(condition: &[u8], etag: &str) -> bool {
    let Ok(condition) = std::str::from_utf8(condition) else {
        return false;
    };
    let opaque = etag.strip_prefix("W/").unwrap_or(etag);
    condition
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == opaque)
}

#[cfg(test)]
mod tests {
    use super::etag_matches;

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        for etag in ["\"abc\"", "W/\"abc\""] {
            assert!(etag_matches(b"\"abc\"", etag));
            assert!(etag_matches(b"W/\"abc\"", etag));
            assert!(etag_matches(b"\"x\", W/\"abc\"", etag));
            assert!(etag_matches(b"*", etag));
            assert!(!etag_matches(b"\"abd\"", etag));
            assert!(!etag_matches(b"abc", etag));
            assert!(!etag_matches(b"W/abc", etag));
        }
    }
}
