//! Every bad input of SPEC §3 answers its status in the error shape and changes nothing;
//! limits of §9 (body size, request timeout, concurrency) shed with the same shape.

use std::time::Duration;

use serde_json::json;

use crate::harness::{RawConnection, TestApp};

#[tokio::test]
async fn malformed_and_mistyped_bodies_are_400() {
    let app = TestApp::spawn(|_| {}).await;
    app.raw("PUT", "/api/cache/k", Some("application/json"), b"{\"value\":".to_vec())
        .await
        .assert_error(400, "invalid_json");
    app.raw("PUT", "/api/cache/k", None, b"not json".to_vec()).await.assert_error(400, "invalid_json");
    app.raw("PUT", "/api/cache/k", None, Vec::new()).await.assert_error(400, "invalid_json");
    app.put("k", json!({"value": 1, "ttl": "ten"})).await.assert_error(400, "invalid_body");
    app.put("k", json!({"value": 1, "ttl": -1})).await.assert_error(400, "invalid_body");
    app.put("k", json!({"value": 1, "ttl": 1.5})).await.assert_error(400, "invalid_body");
    app.put("k", json!({"value": 1, "tags": "t"})).await.assert_error(400, "invalid_body");
    app.put("k", json!({"value": 1, "tll": 5})).await.assert_error(400, "invalid_body");
    app.put("k", json!([1, 2])).await.assert_error(400, "invalid_body");
    app.put("k", json!({"ttl": 5})).await.assert_error(400, "missing_value");
    app.put("k", json!({"key": "other", "value": 1})).await.assert_error(400, "key_mismatch");
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn bad_keys_are_400() {
    let app = TestApp::spawn(|s| s.cache.max_key_bytes = 16).await;
    app.get("/api/cache/").await.assert_error(400, "invalid_key");
    app.put("", json!({"value": 1})).await.assert_error(400, "invalid_key");
    app.put("a%0Ab", json!({"value": 1})).await.assert_error(400, "invalid_key");
    app.put("a%7Fb", json!({"value": 1})).await.assert_error(400, "invalid_key");
    app.put("bad%FFutf8", json!({"value": 1})).await.assert_error(400, "invalid_key");
    app.put(&"k".repeat(17), json!({"value": 1})).await.assert_error(400, "invalid_key");
    app.put(&"k".repeat(16), json!({"value": 1})).await.assert_status(200);
    app.get("/api/cache/a%00").await.assert_error(400, "invalid_key");
    app.delete("/api/cache/a%0A").await.assert_error(400, "invalid_key");
}

#[tokio::test]
async fn ttl_tags_and_dependencies_are_bounded() {
    let app = TestApp::spawn(|s| {
        s.cache.max_ttl_secs = 100;
        s.cache.default_ttl_secs = 50;
        s.cache.max_tags = 2;
        s.cache.max_deps = 2;
    })
    .await;
    app.put("k", json!({"value": 1, "ttl": 0})).await.assert_error(400, "invalid_ttl");
    app.put("k", json!({"value": 1, "ttl": 101})).await.assert_error(400, "invalid_ttl");
    app.put("k", json!({"value": 1, "tags": ["a", "b", "c"]})).await.assert_error(400, "invalid_tags");
    app.put("k", json!({"value": 1, "tags": [""]})).await.assert_error(400, "invalid_tags");
    app.put("k", json!({"value": 1, "tags": ["t".repeat(129)]})).await.assert_error(400, "invalid_tags");
    app.put("k", json!({"value": 1, "depends_on": ["a", "b", "c"]})).await.assert_error(400, "invalid_depends_on");
    app.put("k", json!({"value": 1, "depends_on": ["bad\n"]})).await.assert_error(400, "invalid_depends_on");
    assert_nothing_stored(&app).await;
    app.put("k", json!({"value": 1, "ttl": 100, "tags": ["a", "b"], "depends_on": ["x", "y"]}))
        .await
        .assert_status(200);
}

#[tokio::test]
async fn values_and_bodies_past_their_limits_are_413() {
    let app = TestApp::spawn(|s| {
        s.cache.max_value_bytes = 1000;
        s.server.max_body_bytes = 4096;
    })
    .await;
    app.put("k", json!({"value": "x".repeat(999)})).await.assert_error(413, "value_too_large");
    app.put("k", json!({"value": "x".repeat(5000)})).await.assert_error(413, "payload_too_large");
    app.post("/api/cache/batch/set", json!({"entries": [{"key": "a", "value": "x".repeat(1200)}]}))
        .await
        .assert_error(413, "value_too_large");
    assert_nothing_stored(&app).await;
    app.put("k", json!({"value": "x".repeat(998)})).await.assert_status(200);
}

#[tokio::test]
async fn an_entry_larger_than_l1_is_413_not_a_silent_drop() {
    let app = TestApp::spawn(|s| s.l1.max_bytes = 2048).await;
    app.put("big", json!({"value": "x".repeat(4000)})).await.assert_error(413, "value_too_large");
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_non_json_content_type_is_415() {
    let app = TestApp::spawn(|_| {}).await;
    app.raw("PUT", "/api/cache/k", Some("text/plain"), b"{\"value\":1}".to_vec())
        .await
        .assert_error(415, "unsupported_media_type");
    app.raw("POST", "/api/cache/invalidate", Some("application/x-www-form-urlencoded"), b"{\"keys\":[]}".to_vec())
        .await
        .assert_error(415, "unsupported_media_type");
    app.raw("PUT", "/api/cache/k", Some("application/json; charset=utf-8"), b"{\"value\":1}".to_vec())
        .await
        .assert_status(200);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = TestApp::spawn(|_| {}).await;
    app.get("/nope").await.assert_error(404, "not_found");
    app.get("/api").await.assert_error(404, "not_found");
    app.get("/api/cache").await.assert_error(405, "method_not_allowed");
    app.raw("PATCH", "/api/cache/k", None, Vec::new()).await.assert_error(405, "method_not_allowed");
    app.raw("POST", "/health", None, Vec::new()).await.assert_error(405, "method_not_allowed");
    app.delete("/api/cache/metrics").await.assert_error(405, "method_not_allowed");
}

#[tokio::test]
async fn empty_invalidation_and_bad_lists_are_400() {
    let app = TestApp::spawn(|_| {}).await;
    app.post("/api/cache/invalidate", json!({})).await.assert_error(400, "empty_invalidation");
    app.post("/api/cache/invalidate", json!({"keys": "a"})).await.assert_error(400, "invalid_body");
    app.post("/api/cache/invalidate", json!({"keys": ["a\u{1}"]})).await.assert_error(400, "invalid_key");
    app.post("/api/cache/batch/get", json!({})).await.assert_error(400, "invalid_body");
    app.post("/api/cache/batch/set", json!({"entries": [{"key": "a"}]})).await.assert_error(400, "missing_value");
    app.post("/api/cache/evict", json!({})).await.assert_error(400, "invalid_body");
    app.post("/api/cache/evict", json!({"count": -1})).await.assert_error(400, "invalid_body");
    app.post("/api/cache/evict", json!({"count": 1, "predictions": {"a": 1.5}}))
        .await
        .assert_error(400, "invalid_prediction");
}

#[tokio::test]
async fn a_bad_batch_entry_writes_nothing() {
    let app = TestApp::spawn(|_| {}).await;
    let response = app
        .post(
            "/api/cache/batch/set",
            json!({"entries": [{"key": "good1", "value": 1}, {"key": "good2", "value": 2}, {"key": "bad", "value": 3, "ttl": 0}]}),
        )
        .await;
    response.assert_error(400, "invalid_ttl");
    assert!(response.json()["error"]["message"].as_str().unwrap().starts_with("entries[2]"));
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn unconfigured_features_are_409_after_body_checks() {
    let app = TestApp::spawn(|_| {}).await;
    app.post("/api/cache/prefetch", json!({"items": [{"key": "a"}]})).await.assert_error(400, "invalid_priority");
    app.post("/api/cache/prefetch", json!({"items": [{"key": "a", "priority": 2}]}))
        .await
        .assert_error(400, "invalid_priority");
    app.post("/api/cache/prefetch", json!({"items": [{"key": "a", "priority": 0.5}]}))
        .await
        .assert_error(409, "origin_not_configured");
    app.post("/api/cache/warm", json!(null)).await.assert_error(409, "warm_not_configured");
    app.post("/api/cache/snapshot", json!(null)).await.assert_error(409, "persistence_disabled");
    assert_eq!(app.get("/api/cache/prefetch").await.json(), json!({"queue": []}));
    assert_eq!(app.get("/api/cache/warm").await.json()["state"], "idle");
}

#[tokio::test]
async fn a_request_past_the_timeout_is_503_timeout() {
    let app = TestApp::spawn(|s| s.server.request_timeout_ms = 300).await;
    let mut slow = RawConnection::open(app.addr()).await;
    // The body never completes, so the handler is still reading it when the timeout fires.
    slow.start_put("slow", 100, b"{\"value\":").await;
    let (status, body) = slow.read_response().await;
    assert_eq!(status, 503);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["code"], "timeout");
    app.get("/api/cache/slow").await.assert_status(404);
}

#[tokio::test]
async fn requests_past_max_concurrency_are_shed_but_health_answers() {
    let app = TestApp::spawn(|s| s.server.max_concurrency = 1).await;
    let body = br#"{"value":"held"}"#;
    let mut held = RawConnection::open(app.addr()).await;
    held.start_put("held", body.len(), &body[..5]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    app.get("/api/cache/other").await.assert_error(503, "overloaded");
    app.get("/health").await.assert_status(200);
    app.get("/ready").await.assert_status(200);
    app.get("/metrics").await.assert_status(200);

    held.send(&body[5..]).await;
    let (status, _) = held.read_response().await;
    assert_eq!(status, 200);
    app.get("/api/cache/held").await.assert_status(200);
    let metrics = app.get("/metrics").await.text();
    assert!(
        metrics.contains(r#"tiercache_http_requests_total{method="GET",route="/api/cache/{*key}",status="503"} 1"#),
        "{metrics}"
    );
}

async fn assert_nothing_stored(app: &TestApp) {
    let metrics = app.get("/api/cache/metrics").await.json();
    assert_eq!(metrics["l1_size"], 0, "a rejected request must not write: {metrics}");
    assert_eq!(metrics["sets"], 0, "{metrics}");
}
