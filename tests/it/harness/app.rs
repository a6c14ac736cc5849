//! An in-process tiercache on a free loopback port, and the responses read from it.

use std::net::SocketAddr;

use serde_json::Value;
use tiercache::{App, Settings};

use super::{client, eventually, RedisCluster, RedisServer, TestOrigin};

/// An in-process tiercache on a free loopback port.
pub struct TestApp {
    app: Option<App>,
    pub base: String,
    client: reqwest::Client,
}

impl TestApp {
    /// Starts an instance with test defaults, adjusted by `configure`.
    pub async fn spawn(configure: impl FnOnce(&mut Settings)) -> TestApp {
        let mut settings = Settings::default();
        settings.server.listen = "127.0.0.1:0".into();
        configure(&mut settings);
        // Port 0 (any free port) is for tests only; the config rules ask for 1..=65535.
        let listen = settings.server.listen.parse().expect("a socket address");
        settings.server.listen = "127.0.0.1:1".into();
        let mut parts = settings.parts().expect("test settings are valid");
        parts.server.listen = listen;
        let app = App::start(parts).await.expect("the app starts");
        let base = format!("http://{}", app.local_addr());
        TestApp { app: Some(app), base, client: client() }
    }

    pub fn addr(&self) -> SocketAddr {
        self.app.as_ref().expect("running").local_addr()
    }

    pub async fn get(&self, path: &str) -> TestResponse {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn get_with(&self, path: &str, header: &str, value: &str) -> TestResponse {
        self.send(self.client.get(self.url(path)).header(header, value)).await
    }

    pub async fn put(&self, key: &str, body: Value) -> TestResponse {
        self.send(self.client.put(self.url(&format!("/api/cache/{key}"))).json(&body)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> TestResponse {
        self.send(self.client.post(self.url(path)).json(&body)).await
    }

    pub async fn delete(&self, path: &str) -> TestResponse {
        self.send(self.client.delete(self.url(path))).await
    }

    /// A request with any method, raw body bytes and an optional content type.
    pub async fn raw(&self, method: &str, path: &str, content_type: Option<&str>, body: Vec<u8>) -> TestResponse {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid method");
        let mut request = self.client.request(method, self.url(path)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        self.send(request).await
    }

    /// A request with any method, headers and raw body bytes.
    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> TestResponse {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("valid method");
        let mut request = self.client.request(method, self.url(path)).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> TestResponse {
        TestResponse::from(request.send().await.expect("request reaches the test server")).await
    }

    /// Aborts the instance's background tasks called `name`, as a crash would; returns how many.
    pub fn abort_task(&self, name: &str) -> usize {
        self.app.as_ref().expect("running").task_health().abort(name)
    }

    /// Stops the instance the way a signal would.
    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // An App dropped without shutdown: its server task dies with the test's runtime.
        self.app.take();
    }
}

/// A response read whole, with helpers that fail with what was seen.
#[derive(Debug)]
pub struct TestResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl TestResponse {
    pub async fn from(response: reqwest::Response) -> TestResponse {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("body is readable").to_vec();
        TestResponse { status, headers, body }
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| panic!("body is not JSON ({err}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|value| value.to_str().expect("ASCII header").to_string())
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text());
        self
    }

    /// Asserts the error shape of SPEC §3 with this status and code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        self.assert_status(status);
        assert_eq!(self.header("content-type").as_deref(), Some("application/json"));
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "body: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "body: {body}");
        assert_eq!(body.as_object().map(|o| o.len()), Some(1), "body: {body}");
    }
}

impl TestApp {
    /// An instance using `redis` as L2, with a fast breaker so outage tests stay short, and a
    /// timeout generous enough for a loaded 2-core machine running tests in parallel.
    pub async fn spawn_with_redis(redis: &RedisServer, configure: impl FnOnce(&mut Settings)) -> TestApp {
        TestApp::spawn_with_redis_at(redis, redis.url(), configure).await
    }

    /// [`TestApp::spawn_with_redis`] reaching `redis` through `url` (a [`FaultProxy`]).
    pub async fn spawn_with_redis_at(
        redis: &RedisServer,
        url: String,
        configure: impl FnOnce(&mut Settings),
    ) -> TestApp {
        let app = TestApp::spawn(move |settings| {
            settings.l2.url = tiercache::config::Secret(url);
            settings.l2.breaker_failures = 2;
            settings.l2.breaker_open_secs = 1;
            settings.l2.timeout_ms = 1000;
            configure(settings);
        })
        .await;
        app.wait_for_l2("up").await;
        app.wait_subscribed(redis).await;
        app
    }

    /// An L1-only instance reading through to `origin`.
    pub async fn spawn_with_origin(origin: &TestOrigin, configure: impl FnOnce(&mut Settings)) -> TestApp {
        let url = origin.url();
        TestApp::spawn(move |settings| {
            settings.origin.url = url;
            configure(settings);
        })
        .await
    }

    /// An instance warming from the item `source` of `origin` (`warm.url`).
    pub async fn spawn_warmed_from(origin: &TestOrigin, configure: impl FnOnce(&mut Settings)) -> TestApp {
        let url = origin.item_url("source");
        TestApp::spawn(move |settings| {
            settings.warm.url = url;
            configure(settings);
        })
        .await
    }

    /// An instance with `cluster` as L2, once `/health` says L2 is up.
    pub async fn spawn_with_cluster(cluster: &RedisCluster) -> TestApp {
        let seeds = cluster.seeds();
        let app = TestApp::spawn(move |settings| {
            settings.l2.cluster_nodes = seeds;
            settings.l2.timeout_ms = 1000;
        })
        .await;
        app.wait_for_l2("up").await;
        app
    }

    /// Publishes probe messages until the instance has received one, so a test's own messages
    /// cannot be lost to a subscription still being set up. Counts one received message.
    pub async fn wait_subscribed(&self, redis: &RedisServer) {
        let mut connection = redis.client();
        eventually("the instance receives invalidation messages", || {
            let _: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg("tiercache:invalidation")
                .arg(r#"{"type":"EVICT","keys":["__probe__"]}"#)
                .query(&mut connection);
            async { self.metric("invalidations_received").await.as_u64().unwrap_or(0) > 0 }
        })
        .await;
    }

    /// Waits until `/health` reports `l2` in `state`.
    pub async fn wait_for_l2(&self, state: &str) {
        eventually(&format!("/health says l2 is {state}"), || async {
            self.get("/health").await.json()["l2"] == state
        })
        .await;
    }

    /// Waits until this instance has received `count` invalidation messages (the probe of
    /// `wait_subscribed` included), so a message about an earlier write cannot arrive later and
    /// drop a copy the test is about to look at.
    pub async fn wait_received(&self, count: u64) {
        eventually(&format!("{count} invalidation messages received"), || async {
            self.metric("invalidations_received").await.as_u64().unwrap_or(0) >= count
        })
        .await;
    }

    pub async fn metric(&self, name: &str) -> Value {
        self.get("/api/cache/metrics").await.json()[name].clone()
    }
}
