//! The HTTP rules of SPEC §21, as clients we did not write exercise them: routing on the
//! percent-decoded path, fixed-route names and malformed escapes refused as keys, weak ETags
//! over value and tags, `Expect: 100-continue` answered before any upload it would be refused
//! for, request bodies decompressed within the body limit, and the head rules (Host, transfer
//! codings, header size). Framing cases go over raw sockets, so nothing normalises them first.

use std::time::Duration;

use serde_json::{json, Value};
use tiercache::config::Secret;
use tokio::io::AsyncReadExt;

use crate::harness::{eventually, proc_status_kb, RawConnection, Reply, ServiceProcess, TestApp, TestOrigin};

const TOKEN: &str = "rules-token";

async fn compress(coding: &str, bytes: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
    let mut out = Vec::new();
    match coding {
        "gzip" => GzipEncoder::new(bytes).read_to_end(&mut out).await,
        "zstd" => ZstdEncoder::new(bytes).read_to_end(&mut out).await,
        "br" => BrotliEncoder::new(bytes).read_to_end(&mut out).await,
        other => panic!("no encoder for {other}"),
    }
    .expect("compress");
    out
}

async fn assert_absent(app: &TestApp, key: &str) {
    app.get(&format!("/api/cache/{key}")).await.assert_status(404);
}

#[tokio::test]
async fn percent_encoded_paths_route_as_their_decoded_form() {
    let app = TestApp::spawn(|_| {}).await;
    // A fixed route's name spelled with escapes is the fixed route, for every method.
    let metrics = app.get("/api/cache/%6Detrics").await;
    metrics.assert_status(200);
    assert!(metrics.json()["hits"].is_u64(), "the metrics answered: {}", metrics.text());
    app.put("%6Detrics", json!({"value": 1})).await.assert_error(405, "method_not_allowed");
    app.put("batch%2Fget", json!({"value": 1})).await.assert_error(405, "method_not_allowed");
    app.get("/api/cache/%69nvalidate").await.assert_error(405, "method_not_allowed");
    app.get("/heal%74h").await.assert_status(200);
    // A key spelled with escapes is the key.
    app.put("%75ser%3A1", json!({"value": "ada"})).await.assert_status(200);
    let entry = app.get("/api/cache/user:1").await;
    entry.assert_status(200);
    assert_eq!(entry.json()["key"], "user:1");
    assert_eq!(app.get("/%61pi/cach%65/user%3a1").await.json()["value"], "ada");
    app.put("a%20b%25c", json!({"value": 2})).await.assert_status(200);
    assert_eq!(app.get("/api/cache/a%20b%25c").await.json()["key"], "a b%c");
    // One route label per route, however it was spelled.
    let prometheus = app.get("/metrics").await.text();
    assert!(
        prometheus.contains(r#"tiercache_http_requests_total{method="GET",route="/api/cache/metrics",status="200"} 1"#),
        "{prometheus}"
    );
    assert!(
        prometheus.contains(r#"tiercache_http_requests_total{method="GET",route="/health",status="200"} 1"#),
        "{prometheus}"
    );
}

#[tokio::test]
async fn an_escaped_api_path_needs_a_token_like_the_plain_one() {
    let app = TestApp::spawn(|s| s.auth.tokens = vec![Secret(TOKEN.into())]).await;
    app.get("/%61pi/cache/k").await.assert_error(401, "unauthorized");
    app.get("/api/cache/%6Detrics").await.assert_error(401, "unauthorized");
    let authorized =
        app.request("GET", "/%61pi/cache/k", &[("authorization", &format!("Bearer {TOKEN}"))], vec![]).await;
    authorized.assert_status(404);
    assert_eq!(authorized.json(), json!({"key": "k", "hit": false}));
}

#[tokio::test]
async fn fixed_route_names_are_refused_wherever_an_entry_would_be_made() {
    let origin = TestOrigin::start().await;
    let items =
        json!([{"key": "metrics", "value": 1}, {"key": "warmed", "value": 2}, {"key": "batch/get", "value": 3}]);
    origin.set("source", Reply::body(&items.to_string()));
    let origin_url = origin.url();
    let warm_url = origin.item_url("source");
    let app = TestApp::spawn(move |s| {
        s.origin.url = origin_url;
        s.warm.url = warm_url;
    })
    .await;
    eventually("warmed", || async { app.get("/api/cache/warm").await.json()["state"] == "done" }).await;
    let warm = app.get("/api/cache/warm").await.json();
    assert_eq!((warm["loaded"].clone(), warm["errors"].clone()), (json!(1), json!(2)), "{warm}");
    let sets_before = app.get("/api/cache/metrics").await.json()["sets"].clone();
    for name in ["invalidate", "batch/get", "batch/set", "prefetch", "evict", "warm", "snapshot", "metrics"] {
        app.post("/api/cache/batch/set", json!({"entries": [{"key": "ok", "value": 1}, {"key": name, "value": 1}]}))
            .await
            .assert_error(400, "invalid_key");
        app.post("/api/cache/prefetch", json!({"items": [{"key": name, "priority": 0.5}]}))
            .await
            .assert_error(400, "invalid_key");
        // Reads, invalidations and dependencies may name them: an entry that an older version
        // stored under such a name stays readable and removable, and nothing new is made.
        let read = app.post("/api/cache/batch/get", json!({"keys": [name]})).await;
        read.assert_status(200);
        app.post("/api/cache/invalidate", json!({"keys": [name]})).await.assert_status(200);
        app.put("dependent", json!({"value": 1, "depends_on": [name]})).await.assert_status(200);
    }
    let metrics = app.get("/api/cache/metrics").await.json();
    assert_eq!(metrics["sets"].as_u64(), sets_before.as_u64().map(|sets| sets + 8), "only the 8 dependents: {metrics}");
    assert_eq!(app.get("/api/cache/prefetch").await.json()["queue"], json!([]));
    // Names that only look like them are keys.
    for key in ["metrics%2F", "batch", "warm%2Fup", "Metrics"] {
        app.put(key, json!({"value": key})).await.assert_status(200);
    }
    assert_eq!(app.get("/api/cache/metrics%2F").await.json()["key"], "metrics/");
    assert_eq!(app.get("/api/cache/warmed").await.json()["value"], 2);
}

#[tokio::test]
async fn malformed_percent_escapes_in_a_key_are_400_and_change_nothing() {
    let app = TestApp::spawn(|_| {}).await;
    for raw in ["%", "%G1", "a%2", "ok%zz", "%%41"] {
        let path = format!("/api/cache/{raw}");
        app.put(raw, json!({"value": 1})).await.assert_error(400, "invalid_key");
        app.get(&path).await.assert_error(400, "invalid_key");
        app.delete(&path).await.assert_error(400, "invalid_key");
    }
    let metrics = app.get("/api/cache/metrics").await.json();
    assert_eq!((metrics["sets"].clone(), metrics["l1_size"].clone()), (json!(0), json!(0)), "{metrics}");
}

#[tokio::test]
async fn the_etag_is_weak_and_changes_with_the_tags() {
    let app = TestApp::spawn(|_| {}).await;
    let etag_of = |response: &crate::harness::TestResponse| response.header("etag").expect("an etag");
    app.put("e", json!({"value": {"n": 1}, "tags": ["a"]})).await.assert_status(200);
    let first = etag_of(&app.get("/api/cache/e").await);
    assert!(first.starts_with("W/\"") && first.ends_with('"') && first.len() == 36, "{first}");

    // Same value, new tags: a new representation, so the old tag no longer matches.
    app.put("e", json!({"value": {"n": 1}, "tags": ["b"], "ttl": 50})).await.assert_status(200);
    let changed = app.get_with("/api/cache/e", "if-none-match", &first).await;
    changed.assert_status(200);
    assert_eq!(changed.json()["tags"], json!(["b"]));
    let second = etag_of(&changed);
    assert_ne!(first, second);

    // Same value and tags, another TTL: equivalent for a weak tag, in either spelling.
    app.put("e", json!({"value": {"n": 1}, "tags": ["b"], "ttl": 70})).await.assert_status(200);
    app.get_with("/api/cache/e", "if-none-match", &second).await.assert_status(304);
    app.get_with("/api/cache/e", "if-none-match", second.trim_start_matches("W/")).await.assert_status(304);
    let batch: Value = app.post("/api/cache/batch/get", json!({"keys": ["e"]})).await.json();
    assert_eq!(batch["entries"]["e"]["value"], json!({"n": 1}));
}

/// Sends `head` on a new connection and reads until the server closes it: the answer must
/// come at once, without `100 Continue`, and the connection must close without the body.
async fn refused_before_upload(app: &TestApp, head: &str, status: u16, code: &str) {
    let mut connection = RawConnection::open(app.addr()).await;
    connection.send(head.as_bytes()).await;
    let (answer, closed) = connection.read_to_close(Duration::from_secs(5)).await;
    assert!(answer.starts_with(&format!("HTTP/1.1 {status} ")), "{head:?} answered {answer:?}");
    assert!(!answer.contains("100 Continue"), "no 100 before a refusal: {answer:?}");
    assert!(answer.contains(&format!("\"code\":\"{code}\"")), "{answer:?}");
    assert!(closed, "the connection is closed, the body never sent: {answer:?}");
}

fn put_head(path: &str, extra: &str, length: usize) -> String {
    format!(
        "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {length}\r\nExpect: 100-continue\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn expect_100_continue_is_not_answered_for_a_request_that_will_be_refused() {
    let app = TestApp::spawn(|s| {
        s.auth.tokens = vec![Secret(TOKEN.into())];
        s.auth.read_tokens = vec![Secret("reader".into())];
        s.server.max_body_bytes = 100_000;
        s.server.max_concurrency = 1;
    })
    .await;
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    refused_before_upload(&app, &put_head("/api/cache/k", "", 900_000), 401, "unauthorized").await;
    let reader = "Authorization: Bearer reader\r\n";
    refused_before_upload(&app, &put_head("/api/cache/k", reader, 900_000), 403, "forbidden").await;
    refused_before_upload(&app, &put_head("/api/cache/k", &auth, 900_000), 413, "payload_too_large").await;
    refused_before_upload(&app, &put_head("/nope", &auth, 1000), 404, "not_found").await;
    refused_before_upload(&app, &put_head("/api/cache/metrics", &auth, 1000), 405, "method_not_allowed").await;
    let text_head = format!(
        "PUT /api/cache/k HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n{auth}\r\n"
    );
    refused_before_upload(&app, &text_head, 415, "unsupported_media_type").await;
    let deflate = format!("{auth}Content-Encoding: deflate\r\n");
    refused_before_upload(&app, &put_head("/api/cache/k", &deflate, 1000), 415, "unsupported_content_encoding").await;

    // Shedding: one request holds the only permit while it sends its body.
    let body = br#"{"value":"held"}"#;
    let mut held = RawConnection::open(app.addr()).await;
    held.send(put_head("/api/cache/held", &auth, body.len()).as_bytes()).await;
    assert!(held.read_until(b"\r\n\r\n").await.starts_with("HTTP/1.1 100 Continue\r\n"));
    held.send(&body[..5]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    refused_before_upload(&app, &put_head("/api/cache/k", &auth, 1000), 503, "overloaded").await;

    // A request that will be read gets its 100, then its answer.
    held.send(&body[5..]).await;
    let (status, answer) = held.read_response().await;
    assert_eq!(status, 200, "{answer}");
    let read = app.request("GET", "/api/cache/held", &[("authorization", &format!("Bearer {TOKEN}"))], vec![]).await;
    assert_eq!(read.json()["value"], "held");
    let nothing = app.request("GET", "/api/cache/k", &[("authorization", &format!("Bearer {TOKEN}"))], vec![]).await;
    nothing.assert_status(404);
}

#[tokio::test]
async fn compressed_request_bodies_are_decoded() {
    let app = TestApp::spawn(|_| {}).await;
    for coding in ["gzip", "zstd", "br", "gzip, br", "x-gzip"] {
        let body =
            serde_json::to_vec(&json!({"value": {"coding": coding, "pad": "x".repeat(3000)}, "tags": ["c"]})).unwrap();
        let mut sent = body.clone();
        for layer in coding.split(", ") {
            sent = compress(layer.trim_start_matches("x-"), &sent).await;
        }
        assert!(sent.len() < body.len() || coding == "gzip, br");
        let key = format!("coded-{}", coding.replace(", ", "-"));
        let headers = [("content-type", "application/json"), ("content-encoding", coding)];
        app.request("PUT", &format!("/api/cache/{key}"), &headers, sent).await.assert_status(200);
        assert_eq!(app.get(&format!("/api/cache/{key}")).await.json()["value"]["coding"], coding);
    }
    let batch =
        serde_json::to_vec(&json!({"entries": [{"key": "b1", "value": 1}, {"key": "b2", "value": 2}]})).unwrap();
    let headers = [("content-type", "application/json"), ("content-encoding", "GZIP")];
    app.request("POST", "/api/cache/batch/set", &headers, compress("gzip", &batch).await).await.assert_status(200);
    assert_eq!(app.get("/api/cache/b2").await.json()["value"], 2);
    // `identity` is no coding at all.
    let headers = [("content-type", "application/json"), ("content-encoding", "identity")];
    app.request("PUT", "/api/cache/plain", &headers, br#"{"value":3}"#.to_vec()).await.assert_status(200);

    // Any other coding is 415, a body that does not decode is 400: nothing stored.
    for coding in ["deflate", "compress", "gzip, foo", "gzip, gzip, gzip"] {
        let headers = [("content-type", "application/json"), ("content-encoding", coding)];
        let body = compress("gzip", br#"{"value":1}"#).await;
        app.request("PUT", "/api/cache/refused", &headers, body)
            .await
            .assert_error(415, "unsupported_content_encoding");
    }
    for coding in ["gzip", "zstd", "br"] {
        let headers = [("content-type", "application/json"), ("content-encoding", coding)];
        let mut corrupt = compress(coding, br#"{"value":"corrupt body"}"#).await;
        corrupt.truncate(corrupt.len() / 2);
        app.request("PUT", "/api/cache/refused", &headers, corrupt).await.assert_error(400, "invalid_body");
    }
    assert_absent(&app, "refused").await;
}

#[tokio::test]
async fn a_decompressed_body_past_the_limit_is_413() {
    let app = TestApp::spawn(|s| s.server.max_body_bytes = 10_000).await;
    let body = serde_json::to_vec(&json!({"value": "x".repeat(20_000)})).unwrap();
    for coding in ["gzip", "zstd", "br"] {
        let sent = compress(coding, &body).await;
        assert!(sent.len() < 1000, "{coding} makes {} bytes", sent.len());
        let headers = [("content-type", "application/json"), ("content-encoding", coding)];
        app.request("PUT", "/api/cache/big", &headers, sent).await.assert_error(413, "payload_too_large");
    }
    let fits = serde_json::to_vec(&json!({"value": "x".repeat(9_000)})).unwrap();
    let headers = [("content-type", "application/json"), ("content-encoding", "zstd")];
    app.request("PUT", "/api/cache/fits", &headers, compress("zstd", &fits).await).await.assert_status(200);
    assert_absent(&app, "big").await;
}

/// A compressed body sent chunked (no `Content-Length` to refuse it up front) is counted as it
/// arrives: stored gzip blocks make the wire bytes pass the limit while the JSON still fits.
#[tokio::test]
async fn a_compressed_body_past_the_limit_on_the_wire_is_413() {
    use async_compression::tokio::bufread::GzipEncoder;
    use async_compression::Level;
    let app = TestApp::spawn(|s| s.server.max_body_bytes = 10_000).await;
    let json = serde_json::to_vec(&json!({"value": "x".repeat(9_985)})).unwrap();
    assert!(json.len() <= 10_000);
    let mut stored = Vec::new();
    GzipEncoder::with_quality(&json[..], Level::Precise(0)).read_to_end(&mut stored).await.unwrap();
    assert!(stored.len() > 10_000, "stored blocks: {} bytes", stored.len());
    let mut connection = RawConnection::open(app.addr()).await;
    let head = "PUT /api/cache/wire HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
    connection.send(head.as_bytes()).await;
    for piece in stored.chunks(4096) {
        connection.send(format!("{:x}\r\n", piece.len()).as_bytes()).await;
        connection.send(piece).await;
        connection.send(b"\r\n").await;
    }
    connection.send(b"0\r\n\r\n").await;
    let (status, answer) = connection.read_response().await;
    assert_eq!(status, 413, "{answer}");
    assert_absent(&app, "wire").await;
}

/// 1 GiB of zeros in a 1 MB gzip body (16 members of 64 MiB each) against a 2 MiB limit: the
/// limit is checked while decoding, so the process's peak memory barely moves (a decoder that
/// inflated first, then checked, would need the whole GiB).
#[tokio::test]
async fn a_gzip_bomb_costs_no_more_memory_than_the_limit() {
    let service = ServiceProcess::start(&[("TIERCACHE__SERVER__MAX_BODY_BYTES", "2097152")]).await;
    let member = tokio::process::Command::new("sh")
        .args(["-c", "head -c 67108864 /dev/zero | gzip -9"])
        .output()
        .await
        .expect("gzip runs");
    assert!(member.status.success() && member.stdout.len() < 128 << 10, "{} bytes", member.stdout.len());
    let bomb = member.stdout.repeat(16);
    let peak_before_kb = proc_status_kb(service.pid(), "VmHWM");
    let response = crate::harness::client()
        .put(format!("{}/api/cache/bomb", service.base))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    let grown_kb = proc_status_kb(service.pid(), "VmHWM").saturating_sub(peak_before_kb);
    assert!(grown_kb < 32 * 1024, "peak RSS grew by {grown_kb} kB");
}

#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_501() {
    let app = TestApp::spawn(|_| {}).await;
    let mut connection = RawConnection::open(app.addr()).await;
    let body = br#"{"value":1}"#;
    let head = "PUT /api/cache/te HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
    connection.send(head.as_bytes()).await;
    connection.send(format!("{:x}\r\n", body.len()).as_bytes()).await;
    connection.send(body).await;
    connection.send(b"\r\n0\r\n\r\n").await;
    let (status, answer) = connection.read_response().await;
    assert_eq!(status, 501, "{answer}");
    assert_eq!(serde_json::from_str::<Value>(&answer).unwrap()["error"]["code"], "unsupported_transfer_encoding");
    // Plain chunked is fine.
    let mut connection = RawConnection::open(app.addr()).await;
    let head = "PUT /api/cache/te HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    connection.send(format!("{head}{:x}\r\n", body.len()).as_bytes()).await;
    connection.send(body).await;
    connection.send(b"\r\n0\r\n\r\n").await;
    assert_eq!(connection.read_response().await.0, 200);
}

async fn raw_status(app: &TestApp, request: &str) -> (u16, String) {
    let mut connection = RawConnection::open(app.addr()).await;
    connection.send(request.as_bytes()).await;
    connection.read_response().await
}

#[tokio::test]
async fn an_http_1_1_request_needs_exactly_one_host() {
    let app = TestApp::spawn(|_| {}).await;
    let (status, body) = raw_status(&app, "GET /health HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "invalid_host");
    let (status, _) = raw_status(&app, "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").await;
    assert_eq!(status, 400);
    assert_eq!(raw_status(&app, "GET /health HTTP/1.1\r\nHost: a\r\n\r\n").await.0, 200);
    assert_eq!(raw_status(&app, "GET /health HTTP/1.0\r\n\r\n").await.0, 200, "HTTP/1.0 has no Host rule");
}

#[tokio::test]
async fn request_headers_past_max_header_bytes_are_431() {
    let app = TestApp::spawn(|_| {}).await;
    // The section counts every field line with ": " and CRLF: "Host: 127.0.0.1\r\n" is 17.
    let with_filler =
        |filler: usize| format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: {}\r\n\r\n", "f".repeat(filler));
    let at_limit = 65536 - 17 - ("X-Filler".len() + 4);
    assert_eq!(raw_status(&app, &with_filler(at_limit)).await.0, 200);
    let (status, body) = raw_status(&app, &with_filler(at_limit + 1)).await;
    assert_eq!(status, 431, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "headers_too_large");

    // A request target past hyper's limit: its own 414, with no body (openapi.yaml says so).
    let (status, body) =
        raw_status(&app, &format!("GET /api/cache/{} HTTP/1.1\r\nHost: a\r\n\r\n", "k".repeat(66_000))).await;
    assert_eq!((status, body.as_str()), (414, ""));

    let roomy = TestApp::spawn(|s| s.server.max_header_bytes = 256 * 1024).await;
    let big = format!("GET /health HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "v".repeat(114_000));
    assert_eq!(raw_status(&roomy, &big).await.0, 200, "a larger limit is honoured");
}
