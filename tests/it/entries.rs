//! GET, PUT and DELETE of single entries: bodies, headers, conditional requests, expiry.

use std::time::Duration;

use serde_json::json;

use crate::harness::{eventually, TestApp};

#[tokio::test]
async fn put_then_get_returns_the_value_with_metadata_and_headers() {
    let app = TestApp::spawn(|_| {}).await;
    let put = app
        .put("user:123", json!({"value": {"name": "Ada", "n": [1, 2]}, "ttl": 120, "tags": ["users", "team:a"]}))
        .await;
    put.assert_status(200);
    let put_body = put.json();
    assert_eq!(put_body["success"], true);
    assert_eq!(put_body["key"], "user:123");
    assert_eq!(put_body["l2"], "disabled");
    assert_eq!(put_body.as_object().unwrap().len(), 4, "{put_body}");

    let get = app.get("/api/cache/user:123").await;
    get.assert_status(200);
    let body = get.json();
    assert_eq!(body["key"], "user:123");
    assert_eq!(body["value"], json!({"name": "Ada", "n": [1, 2]}));
    assert_eq!(body["hit"], true);
    assert_eq!(body["source"], "l1");
    assert_eq!(body["tags"], json!(["users", "team:a"]));
    assert_eq!(body["expires_at"], put_body["expires_at"]);
    let ttl = body["ttl_remaining"].as_u64().unwrap();
    assert!((118..=120).contains(&ttl), "{ttl}");
    let cached_at = humantime::parse_rfc3339(body["cached_at"].as_str().unwrap()).unwrap();
    let expires_at = humantime::parse_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires_at.duration_since(cached_at).unwrap(), Duration::from_secs(120));
    assert_eq!(body.as_object().unwrap().len(), 8, "{body}");

    assert_eq!(get.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(get.header("x-cache-source").as_deref(), Some("l1"));
    assert_eq!(get.header("cache-control"), Some(format!("max-age={ttl}")));
    assert_eq!(get.header("content-type").as_deref(), Some("application/json"));
    let etag = get.header("etag").unwrap();
    assert!(etag.starts_with("W/\"") && etag.ends_with('"') && etag.len() > 4, "a weak tag (SPEC §21): {etag}");
}

#[tokio::test]
async fn a_miss_is_404_with_hit_false() {
    let app = TestApp::spawn(|_| {}).await;
    let miss = app.get("/api/cache/nobody").await;
    miss.assert_status(404);
    assert_eq!(miss.json(), json!({"key": "nobody", "hit": false}));
    assert_eq!(miss.header("x-cache").as_deref(), Some("MISS"));
}

#[tokio::test]
async fn values_are_returned_byte_for_byte_including_null() {
    let app = TestApp::spawn(|_| {}).await;
    for (key, value) in
        [("null", json!(null)), ("num", json!(1.5)), ("str", json!("a\"b\\c\u{e9}")), ("arr", json!([]))]
    {
        app.put(key, json!({ "value": value })).await.assert_status(200);
        let body = app.get(&format!("/api/cache/{key}")).await.json();
        assert_eq!(body["value"], value, "{key}");
    }
    // The stored bytes are the client's bytes: formatting inside the value is kept.
    let response =
        app.raw("PUT", "/api/cache/spaced", Some("application/json"), br#"{"value": { "a" : 1 }}"#.to_vec()).await;
    response.assert_status(200);
    let text = app.get("/api/cache/spaced").await.text();
    assert!(text.contains(r#""value":{ "a" : 1 }"#), "{text}");
}

#[tokio::test]
async fn keys_are_the_percent_decoded_rest_of_the_path_with_slashes_kept() {
    let app = TestApp::spawn(|_| {}).await;
    app.put("/api/users/123", json!({"value": 1})).await.assert_status(200);
    // `/api/cache//api/users/123` is the key `/api/users/123`.
    assert_eq!(app.get("/api/cache//api/users/123").await.json()["key"], "/api/users/123");
    assert_eq!(app.get("/api/cache/api/users/123").await.status, 404, "slashes are never merged");

    app.put("users/1/orders", json!({"value": 2})).await.assert_status(200);
    assert_eq!(app.get("/api/cache/users%2F1%2Forders").await.json()["value"], 2);
    app.put("caf%C3%A9%20menu", json!({"value": 3})).await.assert_status(200);
    assert_eq!(app.get("/api/cache/caf%C3%A9%20menu").await.json()["key"], "café menu");
}

#[tokio::test]
async fn fixed_routes_win_over_keys_of_the_same_name() {
    let app = TestApp::spawn(|_| {}).await;
    app.get("/api/cache/invalidate").await.assert_error(405, "method_not_allowed");
    app.get("/api/cache/batch/get").await.assert_error(405, "method_not_allowed");
    app.raw("PUT", "/api/cache/metrics", Some("application/json"), b"{\"value\":1}".to_vec())
        .await
        .assert_error(405, "method_not_allowed");
    // Routing is on the decoded path (SPEC §21): a percent-encoded name is the fixed route too,
    // so no client can store a key that GET could never read back.
    app.put("%69nvalidate", json!({"value": "k"})).await.assert_error(405, "method_not_allowed");
    app.get("/api/cache/%69nvalidate").await.assert_error(405, "method_not_allowed");
}

#[tokio::test]
async fn if_none_match_with_the_current_etag_answers_304() {
    let app = TestApp::spawn(|_| {}).await;
    app.put("doc", json!({"value": {"v": 1}})).await.assert_status(200);
    let etag = app.get("/api/cache/doc").await.header("etag").unwrap();

    let not_modified = app.get_with("/api/cache/doc", "if-none-match", &etag).await;
    not_modified.assert_status(304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header("etag"), Some(etag.clone()));
    assert_eq!(not_modified.header("x-cache").as_deref(), Some("HIT"));
    assert!(not_modified.header("cache-control").unwrap().starts_with("max-age="));
    app.get_with("/api/cache/doc", "if-none-match", &format!("\"other\", {}", etag.trim_start_matches("W/")))
        .await
        .assert_status(304);
    app.get_with("/api/cache/doc", "if-none-match", "\"other\"").await.assert_status(200);

    // Same bytes, same ETag; different bytes, a different one.
    app.put("doc", json!({"value": {"v": 1}})).await.assert_status(200);
    assert_eq!(app.get("/api/cache/doc").await.header("etag"), Some(etag.clone()));
    app.put("doc", json!({"value": {"v": 2}})).await.assert_status(200);
    let changed = app.get_with("/api/cache/doc", "if-none-match", &etag).await;
    changed.assert_status(200);
    assert_ne!(changed.header("etag"), Some(etag));
}

#[tokio::test]
async fn expired_entries_are_never_served() {
    let app = TestApp::spawn(|_| {}).await;
    app.put("short", json!({"value": "soon gone", "ttl": 1})).await.assert_status(200);
    app.put("long", json!({"value": "stays", "ttl": 60})).await.assert_status(200);
    assert_eq!(app.get("/api/cache/short").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.get("/api/cache/short").await.assert_status(404);
    app.get("/api/cache/long").await.assert_status(200);
    let metrics = app.get("/api/cache/metrics").await.json();
    assert_eq!(metrics["expirations"], 1);
    assert_eq!(metrics["l1_size"], 1);
}

#[tokio::test]
async fn the_sweep_removes_expired_entries_nobody_reads() {
    let app = TestApp::spawn(|s| s.l1.cleanup_interval_secs = 1).await;
    for idx in 0..20 {
        app.put(&format!("k{idx}"), json!({"value": idx, "ttl": 1})).await.assert_status(200);
    }
    assert_eq!(app.get("/api/cache/metrics").await.json()["l1_size"], 20);
    eventually("the sweep empties L1", || async { app.get("/api/cache/metrics").await.json()["l1_size"] == 0 }).await;
    assert_eq!(app.get("/api/cache/metrics").await.json()["expirations"], 20);
}

#[tokio::test]
async fn default_ttl_applies_when_ttl_is_absent() {
    let app = TestApp::spawn(|s| s.cache.default_ttl_secs = 42).await;
    app.put("k", json!({"value": 1})).await.assert_status(200);
    let ttl = app.get("/api/cache/k").await.json()["ttl_remaining"].as_u64().unwrap();
    assert!((40..=42).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn put_with_a_matching_body_key_is_accepted() {
    let app = TestApp::spawn(|_| {}).await;
    let put = app.put("a:b", json!({"key": "a:b", "value": 1})).await;
    put.assert_status(200);
    let body = put.json();
    assert_eq!(
        (body["success"].clone(), body["key"].clone(), body["l2"].clone()),
        (json!(true), json!("a:b"), json!("disabled"))
    );
    assert_eq!(app.get("/api/cache/a:b").await.json()["value"], 1);
    // A body key that differs is refused and leaves the stored entry as it was.
    app.put("a:b", json!({"key": "a:c", "value": 2})).await.assert_error(400, "key_mismatch");
    assert_eq!(app.get("/api/cache/a:b").await.json()["value"], 1);
    app.get("/api/cache/a:c").await.assert_status(404);
}

#[tokio::test]
async fn delete_reports_whether_the_key_existed() {
    let app = TestApp::spawn(|_| {}).await;
    app.put("gone", json!({"value": 1})).await.assert_status(200);
    assert_eq!(app.delete("/api/cache/gone").await.json(), json!({"deleted": true, "invalidated": 1}));
    app.get("/api/cache/gone").await.assert_status(404);
    assert_eq!(app.delete("/api/cache/gone").await.json(), json!({"deleted": false, "invalidated": 0}));
    assert_eq!(app.get("/api/cache/metrics").await.json()["deletes"], 1);
}

/// JSON has one number type: a whole number written as `60.0` is 60 (as JSON Schema and
/// `openapi.yaml` say), while a fraction or a negative number is refused.
#[tokio::test]
async fn whole_numbers_are_accepted_however_written() {
    let app = TestApp::spawn(|_| {}).await;
    app.put("k", json!({"value": 1, "ttl": 60.0})).await.assert_status(200);
    let ttl = app.get("/api/cache/k").await.json()["ttl_remaining"].as_u64().unwrap();
    assert!((58..=60).contains(&ttl), "{ttl}");
    app.post("/api/cache/batch/set", json!({"entries": [{"key": "b", "value": 2, "ttl": 6e1}]}))
        .await
        .assert_status(200);
    let evicted = app.post("/api/cache/evict", json!({"count": 1.0, "predictions": {"b": 0.1}})).await;
    assert_eq!(evicted.json()["keys"], json!(["b"]));
    app.put("k", json!({"value": 2, "ttl": 1.5})).await.assert_error(400, "invalid_body");
    app.put("k", json!({"value": 2, "ttl": -60.0})).await.assert_error(400, "invalid_body");
    app.post("/api/cache/evict", json!({"count": 0.5})).await.assert_error(400, "invalid_body");
    assert_eq!(app.get("/api/cache/k").await.json()["value"], 1, "a refused write changed nothing");
}
