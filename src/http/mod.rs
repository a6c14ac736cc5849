//! The thin axum layer: routing, the request guard, and JSON shapes at the edge.
//! Handlers parse and check input, make one or two engine calls, and shape the response.

mod auth;
mod conformance;
mod error;
mod extract;
mod middleware;
mod path;
mod render;
pub mod route;
mod routes;
mod server;

pub(crate) use self::server::serve;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use std::convert::Infallible;

use axum::extract::Request;
use axum::response::Response;
use axum::routing::{any, delete, get, post};
use axum::Router;
use tokio::sync::Semaphore;
use tower::{Service, ServiceBuilder};

use crate::config::{ServerConfig, Settings};
use crate::engine::Cache;
use crate::metrics::Metrics;

/// What every handler can reach. Cheap to clone: one `Arc`.
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

pub(crate) use self::auth::Auth;

pub(crate) struct Shared {
    pub cache: Arc<Cache>,
    pub metrics: Arc<Metrics>,
    pub instance_id: String,
    pub started: Instant,
    /// Set once the start-up load of SPEC §7 is done; `/ready` answers 503 before.
    pub ready: Arc<AtomicBool>,
    pub metrics_enabled: bool,
    pub server: ServerConfig,
    /// In-flight request permits (`server.max_concurrency`); a request that finds none is shed.
    pub in_flight: Arc<Semaphore>,
    pub auth: auth::Auth,
    /// Which background tasks died; `/health` reports them.
    pub tasks: Arc<crate::tasks::TaskHealth>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

/// The service that answers every request: the guard (`middleware.rs`) around the router.
/// Layered from outside so the hit path pays for no boxing per layer. Bodies are bounded where
/// they are read (`extract::read_body`), not by a layer.
pub(crate) fn service(
    state: AppState,
) -> impl Service<Request, Response = Response, Error = Infallible, Future = impl Send> + Clone + Send + Sync + 'static
{
    ServiceBuilder::new().layer(middleware::GuardLayer::new(state.clone())).service(router(state))
}

/// Every route of SPEC §3 (paths in `route.rs`). The fixed routes are literal paths, so they
/// win over a key of the same name for every method (`GET /api/cache/invalidate` is 405, not a
/// key lookup).
fn router(state: AppState) -> Router {
    Router::new()
        .route(route::CLEAR, delete(routes::bulk::clear))
        .route(route::EMPTY_KEY, any(routes::entries::empty_key))
        .route(route::INVALIDATE, post(routes::bulk::invalidate))
        .route(route::BATCH_GET, post(routes::bulk::batch_get))
        .route(route::BATCH_SET, post(routes::bulk::batch_set))
        .route(route::EVICT, post(routes::bulk::evict))
        .route(route::PREFETCH, post(routes::prefetch::queue).get(routes::prefetch::list))
        .route(route::WARM, post(routes::lifecycle::warm_start).get(routes::lifecycle::warm_status))
        .route(route::SNAPSHOT, post(routes::lifecycle::snapshot))
        .route(route::METRICS_JSON, get(routes::ops::metrics_json))
        .route(route::KEY, get(routes::entries::get).put(routes::entries::put).delete(routes::entries::delete))
        .route(route::PROMETHEUS, get(routes::ops::prometheus))
        .route(route::HEALTH, get(routes::ops::health))
        .route(route::READY, get(routes::ops::ready))
        .fallback(routes::ops::not_found)
        .method_not_allowed_fallback(routes::ops::method_not_allowed)
        .with_state(state)
}

/// A router over a fresh engine built from `settings`, for tests that call it with
/// `tower::ServiceExt::oneshot` instead of a listening server.
///
/// # Panics
/// When `settings` are not valid.
pub fn router_for_tests(
    settings: &Settings,
) -> impl Service<Request, Response = Response, Error = Infallible, Future = impl Send> + Clone + Send + Sync + 'static
{
    service(state_for_tests(settings))
}

fn state_for_tests(settings: &Settings) -> AppState {
    let parts = settings.parts().expect("test settings are valid");
    let core = crate::app::Core::assemble(&parts, "test".into(), Arc::default());
    core.ready.store(true, std::sync::atomic::Ordering::Release);
    core.state
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::MatchedPath;
    use tower::ServiceExt;

    use super::*;

    /// The guard names routes from outside the router; it must name them as axum matches them.
    #[tokio::test]
    async fn the_guard_names_every_route_as_axum_matches_it() {
        let state = state_for_tests(&Settings::default());
        let probe = router(state).layer(axum::middleware::from_fn(
            |matched: Option<MatchedPath>, _request: Request, _next: axum::middleware::Next| async move {
                matched.map_or("unmatched".to_string(), |matched| matched.as_str().to_string())
            },
        ));
        // Every fixed route (the expected names come from axum, not from this list), then keys
        // and paths that must not match.
        let others = [
            "/api/cache/user:1",
            "/api/cache/batch/other",
            "/api/cache/a/b/c",
            "/api/cache//x",
            "/api/cache/%69nvalidate",
            "/api/cache/invalidate/",
            "/health/",
            "/",
            "/api",
            "/nope",
        ];
        let paths = route::FIXED.iter().chain(&others);
        for &path in paths {
            for method in ["GET", "POST", "PUT", "DELETE"] {
                let request = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
                let response = probe.clone().oneshot(request).await.unwrap();
                let matched = axum::body::to_bytes(response.into_body(), 1024).await.unwrap();
                assert_eq!(middleware::route_of(path), std::str::from_utf8(&matched).unwrap(), "{method} {path}");
            }
        }
    }
}
