//! Bearer-token authentication (SPEC §9), checked by the guard before routing and body checks.
//!
//! `/api/*` needs a token when `auth.tokens` is set: a write token may do anything, a read
//! token (`auth.read_tokens`) only GET (and HEAD) and `POST /api/cache/batch/get`. `/health`
//! and `/ready` are always open; `/metrics` needs any token with `metrics.require_auth`.
//! A presented token is compared with every configured one in constant time, so neither the
//! match nor which list it is in shows in the timing. Tokens are never logged.

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::config::AuthConfig;

pub(crate) struct Auth {
    write: Vec<Box<[u8]>>,
    read: Vec<Box<[u8]>>,
    metrics_require_auth: bool,
}

/// What a request may do, by its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Write,
    Read,
    None,
}

impl Auth {
    pub fn new(config: &AuthConfig) -> Auth {
        let bytes = |tokens: &[String]| tokens.iter().map(|token| token.as_bytes().into()).collect();
        Auth {
            write: bytes(&config.tokens),
            read: bytes(&config.read_tokens),
            metrics_require_auth: config.metrics_require_auth,
        }
    }

    /// `None` when the request may go on; else the 401 or 403 to answer.
    pub fn refusal(&self, path: &str, method: &Method, headers: &HeaderMap) -> Option<Response> {
        if self.write.is_empty() {
            return None;
        }
        let protected =
            path == "/api" || path.starts_with("/api/") || (path == "/metrics" && self.metrics_require_auth);
        if !protected {
            return None;
        }
        match self.grant(headers) {
            Grant::Write => None,
            Grant::Read if is_read(path, method) => None,
            Grant::Read => Some(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this token may only read (GET and POST /api/cache/batch/get)",
                )
                .into_response(),
            ),
            Grant::None => {
                let mut response =
                    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required")
                        .into_response();
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Some(response)
            }
        }
    }

    fn grant(&self, headers: &HeaderMap) -> Grant {
        let Some(token) = headers.get(header::AUTHORIZATION).and_then(|value| bearer(value.as_bytes())) else {
            return Grant::None;
        };
        // Every configured token is compared, whatever matched first.
        let write = self.write.iter().fold(false, |found, known| found | constant_time_eq(token, known));
        let read = self.read.iter().fold(false, |found, known| found | constant_time_eq(token, known));
        match (write, read) {
            (true, _) => Grant::Write,
            (false, true) => Grant::Read,
            (false, false) => Grant::None,
        }
    }
}

fn is_read(path: &str, method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || (*method == Method::POST && path == "/api/cache/batch/get")
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Equality whose time depends on the lengths only, never on where the bytes differ.
fn constant_time_eq(presented: &[u8], known: &[u8]) -> bool {
    let mut difference = presented.len() ^ known.len();
    for idx in 0..presented.len().max(known.len()) {
        let a = presented.get(idx).copied().unwrap_or(0);
        let b = known.get(idx).copied().unwrap_or(0);
        difference |= usize::from(a ^ b);
    }
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_and_compared_exactly() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bear"), None);
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
