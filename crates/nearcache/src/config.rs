//! Knobs of a cache.

use std::time::Duration;

use crate::Mode;

/// How a [`Cache`](crate::Cache) behaves. Start from `CacheConfig::default()` and change what
/// you need.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The most entries kept; past it moka evicts the least useful ones. Default 100 000.
    /// Ignored when [`max_bytes`](Self::max_bytes) is set.
    pub capacity: u64,
    /// A bound in bytes instead of entries: the most the entries may weigh, each its value's
    /// memory (as [`Cache::with_weigher`](crate::Cache::with_weigher)'s weigher says; without
    /// one, only the value's own size) plus what the cache spends to hold it
    /// ([`ENTRY_OVERHEAD`](crate::ENTRY_OVERHEAD), [`TAG_OVERHEAD`](crate::TAG_OVERHEAD) per
    /// tag). Past it moka evicts the least useful entries; an entry heavier than the whole
    /// bound is not stored (`Stats::oversized`). Default `None`: the bound is `capacity`.
    pub max_bytes: Option<u64>,
    /// Absolute time to live of an entry, counted from when it was stored. A backstop only:
    /// invalidations keep entries fresh. Default 5 minutes.
    pub ttl: Duration,
    /// Refresh ahead of expiry (Caffeine's `refreshAfterWrite`): a read of a value stored longer
    /// ago than this is answered from the cache at once and queues the key for
    /// [`Cache::refresh`](crate::Cache::refresh), which loads it again in the background
    /// through the fence. So a hot key is replaced before its TTL ends and its callers never
    /// wait for the database. Invalidated entries are never refreshed: they are gone. Needs a
    /// refresher running; set it below `ttl`. Default `None`.
    pub refresh_after: Option<Duration>,
    /// Time to idle (ConCache's touch-on-read): an entry not read for this long goes, but never
    /// outlives its TTL. Default `None`.
    pub tti: Option<Duration>,
    /// Time to live of a negative entry ("no such row"). Default 5 seconds.
    pub negative_ttl: Duration,
    /// How long a caller of `get_or_store` waits for another caller's load of the same key
    /// before it loads for itself, so a hung loader never holds everybody. Default 5 seconds.
    pub fill_wait: Duration,
    /// How many invalidated keys and tags the fence remembers. Past it the fence forgets them
    /// all and instead discards every load in flight, which is always safe. Default 65 536.
    pub fence_memory: usize,
    /// How long the fence keeps an invalidation for loads that began before it: it forgets
    /// invalidations older than one to two windows, and a load that began longer ago than that
    /// is discarded instead of stored (it is not an error: the next read loads again). Default
    /// 10 seconds, twice the reference service's statement timeout.
    pub fence_window: Duration,
    /// The mode the cache starts in. A cache driven by a listener starts in
    /// [`Mode::Bypass`] and is made coherent once the listener listens. Default
    /// [`Mode::Coherent`].
    pub initial_mode: Mode,
    /// How often a background thread lets expiry run while the cache is idle (ConCache's
    /// `ttl_check_interval`), so that expiry callbacks fire soon after an entry's time is up
    /// even when nothing uses the cache (within the interval plus the second or so of moka's
    /// timer granularity). With `None`, expiry runs as the
    /// cache is used. The thread holds no reference that keeps the cache alive and ends
    /// after the cache is dropped. Default `None`.
    pub ttl_check_interval: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            max_bytes: None,
            ttl: Duration::from_secs(300),
            refresh_after: None,
            tti: None,
            negative_ttl: Duration::from_secs(5),
            fill_wait: Duration::from_secs(5),
            fence_memory: 65_536,
            fence_window: Duration::from_secs(10),
            initial_mode: Mode::Coherent,
            ttl_check_interval: None,
        }
    }
}
