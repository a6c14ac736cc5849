//! Fuzzing the HTTP decoders: random keys, bodies, paths, content types and codings thrown at
//! the real router never produce a 5xx, and every error is the JSON error shape. Cases: 512 in the test
//! command, `TIERCACHE_FUZZ_CASES` (bench/fuzz.sh: 100 000) otherwise.

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use tower::ServiceExt;

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        (prop::sample::select(tiercache::FIXED_ROUTES.to_vec()), "[a-zA-Z0-9:/%._~\\-]{0,40}")
            .prop_map(|(route, rest)| format!("{route}{rest}")),
        "/[ -~&&[^ #?]]{0,60}",
        "/api/cache/(%[0-9A-Fa-f]{2}){1,12}",
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let json = prop_oneof![
        Just(serde_json::json!({"value": 1})),
        Just(serde_json::json!({"keys": ["a"], "pattern": "a*", "tags": ["t"]})),
        Just(
            serde_json::json!({"entries": [{"key": "k", "value": null, "ttl": 5, "tags": ["x"], "depends_on": ["k"]}]})
        ),
        Just(serde_json::json!({"count": 3, "predictions": {"k": 0.2}})),
        Just(serde_json::json!({"items": [{"key": "k", "priority": 0.5}]})),
        any::<i64>().prop_map(|n| serde_json::json!({"value": n, "ttl": n})),
        "[ -~]{0,20}"
            .prop_map(|s| serde_json::json!({"value": s, "tags": [s.clone()], "depends_on": [s.clone()], "keys": [s]})),
    ]
    .prop_map(|value| serde_json::to_vec(&value).unwrap());
    prop_oneof![
        json,
        prop::collection::vec(any::<u8>(), 0..64),
        "[{}\\[\\]\":,a-z0-9 ]{0,40}".prop_map(String::into_bytes)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: tiercache::bench_api::fuzz_cases(512),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn fuzz_requests_never_answer_5xx_and_errors_are_json(
        method in prop::sample::select(vec!["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD"]),
        path in path(),
        body in body(),
        content_type in prop::option::of(prop::sample::select(vec!["application/json", "text/plain", "application/x-ndjson", "garbage"])),
        content_encoding in prop::option::of(prop::sample::select(vec!["gzip", "zstd", "br", "identity", "deflate", "gzip, br", "x-gzip"])),
        host in prop::option::weighted(0.9, Just("127.0.0.1")),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut settings = tiercache::Settings::default();
        settings.cache.max_key_bytes = 32;
        settings.cache.max_value_bytes = 48;
        let router = tiercache::router_for_tests(&settings);
        let mut request = Request::builder().method(method).uri(&path);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(content_encoding) = content_encoding {
            request = request.header("content-encoding", content_encoding);
        }
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let Ok(request) = request.body(Body::from(body)) else { return Ok(()) };
        let response = runtime.block_on(router.oneshot(request)).unwrap();
        let status = response.status();
        prop_assert!(!status.is_server_error(), "{method} {path} answered {status}");
        let bytes = runtime.block_on(axum::body::to_bytes(response.into_body(), 1 << 20)).unwrap();
        if status.is_client_error() && method != "HEAD" {
            let json: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|err| TestCaseError::fail(format!("{method} {path}: {status} body is not JSON ({err})")))?;
            if status.as_u16() != 404 || json.get("error").is_some() {
                prop_assert!(json["error"]["code"].is_string() && json["error"]["message"].is_string(), "{method} {path}: {json}");
            } else {
                prop_assert_eq!(&json["hit"], &serde_json::json!(false), "a 404 is a miss or an error: {}", json);
            }
        }
    }
}
