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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

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

// ---------------------------------------------------------------------------------------------
// Records.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Absent,
    Value(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Acked,
    Unknown,
}

/// One mutating call on one key. Calls on a key never overlap (the generator serialises them),
/// so their order is the order of `sent`.
#[derive(Debug, Clone)]
struct KeyOp {
    sent: Duration,
    answered: Duration,
    state: State,
    outcome: Outcome,
}

/// A `w:` key read: what one instance answered.
struct Observation {
    key: usize,
    instance: usize,
    sent: Duration,
    state: State,
}

/// An `o:` key read, for the stale rule.
struct OriginRead {
    key: usize,
    instance: usize,
    sent: Duration,
    status: Option<u16>,
}

struct Sample {
    phase: usize,
    op: &'static str,
    latency: Duration,
    /// `None`: no answer (connection refused or lost, or the client's timeout).
    status: Option<u16>,
    /// `status code` of an error answer, or the transport error.
    cause: Option<String>,
    /// The call may go to the origin (its time is the origin's, not Redis's).
    via_origin: bool,
}

struct PhaseRecord {
    name: String,
    start: Duration,
    end: Duration,
}

struct Ctx {
    t0: Instant,
    client: reqwest::Client,
    bases: [String; 2],
    up: [AtomicBool; 2],
    /// Serialises mutating calls per key (locked in ascending key order).
    key_locks: Vec<tokio::sync::Mutex<()>>,
    history: Vec<Mutex<Vec<KeyOp>>>,
    observations: Mutex<Vec<Observation>>,
    origin_reads: Mutex<Vec<OriginRead>>,
    samples: Mutex<Vec<Sample>>,
    foreign: Mutex<Vec<String>>,
    phases: Mutex<Vec<PhaseRecord>>,
    phase: AtomicUsize,
    seq: AtomicU64,
    in_flight: AtomicUsize,
    sent: AtomicU64,
    dropped_ticks: AtomicU64,
}

impl Ctx {
    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn begin_phase(&self, name: &str) {
        let now = self.now();
        let mut phases = self.phases.lock().unwrap();
        if let Some(last) = phases.last_mut() {
            last.end = now;
        }
        phases.push(PhaseRecord { name: name.to_string(), start: now, end: now });
        self.phase.store(phases.len() - 1, Ordering::SeqCst);
    }

    fn end_phases(&self) {
        let now = self.now();
        if let Some(last) = self.phases.lock().unwrap().last_mut() {
            last.end = now;
        }
    }

    /// The instance to send to: `preferred` unless it is restarting.
    fn instance(&self, preferred: usize) -> usize {
        if self.up[preferred].load(Ordering::SeqCst) {
            preferred
        } else {
            1 - preferred
        }
    }

    async fn send(
        &self,
        op: &'static str,
        instance: usize,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        // A `w:` miss asks the origin too, which answers it at once (404, or 500 while failing).
        let via_origin = matches!(op, "get o" | "batch get");
        let phase = self.phase.load(Ordering::SeqCst);
        let mut request = self.client.request(method, format!("{}{path}", self.bases[instance]));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let started = Instant::now();
        let result = request.send().await;
        let answer = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let json = response.json::<Value>().await.ok();
                Answer { status: Some(status), json }
            }
            Err(_) => Answer { status: None, json: None },
        };
        let latency = started.elapsed();
        let cause = match answer.status {
            None => Some("no answer".to_string()),
            Some(status) if status >= 400 => {
                let code = answer.json.as_ref().and_then(|json| json["error"]["code"].as_str()).unwrap_or("-");
                Some(format!("{status} {code}"))
            }
            Some(_) => None,
        };
        self.samples.lock().unwrap().push(Sample { phase, op, latency, status: answer.status, cause, via_origin });
        answer
    }

    fn record(&self, key: usize, sent: Duration, state: State, outcome: Outcome) {
        let answered = self.now();
        self.history[key].lock().unwrap().push(KeyOp { sent, answered, state, outcome });
    }

    /// Records a `w:` read. A value must be one written for that key: its own key, and a
    /// sequence number already handed out (its write may still be in flight, not yet recorded).
    fn observe(&self, key: usize, instance: usize, sent: Duration, value: Option<&Value>) {
        let state = match value {
            None => State::Absent,
            Some(value) => match value["s"].as_u64() {
                Some(seq) if value["k"].as_u64() == Some(key as u64) && seq < self.seq.load(Ordering::SeqCst) => {
                    State::Value(seq)
                }
                _ => {
                    self.foreign.lock().unwrap().push(format!("w:{key} on instance {instance}: {value}"));
                    return;
                }
            },
        };
        self.observations.lock().unwrap().push(Observation { key, instance, sent, state });
    }
}

struct Answer {
    status: Option<u16>,
    json: Option<Value>,
}

impl Answer {
    fn is(&self, status: u16) -> bool {
        self.status == Some(status)
    }

    /// A write the service acknowledged as durable: 200 and L2 took it.
    fn acked_write(&self) -> bool {
        self.is(200) && self.json.as_ref().is_some_and(|json| json["l2"] == "stored")
    }
}

// ---------------------------------------------------------------------------------------------
// The workload.

enum Op {
    GetWrite(usize),
    GetOrigin(usize),
    Put(usize),
    Delete(usize),
    InvalidateKey(usize),
    InvalidateTag(usize),
    InvalidatePattern(usize),
    BatchGet(Vec<usize>, Vec<usize>),
    BatchSet(Vec<usize>),
}

/// xorshift64*: reproducible, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf (s = 1) over `n` ranks.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize) -> Zipf {
        let mut total = 0.0;
        let cdf = (1..=n)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect::<Vec<_>>();
        Zipf(cdf.into_iter().map(|c| c / total).collect())
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1)
    }
}

fn pick(rng: &mut Rng, zipf: &Zipf) -> Op {
    let roll = rng.below(100);
    let w = |rng: &mut Rng| zipf.sample(rng);
    match roll {
        0..45 => Op::GetWrite(w(rng)),
        45..60 => Op::GetOrigin(zipf.sample(rng) % ORIGIN_KEYS),
        60..75 => Op::Put(w(rng)),
        75..79 => Op::Delete(w(rng)),
        79..82 => Op::InvalidateKey(w(rng)),
        82..84 => Op::InvalidateTag(rng.below(10)),
        84..86 => Op::InvalidatePattern(1 + rng.below(9)),
        86..93 => {
            let writes: BTreeSet<usize> = (0..5).map(|_| w(rng)).collect();
            let origins: BTreeSet<usize> = (0..5).map(|_| zipf.sample(rng) % ORIGIN_KEYS).collect();
            Op::BatchGet(writes.into_iter().collect(), origins.into_iter().collect())
        }
        _ => Op::BatchSet((0..5).map(|_| w(rng)).collect::<BTreeSet<_>>().into_iter().collect()),
    }
}

fn tag_of(key: usize) -> String {
    format!("g{}", key % 10)
}

/// A written value: its key, a sequence number, and padding so some values pass the
/// compression threshold.
fn value_of(key: usize, seq: u64) -> Value {
    let pad = "x".repeat(((seq * 37) % 2048) as usize);
    json!({ "k": key, "s": seq, "pad": pad })
}

async fn execute(ctx: Arc<Ctx>, op: Op, preferred: usize) {
    let instance = ctx.instance(preferred);
    match op {
        Op::GetWrite(key) => {
            let sent = ctx.now();
            let answer = ctx.send("get w", instance, reqwest::Method::GET, &format!("/api/cache/w:{key}"), None).await;
            match answer.status {
                Some(200) => ctx.observe(key, instance, sent, answer.json.as_ref().map(|json| &json["value"])),
                Some(404) => ctx.observe(key, instance, sent, None),
                _ => {}
            }
        }
        Op::GetOrigin(key) => {
            let sent = ctx.now();
            let answer = ctx.send("get o", instance, reqwest::Method::GET, &format!("/api/cache/o:{key}"), None).await;
            ctx.origin_reads.lock().unwrap().push(OriginRead { key, instance, sent, status: answer.status });
        }
        Op::BatchGet(writes, origins) => {
            let keys: Vec<String> = writes
                .iter()
                .map(|key| format!("w:{key}"))
                .chain(origins.iter().map(|key| format!("o:{key}")))
                .collect();
            let sent = ctx.now();
            let answer = ctx
                .send(
                    "batch get",
                    instance,
                    reqwest::Method::POST,
                    "/api/cache/batch/get",
                    Some(json!({ "keys": keys })),
                )
                .await;
            if let (Some(200), Some(json)) = (answer.status, &answer.json) {
                for key in writes {
                    let entry = &json["entries"][format!("w:{key}")];
                    ctx.observe(key, instance, sent, (!entry.is_null()).then(|| &entry["value"]));
                }
            }
        }
        Op::Put(key) => {
            let _lock = ctx.key_locks[key].lock().await;
            let seq = ctx.seq.fetch_add(1, Ordering::SeqCst);
            let body = json!({ "value": value_of(key, seq), "tags": [tag_of(key)], "ttl": 3600 });
            let sent = ctx.now();
            let answer =
                ctx.send("put", instance, reqwest::Method::PUT, &format!("/api/cache/w:{key}"), Some(body)).await;
            let outcome = if answer.acked_write() { Outcome::Acked } else { Outcome::Unknown };
            ctx.record(key, sent, State::Value(seq), outcome);
        }
        Op::BatchSet(keys) => {
            let _locks = lock_all(&ctx, &keys).await;
            let first = ctx.seq.fetch_add(keys.len() as u64, Ordering::SeqCst);
            let entries: Vec<Value> = keys
                .iter()
                .enumerate()
                .map(|(idx, key)| {
                    json!({"key": format!("w:{key}"), "value": value_of(*key, first + idx as u64), "tags": [tag_of(*key)], "ttl": 3600})
                })
                .collect();
            let sent = ctx.now();
            let body = json!({ "entries": entries });
            let answer =
                ctx.send("batch set", instance, reqwest::Method::POST, "/api/cache/batch/set", Some(body)).await;
            let outcome = if answer.acked_write() { Outcome::Acked } else { Outcome::Unknown };
            for (idx, key) in keys.iter().enumerate() {
                ctx.record(*key, sent, State::Value(first + idx as u64), outcome);
            }
        }
        Op::Delete(key) => {
            let _lock = ctx.key_locks[key].lock().await;
            let sent = ctx.now();
            let answer =
                ctx.send("delete", instance, reqwest::Method::DELETE, &format!("/api/cache/w:{key}"), None).await;
            ctx.record(key, sent, State::Absent, if answer.is(200) { Outcome::Acked } else { Outcome::Unknown });
        }
        Op::InvalidateKey(key) => {
            invalidate(&ctx, instance, "invalidate key", vec![key], json!({"keys": [format!("w:{key}")]})).await
        }
        Op::InvalidateTag(tag) => {
            let keys = (0..WRITE_KEYS).filter(|key| key % 10 == tag).collect();
            invalidate(&ctx, instance, "invalidate tag", keys, json!({"tags": [format!("g{tag}")]})).await;
        }
        Op::InvalidatePattern(digit) => {
            // `w:1?` is w:10 … w:19.
            let keys = (digit * 10..digit * 10 + 10).collect();
            invalidate(&ctx, instance, "invalidate pattern", keys, json!({"pattern": format!("w:{digit}?")})).await;
        }
    }
}

async fn lock_all<'a>(ctx: &'a Ctx, keys: &[usize]) -> Vec<tokio::sync::MutexGuard<'a, ()>> {
    let mut guards = Vec::with_capacity(keys.len());
    for key in keys.iter().copied().collect::<BTreeSet<_>>() {
        guards.push(ctx.key_locks[key].lock().await);
    }
    guards
}

async fn invalidate(ctx: &Ctx, instance: usize, op: &'static str, keys: Vec<usize>, body: Value) {
    let _locks = lock_all(ctx, &keys).await;
    let sent = ctx.now();
    let answer = ctx.send(op, instance, reqwest::Method::POST, "/api/cache/invalidate", Some(body)).await;
    let outcome = if answer.is(200) { Outcome::Acked } else { Outcome::Unknown };
    for key in keys {
        ctx.record(key, sent, State::Absent, outcome);
    }
}

/// Sends one op per tick at `rate` until `stop`, whatever the answers (an open loop).
async fn generate(ctx: Arc<Ctx>, rate: u32, stop: Arc<AtomicBool>) {
    let mut rng = Rng(0x5eed_cafe_f00d_u64);
    let zipf = Zipf::new(WRITE_KEYS);
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while !stop.load(Ordering::SeqCst) {
        ticker.tick().await;
        // A bound on open requests, so a wedged service cannot make the generator grow forever.
        if ctx.in_flight.load(Ordering::SeqCst) >= 2000 {
            ctx.dropped_ticks.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let op = pick(&mut rng, &zipf);
        let preferred = rng.below(2);
        ctx.sent.fetch_add(1, Ordering::Relaxed);
        ctx.in_flight.fetch_add(1, Ordering::SeqCst);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            execute(ctx.clone(), op, preferred).await;
            ctx.in_flight.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

struct Cluster {
    redis: RedisServer,
    proxy: FaultProxy,
    origin: TestOrigin,
    instances: [Option<ServiceProcess>; 2],
    ports: [u16; 2],
    envs: [Vec<(String, String)>; 2],
    logs: [PathBuf; 2],
    _dir: tempfile::TempDir,
    /// Peak RSS (kB) of processes already stopped, per instance.
    stopped_peak_kb: [u64; 2],
}

impl Cluster {
    async fn start() -> Cluster {
        // Durable: a SIGKILL must not lose an acknowledged write.
        let redis = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
        let proxy = FaultProxy::start(redis.port).await;
        let origin = TestOrigin::start().await;
        origin.set_default(Reply {
            delay: Duration::from_millis(20),
            cache_control: Some(format!("max-age={ORIGIN_MAX_AGE_SECS}")),
            ..Reply::default()
        });
        for key in 0..WRITE_KEYS {
            // Written keys are not the origin's: a miss is a miss.
            origin.set(&format!("w:{key}"), Reply::status(404));
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        let ports = [crate::harness::free_port(), crate::harness::free_port()];
        let env = |idx: usize| -> Vec<(String, String)> {
            [
                ("TIERCACHE__SERVER__INSTANCE_ID", format!("chaos-{idx}")),
                ("TIERCACHE__L2__URL", proxy.redis_url()),
                ("TIERCACHE__L2__TIMEOUT_MS", L2_TIMEOUT_MS.to_string()),
                ("TIERCACHE__L1__MAX_TTL_SECS", L1_MAX_TTL_SECS.to_string()),
                ("TIERCACHE__L1__MAX_BYTES", L1_MAX_BYTES.to_string()),
                ("TIERCACHE__L1__MAX_ENTRIES", "100000".to_string()),
                ("TIERCACHE__CACHE__GRACE_SECS", GRACE_SECS.to_string()),
                ("TIERCACHE__ORIGIN__URL", origin.url()),
                ("TIERCACHE__ORIGIN__TIMEOUT_MS", "1000".to_string()),
                (
                    "TIERCACHE__PERSISTENCE__PATH",
                    dir.path().join(format!("chaos-{idx}.snapshot")).display().to_string(),
                ),
                ("TIERCACHE__LOG__LEVEL", "info".to_string()),
            ]
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .chain(extra_env())
            .collect()
        };
        let envs = [env(0), env(1)];
        let logs = [dir.path().join("chaos-0.log"), dir.path().join("chaos-1.log")];
        let mut cluster = Cluster {
            redis,
            proxy,
            origin,
            instances: [None, None],
            ports,
            envs,
            logs,
            _dir: dir,
            stopped_peak_kb: [0, 0],
        };
        for idx in 0..2 {
            cluster.start_instance(idx).await;
        }
        cluster
    }

    async fn start_instance(&mut self, idx: usize) {
        let env: Vec<(&str, &str)> =
            self.envs[idx].iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        self.instances[idx] = Some(ServiceProcess::start_on(self.ports[idx], &env, Some(&self.logs[idx])).await);
    }

    fn base(&self, idx: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[idx])
    }

    fn peak_rss_kb(&self, idx: usize) -> u64 {
        let live = self.instances[idx].as_ref().map_or(0, |process| peak_rss_kb(process.pid()));
        live.max(self.stopped_peak_kb[idx])
    }

    fn log(&self, idx: usize) -> String {
        std::fs::read_to_string(&self.logs[idx]).unwrap_or_default()
    }
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

fn first<T: std::fmt::Debug + Clone>(items: &[T]) -> Vec<T> {
    items.iter().take(5).cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// The states a key may hold once every call on it has landed: its last acknowledged state,
/// and the state of every unknown call that could land after it (sent after it, or up to
/// [`HOLD`] before it). No acknowledged call: absent, or any unknown call's state.
fn allowed_final(ops: &[KeyOp]) -> (BTreeSet<State>, Option<usize>) {
    let last_acked = ops.iter().rposition(|op| op.outcome == Outcome::Acked);
    let mut allowed = BTreeSet::new();
    match last_acked {
        None => {
            allowed.insert(State::Absent);
            allowed.extend(ops.iter().map(|op| op.state));
        }
        Some(idx) => {
            allowed.insert(ops[idx].state);
            for (other, op) in ops.iter().enumerate() {
                if op.outcome == Outcome::Unknown && (other > idx || op.sent + HOLD >= ops[idx].sent) {
                    allowed.insert(op.state);
                }
            }
        }
    }
    (allowed, last_acked)
}

struct FinalCheck {
    violations: Vec<String>,
    errors: usize,
    late_landings: usize,
}

async fn final_consistency(ctx: &Ctx, cluster: &Cluster) -> FinalCheck {
    let mut check = FinalCheck { violations: Vec::new(), errors: 0, late_landings: 0 };
    for key in 0..WRITE_KEYS {
        let ops = ctx.history[key].lock().unwrap().clone();
        let (allowed, last_acked) = allowed_final(&ops);
        for idx in 0..2 {
            let response = ctx.client.get(format!("{}/api/cache/w:{key}", cluster.base(idx))).send().await;
            let state = match response {
                Ok(response) if response.status() == 404 => State::Absent,
                Ok(response) if response.status() == 200 => {
                    let json: Value = response.json().await.unwrap_or_default();
                    match json["value"]["s"].as_u64() {
                        Some(seq) if json["value"]["k"] == key => State::Value(seq),
                        _ => {
                            check.violations.push(format!("w:{key} on {idx}: a foreign value {json}"));
                            continue;
                        }
                    }
                }
                _ => {
                    check.errors += 1;
                    continue;
                }
            };
            if !allowed.contains(&state) {
                check.violations.push(format!("w:{key} on instance {idx}: {state:?}, allowed {allowed:?}"));
            } else if let Some(acked) = last_acked {
                if state != ops[acked].state
                    && ops.iter().position(|op| op.state == state).is_some_and(|pos| pos < acked)
                {
                    check.late_landings += 1;
                }
            }
        }
    }
    check
}

/// Every `w:` value read during the run, against the calls acknowledged [`VISIBLE_WITHIN`]
/// before the read was sent. Absent answers are not judged here: during an outage a read can
/// miss a value it cannot reach (that is availability, not staleness).
fn in_run_consistency(ctx: &Ctx) -> Vec<String> {
    let observations = ctx.observations.lock().unwrap();
    let mut violations = Vec::new();
    for read in observations.iter() {
        let State::Value(_) = read.state else { continue };
        let ops = ctx.history[read.key].lock().unwrap();
        let Some(base) =
            ops.iter().rposition(|op| op.outcome == Outcome::Acked && op.answered + VISIBLE_WITHIN <= read.sent)
        else {
            continue;
        };
        let allowed = ops.iter().enumerate().any(|(idx, op)| {
            op.state == read.state
                && (idx >= base || (op.outcome == Outcome::Unknown && op.sent + HOLD + VISIBLE_WITHIN >= read.sent))
        });
        if !allowed {
            violations.push(format!(
                "w:{} on instance {} at {:?}: {:?}, acknowledged {:?} at {:?}",
                read.key, read.instance, read.sent, read.state, ops[base].state, ops[base].answered
            ));
        }
    }
    violations
}

/// Reads answered 5xx that a copy could have answered. A read 5xx is allowed only as a 502
/// from the failing origin, and for an `o:` key only when the instance had not answered that key
/// within the last `cache.grace_secs` in the same origin-failure phase (then its copy, in L1 or
/// L2, was still within grace and must have stood in).
fn read_errors(ctx: &Ctx) -> Vec<String> {
    let phases = ctx.phases.lock().unwrap();
    let in_origin_phase = |at: Duration| {
        phases
            .iter()
            .find(|phase| phase.start <= at && at < phase.end && phase.name == "origin failing 50%")
            .map(|phase| phase.start)
    };
    let mut bad = Vec::new();
    for sample in ctx.samples.lock().unwrap().iter() {
        let is_read = matches!(sample.op, "get w" | "get o" | "batch get");
        if !is_read || !sample.status.is_some_and(|status| status >= 500) {
            continue;
        }
        let origin_failure = sample.status == Some(502) && phases[sample.phase].name == "origin failing 50%";
        if !origin_failure {
            bad.push(format!("{} in phase {}: {:?}", sample.op, phases[sample.phase].name, sample.cause));
        }
    }
    let reads = ctx.origin_reads.lock().unwrap();
    for read in reads.iter().filter(|read| read.status.is_some_and(|status| status >= 500)) {
        let Some(phase_start) = in_origin_phase(read.sent) else { continue };
        let had_copy = reads.iter().any(|earlier| {
            earlier.key == read.key
                && earlier.instance == read.instance
                && earlier.status == Some(200)
                && earlier.sent >= phase_start
                && earlier.sent < read.sent
                && read.sent - earlier.sent < Duration::from_secs(GRACE_SECS)
        });
        if had_copy {
            bad.push(format!(
                "o:{} on instance {} at {:?}: 502 with a copy within grace",
                read.key, read.instance, read.sent
            ));
        }
    }
    bad
}

/// Requests that do not go to the origin and waited past one L2 timeout plus the margin.
fn slow_requests(ctx: &Ctx) -> Vec<String> {
    let bound = Duration::from_millis(L2_TIMEOUT_MS) + LATENCY_MARGIN;
    let phases = ctx.phases.lock().unwrap();
    ctx.samples
        .lock()
        .unwrap()
        .iter()
        .filter(|sample| !sample.via_origin && sample.status.is_some() && sample.latency > bound)
        .map(|sample| format!("{} in {}: {:?}", sample.op, phases[sample.phase].name, sample.latency))
        .collect()
}

/// The slowest request of each op that does not go to the origin: (op, phase, latency).
fn slowest_by_op(ctx: &Ctx) -> Vec<(&'static str, String, Duration)> {
    let phases = ctx.phases.lock().unwrap();
    let mut slowest: BTreeMap<&'static str, (String, Duration)> = BTreeMap::new();
    for sample in ctx.samples.lock().unwrap().iter().filter(|sample| !sample.via_origin) {
        let entry = slowest.entry(sample.op).or_insert((String::new(), Duration::ZERO));
        if sample.latency > entry.1 {
            *entry = (phases[sample.phase].name.clone(), sample.latency);
        }
    }
    slowest.into_iter().map(|(op, (phase, latency))| (op, phase, latency)).collect()
}

fn phase_rows(ctx: &Ctx) -> Vec<String> {
    let phases = ctx.phases.lock().unwrap();
    let samples = ctx.samples.lock().unwrap();
    let mut names: Vec<&str> = Vec::new();
    for phase in phases.iter() {
        if !names.contains(&phase.name.as_str()) && phase.name != "settle" {
            names.push(&phase.name);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let runs: Vec<usize> =
                phases.iter().enumerate().filter(|(_, phase)| phase.name == name).map(|(idx, _)| idx).collect();
            let seconds: f64 = runs.iter().map(|idx| (phases[*idx].end - phases[*idx].start).as_secs_f64()).sum();
            let in_phase: Vec<&Sample> = samples.iter().filter(|sample| runs.contains(&sample.phase)).collect();
            let mut all: Vec<Duration> = in_phase.iter().map(|sample| sample.latency).collect();
            all.sort();
            let not_origin = in_phase
                .iter()
                .filter(|sample| !sample.via_origin)
                .map(|sample| sample.latency)
                .max()
                .unwrap_or_default();
            let errors = in_phase.iter().filter(|sample| sample.status.map_or(true, |status| status >= 500)).count();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            format!(
                "| {name} | {} | {seconds:.0} | {} | {:.1} | {:.1} | {:.0} | {:.0} | {errors} |",
                runs.len(),
                all.len(),
                ms(percentile(&all, 0.50)),
                ms(percentile(&all, 0.99)),
                ms(all.last().copied().unwrap_or_default()),
                ms(not_origin),
            )
        })
        .collect()
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// 5xx and unanswered requests by (phase, op, cause). A calm phase follows each fault: its 503s
/// come from the breaker, still open for `l2.breaker_open_secs` after the fault healed.
fn causes(ctx: &Ctx) -> BTreeMap<(String, &'static str, String), usize> {
    let phases = ctx.phases.lock().unwrap();
    let mut counts = BTreeMap::new();
    for sample in ctx.samples.lock().unwrap().iter() {
        if sample.status.map_or(true, |status| status >= 500) {
            let key = (phases[sample.phase].name.clone(), sample.op, sample.cause.clone().unwrap_or_default());
            *counts.entry(key).or_default() += 1;
        }
    }
    counts
}
