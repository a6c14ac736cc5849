//! The ceiling for an HTTP cache hit on this machine, built from this project's own
//! dependencies: axum answering `GET /api/cache/{key}` with a `Bytes` clone from a static
//! `HashMap`, TCP_NODELAY on, nothing else (no TTL, policy, metrics, auth or logging). The
//! benchmark scripts (`bench/run.sh`, `bench/hit.sh`) run it side by side with tiercache; it mirrors
//! `../shared/bench/baseline-axum` so the two ceilings can be compared.
//!
//! Environment: BIND (default 127.0.0.1:18081, loopback only), SIZES (default "100,1024":
//! key `b<size>` serves a JSON body of exactly <size> bytes), EXTRA_KEYS (default 10000).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;

type Store = Arc<HashMap<String, Bytes>>;

/// `{"key":"<key>","value":"abc…"}` padded to exactly `size` bytes.
fn json_body(key: &str, size: usize) -> Bytes {
    let head = format!("{{\"key\":\"{key}\",\"value\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut body = head;
    body.extend((0..pad).map(|idx| char::from(b'a' + (idx % 26) as u8)));
    body.push_str("\"}");
    Bytes::from(body)
}

async fn get_key(State(store): State<Store>, Path(key): Path<String>) -> Response {
    match store.get(&key) {
        Some(body) => ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[tokio::main]
async fn main() {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    let bind: SocketAddr = env("BIND", "127.0.0.1:18081").parse().expect("BIND is ip:port");
    assert!(bind.ip().is_loopback(), "loopback addresses only");
    let sizes: Vec<usize> = env("SIZES", "100,1024")
        .split([',', ' '])
        .filter(|size| !size.is_empty())
        .map(|size| size.parse().expect("SIZES are integers"))
        .collect();
    let extra: usize = env("EXTRA_KEYS", "10000").parse().expect("EXTRA_KEYS");
    let mut map = HashMap::with_capacity(sizes.len() + extra);
    for &size in &sizes {
        let key = format!("b{size}");
        map.insert(key.clone(), json_body(&key, size));
    }
    for idx in 0..extra {
        let key = format!("key-{idx}");
        map.insert(key.clone(), json_body(&key, sizes.first().copied().unwrap_or(100)));
    }
    let app = Router::new().route("/api/cache/{key}", get(get_key)).with_state(Arc::new(map));
    let listener = tokio::net::TcpListener::bind(bind).await.expect("bind").tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    eprintln!("bare_baseline on http://{bind} pid={}", std::process::id());
    axum::serve(listener, app).await.expect("serve");
}
