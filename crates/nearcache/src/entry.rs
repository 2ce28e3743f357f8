//! What the cache stores, and what its modification callbacks are told.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::tags::Tags;

/// A stored entry: a value or a negative entry, with what it depends on.
pub(crate) struct Entry<V> {
    pub(crate) value: Option<V>,
    /// Unique per stored entry, so that index rows of a replaced entry can be told apart.
    pub(crate) id: u64,
    pub(crate) tags: Tags,
    /// The time to live in nanoseconds (saturated: 584 years is forever); see [`Entry::ttl`].
    /// Eight bytes where a `Duration` takes sixteen, which pays for `refresh_at`.
    pub(crate) ttl_nanos: u64,
    /// When a read should queue a refresh of this entry, in milliseconds of the cache's clock
    /// ([`NEVER`] when it never should, or one is already queued): see `cache/refresh.rs`.
    pub(crate) refresh_at: AtomicU64,
    /// Entries of an older generation were flushed and are never served.
    pub(crate) generation: u64,
}

/// `Entry::refresh_at` of an entry that is not to be refreshed (again).
pub(crate) const NEVER: u64 = u64::MAX;

impl<V> Entry<V> {
    pub(crate) fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl_nanos)
    }
}

/// `ttl` in nanoseconds, saturated.
pub(crate) fn nanos(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX)
}

/// Why a callback is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// A value was stored where there was none: a fill, `put`, `insert_new`, `update`.
    Insert,
    /// A value replaced another through `put` or `update`.
    Update,
    /// `delete` removed an entry.
    Delete,
    /// `invalidate` or `invalidate_tag` removed an entry.
    Invalidation,
    /// The whole cache was flushed (the change names no key).
    Flush,
    /// An entry outlived its TTL or time to idle.
    Expiry,
    /// An entry was evicted to respect the capacity.
    Eviction,
}

/// What a modification callback is told.
#[derive(Debug)]
pub struct Change<'a, K, V> {
    /// Why.
    pub cause: Cause,
    /// The key; `None` for a flush.
    pub key: Option<&'a K>,
    /// The new value for inserts and updates, the removed one otherwise; `None` for a flush
    /// and for negative entries.
    pub value: Option<&'a V>,
}

pub(crate) type Callback<K, V> = Arc<dyn Fn(&Change<'_, K, V>) + Send + Sync>;
