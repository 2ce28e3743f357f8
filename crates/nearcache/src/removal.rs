//! Removals reported by moka's eviction listener, queued for the cache to process.
//!
//! The listener may run while the fence is locked, so it only queues; whoever next uses the
//! cache updates the tag index and calls the callbacks, with no lock held.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use moka::notification::RemovalCause;

use crate::entry::Entry;

/// One removal: the key, the entry that went, and why.
pub(crate) struct Removed<K, V> {
    pub(crate) key: K,
    pub(crate) entry: Arc<Entry<V>>,
    pub(crate) cause: RemovalCause,
}

/// The queue.
pub(crate) struct RemovalQueue<K, V> {
    items: Mutex<Vec<Removed<K, V>>>,
    pending: AtomicBool,
}

impl<K, V> RemovalQueue<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            items: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
        }
    }

    /// Queues a removal (from moka's eviction listener).
    pub(crate) fn push(&self, removed: Removed<K, V>) {
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(removed);
        self.pending.store(true, Ordering::Release);
    }

    /// Whether removals may be waiting: one atomic load, for the hit path.
    pub(crate) fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Removals queued.
    pub(crate) fn len(&self) -> usize {
        self.items
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Takes every queued removal.
    pub(crate) fn take(&self) -> Vec<Removed<K, V>> {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(
            &mut *self
                .items
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}
