//! The shared harness: the only place that knows how to start what the tests talk to, one
//! file per kind of thing started: `app` (an in-process instance), `process` (the real binary),
//! `redis` (a server, a cluster, a TLS server), `origin` (an HTTP origin), `proxy` (a TCP
//! fault proxy) and `raw` (hand-driven HTTP/1.1 connections). Every wait has a deadline, and
//! everything a test starts is stopped when it is dropped.

#![allow(dead_code)] // Each test file uses a different part of the harness.

mod app;
mod origin;
mod process;
mod proxy;
mod raw;
mod redis_servers;

pub use self::app::{TestApp, TestResponse};
pub use self::origin::{Reply, TestOrigin};
pub use self::process::{run_binary, run_binary_for, ServiceProcess};
pub use self::proxy::{Fault, FaultProxy};
pub use self::raw::RawConnection;
pub use self::redis_servers::{RedisCluster, RedisServer, TlsRedisServer};

use std::future::Future;
use std::time::{Duration, Instant};

/// How long `eventually` and process waits poll before failing.
pub const DEADLINE: Duration = Duration::from_secs(10);

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
