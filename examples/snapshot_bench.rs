//! `bench/snapshot.sh` in Rust, for timings a shell cannot take finely: loads N entries of
//! 100-byte values into tiercache and into Redis, then, side by side and ROUNDS times each,
//! times tiercache's snapshot write against Redis `SAVE`, and tiercache's restart with the
//! snapshot (time to `/ready`, time until every entry is back) against a Redis restart loading
//! the RDB (time until `DBSIZE` answers N). Peak extra memory is VmHWM minus the RSS before,
//! with the peak reset through `/proc/PID/clear_refs`. Both servers run on core 0; this
//! program on core 1. Everything it starts it stops. Loopback only.
//!
//! usage: snapshot_bench TIERCACHE_BIN STATE_DIR ENTRIES ROUNDS

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TC_PORT: u16 = 18401;
const REDIS_PORT: u16 = 18402;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: snapshot_bench TIERCACHE_BIN STATE_DIR ENTRIES ROUNDS");
        std::process::exit(2);
    }
    let (bin, state) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let entries: usize = args[3].parse().expect("ENTRIES");
    let rounds: usize = args[4].parse().expect("ROUNDS");
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&state).expect("state dir");
    let snapshot = state.join("bench.snapshot");
    let _ = std::fs::remove_file(&snapshot);
    let _ = std::fs::remove_file(state.join("bench.rdb"));
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    let mut tiercache = start_tiercache(&bin, &snapshot);
    wait_until(Duration::from_secs(10), Duration::from_millis(1), || async {
        get_status(&http, "/health").await == Some(200)
    })
    .await;
    load_tiercache(&http, entries).await;
    let mut redis = start_redis(&state);
    let mut connection = redis_connection().await;
    load_redis(&mut connection, entries).await;
    let tc_rss = rss_kib(tiercache.0.id());
    let redis_rss = rss_kib(redis.0.id());
    let used_memory: u64 = info_field(&mut connection, "memory", "used_memory").await;
    println!(
        "| loaded | tiercache RSS {} MiB | Redis RSS {} MiB, used_memory {} MiB |",
        tc_rss / 1024,
        redis_rss / 1024,
        used_memory >> 20
    );

    let mut tc_write = Vec::new();
    let mut redis_save = Vec::new();
    for _ in 0..rounds {
        let pid = tiercache.0.id();
        let before = reset_peak(pid);
        let started = Instant::now();
        let response = http.post(url("/api/cache/snapshot")).send().await.unwrap();
        assert_eq!(response.status(), 200, "snapshot written");
        tc_write.push((started.elapsed(), peak_kib(pid).saturating_sub(before)));

        let pid = redis.0.id();
        let before = reset_peak(pid);
        let started = Instant::now();
        let _: () = redis::cmd("SAVE").query_async(&mut connection).await.expect("SAVE");
        redis_save.push((started.elapsed(), peak_kib(pid).saturating_sub(before)));
    }
    let snapshot_bytes = std::fs::metadata(&snapshot).unwrap().len();
    let rdb_bytes = std::fs::metadata(state.join("bench.rdb")).unwrap().len();

    let mut tc_ready = Vec::new();
    let mut tc_restore = Vec::new();
    let mut redis_load = Vec::new();
    for _ in 0..rounds {
        drop(tiercache); // SIGKILL: the snapshot on disk stays the one written above.
        let started = Instant::now();
        tiercache = start_tiercache(&bin, &snapshot);
        wait_until(Duration::from_secs(10), Duration::from_millis(1), || async {
            get_status(&http, "/ready").await == Some(200)
        })
        .await;
        let ready = started.elapsed();
        // Every 5 ms, as for Redis below: polling tiercache over HTTP costs its core more than
        // a DBSIZE costs Redis, so a tighter loop would tilt the comparison.
        wait_until(Duration::from_secs(120), Duration::from_millis(5), || async {
            l1_size(&http).await == entries as u64
        })
        .await;
        let restored = started.elapsed();
        let pid = tiercache.0.id();
        tc_ready.push(ready);
        tc_restore.push((restored, peak_kib(pid).saturating_sub(rss_kib(pid))));

        drop(connection);
        drop(redis);
        let started = Instant::now();
        redis = start_redis(&state);
        connection = redis_connection().await;
        loop {
            let size: Result<u64, _> = redis::cmd("DBSIZE").query_async(&mut connection).await;
            if size.as_ref().is_ok_and(|size| *size == entries as u64) {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "redis loads");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let pid = redis.0.id();
        redis_load.push((started.elapsed(), peak_kib(pid).saturating_sub(rss_kib(pid))));
    }

    println!();
    println!("| {entries} entries of 100-byte values | tiercache | Redis | tiercache / Redis |");
    println!("|---|---|---|---|");
    let (write, write_mem) = median(&tc_write);
    let (save, save_mem) = median(&redis_save);
    println!("| write: snapshot vs SAVE (ms) | {} | {} | {:.2} |", ms(write), ms(save), ratio(write, save));
    println!("| write: peak extra memory (MiB) | {} | {} | |", write_mem / 1024, save_mem / 1024);
    println!("| file size (MiB) | {} | {} | |", snapshot_bytes >> 20, rdb_bytes >> 20);
    let (restore, restore_mem) = median(&tc_restore);
    let (load, load_mem) = median(&redis_load);
    println!(
        "| load: every entry back after a restart (ms) | {} | {} | {:.2} |",
        ms(restore),
        ms(load),
        ratio(restore, load)
    );
    println!("| load: peak extra memory (MiB) | {} | {} | |", restore_mem / 1024, load_mem / 1024);
    let mut ready = tc_ready.clone();
    ready.sort();
    println!("| start to /ready 200 with the snapshot present (ms) | {} | | |", ms(ready[ready.len() / 2]));
    println!();
    println!(
        "raw (ms): write {:?}; save {:?}; restore {:?}; redis load {:?}; ready {:?}",
        tc_write.iter().map(|r| ms(r.0)).collect::<Vec<_>>(),
        redis_save.iter().map(|r| ms(r.0)).collect::<Vec<_>>(),
        tc_restore.iter().map(|r| ms(r.0)).collect::<Vec<_>>(),
        redis_load.iter().map(|r| ms(r.0)).collect::<Vec<_>>(),
        tc_ready.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
    );
}

fn start_tiercache(bin: &Path, snapshot: &Path) -> Killed {
    let child = Command::new("taskset")
        .arg("-c")
        .arg("0")
        .arg(bin)
        .env_clear()
        .env("TIERCACHE__SERVER__LISTEN", format!("127.0.0.1:{TC_PORT}"))
        .env("TIERCACHE__PERSISTENCE__PATH", snapshot)
        .env("TIERCACHE__L1__MAX_ENTRIES", "2000000")
        .env("TIERCACHE__L1__MAX_BYTES", "8000000000")
        .env("TIERCACHE__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tiercache starts");
    Killed(child)
}

fn start_redis(state: &Path) -> Killed {
    let child = Command::new("taskset")
        .args(["-c", "0", "redis-server", "--bind", "127.0.0.1", "--port", &REDIS_PORT.to_string()])
        .args(["--save", "", "--appendonly", "no", "--dbfilename", "bench.rdb"])
        .arg("--dir")
        .arg(state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    Killed(child)
}

async fn redis_connection() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(format!("redis://127.0.0.1:{REDIS_PORT}")).unwrap();
    let started = Instant::now();
    loop {
        if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
            connection.set_response_timeout(Duration::from_secs(300)); // SAVE of a large set.
            return connection;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "redis answers");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A JSON string of 100 bytes serialized, pseudo-random per index so that neither side's file
/// format can compress the data set away.
fn value_of(idx: usize) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut state = (idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let body: String = (0..98)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ALPHABET[(state & 63) as usize] as char
        })
        .collect();
    format!("\"{body}\"")
}

async fn load_tiercache(http: &reqwest::Client, entries: usize) {
    for start in (0..entries).step_by(5000) {
        let mut body = String::from("{\"entries\":[");
        for idx in start..(start + 5000).min(entries) {
            if idx > start {
                body.push(',');
            }
            body.push_str(&format!("{{\"key\":\"key:{idx:07}\",\"value\":{},\"ttl\":86400}}", value_of(idx)));
        }
        body.push_str("]}");
        let response = http
            .post(url("/api/cache/batch/set"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

async fn load_redis(connection: &mut redis::aio::MultiplexedConnection, entries: usize) {
    for start in (0..entries).step_by(10_000) {
        let mut pipe = redis::pipe();
        for idx in start..(start + 10_000).min(entries) {
            pipe.cmd("SET").arg(format!("key:{idx:07}")).arg(value_of(idx)).arg("EX").arg(86400).ignore();
        }
        let _: () = pipe.query_async(connection).await.expect("pipelined SETs");
    }
}

async fn info_field(connection: &mut redis::aio::MultiplexedConnection, section: &str, field: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg(section).query_async(connection).await.unwrap();
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|value| value.trim().parse().ok())
        .expect("INFO field")
}

fn url(path: &str) -> String {
    format!("http://127.0.0.1:{TC_PORT}{path}")
}

async fn get_status(http: &reqwest::Client, path: &str) -> Option<u16> {
    http.get(url(path)).send().await.ok().map(|response| response.status().as_u16())
}

async fn l1_size(http: &reqwest::Client) -> u64 {
    let Ok(response) = http.get(url("/api/cache/metrics")).send().await else { return 0 };
    let metrics: serde_json::Value = response.json().await.unwrap_or_default();
    metrics["l1_size"].as_u64().unwrap_or(0)
}

async fn wait_until<F, Fut>(limit: Duration, every: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "condition not met within {limit:?}");
        tokio::time::sleep(every).await;
    }
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn peak_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// Resets the process's peak RSS to its current RSS; returns that RSS.
fn reset_peak(pid: u32) -> u64 {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    rss_kib(pid)
}

fn median(samples: &[(Duration, u64)]) -> (Duration, u64) {
    let mut times: Vec<Duration> = samples.iter().map(|sample| sample.0).collect();
    let mut memory: Vec<u64> = samples.iter().map(|sample| sample.1).collect();
    times.sort();
    memory.sort();
    (times[times.len() / 2], memory[memory.len() / 2])
}

fn ms(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1000.0)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}
