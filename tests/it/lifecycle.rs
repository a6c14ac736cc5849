//! Start-up load, warming and snapshots (SPEC §7): restore on restart, warm before ready,
//! warm sources and their errors, damaged files, and a crash during a snapshot write.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tiercache::Settings;

use crate::harness::{eventually, Reply, ServiceProcess, TestApp, TestOrigin};

fn with_snapshot(path: &Path) -> impl FnOnce(&mut Settings) + '_ {
    move |s: &mut Settings| {
        s.persistence.path = path.display().to_string();
        s.l1.max_entries = 500_000;
        s.l1.max_bytes = 1 << 30;
    }
}

/// Stores `count` entries `k{i}` → `{"n":i}` through batch/set.
async fn fill(app_base: &str, count: usize) {
    let client = crate::harness::client();
    for start in (0..count).step_by(2000) {
        let entries: Vec<Value> = (start..(start + 2000).min(count))
            .map(|idx| json!({"key": format!("k{idx}"), "value": {"n": idx}}))
            .collect();
        let response = client
            .post(format!("{app_base}/api/cache/batch/set"))
            .json(&json!({"entries": entries}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

#[tokio::test]
async fn a_restart_brings_back_values_ttls_tags_and_dependencies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.snapshot");
    let first = TestApp::spawn(with_snapshot(&path)).await;
    first.put("parent", json!({"value": {"p": 1}, "ttl": 600, "tags": ["family"]})).await.assert_status(200);
    let child = json!({"value": [1, 2], "ttl": 300, "tags": ["family", "young"], "depends_on": ["parent"]});
    first.put("child", child).await.assert_status(200);
    first.put("cousin", json!({"value": "c", "tags": ["young"]})).await.assert_status(200);
    first.put("short", json!({"value": null, "ttl": 1})).await.assert_status(200);
    let written = first.post("/api/cache/snapshot", json!(null)).await;
    written.assert_status(200);
    let info = written.json();
    assert_eq!(info["path"], path.display().to_string());
    assert_eq!(info["entries"], 4);
    assert_eq!(info["bytes"], std::fs::metadata(&path).unwrap().len());
    assert!(info["duration_ms"].is_u64());
    assert!(first.metric("snapshot_last_success").await.as_str().unwrap().ends_with('Z'));
    let expires_at = first.get("/api/cache/child").await.json()["expires_at"].clone();
    first.shutdown().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let second = TestApp::spawn(with_snapshot(&path)).await;
    eventually("the restore finished", || async { second.metric("l1_size").await == 3 }).await;
    let child = second.get("/api/cache/child").await.json();
    assert_eq!(child["value"], json!([1, 2]));
    assert_eq!(child["tags"], json!(["family", "young"]));
    assert_eq!(child["expires_at"], expires_at, "absolute expiry survives the restart");
    second.get("/api/cache/short").await.assert_status(404);
    second.put("parent", json!({"value": {"p": 2}})).await.assert_status(200);
    second.get("/api/cache/child").await.assert_status(404);
    let invalidated = second.post("/api/cache/invalidate", json!({"tags": ["young"]})).await.json();
    assert_eq!(invalidated["invalidated"], 1, "the tag index was rebuilt (child went with the cascade)");
    second.get("/api/cache/cousin").await.assert_status(404);
}

#[tokio::test]
async fn a_large_snapshot_is_restored_in_the_background_without_overwriting_new_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.snapshot");
    let count = 40_000;
    let first = TestApp::spawn(with_snapshot(&path)).await;
    fill(&first.base, count).await;
    first.shutdown().await;
    assert!(std::fs::metadata(&path).unwrap().len() > 400_000, "the shutdown wrote a snapshot");

    let second = TestApp::spawn(with_snapshot(&path)).await;
    second.get("/ready").await.assert_status(200);
    second.put("k7", json!({"value": "written during the restore"})).await.assert_status(200);
    let deleted: Vec<String> = (0..200).map(|idx| format!("k{}", idx * 200 + 3)).collect();
    let invalidated = second.post("/api/cache/invalidate", json!({"keys": deleted})).await.json();
    let size_then = second.metric("l1_size").await.as_u64().unwrap();
    assert!(size_then < count as u64, "ready and serving before the restore finished ({size_then} restored)");
    assert!(invalidated["success"] == true);
    eventually("the restore finished", || async {
        second.metric("l1_size").await.as_u64().unwrap() == count as u64 - 200
    })
    .await;
    assert_eq!(second.get("/api/cache/k7").await.json()["value"], "written during the restore");
    for key in &deleted {
        second.get(&format!("/api/cache/{key}")).await.assert_status(404);
    }
    assert_eq!(second.get("/api/cache/k39999").await.json()["value"], json!({"n": 39999}));
}

#[tokio::test]
async fn damaged_and_foreign_snapshots_are_ignored_with_a_metric() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let first = TestApp::spawn(with_snapshot(&path)).await;
    fill(&first.base, 100).await;
    first.shutdown().await;
    let good = std::fs::read(&path).unwrap();

    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    let mut future = good.clone();
    future[6] = 9;
    for (what, bytes) in [("truncated", good[..good.len() - 100].to_vec()), ("flipped", flipped), ("future", future)] {
        std::fs::write(&path, &bytes).unwrap();
        let app = TestApp::spawn(with_snapshot(&path)).await;
        app.get("/ready").await.assert_status(200);
        eventually(&format!("{what}: counted"), || async {
            app.get("/metrics").await.text().contains("tiercache_snapshot_load_errors_total 1")
        })
        .await;
        assert_eq!(app.metric("l1_size").await, 0, "{what}: nothing restored");
        app.put("k1", json!({"value": 1})).await.assert_status(200);
        app.shutdown().await;
    }
}

#[tokio::test]
async fn a_crash_during_a_snapshot_write_leaves_the_previous_snapshot_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.snapshot");
    let tmp = dir.path().join("crash.snapshot.tmp");
    let path_text = path.display().to_string();
    let env = [
        ("TIERCACHE__PERSISTENCE__PATH", path_text.as_str()),
        ("TIERCACHE__L1__MAX_ENTRIES", "1000000"),
        ("TIERCACHE__L1__MAX_BYTES", "2000000000"),
    ];
    let mut service = ServiceProcess::start(&env).await;
    fill(&service.base, 50_000).await;
    let client = crate::harness::client();
    let first = client.post(format!("{}/api/cache/snapshot", service.base)).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let previous = std::fs::read(&path).unwrap();

    fill(&service.base, 300_000).await;
    let pending = tokio::spawn(client.post(format!("{}/api/cache/snapshot", service.base)).send());
    eventually("the second snapshot is being written", || async { tmp.exists() }).await;
    service.signal("KILL");
    service.wait_exit().await;
    let _ = pending.await;
    assert_eq!(std::fs::read(&path).unwrap(), previous, "the previous snapshot is untouched");

    let restarted = ServiceProcess::start(&env).await;
    eventually("the previous snapshot was restored", || async {
        let metrics: Value =
            client.get(format!("{}/api/cache/metrics", restarted.base)).send().await.unwrap().json().await.unwrap();
        metrics["l1_size"] == 50_000
    })
    .await;
}

#[tokio::test]
async fn sigterm_writes_a_final_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("final.snapshot");
    let path_text = path.display().to_string();
    let mut service = ServiceProcess::start(&[("TIERCACHE__PERSISTENCE__PATH", path_text.as_str())]).await;
    fill(&service.base, 10).await;
    assert!(!path.exists());
    service.signal("TERM");
    assert!(service.wait_exit().await.success());
    let restarted = TestApp::spawn(with_snapshot(&path)).await;
    eventually("restored", || async { restarted.metric("l1_size").await == 10 }).await;
}

#[tokio::test]
async fn a_slow_warm_source_holds_readiness_then_loads_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("warm.snapshot");
    let origin = TestOrigin::start().await;
    let items = json!([{"key": "a", "value": 1}, {"key": "b", "value": {"x": [1]}, "ttl": 60, "tags": ["t"]}]);
    origin.set("source", Reply { delay: Duration::from_millis(800), ..Reply::body(&items.to_string()) });
    let app = TestApp::spawn_warmed_from(&origin, |s| s.persistence.path = path.display().to_string()).await;

    app.get("/ready").await.assert_error(503, "not_ready");
    assert_eq!(app.get("/api/cache/warm").await.json()["state"], "running");
    eventually("ready after the warm", || async { app.get("/ready").await.status == 200 }).await;
    let status = app.get("/api/cache/warm").await.json();
    assert_eq!(status["state"], "done");
    assert_eq!((status["loaded"].clone(), status["errors"].clone()), (json!(2), json!(0)));
    assert_eq!(status["source"], origin.item_url("source"));
    assert!(status["started_at"].is_string() && status["finished_at"].is_string());
    let b = app.get("/api/cache/b").await.json();
    assert_eq!((b["value"].clone(), b["tags"].clone()), (json!({"x": [1]}), json!(["t"])));
    assert!(b["ttl_remaining"].as_u64().unwrap() <= 60);
    eventually("a snapshot follows the warm", || async { path.exists() }).await;
}

#[tokio::test]
async fn ndjson_sources_skip_and_count_bad_lines() {
    let origin = TestOrigin::start().await;
    let body = concat!(
        "{\"key\":\"a\",\"value\":1}\n",
        "\n",
        "{\"key\":\"b\",\"value\":\"two\",\"ttl\":30}\n",
        "{not json}\n",
        "{\"key\":\"no-value\"}\n",
        "{\"key\":\"bad-ttl\",\"value\":1,\"ttl\":0}\n",
        "{\"key\":\"c\",\"value\":null,\"extra\":true}",
    );
    origin.set("source", Reply { content_type: Some("application/x-ndjson".into()), ..Reply::body(body) });
    let app = TestApp::spawn_warmed_from(&origin, |_| {}).await;
    eventually("warmed", || async { app.get("/api/cache/warm").await.json()["state"] == "done" }).await;
    let status = app.get("/api/cache/warm").await.json();
    assert_eq!((status["loaded"].clone(), status["errors"].clone()), (json!(3), json!(3)));
    for (key, value) in [("a", json!(1)), ("b", json!("two")), ("c", json!(null))] {
        assert_eq!(app.get(&format!("/api/cache/{key}")).await.json()["value"], value);
    }
    app.get("/api/cache/no-value").await.assert_status(404);
}

#[tokio::test]
async fn an_array_is_recognized_without_a_json_content_type() {
    let origin = TestOrigin::start().await;
    let body = "  [ {\"key\":\"a\",\"value\":\"x,]\"}, 42, {\"key\":\"b\",\"value\":[{}]} ]";
    origin.set("source", Reply { content_type: Some("text/plain".into()), ..Reply::body(body) });
    let app = TestApp::spawn_warmed_from(&origin, |_| {}).await;
    eventually("warmed", || async { app.get("/api/cache/warm").await.json()["state"] == "done" }).await;
    let status = app.get("/api/cache/warm").await.json();
    assert_eq!((status["loaded"].clone(), status["errors"].clone()), (json!(2), json!(1)));
    assert_eq!(app.get("/api/cache/a").await.json()["value"], "x,]");
}

#[tokio::test]
async fn periodic_warms_pick_up_changes_and_survive_an_unreachable_source() {
    let origin = TestOrigin::start().await;
    origin.set("source", Reply::status(503));
    let app = TestApp::spawn_warmed_from(&origin, |s| s.warm.interval_secs = 1).await;
    eventually("the first warm failed", || async { app.get("/api/cache/warm").await.json()["state"] == "failed" })
        .await;
    app.get("/ready").await.assert_status(200);
    app.get("/health").await.assert_status(200);

    origin.set("source", Reply::body(r#"[{"key":"k","value":"v1"}]"#));
    eventually("the next interval loads", || async { app.get("/api/cache/k").await.status == 200 }).await;
    origin.set("source", Reply::body(r#"[{"key":"k","value":"v2"}]"#));
    eventually("a later interval picks up the change", || async {
        app.get("/api/cache/k").await.json()["value"] == "v2"
    })
    .await;
}

#[tokio::test]
async fn post_warm_starts_a_run_and_refuses_a_second_while_it_runs() {
    let origin = TestOrigin::start().await;
    origin.set("source", Reply::body(r#"[{"key":"k","value":1}]"#));
    let app = TestApp::spawn_warmed_from(&origin, |_| {}).await;
    eventually("the start-up warm is done", || async { app.get("/api/cache/warm").await.json()["state"] == "done" })
        .await;
    origin.set("source", Reply { delay: Duration::from_millis(500), ..Reply::body(r#"[{"key":"k","value":2}]"#) });
    let started = app.post("/api/cache/warm", json!(null)).await;
    started.assert_status(202);
    assert_eq!(started.json(), json!({"started": true}));
    app.post("/api/cache/warm", json!(null)).await.assert_error(409, "warm_running");
    eventually("the requested warm ran", || async { app.get("/api/cache/k").await.json()["value"] == 2 }).await;
    assert_eq!(origin.count("source"), 2);
}

#[tokio::test]
async fn warm_keys_are_fetched_through_the_origin() {
    let origin = TestOrigin::start().await;
    origin.set("gone", Reply::status(404));
    let url = origin.url();
    let app = TestApp::spawn(move |s| {
        s.origin.url = url;
        s.warm.keys = vec!["a".into(), "b".into(), "gone".into()];
        s.warm.parallelism = 2;
    })
    .await;
    eventually("warmed", || async { app.get("/api/cache/warm").await.json()["state"] == "done" }).await;
    let status = app.get("/api/cache/warm").await.json();
    assert_eq!((status["loaded"].clone(), status["errors"].clone()), (json!(2), json!(1)));
    assert_eq!(app.get("/api/cache/a").await.json()["source"], "l1");
    assert_eq!(origin.total(), 3);
}

#[test]
fn each_start_up_stage_is_logged_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stages.snapshot");
    std::fs::write(&path, b"not a snapshot").unwrap();
    let listen = format!("127.0.0.1:{}", crate::harness::free_port());
    let path_text = path.display().to_string();
    let env = [
        ("TIERCACHE__SERVER__LISTEN", listen.as_str()),
        ("TIERCACHE__PERSISTENCE__PATH", path_text.as_str()),
        ("REDIS_URL", "redis://127.0.0.1:1"),
    ];
    let (status, stderr) = crate::harness::run_binary_for(&[], &env, Some(Duration::from_millis(1500)));
    assert!(status.success(), "{stderr}");
    let stages = ["l1 open", "l2 connecting in the background", "start-up load decided", "listening"];
    let mut last = 0;
    for stage in stages {
        assert_eq!(stderr.matches(stage).count(), 1, "{stage} logged once: {stderr}");
        let at = stderr.find(stage).unwrap();
        assert!(at >= last, "{stage} comes after the stages before it: {stderr}");
        last = at;
    }
    assert!(stderr.contains("Restore"), "the load was a restore: {stderr}");
    // The restore runs in the background, so its outcome may come before or after "listening".
    assert_eq!(stderr.matches("snapshot ignored").count(), 1, "{stderr}");
    assert!(stderr.find("snapshot ignored") > stderr.find("start-up load decided"), "{stderr}");
}

#[tokio::test]
async fn a_warm_that_outlasts_its_timeout_stops_holding_readiness() {
    let origin = TestOrigin::start().await;
    origin.set("source", Reply { delay: Duration::from_secs(5), ..Reply::body(r#"[{"key":"k","value":1}]"#) });
    let app = TestApp::spawn_warmed_from(&origin, |s| s.warm.timeout_secs = 1).await;
    app.get("/ready").await.assert_status(503);
    let started = std::time::Instant::now();
    eventually("ready once warm.timeout_secs passed", || async { app.get("/ready").await.status == 200 }).await;
    assert!(started.elapsed() < Duration::from_secs(4), "ready after the timeout, not after the source");
    assert_eq!(app.get("/api/cache/warm").await.json()["state"], "failed");
}

#[tokio::test]
async fn warmed_entries_reach_l2_for_every_instance() {
    let redis = crate::harness::RedisServer::start().await;
    let origin = TestOrigin::start().await;
    origin.set("source", Reply::body(r#"[{"key":"shared","value":"warm","tags":["w"]}]"#));
    let url = origin.item_url("source");
    let warmer = TestApp::spawn_with_redis(&redis, |s| s.warm.url = url).await;
    eventually("warmed", || async { warmer.get("/api/cache/warm").await.json()["state"] == "done" }).await;
    let other = TestApp::spawn_with_redis(&redis, |_| {}).await;
    let read = other.get("/api/cache/shared").await.json();
    assert_eq!((read["value"].clone(), read["source"].clone()), (json!("warm"), json!("l2")));
}

#[tokio::test]
async fn snapshots_are_written_every_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("periodic.snapshot");
    let path_text = path.display().to_string();
    let app = TestApp::spawn(move |s| {
        s.persistence.path = path_text;
        s.persistence.interval_secs = 1;
    })
    .await;
    app.put("k", json!({"value": 1})).await.assert_status(200);
    // The file is renamed into place before the metric is set: wait for both.
    eventually("a periodic snapshot", || async {
        path.exists() && app.metric("snapshot_last_success").await.is_string()
    })
    .await;
    let first = app.metric("snapshot_last_success").await;
    let first_len = std::fs::metadata(&path).unwrap().len();
    // Every interval, not once: a later snapshot holds a later write.
    app.put("k2", json!({"value": "written after the first snapshot"})).await.assert_status(200);
    eventually("a second periodic snapshot with the later write", || async {
        app.metric("snapshot_last_success").await != first
            && std::fs::metadata(&path).is_ok_and(|meta| meta.len() > first_len)
    })
    .await;
    app.shutdown().await;
}
