//! Health, readiness and metrics (JSON and Prometheus).

use serde_json::json;

use crate::harness::TestApp;

const JSON_METRIC_FIELDS: [&str; 27] = [
    "hits",
    "misses",
    "hit_rate",
    "sets",
    "deletes",
    "evictions",
    "expirations",
    "l1_size",
    "l1_bytes",
    "l2_hits",
    "l2_misses",
    "l2_errors",
    "l2_status",
    "origin_fetches",
    "origin_errors",
    "coalesced",
    "stale_served",
    "invalidations_published",
    "invalidations_received",
    "prefetch_requests",
    "invalidations_malformed",
    "prefetch_hits",
    "prefetch_queue_size",
    "compression_ratio",
    "snapshot_last_success",
    "uptime_secs",
    "instance_id",
];

#[tokio::test]
async fn health_and_ready() {
    let app = TestApp::spawn(|s| s.server.instance_id = "node-a".into()).await;
    let health = app.get("/health").await;
    health.assert_status(200);
    let body = health.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["l2"], "disabled");
    assert_eq!(body["instance_id"], "node-a");
    assert!(body["uptime_secs"].is_u64());
    app.get("/ready").await.assert_status(200);
}

#[tokio::test]
async fn a_dead_background_task_turns_health_to_503_naming_it() {
    let redis = crate::harness::RedisServer::start().await;
    let app = TestApp::spawn_with_redis(&redis, |_| {}).await;
    assert_eq!(app.abort_task("subscriber"), 1, "the subscriber runs under that name");
    crate::harness::eventually("/health reports the dead task", || async { app.get("/health").await.status == 503 })
        .await;
    let body = app.get("/health").await.json();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["dead_tasks"], json!(["subscriber"]));
    assert_eq!(body["l2"], "up", "the other fields stay");
    app.get("/api/cache/anything").await.assert_status(404); // The service still answers.
    app.shutdown().await;
}

#[tokio::test]
async fn a_generated_instance_id_is_hostname_and_suffix() {
    let app = TestApp::spawn(|_| {}).await;
    let id = app.get("/health").await.json()["instance_id"].as_str().unwrap().to_string();
    let (host, suffix) = id.rsplit_once('-').unwrap();
    assert!(!host.is_empty() && suffix.len() == 8, "{id}");
    let other = TestApp::spawn(|_| {}).await;
    assert_ne!(other.get("/health").await.json()["instance_id"], id.as_str());
}

#[tokio::test]
async fn json_metrics_have_every_field_and_count_correctly() {
    let app = TestApp::spawn(|s| s.server.instance_id = "m".into()).await;
    app.put("a", json!({"value": 1})).await.assert_status(200);
    app.put("b", json!({"value": 2})).await.assert_status(200);
    app.get("/api/cache/a").await.assert_status(200);
    app.get("/api/cache/a").await.assert_status(200);
    app.get("/api/cache/a").await.assert_status(200);
    app.get("/api/cache/zzz").await.assert_status(404);
    app.delete("/api/cache/b").await.assert_status(200);

    let metrics = app.get("/api/cache/metrics").await.json();
    let object = metrics.as_object().unwrap();
    for field in JSON_METRIC_FIELDS {
        assert!(object.contains_key(field), "missing {field}: {metrics}");
    }
    assert_eq!(object.len(), JSON_METRIC_FIELDS.len(), "{metrics}");
    assert_eq!(metrics["hits"], 3);
    assert_eq!(metrics["misses"], 1);
    assert_eq!(metrics["hit_rate"], 0.75);
    assert_eq!(metrics["sets"], 2);
    assert_eq!(metrics["deletes"], 1);
    assert_eq!(metrics["l1_size"], 1);
    assert!(metrics["l1_bytes"].as_u64().unwrap() > 2);
    assert_eq!(metrics["l2_status"], "disabled");
    assert_eq!(metrics["compression_ratio"], 1.0);
    assert_eq!(metrics["snapshot_last_success"], json!(null));
    assert_eq!(metrics["instance_id"], "m");
}

#[tokio::test]
async fn prometheus_families_use_route_templates_never_keys() {
    let app = TestApp::spawn(|_| {}).await;
    app.put("secret-key-name", json!({"value": 1, "tags": ["secret-tag"]})).await.assert_status(200);
    app.get("/api/cache/secret-key-name").await.assert_status(200);
    app.get("/api/cache/missing-key").await.assert_status(404);
    app.get("/unknown/route").await.assert_status(404);

    let response = app.get("/metrics").await;
    response.assert_status(200);
    assert!(response.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let text = response.text();
    assert!(!text.contains("secret-key-name") && !text.contains("secret-tag") && !text.contains("missing-key"));
    assert!(!text.contains("/unknown/route"));
    for expected in [
        r#"tiercache_http_requests_total{method="PUT",route="/api/cache/{*key}",status="200"} 1"#,
        r#"tiercache_http_requests_total{method="GET",route="/api/cache/{*key}",status="404"} 1"#,
        r#"tiercache_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"tiercache_hits_total{tier="l1"} 1"#,
        r#"tiercache_hits_total{tier="l2"} 0"#,
        "tiercache_misses_total 1",
        "tiercache_sets_total 1",
        "tiercache_deletes_total 0",
        "tiercache_entries 1",
        r#"tiercache_evictions_total{reason="expired"} 0"#,
        r#"tiercache_http_request_duration_seconds_count{method="GET",route="/api/cache/{*key}"} 2"#,
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(text.lines().any(|line| line.starts_with("tiercache_bytes ") && !line.ends_with(" 0")), "{text}");
}

#[tokio::test]
async fn the_exposition_passes_promtool() {
    let promtool = which("promtool").expect("promtool is installed by scripts/test.sh (Debian package prometheus)");
    let app = TestApp::spawn(|_| {}).await;
    app.put("k", json!({"value": 1})).await.assert_status(200);
    app.get("/api/cache/k").await.assert_status(200);
    app.get("/nope").await.assert_status(404);
    let text = app.get("/metrics").await.text();
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool starts");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success() && output.stdout.is_empty() && output.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Prometheus table of SPEC §8: every family, its type, its label names, and for labels
/// from a fixed set, every value present from the start (so a dashboard never sees a gap).
#[tokio::test]
async fn every_family_of_the_spec_table_is_exposed_with_its_labels() {
    type Family = (&'static str, &'static str, &'static [&'static str]);
    const TABLE: [Family; 23] = [
        ("tiercache_http_requests_total", "counter", &["route", "method", "status"]),
        ("tiercache_http_request_duration_seconds", "histogram", &["route", "method"]),
        ("tiercache_hits_total", "counter", &["tier"]),
        ("tiercache_misses_total", "counter", &[]),
        ("tiercache_stale_served_total", "counter", &[]),
        ("tiercache_coalesced_total", "counter", &[]),
        ("tiercache_sets_total", "counter", &[]),
        ("tiercache_deletes_total", "counter", &[]),
        ("tiercache_evictions_total", "counter", &["reason"]),
        ("tiercache_entries", "gauge", &[]),
        ("tiercache_bytes", "gauge", &[]),
        ("tiercache_l2_up", "gauge", &[]),
        ("tiercache_l2_errors_total", "counter", &[]),
        ("tiercache_origin_fetches_total", "counter", &["result"]),
        ("tiercache_origin_fetch_duration_seconds", "histogram", &[]),
        ("tiercache_invalidation_messages_total", "counter", &["direction"]),
        ("tiercache_prefetch_requests_total", "counter", &[]),
        ("tiercache_prefetch_queue_size", "gauge", &[]),
        ("tiercache_warm_duration_seconds", "histogram", &[]),
        ("tiercache_snapshot_duration_seconds", "histogram", &[]),
        ("tiercache_snapshot_last_success_timestamp_seconds", "gauge", &[]),
        // Beyond the table: prefetched entries read, and snapshot files refused at start.
        ("tiercache_prefetch_hits_total", "counter", &[]),
        ("tiercache_snapshot_load_errors_total", "counter", &[]),
    ];
    const FIXED_VALUES: [(&str, &str, &[&str]); 4] = [
        ("tiercache_hits_total", "tier", &["l1", "l2"]),
        ("tiercache_evictions_total", "reason", &["capacity", "expired", "invalidated", "manual"]),
        ("tiercache_origin_fetches_total", "result", &["ok", "not_found", "error"]),
        ("tiercache_invalidation_messages_total", "direction", &["published", "received", "malformed"]),
    ];

    let app = TestApp::spawn(|_| {}).await;
    app.put("k", json!({"value": 1})).await.assert_status(200);
    app.get("/api/cache/k").await.assert_status(200);
    let text = app.get("/metrics").await.text();

    let mut types = std::collections::BTreeMap::new();
    let mut labels: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    let mut values: std::collections::BTreeSet<(String, String, String)> = Default::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix).filter(|base| types.get(*base).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let names = labels.entry(family.to_string()).or_default();
        for (label, value) in sample_labels(&line[name_end..]) {
            if label != "le" {
                names.insert(label.clone());
                values.insert((family.to_string(), label, value));
            }
        }
    }
    let route = ("tiercache_http_requests_total".to_string(), "route".to_string(), "/api/cache/{*key}".to_string());
    assert!(values.contains(&route), "the route label is the template: {values:?}");
    for (family, kind, expected) in TABLE {
        assert_eq!(types.get(family).map(String::as_str), Some(kind), "{family} has type {kind}");
        let expected: std::collections::BTreeSet<String> = expected.iter().map(|label| label.to_string()).collect();
        assert_eq!(labels.get(family), Some(&expected), "{family} has the labels {expected:?}");
    }
    let exposed: std::collections::BTreeSet<&String> = types.keys().collect();
    let listed: std::collections::BTreeSet<String> = TABLE.iter().map(|(family, _, _)| family.to_string()).collect();
    assert_eq!(exposed, listed.iter().collect(), "no family beyond the table and the two listed extras");
    for (family, label, fixed) in FIXED_VALUES {
        let seen: Vec<&str> =
            values.iter().filter(|(f, l, _)| f == family && l == label).map(|(_, _, value)| value.as_str()).collect();
        let mut fixed = fixed.to_vec();
        fixed.sort_unstable();
        assert_eq!(seen, fixed, "{family}{{{label}}} has exactly its fixed values from the start");
    }
}

/// The `(label, value)` pairs of a sample line's `{...}` part (values may hold `{`, `}`, `,`).
fn sample_labels(rest: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let Some(mut rest) = rest.strip_prefix('{') else {
        return pairs;
    };
    while let Some((label, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((idx, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, escaped)| escaped)),
                '"' => {
                    end = idx + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        pairs.push((label.trim_start_matches(',').to_string(), value));
        rest = &after[end..];
        if rest.starts_with('}') {
            break;
        }
    }
    pairs
}

#[tokio::test]
async fn metrics_disabled_means_404() {
    let app = TestApp::spawn(|s| s.metrics.enabled = false).await;
    app.get("/metrics").await.assert_error(404, "not_found");
    app.get("/api/cache/metrics").await.assert_status(200);
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file()).ok_or(())
}

/// A real Prometheus server, killed on drop.
struct PrometheusServer(std::process::Child);

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_two_instances_with_the_deploy_config() {
    let first = TestApp::spawn(|_| {}).await;
    let second = TestApp::spawn(|_| {}).await;
    for app in [&first, &second] {
        app.put("k", json!({"value": 1})).await.assert_status(200);
        app.get("/api/cache/k").await.assert_status(200);
    }
    // deploy/prometheus.yml, as the compose file mounts it, pointed at the loopback instances.
    let deploy = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus.yml")).unwrap();
    let targets = format!("[\"{}\", \"{}\"]", first.addr(), second.addr());
    let config = deploy
        .replace("[\"tiercache-1:4000\", \"tiercache-2:4000\"]", &targets)
        .replace("scrape_interval: 5s", "scrape_interval: 1s");
    assert!(config.contains(&targets), "the deploy config lists its targets as expected");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = crate::harness::free_port();
    let server = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus is installed by scripts/test.sh");
    let _server = PrometheusServer(server);

    let query = |expr: &'static str| {
        let encoded = percent_encoding::utf8_percent_encode(expr, percent_encoding::NON_ALPHANUMERIC);
        let url = format!("http://127.0.0.1:{port}/api/v1/query?query={encoded}");
        async move {
            let response = crate::harness::client().get(url).send().await.ok()?;
            let body: serde_json::Value = response.json().await.ok()?;
            body["data"]["result"].as_array().cloned()
        }
    };
    let started = std::time::Instant::now();
    loop {
        let up = query("up{job=\"tiercache\"} == 1").await.unwrap_or_default();
        let hits = query("sum(tiercache_hits_total{tier=\"l1\"})").await.unwrap_or_default();
        let hit_count: f64 = hits.first().and_then(|sample| sample["value"][1].as_str()?.parse().ok()).unwrap_or(0.0);
        if up.len() == 2 && hit_count >= 2.0 {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "up: {up:?}, hits: {hits:?}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // Every expression of the Grafana dashboard is valid PromQL to this server.
    for expr in dashboard_expressions() {
        let encoded = percent_encoding::utf8_percent_encode(&expr, percent_encoding::NON_ALPHANUMERIC);
        let url = format!("http://127.0.0.1:{port}/api/v1/query?query={encoded}");
        let body: serde_json::Value = crate::harness::client().get(url).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["status"], "success", "{expr}: {body}");
    }
}

fn dashboard_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap().iter())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn every_dashboard_expression_names_existing_families() {
    let app = TestApp::spawn(|_| {}).await;
    app.get("/health").await.assert_status(200); // Per-route families exist once a request was seen.
    let exposition = app.get("/metrics").await.text();
    let families: Vec<&str> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    let expressions = dashboard_expressions();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana-dashboard.json")).unwrap();
    for title in [
        "Hit ratio by tier",
        "Request latency percentiles",
        "L2 (Redis) state",
        "Evictions by reason",
        "Invalidation traffic",
    ] {
        assert!(text.contains(title), "a {title} panel");
    }
    let mut named = 0;
    for expr in &expressions {
        for word in
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|word| word.starts_with("tiercache_"))
        {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .fold(word, |name, suffix| name.strip_suffix(suffix).unwrap_or(name));
            assert!(families.contains(&family), "{word} in {expr:?} is not an exported family");
            named += 1;
        }
    }
    assert!(named >= 15, "the dashboard uses the families ({named} names)");
}
