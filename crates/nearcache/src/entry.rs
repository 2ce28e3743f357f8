//! What the cache stores, and what its modification callbacks are told.

use std::sync::Arc;
use std::time::Duration;

use crate::Tag;

/// A stored entry: a value or a negative entry, with what it depends on.
pub(crate) struct Entry<V> {
    pub(crate) value: Option<V>,
    /// Unique per stored entry, so that index rows of a replaced entry can be told apart.
    pub(crate) id: u64,
    pub(crate) tags: Arc<[Tag]>,
    pub(crate) ttl: Duration,
    /// Entries of an older generation were flushed and are never served.
    pub(crate) generation: u64,
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
