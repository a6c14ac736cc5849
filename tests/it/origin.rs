//! Read-through (SPEC §6): origin fetches, Cache-Control, 404s and failures, coalescing,
//! stale serving and batch read-through, against a real origin server on loopback.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{client, eventually, RedisServer, Reply, TestApp, TestOrigin};

#[tokio::test]
async fn a_miss_reads_through_to_the_origin_then_hits_l1_and_l2() {
    let redis = RedisServer::start().await;
    let origin = TestOrigin::start().await;
    let url = origin.url();
    let first = TestApp::spawn_with_redis(&redis, |s| s.origin.url = url.clone()).await;
    let second = TestApp::spawn_with_redis(&redis, |s| s.origin.url = url).await;

    let fetched = first.get("/api/cache/item:1").await;
    fetched.assert_status(200);
    let body = fetched.json();
    assert_eq!(body["value"], json!({"key": "item:1", "fetch": 1}));
    assert_eq!((body["hit"].clone(), body["source"].clone()), (json!(false), json!("origin")));
    let ttl = body["ttl_remaining"].as_u64().unwrap();
    assert!((299..=300).contains(&ttl), "origin.default_ttl_secs without Cache-Control: {ttl}");
    assert_eq!(fetched.header("x-cache").as_deref(), Some("MISS"));
    assert_eq!(fetched.header("x-cache-source").as_deref(), Some("origin"));
    let cache_status = fetched.header("cache-status").unwrap();
    let status_ttl = cache_status.strip_prefix("tiercache; fwd=miss; fwd-status=200; stored; ttl=");
    assert!(matches!(status_ttl, Some("299" | "300")), "{cache_status}");

    let from_l1 = first.get("/api/cache/item:1").await;
    assert_eq!(from_l1.json()["source"], "l1");
    assert_eq!(from_l1.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(from_l1.header("cache-status").as_deref(), Some("tiercache; hit"));
    let from_l2 = second.get("/api/cache/item:1").await;
    assert_eq!(from_l2.json()["source"], "l2");
    assert_eq!(from_l2.json()["value"], json!({"key": "item:1", "fetch": 1}));
    assert_eq!(from_l2.header("cache-status").as_deref(), Some("tiercache; hit; detail=l2"));
    assert_eq!(origin.count("item:1"), 1, "one origin request served three reads on two instances");
    assert_eq!(first.metric("origin_fetches").await, 1);
    assert_eq!(first.metric("misses").await, 1);
}

#[tokio::test]
async fn keys_reach_the_origin_percent_encoded_as_one_segment() {
    let origin = TestOrigin::start().await;
    let app = TestApp::spawn_with_origin(&origin, |_| {}).await;
    let response = app.get("/api/cache/users/1%20x%3Fy").await;
    response.assert_status(200);
    assert_eq!(response.json()["value"]["key"], "users/1 x?y");
    assert_eq!(origin.count("users/1 x?y"), 1);
}

#[tokio::test]
async fn cache_control_sets_the_ttl_and_no_store_is_not_kept() {
    let origin = TestOrigin::start().await;
    origin.set("short", Reply::cache_control("public, max-age=1"));
    origin.set("shared", Reply::cache_control("max-age=600, s-maxage=120"));
    origin.set("volatile", Reply::cache_control("no-store"));
    let app = TestApp::spawn_with_origin(&origin, |_| {}).await;

    let shared = app.get("/api/cache/shared").await.json()["ttl_remaining"].as_u64().unwrap();
    assert!((119..=120).contains(&shared), "s-maxage wins: {shared}");
    let short = app.get("/api/cache/short").await.json()["ttl_remaining"].as_u64().unwrap();
    assert!(short <= 1, "max-age=1: {short}");
    assert_eq!(app.get("/api/cache/short").await.json()["source"], "l1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refetched = app.get("/api/cache/short").await;
    assert_eq!(refetched.json()["source"], "origin", "max-age=1 expired after a second");
    assert_eq!(refetched.json()["value"]["fetch"], 2);

    for fetch in 1..=2 {
        let response = app.get("/api/cache/volatile").await;
        response.assert_status(200);
        assert_eq!(response.json()["value"]["fetch"], fetch);
        assert_eq!(response.json()["source"], "origin");
        assert_eq!(response.header("cache-control").as_deref(), Some("no-store"));
        assert_eq!(response.header("cache-status").as_deref(), Some("tiercache; fwd=miss; fwd-status=200"));
    }
    assert_eq!(origin.count("volatile"), 2, "no-store is served, never cached");
}

#[tokio::test]
async fn an_origin_404_is_a_miss_remembered_only_when_configured() {
    let origin = TestOrigin::start().await;
    origin.set("gone", Reply::status(404));
    let plain = TestApp::spawn_with_origin(&origin, |_| {}).await;
    for _ in 0..2 {
        let response = plain.get("/api/cache/gone").await;
        response.assert_status(404);
        assert_eq!(response.json(), json!({"key": "gone", "hit": false}));
        assert_eq!(response.header("x-cache").as_deref(), Some("MISS"));
        assert_eq!(response.header("cache-status").as_deref(), Some("tiercache; fwd=miss; fwd-status=404"));
    }
    assert_eq!(origin.count("gone"), 2);

    let origin = TestOrigin::start().await;
    origin.set("gone", Reply::status(404));
    let remembering = TestApp::spawn_with_origin(&origin, |s| s.origin.negative_ttl_secs = 60).await;
    let first = remembering.get("/api/cache/gone").await;
    first.assert_status(404);
    assert_eq!(first.header("cache-status").as_deref(), Some("tiercache; fwd=miss; fwd-status=404; stored"));
    let second = remembering.get("/api/cache/gone").await;
    second.assert_status(404);
    assert_eq!(second.header("cache-status").as_deref(), Some("tiercache; hit; detail=negative"));
    let batch = remembering.post("/api/cache/batch/get", json!({"keys": ["gone"]})).await;
    assert_eq!(batch.json()["missing"], json!(["gone"]));
    assert_eq!(origin.count("gone"), 1, "the 404 was remembered");

    remembering.put("gone", json!({"value": "back"})).await.assert_status(200);
    assert_eq!(remembering.get("/api/cache/gone").await.json()["value"], "back", "a write replaces a remembered 404");
}

#[tokio::test]
async fn origin_failures_answer_502_in_the_error_shape() {
    let origin = TestOrigin::start().await;
    origin.set("broken", Reply::status(500));
    origin.set("slow", Reply::delayed(Duration::from_secs(3)));
    origin.set("garbage", Reply::body("<html>not json</html>"));
    origin.set("teapot", Reply::status(418));
    let app = TestApp::spawn_with_origin(&origin, |s| s.origin.timeout_ms = 300).await;

    let broken = app.get("/api/cache/broken").await;
    broken.assert_error(502, "origin_error");
    assert_eq!(broken.header("cache-status").as_deref(), Some("tiercache; fwd=miss; detail=origin-error"));
    app.get("/api/cache/garbage").await.assert_error(502, "origin_error");
    app.get("/api/cache/teapot").await.assert_error(502, "origin_error");
    let started = Instant::now();
    app.get("/api/cache/slow").await.assert_error(502, "origin_timeout");
    assert!(started.elapsed() < Duration::from_millis(2000), "gave up at origin.timeout_ms: {:?}", started.elapsed());
    assert_eq!(app.get("/api/cache/broken").await.status, 502, "failures are not cached");
    assert_eq!(origin.count("broken"), 2);
    assert_eq!(app.metric("origin_errors").await, 5);
    assert_eq!(app.get("/api/cache/fine").await.status, 200, "other keys are unaffected");

    let closed_port = crate::harness::free_port();
    let unreachable = TestApp::spawn(|s| s.origin.url = format!("http://127.0.0.1:{closed_port}/items/{{key}}")).await;
    unreachable.get("/api/cache/k").await.assert_error(502, "origin_error");
}

#[tokio::test]
async fn concurrent_misses_of_one_key_make_one_origin_request() {
    let origin = TestOrigin::start().await;
    origin.set("hot", Reply::delayed(Duration::from_millis(300)));
    let app = TestApp::spawn_with_origin(&origin, |_| {}).await;
    let requests = (0..200).map(|_| {
        let url = format!("{}/api/cache/hot", app.base);
        async move {
            let response = client().get(url).send().await.expect("the request is answered");
            let status = response.status().as_u16();
            let etag = response.headers().get("etag").map(|value| value.to_str().unwrap().to_string());
            (status, etag, response.text().await.unwrap())
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    assert_eq!(origin.count("hot"), 1, "exactly one origin request for 200 concurrent misses");
    let (status, etag, _) = &answers[0];
    assert_eq!(*status, 200);
    for (other_status, other_etag, body) in &answers {
        assert_eq!((other_status, other_etag), (status, etag), "every waiter gets the same result: {body}");
    }
    let coalesced = app.metric("coalesced").await.as_u64().unwrap();
    let hits = app.metric("hits").await.as_u64().unwrap();
    assert_eq!(coalesced + hits, 199, "the others joined the flight, or came after it filled L1");
    assert!(coalesced > 0);
}

#[tokio::test]
async fn a_client_that_disconnects_does_not_cancel_the_fetch_for_the_others() {
    let origin = TestOrigin::start().await;
    origin.set("k", Reply::delayed(Duration::from_millis(400)));
    let app = TestApp::spawn_with_origin(&origin, |_| {}).await;
    let url = format!("{}/api/cache/k", app.base);
    let impatient = tokio::spawn({
        let url = url.clone();
        async move { client().get(url).timeout(Duration::from_millis(100)).send().await.is_err() }
    });
    eventually("the first request reached the origin", || async { origin.count("k") == 1 }).await;
    let patient: Vec<_> = (0..3).map(|_| tokio::spawn(client().get(url.clone()).send())).collect();
    assert!(impatient.await.unwrap(), "the first client gave up and disconnected");
    for request in patient {
        let response = request.await.unwrap().expect("answered");
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["value"]["fetch"], 1);
    }
    assert_eq!(origin.count("k"), 1);
    assert_eq!(app.get("/api/cache/k").await.json()["source"], "l1", "the detached fetch filled the cache");
}

#[tokio::test]
async fn concurrent_l2_reads_of_one_key_are_coalesced() {
    let redis = RedisServer::start().await;
    let writer = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let reader = TestApp::spawn_with_redis(&redis, |_| {}).await;
    writer.put("shared", json!({"value": 42})).await.assert_status(200);
    let mut connection = redis.client();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut connection).unwrap();

    // Freeze Redis so that every read arrives while the first L2 GET is still waiting.
    redis.freeze(true);
    let requests: Vec<_> =
        (0..30).map(|_| tokio::spawn(client().get(format!("{}/api/cache/shared", reader.base)).send())).collect();
    eventually("every read waits in the flight", || async {
        reader.metric("coalesced").await.as_u64().unwrap_or(0) == 29
    })
    .await;
    redis.freeze(false);
    for request in requests {
        let body: serde_json::Value = request.await.unwrap().expect("answered").json().await.unwrap();
        assert_eq!((body["value"].clone(), body["source"].clone()), (json!(42), json!("l2")));
    }
    assert_eq!(redis.calls("mget"), 1, "one L2 read for 30 reads");
    assert_eq!(redis.calls("get"), 0);
}

/// Reads of different keys that miss L1 together share one MGET (`engine/l2/batch.rs`):
/// while one batch waits on Redis, the reads behind it queue and go as the next one.
#[tokio::test]
async fn concurrent_l2_reads_of_different_keys_are_batched() {
    let redis = RedisServer::start().await;
    let writer = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let reader = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let entries: Vec<_> = (0..20).map(|idx| json!({"key": format!("k{idx}"), "value": idx})).collect();
    writer.post("/api/cache/batch/set", json!({ "entries": entries })).await.assert_status(200);
    let mut connection = redis.client();
    let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut connection).unwrap();

    redis.freeze(true);
    let requests: Vec<_> =
        (0..20).map(|idx| tokio::spawn(client().get(format!("{}/api/cache/k{idx}", reader.base)).send())).collect();
    // Bounded: the reads reach the reader and queue behind the first batch, which Redis holds.
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.freeze(false);
    for (idx, request) in requests.into_iter().enumerate() {
        let body: serde_json::Value = request.await.unwrap().expect("answered").json().await.unwrap();
        assert_eq!((body["value"].clone(), body["source"].clone()), (json!(idx), json!("l2")));
    }
    let calls = redis.calls("mget");
    assert!((1..=3).contains(&calls), "20 reads in at most 3 MGETs, got {calls}");
    assert_eq!(redis.calls("get"), 0);
}

#[tokio::test]
async fn an_expired_entry_is_served_stale_while_exactly_one_refresh_runs() {
    let origin = TestOrigin::start().await;
    origin.set("k", Reply::cache_control("max-age=1"));
    let app = TestApp::spawn_with_origin(&origin, |s| s.cache.grace_secs = 30).await;
    assert_eq!(app.get("/api/cache/k").await.json()["value"]["fetch"], 1);
    origin.set("k", Reply { delay: Duration::from_millis(1500), ..Reply::cache_control("max-age=60") });
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let reads = (0..20).map(|_| app.get("/api/cache/k"));
    let answers = futures_util::future::join_all(reads).await;
    assert_eq!(origin.count("k"), 2, "the refresh started");
    assert_eq!(app.get("/api/cache/k").await.json()["stale"], true, "the answers came before the refresh did");
    for answer in &answers {
        answer.assert_status(200);
        let body = answer.json();
        assert_eq!((body["stale"].clone(), body["hit"].clone()), (json!(true), json!(true)));
        assert_eq!(body["value"]["fetch"], 1);
        assert_eq!(body["ttl_remaining"], 0);
        assert_eq!(answer.header("x-cache").as_deref(), Some("STALE"));
        assert!(answer.header("cache-status").unwrap().starts_with("tiercache; hit; fwd=stale; ttl=-"));
    }
    eventually("the refresh landed", || async { app.get("/api/cache/k").await.json()["stale"].is_null() }).await;
    let fresh = app.get("/api/cache/k").await;
    assert_eq!(fresh.json()["value"]["fetch"], 2);
    assert_eq!(fresh.header("x-cache").as_deref(), Some("HIT"));
    assert_eq!(origin.count("k"), 2, "exactly one background refresh");
    assert!(app.metric("stale_served").await.as_u64().unwrap() >= 20);
}

#[tokio::test]
async fn a_failing_origin_is_covered_by_the_stale_copy_until_grace_ends() {
    let origin = TestOrigin::start().await;
    origin.set("k", Reply::cache_control("max-age=1"));
    let app = TestApp::spawn_with_origin(&origin, |s| s.cache.grace_secs = 2).await;
    app.get("/api/cache/k").await.assert_status(200);
    origin.set("k", Reply::status(503));
    tokio::time::sleep(Duration::from_millis(1100)).await;

    for _ in 0..3 {
        let stale = app.get("/api/cache/k").await;
        stale.assert_status(200);
        assert_eq!(stale.json()["stale"], true);
        assert_eq!(stale.json()["value"]["fetch"], 1);
        eventually("the refresh failed", || async { app.metric("origin_errors").await.as_u64().unwrap() >= 1 }).await;
    }
    assert!(app.metric("stale_served").await.as_u64().unwrap() >= 3);
    assert_eq!(app.metric("hits").await, 0, "stale answers are counted apart from hits");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    app.get("/api/cache/k").await.assert_error(502, "origin_error");
}

#[tokio::test]
async fn a_copy_that_cannot_be_revalidated_is_served_as_a_fail_safe() {
    let mut redis = RedisServer::start().await;
    let origin = TestOrigin::start().await;
    let url = origin.url();
    let app = TestApp::spawn_with_redis(&redis, |s| {
        s.origin.url = url;
        s.cache.grace_secs = 30;
        s.l1.max_ttl_secs = 1;
    })
    .await;
    app.get("/api/cache/k").await.assert_status(200);
    redis.kill();
    origin.set("k", Reply::status(500));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = app.get("/api/cache/k").await;
    response.assert_status(200);
    assert_eq!(response.json()["stale"], true);
    assert_eq!(response.json()["value"]["fetch"], 1);
    assert!(response.header("cache-status").unwrap().ends_with("detail=fail-safe"));
}

#[tokio::test]
async fn grace_serves_an_expired_put_marked_stale_without_an_origin() {
    let app = TestApp::spawn(|s| s.cache.grace_secs = 30).await;
    app.put("k", json!({"value": 1, "ttl": 1})).await.assert_status(200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stale = app.get("/api/cache/k").await;
    stale.assert_status(200);
    assert_eq!(stale.json()["stale"], true);
    assert!(stale.header("cache-status").unwrap().ends_with("detail=stale"));
    let batch = app.post("/api/cache/batch/get", json!({"keys": ["k"]})).await.json();
    assert_eq!(batch["entries"]["k"]["stale"], true);

    let strict = TestApp::spawn(|_| {}).await;
    strict.put("k", json!({"value": 1, "ttl": 1})).await.assert_status(200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    strict.get("/api/cache/k").await.assert_status(404);
}

#[tokio::test]
async fn batch_get_reads_missing_keys_through_concurrently_and_bounded() {
    let origin = TestOrigin::start().await;
    origin.set_default(Reply::delayed(Duration::from_millis(200)));
    origin.set("gone", Reply { delay: Duration::from_millis(200), ..Reply::status(404) });
    origin.set("broken", Reply { delay: Duration::from_millis(200), ..Reply::status(500) });
    let app = TestApp::spawn_with_origin(&origin, |s| s.origin.max_concurrency = 3).await;
    app.put("cached", json!({"value": "here"})).await.assert_status(200);

    let keys = json!(["cached", "a", "b", "c", "d", "e", "f", "gone", "broken"]);
    let response = app.post("/api/cache/batch/get", json!({"keys": keys})).await;
    response.assert_status(200);
    let body = response.json();
    assert_eq!(body["entries"]["cached"]["source"], "l1");
    for key in ["a", "b", "c", "d", "e", "f"] {
        assert_eq!(body["entries"][key]["source"], "origin", "{key}");
        assert_eq!(body["entries"][key]["value"]["key"], key);
    }
    assert_eq!(body["missing"], json!(["gone", "broken"]));
    assert_eq!(origin.max_in_flight(), 3, "concurrent fetches, bounded by origin.max_concurrency");
    assert_eq!(origin.total(), 8);
    let again = app.post("/api/cache/batch/get", json!({"keys": ["a", "f"]})).await.json();
    assert_eq!(again["entries"]["a"]["source"], "l1");
    assert_eq!(origin.total(), 8);
}

#[tokio::test]
async fn batch_and_single_reads_of_one_key_share_a_fetch() {
    let origin = TestOrigin::start().await;
    origin.set("k", Reply::delayed(Duration::from_millis(400)));
    let app = TestApp::spawn_with_origin(&origin, |_| {}).await;
    let single = tokio::spawn(client().get(format!("{}/api/cache/k", app.base)).send());
    eventually("the single read reached the origin", || async { origin.count("k") == 1 }).await;
    let batch = app.post("/api/cache/batch/get", json!({"keys": ["k"]})).await.json();
    assert_eq!(batch["entries"]["k"]["source"], "origin");
    assert_eq!(single.await.unwrap().unwrap().status(), 200);
    assert_eq!(origin.count("k"), 1);
    assert_eq!(app.metric("coalesced").await, 1);
}

#[tokio::test]
async fn reads_held_open_by_a_slow_origin_count_against_max_concurrency() {
    let origin = TestOrigin::start().await;
    origin.set_default(Reply::delayed(Duration::from_millis(800)));
    let app = TestApp::spawn_with_origin(&origin, |s| s.server.max_concurrency = 3).await;
    let held: Vec<_> =
        (0..3).map(|idx| tokio::spawn(client().get(format!("{}/api/cache/slow{idx}", app.base)).send())).collect();
    eventually("three reads wait on the origin", || async { origin.total() == 3 }).await;
    app.get("/api/cache/one-too-many").await.assert_error(503, "overloaded");
    app.get("/health").await.assert_status(200);
    for request in held {
        assert_eq!(request.await.unwrap().unwrap().status(), 200, "the held reads complete");
    }
    app.get("/api/cache/now-fine").await.assert_status(200);
}
