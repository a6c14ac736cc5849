//! The fault proxy itself, and tiercache behind it: latency, a blackhole (accepted, never
//! answered) and resets between the service and Redis.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Fault, FaultProxy, RedisServer, TestApp};

/// Sends a RESP PING and waits up to `wait` for the reply; `None` when nothing came.
async fn ping(stream: &mut TcpStream, wait: Duration) -> Option<std::io::Result<Vec<u8>>> {
    stream.write_all(b"PING\r\n").await.ok()?;
    read_some(stream, wait).await
}

async fn read_some(stream: &mut TcpStream, wait: Duration) -> Option<std::io::Result<Vec<u8>>> {
    let mut buffer = [0u8; 64];
    match tokio::time::timeout(wait, stream.read(&mut buffer)).await {
        Err(_) => None,
        Ok(result) => Some(result.map(|n| buffer[..n].to_vec())),
    }
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(("127.0.0.1", proxy.port)))
        .await
        .expect("connect in time")
        .expect("the proxy accepts")
}

#[tokio::test]
async fn the_proxy_passes_delays_holds_and_resets_bytes() {
    let redis = RedisServer::start().await;
    let proxy = FaultProxy::start(redis.port).await;
    let mut stream = connect(&proxy).await;
    let pong = ping(&mut stream, Duration::from_secs(5)).await.expect("a reply").unwrap();
    assert_eq!(pong, b"+PONG\r\n");

    proxy.set(Fault::Latency(Duration::from_millis(300)));
    let started = Instant::now();
    let pong = ping(&mut stream, Duration::from_secs(5)).await.expect("a reply").unwrap();
    assert_eq!(pong, b"+PONG\r\n");
    // Both directions are delayed.
    assert!(started.elapsed() >= Duration::from_millis(600), "{:?}", started.elapsed());

    proxy.set(Fault::Blackhole);
    assert!(ping(&mut stream, Duration::from_millis(500)).await.is_none(), "a blackhole never answers");
    let mut during = connect(&proxy).await;
    assert!(ping(&mut during, Duration::from_millis(300)).await.is_none(), "new connections are accepted and held");
    proxy.heal();
    let held = read_some(&mut stream, Duration::from_secs(5)).await.expect("held bytes arrive at heal").unwrap();
    assert_eq!(held, b"+PONG\r\n");
    let held = read_some(&mut during, Duration::from_secs(5)).await.expect("and the held connection").unwrap();
    assert_eq!(held, b"+PONG\r\n");

    proxy.set(Fault::Reset);
    let reset = read_some(&mut stream, Duration::from_secs(5)).await.expect("a reset is immediate");
    assert!(matches!(&reset, Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset), "RST, not FIN: {reset:?}");
    let mut refused = connect(&proxy).await;
    let reset = read_some(&mut refused, Duration::from_secs(5)).await.expect("new connections are reset");
    assert!(matches!(&reset, Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset), "{reset:?}");

    proxy.heal();
    let mut healed = connect(&proxy).await;
    assert_eq!(ping(&mut healed, Duration::from_secs(5)).await.expect("a reply").unwrap(), b"+PONG\r\n");
}

#[tokio::test]
async fn behind_a_blackholed_redis_requests_wait_one_timeout_at_most_and_the_service_heals() {
    const TIMEOUT: Duration = Duration::from_millis(400);
    const MARGIN: Duration = Duration::from_millis(600);
    let redis = RedisServer::start().await;
    let proxy = FaultProxy::start(redis.port).await;
    let app = TestApp::spawn_with_redis_at(&redis, proxy.redis_url(), |s| {
        s.l2.timeout_ms = TIMEOUT.as_millis() as u64;
    })
    .await;
    app.put("resident", json!({"value": 1})).await.assert_status(200);
    proxy.set(Fault::Blackhole);

    let started = Instant::now();
    assert_eq!(app.get("/api/cache/resident").await.json()["source"], "l1");
    assert!(started.elapsed() < MARGIN, "an L1 hit never waits for Redis");
    for attempt in 0..3 {
        let started = Instant::now();
        app.get(&format!("/api/cache/elsewhere{attempt}")).await.assert_status(404);
        let response = app.put(&format!("w{attempt}"), json!({"value": attempt})).await;
        assert_eq!(response.json()["l2"], "unavailable");
        let batch = json!({"entries": [{"key": format!("b{attempt}"), "value": attempt}]});
        let response = app.post("/api/cache/batch/set", batch).await;
        assert_eq!(response.json()["l2"], "unavailable", "a batch says so as a PUT does");
        let waited = started.elapsed();
        assert!(waited < 3 * TIMEOUT + MARGIN, "attempt {attempt}: a read and two writes took {waited:?}");
    }
    app.wait_for_l2("down").await;
    assert!(proxy.accepted() >= 2, "the service's data and pub/sub connections go through the proxy");

    proxy.heal();
    app.wait_for_l2("up").await;
    crate::harness::eventually("a write is stored again", || async {
        app.put("after", json!({"value": 2})).await.json()["l2"] == "stored"
    })
    .await;
    let batch = json!({"entries": [{"key": "batched", "value": 3}]});
    assert_eq!(app.post("/api/cache/batch/set", batch).await.json()["l2"], "stored");
    let stored: Option<Vec<u8>> = redis::cmd("GET").arg("tiercache:k:after").query(&mut redis.client()).unwrap();
    assert!(stored.is_some(), "the write reached Redis through the healed proxy");
}

#[tokio::test]
async fn latency_under_the_timeout_slows_l2_without_failing_it() {
    let redis = RedisServer::start().await;
    let proxy = FaultProxy::start(redis.port).await;
    let a = TestApp::spawn_with_redis_at(&redis, proxy.redis_url(), |s| s.l2.timeout_ms = 2000).await;
    let b = TestApp::spawn_with_redis(&redis, |s| s.l2.timeout_ms = 2000).await;
    b.put("from-b", json!({"value": "b"})).await.assert_status(200);

    proxy.set(Fault::Latency(Duration::from_millis(150)));
    let started = Instant::now();
    let response = a.get("/api/cache/from-b").await;
    assert_eq!(response.json()["source"], "l2");
    assert!(started.elapsed() >= Duration::from_millis(300), "one round trip, both ways delayed");
    assert_eq!(a.put("from-a", json!({"value": "a"})).await.json()["l2"], "stored");
    assert_eq!(a.metric("l2_status").await, "up");
    assert_eq!(a.metric("l2_errors").await, 0);
}

#[tokio::test]
async fn a_reset_fails_calls_at_once_and_the_service_reconnects_after_heal() {
    let redis = RedisServer::start().await;
    let proxy = FaultProxy::start(redis.port).await;
    let app = TestApp::spawn_with_redis_at(&redis, proxy.redis_url(), |s| s.l2.timeout_ms = 3000).await;
    proxy.set(Fault::Reset);
    let started = Instant::now();
    assert_eq!(app.put("k", json!({"value": 1})).await.json()["l2"], "unavailable");
    assert!(started.elapsed() < Duration::from_millis(2500), "a reset is not a timeout: {:?}", started.elapsed());
    app.wait_for_l2("down").await;
    proxy.heal();
    app.wait_for_l2("up").await;
    crate::harness::eventually("writes are stored again", || async {
        app.put("k", json!({"value": 2})).await.json()["l2"] == "stored"
    })
    .await;
}

#[tokio::test]
async fn behind_a_blackholed_origin_misses_time_out_and_stale_copies_stand_in() {
    let origin = crate::harness::TestOrigin::start().await;
    origin.set_default(crate::harness::Reply::cache_control("max-age=1"));
    let proxy = FaultProxy::start(origin.port).await;
    let url = proxy.origin_url();
    let app = TestApp::spawn(move |s| {
        s.origin.url = url;
        s.origin.timeout_ms = 500;
        s.cache.grace_secs = 60;
    })
    .await;
    assert_eq!(app.get("/api/cache/known").await.json()["source"], "origin");
    tokio::time::sleep(Duration::from_millis(1100)).await; // Past max-age, within grace.

    proxy.set(Fault::Blackhole);
    let started = Instant::now();
    app.get("/api/cache/unknown").await.assert_error(502, "origin_timeout");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(450) && waited < Duration::from_millis(1500), "{waited:?}");
    let stale = app.get("/api/cache/known").await;
    assert_eq!(stale.json()["stale"], true, "the expired copy stands in: {}", stale.text());
    assert_eq!(stale.header("x-cache").as_deref(), Some("STALE"));

    proxy.heal();
    crate::harness::eventually("the origin answers again", || async {
        app.get("/api/cache/later").await.status == 200
    })
    .await;
}

#[tokio::test]
async fn a_call_queued_behind_a_stuck_batch_still_waits_one_timeout_at_most() {
    const TIMEOUT: Duration = Duration::from_millis(400);
    let redis = RedisServer::start().await;
    let proxy = FaultProxy::start(redis.port).await;
    let app = TestApp::spawn_with_redis_at(&redis, proxy.redis_url(), |s| {
        s.l2.timeout_ms = TIMEOUT.as_millis() as u64;
        s.l2.breaker_failures = 1000; // The breaker stays closed: every call goes to Redis.
    })
    .await;
    proxy.set(Fault::Blackhole);
    let app = std::sync::Arc::new(app);
    // A first read and a first write lead batches that Redis never answers...
    let leaders = {
        let app = app.clone();
        tokio::spawn(async move { tokio::join!(app.get("/api/cache/lead"), app.put("lead", json!({"value": 0}))) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...and these queue behind them: each must still answer within one timeout of arriving.
    let queued = (0..8).map(|idx| {
        let app = app.clone();
        async move {
            let (path, key) = (format!("/api/cache/q{idx}"), format!("q{idx}"));
            let started = Instant::now();
            let (read, write) = tokio::join!(app.get(&path), app.put(&key, json!({"value": idx})));
            read.assert_status(404);
            assert_eq!(write.json()["l2"], "unavailable");
            started.elapsed()
        }
    });
    let waits = futures_util::future::join_all(queued).await;
    leaders.await.unwrap();
    let longest = waits.iter().max().copied().unwrap();
    assert!(longest < TIMEOUT + Duration::from_millis(200), "a queued call waited {longest:?}: {waits:?}");
    proxy.heal();
}
