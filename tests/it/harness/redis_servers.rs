//! Real `redis-server` processes on free loopback ports: a server, a 3-master cluster and a
//! TLS-only server. Each is killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{eventually, free_port, DEADLINE};

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
