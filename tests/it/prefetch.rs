//! Prefetch (SPEC §3, §6): the bounded priority queue, its workers, and their metrics.
//! (409 without an origin, after the body checks: `errors::unconfigured_features_are_409_after_body_checks`.)

use std::time::Duration;

use serde_json::json;

use crate::harness::{eventually, Reply, TestApp, TestOrigin};

/// One worker, held busy by a slow `blocker` key so that what is queued next stays queued.
async fn busy_instance(origin: &TestOrigin, max_queue: u64) -> TestApp {
    origin.set("blocker", Reply::delayed(Duration::from_millis(600)));
    let url = origin.url();
    let app = TestApp::spawn(move |s| {
        s.origin.url = url;
        s.prefetch.workers = 1;
        s.prefetch.max_queue = max_queue;
    })
    .await;
    let queued = app.post("/api/cache/prefetch", json!({"items": [{"key": "blocker", "priority": 1}]})).await;
    queued.assert_status(202);
    eventually("the worker took the blocker", || async { origin.count("blocker") == 1 }).await;
    app
}

#[tokio::test]
async fn keys_are_fetched_highest_priority_first() {
    let origin = TestOrigin::start().await;
    let app = busy_instance(&origin, 100).await;
    let items = json!([
        {"key": "low", "priority": 0.1},
        {"key": "high", "priority": 0.9},
        {"key": "mid", "priority": 0.5},
        {"key": "high", "priority": 0.2},
    ]);
    let response = app.post("/api/cache/prefetch", json!({"items": items})).await;
    response.assert_status(202);
    assert_eq!(response.json(), json!({"queued": 3, "skipped": 1}), "a repeated key is queued once");

    let queue = app.get("/api/cache/prefetch").await.json();
    let listed: Vec<(String, f64)> = queue["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| (item["key"].as_str().unwrap().to_string(), item["priority"].as_f64().unwrap()))
        .collect();
    assert_eq!(listed, [("high".to_string(), 0.9), ("mid".into(), 0.5), ("low".into(), 0.1)]);
    let queued_at = queue["queue"][0]["queued_at"].as_str().unwrap();
    assert!(queued_at.ends_with('Z') && queued_at.contains('T'), "RFC 3339: {queued_at}");
    assert_eq!(app.metric("prefetch_queue_size").await, 3);

    eventually("the queue drained", || async { origin.total() == 4 }).await;
    assert_eq!(origin.order(), ["blocker", "high", "mid", "low"]);
    assert_eq!(app.get("/api/cache/prefetch").await.json(), json!({"queue": []}));
    assert_eq!(app.metric("prefetch_requests").await, 4);
}

#[tokio::test]
async fn cached_and_queued_keys_are_skipped_and_a_full_queue_drops_the_lowest() {
    let origin = TestOrigin::start().await;
    let app = busy_instance(&origin, 2).await;
    app.put("cached", json!({"value": 1})).await.assert_status(200);

    let first = app
        .post(
            "/api/cache/prefetch",
            json!({"items": [{"key": "a", "priority": 0.3}, {"key": "cached", "priority": 1}, {"key": "blocker", "priority": 1}]}),
        )
        .await;
    assert_eq!(first.json(), json!({"queued": 1, "skipped": 2}), "cached and in-flight keys are skipped");
    let second = app
        .post(
            "/api/cache/prefetch",
            json!({"items": [{"key": "a", "priority": 0.9}, {"key": "b", "priority": 0.2}, {"key": "c", "priority": 0.1}]}),
        )
        .await;
    assert_eq!(second.json(), json!({"queued": 1, "skipped": 2}), "a is queued already; c is lowest of a full queue");
    let third = app.post("/api/cache/prefetch", json!({"items": [{"key": "d", "priority": 0.8}]})).await;
    assert_eq!(third.json(), json!({"queued": 1, "skipped": 0}), "d pushes out b, the lowest");
    let keys: Vec<String> = app.get("/api/cache/prefetch").await.json()["queue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["d", "a"]);
    eventually("the queue drained", || async { origin.total() == 3 }).await;
    assert_eq!(origin.count("b") + origin.count("c"), 0, "dropped keys are never fetched");
}

#[tokio::test]
async fn prefetched_entries_are_cached_and_their_first_read_counts_as_a_prefetch_hit() {
    let origin = TestOrigin::start().await;
    let url = origin.url();
    let app = TestApp::spawn(move |s| s.origin.url = url).await;
    app.post("/api/cache/prefetch", json!({"items": [{"key": "p", "priority": 0.5}]})).await.assert_status(202);
    eventually("the prefetch landed", || async { origin.count("p") == 1 }).await;
    eventually("the entry is cached", || async { app.metric("l1_size").await == 1 }).await;
    for _ in 0..2 {
        let hit = app.get("/api/cache/p").await;
        assert_eq!(hit.json()["source"], "l1");
    }
    assert_eq!(app.metric("prefetch_hits").await, 1, "only the first read of a prefetched entry counts");
    app.get("/api/cache/q").await.assert_status(200);
    app.get("/api/cache/q").await.assert_status(200);
    assert_eq!(app.metric("prefetch_hits").await, 1, "entries fetched by reads are not prefetch hits");
    assert_eq!(origin.total(), 2);
}
