//! The real binary: start-up failures on bad config, environment aliases, and graceful
//! shutdown on SIGTERM and SIGINT with a request in flight.

use std::time::Duration;

use serde_json::json;

use crate::harness::{client, free_port, run_binary, run_binary_for, RawConnection, ServiceProcess};

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

#[track_caller]
fn assert_config_error(args: &[&str], env: &[(&str, &str)], key: &str) {
    let (status, stderr) = run_binary(args, env);
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr:?}");
    assert!(lines[0].starts_with(&format!("tiercache: config error: {key}: ")), "{stderr:?}");
}

#[test]
fn bad_config_stops_start_up_with_one_line_naming_the_key() {
    let unknown = write_config("[l1]\nmax_entry = 5\n");
    assert_config_error(&["--config", unknown.path().to_str().unwrap()], &[], "l1.max_entry");
    let unknown_section = write_config("[cache_stuff]\nx = 1\n");
    assert_config_error(&["--config", unknown_section.path().to_str().unwrap()], &[], "cache_stuff");
    let wrong_type = write_config("[l1]\nmax_entries = \"lots\"\n");
    assert_config_error(&["--config", wrong_type.path().to_str().unwrap()], &[], "l1.max_entries");
    let zero = write_config("[l1]\nmax_entries = 0\n");
    assert_config_error(&["--config", zero.path().to_str().unwrap()], &[], "l1.max_entries");
    let listen = write_config("[server]\nlisten = \"not-an-address\"\n");
    assert_config_error(&["--config", listen.path().to_str().unwrap()], &[], "server.listen");
    assert_config_error(&[], &[("TIERCACHE__L1__MAX_ENTRIES", "0")], "l1.max_entries");
    assert_config_error(&[], &[("TIERCACHE__NOPE__KEY", "1")], "nope.key");
    assert_config_error(&[], &[("CACHE_DEFAULT_TTL", "soon")], "cache.default_ttl_secs");
    assert_config_error(&["--config", "/nonexistent/tiercache.toml"], &[], "--config");
}

#[test]
fn secrets_are_never_printed() {
    let (status, stderr) = run_binary(&[], &[("REDIS_URL", "http://:hunter2@127.0.0.1:1")]);
    assert_eq!(status.code(), Some(2));
    assert!(!stderr.contains("hunter2"), "{stderr}");
    // A running service that cannot reach Redis, logging at debug, never prints the password.
    let listen = format!("127.0.0.1:{}", free_port());
    let env = [
        ("REDIS_URL", "redis://127.0.0.1:1"),
        ("REDIS_PASSWORD", "hunter2"),
        ("TIERCACHE__SERVER__LISTEN", listen.as_str()),
        ("TIERCACHE__LOG__LEVEL", "debug"),
    ];
    let (_, stderr) = run_binary_for(&[], &env, Some(Duration::from_millis(1500)));
    assert!(stderr.contains("l2 unreachable"), "the service ran and logged its L2 attempts: {stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn port_alias_replaces_the_port_of_server_listen() {
    let port = free_port();
    let config = write_config("[server]\nlisten = \"127.0.0.1:1\"\n");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tiercache"))
        .env_clear()
        .args(["--config", config.path().to_str().unwrap()])
        .env("PORT", port.to_string())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/health");
    let client = client();
    let mut answered = false;
    for _ in 0..250 {
        if client.get(&url).send().await.is_ok_and(|response| response.status() == 200) {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(answered, "the service listens on PORT");
}

#[tokio::test]
async fn sigterm_drains_an_in_flight_request_then_exits_zero() {
    let mut service = ServiceProcess::start(&[]).await;
    let addr = format!("127.0.0.1:{}", service.port).parse().unwrap();
    let body = br#"{"value":{"written":"during shutdown"}}"#;
    let mut in_flight = RawConnection::open(addr).await;
    in_flight.start_put("drained", body.len(), &body[..10]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    service.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused while the in-flight request is still served.
    assert!(client().get(format!("{}/health", service.base)).send().await.is_err(), "stopped accepting");
    in_flight.send(&body[10..]).await;
    let (status, response) = in_flight.read_response().await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&response).unwrap()["success"], json!(true));
    assert_eq!(service.wait_exit().await.code(), Some(0));
}

#[tokio::test]
async fn sigint_stops_an_idle_service_with_exit_zero() {
    let mut service = ServiceProcess::start(&[]).await;
    service.signal("INT");
    assert_eq!(service.wait_exit().await.code(), Some(0));
}

#[tokio::test]
async fn a_second_signal_exits_at_once_without_waiting_for_the_drain() {
    let mut service = ServiceProcess::start(&[("TIERCACHE__SERVER__SHUTDOWN_GRACE_MS", "60000")]).await;
    let addr = format!("127.0.0.1:{}", service.port).parse().unwrap();
    let mut in_flight = RawConnection::open(addr).await;
    in_flight.start_put("never-finished", 100, b"{\"value\":").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    service.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await; // The drain is waiting on the PUT.
    let started = std::time::Instant::now();
    service.signal("TERM");
    assert_eq!(service.wait_exit().await.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(5), "exited at once, not after the 60 s grace");
}

#[tokio::test]
async fn the_healthcheck_subcommand_reports_the_local_service() {
    let service = ServiceProcess::start(&[]).await;
    let listen = format!("0.0.0.0:{}", service.port);
    let (status, stderr) = run_binary(&["healthcheck"], &[("TIERCACHE__SERVER__LISTEN", listen.as_str())]);
    assert!(status.success(), "{stderr}");
    drop(service);
    let (status, stderr) = run_binary(&["healthcheck"], &[("TIERCACHE__SERVER__LISTEN", listen.as_str())]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unhealthy"), "{stderr}");
}
