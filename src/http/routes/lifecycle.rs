//! `POST`/`GET /api/cache/warm` and `POST /api/cache/snapshot`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::engine::clock::rfc3339;
use crate::http::error::ApiError;
use crate::http::AppState;

/// 202 and a warm run starts, 409 while one runs or without a source.
pub async fn warm_start(State(state): State<AppState>) -> Result<Response, ApiError> {
    let warmer = state.cache.warmer();
    if !warmer.is_configured() {
        return Err(ApiError::not_configured(
            "warm_not_configured",
            "no warm source is configured (warm.url, warm.keys)",
        ));
    }
    if !warmer.request(state.cache.clock().now_ms()) {
        return Err(ApiError::not_configured("warm_running", "a warm is running; see GET /api/cache/warm"));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "started": true }))).into_response())
}

pub async fn warm_status(State(state): State<AppState>) -> Response {
    let status = state.cache.warmer().status();
    Json(json!({
        "state": status.state.as_str(),
        "started_at": status.started_at_ms.map(rfc3339),
        "finished_at": status.finished_at_ms.map(rfc3339),
        "loaded": status.loaded,
        "errors": status.errors,
        "source": status.source,
    }))
    .into_response()
}

/// Writes a snapshot now: 200 with what it holds, 409 with persistence off.
pub async fn snapshot(State(state): State<AppState>) -> Result<Response, ApiError> {
    let Some(persistence) = state.cache.persistence() else {
        return Err(ApiError::not_configured("persistence_disabled", "persistence is off (persistence.path)"));
    };
    let info = persistence.snapshot(&state.cache).await.map_err(|_| ApiError::snapshot_failed())?;
    Ok(Json(json!({
        "path": info.path.display().to_string(),
        "entries": info.entries,
        "bytes": info.bytes,
        "duration_ms": info.duration_ms,
    }))
    .into_response())
}
