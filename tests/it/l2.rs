//! Redis as L2: write-through, read-through with L1 fill, the envelope in Redis, index sets,
//! write policies, and outages (Redis killed and restarted, down at start-up).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{RedisServer, TestApp};

fn redis_ttl_ms(redis: &RedisServer, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query(&mut redis.client()).unwrap()
}

#[tokio::test]
async fn a_write_goes_through_to_redis_with_the_entry_ttl() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let response =
        app.put("user:1", json!({"value": {"n": 1}, "ttl": 120, "tags": ["users"], "depends_on": ["org:1"]})).await;
    assert_eq!(response.json()["l2"], "stored");
    let ttl = redis_ttl_ms(&redis, "tiercache:k:user:1");
    assert!((118_000..=120_000).contains(&ttl), "{ttl}");
    // Index sets live in their own namespaces, with an expiry of their own.
    let members: Vec<String> = redis::cmd("SMEMBERS").arg("tiercache:t:users").query(&mut redis.client()).unwrap();
    assert_eq!(members, vec!["user:1"]);
    let members: Vec<String> = redis::cmd("SMEMBERS").arg("tiercache:d:org:1").query(&mut redis.client()).unwrap();
    assert_eq!(members, vec!["user:1"]);
    assert!(redis_ttl_ms(&redis, "tiercache:t:users") > 100_000);
    assert!(redis_ttl_ms(&redis, "tiercache:d:org:1") > 100_000);
    // The value is stored in the versioned envelope, not as JSON.
    let raw: Vec<u8> = redis::cmd("GET").arg("tiercache:k:user:1").query(&mut redis.client()).unwrap();
    assert_eq!(&raw[..3], b"TC\x01");
}

/// A write (index records, SET, the dependents lookup and the invalidation message) is one
/// pipeline: Redis reads it from the socket once, where three round trips were three reads.
#[tokio::test]
async fn a_write_and_its_announcement_are_one_round_trip() {
    let redis = RedisServer::start().await;
    let writer = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let reader = TestApp::spawn_with_redis(&redis, |_| {}).await;
    writer.put("warm-up", json!({"value": 0})).await.assert_status(200);
    const WRITES: u64 = 20;
    let before = redis.stat("total_reads_processed");
    for n in 0..WRITES {
        let response = writer.put(&format!("k{n}"), json!({"value": n, "tags": ["t"], "depends_on": ["p"]})).await;
        assert_eq!(response.json()["l2"], "stored");
    }
    // Less than two reads per write, leaving room for the INFO calls and a health ping.
    let reads = redis.stat("total_reads_processed") - before;
    assert!(reads < WRITES * 3 / 2, "{reads} socket reads for {WRITES} writes");
    // Everything the pipeline carried took effect, the announcement included.
    let members: Vec<String> = redis::cmd("SMEMBERS").arg("tiercache:t:t").query(&mut redis.client()).unwrap();
    assert_eq!(members.len(), WRITES as usize);
    reader.wait_received(2 + WRITES).await;
}

#[tokio::test]
async fn an_l2_hit_fills_l1_with_the_remaining_ttl() {
    let redis = RedisServer::start().await;
    let writer = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let reader = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let expires_at =
        writer.put("k", json!({"value": "v", "ttl": 60, "tags": ["t"]})).await.json()["expires_at"].clone();
    reader.wait_received(2).await;

    let first = reader.get("/api/cache/k").await;
    assert_eq!(first.json()["source"], "l2");
    assert_eq!(first.header("x-cache-source").as_deref(), Some("l2"));
    assert_eq!(first.json()["expires_at"], expires_at, "the L1 copy keeps the entry's expiry, never a longer one");
    assert_eq!(first.json()["tags"], json!(["t"]));
    let second = reader.get("/api/cache/k").await;
    assert_eq!(second.json()["source"], "l1");
    assert_eq!(second.json()["expires_at"], expires_at);
    assert_eq!(reader.metric("l2_hits").await, 1);
    assert_eq!(reader.metric("hits").await, 2);
}

#[tokio::test]
async fn l1_max_ttl_bounds_how_long_an_l1_copy_lives() {
    let redis = RedisServer::start().await;
    let writer = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let reader = TestApp::spawn_with_redis(&redis, |s| s.l1.max_ttl_secs = 1).await;
    writer.put("k", json!({"value": "old", "ttl": 600})).await.assert_status(200);
    writer.put("source", json!({"value": "new", "ttl": 600})).await.assert_status(200);
    reader.wait_received(3).await;
    assert_eq!(reader.get("/api/cache/k").await.json()["value"], "old");
    assert_eq!(reader.get("/api/cache/k").await.json()["source"], "l1");
    // Another program changes Redis without telling anyone.
    let _: () = redis::cmd("COPY")
        .arg("tiercache:k:source")
        .arg("tiercache:k:k")
        .arg("REPLACE")
        .query(&mut redis.client())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body = reader.get("/api/cache/k").await.json();
    assert_eq!((body["value"].as_str(), body["source"].as_str()), (Some("new"), Some("l2")), "{body}");
}

#[tokio::test]
async fn batch_get_reads_l1_misses_from_l2_in_one_go() {
    let redis = RedisServer::start().await;
    let writer = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let reader = TestApp::spawn_with_redis(&redis, |_| {}).await;
    writer
        .post("/api/cache/batch/set", json!({"entries": [{"key": "a", "value": 1}, {"key": "b", "value": 2}]}))
        .await
        .assert_status(200);
    reader.wait_received(2).await;
    reader.get("/api/cache/a").await.assert_status(200);
    let body = reader.post("/api/cache/batch/get", json!({"keys": ["a", "b", "c"]})).await.json();
    assert_eq!(body["entries"]["a"]["source"], "l1");
    assert_eq!(body["entries"]["b"]["source"], "l2");
    assert_eq!(body["entries"]["b"]["value"], 2);
    assert_eq!(body["missing"], json!(["c"]));
}

#[tokio::test]
async fn large_values_are_stored_compressed_and_read_back_intact() {
    let redis = RedisServer::start().await;
    let writer = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let reader = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let value = "compressible text ".repeat(500);
    writer.put("big", json!({ "value": value })).await.assert_status(200);
    let stored: usize = redis::cmd("STRLEN").arg("tiercache:k:big").query(&mut redis.client()).unwrap();
    assert!(stored < value.len() / 5, "{stored} bytes stored for {}", value.len());
    let ratio = writer.metric("compression_ratio").await.as_f64().unwrap();
    assert!(ratio > 0.0 && ratio < 0.2, "{ratio}");
    assert_eq!(reader.get("/api/cache/big").await.json()["value"], value.as_str());
}

#[tokio::test]
async fn malformed_values_in_redis_are_misses_counted_as_l2_errors() {
    let redis = RedisServer::start().await;
    let app = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let _: () = redis::cmd("SET").arg("tiercache:k:junk").arg("not an envelope").query(&mut redis.client()).unwrap();
    let mut truncated: Vec<u8> = b"TC\x01\x00".to_vec();
    truncated.extend_from_slice(&[0xff; 9]);
    let _: () = redis::cmd("SET").arg("tiercache:k:cut").arg(truncated).query(&mut redis.client()).unwrap();
    app.get("/api/cache/junk").await.assert_status(404);
    app.get("/api/cache/cut").await.assert_status(404);
    assert_eq!(app.metric("l2_errors").await, 2);
    app.get("/health").await.assert_status(200);
}

#[tokio::test]
async fn clear_empties_l1_l2_and_peers() {
    let redis = RedisServer::start().await;
    let a = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let b = TestApp::spawn_with_redis(&redis, |_| {}).await;
    for idx in 0..3 {
        a.put(&format!("k{idx}"), json!({"value": idx, "tags": ["t"]})).await.assert_status(200);
        b.get(&format!("/api/cache/k{idx}")).await.assert_status(200);
    }
    assert_eq!(a.delete("/api/cache").await.json(), json!({"cleared": 3}));
    let keys: Vec<String> = redis::cmd("KEYS").arg("tiercache:*").query(&mut redis.client()).unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    crate::harness::eventually("b's L1 is cleared", || async { b.metric("l1_size").await == 0 }).await;
    b.get("/api/cache/k0").await.assert_status(404);
}

#[tokio::test]
async fn reads_survive_redis_dying_and_the_service_recovers_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let a = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let b = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let received = b.metric("invalidations_received").await.as_u64().unwrap();
    a.put("kept", json!({"value": "in l1"})).await.assert_status(200);
    // The message about a's write must reach b before b caches the key, or it drops b's copy.
    b.wait_received(received + 1).await;
    b.get("/api/cache/kept").await.assert_status(200);

    redis.kill();
    // L1 keeps answering, and no request waits much longer than l2.timeout_ms (100 ms).
    let started = Instant::now();
    assert_eq!(b.get("/api/cache/kept").await.json()["source"], "l1");
    let response = a.put("during", json!({"value": 1})).await;
    assert_eq!(response.json()["l2"], "unavailable");
    b.get("/api/cache/never-written").await.assert_status(404);
    assert!(started.elapsed() < Duration::from_millis(600), "{:?}", started.elapsed());
    a.wait_for_l2("down").await;
    assert_eq!(a.metric("l2_status").await, "down");
    // With the breaker open, calls skip Redis entirely.
    let started = Instant::now();
    for idx in 0..20 {
        a.put(&format!("fast{idx}"), json!({"value": idx})).await.assert_status(200);
    }
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());

    redis.restart().await;
    a.wait_for_l2("up").await;
    b.wait_for_l2("up").await;
    // b resubscribed and cleared its L1: invalidations may have been missed meanwhile.
    crate::harness::eventually("b flushed its L1", || async { b.metric("l1_size").await == 0 }).await;
    b.wait_subscribed(&redis).await;
    assert_eq!(a.put("after", json!({"value": 2})).await.json()["l2"], "stored");
    assert_eq!(b.get("/api/cache/after").await.json()["source"], "l2");
}

#[tokio::test]
async fn no_request_waits_much_longer_than_the_l2_timeout_for_a_frozen_redis() {
    // Wide margins on purpose: the bounds are behaviour (one timeout, or none), not speed.
    const TIMEOUT: Duration = Duration::from_millis(1500);
    const NO_WAIT: Duration = Duration::from_millis(750);
    let redis = RedisServer::start().await;
    let app = TestApp::spawn_with_redis(&redis, |s| {
        s.l2.timeout_ms = TIMEOUT.as_millis() as u64;
        s.l2.breaker_failures = 3;
    })
    .await;
    app.put("resident", json!({"value": 1})).await.assert_status(200);
    redis.freeze(true);

    let started = Instant::now();
    assert_eq!(app.get("/api/cache/resident").await.json()["source"], "l1");
    assert!(started.elapsed() < NO_WAIT, "an L1 hit never touches Redis");

    let started = Instant::now();
    app.get("/api/cache/elsewhere").await.assert_status(404);
    let waited = started.elapsed();
    assert!(waited >= TIMEOUT - Duration::from_millis(100) && waited < TIMEOUT + NO_WAIT, "{waited:?}");

    let started = Instant::now();
    assert_eq!(app.put("w", json!({"value": 2})).await.json()["l2"], "unavailable");
    let waited = started.elapsed();
    assert!(waited < TIMEOUT + NO_WAIT, "one L2 attempt per request, then none: {waited:?}");

    app.wait_for_l2("down").await;
    let started = Instant::now();
    app.get("/api/cache/elsewhere").await.assert_status(404);
    assert!(started.elapsed() < NO_WAIT, "the open breaker skips Redis");
    redis.freeze(false);
    app.wait_for_l2("up").await;
}

#[tokio::test]
async fn redis_down_at_start_up_is_not_fatal() {
    let mut redis = RedisServer::start().await;
    redis.kill();
    let url = redis.url();
    let app = TestApp::spawn(move |s| s.l2.url = tiercache::config::Secret(url)).await;
    assert_eq!(app.get("/health").await.json()["l2"], "down");
    app.get("/ready").await.assert_status(200);
    assert_eq!(app.put("k", json!({"value": 1})).await.json()["l2"], "unavailable");
    assert_eq!(app.get("/api/cache/k").await.json()["source"], "l1");
    redis.restart().await;
    app.wait_for_l2("up").await;
    assert_eq!(app.put("k", json!({"value": 2})).await.json()["l2"], "stored");
}

#[tokio::test]
async fn the_required_policy_answers_503_and_leaves_nothing_in_l1() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::spawn_with_redis(&redis, |s| s.l2.write_policy = tiercache::config::WritePolicy::Required).await;
    assert_eq!(app.put("k", json!({"value": 1})).await.json()["l2"], "stored");
    redis.kill();
    app.put("k", json!({"value": 2})).await.assert_error(503, "l2_unavailable");
    app.put("new", json!({"value": 3})).await.assert_error(503, "l2_unavailable");
    app.get("/api/cache/new").await.assert_status(404);
    app.get("/api/cache/k").await.assert_status(404);
    app.post("/api/cache/batch/set", json!({"entries": [{"key": "b", "value": 1}]}))
        .await
        .assert_error(503, "l2_unavailable");
    app.get("/api/cache/b").await.assert_status(404);
}

#[tokio::test]
async fn an_invalidation_that_cannot_reach_l2_says_so() {
    let mut redis = RedisServer::start().await;
    let app = TestApp::spawn_with_redis(&redis, |_| {}).await;
    app.put("k", json!({"value": 1})).await.assert_status(200);
    redis.kill();
    app.delete("/api/cache/k").await.assert_error(503, "l2_unavailable");
    app.post("/api/cache/invalidate", json!({"tags": ["t"]})).await.assert_error(503, "l2_unavailable");
    assert_eq!(app.metric("l1_size").await, 0, "L1 was invalidated all the same");
}

#[tokio::test]
async fn rediss_urls_use_tls_and_verify_the_server_certificate() {
    let redis = crate::harness::TlsRedisServer::start().await;
    let url = redis.url();
    let ca_file = redis.ca_file.to_string_lossy().into_owned();
    // Trusting the CA (through the system trust store's SSL_CERT_FILE override): L2 is up.
    let trusted =
        crate::harness::ServiceProcess::start(&[("REDIS_URL", url.as_str()), ("SSL_CERT_FILE", ca_file.as_str())])
            .await;
    let client = crate::harness::client();
    let health = format!("{}/health", trusted.base);
    crate::harness::eventually("l2 is up over TLS", || async {
        client.get(&health).send().await.unwrap().json::<serde_json::Value>().await.unwrap()["l2"] == "up"
    })
    .await;
    let put = client
        .put(format!("{}/api/cache/secure", trusted.base))
        .header("content-type", "application/json")
        .body(r#"{"value":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(put.json::<serde_json::Value>().await.unwrap()["l2"], "stored");

    // Not trusting it: the connection is refused and L2 stays down.
    let untrusted = crate::harness::ServiceProcess::start(&[("REDIS_URL", url.as_str())]).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let health = client.get(format!("{}/health", untrusted.base)).send().await.unwrap();
    assert_eq!(health.json::<serde_json::Value>().await.unwrap()["l2"], "down");
}

#[tokio::test]
async fn a_password_protected_redis_is_reached_with_redis_password() {
    let redis = RedisServer::start_with(&["--requirepass", "s3cret-pw"]).await;
    let url = redis.url();
    let with_password =
        crate::harness::ServiceProcess::start(&[("REDIS_URL", url.as_str()), ("REDIS_PASSWORD", "s3cret-pw")]).await;
    let without = crate::harness::ServiceProcess::start(&[("REDIS_URL", url.as_str())]).await;
    let client = crate::harness::client();
    let health = format!("{}/health", with_password.base);
    crate::harness::eventually("l2 is up with the password", || async {
        client.get(&health).send().await.unwrap().json::<serde_json::Value>().await.unwrap()["l2"] == "up"
    })
    .await;
    // Without it every command answers NOAUTH: the breaker opens (5 pings) and L2 is down.
    let health = format!("{}/health", without.base);
    crate::harness::eventually("l2 is down without the password", || async {
        client.get(&health).send().await.unwrap().json::<serde_json::Value>().await.unwrap()["l2"] == "down"
    })
    .await;
}

#[tokio::test]
async fn a_restart_restores_only_what_l2_still_holds_from_its_snapshot() {
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.snapshot").display().to_string();
    let with_snapshot = |path: String| move |s: &mut tiercache::Settings| s.persistence.path = path;
    let a = TestApp::spawn_with_redis(&redis, with_snapshot(path.clone())).await;
    let b = TestApp::spawn_with_redis(&redis, |_| {}).await;
    for key in ["kept", "rewritten", "deleted"] {
        a.put(key, json!({"value": 1})).await.assert_status(200);
    }
    a.shutdown().await; // The final snapshot holds all three.
                        // While a is down, b changes two of them; a never hears of it.
    b.put("rewritten", json!({"value": 2})).await.assert_status(200);
    b.delete("/api/cache/deleted").await.assert_status(200);

    let a = TestApp::spawn_with_redis(&redis, with_snapshot(path.clone())).await;
    crate::harness::eventually("the restore ran", || async { a.metric("l1_size").await.as_u64() == Some(1) }).await;
    let kept = a.get("/api/cache/kept").await.json();
    assert_eq!(
        (kept["value"].clone(), kept["source"].clone()),
        (json!(1), json!("l1")),
        "an unchanged entry is restored"
    );
    assert_eq!(a.get("/api/cache/rewritten").await.json()["value"], 2, "never the snapshot's older value");
    a.get("/api/cache/deleted").await.assert_status(404);
}
