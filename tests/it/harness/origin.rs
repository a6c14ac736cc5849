//! A real HTTP origin for read-through tests: an axum app on a free loopback port that counts
//! requests per key, remembers their order, tracks how many run at once, and answers each key
//! as told (status, body, Cache-Control, delay). Stopped when dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// How the origin answers a key. The default answers 200 with
/// `{"key":<key>,"fetch":<n>}`, `n` counting this key's requests from 1.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// `None` = the default JSON body above.
    pub body: Option<String>,
    pub cache_control: Option<String>,
    pub delay: Duration,
    /// `None` = `application/json`.
    pub content_type: Option<String>,
}

impl Default for Reply {
    fn default() -> Self {
        Reply { status: 200, body: None, cache_control: None, delay: Duration::ZERO, content_type: None }
    }
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply { status, ..Reply::default() }
    }

    pub fn cache_control(value: &str) -> Reply {
        Reply { cache_control: Some(value.into()), ..Reply::default() }
    }

    pub fn delayed(delay: Duration) -> Reply {
        Reply { delay, ..Reply::default() }
    }

    pub fn body(body: &str) -> Reply {
        Reply { body: Some(body.into()), ..Reply::default() }
    }
}

#[derive(Default)]
struct OriginState {
    replies: Mutex<HashMap<String, Reply>>,
    fallback: Mutex<Reply>,
    counts: Mutex<HashMap<String, usize>>,
    order: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Percent of requests answered 500 whatever the reply says (0 = none).
    failure_percent: AtomicUsize,
    requests: AtomicUsize,
}

pub struct TestOrigin {
    pub port: u16,
    state: Arc<OriginState>,
    server: tokio::task::JoinHandle<()>,
}

impl TestOrigin {
    pub async fn start() -> TestOrigin {
        let state = Arc::new(OriginState::default());
        let router = Router::new().route("/items/{key}", get(answer)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the test origin");
        let port = listener.local_addr().expect("local addr").port();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        TestOrigin { port, state, server }
    }

    /// The `origin.url` template for this origin.
    pub fn url(&self) -> String {
        self.item_url("{key}")
    }

    /// The URL of one item (`warm.url` sources are items too).
    pub fn item_url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}/items/{name}", self.port)
    }

    /// How `key` is answered from now on.
    pub fn set(&self, key: &str, reply: Reply) {
        self.state.replies.lock().unwrap().insert(key.into(), reply);
    }

    /// How every key without its own reply is answered from now on.
    pub fn set_default(&self, reply: Reply) {
        *self.state.fallback.lock().unwrap() = reply;
    }

    /// From now on `percent` of all requests, spread evenly, fail with 500.
    pub fn set_failure_percent(&self, percent: usize) {
        self.state.failure_percent.store(percent.min(100), Ordering::SeqCst);
    }

    /// Requests received for `key` (as the origin decoded it).
    pub fn count(&self, key: &str) -> usize {
        self.state.counts.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.state.counts.lock().unwrap().values().sum()
    }

    /// Keys in the order their requests arrived.
    pub fn order(&self) -> Vec<String> {
        self.state.order.lock().unwrap().clone()
    }

    /// The most requests that were being answered at one time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for TestOrigin {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(State(state): State<Arc<OriginState>>, Path(key): Path<String>) -> Response {
    let fetch = {
        let mut counts = state.counts.lock().unwrap();
        let count = counts.entry(key.clone()).or_default();
        *count += 1;
        *count
    };
    state.order.lock().unwrap().push(key.clone());
    let in_flight = InFlight::enter(state.clone());
    let mut reply =
        state.replies.lock().unwrap().get(&key).cloned().unwrap_or_else(|| state.fallback.lock().unwrap().clone());
    // Request n fails when n * percent / 100 steps up: evenly spread, no randomness.
    let n = state.requests.fetch_add(1, Ordering::SeqCst);
    let percent = state.failure_percent.load(Ordering::SeqCst);
    if (n + 1) * percent / 100 != n * percent / 100 {
        reply = Reply { status: 500, body: Some(r#"{"error":"injected"}"#.into()), ..reply };
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    drop(in_flight);
    let body = reply.body.unwrap_or_else(|| serde_json::json!({ "key": key, "fetch": fetch }).to_string());
    let mut response = (StatusCode::from_u16(reply.status).expect("a valid status"), body).into_response();
    let content_type = reply.content_type.as_deref().unwrap_or("application/json");
    response.headers_mut().insert(header::CONTENT_TYPE, content_type.parse().expect("a valid header"));
    if let Some(cache_control) = reply.cache_control {
        response.headers_mut().insert(header::CACHE_CONTROL, cache_control.parse().expect("a valid header"));
    }
    response
}

/// Counts a request as in flight until dropped, also when the client goes away mid-delay.
struct InFlight(Arc<OriginState>);

impl InFlight {
    fn enter(state: Arc<OriginState>) -> InFlight {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
