//! Routes of features this build does not have yet (warm, snapshot). SPEC §3 fixes their
//! answer when the feature is not configured: 409. The GET form reports the idle state.

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::http::error::ApiError;

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
