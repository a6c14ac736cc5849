//! Invalidation by key, glob pattern and tag, and the dependency cascade (SPEC §5).

use serde_json::json;

use crate::harness::TestApp;

async fn present(app: &TestApp, key: &str) -> bool {
    let encoded =
        key.replace('%', "%25").replace('?', "%3F").replace('[', "%5B").replace(']', "%5D").replace('\\', "%5C");
    app.get(&format!("/api/cache/{encoded}")).await.status == 200
}

async fn put_all(app: &TestApp, keys: &[&str]) {
    for key in keys {
        let response = app.post("/api/cache/batch/set", json!({"entries": [{"key": key, "value": key}]})).await;
        response.assert_status(200);
    }
}

async fn invalidate_pattern(app: &TestApp, pattern: &str) -> u64 {
    let response = app.post("/api/cache/invalidate", json!({ "pattern": pattern })).await;
    response.assert_status(200);
    assert_eq!(response.json()["success"], true);
    response.json()["invalidated"].as_u64().unwrap()
}

#[tokio::test]
async fn invalidate_by_keys_counts_only_keys_that_existed() {
    let app = TestApp::spawn(|_| {}).await;
    put_all(&app, &["a", "b", "c"]).await;
    let response = app.post("/api/cache/invalidate", json!({"keys": ["a", "b", "missing"]})).await;
    assert_eq!(response.json(), json!({"success": true, "invalidated": 2}));
    assert!(!present(&app, "a").await && !present(&app, "b").await && present(&app, "c").await);
}

#[tokio::test]
async fn pattern_star_matches_any_run() {
    let app = TestApp::spawn(|_| {}).await;
    put_all(&app, &["user:1", "user:22", "user:1:orders", "users:1", "session:1"]).await;
    assert_eq!(invalidate_pattern(&app, "user:*").await, 3);
    assert!(present(&app, "users:1").await && present(&app, "session:1").await);
    assert!(!present(&app, "user:1:orders").await);
}

#[tokio::test]
async fn pattern_question_mark_matches_one_byte() {
    let app = TestApp::spawn(|_| {}).await;
    put_all(&app, &["item:1", "item:2", "item:10", "item:"]).await;
    assert_eq!(invalidate_pattern(&app, "item:?").await, 2);
    assert!(present(&app, "item:10").await && present(&app, "item:").await);
}

#[tokio::test]
async fn pattern_classes_ranges_and_negation() {
    let app = TestApp::spawn(|_| {}).await;
    put_all(&app, &["hallo", "hello", "hillo", "hxllo"]).await;
    assert_eq!(invalidate_pattern(&app, "h[ae]llo").await, 2);
    assert!(present(&app, "hillo").await && present(&app, "hxllo").await);
    put_all(&app, &["hallo", "hello"]).await;
    assert_eq!(invalidate_pattern(&app, "h[^e]llo").await, 3, "hallo, hillo, hxllo");
    assert!(present(&app, "hello").await);
    put_all(&app, &["v1", "v5", "v9"]).await;
    assert_eq!(invalidate_pattern(&app, "v[1-5]").await, 2);
    assert!(present(&app, "v9").await);
}

#[tokio::test]
async fn pattern_escapes_make_specials_literal() {
    let app = TestApp::spawn(|_| {}).await;
    put_all(&app, &["a*b", "axb", "q?", "qq", "[x]", "x"]).await;
    assert_eq!(invalidate_pattern(&app, "a\\*b").await, 1);
    assert!(!present(&app, "a*b").await && present(&app, "axb").await);
    assert_eq!(invalidate_pattern(&app, "q\\?").await, 1);
    assert!(present(&app, "qq").await);
    assert_eq!(invalidate_pattern(&app, "\\[x\\]").await, 1);
    assert!(present(&app, "x").await);
}

#[tokio::test]
async fn tags_invalidate_every_tagged_key() {
    let app = TestApp::spawn(|_| {}).await;
    app.put("p1", json!({"value": 1, "tags": ["products", "sale"]})).await.assert_status(200);
    app.put("p2", json!({"value": 2, "tags": ["products"]})).await.assert_status(200);
    app.put("u1", json!({"value": 3, "tags": ["users"]})).await.assert_status(200);
    let response = app.post("/api/cache/invalidate", json!({"tags": ["products", "unknown"]})).await;
    assert_eq!(response.json()["invalidated"], 2);
    assert!(!present(&app, "p1").await && !present(&app, "p2").await && present(&app, "u1").await);
    // A rewrite without the tag leaves the tag index: invalidating it again finds nothing.
    app.put("u1", json!({"value": 4})).await.assert_status(200);
    assert_eq!(app.post("/api/cache/invalidate", json!({"tags": ["users"]})).await.json()["invalidated"], 0);
    assert!(present(&app, "u1").await);
}

#[tokio::test]
async fn keys_pattern_and_tags_combine_and_count_distinct_keys() {
    let app = TestApp::spawn(|_| {}).await;
    app.put("user:1", json!({"value": 1, "tags": ["t"]})).await.assert_status(200);
    app.put("user:2", json!({"value": 2})).await.assert_status(200);
    app.put("other", json!({"value": 3, "tags": ["t"]})).await.assert_status(200);
    let response =
        app.post("/api/cache/invalidate", json!({"keys": ["user:1"], "pattern": "user:*", "tags": ["t"]})).await;
    assert_eq!(response.json()["invalidated"], 3);
}

#[tokio::test]
async fn delete_cascades_through_a_three_level_dependency_chain() {
    let app = TestApp::spawn(|_| {}).await;
    app.put("page", json!({"value": "page"})).await.assert_status(200);
    app.put("section", json!({"value": "s", "depends_on": ["page"]})).await.assert_status(200);
    app.put("fragment", json!({"value": "f", "depends_on": ["section"]})).await.assert_status(200);
    app.put("sibling", json!({"value": "x", "depends_on": ["other"]})).await.assert_status(200);
    assert_eq!(app.delete("/api/cache/page").await.json(), json!({"deleted": true, "invalidated": 3}));
    assert!(!present(&app, "section").await && !present(&app, "fragment").await);
    assert!(present(&app, "sibling").await);
}

#[tokio::test]
async fn writing_a_key_invalidates_its_dependents_but_not_itself() {
    let app = TestApp::spawn(|_| {}).await;
    app.put("user:1", json!({"value": {"name": "a"}})).await.assert_status(200);
    app.put("user:1:card", json!({"value": "<a>", "depends_on": ["user:1"]})).await.assert_status(200);
    app.put("user:1:page", json!({"value": "<p>", "depends_on": ["user:1:card"]})).await.assert_status(200);
    app.put("user:1", json!({"value": {"name": "b"}})).await.assert_status(200);
    assert_eq!(app.get("/api/cache/user:1").await.json()["value"], json!({"name": "b"}));
    assert!(!present(&app, "user:1:card").await && !present(&app, "user:1:page").await);
}

#[tokio::test]
async fn a_dependency_cycle_terminates_and_the_write_survives() {
    let app = TestApp::spawn(|_| {}).await;
    app.put("a", json!({"value": 1, "depends_on": ["c"]})).await.assert_status(200);
    app.put("b", json!({"value": 2, "depends_on": ["a"]})).await.assert_status(200);
    // c closes the cycle a -> c -> b -> a; its write removes a and b, then meets c again.
    app.put("c", json!({"value": 3, "depends_on": ["b"]})).await.assert_status(200);
    assert!(present(&app, "c").await);
    assert!(!present(&app, "a").await && !present(&app, "b").await);
    // Self-dependency is a cycle of one.
    app.put("self", json!({"value": 4, "depends_on": ["self"]})).await.assert_status(200);
    assert!(present(&app, "self").await);
    assert_eq!(app.delete("/api/cache/self").await.json(), json!({"deleted": true, "invalidated": 1}));
}

#[tokio::test]
async fn a_cascade_reaches_dependents_of_a_key_that_is_gone() {
    let app = TestApp::spawn(|_| {}).await;
    app.put("child", json!({"value": 1, "depends_on": ["parent"]})).await.assert_status(200);
    assert_eq!(app.delete("/api/cache/parent").await.json(), json!({"deleted": false, "invalidated": 1}));
    assert!(!present(&app, "child").await);
}

#[tokio::test]
async fn invalidation_cascades_from_tag_and_pattern_matches() {
    let app = TestApp::spawn(|_| {}).await;
    app.put("root", json!({"value": 1, "tags": ["r"]})).await.assert_status(200);
    app.put("leaf", json!({"value": 2, "depends_on": ["root"]})).await.assert_status(200);
    assert_eq!(app.post("/api/cache/invalidate", json!({"tags": ["r"]})).await.json()["invalidated"], 2);
    app.put("root", json!({"value": 1})).await.assert_status(200);
    app.put("leaf", json!({"value": 2, "depends_on": ["root"]})).await.assert_status(200);
    assert_eq!(invalidate_pattern(&app, "ro*").await, 2);
}
