//! Resource exhaustion against the real binary: 10k idle connections, slowloris clients, 1000
//! concurrent large bodies and a flood past `server.max_concurrency`. The service sheds with
//! 503, `/health` keeps answering, and latency returns to normal afterwards. Each test prints its
//! figures (RELIABILITY.md quotes them).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{client, Reply, ServiceProcess, TestOrigin};

/// How long `/health` may take while the service is under attack (a loaded 2-core machine
/// running the whole suite; an unresponsive service takes seconds or never answers).
const HEALTH_WITHIN: Duration = Duration::from_millis(1000);
/// Slack on "latency is back to what it was": other tests share the machine (a wedged service
/// takes seconds).
const RECOVERED_WITHIN: Duration = Duration::from_millis(50);

/// One exhaustion test at a time: each opens thousands of sockets from this process and loads
/// the machine, and two at once would share a file-descriptor limit and the cores they measure.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The process's resident set now, in kB.
fn rss_kb(pid: u32) -> u64 {
    crate::harness::proc_status_kb(pid, "VmRSS")
}

/// Median time of `n` sequential GETs of an L1-resident key.
async fn hit_latency(base: &str, n: usize) -> Duration {
    let client = client();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let response = client.get(format!("{base}/api/cache/resident")).send().await.expect("an answer");
        assert_eq!(response.status(), 200);
        times.push(started.elapsed());
    }
    times.sort();
    times[n / 2]
}

async fn health_answers(base: &str) -> Duration {
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), client().get(format!("{base}/health")).send())
        .await
        .expect("/health answers in time")
        .expect("/health answers");
    assert_eq!(response.status(), 200);
    started.elapsed()
}

async fn put_resident(base: &str) {
    let response = client()
        .put(format!("{base}/api/cache/resident"))
        .json(&serde_json::json!({"value": "here"}))
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status(), 200);
}

/// Connections this process can open on top of what it has: 10 000 when the hard limit on open
/// files allows (the soft limit is raised to it), fewer otherwise (printed).
fn idle_connections_possible() -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let possible = (limit.saturating_sub(2048) as usize).min(10_000);
    if possible < 10_000 {
        println!("open file limit {limit}: {possible} idle connections instead of 10000");
    }
    possible
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_leave_the_service_answering() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let service = ServiceProcess::start(&[]).await;
    put_resident(&service.base).await;
    let before = hit_latency(&service.base, 50).await;
    let rss_before = rss_kb(service.pid());

    let wanted = idle_connections_possible();
    let mut idle = Vec::with_capacity(wanted);
    let started = Instant::now();
    while idle.len() < wanted {
        let batch = (wanted - idle.len()).min(500);
        let connects = (0..batch).map(|_| TcpStream::connect(("127.0.0.1", service.port)));
        for stream in futures_util::future::join_all(connects).await {
            idle.push(stream.expect("the service accepts the connection"));
        }
    }
    let opened_in = started.elapsed();
    // Every connection is accepted: each now holds a server-side socket as well.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = health_answers(&service.base).await;
    let during = hit_latency(&service.base, 50).await;
    let rss_during = rss_kb(service.pid());
    drop(idle);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = hit_latency(&service.base, 50).await;
    println!(
        "{wanted} idle connections opened in {opened_in:?}: /health {health:?}; hit p50 {before:?} before, \
         {during:?} during, {after:?} after; RSS {rss_before} kB before, {rss_during} kB with them \
         ({:.1} kB each)",
        (rss_during.saturating_sub(rss_before)) as f64 / wanted as f64
    );
    assert!(health < HEALTH_WITHIN, "/health took {health:?}");
    assert!(after < before * 5 + RECOVERED_WITHIN, "latency recovers: {before:?} then {after:?}");
}

/// Sends a request head a byte at a time, 100 ms apart, until the server closes the connection;
/// returns how long that took (`None` if it never did within `limit`).
async fn slowloris(port: u16, limit: Duration) -> Option<Duration> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let started = Instant::now();
    let head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut buffer = [0u8; 512];
    for byte in head.iter().cycle() {
        if started.elapsed() > limit {
            return None;
        }
        if stream.write_all(&[*byte]).await.is_err() {
            return Some(started.elapsed());
        }
        // A closed connection reads as 0 bytes (or an error); a 408 may come first.
        if let Ok(read) = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer)).await {
            match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {}
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_off_after_the_request_timeout() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let service = ServiceProcess::start(&[("TIERCACHE__SERVER__REQUEST_TIMEOUT_MS", "1500")]).await;
    put_resident(&service.base).await;
    let attackers: Vec<_> = (0..200).map(|_| tokio::spawn(slowloris(service.port, Duration::from_secs(8)))).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = health_answers(&service.base).await;
    assert!(health < HEALTH_WITHIN, "/health took {health:?} beside 200 slowloris clients");
    let mut cut_after = Vec::new();
    for attacker in attackers {
        cut_after.push(attacker.await.unwrap().expect("a slowloris connection is closed by the server"));
    }
    cut_after.sort();
    let (first, last) = (cut_after[0], cut_after[cut_after.len() - 1]);
    println!("200 slowloris clients: cut after {first:?} .. {last:?}; /health meanwhile {health:?}");
    assert!(first >= Duration::from_millis(1400), "not before the timeout: {first:?}");
    assert!(last < Duration::from_millis(4000), "soon after it: {last:?}");

    // An idle keep-alive connection is closed after the same time.
    let mut idle = TcpStream::connect(("127.0.0.1", service.port)).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await.unwrap();
    let started = Instant::now();
    let mut buffer = vec![0u8; 4096];
    let first_read = idle.read(&mut buffer).await.unwrap();
    assert!(first_read > 0, "the request is answered");
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match idle.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle keep-alive connection is closed");
    assert!(started.elapsed() >= Duration::from_millis(1400), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_large_bodies_are_shed_or_stored_within_bounded_memory() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let service = ServiceProcess::start(&[("TIERCACHE__SERVER__MAX_CONCURRENCY", "64")]).await;
    put_resident(&service.base).await;
    let before = hit_latency(&service.base, 20).await;
    let rss_before = rss_kb(service.pid());
    // 900 KiB JSON values (under the 1 MiB value limit), one shared buffer on this side.
    let body = bytes::Bytes::from(format!("{{\"value\":\"{}\"}}", "x".repeat(900 * 1024)));
    let client = client();
    let sampler = {
        let pid = service.pid();
        tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..400 {
                peak = peak.max(rss_kb(pid));
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            peak
        })
    };
    let started = Instant::now();
    let puts = (0..1000).map(|idx| {
        let request = client
            .put(format!("{}/api/cache/large{idx}", service.base))
            .header("content-type", "application/json")
            .body(body.clone());
        async move {
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let text = response.text().await.unwrap_or_default();
                    (status, text)
                }
                Err(err) => (0, format!("{err:?}")),
            }
        }
    });
    let answers = futures_util::future::join_all(puts).await;
    let took = started.elapsed();
    let health = health_answers(&service.base).await;
    let after = hit_latency(&service.base, 20).await;
    let peak_kb = sampler.await.unwrap().max(rss_kb(service.pid()));
    let stored = answers.iter().filter(|(status, _)| *status == 200).count();
    let shed = answers.iter().filter(|(status, text)| *status == 503 && text.contains("overloaded")).count();
    // A few uploads can meet a reset while the machine is loaded by the rest of the suite (the
    // cause is not yet known; see RELIABILITY.md): counted and bounded, not hidden.
    let resets = answers.iter().filter(|(status, text)| *status == 0 && text.contains("ConnectionReset")).count();
    let other: Vec<_> = answers
        .iter()
        .filter(|(status, text)| {
            *status != 200 && *status != 503 && !(*status == 0 && text.contains("ConnectionReset"))
        })
        .take(3)
        .collect();
    println!(
        "1000 concurrent 900 KiB PUTs in {took:?}: {stored} stored, {shed} shed with 503, {resets} reset; peak RSS {peak_kb} kB \
         (from {rss_before} kB); /health {health:?}; hit p50 {before:?} before, {after:?} after"
    );
    assert!(other.is_empty(), "only 200 or 503 overloaded: {other:?}");
    assert!(resets <= 50, "{resets} uploads were reset");
    assert_eq!(stored + shed + resets, 1000);
    assert!(stored > 0);
    // L1 keeps at most l1.max_bytes (256 MiB) of values; in flight, at most 64 bodies are read
    // at once. Everything else is shed before its body is read.
    let bound_kb = rss_before + (256 + 64 * 3) * 1024;
    assert!(peak_kb < bound_kb, "peak RSS {peak_kb} kB, bound {bound_kb} kB");
    assert!(after < before * 5 + RECOVERED_WITHIN, "latency recovers: {before:?} then {after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_past_max_concurrency_is_shed_with_503_and_health_answers() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let origin = TestOrigin::start().await;
    origin.set_default(Reply::delayed(Duration::from_millis(300)));
    let url = origin.url();
    let service = ServiceProcess::start(&[
        ("TIERCACHE__SERVER__MAX_CONCURRENCY", "32"),
        ("TIERCACHE__ORIGIN__URL", url.as_str()),
        ("TIERCACHE__ORIGIN__MAX_CONCURRENCY", "256"),
    ])
    .await;
    put_resident(&service.base).await;
    let before = hit_latency(&service.base, 20).await;
    let client = client();
    // 2000 reads of distinct keys, each held 300 ms by the origin: far past 32 in flight.
    let flood = (0..2000).map(|idx| {
        let request = client.get(format!("{}/api/cache/flood{idx}", service.base));
        async move { request.send().await.map(|response| response.status().as_u16()).unwrap_or(0) }
    });
    let started = Instant::now();
    let flood = tokio::spawn(futures_util::future::join_all(flood));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let health = health_answers(&service.base).await;
    let statuses = flood.await.unwrap();
    let took = started.elapsed();
    let served = statuses.iter().filter(|status| **status == 200).count();
    let shed = statuses.iter().filter(|status| **status == 503).count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = hit_latency(&service.base, 20).await;
    println!(
        "2000 concurrent origin reads past max_concurrency 32 in {took:?}: {served} served, {shed} shed; \
         /health during {health:?}; hit p50 {before:?} before, {after:?} after"
    );
    assert_eq!(served + shed, 2000, "every request is answered, 200 or 503: {statuses:?}");
    assert!(shed > 0 && served >= 32, "{served} served, {shed} shed");
    assert!(health < HEALTH_WITHIN, "/health is never shed: {health:?}");
    assert!(after < before * 5 + RECOVERED_WITHIN, "latency recovers: {before:?} then {after:?}");
}
