//! Routes of features this build does not have yet (prefetch, warm, snapshot). SPEC §3 fixes
//! their answer when the feature is not configured: the body is still checked first (400),
//! then 409. Their GET forms report the idle state.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

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

pub async fn prefetch_queue(
    State(state): State<AppState>,
    JsonBody(body): JsonBody<PrefetchBody>,
) -> Result<Response, ApiError> {
    for (idx, item) in body.items.iter().enumerate() {
        let at = |err: ApiError| err.with_context(&format!("items[{idx}]"));
        state.engine.parse_key(&item.key).map_err(|err| at(err.into()))?;
        match item.priority {
            Some(priority) if (0.0..=1.0).contains(&priority) => {}
            _ => {
                return Err(at(ApiError::bad_request("invalid_priority", "priority is required and must be in 0..=1")))
            }
        }
    }
    Err(ApiError::not_configured("origin_not_configured", "prefetch needs an origin (origin.url)"))
}

pub async fn prefetch_list() -> Response {
    Json(json!({ "queue": [] })).into_response()
}

pub async fn warm_start() -> ApiError {
    ApiError::not_configured("warm_not_configured", "no warm source is configured (warm.url, warm.keys)")
}

pub async fn warm_status() -> Response {
    Json(json!({
        "state": "idle",
        "started_at": null,
        "finished_at": null,
        "loaded": 0,
        "errors": 0,
        "source": null,
    }))
    .into_response()
}

pub async fn snapshot() -> ApiError {
    ApiError::not_configured("persistence_disabled", "persistence is off (persistence.path)")
}
