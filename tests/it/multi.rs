//! Two instances on one Redis: cross-instance invalidation through pub/sub (SPEC §5).

use serde_json::json;

use crate::harness::{client, eventually, RedisServer, TestApp};

fn publish(redis: &RedisServer, message: &str) {
    let _: i64 = redis::cmd("PUBLISH").arg("tiercache:invalidation").arg(message).query(&mut redis.client()).unwrap();
}

async fn source(app: &TestApp, key: &str) -> String {
    let response = app.get(&format!("/api/cache/{key}")).await;
    if response.status == 404 {
        return "miss".into();
    }
    response.json()["source"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn write_on_one_instance_invalidates_l1_on_the_other() {
    let redis = RedisServer::start().await;
    let a = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let b = TestApp::spawn_with_redis(&redis, |_| {}).await;
    a.put("user:1", json!({"value": {"v": 1}})).await.assert_status(200);
    b.wait_received(2).await;
    assert_eq!(b.get("/api/cache/user:1").await.json()["value"], json!({"v": 1}));
    assert_eq!(source(&b, "user:1").await, "l1");
    a.put("user:1", json!({"value": {"v": 2}})).await.assert_status(200);
    eventually("b reads the new value", || async {
        b.get("/api/cache/user:1").await.json()["value"] == json!({"v": 2})
    })
    .await;
    assert!(b.metric("invalidations_received").await.as_u64().unwrap() >= 2);
    assert!(a.metric("invalidations_published").await.as_u64().unwrap() >= 2);
}

/// Writes that arrive together go to Redis as one pipeline with one invalidation message
/// (`engine/l2/batch.rs`), and that one message still evicts every written key on the peer.
#[tokio::test]
async fn concurrent_writes_share_one_pipeline_and_one_message() {
    let redis = RedisServer::start().await;
    let a = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let b = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let entries: Vec<_> = (0..20).map(|idx| json!({"key": format!("k{idx}"), "value": 0})).collect();
    a.post("/api/cache/batch/set", json!({ "entries": entries })).await.assert_status(200);
    b.wait_received(2).await;
    for idx in 0..20 {
        b.get(&format!("/api/cache/k{idx}")).await.assert_status(200);
        assert_eq!(source(&b, &format!("k{idx}")).await, "l1");
    }
    let received = b.metric("invalidations_received").await.as_u64().unwrap();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut redis.client()).unwrap();

    redis.freeze(true);
    let writes: Vec<_> = (0..20)
        .map(|idx| {
            let request = client().put(format!("{}/api/cache/k{idx}", a.base)).json(&json!({"value": idx + 1}));
            tokio::spawn(request.send())
        })
        .collect();
    // Bounded: the writes reach the instance and queue behind the first, which Redis holds.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    redis.freeze(false);
    for write in writes {
        let body: serde_json::Value = write.await.unwrap().expect("answered").json().await.unwrap();
        assert_eq!(body["l2"], "stored");
    }
    assert_eq!(redis.calls("set"), 20);
    let publishes = redis.calls("publish");
    assert!((1..=3).contains(&publishes), "20 writes announced in at most 3 messages, got {publishes}");
    b.wait_received(received + publishes).await;
    for idx in 0..20 {
        assert_eq!(b.get(&format!("/api/cache/k{idx}")).await.json()["value"], json!(idx + 1), "k{idx}");
    }
}

#[tokio::test]
async fn delete_tags_patterns_and_cascades_reach_the_other_instance() {
    let redis = RedisServer::start().await;
    let a = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let b = TestApp::spawn_with_redis(&redis, |_| {}).await;
    a.put("p1", json!({"value": 1, "tags": ["products"]})).await.assert_status(200);
    a.put("p2", json!({"value": 2, "tags": ["products"]})).await.assert_status(200);
    a.put("user:1", json!({"value": 3})).await.assert_status(200);
    a.put("user:2", json!({"value": 4})).await.assert_status(200);
    a.put("page", json!({"value": 5})).await.assert_status(200);
    a.put("section", json!({"value": 6, "depends_on": ["page"]})).await.assert_status(200);
    a.put("fragment", json!({"value": 7, "depends_on": ["section"]})).await.assert_status(200);
    a.put("gone", json!({"value": 8})).await.assert_status(200);
    for key in ["p1", "p2", "user:1", "user:2", "page", "section", "fragment", "gone"] {
        b.get(&format!("/api/cache/{key}")).await.assert_status(200);
    }

    assert_eq!(a.post("/api/cache/invalidate", json!({"tags": ["products"]})).await.json()["invalidated"], 2);
    assert_eq!(a.post("/api/cache/invalidate", json!({"pattern": "user:*"})).await.json()["invalidated"], 2);
    assert_eq!(a.delete("/api/cache/page").await.json(), json!({"deleted": true, "invalidated": 3}));
    assert_eq!(a.delete("/api/cache/gone").await.json()["deleted"], true);
    for key in ["p1", "p2", "user:1", "user:2", "page", "section", "fragment", "gone"] {
        eventually(&format!("{key} is gone on b"), || async { source(&b, key).await == "miss" }).await;
    }
}

#[tokio::test]
async fn l2_only_entries_are_invalidated_by_tag_pattern_and_cascade() {
    let redis = RedisServer::start().await;
    let a = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let b = TestApp::spawn_with_redis(&redis, |_| {}).await;
    a.put("t1", json!({"value": 1, "tags": ["x"]})).await.assert_status(200);
    a.put("doc:1", json!({"value": 2})).await.assert_status(200);
    a.put("root", json!({"value": 3})).await.assert_status(200);
    a.put("leaf", json!({"value": 4, "depends_on": ["root"]})).await.assert_status(200);
    // a forgets them locally; b has never read them: only L2 holds them.
    a.post("/api/cache/evict", json!({"count": 100})).await.assert_status(200);
    assert_eq!(b.post("/api/cache/invalidate", json!({"tags": ["x"]})).await.json()["invalidated"], 1);
    assert_eq!(b.post("/api/cache/invalidate", json!({"pattern": "doc:?"})).await.json()["invalidated"], 1);
    assert_eq!(b.delete("/api/cache/root").await.json(), json!({"deleted": true, "invalidated": 2}));
    let keys: Vec<String> = redis::cmd("KEYS").arg("tiercache:k:*").query(&mut redis.client()).unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test]
async fn a_retagged_key_survives_invalidation_of_its_old_tag() {
    let redis = RedisServer::start().await;
    let a = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let b = TestApp::spawn_with_redis(&redis, |_| {}).await;
    a.put("k", json!({"value": 1, "tags": ["old"]})).await.assert_status(200);
    a.put("k", json!({"value": 2, "tags": ["new"]})).await.assert_status(200);
    a.post("/api/cache/evict", json!({"count": 10})).await.assert_status(200);
    // b finds k in the old tag's set in Redis, sees its entry no longer carries the tag.
    assert_eq!(b.post("/api/cache/invalidate", json!({"tags": ["old"]})).await.json()["invalidated"], 0);
    assert_eq!(b.get("/api/cache/k").await.json()["value"], 2);
}

#[tokio::test]
async fn messages_from_other_programs_are_honoured() {
    let redis = RedisServer::start().await;
    let a = TestApp::spawn_with_redis(&redis, |_| {}).await;
    a.put("ext:1", json!({"value": 1, "tags": ["ext"]})).await.assert_status(200);
    a.put("ext:2", json!({"value": 2})).await.assert_status(200);
    a.put("ext:3", json!({"value": 3})).await.assert_status(200);
    assert_eq!(source(&a, "ext:1").await, "l1");
    publish(&redis, r#"{"type":"EVICT","keys":["ext:1"]}"#);
    eventually("EVICT from another program drops the L1 copy", || async { source(&a, "ext:1").await == "l2" }).await;
    publish(&redis, r#"{"type":"PATTERN","pattern":"ext:[2]"}"#);
    eventually("PATTERN drops matching L1 copies", || async { source(&a, "ext:2").await == "l2" }).await;
    assert_eq!(source(&a, "ext:3").await, "l1");
    publish(&redis, r#"{"type":"TAGS","tags":["ext"]}"#);
    eventually("TAGS drops tagged L1 copies", || async { source(&a, "ext:1").await == "l2" }).await;
    publish(&redis, r#"{"type":"CLEAR"}"#);
    eventually("CLEAR empties L1", || async { a.metric("l1_size").await == 0 }).await;
}

#[tokio::test]
async fn malformed_messages_are_counted_and_ignored() {
    let redis = RedisServer::start().await;
    let a = TestApp::spawn_with_redis(&redis, |_| {}).await;
    a.put("k", json!({"value": 1})).await.assert_status(200);
    for message in ["garbage", r#"{"type":"EVICT"}"#, r#"{"type":"DROP_TABLES"}"#, r#"{"keys":["k"]}"#, "[]"] {
        publish(&redis, message);
    }
    eventually("five malformed messages counted", || async { a.metric("invalidations_malformed").await == 5 }).await;
    assert_eq!(source(&a, "k").await, "l1");
    a.get("/health").await.assert_status(200);
}

#[tokio::test]
async fn a_gap_in_a_peers_sequence_flushes_l1() {
    let redis = RedisServer::start().await;
    let a = TestApp::spawn_with_redis(&redis, |_| {}).await;
    a.put("k", json!({"value": 1})).await.assert_status(200);
    publish(&redis, r#"{"type":"EVICT","keys":["other"],"origin":"peer","seq":1}"#);
    publish(&redis, r#"{"type":"EVICT","keys":["other"],"origin":"peer","seq":2}"#);
    eventually("both received", || async { a.metric("invalidations_received").await.as_u64().unwrap() >= 3 }).await;
    assert_eq!(source(&a, "k").await, "l1");
    publish(&redis, r#"{"type":"EVICT","keys":["other"],"origin":"peer","seq":4}"#);
    eventually("seq 3 was missed: L1 is flushed", || async { a.metric("l1_size").await == 0 }).await;
}

#[tokio::test]
async fn a_write_missed_during_an_outage_flushes_the_peer() {
    let mut redis = RedisServer::start().await;
    let a = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let b = TestApp::spawn_with_redis(&redis, |_| {}).await;
    a.put("k", json!({"value": 1})).await.assert_status(200);
    b.get("/api/cache/k").await.assert_status(200);
    redis.kill();
    // a's write cannot be published: its seq is spent.
    assert_eq!(a.put("k", json!({"value": 2})).await.json()["l2"], "unavailable");
    redis.restart().await;
    a.wait_for_l2("up").await;
    b.wait_for_l2("up").await;
    b.wait_subscribed(&redis).await;
    // The first call on a connection that died may fail once before it reconnects.
    eventually("a's write reaches L2", || async { a.put("k", json!({"value": 3})).await.json()["l2"] == "stored" })
        .await;
    eventually("b serves the newest value", || async { b.get("/api/cache/k").await.json()["value"] == 3 }).await;
}
