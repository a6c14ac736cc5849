//! The workload: a fixed-rate open-loop generator of Zipf reads, writes, deletes, invalidations and batches.

use super::*;

pub(super) enum Op {
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
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf (s = 1) over `n` ranks.
pub(super) struct Zipf(Vec<f64>);

impl Zipf {
    pub(super) fn new(n: usize) -> Zipf {
        let mut total = 0.0;
        let cdf = (1..=n)
            .map(|rank| {
                total += 1.0 / rank as f64;
                total
            })
            .collect::<Vec<_>>();
        Zipf(cdf.into_iter().map(|c| c / total).collect())
    }

    pub(super) fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.0.partition_point(|&c| c < u).min(self.0.len() - 1)
    }
}

pub(super) fn pick(rng: &mut Rng, zipf: &Zipf) -> Op {
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

pub(super) fn tag_of(key: usize) -> String {
    format!("g{}", key % 10)
}

/// A written value: its key, a sequence number, and padding so some values pass the
/// compression threshold.
pub(super) fn value_of(key: usize, seq: u64) -> Value {
    let pad = "x".repeat(((seq * 37) % 2048) as usize);
    json!({ "k": key, "s": seq, "pad": pad })
}

pub(super) async fn execute(ctx: Arc<Ctx>, op: Op, preferred: usize) {
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

pub(super) async fn lock_all<'a>(ctx: &'a Ctx, keys: &[usize]) -> Vec<tokio::sync::MutexGuard<'a, ()>> {
    let mut guards = Vec::with_capacity(keys.len());
    for key in keys.iter().copied().collect::<BTreeSet<_>>() {
        guards.push(ctx.key_locks[key].lock().await);
    }
    guards
}

pub(super) async fn invalidate(ctx: &Ctx, instance: usize, op: &'static str, keys: Vec<usize>, body: Value) {
    let _locks = lock_all(ctx, &keys).await;
    let sent = ctx.now();
    let answer = ctx.send(op, instance, reqwest::Method::POST, "/api/cache/invalidate", Some(body)).await;
    let outcome = if answer.is(200) { Outcome::Acked } else { Outcome::Unknown };
    for key in keys {
        ctx.record(key, sent, State::Absent, outcome);
    }
}

/// Sends one op per tick at `rate` until `stop`, whatever the answers (an open loop).
pub(super) async fn generate(ctx: Arc<Ctx>, rate: u32, stop: Arc<AtomicBool>) {
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
