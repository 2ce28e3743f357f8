//! Reads: `get`, `touch` and `get_or_store`'s coalesced, fenced miss path.

use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Cache;
use crate::entry::Entry;
#[cfg(test)]
use crate::explore::Step;
use crate::flight::Role;
use crate::stats::bump;
use crate::{Fill, LoadError};

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The value of `key`, if it is cached and the cache is coherent. A negative entry reads as
    /// `None`, like a miss.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// assert_eq!(cache.get(&1), None);
    /// cache.put(1, "a");
    /// assert_eq!(cache.get(&1), Some("a"));
    /// ```
    pub fn get(&self, key: &K) -> Option<V> {
        match self.servable_counted(key) {
            Some(entry) => {
                bump(&self.inner.counters.hits);
                entry.value.clone()
            }
            None => None,
        }
    }

    /// The entry of `key` if it may be served (the gate is open and the entry was stored since
    /// the last flush), after processing pending removals; counts a bypassed read or a miss
    /// when there is none. What `get` and `touch` read.
    pub(super) fn servable_counted(&self, key: &K) -> Option<Arc<Entry<V>>> {
        let inner = &*self.inner;
        if inner.removals.pending() {
            self.process_removals();
        }
        if !inner.coherent.load(Ordering::Acquire) {
            bump(&inner.counters.bypassed);
            return None;
        }
        let found = self.unflushed(key);
        match &found {
            Some(entry) => self.refresh_if_due(key, entry),
            None => bump(&inner.counters.misses),
        }
        found
    }

    /// The cached value of `key`, or else the result of `loader`, which is stored unless an
    /// invalidation of the key or of one of the value's tags, or a flush, happened since the
    /// load began. `Ok(None)` means the loader said "no such row" (a negative entry).
    ///
    /// Concurrent callers that miss the same key share one load and all get its result, errors
    /// included. One that has waited [`CacheConfig::fill_wait`] for another's load loads for
    /// itself. In [`Mode::Bypass`] the loader is called every time and nothing is stored.
    ///
    /// # Errors
    /// The loader's error, which is not cached.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Fill, LoadError, Tag};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let cache: Cache<u64, String> = Cache::new(CacheConfig::default());
    /// // Your query; `?` converts any error into LoadError. Tag the value with its rows.
    /// let load = |id: u64| async move {
    ///     let name: String = format!("user {id}");
    ///     let _parsed: u64 = "42".parse()?;
    ///     Ok::<_, LoadError>(Fill::found(name).with_tag(Tag::row("users", id)))
    /// };
    /// assert_eq!(cache.get_or_store(42, || load(42)).await.unwrap().as_deref(), Some("user 42"));
    /// // The second call is a hit: the loader is not called.
    /// let never = || async { unreachable!("cached") };
    /// assert_eq!(cache.get_or_store(42, never).await.unwrap().as_deref(), Some("user 42"));
    /// // "No such row" is remembered briefly as a negative entry.
    /// assert_eq!(cache.get_or_store(7, || async { Ok(Fill::absent()) }).await.unwrap(), None);
    /// # });
    /// ```
    pub async fn get_or_store<F, Fut>(&self, key: K, loader: F) -> Result<Option<V>, LoadError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fill<V>, LoadError>>,
    {
        if let Some(entry) = self.servable_counted(&key) {
            bump(&self.inner.counters.hits);
            return Ok(entry.value.clone());
        }
        if !self.inner.coherent.load(Ordering::Acquire) {
            return self.load(loader).await.map(Fill::into_value);
        }
        match self.inner.flights.join_or_lead(&key) {
            Role::Leader(lead) => {
                step!(self, Step::Led);
                // Someone may have stored the key between our miss and our taking the lead.
                if let Some(entry) = self.servable(&key) {
                    return Ok(entry.value.clone());
                }
                let outcome = self.load_and_fill(key.clone(), loader).await;
                let result = outcome.result.clone();
                lead.hand_over(outcome);
                step!(self, Step::HandedOver);
                // Returning is the step after this one: nothing happens between the two.
                drop(lead);
                result
            }
            Role::Follower(waiter) => {
                step!(self, Step::Joined);
                let shared = waiter.outcome(self.inner.config.fill_wait).await;
                if let Some(outcome) = shared {
                    // The leader's value is ours only if it is as fresh as a load of our own
                    // would be: nothing it depends on was invalidated after its ticket. The
                    // leader having stored it proves nothing, since an invalidation may have
                    // evicted it again before we joined. Errors are never stale.
                    if outcome.result.is_err()
                        || self.admits(&key, &outcome.tags, outcome.ticket.epoch)
                    {
                        bump(&self.inner.counters.coalesced);
                        step!(self, Step::TookOver);
                        return outcome.result;
                    }
                }
                // The leader hung, vanished, or loaded before an invalidation we must honour.
                // A write may have stored a newer value meanwhile.
                step!(self, Step::Refused);
                if let Some(entry) = self.servable(&key) {
                    bump(&self.inner.counters.hits);
                    return Ok(entry.value.clone());
                }
                self.load_and_fill(key, loader).await.result
            }
        }
    }

    /// The entry of `key` if it may be served (the gate is open and the entry was stored since
    /// the last flush), counting nothing: a second look on the miss path.
    pub(super) fn servable(&self, key: &K) -> Option<Arc<Entry<V>>> {
        if !self.inner.coherent.load(Ordering::Acquire) {
            return None;
        }
        self.unflushed(key)
    }

    /// The entry of `key` if it was stored since the last flush, whatever the gate; counting
    /// nothing. What writes compare against.
    pub(super) fn unflushed(&self, key: &K) -> Option<Arc<Entry<V>>> {
        self.inner.entries.get(key).filter(|e| self.is_current(e))
    }

    /// Marks `key` as read, which extends its time to idle (never past its TTL). Returns whether
    /// the key has an entry.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// cache.put(1, "a");
    /// assert!(cache.touch(&1));
    /// assert!(!cache.touch(&2));
    /// ```
    pub fn touch(&self, key: &K) -> bool {
        self.servable_counted(key).is_some()
    }

    /// Whether `entry` was stored since the last flush.
    pub(super) fn is_current(&self, entry: &Entry<V>) -> bool {
        entry.generation == self.inner.generation.load(Ordering::Acquire)
    }
}
