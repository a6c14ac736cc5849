//! Authentication (SPEC §9): the whole matrix of token kind × route × method, checked before
//! routing and body checks, and tokens kept out of the logs.

use std::time::Duration;

use serde_json::json;
use tiercache::config::Secret;

use crate::harness::{client, TestApp};

async fn secured(require_metrics_auth: bool) -> TestApp {
    TestApp::spawn(move |s| {
        s.auth.tokens = vec![Secret("write-one".into()), Secret("write-two".into())];
        s.auth.read_tokens = vec![Secret("read-only".into())];
        s.metrics.require_auth = require_metrics_auth;
    })
    .await
}

/// Status of `method path` with `body` and an optional `Authorization` header.
async fn status(app: &TestApp, method: &str, path: &str, authorization: Option<&str>, body: &str) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client()
        .request(method, format!("{}{path}", app.base))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let challenge = response.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    let text = response.text().await.unwrap();
    if status == 401 {
        assert_eq!(challenge.as_deref(), Some("Bearer"), "401 names the scheme");
    }
    (status, text)
}

#[tokio::test]
async fn the_token_matrix() {
    let app = secured(false).await;
    let put = r#"{"value":1}"#;
    let write = Some("Bearer write-one");
    let read = Some("Bearer read-only");
    // (method, path, body, no token, read token, write token)
    let matrix: &[(&str, &str, &str, u16, u16, u16)] = &[
        ("PUT", "/api/cache/k", put, 401, 403, 200),
        ("GET", "/api/cache/k", "", 401, 200, 200),
        ("POST", "/api/cache/batch/get", r#"{"keys":["k"]}"#, 401, 200, 200),
        ("POST", "/api/cache/batch/set", r#"{"entries":[]}"#, 401, 403, 200),
        ("POST", "/api/cache/invalidate", r#"{"keys":["x"]}"#, 401, 403, 200),
        ("POST", "/api/cache/evict", r#"{"count":0}"#, 401, 403, 200),
        ("POST", "/api/cache/prefetch", r#"{"items":[]}"#, 401, 403, 409),
        ("GET", "/api/cache/prefetch", "", 401, 200, 200),
        ("POST", "/api/cache/warm", "", 401, 403, 409),
        ("GET", "/api/cache/warm", "", 401, 200, 200),
        ("POST", "/api/cache/snapshot", "", 401, 403, 409),
        ("GET", "/api/cache/metrics", "", 401, 200, 200),
        ("DELETE", "/api/cache/other", "", 401, 403, 200),
        ("GET", "/api/nowhere", "", 401, 404, 404),
        ("GET", "/health", "", 200, 200, 200),
        ("GET", "/ready", "", 200, 200, 200),
        ("GET", "/metrics", "", 200, 200, 200),
        ("DELETE", "/api/cache", "", 401, 403, 200),
    ];
    for (method, path, body, none, read_status, write_status) in matrix {
        for (token, expected) in [(None, none), (read, read_status), (write, write_status)] {
            let (got, text) = status(&app, method, path, token, body).await;
            assert_eq!(got, *expected, "{method} {path} with {token:?}: {text}");
            if got == 401 || got == 403 {
                let code = if got == 401 { "unauthorized" } else { "forbidden" };
                assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap()["error"]["code"], code);
            }
        }
    }
    assert_eq!(status(&app, "PUT", "/api/cache/k", Some("Bearer write-two"), put).await.0, 200, "every write token");
}

#[tokio::test]
async fn bad_credentials_are_401_before_routing_and_body_checks() {
    let app = secured(false).await;
    for header in ["Bearer wrong", "Basic d3JpdGUtb25l", "Bearer", "write-one", "Bearer write-on", "Bearer write-one2"]
    {
        assert_eq!(status(&app, "GET", "/api/cache/k", Some(header), "").await.0, 401, "{header}");
    }
    assert_eq!(
        status(&app, "GET", "/api/cache/k", Some("bearer write-one"), "").await.0,
        404,
        "the scheme is case-insensitive"
    );
    assert_eq!(status(&app, "PUT", "/api/cache/k", None, "{not json").await.0, 401, "auth comes before the body");
    assert_eq!(status(&app, "PUT", "/api/cache/k", Some("Bearer read-only"), "{not json").await.0, 403);
    assert_eq!(status(&app, "GET", "/api/cache/invalidate", None, "").await.0, 401, "auth comes before routing");
}

#[tokio::test]
async fn metrics_need_a_token_only_when_configured() {
    let app = secured(true).await;
    assert_eq!(status(&app, "GET", "/metrics", None, "").await.0, 401);
    assert_eq!(status(&app, "GET", "/metrics", Some("Bearer read-only"), "").await.0, 200);
    assert_eq!(status(&app, "GET", "/health", None, "").await.0, 200);
}

#[tokio::test]
async fn tokens_never_reach_the_log() {
    let listen = format!("127.0.0.1:{}", crate::harness::free_port());
    let base = format!("http://{listen}");
    let env = [
        ("TIERCACHE__SERVER__LISTEN", listen.clone()),
        ("TIERCACHE__AUTH__TOKENS", "sekrit-write-token".to_string()),
        ("TIERCACHE__AUTH__READ_TOKENS", "sekrit-read-token".to_string()),
        ("TIERCACHE__LOG__LEVEL", "debug".to_string()),
    ];
    let run = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        crate::harness::run_binary_for(&[], &env, Some(Duration::from_millis(2000)))
    });
    let sent = async {
        for _ in 0..100 {
            let request =
                client().get(format!("{base}/api/cache/k")).header("authorization", "Bearer sekrit-read-token");
            if request.send().await.is_ok() {
                let wrong = client().get(format!("{base}/api/cache/k")).header("authorization", "Bearer sekrit-guess");
                return wrong.send().await.map(|response| response.status().as_u16()).ok();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
    .await;
    let (_, stderr) = run.await.unwrap();
    assert_eq!(sent, Some(401), "the service answered: {stderr}");
    assert!(stderr.contains("request"), "requests were logged at debug: {stderr}");
    assert!(!stderr.contains("sekrit"), "{stderr}");
}

#[tokio::test]
async fn without_tokens_everything_is_open() {
    let app = TestApp::spawn(|_| {}).await;
    app.put("k", json!({"value": 1})).await.assert_status(200);
    app.get("/api/cache/k").await.assert_status(200);
}
