//! Operations routes: health, readiness, metrics (JSON and Prometheus), and the JSON answers
//! for unknown routes and methods.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::engine::clock::rfc3339;
use crate::http::error::ApiError;
use crate::http::AppState;

/// 200 `"status":"ok"`; 503 `"status":"degraded"` with `dead_tasks` once a background task
/// has died (a dead subscriber or sweeper is a broken instance that should be restarted).
/// L2 being down is not unhealthy: the service keeps serving from L1 and the origin.
pub async fn health(State(state): State<AppState>) -> Response {
    let dead = state.tasks.dead();
    let mut body = json!({
        "status": if dead.is_empty() { "ok" } else { "degraded" },
        "l2": state.cache.l2_status().as_str(),
        "instance_id": state.instance_id,
        "uptime_secs": state.started.elapsed().as_secs(),
    });
    if dead.is_empty() {
        return Json(body).into_response();
    }
    body["dead_tasks"] = json!(dead);
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

pub async fn ready(State(state): State<AppState>) -> Result<Response, ApiError> {
    if state.ready.load(Ordering::Acquire) {
        Ok(Json(json!({ "ready": true })).into_response())
    } else {
        Err(ApiError::not_ready())
    }
}

/// The JSON metrics of SPEC §8. Fields of tiers and features this build does not have are
/// present with their idle values, so clients can rely on the shape.
pub async fn metrics_json(State(state): State<AppState>) -> Response {
    let stats = state.cache.stats();
    let (hits, misses) = (stats.counter("hits"), stats.counter("misses"));
    let hit_rate = if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 };
    let mut body: serde_json::Map<String, serde_json::Value> =
        stats.counters.iter().map(|(name, total)| (name.to_string(), json!(total))).collect();
    body.extend([
        ("hit_rate".to_string(), json!(hit_rate)),
        ("l1_size".to_string(), json!(stats.l1_size)),
        ("l1_bytes".to_string(), json!(stats.l1_bytes)),
        ("l2_status".to_string(), json!(state.cache.l2_status().as_str())),
        ("prefetch_queue_size".to_string(), json!(stats.prefetch_queue_size)),
        ("compression_ratio".to_string(), json!(stats.compression_ratio)),
        ("snapshot_last_success".to_string(), json!(stats.snapshot_last_success_ms.map(rfc3339))),
        ("uptime_secs".to_string(), json!(state.started.elapsed().as_secs())),
        ("instance_id".to_string(), json!(state.instance_id)),
    ]);
    Json(serde_json::Value::Object(body)).into_response()
}

/// Prometheus text exposition; 404 when `metrics.enabled` is false.
pub async fn prometheus(State(state): State<AppState>) -> Response {
    if !state.metrics_enabled {
        return ApiError::not_found().into_response();
    }
    state.cache.refresh_gauges();
    let mut response = state.metrics.render().into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    response
}

pub async fn not_found() -> ApiError {
    ApiError::not_found()
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
