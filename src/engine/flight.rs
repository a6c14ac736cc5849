//! Request coalescing: the map of lookups in flight, at most one per key.
//!
//! A read that finds nothing usable in L1 joins the flight for its key, or starts one. The
//! flight (L2, then the origin, see `read.rs`) runs as its own task, detached from every
//! caller, and publishes its result once on a `watch` channel; every waiter gets a clone.
//!
//! Cancellation rules:
//! - A waiter that goes away (client disconnect, request timeout) only drops its receiver: the
//!   flight and the other waiters are untouched, and the result still fills the cache.
//! - A waiter gives up after its own limit (`origin.timeout_ms`); the flight is bounded by the
//!   same budget, so it cannot outlive its waiters by much.
//! - The flight's entry leaves the map when its task ends, however it ends (the guard's drop),
//!   and only if the map still holds that same flight. A task that dies without publishing
//!   closes the channel, which its waiters read as a failure: no key stays stuck.
//! - A flight may publish twice: a stale copy first (stale-while-revalidate), then the refresh.
//!   Waiters take the first value they see.

use std::sync::Arc;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use tokio::sync::watch;

use super::key::Key;

pub(crate) struct Flights<R> {
    map: Arc<DashMap<Key, Arc<Flight<R>>>>,
}

pub(crate) struct Flight<R> {
    result: watch::Sender<Option<R>>,
}

/// What a caller of [`Flights::join`] got: a place in the queue, and the duty to run the
/// flight when it started it.
pub(crate) struct Joined<R> {
    pub receiver: watch::Receiver<Option<R>>,
    pub run: Option<FlightRun<R>>,
}

/// Held by the task running a flight: publishes the result; its drop ends the flight.
pub(crate) struct FlightRun<R> {
    map: Arc<DashMap<Key, Arc<Flight<R>>>>,
    key: Key,
    flight: Arc<Flight<R>>,
}

impl<R: Clone> Flights<R> {
    pub fn new() -> Self {
        Self { map: Arc::new(DashMap::new()) }
    }

    /// Joins the flight for `key`, starting one when there is none.
    pub fn join(&self, key: &Key) -> Joined<R> {
        match self.map.entry(key.clone()) {
            MapEntry::Occupied(occupied) => Joined { receiver: occupied.get().result.subscribe(), run: None },
            MapEntry::Vacant(vacant) => {
                let (sender, receiver) = watch::channel(None);
                let flight = Arc::new(Flight { result: sender });
                vacant.insert(flight.clone());
                Joined { receiver, run: Some(FlightRun { map: self.map.clone(), key: key.clone(), flight }) }
            }
        }
    }

    /// Whether a flight for `key` is running.
    pub fn is_running(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

impl<R> FlightRun<R> {
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Hands `result` to every waiter, present and future, of this flight.
    pub fn publish(&self, result: R) {
        self.flight.result.send_replace(Some(result));
    }
}

impl<R> Drop for FlightRun<R> {
    fn drop(&mut self) {
        self.map.remove_if(&self.key, |_, flight| Arc::ptr_eq(flight, &self.flight));
    }
}

/// Why a waiter got no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unanswered {
    /// The flight ended without publishing (its run was dropped): start another.
    Abandoned,
    /// `deadline` passed first.
    TimedOut,
}

/// Waits for the first result of a flight until `deadline`.
pub(crate) async fn wait<R: Clone>(
    mut receiver: watch::Receiver<Option<R>>,
    deadline: tokio::time::Instant,
) -> Result<R, Unanswered> {
    match tokio::time::timeout_at(deadline, receiver.wait_for(Option::is_some)).await {
        Ok(Ok(result)) => result.clone().ok_or(Unanswered::Abandoned),
        Ok(Err(_)) => Err(Unanswered::Abandoned),
        Err(_) => Err(Unanswered::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::test_support::key;

    fn soon(ms: u64) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn one_flight_per_key_and_every_waiter_gets_its_result() {
        let flights: Flights<u32> = Flights::new();
        let first = flights.join(&key("a"));
        let second = flights.join(&key("a"));
        let other = flights.join(&key("b"));
        assert!(first.run.is_some() && second.run.is_none() && other.run.is_some());
        let run = first.run.unwrap();
        run.publish(7);
        assert_eq!(wait(second.receiver, soon(1000)).await, Ok(7));
        assert_eq!(wait(first.receiver, soon(1000)).await, Ok(7));
        drop(run);
        assert!(!flights.is_running("a"));
        assert!(flights.join(&key("a")).run.is_some(), "a finished flight makes room for the next");
    }

    #[tokio::test]
    async fn a_flight_that_dies_without_a_result_frees_its_waiters_and_its_key() {
        let flights: Flights<u32> = Flights::new();
        let started = flights.join(&key("a"));
        let waiter = flights.join(&key("a"));
        drop(started.run);
        assert_eq!(wait(waiter.receiver, soon(5000)).await, Err(Unanswered::Abandoned));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gives_up_at_its_limit_and_a_dropped_waiter_changes_nothing() {
        let flights: Flights<u32> = Flights::new();
        let started = flights.join(&key("a"));
        let impatient = flights.join(&key("a"));
        let patient = flights.join(&key("a"));
        assert_eq!(wait(impatient.receiver, soon(20)).await, Err(Unanswered::TimedOut));
        drop(started.receiver);
        started.run.as_ref().unwrap().publish(1);
        assert_eq!(wait(patient.receiver, soon(1000)).await, Ok(1));
    }

    #[tokio::test]
    async fn an_old_run_never_removes_a_newer_flight_of_its_key() {
        let flights: Flights<u32> = Flights::new();
        let old = flights.join(&key("a")).run.unwrap();
        flights.map.remove("a");
        let new = flights.join(&key("a")).run.unwrap();
        drop(old);
        assert!(flights.is_running("a"));
        drop(new);
        assert!(!flights.is_running("a"));
    }
}
