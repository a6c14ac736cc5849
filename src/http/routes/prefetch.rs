//! `POST` and `GET /api/cache/prefetch`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::engine::clock::rfc3339;
use crate::http::error::ApiError;
use crate::http::extract::JsonBody;
use crate::http::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchBody {
    items: Vec<PrefetchItem>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchItem {
    key: String,
    priority: Option<f64>,
}

/// Checks every item first (400), then needs an origin (409), then queues: 202.
pub async fn queue(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<PrefetchBody>,
) -> Result<Response, ApiError> {
    let mut items = Vec::with_capacity(body.items.len());
    for (idx, item) in body.items.into_iter().enumerate() {
        let at = |err: ApiError| err.with_context(&format!("items[{idx}]"));
        let key = state.cache.parse_writable_key(&item.key).map_err(|err| at(err.into()))?;
        match item.priority {
            Some(priority) if (0.0..=1.0).contains(&priority) => items.push((key, priority)),
            _ => {
                return Err(at(ApiError::bad_request("invalid_priority", "priority is required and must be in 0..=1")))
            }
        }
    }
    if !state.cache.has_origin() {
        return Err(ApiError::not_configured("origin_not_configured", "prefetch needs an origin (origin.url)"));
    }
    let outcome = state.cache.queue_prefetch(&items);
    Ok((axum::http::StatusCode::ACCEPTED, Json(json!({ "queued": outcome.queued, "skipped": outcome.skipped })))
        .into_response())
}

pub async fn list(State(state): State<AppState>) -> Response {
    let queue: Vec<_> = state
        .cache
        .prefetch_queue()
        .into_iter()
        .map(|item| json!({ "key": item.key.as_str(), "priority": item.priority, "queued_at": rfc3339(item.queued_at_ms) }))
        .collect();
    Json(json!({ "queue": queue })).into_response()
}
