//! The shared harness: the only place that knows how to start what the tests talk to.
//! Every wait has a deadline, and everything a test starts is stopped when it is dropped.

#![allow(dead_code)] // Each test file uses a different part of the harness.

mod origin;
mod proxy;

pub use self::origin::{Reply, TestOrigin};
pub use self::proxy::{Fault, FaultProxy};

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tiercache::{App, Settings};

/// How long `eventually` and process waits poll before failing.
pub const DEADLINE: Duration = Duration::from_secs(10);

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
        let mut checked = settings.clone();
        checked.server.listen = "127.0.0.1:1".into();
        checked.validate().expect("test settings are valid");
        let app = App::start(settings).await.expect("the app starts");
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

pub fn client() -> reqwest::Client {
    // The service's reqwest build brings its own TLS provider choice: ring, installed once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().timeout(DEADLINE).build().expect("a reqwest client")
}

/// Polls `check` until it returns true; fails after [`DEADLINE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < DEADLINE {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not true within {DEADLINE:?}: {what}");
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`…); 0 when the process is gone.
pub fn proc_status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let prefix = format!("{field}:");
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix(&prefix).and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A free loopback port: bound, read and released.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("local addr").port()
}

/// The real `tiercache` binary as a child process, killed on drop.
pub struct ServiceProcess {
    child: Option<Child>,
    pub port: u16,
    pub base: String,
}

impl ServiceProcess {
    /// Starts the binary with `env` on a free port and waits for `/health`.
    pub async fn start(env: &[(&str, &str)]) -> ServiceProcess {
        ServiceProcess::start_on(free_port(), env, None).await
    }

    /// Starts the binary on `port` (a restart reuses its port), its log appended to `log`.
    pub async fn start_on(port: u16, env: &[(&str, &str)], log: Option<&std::path::Path>) -> ServiceProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tiercache"));
        let (stdout, stderr) = match log {
            Some(path) => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("open the log");
                (Stdio::from(file.try_clone().expect("clone the log handle")), Stdio::from(file))
            }
            None => (Stdio::null(), Stdio::null()),
        };
        command
            .env_clear()
            .env("TIERCACHE__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command.spawn().expect("the binary starts");
        let process = ServiceProcess { child: Some(child), port, base: format!("http://127.0.0.1:{port}") };
        let health = format!("{}/health", process.base);
        let client = client();
        eventually("the service answers /health", || {
            let request = client.get(&health).send();
            async move { request.await.is_ok_and(|response| response.status() == 200) }
        })
        .await;
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status().expect("kill runs");
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().expect("running").try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(started.elapsed() < DEADLINE, "the process did not exit within {DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the binary to completion with `args` and `env` (for start-up failures); bounded.
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    run_binary_for(args, env, None)
}

/// Runs the binary for at most `run_for` (then stops it with SIGTERM), or to completion within
/// [`DEADLINE`] when `run_for` is `None`; returns its exit status and stderr.
pub fn run_binary_for(args: &[&str], env: &[(&str, &str)], run_for: Option<Duration>) -> (ExitStatus, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tiercache"));
    command
        .env_clear()
        .args(args)
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("the binary starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if run_for.is_some_and(|run_for| started.elapsed() > run_for) {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            break child.wait().expect("wait");
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the binary did not exit within {DEADLINE:?} for args {args:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr).expect("stderr");
    (status, stderr)
}

/// A hand-driven HTTP/1.1 connection, for requests that must stay in flight (a body sent in
/// parts) while the test does something else.
pub struct RawConnection {
    stream: tokio::net::TcpStream,
}

impl RawConnection {
    pub async fn open(addr: SocketAddr) -> RawConnection {
        let stream = tokio::time::timeout(DEADLINE, tokio::net::TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        RawConnection { stream }
    }

    /// Sends the head of a `PUT /api/cache/{key}` announcing `body_len` bytes, and `first` of them.
    pub async fn start_put(&mut self, key: &str, body_len: usize, first: &[u8]) {
        let head = format!(
            "PUT /api/cache/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n"
        );
        self.send(head.as_bytes()).await;
        self.send(first).await;
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.expect("write to the server");
    }

    /// Reads one response and returns its status and body (needs `Content-Length`).
    pub async fn read_response(&mut self) -> (u16, String) {
        use tokio::io::AsyncReadExt;
        let mut buffer = Vec::new();
        let read = async {
            loop {
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.expect("read from the server");
                if n == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..n]);
                if let Some(head_end) = find(&buffer, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|line| line.strip_prefix("content-length:"))
                        .map(|value| value.trim().parse::<usize>().expect("content-length"))
                        .unwrap_or(0);
                    if buffer.len() >= head_end + 4 + length {
                        break;
                    }
                }
            }
        };
        tokio::time::timeout(DEADLINE, read).await.expect("a response in time");
        let text = String::from_utf8_lossy(&buffer).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {text:?}"));
        let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
        (status, body)
    }
}

impl RawConnection {
    /// Reads until `needle` has arrived (or the connection ends), within [`DEADLINE`].
    pub async fn read_until(&mut self, needle: &[u8]) -> String {
        use tokio::io::AsyncReadExt;
        let mut buffer = Vec::new();
        let read = async {
            while find(&buffer, needle).is_none() {
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(DEADLINE, read).await.expect("the bytes in time");
        String::from_utf8_lossy(&buffer).into_owned()
    }

    /// Everything the server sends until it closes the connection, and whether it closed it
    /// within `within` (a reset counts as closed).
    pub async fn read_to_close(&mut self, within: Duration) -> (String, bool) {
        use tokio::io::AsyncReadExt;
        let mut buffer = Vec::new();
        let read = async {
            loop {
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
        };
        let closed = tokio::time::timeout(within, read).await.is_ok();
        (String::from_utf8_lossy(&buffer).into_owned(), closed)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// A real `redis-server` on a free loopback port, without persistence; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// `port` is a TLS port (and the plain port is off).
    tls: bool,
    /// Extra `redis-server` arguments, kept for restarts.
    extra: Vec<String>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_with(&[]).await
    }

    /// A server with extra `redis-server` arguments (e.g. `--requirepass`).
    pub async fn start_with(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer::unstarted(free_port());
        server.extra = extra.iter().map(|arg| arg.to_string()).collect();
        server.spawn().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain client for the test to look at or change what is stored.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url()).expect("valid url").get_connection().expect("redis answers")
    }

    /// How many times Redis ran `command` (lower case) since start or `CONFIG RESETSTAT`.
    pub fn calls(&self, command: &str) -> u64 {
        let stats: String = redis::cmd("INFO").arg("commandstats").query(&mut self.client()).unwrap();
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().expect("a count"))
    }

    /// A figure of `INFO stats`.
    pub fn stat(&self, name: &str) -> u64 {
        let stats: String = redis::cmd("INFO").arg("stats").query(&mut self.client()).unwrap();
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}:")))
            .map(|value| value.trim().parse().expect("a count"))
            .unwrap_or_else(|| panic!("INFO stats has no {name}"))
    }

    /// Kills the server (SIGKILL: no goodbye to clients, as in a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: connections stay open and nothing
    /// answers, the blackhole a crash test misses.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("running").id();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").arg(signal).arg(pid.to_string()).status().expect("kill runs");
        assert!(status.success());
    }

    /// Starts a killed server again on the same port (with its data, when it persists).
    pub async fn revive(&mut self) {
        assert!(self.child.is_none(), "revive a killed server");
        self.spawn().await;
    }

    /// Starts the server again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn unstarted(port: u16) -> RedisServer {
        RedisServer { child: None, port, dir: tempfile::tempdir().expect("a temp dir"), tls: false, extra: Vec::new() }
    }

    /// The pid of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    async fn spawn(&mut self) {
        let port = self.port.to_string();
        let ports: &[&str] = if self.tls { &["--port", "0", "--tls-port", &port] } else { &["--port", &port] };
        let child = Command::new("redis-server")
            .args(ports)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(&self.extra)
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (scripts/test.sh installs it)");
        self.child = Some(child);
        // Listening is ready enough without persistence; PING would need the password.
        let port = self.port;
        eventually("redis-server accepts connections", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
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

/// A real 3-master Redis Cluster on loopback (`redis-cli --cluster create`); killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for port in cluster_ports(3) {
            let mut node = RedisServer::unstarted(port);
            node.extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"].map(String::from).to_vec();
            node.spawn().await;
            nodes.push(node);
        }
        let addresses: Vec<String> = nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect();
        let mut create = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli runs (scripts/test.sh installs redis-tools)");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = create.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > DEADLINE {
                let _ = create.kill();
                let _ = create.wait();
                panic!("redis-cli --cluster create did not finish within {DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes };
        for node in &cluster.nodes {
            let url = node.url();
            eventually("every node sees the cluster ok", || {
                let url = url.clone();
                async move {
                    redis::Client::open(url)
                        .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(500)))
                        .and_then(|mut connection| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut connection))
                        .is_ok_and(|info| info.contains("cluster_state:ok"))
                }
            })
            .await;
        }
        cluster
    }

    /// Seed nodes as `l2.cluster_nodes` takes them.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)).collect()
    }

    /// Every key on every master matching `pattern` (for assertions).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .nodes
            .iter()
            .flat_map(|node| redis::cmd("KEYS").arg(pattern).query::<Vec<String>>(&mut node.client()).unwrap())
            .collect();
        keys.sort();
        keys
    }
}

/// `count` ports whose cluster-bus twins (port + 10000) are free as well. A process-wide
/// cursor keeps clusters of tests running in parallel apart.
fn cluster_ports(count: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 50) as u16 * 100;
    let mut ports = Vec::new();
    while ports.len() < count {
        let candidate = base + NEXT.fetch_add(1, Ordering::Relaxed) % 5_000;
        let is_free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if is_free(candidate) && is_free(candidate + 10_000) {
            ports.push(candidate);
        }
    }
    ports
}

/// A `redis-server` that speaks only TLS, with a certificate from a throwaway CA made with
/// openssl; `ca_file` is what a client must trust.
pub struct TlsRedisServer {
    server: RedisServer,
    pub ca_file: std::path::PathBuf,
}

impl TlsRedisServer {
    pub async fn start() -> TlsRedisServer {
        let mut server = RedisServer::unstarted(free_port());
        let dir = server.dir.path().to_path_buf();
        let openssl = |args: &[&str]| {
            let status = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("openssl runs");
            assert!(status.success(), "openssl {args:?}");
        };
        openssl(
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2"]
                .iter()
                .copied()
                .chain(["-subj", "/CN=tiercache test CA"])
                .collect::<Vec<_>>(),
        );
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").expect("write ext.cnf");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let (cert, key, ca) = (file("server.crt"), file("server.key"), file("ca.crt"));
        server.tls = true;
        server.extra =
            ["--tls-cert-file", &cert, "--tls-key-file", &key, "--tls-ca-cert-file", &ca, "--tls-auth-clients", "no"]
                .map(String::from)
                .to_vec();
        server.spawn().await;
        TlsRedisServer { ca_file: dir.join("ca.crt"), server }
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.server.port)
    }
}
