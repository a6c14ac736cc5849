//! `GET`, `PUT` and `DELETE /api/cache/{key}`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::{optional_whole_number, present_raw};
use crate::engine::clock::rfc3339;
use crate::engine::{Lookup, WriteRequest};
use crate::http::error::ApiError;
use crate::http::extract::{JsonBody, KeyPath};
use crate::http::render;
use crate::http::AppState;

pub async fn get(State(state): State<AppState>, KeyPath(key): KeyPath, headers: HeaderMap) -> Response {
    match state.cache.read(&key).await {
        Ok(Lookup::Hit(hit)) => render::hit(&key, &hit, state.cache.clock().now_ms(), &headers),
        Ok(Lookup::Miss(miss)) => render::miss(&key, miss),
        Err(err) => {
            let mut response = ApiError::from(err).into_response();
            response.headers_mut().insert(render::CACHE_STATUS, render::CACHE_STATUS_ORIGIN_ERROR);
            response
        }
    }
}

/// The body of `PUT /api/cache/{key}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutBody {
    #[serde(default, deserialize_with = "present_raw")]
    value: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "optional_whole_number")]
    ttl: Option<u64>,
    tags: Option<Vec<String>>,
    depends_on: Option<Vec<String>>,
    key: Option<String>,
}

pub async fn put(
    State(state): State<AppState>,
    KeyPath(key): KeyPath,
    JsonBody(body): JsonBody<PutBody>,
) -> Result<Response, ApiError> {
    if body.key.as_deref().is_some_and(|body_key| body_key != key.as_str()) {
        return Err(ApiError::bad_request("key_mismatch", "the body's key must equal the key in the path"));
    }
    let value = body.value.ok_or_else(|| ApiError::bad_request("missing_value", "the body must have a value field"))?;
    let write = state.cache.validate(WriteRequest {
        key,
        value: Bytes::copy_from_slice(value.get().as_bytes()),
        ttl_secs: body.ttl,
        tags: body.tags.unwrap_or_default(),
        depends_on: body.depends_on.unwrap_or_default(),
    })?;
    let key = write.key().clone();
    let outcome = state.cache.set(write).await?;
    Ok(Json(json!({
        "success": true,
        "key": key.as_str(),
        "expires_at": rfc3339(outcome.expires_at_ms),
        "l2": outcome.l2.as_str(),
    }))
    .into_response())
}

pub async fn delete(State(state): State<AppState>, KeyPath(key): KeyPath) -> Result<Response, ApiError> {
    let outcome = state.cache.delete(&key).await?;
    Ok(Json(json!({ "deleted": outcome.deleted, "invalidated": outcome.invalidated })).into_response())
}

/// `/api/cache/` names the empty key, which is never valid.
pub async fn empty_key() -> ApiError {
    ApiError::bad_request("invalid_key", "invalid key: key must not be empty")
}
