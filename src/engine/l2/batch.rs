//! Batching: L2 calls that arrive together go to Redis as one command or one pipeline.
//!
//! Under load, many requests miss L1 (or write) at once, and one call each costs a write
//! syscall here and a read and a command dispatch in Redis. Instead a call joins the open batch:
//! single-key reads become one MGET, writes one pipeline with one invalidation message. The
//! first call of a batch leads it: it yields once to the scheduler, so every request that is
//! ready to run gets to join, then takes the batch, sends it, and hands each caller its answer.
//! Calls that arrive while that batch is in flight form the next batch, which the leader hands
//! to one of them to lead. One batch is in flight at a time, so the batch grows with the round
//! trip: an idle service sends a batch of one at once, a loaded one amortizes each round trip
//! over everything that queued behind it. No task of its own: nothing to start or stop.
//!
//! Cancellation: a caller that goes away leaves its slot; the leader's answer to it is dropped.
//! A leader that goes away hands the queued callers to a new leader (its guard does it on
//! drop); callers of a batch whose call was cancelled see their slot closed and go alone.
//!
//! The lock guards only the queue and the leader flag; it is never held across `.await`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::L2Error;

/// What a queued caller is told.
enum Reply<T, A> {
    Answer(Result<A, L2Error>),
    /// Lead the batch that queued behind the previous one. Carried in the message, so a
    /// caller that goes away before reading it still hands the leadership on.
    Lead(Leadership<T, A>),
}

struct Slot<T, A> {
    item: T,
    reply: oneshot::Sender<Reply<T, A>>,
}

struct Queue<T, A> {
    waiting: VecDeque<Slot<T, A>>,
    /// Whether a caller is leading (gathering or sending a batch). Invariant: while it is
    /// false, `waiting` is empty.
    leading: bool,
}

/// Batches calls that each send an item `T` and get an answer `A`.
pub(crate) struct Batcher<T, A> {
    queue: Arc<Mutex<Queue<T, A>>>,
}

impl<T, A> Default for Batcher<T, A> {
    fn default() -> Self {
        Batcher { queue: Arc::new(Mutex::new(Queue { waiting: VecDeque::new(), leading: false })) }
    }
}

/// Held by the caller that leads; hands the queue on when dropped, whatever happened.
struct Leadership<T, A> {
    queue: Arc<Mutex<Queue<T, A>>>,
    /// False for a leadership that was never delivered (its caller had gone away).
    active: bool,
}

impl<T: Clone, A> Batcher<T, A> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue<T, A>> {
        lock(&self.queue)
    }

    /// Sends `item` in a batch: `send_many` sends a batch and answers its items in order. A
    /// caller whose batch was lost (its leader cancelled mid-call) goes alone with `send_one`.
    pub async fn run<Many, ManyFut, One, OneFut>(&self, item: T, send_many: Many, send_one: One) -> Result<A, L2Error>
    where
        Many: FnOnce(Vec<T>) -> ManyFut,
        ManyFut: std::future::Future<Output = Result<Vec<A>, L2Error>>,
        One: FnOnce(T) -> OneFut,
        OneFut: std::future::Future<Output = Result<A, L2Error>>,
    {
        let receiver = {
            let mut queue = self.lock();
            if queue.leading {
                let (reply, receiver) = oneshot::channel();
                queue.waiting.push_back(Slot { item: item.clone(), reply });
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
                Ok(Reply::Lead(leadership)) => leadership, // Lead the next batch, this item first.
                Err(_) => return send_one(item).await,     // The batch was lost with its leader.
            },
        };
        // Let every request that is ready to run join this batch before it is sent.
        tokio::task::yield_now().await;
        let batch = std::mem::take(&mut self.lock().waiting);
        let mut items = Vec::with_capacity(batch.len() + 1);
        items.push(item);
        items.extend(batch.iter().map(|slot| slot.item.clone()));
        let answers = send_many(items).await;
        // What queued during the call gets its leader before the answers go out.
        drop(leadership);
        match answers {
            Ok(answers) => {
                let mut answers = answers.into_iter();
                let own = answers.next();
                for (slot, answer) in batch.into_iter().zip(answers) {
                    let _ = slot.reply.send(Reply::Answer(Ok(answer)));
                }
                own.ok_or_else(|| L2Error::Redis("a batch came back without answers".to_string()))
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

impl<T, A> Drop for Leadership<T, A> {
    /// Hands the callers queued so far to the first of them still waiting, or ends the
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
                // That caller is gone: defuse the undelivered leadership (dropped under the lock).
                Err(Reply::Lead(mut undelivered)) => undelivered.active = false,
                Err(Reply::Answer(_)) => {}
            }
        }
        queue.leading = false;
    }
}

fn lock<T, A>(queue: &Mutex<Queue<T, A>>) -> std::sync::MutexGuard<'_, Queue<T, A>> {
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
    use crate::engine::l2::Envelope;

    type Answer = Result<Option<Envelope>, L2Error>;
    type ReadBatcher = Batcher<String, Option<Envelope>>;

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
        batcher.run(key.to_string(), |keys| redis.many(keys), |key| redis.one(key)).await
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
        let reads = ["a", "b"].map(|key| batcher.run(key.to_string(), failing, |_| async { Ok(None) }));
        for answer in join_all(reads).await {
            assert_eq!(answer.unwrap_err(), L2Error::Timeout);
        }
    }
}
