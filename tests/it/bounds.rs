//! L1 bounds (entries and bytes), the eviction policy's order, and manual eviction.

use serde_json::json;

use crate::harness::TestApp;

async fn metrics(app: &TestApp) -> serde_json::Value {
    app.get("/api/cache/metrics").await.json()
}

#[tokio::test]
async fn three_times_max_entries_leaves_at_most_max_entries() {
    let app = TestApp::spawn(|s| s.l1.max_entries = 100).await;
    for idx in 0..300 {
        app.put(&format!("k{idx}"), json!({"value": idx})).await.assert_status(200);
        let size = metrics(&app).await["l1_size"].as_u64().unwrap();
        assert!(size <= 100, "after {idx} writes L1 holds {size} entries");
    }
    let metrics = metrics(&app).await;
    assert!(metrics["l1_size"].as_u64().unwrap() >= 90, "{metrics}");
    assert_eq!(metrics["evictions"].as_u64().unwrap() + metrics["l1_size"].as_u64().unwrap(), 300);
    let prometheus = app.get("/metrics").await.text();
    let line =
        prometheus.lines().find(|line| line.starts_with("tiercache_evictions_total{reason=\"capacity\"}")).unwrap();
    assert_eq!(line.rsplit(' ').next().unwrap().parse::<u64>().unwrap(), metrics["evictions"].as_u64().unwrap());
}

#[tokio::test]
async fn large_values_are_bounded_by_max_bytes() {
    let max_bytes = 64 * 1024;
    let app = TestApp::spawn(|s| s.l1.max_bytes = max_bytes).await;
    let value = "v".repeat(6000);
    for idx in 0..60 {
        app.put(&format!("big{idx}"), json!({ "value": value })).await.assert_status(200);
        let bytes = metrics(&app).await["l1_bytes"].as_u64().unwrap();
        assert!(bytes <= max_bytes, "after {idx} writes L1 holds {bytes} bytes");
    }
    let metrics = metrics(&app).await;
    let (size, bytes) = (metrics["l1_size"].as_u64().unwrap(), metrics["l1_bytes"].as_u64().unwrap());
    // Entries spread over L1's shards by hash and each shard keeps its share of the budget, so
    // how full it ends depends on where the keys fell: at most ten 6 KB entries, at least half.
    assert!((5..=10).contains(&size) && bytes >= max_bytes / 2, "64 KiB holds five to ten 6 KB entries: {metrics}");
    // l1_bytes counts key + value + metadata: more than the values alone.
    assert!(bytes > size * 6000, "{metrics}");
}

#[tokio::test]
async fn the_policy_keeps_frequently_read_entries_through_a_scan() {
    let app = TestApp::spawn(|s| s.l1.max_entries = 64).await;
    for idx in 0..32 {
        app.put(&format!("hot{idx}"), json!({"value": idx})).await.assert_status(200);
    }
    for _ in 0..3 {
        for idx in 0..32 {
            app.get(&format!("/api/cache/hot{idx}")).await.assert_status(200);
        }
    }
    for idx in 0..256 {
        app.put(&format!("scan{idx}"), json!({"value": idx})).await.assert_status(200);
    }
    let mut hot_left = 0;
    for idx in 0..32 {
        hot_left += usize::from(app.get(&format!("/api/cache/hot{idx}")).await.status == 200);
    }
    // An LRU would have kept none of them: 256 newer writes passed through 64 slots.
    assert!(hot_left >= 30, "{hot_left} of 32 frequently read entries left");
}

#[tokio::test]
async fn evict_count_takes_the_coldest_entries() {
    let app = TestApp::spawn(|_| {}).await;
    for key in ["a", "b", "c", "d"] {
        app.put(key, json!({"value": key})).await.assert_status(200);
    }
    for key in ["a", "a", "c", "d", "d"] {
        app.get(&format!("/api/cache/{key}")).await.assert_status(200);
    }
    let response = app.post("/api/cache/evict", json!({"count": 2})).await;
    assert_eq!(response.json(), json!({"evicted": 2, "keys": ["b", "c"]}));
    app.get("/api/cache/b").await.assert_status(404);
    app.get("/api/cache/a").await.assert_status(200);
    assert_eq!(app.post("/api/cache/evict", json!({"count": 0})).await.json(), json!({"evicted": 0, "keys": []}));
    let prometheus = app.get("/metrics").await.text();
    assert!(prometheus.contains("tiercache_evictions_total{reason=\"manual\"} 2"), "{prometheus}");
}

#[tokio::test]
async fn evict_with_predictions_takes_the_least_likely_present_keys() {
    let app = TestApp::spawn(|_| {}).await;
    for key in ["a", "b", "c", "untouched"] {
        app.put(key, json!({"value": key})).await.assert_status(200);
    }
    let predictions = json!({"a": 0.9, "b": 0.1, "c": 0.5, "absent": 0.0});
    let response = app.post("/api/cache/evict", json!({"count": 2, "predictions": predictions})).await;
    assert_eq!(response.json(), json!({"evicted": 2, "keys": ["b", "c"]}));
    app.get("/api/cache/a").await.assert_status(200);
    app.get("/api/cache/untouched").await.assert_status(200);
    // More asked than present: only present keys named in predictions go.
    let response = app.post("/api/cache/evict", json!({"count": 10, "predictions": {"a": 0.3}})).await;
    assert_eq!(response.json(), json!({"evicted": 1, "keys": ["a"]}));
    app.get("/api/cache/untouched").await.assert_status(200);
}

#[tokio::test]
async fn clear_removes_everything_and_counts_it() {
    let app = TestApp::spawn(|_| {}).await;
    for idx in 0..5 {
        app.put(&format!("k{idx}"), json!({"value": idx, "tags": ["t"]})).await.assert_status(200);
    }
    assert_eq!(app.delete("/api/cache").await.json(), json!({"cleared": 5}));
    let metrics = metrics(&app).await;
    assert_eq!((metrics["l1_size"].as_u64(), metrics["l1_bytes"].as_u64()), (Some(0), Some(0)));
    assert_eq!(app.post("/api/cache/invalidate", json!({"tags": ["t"]})).await.json()["invalidated"], 0);
    assert_eq!(app.delete("/api/cache").await.json(), json!({"cleared": 0}));
}
