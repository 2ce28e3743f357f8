//! Writes through the cache: `put`, `insert_new`, and isolated read-modify-write (`update`).
//! Each records the key in the fence, so that a load in flight does not overwrite it.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{lock, Cache};
use crate::entry::Entry;
use crate::tags::Tags;

/// What a write through the cache did: stored, or why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// The value is stored.
    Stored,
    /// [`Cache::insert_new`]: the key already has an entry, which stays.
    Exists,
    /// [`Cache::update_existing`]: the key holds no value.
    Missing,
    /// The cache is in bypass (its source cannot vouch for it): nothing is stored.
    Bypass,
    /// The value alone weighs more than the cache's `max_bytes`: it is not stored, and the
    /// key's earlier entry is gone.
    TooLarge,
}

impl Write {
    /// Whether the value was stored.
    pub fn is_stored(self) -> bool {
        self == Write::Stored
    }
}

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Stores `value` under `key` with the default TTL, replacing what was there (and keeping
    /// its tags); a load of the key already in flight will not overwrite it.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Mode, Write};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// assert_eq!(cache.put(1, "a"), Write::Stored);
    /// assert_eq!(cache.get(&1), Some("a"));
    /// cache.set_mode(Mode::Bypass);
    /// assert_eq!(cache.put(1, "b"), Write::Bypass);
    /// ```
    pub fn put(&self, key: K, value: V) -> Write {
        let ttl = self.inner.config.ttl;
        self.write(key, value, ttl, |_| Write::Stored)
    }

    /// Like [`Cache::put`], with a time to live of its own for this entry (capped by the
    /// cache's TTL, which stays the backstop).
    ///
    /// ```
    /// use std::time::Duration;
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// assert!(cache.put_with_ttl(1, "brief", Duration::from_millis(20)).is_stored());
    /// assert_eq!(cache.get(&1), Some("brief"));
    /// std::thread::sleep(Duration::from_millis(40));
    /// assert_eq!(cache.get(&1), None);
    /// ```
    pub fn put_with_ttl(&self, key: K, value: V, ttl: Duration) -> Write {
        let ttl = ttl.min(self.inner.config.ttl);
        self.write(key, value, ttl, |_| Write::Stored)
    }

    /// Stores `value` under `key` only if the key has no entry.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Write};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// assert_eq!(cache.insert_new(1, "first"), Write::Stored);
    /// assert_eq!(cache.insert_new(1, "second"), Write::Exists);
    /// assert_eq!(cache.get(&1), Some("first"));
    /// ```
    pub fn insert_new(&self, key: K, value: V) -> Write {
        let ttl = self.inner.config.ttl;
        self.write(key, value, ttl, |existing| {
            if existing.is_none() {
                Write::Stored
            } else {
                Write::Exists
            }
        })
    }

    fn write(
        &self,
        key: K,
        value: V,
        ttl: Duration,
        allowed: impl FnOnce(Option<&Entry<V>>) -> Write,
    ) -> Write {
        let inner = &*self.inner;
        let replaced = {
            let mut fence = self.fenced();
            if !inner.coherent.load(Ordering::Acquire) {
                return Write::Bypass;
            }
            let existing = self.unflushed(&key);
            let verdict = allowed(existing.as_deref());
            if verdict != Write::Stored {
                return verdict;
            }
            let tags = existing.map_or_else(Tags::default, |e| e.tags.clone());
            fence.invalidate(std::slice::from_ref(&key), &[]);
            self.insert_locked(&mut fence, &key, Some(value.clone()), tags, ttl)
        };
        let Some(replaced) = replaced else {
            self.process_removals();
            return Write::TooLarge;
        };
        self.after_write(&key, Some(&value), replaced);
        Write::Stored
    }

    /// Isolated read-modify-write: `f` gets the current value (`None` if absent) and returns
    /// the new one, or an error that leaves the entry as it was. Updates of one key run one at
    /// a time; a concurrent `put`, fill or invalidation makes `f` run again on the newer state.
    /// The entry keeps its tags. Returns [`Write::Stored`], or [`Write::Bypass`].
    ///
    /// `f` must not call `update` or `update_existing` of the same cache.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Write};
    /// let cache: Cache<&str, u32> = Cache::new(CacheConfig::default());
    /// let bump = |n: Option<&u32>| Ok::<_, ()>(n.copied().unwrap_or(0) + 1);
    /// assert_eq!(cache.update("hits", bump), Ok(Write::Stored));
    /// assert_eq!(cache.update("hits", bump), Ok(Write::Stored));
    /// assert_eq!(cache.get(&"hits"), Some(2));
    /// ```
    ///
    /// # Errors
    /// `f`'s error.
    pub fn update<E>(&self, key: K, f: impl FnMut(Option<&V>) -> Result<V, E>) -> Result<Write, E> {
        self.update_with(key, false, f)
    }

    /// Like [`Cache::update`], but only if the key holds a value: [`Write::Missing`] otherwise.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Write};
    /// let cache: Cache<u32, String> = Cache::new(CacheConfig::default());
    /// let shout = |v: &String| Ok::<_, ()>(v.to_uppercase());
    /// assert_eq!(cache.update_existing(1, shout), Ok(Write::Missing));
    /// let _ = cache.put(1, "ada".to_string());
    /// assert_eq!(cache.update_existing(1, shout), Ok(Write::Stored));
    /// assert_eq!(cache.get(&1).as_deref(), Some("ADA"));
    /// ```
    ///
    /// # Errors
    /// `f`'s error.
    pub fn update_existing<E>(
        &self,
        key: K,
        mut f: impl FnMut(&V) -> Result<V, E>,
    ) -> Result<Write, E> {
        self.update_with(key, true, |old| f(old.expect("only called with a value")))
    }

    fn update_with<E>(
        &self,
        key: K,
        existing_only: bool,
        mut f: impl FnMut(Option<&V>) -> Result<V, E>,
    ) -> Result<Write, E> {
        let inner = &*self.inner;
        let stripe = inner.stripes.hash_one(&key) as usize % inner.update_locks.len();
        let serial = lock(&inner.update_locks[stripe]);
        let (new, replaced) = loop {
            if !inner.coherent.load(Ordering::Acquire) {
                return Ok(Write::Bypass);
            }
            let old = self.unflushed(&key);
            let old_value = old.as_ref().and_then(|e| e.value.as_ref());
            if existing_only && old_value.is_none() {
                return Ok(Write::Missing);
            }
            let new = f(old_value)?;
            let mut fence = self.fenced();
            let now = self.unflushed(&key);
            let unchanged = match (&old, &now) {
                (Some(a), Some(b)) => a.id == b.id,
                (None, None) => true,
                _ => false,
            };
            if !unchanged || !inner.coherent.load(Ordering::Acquire) {
                continue;
            }
            let tags = old.as_ref().map_or_else(Tags::default, |e| e.tags.clone());
            fence.invalidate(std::slice::from_ref(&key), &[]);
            let replaced =
                self.insert_locked(&mut fence, &key, Some(new.clone()), tags, inner.config.ttl);
            break (new, replaced);
        };
        // Callbacks run with no lock held, not even the key's, so they may update the key.
        drop(serial);
        let Some(replaced) = replaced else {
            self.process_removals();
            return Ok(Write::TooLarge);
        };
        self.after_write(&key, Some(&new), replaced);
        Ok(Write::Stored)
    }
}
