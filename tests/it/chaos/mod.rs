//! The chaos run: a durable Redis behind a fault proxy, a slow and flaky origin, two tiercache
//! processes and a fixed-rate mixed load (Zipf reads, writes, deletes, invalidations by key, tag
//! and pattern, batches), while the harness in turn blackholes Redis, kills and restarts it, adds
//! latency to it, SIGTERMs one instance and restarts it from its snapshot, and makes the origin
//! fail half its requests. `short` runs one cycle in the test command; `long` (ignored) repeats
//! the cycle for `CHAOS_MINUTES` and is what `bench/chaos.sh --minutes N` runs.
//!
//! What is checked, from the records the load generator keeps:
//! - consistency: every mutating call is serialised per key and recorded with its outcome —
//!   acknowledged (a 200 that says L2 took it) or unknown (`"l2":"unavailable"`, a 5xx, a lost
//!   connection: it may or may not have landed, and may land late, up to [`HOLD`] after it was
//!   sent, while the network holds it). After the faults heal and one settle period
//!   ([`VISIBLE_WITHIN`], bounded by `l1.max_ttl_secs`), every key read from either instance
//!   must hold its last acknowledged state or the state of an unknown call that could still
//!   land after it — never an older value. During the run, a value read later than
//!   [`VISIBLE_WITHIN`] after an acknowledged call must be at least that new.
//! - no read that a copy in L1 or L2 could answer gets a 5xx: a 5xx on a read is only a 502
//!   from a failing origin for a key the instance had no copy of, and no request that does not
//!   go to the origin waits longer than `l2.timeout_ms` plus [`LATENCY_MARGIN`];
//! - peak RSS of each instance stays under `l1.max_bytes` plus [`RSS_OVERHEAD`];
//! - no panic in either log, no dead task (`/health` is 200 "ok" at the end), and the restart
//!   restored the snapshot.

mod checks;
mod cluster;
mod load;
mod records;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use self::checks::*;
use self::cluster::*;
use self::load::*;
use self::records::*;
use crate::harness::{Fault, FaultProxy, RedisServer, Reply, ServiceProcess, TestOrigin};

const WRITE_KEYS: usize = 200;
const ORIGIN_KEYS: usize = 200;
const L2_TIMEOUT_MS: u64 = 100;
const L1_MAX_TTL_SECS: u64 = 5;
const GRACE_SECS: u64 = 30;
const ORIGIN_MAX_AGE_SECS: u64 = 2;
const L1_MAX_BYTES: u64 = 256 * 1024;
/// What an instance may hold beyond `l1.max_bytes`: binary, runtime and thread stacks, the
/// allocator's arenas, connection buffers, the tag and dependency indexes.
const RSS_OVERHEAD: u64 = 64 << 20;
/// The longest the network holds a call (the 5 s blackhole) plus a margin: a call whose outcome
/// was unknown may land this long after it was sent.
const HOLD: Duration = Duration::from_secs(7);
/// An acknowledged call is visible on every instance this long after its answer: a copy that
/// missed its invalidation lives at most `l1.max_ttl_secs` in L1.
const VISIBLE_WITHIN: Duration = Duration::from_secs(L1_MAX_TTL_SECS + 1);
/// How much longer than `l2.timeout_ms` a request may take for reasons other than Redis (a
/// loaded 2-core machine running the whole test suite).
const LATENCY_MARGIN: Duration = Duration::from_millis(400);
const BLACKHOLE: Duration = Duration::from_secs(5);
const REDIS_DOWN: Duration = Duration::from_secs(2);
const REDIS_LATENCY: Duration = Duration::from_millis(200);

struct Plan {
    /// Requests per second the generator sends, whatever the answers.
    rate: u32,
    /// Quiet time between faults.
    calm: Duration,
    /// How long the latency and origin faults last.
    fault: Duration,
    /// Cycles of the fault schedule run until this much time has passed (at least one).
    run_for: Duration,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short() {
    // Calm periods outlast the breaker's open time (5 s), so each fault meets a closed breaker.
    let plan = Plan { rate: 150, calm: Duration::from_secs(6), fault: Duration::from_secs(5), run_for: Duration::ZERO };
    let report = run(plan).await;
    println!("{}", report.text);
    assert!(report.failures.is_empty(), "chaos checks failed:\n{}\n\n{}", report.failures.join("\n"), report.text);
}

/// `CHAOS_MINUTES` (default 10) of cycles; the report goes to stdout and to `CHAOS_REPORT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: bench/chaos.sh --minutes N runs it"]
async fn long() {
    let minutes: u64 = std::env::var("CHAOS_MINUTES").ok().and_then(|m| m.parse().ok()).unwrap_or(10);
    let plan = Plan {
        rate: 200,
        calm: Duration::from_secs(10),
        fault: Duration::from_secs(10),
        run_for: Duration::from_secs(minutes * 60),
    };
    let report = run(plan).await;
    println!("{}", report.text);
    if let Ok(path) = std::env::var("CHAOS_REPORT") {
        std::fs::write(&path, &report.text).expect("write the chaos report");
    }
    assert!(report.failures.is_empty(), "chaos checks failed:\n{}", report.failures.join("\n"));
}

/// `CHAOS_ENV=NAME=VALUE,…`: settings added to both instances (later ones win), to run the
/// same schedule against another configuration — or to check that the checks catch a broken
/// one (e.g. `TIERCACHE__INVALIDATION__FLUSH_L1_ON_RECONNECT=false`).
fn extra_env() -> Vec<(String, String)> {
    let extra = std::env::var("CHAOS_ENV").unwrap_or_default();
    extra
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// The process's peak resident set, in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    crate::harness::proc_status_kb(pid, "VmHWM")
}

struct Report {
    text: String,
    failures: Vec<String>,
}

async fn run(plan: Plan) -> Report {
    let mut cluster = Cluster::start().await;
    let ctx = Arc::new(Ctx {
        t0: Instant::now(),
        client: crate::harness::client(),
        bases: [cluster.base(0), cluster.base(1)],
        up: [AtomicBool::new(true), AtomicBool::new(true)],
        key_locks: (0..WRITE_KEYS).map(|_| tokio::sync::Mutex::new(())).collect(),
        history: (0..WRITE_KEYS).map(|_| Mutex::new(Vec::new())).collect(),
        observations: Mutex::new(Vec::new()),
        origin_reads: Mutex::new(Vec::new()),
        samples: Mutex::new(Vec::new()),
        foreign: Mutex::new(Vec::new()),
        phases: Mutex::new(Vec::new()),
        phase: AtomicUsize::new(0),
        seq: AtomicU64::new(1),
        in_flight: AtomicUsize::new(0),
        sent: AtomicU64::new(0),
        dropped_ticks: AtomicU64::new(0),
    });
    let mut faults: BTreeMap<&'static str, u32> = BTreeMap::new();
    let mut restored = 0;
    ctx.begin_phase("calm");
    let stop = Arc::new(AtomicBool::new(false));
    let generator = tokio::spawn(generate(ctx.clone(), plan.rate, stop.clone()));

    let started = Instant::now();
    loop {
        tokio::time::sleep(plan.calm).await;

        ctx.begin_phase("redis blackholed");
        cluster.proxy.set(Fault::Blackhole);
        *faults.entry("redis blackholed 5 s").or_default() += 1;
        tokio::time::sleep(BLACKHOLE).await;
        cluster.proxy.heal();
        ctx.begin_phase("calm");
        tokio::time::sleep(plan.calm).await;

        ctx.begin_phase("redis killed and restarted");
        cluster.redis.kill();
        *faults.entry("redis killed (SIGKILL) and restarted").or_default() += 1;
        tokio::time::sleep(REDIS_DOWN).await;
        cluster.redis.revive().await;
        ctx.begin_phase("calm");
        tokio::time::sleep(plan.calm).await;

        ctx.begin_phase("redis +200 ms");
        cluster.proxy.set(Fault::Latency(REDIS_LATENCY));
        *faults.entry("redis +200 ms latency").or_default() += 1;
        tokio::time::sleep(plan.fault).await;
        cluster.proxy.heal();
        ctx.begin_phase("calm");
        tokio::time::sleep(plan.calm).await;

        ctx.begin_phase("instance 0 SIGTERM and restart");
        *faults.entry("instance SIGTERM, restart from snapshot").or_default() += 1;
        ctx.up[0].store(false, Ordering::SeqCst);
        let mut process = cluster.instances[0].take().expect("instance 0 runs");
        cluster.stopped_peak_kb[0] = cluster.stopped_peak_kb[0].max(peak_rss_kb(process.pid()));
        process.signal("TERM");
        let status = process.wait_exit().await;
        assert!(status.success(), "instance 0 exits 0 on SIGTERM: {status:?}");
        drop(process);
        let restores_before = cluster.log(0).matches("snapshot restored").count();
        cluster.start_instance(0).await;
        ctx.up[0].store(true, Ordering::SeqCst);
        crate::harness::eventually("the restarted instance restores its snapshot", || {
            let log = cluster.log(0);
            async move { log.matches("snapshot restored").count() > restores_before }
        })
        .await;
        restored += 1;
        ctx.begin_phase("calm");
        tokio::time::sleep(plan.calm).await;

        ctx.begin_phase("origin failing 50%");
        cluster.origin.set_failure_percent(50);
        *faults.entry("origin failing 50% of requests").or_default() += 1;
        tokio::time::sleep(plan.fault).await;
        cluster.origin.set_failure_percent(0);
        ctx.begin_phase("calm");

        if started.elapsed() >= plan.run_for {
            break;
        }
    }
    tokio::time::sleep(plan.calm).await;
    stop.store(true, Ordering::SeqCst);
    generator.await.expect("the generator runs to the end");
    let drained = Instant::now();
    while ctx.in_flight.load(Ordering::SeqCst) > 0 && drained.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let load_secs = ctx.now().as_secs_f64();

    // Settle: both instances see L2, then one L1 lifetime passes.
    ctx.begin_phase("settle");
    for idx in 0..2 {
        let health = format!("{}/health", cluster.base(idx));
        let client = ctx.client.clone();
        crate::harness::eventually("l2 is up on both instances after the faults", || {
            let request = client.get(&health).send();
            async move {
                match request.await {
                    Ok(response) => response.json::<Value>().await.is_ok_and(|json| json["l2"] == "up"),
                    Err(_) => false,
                }
            }
        })
        .await;
    }
    tokio::time::sleep(VISIBLE_WITHIN).await;
    ctx.end_phases();

    let mut failures = Vec::new();
    let mut text = String::new();
    let final_check = final_consistency(&ctx, &cluster).await;
    let in_run = in_run_consistency(&ctx);
    let read_5xx = read_errors(&ctx);
    let slow = slow_requests(&ctx);
    let foreign = ctx.foreign.lock().unwrap().clone();

    let mut health = Vec::new();
    for idx in 0..2 {
        let response = ctx.client.get(format!("{}/health", cluster.base(idx))).send().await;
        let (status, body) = match response {
            Ok(response) => (response.status().as_u16(), response.text().await.unwrap_or_default()),
            Err(err) => (0, err.to_string()),
        };
        health.push(format!("instance {idx}: {status} {body}"));
        if status != 200 || !body.contains(r#""status":"ok""#) {
            failures.push(format!("instance {idx} is not healthy at the end: {status} {body}"));
        }
        let log = cluster.log(idx);
        if log.contains("panicked") {
            failures.push(format!("instance {idx} panicked: see its log"));
        }
    }
    let rss: Vec<u64> = (0..2).map(|idx| cluster.peak_rss_kb(idx)).collect();
    let rss_bound_kb = (L1_MAX_BYTES + RSS_OVERHEAD) / 1024;
    for (idx, kb) in rss.iter().enumerate() {
        if *kb == 0 || *kb > rss_bound_kb {
            failures.push(format!("instance {idx}: peak RSS {kb} kB, bound {rss_bound_kb} kB"));
        }
    }
    if restored == 0 {
        failures.push("the restarted instance did not restore its snapshot".into());
    }
    if !final_check.violations.is_empty() {
        failures.push(format!(
            "{} final consistency violations: {:?}",
            final_check.violations.len(),
            first(&final_check.violations)
        ));
    }
    if final_check.errors > 0 {
        failures.push(format!("{} final reads failed", final_check.errors));
    }
    if !in_run.is_empty() {
        failures.push(format!("{} reads older than an acknowledged call: {:?}", in_run.len(), first(&in_run)));
    }
    if !read_5xx.is_empty() {
        failures.push(format!("{} reads a copy could answer got a 5xx: {:?}", read_5xx.len(), first(&read_5xx)));
    }
    if !slow.is_empty() {
        failures.push(format!("{} requests waited past l2.timeout_ms + margin: {:?}", slow.len(), first(&slow)));
    }
    if !foreign.is_empty() {
        failures.push(format!("{} values never written for their key: {:?}", foreign.len(), first(&foreign)));
    }
    let acked_writes_before_final = ctx
        .history
        .iter()
        .map(|ops| ops.lock().unwrap().iter().filter(|op| op.outcome == Outcome::Acked).count())
        .sum::<usize>();

    // The report.
    let sent = ctx.sent.load(Ordering::Relaxed);
    let _ = writeln!(text, "## Chaos run: {load_secs:.0} s of load, then settle and check\n");
    let _ = writeln!(
        text,
        "- requests sent: {sent} at a target of {} req/s; held {:.1} req/s; ticks dropped for 2000 open requests: {}",
        plan.rate,
        sent as f64 / load_secs,
        ctx.dropped_ticks.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        text,
        "- mutating calls recorded: {acked_writes_before_final} acknowledged, {} unknown outcome",
        ctx.history
            .iter()
            .map(|ops| ops.lock().unwrap().iter().filter(|op| op.outcome == Outcome::Unknown).count())
            .sum::<usize>()
    );
    let _ = writeln!(text, "- faults injected:");
    for (fault, count) in &faults {
        let _ = writeln!(text, "  - {fault}: {count}");
    }
    let _ = writeln!(
        text,
        "\n| phase | runs | seconds | requests | p50 ms | p99 ms | max ms | max ms, not via origin | 5xx |"
    );
    let _ = writeln!(text, "|---|---|---|---|---|---|---|---|---|");
    for row in phase_rows(&ctx) {
        let _ = writeln!(text, "{row}");
    }
    let _ = writeln!(text, "\n5xx and unanswered requests by cause:\n");
    let _ = writeln!(text, "| phase | op | cause | count |");
    let _ = writeln!(text, "|---|---|---|---|");
    for ((phase, op, cause), count) in causes(&ctx) {
        let _ = writeln!(text, "| {phase} | {op} | {cause} | {count} |");
    }
    let _ = writeln!(text, "\nChecks:\n");
    let _ = writeln!(
        text,
        "- final consistency: {} keys × 2 instances read after settle: {} violations, {} read errors; {} ended on an unknown-outcome call that landed after a later acknowledged one",
        WRITE_KEYS,
        final_check.violations.len(),
        final_check.errors,
        final_check.late_landings
    );
    let _ = writeln!(
        text,
        "- reads older than an acknowledged call answered {VISIBLE_WITHIN:?} before: {} (of {} checked)",
        in_run.len(),
        ctx.observations.lock().unwrap().len()
    );
    let _ = writeln!(text, "- values never written for their key: {}", foreign.len());
    let _ = writeln!(text, "- reads answered 5xx although a copy could answer: {}", read_5xx.len());
    let _ = writeln!(
        text,
        "- requests not via the origin slower than l2.timeout_ms ({L2_TIMEOUT_MS} ms) + {} ms: {}",
        LATENCY_MARGIN.as_millis(),
        slow.len()
    );
    let slowest: Vec<String> = slowest_by_op(&ctx)
        .into_iter()
        .map(|(op, phase, latency)| format!("{op} {:.0} ms ({phase})", latency.as_secs_f64() * 1000.0))
        .collect();
    let _ = writeln!(text, "- slowest request of each op not via the origin: {}", slowest.join("; "));
    let _ = writeln!(
        text,
        "- peak RSS: instance 0 {} kB, instance 1 {} kB; bound l1.max_bytes + {} MiB = {rss_bound_kb} kB",
        rss[0],
        rss[1],
        RSS_OVERHEAD >> 20
    );
    let _ = writeln!(text, "- snapshot restores after SIGTERM: {restored}");
    let _ = writeln!(text, "- health at the end: {}", health.join("; "));
    let _ =
        writeln!(text, "- panics in the logs: {}", (0..2).filter(|idx| cluster.log(*idx).contains("panicked")).count());
    if !failures.is_empty() {
        let _ = writeln!(text, "\nFailures:\n");
        for failure in &failures {
            let _ = writeln!(text, "- {failure}");
        }
    }
    drop(cluster);
    Report { text, failures }
}
