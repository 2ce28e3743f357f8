//! The online audit: how coherent the cache is in a deployment, measured by loading cached
//! entries again and comparing.
//!
//! A mismatch alone proves nothing: the change may have been committed a moment ago, its
//! invalidation on its way. So the audit waits for the source's bound and looks again: an
//! entry still cached (the same entry, not one stored since) after every invalidation that
//! could have been in flight has arrived missed one. That entry is stale: it is evicted, counted
//! and logged.

use std::fmt::Debug;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::Cache;
use crate::stats::bump;
use crate::{Fill, LoadError};

/// How an audit runs ([`Cache::audit`]).
#[derive(Debug, Clone, Copy)]
pub struct Audit {
    /// Entries checked per second. The reference server's default, 2, costs two queries a
    /// second.
    pub rate: f64,
    /// The longest a committed change may take to evict what it changed through the cache's
    /// source, when the source is healthy (beyond it the source puts the cache in bypass): for
    /// LISTEN and the WAL, the heartbeat's interval plus its timeout. A mismatch is stale only
    /// if the entry is still cached this long after it was seen.
    pub bound: Duration,
}

/// Keys sampled in one pass over the cache; the next pass starts once they are all checked.
const SAMPLE: usize = 256;

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + Debug + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Checks the cache against the database until the returned future is dropped: `rate`
    /// times a second, a cached entry picked at random is loaded again through `load` and
    /// compared with `same` (the value's `PartialEq`, or a digest of what it serves). Counted in
    /// [`Stats`](crate::Stats): `audit_checked`, `audit_mismatched` (differed when loaded;
    /// usually a change whose invalidation was on its way) and `audit_stale` (still cached
    /// `audit.bound` later: an invalidation was missed). A stale entry is evicted at once, and
    /// logged with its key through `tracing`. Nothing is checked while the cache bypasses.
    ///
    /// ```
    /// use std::time::Duration;
    /// use nearcache::{Audit, Cache, CacheConfig, Fill};
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let cache: Cache<u32, String> = Cache::new(CacheConfig::default());
    /// cache.put(1, "Ada".into());
    /// // The database says otherwise, and no invalidation comes.
    /// let load = |_key: u32| async { Ok(Fill::found("Grace".to_string())) };
    /// let audit = Audit { rate: 100.0, bound: Duration::from_millis(50) };
    /// let _ = tokio::time::timeout(Duration::from_millis(500), cache.audit(audit, load, |a, b| a == b)).await;
    /// assert_eq!(cache.stats().audit_stale, 1);
    /// assert_eq!(cache.get(&1), None, "repaired");
    /// # });
    /// ```
    pub async fn audit<L, Fut>(&self, audit: Audit, load: L, same: impl Fn(&V, &V) -> bool)
    where
        L: Fn(K) -> Fut,
        Fut: Future<Output = Result<Fill<V>, LoadError>>,
    {
        let period = Duration::from_secs_f64(1.0 / audit.rate.max(1e-6));
        let mut random = Random::new();
        let mut sample: Vec<K> = Vec::new();
        loop {
            tokio::time::sleep(period).await;
            if sample.is_empty() {
                sample = self.sample(&mut random);
            }
            if let Some(key) = sample.pop() {
                self.audit_one(key, &audit, &load, &same).await;
            }
        }
    }

    /// Up to [`SAMPLE`] cached keys, each as likely as any other (reservoir sampling over
    /// one pass of moka's iterator, made without awaiting).
    fn sample(&self, random: &mut Random) -> Vec<K> {
        let mut sample = Vec::with_capacity(SAMPLE);
        for (seen, (key, _)) in self.inner.entries.iter().enumerate() {
            if seen < SAMPLE {
                sample.push((*key).clone());
            } else if let Some(slot) = sample.get_mut(random.below(seen + 1)) {
                *slot = (*key).clone();
            }
        }
        sample
    }

    async fn audit_one<L, Fut>(
        &self,
        key: K,
        audit: &Audit,
        load: &L,
        same: impl Fn(&V, &V) -> bool,
    ) where
        L: Fn(K) -> Fut,
        Fut: Future<Output = Result<Fill<V>, LoadError>>,
    {
        let inner = &*self.inner;
        if !inner.coherent.load(Ordering::Acquire) {
            return;
        }
        let Some(cached) = self.unflushed(&key) else {
            return;
        };
        let Ok(fill) = load(key.clone()).await else {
            return; // the database is away: nothing learnt
        };
        bump(&inner.counters.audit_checked);
        let agree = match (&cached.value, fill.value()) {
            (Some(a), Some(b)) => same(a, b),
            (None, None) => true,
            _ => false,
        };
        if agree {
            return;
        }
        bump(&inner.counters.audit_mismatched);
        tokio::time::sleep(audit.bound).await;
        let still = self
            .unflushed(&key)
            .is_some_and(|now| Arc::ptr_eq(&now, &cached));
        if still && inner.coherent.load(Ordering::Acquire) {
            bump(&inner.counters.audit_stale);
            tracing::warn!(
                key = ?key,
                bound = ?audit.bound,
                "nearcache audit: a cached entry differs from the database and no invalidation evicted it within the bound; evicted"
            );
            self.invalidate(&key);
        }
    }
}

/// A small generator for sampling (xorshift), seeded by the standard library's random hasher
/// keys: no dependency, and no need for more.
struct Random(u64);

impl Random {
    fn new() -> Self {
        Self(std::hash::RandomState::new().hash_one(0u8) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        usize::try_from(x % (n as u64)).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Audit, Cache, CacheConfig, Fill, Mode};

    const FAST: Audit = Audit {
        rate: 200.0,
        bound: Duration::from_millis(100),
    };

    fn cache_of(n: u32) -> Cache<u32, String> {
        let cache = Cache::new(CacheConfig::default());
        for k in 0..n {
            cache.put(k, format!("v{k}"));
        }
        cache
    }

    async fn audit_for(cache: &Cache<u32, String>, ms: u64, load: impl Fn(u32) -> String) {
        let load = |k: u32| {
            let v = load(k);
            async move { Ok(Fill::found(v)) }
        };
        let run = cache.audit(FAST, load, |a, b| a == b);
        let _ = tokio::time::timeout(Duration::from_millis(ms), run).await;
    }

    #[tokio::test]
    async fn a_healthy_cache_is_checked_and_nothing_is_stale() {
        let cache = cache_of(50);
        audit_for(&cache, 400, |k| format!("v{k}")).await;
        let stats = cache.stats();
        assert!(stats.audit_checked >= 20, "{stats:?}");
        assert_eq!((stats.audit_mismatched, stats.audit_stale), (0, 0));
        assert_eq!(cache.len(), 50);
    }

    #[tokio::test]
    async fn an_invalidation_on_its_way_is_a_mismatch_not_a_stale_entry() {
        let cache = cache_of(1);
        let evictor = cache.clone();
        // The change's invalidation arrives 30 ms after the audit saw the new value.
        let load = move |_| {
            let evictor = evictor.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                evictor.invalidate(&0);
            });
            "changed".to_string()
        };
        audit_for(&cache, 300, load).await;
        let stats = cache.stats();
        assert_eq!(
            (stats.audit_mismatched, stats.audit_stale),
            (1, 0),
            "{stats:?}"
        );
    }

    #[tokio::test]
    async fn a_missed_invalidation_is_stale_and_repaired_and_the_rest_is_left_alone() {
        let cache = cache_of(20);
        audit_for(&cache, 1_000, |k| {
            if k == 7 {
                "changed".into()
            } else {
                format!("v{k}")
            }
        })
        .await;
        let stats = cache.stats();
        assert_eq!(stats.audit_stale, 1, "{stats:?}");
        assert_eq!(cache.get(&7), None, "evicted");
        assert_eq!(cache.len(), 19);
    }

    #[tokio::test]
    async fn nothing_is_checked_while_the_cache_bypasses() {
        let cache = cache_of(5);
        cache.set_mode(Mode::Bypass);
        audit_for(&cache, 200, |_| "changed".into()).await;
        assert_eq!(cache.stats().audit_checked, 0);
    }
}
