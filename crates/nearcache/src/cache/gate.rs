//! Invalidations, flushes and the coherence gate: what whoever knows about changes calls.
//! Each updates the fence under its lock before it removes anything, so that no load that
//! began before it can store afterwards.

use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Cache;
use crate::entry::{Cause, Entry};
use crate::stats::bump;
use crate::{Mode, Tag};

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Removes `key` (ConCache's delete), and keeps a load of it in flight from storing.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// cache.put(1, "a");
    /// cache.delete(&1);
    /// assert_eq!(cache.get(&1), None);
    /// ```
    pub fn delete(&self, key: &K) {
        self.remove_key(key, Cause::Delete);
    }

    /// Removes `key` because its row changed, and keeps a load of it in flight from storing.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// cache.put(1, "a");
    /// cache.invalidate(&1);
    /// assert_eq!(cache.get(&1), None);
    /// assert_eq!(cache.stats().invalidations, 1);
    /// ```
    pub fn invalidate(&self, key: &K) {
        bump(&self.inner.counters.invalidations);
        self.remove_key(key, Cause::Invalidation);
    }

    fn remove_key(&self, key: &K, cause: Cause) {
        let inner = &*self.inner;
        let removed = {
            let mut fence = self.fenced();
            fence.invalidate(std::slice::from_ref(key), &[]);
            inner.entries.remove(key)
        };
        self.process_removals();
        if let Some(entry) = removed.filter(|e| self.is_current(e)) {
            if cause == Cause::Invalidation {
                bump(&inner.counters.invalidated_entries);
            }
            self.notify(cause, Some(key), entry.value.as_ref());
        }
    }

    /// Removes every entry that carries `tag`, through the tag index (no scan), and keeps loads
    /// in flight that depend on it from storing.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Fill, Tag};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let cache: Cache<u32, String> = Cache::new(CacheConfig::default());
    /// let org = Tag::row("organizations", 7);
    /// let load = || async { Ok(Fill::found("Ada at Acme".to_string()).with_tag(org.clone())) };
    /// cache.get_or_store(1, load).await.unwrap();
    /// cache.invalidate_tag(&Tag::row("organizations", 7));
    /// assert_eq!(cache.get(&1), None, "every entry built from the row goes");
    /// # });
    /// ```
    pub fn invalidate_tag(&self, tag: &Tag) {
        self.invalidate_all(&[], std::slice::from_ref(tag));
    }

    /// Invalidates `keys` and `tags` as one step: what [`Cache::invalidate`] of each key and
    /// [`Cache::invalidate_tag`] of each tag do, under one lock of the fence instead of one
    /// each. A source hands over a commit's changed rows of a table together.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Fill, Tag};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let cache: Cache<u32, String> = Cache::new(CacheConfig::default());
    /// cache.put(1, "Ada".to_string());
    /// let org = || async { Ok(Fill::found("Bob at Acme".to_string()).with_tag(Tag::row("organizations", 7))) };
    /// cache.get_or_store(2, org).await.unwrap();
    /// cache.invalidate_all(&[1], &[Tag::row("organizations", 7)]);
    /// assert_eq!((cache.get(&1), cache.get(&2)), (None, None));
    /// assert_eq!(cache.stats().invalidations, 2);
    /// # });
    /// ```
    pub fn invalidate_all(&self, keys: &[K], tags: &[Tag]) {
        if keys.is_empty() && tags.is_empty() {
            return;
        }
        let inner = &*self.inner;
        let count = u64::try_from(keys.len() + tags.len()).unwrap_or(u64::MAX);
        inner
            .counters
            .invalidations
            .fetch_add(count, Ordering::Relaxed);
        let removed: Vec<(K, Arc<Entry<V>>)> = {
            let mut fence = self.fenced();
            let carried = fence.invalidate(keys, tags);
            let by_key = keys
                .iter()
                .filter_map(|k| inner.entries.remove(k).map(|e| (k.clone(), e)));
            let by_tag = carried
                .into_iter()
                .flat_map(crate::rows::Rows::into_keys)
                .filter_map(|k| inner.entries.remove(&k).map(|e| (k, e)));
            by_key.chain(by_tag).collect()
        };
        self.process_removals();
        for (key, entry) in removed.iter().filter(|(_, e)| self.is_current(e)) {
            bump(&inner.counters.invalidated_entries);
            self.notify(Cause::Invalidation, Some(key), entry.value.as_ref());
        }
    }

    /// Empties the cache in O(1) and keeps every load in flight from storing.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// cache.put(1, "a");
    /// cache.put(2, "b");
    /// cache.flush();
    /// assert!(cache.is_empty());
    /// ```
    pub fn flush(&self) {
        let forgotten = self.fenced().flush();
        drop(forgotten);
        self.process_removals();
        self.notify(Cause::Flush, None, None);
    }

    /// Switches the coherence gate. Entering [`Mode::Bypass`] flushes; leaving it does not
    /// (nothing was stored meanwhile).
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Mode};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// cache.put(1, "a");
    /// cache.set_mode(Mode::Bypass); // the source lost its connection: serve nothing, store nothing
    /// assert_eq!(cache.get(&1), None);
    /// cache.set_mode(Mode::Coherent);
    /// assert_eq!(cache.get(&1), None, "entering bypass flushed");
    /// ```
    pub fn set_mode(&self, mode: Mode) {
        let (flushed, forgotten) = {
            let mut fence = self.fenced();
            let was = fence.set_coherent(mode == Mode::Coherent);
            match mode {
                Mode::Coherent => (false, None),
                Mode::Bypass => (was, Some(fence.flush())),
            }
        };
        drop(forgotten);
        self.process_removals();
        if flushed {
            self.notify(Cause::Flush, None, None);
        }
    }

    /// Says which tables' changes reach this cache (a `TableHandler` says so when it is made).
    /// From then on a loaded value with no tag of one of them is counted
    /// ([`Stats::unwatched_fills`](crate::Stats::unwatched_fills)) and warned about once per
    /// table: no change could evict it.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Fill, Tag};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// cache.watch_tables(["users"]);
    /// cache.get_or_store(1, || async { Ok(Fill::found("Ada").with_tag(Tag::row("users", 1))) }).await.unwrap();
    /// cache.get_or_store(2, || async { Ok(Fill::found("forgot its tag")) }).await.unwrap();
    /// assert_eq!(cache.stats().unwatched_fills, 1);
    /// # });
    /// ```
    pub fn watch_tables<I, S>(&self, tables: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut watched = self
            .inner
            .watched
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for table in tables {
            if !watched.iter().any(|w| **w == *table.as_ref()) {
                watched.push(Arc::from(table.as_ref()));
            }
        }
    }

    /// The gate's mode.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Mode};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig { initial_mode: Mode::Bypass, ..CacheConfig::default() });
    /// assert_eq!(cache.mode(), Mode::Bypass);
    /// ```
    pub fn mode(&self) -> Mode {
        if self.inner.coherent.load(Ordering::Acquire) {
            Mode::Coherent
        } else {
            Mode::Bypass
        }
    }
}
