//! Batch reads and writes.

use serde_json::json;

use crate::harness::TestApp;

#[tokio::test]
async fn batch_set_then_batch_get() {
    let app = TestApp::spawn(|_| {}).await;
    let response = app
        .post(
            "/api/cache/batch/set",
            json!({"entries": [
                {"key": "a", "value": {"n": 1}},
                {"key": "b", "value": null, "ttl": 30, "tags": ["t"]},
                {"key": "c", "value": [1], "depends_on": ["a"]}
            ]}),
        )
        .await;
    assert_eq!(response.json(), json!({"success": true, "stored": 3, "l2": "disabled"}));

    let response = app.post("/api/cache/batch/get", json!({"keys": ["a", "b", "missing", "a", "c"]})).await;
    response.assert_status(200);
    let body = response.json();
    assert_eq!(body["missing"], json!(["missing"]));
    let entries = body["entries"].as_object().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries["a"]["value"], json!({"n": 1}));
    assert_eq!(entries["a"]["source"], "l1");
    assert_eq!(entries["b"]["value"], json!(null));
    assert_eq!(entries["c"]["value"], json!([1]));
    assert_eq!(entries["b"].as_object().unwrap().len(), 3, "{body}");
    let expires_at = humantime::parse_rfc3339(entries["b"]["expires_at"].as_str().unwrap()).unwrap();
    let left = expires_at.duration_since(std::time::SystemTime::now()).unwrap().as_secs();
    assert!((28..=30).contains(&left), "{left}");

    // Tags and dependencies written by a batch are live.
    assert_eq!(app.post("/api/cache/invalidate", json!({"tags": ["t"]})).await.json()["invalidated"], 1);
    assert_eq!(app.delete("/api/cache/a").await.json()["invalidated"], 2);
    let metrics = app.get("/api/cache/metrics").await.json();
    assert_eq!(metrics["hits"], 3);
    assert_eq!(metrics["misses"], 1);
}

#[tokio::test]
async fn empty_batches_are_fine() {
    let app = TestApp::spawn(|_| {}).await;
    assert_eq!(
        app.post("/api/cache/batch/set", json!({"entries": []})).await.json(),
        json!({"success": true, "stored": 0, "l2": "disabled"})
    );
    assert_eq!(
        app.post("/api/cache/batch/get", json!({"keys": []})).await.json(),
        json!({"entries": {}, "missing": []})
    );
}
