//! What the load generator records: calls, answers, reads, samples and phases.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum State {
    Absent,
    Value(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    Acked,
    Unknown,
}

/// One mutating call on one key. Calls on a key never overlap (the generator serialises them),
/// so their order is the order of `sent`.
#[derive(Debug, Clone)]
pub(super) struct KeyOp {
    pub(super) sent: Duration,
    pub(super) answered: Duration,
    pub(super) state: State,
    pub(super) outcome: Outcome,
}

/// A `w:` key read: what one instance answered.
pub(super) struct Observation {
    pub(super) key: usize,
    pub(super) instance: usize,
    pub(super) sent: Duration,
    pub(super) state: State,
}

/// An `o:` key read, for the stale rule.
pub(super) struct OriginRead {
    pub(super) key: usize,
    pub(super) instance: usize,
    pub(super) sent: Duration,
    pub(super) status: Option<u16>,
}

pub(super) struct Sample {
    pub(super) phase: usize,
    pub(super) op: &'static str,
    pub(super) latency: Duration,
    /// `None`: no answer (connection refused or lost, or the client's timeout).
    pub(super) status: Option<u16>,
    /// `status code` of an error answer, or the transport error.
    pub(super) cause: Option<String>,
    /// The call may go to the origin (its time is the origin's, not Redis's).
    pub(super) via_origin: bool,
}

pub(super) struct PhaseRecord {
    pub(super) name: String,
    pub(super) start: Duration,
    pub(super) end: Duration,
}

pub(super) struct Ctx {
    pub(super) t0: Instant,
    pub(super) client: reqwest::Client,
    pub(super) bases: [String; 2],
    pub(super) up: [AtomicBool; 2],
    /// Serialises mutating calls per key (locked in ascending key order).
    pub(super) key_locks: Vec<tokio::sync::Mutex<()>>,
    pub(super) history: Vec<Mutex<Vec<KeyOp>>>,
    pub(super) observations: Mutex<Vec<Observation>>,
    pub(super) origin_reads: Mutex<Vec<OriginRead>>,
    pub(super) samples: Mutex<Vec<Sample>>,
    pub(super) foreign: Mutex<Vec<String>>,
    pub(super) phases: Mutex<Vec<PhaseRecord>>,
    pub(super) phase: AtomicUsize,
    pub(super) seq: AtomicU64,
    pub(super) in_flight: AtomicUsize,
    pub(super) sent: AtomicU64,
    pub(super) dropped_ticks: AtomicU64,
}

impl Ctx {
    pub(super) fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    pub(super) fn begin_phase(&self, name: &str) {
        let now = self.now();
        let mut phases = self.phases.lock().unwrap();
        if let Some(last) = phases.last_mut() {
            last.end = now;
        }
        phases.push(PhaseRecord { name: name.to_string(), start: now, end: now });
        self.phase.store(phases.len() - 1, Ordering::SeqCst);
    }

    pub(super) fn end_phases(&self) {
        let now = self.now();
        if let Some(last) = self.phases.lock().unwrap().last_mut() {
            last.end = now;
        }
    }

    /// The instance to send to: `preferred` unless it is restarting.
    pub(super) fn instance(&self, preferred: usize) -> usize {
        if self.up[preferred].load(Ordering::SeqCst) {
            preferred
        } else {
            1 - preferred
        }
    }

    pub(super) async fn send(
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

    pub(super) fn record(&self, key: usize, sent: Duration, state: State, outcome: Outcome) {
        let answered = self.now();
        self.history[key].lock().unwrap().push(KeyOp { sent, answered, state, outcome });
    }

    /// Records a `w:` read. A value must be one written for that key: its own key, and a
    /// sequence number already handed out (its write may still be in flight, not yet recorded).
    pub(super) fn observe(&self, key: usize, instance: usize, sent: Duration, value: Option<&Value>) {
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

pub(super) struct Answer {
    pub(super) status: Option<u16>,
    pub(super) json: Option<Value>,
}

impl Answer {
    pub(super) fn is(&self, status: u16) -> bool {
        self.status == Some(status)
    }

    /// A write the service acknowledged as durable: 200 and L2 took it.
    pub(super) fn acked_write(&self) -> bool {
        self.is(200) && self.json.as_ref().is_some_and(|json| json["l2"] == "stored")
    }
}
