//! The request guard: one service around the whole router that puts the path in its one
//! canonical spelling (`path.rs`), refuses a head that breaks HTTP's rules (`conformance.rs`),
//! checks the bearer token (`auth.rs`, before anything reads the body), sheds load past `server.max_concurrency`,
//! bounds each request by `server.request_timeout_ms`, turns a handler's panic into a 500, and
//! records the request's metrics and debug log line.
//!
//! It wraps the router from outside (not `Router::layer`, which boxes the service and its
//! future once more per request and per layer) and its future is a plain state machine, so the
//! guard costs no allocation on the hit path. Outside the router there is no `MatchedPath`:
//! [`route_of`] names the route from the path, and a test holds it to what axum matches.

use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::HttpBody;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use tokio::sync::OwnedSemaphorePermit;
use tower::{Layer, Service};

use super::error::ApiError;
use super::{conformance, path, route, AppState};

const UNMATCHED: &str = "unmatched";

/// The route template axum matches `path` (as the router gets it: canonical, see `path.rs`) to,
/// or `unmatched`.
pub(crate) fn route_of(path: &str) -> &'static str {
    if let Some(route) = route::FIXED.iter().find(|route| **route == path) {
        return route;
    }
    if path.len() > route::EMPTY_KEY.len() && path.starts_with(route::EMPTY_KEY) {
        return route::KEY;
    }
    UNMATCHED
}

#[derive(Clone)]
pub(crate) struct GuardLayer {
    state: AppState,
}

impl GuardLayer {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Guard<S> {
        Guard { inner, state: self.state.clone() }
    }
}

#[derive(Clone)]
pub(crate) struct Guard<S> {
    inner: S,
    state: AppState,
}

impl<S> Service<Request> for Guard<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        // Everything from here on (route, auth, router) sees one spelling of the path.
        if let Some(uri) = path::canonical(request.uri()) {
            *request.uri_mut() = uri;
        }
        let route = route_of(request.uri().path());
        let method = method_label(request.method());
        let answered = |response: Response| {
            record(&self.state, route, method, &response, started);
            GuardFuture { state: State::Done { response: Some(response) } }
        };
        // A request refused before its body was read. A client waiting for `100 Continue` has
        // sent no body: it is answered at once and the connection closed (hyper sends the 100
        // only when the body is read). Any other client may be sending its body: it is
        // drained first (see `drain`).
        let refused = |request: Request, mut response: Response| {
            if request.body().size_hint().exact() == Some(0) {
                return answered(response);
            }
            if conformance::expects_continue(request.headers()) {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                return answered(response);
            }
            record(&self.state, route, method, &response, started);
            let drain = Box::pin(drain(request, self.state.server.max_body_bytes, self.state.server.request_timeout));
            GuardFuture { state: State::Draining { drain, response: Some(response) } }
        };
        if let Some(err) = conformance::refusal(&request, self.state.server.max_header_bytes) {
            return refused(request, err.into_response());
        }
        if let Some(response) = self.state.auth.refusal(request.uri().path(), request.method(), request.headers()) {
            return refused(request, response);
        }
        let permit = if route::NEVER_SHED.contains(&route) {
            None
        } else {
            match self.state.in_flight.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => return refused(request, ApiError::overloaded().into_response()),
            }
        };
        // Cancel safety: dropping the handler future on timeout drops only request-scoped work;
        // engine calls are synchronous and complete before any await point.
        let handler = match catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(handler) => tokio::time::timeout(self.state.server.request_timeout, handler),
            Err(panic) => return answered(panic_response(panic)),
        };
        let running = Running { permit, state: self.state.clone(), route, method, started };
        GuardFuture { state: State::Running { handler, running: Some(running) } }
    }
}

/// What a request in progress holds until it is answered (the permit is released on drop).
struct Running {
    permit: Option<OwnedSemaphorePermit>,
    state: AppState,
    route: &'static str,
    method: &'static str,
    started: Instant,
}

pin_project_lite::pin_project! {
    pub(crate) struct GuardFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProjection]
    enum State<F> {
        Done { response: Option<Response> },
        Draining { drain: Pin<Box<dyn Future<Output = ()> + Send>>, response: Option<Response> },
        Running { #[pin] handler: tokio::time::Timeout<F>, running: Option<Running> },
    }
}

impl<F> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProjection::Done { response } => Poll::Ready(Ok(response.take().expect("polled after completion"))),
            StateProjection::Draining { drain, response } => {
                std::task::ready!(drain.as_mut().poll(cx));
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            StateProjection::Running { handler, running } => {
                // A panic unwinds no further than this request (its future is never polled again).
                let response = match catch_unwind(AssertUnwindSafe(|| handler.poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(Ok(Ok(response)))) => response,
                    Ok(Poll::Ready(Ok(Err(never)))) => match never {},
                    Ok(Poll::Ready(Err(_elapsed))) => ApiError::timeout().into_response(),
                    Err(panic) => panic_response(panic),
                };
                let Running { permit, state, route, method, started } =
                    running.take().expect("polled after completion");
                drop(permit);
                record(&state, route, method, &response, started);
                Poll::Ready(Ok(response))
            }
        }
    }
}

/// Reads and discards a refused request's body, up to `limit` bytes and `within` (the request
/// timeout: a loaded machine can take seconds to receive a large body). A
/// client still sending a body when the answer comes and the connection closes would meet a
/// reset instead of the answer (hyper does not linger on close) — for a write, an unknown
/// outcome where a 503 or 401 is a clear one. Shedding still costs no permit and no parsing.
async fn drain(request: Request, limit: usize, within: Duration) {
    use futures_util::StreamExt;
    let mut body = request.into_body().into_data_stream();
    let mut read = 0;
    let discard = async {
        while let Some(Ok(chunk)) = body.next().await {
            read += chunk.len();
            if read > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(within, discard).await;
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

    #[test]
    fn route_of_names_fixed_routes_keys_and_the_rest() {
        assert_eq!(route_of("/api/cache/invalidate"), "/api/cache/invalidate");
        assert_eq!(route_of("/api/cache/"), "/api/cache/");
        assert_eq!(route_of("/api/cache/user:1"), route::KEY);
        assert_eq!(route_of("/api/cache/batch/other"), route::KEY);
        // The path as the router sees it: the guard has already made it canonical (path.rs).
        assert_eq!(route_of("/api/cache/%69nvalidate"), route::KEY, "as axum matches an uncanonical path");
        assert_eq!(route_of("/health/"), UNMATCHED);
        assert_eq!(route_of("/nope"), UNMATCHED);
    }

    /// SPEC §21: every fixed route's name under `/api/cache/` is refused as a key, and nothing
    /// else is.
    #[test]
    fn the_reserved_keys_are_the_fixed_routes_under_the_key_prefix() {
        let mut names: Vec<&str> = route::FIXED
            .iter()
            .filter_map(|route| route.strip_prefix(super::super::extract::KEY_PREFIX))
            .filter(|name| !name.is_empty())
            .collect();
        let mut reserved = crate::engine::key::RESERVED_KEYS.to_vec();
        names.sort_unstable();
        reserved.sort_unstable();
        assert_eq!(names, reserved);
    }

    /// A handler that panics when called or when polled: the guard answers 500 either way.
    #[derive(Clone)]
    struct Panicking {
        in_call: bool,
    }

    impl Service<Request> for Panicking {
        type Response = Response;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request) -> Self::Future {
            assert!(!self.in_call, "boom in call");
            Box::pin(async {
                tokio::task::yield_now().await;
                panic!("boom in poll")
            })
        }
    }

    #[tokio::test]
    async fn a_handler_that_panics_is_a_500_and_the_service_goes_on() {
        use tower::ServiceExt;
        let state = super::super::state_for_tests(&crate::config::Settings::default());
        for in_call in [true, false] {
            let guard = GuardLayer::new(state.clone()).layer(Panicking { in_call });
            let request =
                Request::builder().uri("/api/cache/k").header("host", "test").body(axum::body::Body::empty()).unwrap();
            let response = guard.oneshot(request).await.unwrap();
            assert_eq!(response.status(), 500);
            let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"]["code"], "internal");
        }
        assert_eq!(state.in_flight.available_permits(), state.server.max_concurrency, "permits were returned");
    }

    #[tokio::test]
    async fn a_panic_becomes_a_json_500() {
        let response = panic_response(Box::new("boom"));
        assert_eq!(response.status(), 500);
        let body = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "internal");
    }
}
