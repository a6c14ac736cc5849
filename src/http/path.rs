//! The request path as the service routes it (SPEC §21): percent-decoded before anything
//! looks at it, so `/api/cache/%6Detrics` is the fixed route `/api/cache/metrics` for the guard,
//! auth and the router alike (RFC 3986 §6.2.2.2 makes the two URIs the same, and a normalising
//! proxy may send either). Decoding is strict: `%` must be followed by two hex digits.
//!
//! The router matches literal paths, so a path with escapes is handed to it in one canonical
//! form: decoded, then re-encoded keeping RFC 3986's unreserved characters, its sub-delims and
//! `:`, `@`, `/` raw. Every spelling of a path reaches the same route, and the key of a key
//! route, decoded once more from the canonical form, is the one the client meant.

use std::borrow::Cow;

use axum::http::uri::{PathAndQuery, Uri};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// What the canonical form encodes: everything but unreserved, sub-delims, `:`, `@` and `/`
/// (non-ASCII bytes are always encoded).
const ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@')
    .remove(b'/');

/// A `%` not followed by two hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedEscape;

/// Percent-decodes `raw`, refusing a malformed escape (`%`, `%G1`, `a%2`). Borrows when there
/// is nothing to decode.
pub fn decode(raw: &str) -> Result<Cow<'_, [u8]>, MalformedEscape> {
    let bytes = raw.as_bytes();
    let Some(first) = bytes.iter().position(|&byte| byte == b'%') else {
        return Ok(Cow::Borrowed(bytes));
    };
    let mut decoded = Vec::with_capacity(bytes.len());
    decoded.extend_from_slice(&bytes[..first]);
    let mut idx = first;
    while idx < bytes.len() {
        if bytes[idx] != b'%' {
            decoded.push(bytes[idx]);
            idx += 1;
            continue;
        }
        let high = bytes.get(idx + 1).and_then(|&digit| hex_value(digit)).ok_or(MalformedEscape)?;
        let low = bytes.get(idx + 2).and_then(|&digit| hex_value(digit)).ok_or(MalformedEscape)?;
        decoded.push(high << 4 | low);
        idx += 3;
    }
    Ok(Cow::Owned(decoded))
}

/// The URI to route `uri` by: `None` when its path is already canonical (no escapes, the hit
/// path's case), or when it cannot be decoded (a malformed escape or bytes that are not UTF-8:
/// left as sent, so the key route answers `invalid_key` and any other path is unknown).
pub fn canonical(uri: &Uri) -> Option<Uri> {
    let raw = uri.path();
    if !raw.contains('%') {
        return None;
    }
    let decoded = decode(raw).ok()?;
    let decoded = std::str::from_utf8(&decoded).ok()?;
    let mut path_and_query: String = percent_encoding::utf8_percent_encode(decoded, ENCODED).collect();
    if path_and_query == raw {
        return None;
    }
    if let Some(query) = uri.query() {
        path_and_query.push('?');
        path_and_query.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::from_maybe_shared(path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical_path(raw: &str) -> String {
        let uri: Uri = raw.parse().unwrap();
        canonical(&uri).map_or_else(|| raw.to_string(), |uri| uri.to_string())
    }

    #[test]
    fn escapes_decode_strictly() {
        assert_eq!(decode("a%2Fb%3a").unwrap().as_ref(), b"a/b:");
        assert_eq!(decode("plain").unwrap().as_ref(), b"plain");
        assert!(matches!(decode("plain").unwrap(), Cow::Borrowed(_)));
        assert_eq!(decode("%25").unwrap().as_ref(), b"%");
        for malformed in ["%", "%G1", "a%2", "%%41", "x%4"] {
            assert_eq!(decode(malformed), Err(MalformedEscape), "{malformed}");
        }
    }

    #[test]
    fn every_spelling_of_a_path_routes_as_one() {
        assert_eq!(canonical_path("/api/cache/%6Detrics"), "/api/cache/metrics");
        assert_eq!(canonical_path("/api/cache/batch%2Fget"), "/api/cache/batch/get");
        assert_eq!(canonical_path("/%61pi/cache/user%3A1?x=%41"), "/api/cache/user:1?x=%41");
        assert_eq!(canonical_path("/heal%74h"), "/health");
        // What must stay encoded stays encoded, once.
        assert_eq!(canonical_path("/api/cache/a%20b%25c%3Fd%23e"), "/api/cache/a%20b%25c%3Fd%23e");
        assert_eq!(canonical_path("/api/cache/caf%c3%a9"), "/api/cache/caf%C3%A9");
        // Nothing to decode, or nothing decodable: left as sent.
        assert_eq!(canonical_path("/api/cache/user:1"), "/api/cache/user:1");
        assert_eq!(canonical_path("/api/cache/a%2"), "/api/cache/a%2");
        assert_eq!(canonical_path("/api/cache/%FF"), "/api/cache/%FF");
    }
}
