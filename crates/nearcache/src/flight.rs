//! Coalesced loads: at most one load per key in flight, whose outcome the callers that missed
//! the same key meanwhile share. This knows nothing of the cache it serves (an outcome is any
//! cloneable value): deciding whether a shared outcome may be used is the cache's business.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

/// The loads in flight, by key.
pub(crate) struct Flights<K, O> {
    map: Mutex<HashMap<K, Flight<O>>>,
    next_id: AtomicU64,
}

struct Flight<O> {
    id: u64,
    outcome: watch::Receiver<Option<O>>,
}

/// What a caller that missed a key does: lead the key's load, or wait for the leader's.
pub(crate) enum Role<'a, K: Hash + Eq, O> {
    /// Load, then [`Lead::hand_over`]; dropping the lead unregisters the flight, and waiters of
    /// a lead dropped without handing over load for themselves.
    Leader(Lead<'a, K, O>),
    /// Wait for the leader's outcome with [`Waiter::outcome`].
    Follower(Waiter<O>),
}

/// The leader's side of a flight.
pub(crate) struct Lead<'a, K: Hash + Eq, O> {
    flights: &'a Flights<K, O>,
    key: K,
    id: u64,
    tx: watch::Sender<Option<O>>,
}

/// A waiter's side of a flight.
pub(crate) struct Waiter<O> {
    outcome: watch::Receiver<Option<O>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map stays consistent whatever a panicking holder was doing.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<K: Hash + Eq + Clone, O: Clone> Flights<K, O> {
    pub(crate) fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Loads under way.
    pub(crate) fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Joins the flight of `key`, or registers one led by the caller.
    pub(crate) fn join_or_lead(&self, key: &K) -> Role<'_, K, O> {
        let mut map = lock(&self.map);
        if let Some(flight) = map.get(key) {
            return Role::Follower(Waiter {
                outcome: flight.outcome.clone(),
            });
        }
        let (tx, outcome) = watch::channel(None);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(key.clone(), Flight { id, outcome });
        Role::Leader(Lead {
            flights: self,
            key: key.clone(),
            id,
            tx,
        })
    }
}

impl<K: Hash + Eq, O> Lead<'_, K, O> {
    /// Gives the outcome to every waiter, present and joining until the lead is dropped.
    pub(crate) fn hand_over(&self, outcome: O) {
        // Waiters that went away are no reason to fail.
        let _ = self.tx.send(Some(outcome));
    }
}

impl<K: Hash + Eq, O> Drop for Lead<'_, K, O> {
    fn drop(&mut self) {
        let mut map = lock(&self.flights.map);
        if map.get(&self.key).is_some_and(|f| f.id == self.id) {
            map.remove(&self.key);
        }
    }
}

impl<O: Clone> Waiter<O> {
    /// The leader's outcome, or `None` if the leader went away without one or took longer
    /// than `limit`.
    pub(crate) async fn outcome(mut self, limit: Duration) -> Option<O> {
        match tokio::time::timeout(limit, self.outcome.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone(),
            _ => None,
        }
    }
}
