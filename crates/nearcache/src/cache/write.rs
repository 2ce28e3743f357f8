//! Writes through the cache: `put`, `insert_new`, and isolated read-modify-write (`update`).
//! Each records the key in the fence, so that a load in flight does not overwrite it.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{lock, Cache};
use crate::entry::Entry;

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Stores `value` under `key` with the default TTL and no tags, replacing what was there;
    /// a load of the key already in flight will not overwrite it. Returns whether it was
    /// stored (not in bypass mode).
    pub fn put(&self, key: K, value: V) -> bool {
        self.write(key, value, |_| true)
    }

    /// Stores `value` under `key` only if the key has no entry. Returns whether it was stored.
    pub fn insert_new(&self, key: K, value: V) -> bool {
        self.write(key, value, |existing| existing.is_none())
    }

    fn write(&self, key: K, value: V, allowed: impl FnOnce(Option<&Entry<V>>) -> bool) -> bool {
        let inner = &*self.inner;
        let replaced = {
            let mut fence = lock(&inner.fence);
            if !inner.coherent.load(Ordering::Acquire) {
                return false;
            }
            let existing = self.live(&key);
            if !allowed(existing.as_deref()) {
                return false;
            }
            let tags = existing.map_or_else(|| Arc::from([]), |e| e.tags.clone());
            fence.invalidate_key(&key);
            self.publish_epoch(&fence);
            self.insert_locked(
                &mut fence,
                &key,
                Some(value.clone()),
                tags,
                inner.config.ttl,
            )
        };
        self.after_write(&key, Some(&value), replaced);
        true
    }

    /// Isolated read-modify-write: `f` gets the current value (`None` if absent) and returns
    /// the new one, or an error that leaves the entry as it was. Updates of one key run one at
    /// a time; a concurrent `put`, fill or invalidation makes `f` run again on the newer state.
    /// The entry keeps its tags. Returns whether a value was stored (not in bypass mode).
    ///
    /// `f` must not call `update` or `update_existing` of the same cache.
    ///
    /// # Errors
    /// `f`'s error.
    pub fn update<E>(&self, key: K, f: impl FnMut(Option<&V>) -> Result<V, E>) -> Result<bool, E> {
        self.update_with(key, false, f)
    }

    /// Like [`Cache::update`], but only if the key holds a value; returns `Ok(false)` otherwise.
    ///
    /// # Errors
    /// `f`'s error.
    pub fn update_existing<E>(
        &self,
        key: K,
        mut f: impl FnMut(&V) -> Result<V, E>,
    ) -> Result<bool, E> {
        self.update_with(key, true, |old| f(old.expect("only called with a value")))
    }

    fn update_with<E>(
        &self,
        key: K,
        existing_only: bool,
        mut f: impl FnMut(Option<&V>) -> Result<V, E>,
    ) -> Result<bool, E> {
        let inner = &*self.inner;
        let stripe = inner.stripes.hash_one(&key) as usize % inner.update_locks.len();
        let serial = lock(&inner.update_locks[stripe]);
        let (new, replaced) = loop {
            if !inner.coherent.load(Ordering::Acquire) {
                return Ok(false);
            }
            let old = self.live(&key);
            let old_value = old.as_ref().and_then(|e| e.value.as_ref());
            if existing_only && old_value.is_none() {
                return Ok(false);
            }
            let new = f(old_value)?;
            let mut fence = lock(&inner.fence);
            let now = self.live(&key);
            let unchanged = match (&old, &now) {
                (Some(a), Some(b)) => a.id == b.id,
                (None, None) => true,
                _ => false,
            };
            if !unchanged || !inner.coherent.load(Ordering::Acquire) {
                continue;
            }
            let tags = old
                .as_ref()
                .map_or_else(|| Arc::from([]), |e| e.tags.clone());
            fence.invalidate_key(&key);
            self.publish_epoch(&fence);
            let replaced =
                self.insert_locked(&mut fence, &key, Some(new.clone()), tags, inner.config.ttl);
            break (new, replaced);
        };
        // Callbacks run with no lock held, not even the key's, so they may update the key.
        drop(serial);
        self.after_write(&key, Some(&new), replaced);
        Ok(true)
    }
}
