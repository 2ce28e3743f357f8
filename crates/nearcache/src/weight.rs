//! What an entry weighs in a cache bounded in bytes ([`CacheConfig::max_bytes`]): its value's
//! own memory, as the cache's weigher says, plus what the cache spends to hold it, so that the
//! bound holds for the process's memory, not only for the values.
//!
//! [`CacheConfig::max_bytes`]: crate::CacheConfig::max_bytes

use std::sync::Arc;

use crate::entry::Entry;

/// The heap bytes a value owns beyond its own size (given to [`Cache::with_weigher`]).
///
/// [`Cache::with_weigher`]: crate::Cache::with_weigher
pub(crate) type Weigh<K, V> = Arc<dyn Fn(&K, &V) -> usize + Send + Sync>;

/// What the cache spends on an entry beyond its key, its value and its tags: moka's entry (its
/// key copy, the `Arc` to ours, its entry info, deque and timer nodes), our `Entry` and the
/// allocator's rounding. Measured with jemalloc as the resident set of a million entries of
/// `u64` keys and values without tags (`cargo run --release -p nearcache --example overhead`).
pub const ENTRY_OVERHEAD: usize = 370;

/// What each tag of an entry costs beyond its name's bytes: the entry's `Tag` (an `Arc<str>`
/// and its allocation), the slice that holds several, and the fence's index row for it.
/// Measured as `ENTRY_OVERHEAD` is, with one and two tags: 157 bytes for one tag (held inline),
/// 185 for each of two; the larger is kept, so that the bound holds for both.
pub const TAG_OVERHEAD: usize = 185;

/// The weight of `entry` under `key`, in bytes.
pub(crate) fn weight<K, V>(weigh: Option<&Weigh<K, V>>, key: &K, entry: &Entry<V>) -> u64 {
    let tags: usize = entry
        .tags
        .iter()
        .map(|t| TAG_OVERHEAD + t.as_str().len())
        .sum();
    let value = match (&entry.value, weigh) {
        (Some(v), Some(weigh)) => weigh(key, v),
        _ => 0,
    };
    let own = std::mem::size_of::<K>() + std::mem::size_of::<Option<V>>();
    u64::try_from(ENTRY_OVERHEAD + own + tags + value).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use crate::{Cache, CacheConfig, Fill, Tag, Write};

    const MAX: u64 = 256 * 1024;

    fn bounded() -> Cache<u32, String> {
        let config = CacheConfig {
            max_bytes: Some(MAX),
            ..CacheConfig::default()
        };
        Cache::with_weigher(config, |_, v: &String| v.capacity())
    }

    #[tokio::test]
    async fn filling_past_the_bound_keeps_the_weighted_size_under_it() {
        let cache = bounded();
        for i in 0..2_000u32 {
            let fill = Fill::found("x".repeat(1_000))
                .with_tag(Tag::row("users", i))
                .with_tag(Tag::row("organizations", i / 100));
            cache.get_or_store(i, || async { Ok(fill) }).await.unwrap();
            cache.run_pending_tasks();
            assert!(
                cache.weighted_size() <= MAX,
                "{} after {i}",
                cache.weighted_size()
            );
        }
        let (n, stats) = (cache.len(), cache.stats());
        assert!(n > 0 && n < 2_000, "{n} entries");
        assert!(stats.evicted > 0, "moka evicted to respect the bound");
        // Each entry weighs its value, its tags and the overheads: about 1 KB and more.
        assert!(n <= MAX / 1_000, "{n} entries");
        // Evicted entries took their index rows with them.
        assert_eq!(
            cache.internals().index_rows,
            usize::try_from(n * 2).unwrap()
        );
    }

    #[tokio::test]
    async fn a_value_heavier_than_the_whole_bound_is_not_stored_and_is_counted() {
        let cache = bounded();
        let huge = "x".repeat(usize::try_from(MAX).unwrap() + 1);
        let loaded = cache
            .get_or_store(1, || async { Ok(Fill::found(huge.clone())) })
            .await
            .unwrap();
        assert_eq!(loaded.as_deref(), Some(huge.as_str()), "the caller gets it");
        assert_eq!(cache.get(&1), None, "but it is not stored");
        assert_eq!(cache.stats().oversized, 1);

        // A put that would replace an entry: the old one goes too (it is superseded).
        assert_eq!(cache.put(2, "small".into()), Write::Stored);
        assert_eq!(cache.put(2, huge.clone()), Write::TooLarge);
        assert_eq!(cache.get(&2), None);
        assert_eq!(cache.stats().oversized, 2);
        cache.run_pending_tasks();
        assert_eq!(cache.weighted_size(), 0);
    }
}
