//! Redis Cluster as L2: every multi-key operation correct across slots and masters.

use serde_json::json;

use crate::harness::{eventually, RedisCluster, TestApp};

fn keys(count: usize) -> Vec<String> {
    (0..count).map(|idx| format!("item:{idx}")).collect()
}

#[tokio::test]
async fn a_cluster_round_trip_spreads_keys_over_every_master() {
    let cluster = RedisCluster::start().await;
    let a = TestApp::spawn_with_cluster(&cluster).await;
    let b = TestApp::spawn_with_cluster(&cluster).await;
    let entries: Vec<_> = keys(30).iter().map(|key| json!({"key": key, "value": key, "tags": ["all"]})).collect();
    a.post("/api/cache/batch/set", json!({ "entries": entries })).await.assert_status(200);
    assert_eq!(cluster.keys("tiercache:k:*").len(), 30);

    assert_eq!(b.get("/api/cache/item:7").await.json()["source"], "l2");
    let body = b.post("/api/cache/batch/get", json!({"keys": keys(30)})).await.json();
    assert_eq!(body["entries"].as_object().unwrap().len(), 30, "{body}");
    assert_eq!(body["entries"]["item:29"]["value"], "item:29");
    assert_eq!(body["missing"], json!([]));
}

#[tokio::test]
async fn pattern_tag_cascade_and_clear_work_across_slots() {
    let cluster = RedisCluster::start().await;
    let a = TestApp::spawn_with_cluster(&cluster).await;
    let b = TestApp::spawn_with_cluster(&cluster).await;
    for key in keys(20) {
        a.put(&key, json!({"value": 1, "tags": ["even-or-odd"]})).await.assert_status(200);
    }
    for idx in 0..5 {
        a.put(&format!("other:{idx}"), json!({"value": idx, "tags": ["others"]})).await.assert_status(200);
    }
    a.put("root", json!({"value": 0})).await.assert_status(200);
    a.put("child", json!({"value": 0, "depends_on": ["root"]})).await.assert_status(200);
    a.put("grandchild", json!({"value": 0, "depends_on": ["child"]})).await.assert_status(200);

    // b has none of these in L1: everything below is found in the cluster.
    assert_eq!(b.post("/api/cache/invalidate", json!({"pattern": "item:1*"})).await.json()["invalidated"], 11);
    assert_eq!(b.post("/api/cache/invalidate", json!({"tags": ["others"]})).await.json()["invalidated"], 5);
    assert_eq!(b.delete("/api/cache/root").await.json(), json!({"deleted": true, "invalidated": 3}));
    let left = cluster.keys("tiercache:k:*");
    assert_eq!(left.len(), 9, "{left:?}");
    assert!(left.iter().all(|key| key.starts_with("tiercache:k:item:")));

    assert_eq!(b.delete("/api/cache").await.json(), json!({"cleared": 9}));
    assert!(cluster.keys("tiercache:*").is_empty());
}

#[tokio::test]
async fn invalidation_messages_reach_every_instance_through_the_cluster() {
    let cluster = RedisCluster::start().await;
    let a = TestApp::spawn_with_cluster(&cluster).await;
    let b = TestApp::spawn_with_cluster(&cluster).await;
    a.put("shared", json!({"value": 1})).await.assert_status(200);
    // a's own message about that write may still be in flight and drop b's first copy.
    eventually("b holds the value in L1", || async { b.get("/api/cache/shared").await.json()["source"] == "l1" }).await;
    eventually("b's subscription relays a's write", || async {
        a.put("shared", json!({"value": 2})).await.assert_status(200);
        b.get("/api/cache/shared").await.json()["value"] == 2
    })
    .await;
}
