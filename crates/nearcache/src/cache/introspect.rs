//! What a cache says about itself: its size, counters, configuration and internal sizes.

use std::hash::Hash;

use super::{lock, Cache};
use crate::{CacheConfig, Stats};

/// The sizes of a cache's own structures (see [`Cache::internals`]), and what bounds each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Internals {
    /// Distinct tags that cached entries carry (at most `index_rows`).
    pub indexed_tags: usize,
    /// Rows of the tag index, one per tag of each cached entry: bounded by the entries' tags
    /// in all (an evicted entry's rows leave when its removal is processed).
    pub index_rows: usize,
    /// Keys and tags whose latest invalidation the fence remembers: those of the last one to two
    /// [`CacheConfig::fence_window`]s, and at most [`CacheConfig::fence_memory`] (past it the
    /// fence forgets them all and fences every load under way instead). An invalidation made
    /// while no load is under way is not remembered: no load can be racing it.
    pub fence_remembered: usize,
    /// Loads under way, one per key however many callers wait on it.
    pub loads_in_flight: usize,
    /// Removals reported by moka and not yet processed (index rows, callbacks): emptied by the
    /// next use of the cache.
    pub removals_queued: usize,
}

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The number of entries, after moka has caught up with pending work.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// cache.put(1, "a");
    /// assert_eq!(cache.len(), 1);
    /// ```
    pub fn len(&self) -> u64 {
        self.inner.entries.run_pending_tasks();
        self.process_removals();
        self.inner.entries.entry_count()
    }

    /// Whether [`Cache::len`] is 0.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// assert!(cache.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lets moka run its pending maintenance now (expiry, eviction), and the callbacks it
    /// causes. moka otherwise does it as the cache is used.
    ///
    /// ```
    /// use std::time::Duration;
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> =
    ///     Cache::new(CacheConfig { ttl: Duration::from_millis(10), ..CacheConfig::default() });
    /// cache.put(1, "a");
    /// std::thread::sleep(Duration::from_millis(30));
    /// cache.run_pending_tasks(); // expiry and its callbacks, now
    /// assert_eq!(cache.get(&1), None);
    /// ```
    pub fn run_pending_tasks(&self) {
        self.inner.entries.run_pending_tasks();
        self.process_removals();
    }

    /// The counters so far.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// cache.put(1, "a");
    /// cache.get(&1);
    /// cache.get(&2);
    /// let stats = cache.stats();
    /// assert_eq!((stats.hits, stats.misses), (1, 1));
    /// ```
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// What the entries weigh together, in bytes, with [`CacheConfig::max_bytes`] set (see
    /// [`Cache::with_weigher`]); their number otherwise. Like [`len`](Self::len), it lags
    /// behind writes until moka's pending tasks run.
    pub fn weighted_size(&self) -> u64 {
        self.inner.entries.weighted_size()
    }

    /// The configuration the cache was made with.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig { capacity: 5, ..CacheConfig::default() });
    /// assert_eq!(cache.config().capacity, 5);
    /// ```
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The sizes of the cache's own structures beside moka's entries, each bounded (see
    /// [`Internals`]): for metrics, and for a soak test that they stay flat.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Fill, Tag};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// let (user, org) = (Tag::row("users", 1), Tag::row("organizations", 7));
    /// let fill = Fill::found("Ada").with_tag(user).with_tag(org.clone());
    /// cache.get_or_store(1, || async { Ok(fill) }).await.unwrap();
    /// let sizes = cache.internals();
    /// assert_eq!((sizes.indexed_tags, sizes.index_rows), (2, 2));
    /// cache.invalidate_tag(&org); // the entry goes, and with it both its index rows
    /// let sizes = cache.internals();
    /// assert_eq!((sizes.indexed_tags, sizes.index_rows), (0, 0));
    /// // A load under way: invalidations are remembered for it, to refuse its value.
    /// let racing = cache.get_or_store(2, || async {
    ///     tokio::task::yield_now().await;
    ///     Ok(Fill::found("Bob"))
    /// });
    /// let invalidate = async {
    ///     cache.invalidate(&2);
    ///     cache.invalidate_tag(&org);
    ///     cache.internals().fence_remembered
    /// };
    /// let (_, remembered) = tokio::join!(racing, invalidate);
    /// assert_eq!(remembered, 2);
    /// assert_eq!(cache.get(&2), None, "loaded before the invalidation: not stored");
    /// # });
    /// ```
    pub fn internals(&self) -> Internals {
        let inner = &*self.inner;
        let (indexed_tags, index_rows, fence_remembered) = lock(&inner.fence).sizes();
        Internals {
            indexed_tags,
            index_rows,
            fence_remembered,
            loads_in_flight: inner.flights.len(),
            removals_queued: inner.removals.len(),
        }
    }

    #[cfg(test)]
    pub(crate) fn indexed_tags(&self) -> usize {
        lock(&self.inner.fence).indexed_tags()
    }
}
