//! Our own extractors: every rejection becomes an `ApiError` in the JSON error shape, so a
//! client never sees axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::engine::Key;

/// The path prefix of the key routes.
pub const KEY_PREFIX: &str = "/api/cache/";

/// The key of `/api/cache/{key}`: the rest of the raw path, percent-decoded. Slashes are kept
/// as they are (`/api/cache//a` is the key `/a`).
pub struct KeyPath(pub Key);

impl FromRequestParts<AppState> for KeyPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let raw = parts.uri.path().strip_prefix(KEY_PREFIX).unwrap_or_default();
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| ApiError::bad_request("invalid_key", "invalid key: not valid UTF-8 once percent-decoded"))?;
        Ok(KeyPath(state.engine.parse_key(&decoded)?))
    }
}

/// A JSON body: 415 when a Content-Type is present and is not JSON, 413 past
/// `server.max_body_bytes`, 400 for malformed JSON or a wrong shape.
pub struct JsonBody<T>(pub T);

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
            if !is_json(content_type.to_str().unwrap_or_default()) {
                return Err(ApiError::unsupported_media_type());
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large("request body is larger than server.max_body_bytes")
            } else {
                ApiError::bad_request("invalid_body", "request body could not be read")
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body, telling malformed JSON apart from a well-formed body of the wrong shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => ApiError::bad_request("invalid_body", format!("invalid body: {err}")),
        _ => ApiError::bad_request("invalid_json", format!("malformed JSON: {err}")),
    })
}

/// `application/json`, `application/*+json`, with or without parameters.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::is_json;

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/merge-patch+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json("application/x-www-form-urlencoded"));
    }
}
