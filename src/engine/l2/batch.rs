//! Read batching: single-key L2 reads that arrive together go to Redis as one MGET.
//!
//! Under load, many requests miss L1 at once, and one GET each costs a write syscall here and a
//! command dispatch in Redis per key. Instead a read joins the open batch. The first read of a
//! batch leads it: it yields once to the scheduler, so every request that is ready to run gets
//! to join, then takes the batch and sends one MGET, and hands each reader its answer. Reads
//! that arrive while that MGET is in flight form the next batch, which the leader hands to one
//! of them to lead. One batch is in flight at a time, so the batch grows with the round trip:
//! an idle service sends a batch of one at once, a loaded one amortizes each round trip over
//! everything that queued behind it. No task of its own: nothing to start or stop.
//!
//! Cancellation: a reader that goes away leaves its slot; the leader's answer to it is dropped.
//! A leader that goes away hands the queued readers to a new leader (its guard does it on
//! drop); readers of a batch whose MGET was cancelled see their slot closed and read alone.
//!
//! The lock guards only the queue and the leader flag; it is never held across `.await`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{Envelope, L2Error};

type Answer = Result<Option<Envelope>, L2Error>;

/// What a queued reader is told.
enum Reply {
    Answer(Answer),
    /// Lead the batch that queued behind the previous one. Carried in the message, so a
    /// reader that goes away before reading it still hands the leadership on.
    Lead(Leadership),
}

struct Slot {
    key: String,
    reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Slot>,
    /// Whether a reader is leading (gathering or sending a batch). Invariant: while it is
    /// false, `waiting` is empty.
    leading: bool,
}

#[derive(Default)]
pub(crate) struct ReadBatcher {
    queue: Arc<Mutex<Queue>>,
}

/// Held by the reader that leads; hands the queue on when dropped, whatever happened.
struct Leadership {
    queue: Arc<Mutex<Queue>>,
    /// False for a leadership that was never delivered (its reader had gone away).
    active: bool,
}

impl ReadBatcher {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        lock(&self.queue)
    }

    /// Reads `key` (an entry key, already prefixed) in a batch: `read_many` sends the MGET of
    /// a batch. A reader whose batch was lost (its leader cancelled mid-call) reads alone
    /// with `read_one`.
    pub async fn read<Many, ManyFut, One, OneFut>(&self, key: String, read_many: Many, read_one: One) -> Answer
    where
        Many: FnOnce(Vec<String>) -> ManyFut,
        ManyFut: std::future::Future<Output = Result<Vec<Option<Envelope>>, L2Error>>,
        One: FnOnce(String) -> OneFut,
        OneFut: std::future::Future<Output = Answer>,
    {
        let receiver = {
            let mut queue = self.lock();
            if queue.leading {
                let (reply, receiver) = oneshot::channel();
                queue.waiting.push_back(Slot { key: key.clone(), reply });
                Some(receiver)
            } else {
                queue.leading = true;
                None
            }
        };
        let leadership = match receiver {
            None => Leadership { queue: self.queue.clone(), active: true },
            Some(receiver) => match receiver.await {
                Ok(Reply::Answer(answer)) => return answer,
                Ok(Reply::Lead(leadership)) => leadership, // Lead the next batch, this key first.
                Err(_) => return read_one(key).await,      // The batch was lost with its leader.
            },
        };
        // Let every request that is ready to run join this batch before it is sent.
        tokio::task::yield_now().await;
        let batch = std::mem::take(&mut self.lock().waiting);
        let mut keys = Vec::with_capacity(batch.len() + 1);
        keys.push(key);
        keys.extend(batch.iter().map(|slot| slot.key.clone()));
        let answers = read_many(keys).await;
        // What queued during the MGET gets its leader before the answers go out.
        drop(leadership);
        match answers {
            Ok(envelopes) => {
                let mut envelopes = envelopes.into_iter();
                let own = envelopes.next().flatten();
                for (slot, envelope) in batch.into_iter().zip(envelopes) {
                    let _ = slot.reply.send(Reply::Answer(Ok(envelope)));
                }
                Ok(own)
            }
            Err(err) => {
                for slot in batch {
                    let _ = slot.reply.send(Reply::Answer(Err(err.clone())));
                }
                Err(err)
            }
        }
    }
}

impl Drop for Leadership {
    /// Hands the readers queued so far to the first of them still waiting, or ends the
    /// leadership when none is: the queue is never left without a leader.
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        let mut queue = lock(&self.queue);
        while let Some(slot) = queue.waiting.pop_front() {
            let next = Leadership { queue: self.queue.clone(), active: true };
            match slot.reply.send(Reply::Lead(next)) {
                Ok(()) => return,
                // That reader is gone: defuse the undelivered leadership (dropped under the lock).
                Err(Reply::Lead(mut undelivered)) => undelivered.active = false,
                Err(Reply::Answer(_)) => {}
            }
        }
        queue.leading = false;
    }
}

fn lock(queue: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use futures_util::future::join_all;
    use futures_util::task::noop_waker_ref;

    use super::*;

    fn envelope(key: &str) -> Envelope {
        Envelope {
            value: Bytes::from(key.to_string()),
            cached_at_ms: 0,
            expires_at_ms: 1,
            tags: vec![],
            depends_on: vec![],
        }
    }

    /// Answers each key with an envelope holding the key, and records every batch.
    #[derive(Default)]
    struct FakeRedis {
        batches: Mutex<Vec<Vec<String>>>,
        singles: AtomicUsize,
    }

    impl FakeRedis {
        async fn many(&self, keys: Vec<String>) -> Result<Vec<Option<Envelope>>, L2Error> {
            self.batches.lock().unwrap().push(keys.clone());
            tokio::task::yield_now().await;
            Ok(keys.iter().map(|key| (key != "absent").then(|| envelope(key))).collect())
        }

        async fn one(&self, key: String) -> Answer {
            self.singles.fetch_add(1, Ordering::Relaxed);
            Ok(Some(envelope(&key)))
        }

        fn batches(&self) -> Vec<Vec<String>> {
            self.batches.lock().unwrap().clone()
        }
    }

    async fn read(batcher: &ReadBatcher, redis: &FakeRedis, key: &str) -> Answer {
        batcher.read(key.to_string(), |keys| redis.many(keys), |key| redis.one(key)).await
    }

    fn value(answer: &Answer) -> Option<String> {
        answer.as_ref().unwrap().as_ref().map(|envelope| String::from_utf8(envelope.value.to_vec()).unwrap())
    }

    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(noop_waker_ref()))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_ready_together_go_in_one_batch_and_each_gets_its_own_answer() {
        let (batcher, redis) = (ReadBatcher::default(), FakeRedis::default());
        let keys = ["a", "b", "absent", "c"];
        let answers = join_all(keys.iter().map(|key| read(&batcher, &redis, key))).await;
        assert_eq!(redis.batches(), vec![vec!["a", "b", "absent", "c"]]);
        let values: Vec<Option<String>> = answers.iter().map(value).collect();
        assert_eq!(values, [Some("a".into()), Some("b".into()), None, Some("c".into())]);
        assert!(!lock(&batcher.queue).leading, "the leadership ends with the last batch");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_that_arrive_during_a_batch_form_the_next_one() {
        let (batcher, redis) = (ReadBatcher::default(), FakeRedis::default());
        let mut first = pin!(read(&batcher, &redis, "a"));
        assert!(poll_once(first.as_mut()).is_pending(), "the leader yields before sending");
        let mut joined = pin!(read(&batcher, &redis, "b"));
        assert!(poll_once(joined.as_mut()).is_pending());
        assert!(poll_once(first.as_mut()).is_pending(), "the batch of a and b is in flight");
        let later = join_all(["c", "d"].map(|key| read(&batcher, &redis, key)));
        let (first, joined, later) = tokio::join!(first, joined, later);
        assert_eq!(value(&first).as_deref(), Some("a"));
        assert_eq!(value(&joined).as_deref(), Some("b"));
        assert_eq!(later.iter().map(value).collect::<Vec<_>>(), [Some("c".into()), Some("d".into())]);
        assert_eq!(redis.batches(), vec![vec!["a", "b"], vec!["c", "d"]]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_leader_that_goes_away_before_sending_hands_the_batch_on() {
        let (batcher, redis) = (ReadBatcher::default(), FakeRedis::default());
        let mut leader = Box::pin(read(&batcher, &redis, "gone"));
        assert!(poll_once(leader.as_mut()).is_pending());
        let mut first = Box::pin(read(&batcher, &redis, "a"));
        let mut second = Box::pin(read(&batcher, &redis, "b"));
        assert!(poll_once(first.as_mut()).is_pending() && poll_once(second.as_mut()).is_pending());
        drop(leader);
        let (first, second) = tokio::join!(first, second);
        assert_eq!((value(&first).as_deref(), value(&second).as_deref()), (Some("a"), Some("b")));
        assert_eq!(redis.batches(), vec![vec!["a", "b"]], "the promoted reader sent both, not the gone key");
        assert!(!lock(&batcher.queue).leading);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn readers_of_a_batch_lost_mid_call_read_alone_and_a_gone_promotee_passes_it_on() {
        let (batcher, redis) = (ReadBatcher::default(), FakeRedis::default());
        let mut leader = Box::pin(read(&batcher, &redis, "gone"));
        assert!(poll_once(leader.as_mut()).is_pending());
        let mut member = Box::pin(read(&batcher, &redis, "a"));
        assert!(poll_once(member.as_mut()).is_pending());
        assert!(poll_once(leader.as_mut()).is_pending(), "the batch of gone and a is in flight");
        // Two readers queue behind it; the first of them goes away before it is promoted.
        let mut promotee = Box::pin(read(&batcher, &redis, "p"));
        let mut next = Box::pin(read(&batcher, &redis, "n"));
        assert!(poll_once(promotee.as_mut()).is_pending() && poll_once(next.as_mut()).is_pending());
        drop(promotee);
        drop(leader); // Mid-call: the batch is lost, the queue is handed on.
        let (member, next) = tokio::join!(member, next);
        assert_eq!((value(&member).as_deref(), value(&next).as_deref()), (Some("a"), Some("n")));
        assert_eq!(redis.singles.load(Ordering::Relaxed), 1, "the lost batch's reader read alone");
        assert_eq!(redis.batches(), vec![vec!["gone", "a"], vec!["n"]]);
        assert!(!lock(&batcher.queue).leading);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_batch_fails_every_reader_in_it() {
        let batcher = ReadBatcher::default();
        let failing = |_: Vec<String>| async { Err::<Vec<Option<Envelope>>, _>(L2Error::Timeout) };
        let reads = ["a", "b"].map(|key| batcher.read(key.to_string(), failing, |_| async { Ok(None) }));
        for answer in join_all(reads).await {
            assert_eq!(answer.unwrap_err(), L2Error::Timeout);
        }
    }
}
