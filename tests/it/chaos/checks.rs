//! The checks over everything recorded: consistency (final and in-run), 5xx on reads, slow requests, the report tables.

use super::*;

pub(super) fn first<T: std::fmt::Debug + Clone>(items: &[T]) -> Vec<T> {
    items.iter().take(5).cloned().collect()
}

// ---------------------------------------------------------------------------------------------
// Checks.

/// The states a key may hold once every call on it has landed: its last acknowledged state,
/// and the state of every unknown call that could land after it (sent after it, or up to
/// [`HOLD`] before it). No acknowledged call: absent, or any unknown call's state.
pub(super) fn allowed_final(ops: &[KeyOp]) -> (BTreeSet<State>, Option<usize>) {
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

pub(super) struct FinalCheck {
    pub(super) violations: Vec<String>,
    pub(super) errors: usize,
    pub(super) late_landings: usize,
}

pub(super) async fn final_consistency(ctx: &Ctx, cluster: &Cluster) -> FinalCheck {
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
pub(super) fn in_run_consistency(ctx: &Ctx) -> Vec<String> {
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
pub(super) fn read_errors(ctx: &Ctx) -> Vec<String> {
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
pub(super) fn slow_requests(ctx: &Ctx) -> Vec<String> {
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
pub(super) fn slowest_by_op(ctx: &Ctx) -> Vec<(&'static str, String, Duration)> {
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

pub(super) fn phase_rows(ctx: &Ctx) -> Vec<String> {
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

pub(super) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// 5xx and unanswered requests by (phase, op, cause). A calm phase follows each fault: its 503s
/// come from the breaker, still open for `l2.breaker_open_secs` after the fault healed.
pub(super) fn causes(ctx: &Ctx) -> BTreeMap<(String, &'static str, String), usize> {
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
