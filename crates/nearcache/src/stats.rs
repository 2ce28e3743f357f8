//! Counters of a cache, kept in atomics.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a cache's counters since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Lookups answered from the cache (negative entries included).
    pub hits: u64,
    /// Lookups the cache could not answer while coherent.
    pub misses: u64,
    /// Lookups made while in bypass mode (each calls its loader).
    pub bypassed: u64,
    /// Loader calls.
    pub loads: u64,
    /// Loader calls that failed.
    pub load_errors: u64,
    /// Callers of `get_or_store` served by another caller's load.
    pub coalesced: u64,
    /// Loads whose value was returned but not stored, because an invalidation or a flush
    /// happened after their ticket (or the cache went to bypass).
    pub discarded_fills: u64,
    /// Calls of `invalidate` and `invalidate_tag`.
    pub invalidations: u64,
    /// Entries removed by invalidations.
    pub invalidated_entries: u64,
    /// Flushes, including those of entering bypass mode.
    pub flushes: u64,
    /// Entries that expired (TTL, time to idle).
    pub expired: u64,
    /// Entries evicted to respect the capacity.
    pub evicted: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) bypassed: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) load_errors: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) discarded_fills: AtomicU64,
    pub(crate) invalidations: AtomicU64,
    pub(crate) invalidated_entries: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) evicted: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            bypassed: self.bypassed.load(Relaxed),
            loads: self.loads.load(Relaxed),
            load_errors: self.load_errors.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            discarded_fills: self.discarded_fills.load(Relaxed),
            invalidations: self.invalidations.load(Relaxed),
            invalidated_entries: self.invalidated_entries.load(Relaxed),
            flushes: self.flushes.load(Relaxed),
            expired: self.expired.load(Relaxed),
            evicted: self.evicted.load(Relaxed),
        }
    }
}
