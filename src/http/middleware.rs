//! The request guard: one middleware around every route that checks the bearer token
//! (`auth.rs`, before anything reads the body), sheds load past
//! `server.max_concurrency`, bounds each request by `server.request_timeout_ms`, and records
//! the request's metrics and debug log line. One layer rather than three keeps the hit path to
//! a single boxed future.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// Routes that must answer even when the service is saturated.
const NEVER_SHED: [&str; 3] = ["/health", "/ready", "/metrics"];

pub(crate) async fn guard(
    State(state): State<AppState>,
    matched: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = method_label(request.method());
    if let Some(response) = state.auth.refusal(request.uri().path(), request.method(), request.headers()) {
        record(&state, route, method, &response, started);
        return response;
    }

    let permit = if NEVER_SHED.contains(&route) {
        None
    } else {
        match state.in_flight.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let response = ApiError::overloaded().into_response();
                record(&state, route, method, &response, started);
                return response;
            }
        }
    };
    // Cancel safety: dropping the handler future on timeout drops only request-scoped work;
    // engine calls are synchronous and complete before any await point.
    let response = match tokio::time::timeout(state.server.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::timeout().into_response(),
    };
    drop(permit);
    record(&state, route, method, &response, started);
    response
}

/// A handler that panicked answers 500 in the error shape; the panic is a bug, logged once.
pub(crate) fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(detail, "request handler panicked");
    ApiError::internal().into_response()
}

fn record(state: &AppState, route: &str, method: &'static str, response: &Response, started: Instant) {
    let elapsed = started.elapsed();
    let status = response.status();
    state.metrics.record_request(route, method, status.as_u16(), elapsed.as_secs_f64());
    tracing::debug!(route, method, status = status.as_u16(), duration_us = elapsed.as_micros() as u64, "request");
}

/// The `method` label: a fixed set, so a client cannot mint label values.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_a_json_500() {
        let response = panic_response(Box::new("boom"));
        assert_eq!(response.status(), 500);
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "internal");
    }
}
