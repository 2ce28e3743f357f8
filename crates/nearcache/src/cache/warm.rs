//! A warm start: the keys of what a cache holds, kept across a restart, loaded again through
//! the fenced path once the new cache's source is coherent. Keys, not values: the database
//! is the truth, and a value kept on disk could be stale by the time it is read.

use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use super::Cache;
use crate::stats::bump;
use crate::{Fill, LoadError, Mode};

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Up to `limit` keys of the values cached now (negative entries left out), for
    /// [`warm`](Self::warm) after a restart. A cache at its capacity holds what its policy
    /// judged worth keeping: the hot set.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// cache.put(1, "a");
    /// assert_eq!(cache.keys(10), [1]);
    /// ```
    pub fn keys(&self, limit: usize) -> Vec<K> {
        self.inner
            .entries
            .iter()
            .filter(|(_, e)| e.value.is_some() && self.is_current(e))
            .map(|(k, _)| (*k).clone())
            .take(limit)
            .collect()
    }

    /// Loads `keys` through [`get_or_store`](Self::get_or_store), at most `rate` a second, once
    /// the cache is coherent (it waits for its source); returns how many loads it made. Each
    /// goes through the fence like any other load, so a change meanwhile is never stored
    /// stale; a key whose row is gone becomes a negative entry, as on any miss; a key already
    /// cached costs nothing. Counted in `Stats::warmed`.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Fill};
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let cache: Cache<u32, String> = Cache::new(CacheConfig::default());
    /// let load = |k: u32| async move { Ok(Fill::found(format!("user {k}"))) };
    /// assert_eq!(cache.warm(vec![1, 2, 3], 1000.0, load).await, 3);
    /// assert_eq!(cache.get(&2).as_deref(), Some("user 2"));
    /// # });
    /// ```
    pub async fn warm<L, Fut>(&self, keys: Vec<K>, rate: f64, load: L) -> usize
    where
        L: Fn(K) -> Fut,
        Fut: Future<Output = Result<Fill<V>, LoadError>>,
    {
        while self.mode() != Mode::Coherent {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let period = Duration::from_secs_f64(1.0 / rate.max(1e-6));
        let mut loaded = 0;
        let mut next = tokio::time::Instant::now();
        for key in keys {
            if self.unflushed(&key).is_some() {
                continue;
            }
            tokio::time::sleep_until(next).await;
            next += period;
            let mut called = false;
            let _ = self
                .get_or_store(key.clone(), || {
                    called = true;
                    load(key)
                })
                .await;
            if called {
                loaded += 1;
                bump(&self.inner.counters.warmed);
            }
        }
        loaded
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::{Cache, CacheConfig, Fill, Mode};

    #[tokio::test]
    async fn warming_waits_for_coherence_skips_what_is_cached_and_keeps_its_rate() {
        let cache: Cache<u32, String> = Cache::new(CacheConfig {
            initial_mode: Mode::Bypass,
            ..CacheConfig::default()
        });
        let warming = cache.clone();
        let load = |k: u32| async move { Ok(Fill::found(format!("v{k}"))) };
        let task = tokio::spawn(async move { warming.warm(vec![1, 2, 3, 4], 20.0, load).await });
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(
            cache.stats().loads,
            0,
            "nothing before the source is coherent"
        );
        cache.set_mode(Mode::Coherent);
        cache.put(3, "put".into());
        let start = Instant::now();
        assert_eq!(task.await.unwrap(), 3, "the cached key is skipped");
        // Three loads at 20 a second: the second and the third wait 50 ms each.
        assert!(
            start.elapsed() >= Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(cache.get(&3).as_deref(), Some("put"));
        assert_eq!(cache.get(&4).as_deref(), Some("v4"));
        assert_eq!(cache.stats().warmed, 3);
        assert_eq!(cache.keys(10).len(), 4);
    }
}
