//! `ApiError`: the only `IntoResponse` that picks an error status. Every error body is
//! `{"error":{"code","message"}}` with a stable snake_case code. A 4xx says what to fix; a 5xx
//! says that something failed, and the detail goes to the log once.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::{EngineError, OriginError};

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not accept that method")
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON (Content-Type: application/json)",
        )
    }

    /// A `Content-Encoding` this service does not decode (`coding` names it).
    pub fn unsupported_content_encoding(coding: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_encoding",
            format!("content coding {coding:?} is not supported: send gzip, zstd, br or none"),
        )
    }

    pub fn unsupported_transfer_encoding() -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_transfer_encoding",
            "only the chunked transfer coding is supported (use Content-Encoding to compress a body)",
        )
    }

    pub fn headers_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request headers are larger than server.max_header_bytes ({limit})"),
        )
    }

    pub fn invalid_host(message: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_host", message)
    }

    pub fn not_configured(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn overloaded() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many requests in flight, retry later")
    }

    pub fn timeout() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took longer than server.request_timeout_ms")
    }

    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }

    pub fn snapshot_failed() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "snapshot_failed", "the snapshot could not be written")
    }

    pub fn not_ready() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "start-up loading is not finished")
    }

    /// The stable snake_case code of the error body.
    #[cfg(test)]
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Prefixes the message with where in the request the problem is (`entries[3]: ...`).
    pub fn with_context(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        let message = err.to_string();
        match err {
            EngineError::InvalidKey(_) => ApiError::bad_request("invalid_key", message),
            EngineError::InvalidTtl(_) => ApiError::bad_request("invalid_ttl", message),
            EngineError::InvalidTags(_) => ApiError::bad_request("invalid_tags", message),
            EngineError::InvalidDependencies(_) => ApiError::bad_request("invalid_depends_on", message),
            EngineError::ValueTooLarge(_) => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large", message),
            EngineError::L2Unavailable => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "l2_unavailable", "the shared cache (l2) is unavailable")
            }
            // The cause was logged once by the origin client; the client gets no detail.
            EngineError::Origin(OriginError::Timeout) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "origin_timeout", "the origin did not answer in time")
            }
            EngineError::Origin(OriginError::Failed(_)) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "origin_error", "the origin failed")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, "request failed");
        }
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: &self.message } };
        let bytes = serde_json::to_vec(&body)
            .unwrap_or_else(|_| br#"{"error":{"code":"internal","message":"internal error"}}"#.to_vec());
        let mut response = (self.status, bytes).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}
