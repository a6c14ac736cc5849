//! The rules of HTTP/1.1 a request head must follow before the service looks further (SPEC
//! §21), checked by the guard first: one `Host` (RFC 9112 §3.2), no transfer coding but
//! `chunked` (RFC 9112 §6.1; hyper itself answers 400 when `chunked` is not the last one), and
//! a header section of at most `server.max_header_bytes`. hyper parses the head and bounds it
//! only roughly (by its read buffer, which the listener sizes above this limit so that the
//! exact check here answers in the JSON error shape).

use axum::extract::Request;
use axum::http::{header, HeaderMap, Version};

use super::error::ApiError;

/// Bytes a header field line costs beyond its name and value: `": "` and CRLF.
const FIELD_LINE_OVERHEAD: usize = 4;

/// The error to answer `request` with at once, or `None` when its head follows the rules.
pub fn refusal(request: &Request, max_header_bytes: usize) -> Option<ApiError> {
    let mut header_bytes = 0;
    let mut hosts = 0;
    let mut other_transfer_coding = false;
    // One pass over the fields, comparing names (standard ones compare as enum tags, no hashing).
    for (name, value) in request.headers() {
        header_bytes += name.as_str().len() + value.len() + FIELD_LINE_OVERHEAD;
        if name == header::HOST {
            hosts += 1;
        } else if name == header::TRANSFER_ENCODING {
            other_transfer_coding |= !only_chunked(value.as_bytes());
        }
    }
    if header_bytes > max_header_bytes {
        return Some(ApiError::headers_too_large(max_header_bytes));
    }
    if request.version() == Version::HTTP_11 && hosts != 1 {
        let problem = if hosts == 0 {
            "an HTTP/1.1 request must have a Host header"
        } else {
            "a request must have one Host header, not several"
        };
        return Some(ApiError::invalid_host(problem));
    }
    if other_transfer_coding {
        return Some(ApiError::unsupported_transfer_encoding());
    }
    None
}

/// Whether the client waits for `100 Continue` before sending its body (RFC 9110 §10.1.1).
pub fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::EXPECT)
        .iter()
        .any(|value| value.as_bytes().trim_ascii().eq_ignore_ascii_case(b"100-continue"))
}

/// A `Transfer-Encoding` value that names `chunked` and nothing else.
fn only_chunked(value: &[u8]) -> bool {
    value.split(|&byte| byte == b',').all(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;

    use super::*;

    fn request(version: Version, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().version(version).uri("/api/cache/k");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Body::empty()).unwrap()
    }

    fn code(request: &Request, max_header_bytes: usize) -> Option<&'static str> {
        refusal(request, max_header_bytes).map(|err| err.code())
    }

    #[test]
    fn a_request_needs_one_host_in_http_1_1_only() {
        assert_eq!(code(&request(Version::HTTP_11, &[("host", "a")]), 1024), None);
        assert_eq!(code(&request(Version::HTTP_11, &[]), 1024), Some("invalid_host"));
        assert_eq!(code(&request(Version::HTTP_11, &[("host", "a"), ("host", "b")]), 1024), Some("invalid_host"));
        assert_eq!(code(&request(Version::HTTP_10, &[]), 1024), None);
    }

    #[test]
    fn only_the_chunked_transfer_coding_is_taken() {
        let with_te = |te| request(Version::HTTP_11, &[("host", "a"), ("transfer-encoding", te)]);
        assert_eq!(code(&with_te("chunked"), 1024), None);
        assert_eq!(code(&with_te(" Chunked "), 1024), None);
        assert_eq!(code(&with_te("gzip, chunked"), 1024), Some("unsupported_transfer_encoding"));
        assert_eq!(code(&with_te("identity"), 1024), Some("unsupported_transfer_encoding"));
    }

    #[test]
    fn the_header_section_is_bounded_exactly() {
        // "host: a\r\n" is 9 bytes, "x: <n bytes>\r\n" is n + 5.
        let big = |n: usize| request(Version::HTTP_11, &[("host", "a"), ("x", &"v".repeat(n))]);
        assert_eq!(code(&big(86), 100), None);
        assert_eq!(code(&big(87), 100), Some("headers_too_large"));
    }

    #[test]
    fn expect_100_continue_is_recognised() {
        assert!(expects_continue(&request(Version::HTTP_11, &[("expect", "100-Continue")]).headers().clone()));
        assert!(!expects_continue(&request(Version::HTTP_11, &[]).headers().clone()));
    }
}
