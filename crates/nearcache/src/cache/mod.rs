//! The cache: moka underneath, the fence, coalesced fenced loads and callbacks on top.
//!
//! Which file to open:
//! - `read.rs`: `get`, `touch`, and `get_or_store`'s miss path (one load per key, its waiters
//!   checking the leader's value against the fence themselves);
//! - `fill.rs`: fenced loads: the ticket, the fence's verdict, storing the value;
//! - `write.rs`: `put`, `insert`, `update` (writes that need no load);
//! - `gate.rs`: invalidations, flushes and the coherence gate (what a source calls);
//! - `introspect.rs`: sizes, counters, configuration;
//! - `audit.rs`: the online audit (entries loaded again and compared);
//! - `refresh.rs`: refresh ahead of expiry (old entries served while loaded again);
//! - `warm.rs`: a warm start (the keys of what is cached, loaded again after a restart);
//! - this file: the shared state, the fence's lock (`Fenced`) and removals with callbacks.

use std::hash::Hash;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use moka::notification::RemovalCause;

use crate::entry::{Callback, Cause, Change, Entry};
use crate::expiry::EntryExpiry;
#[cfg(test)]
use crate::explore::Step;
use crate::fence::{Fence, Forgotten};
use crate::flight::Flights;
use crate::removal::{RemovalQueue, Removed};
use crate::stats::{bump, Counters};
use crate::weight::{weight, Weigh};
use crate::{CacheConfig, LoadError, Loader, Mode, Store, Tag};

/// A step boundary of the protocol, where the explorer of the tests may switch to another
/// operation. Compiled into test builds only; elsewhere it expands to nothing.
macro_rules! step {
    ($cache:expr, $step:expr) => {
        #[cfg(test)]
        $cache.step($step).await;
    };
}

mod audit;
mod fill;
mod gate;
mod introspect;
mod read;
mod refresh;
mod warm;
mod write;

pub use audit::Audit;
use fill::Outcome;
pub use introspect::Internals;
pub use write::Write;

/// A per-process cache with fenced fills, tags and a coherence gate. See the crate docs.
///
/// Cloning is cheap and gives another handle to the same cache.
pub struct Cache<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<K, V> {
    entries: moka::sync::Cache<K, Arc<Entry<V>>>,
    fence: Mutex<Fence<K>>,
    /// Mirrors of fence state, read without the lock: the epoch for tickets, the generation
    /// and mode for hits. They change only while the fence is locked.
    epoch: AtomicU64,
    /// Tickets outstanding: loads under way and outcomes their waiters may still check
    /// ([`fill::Ticket`]). With none, no load can be racing an invalidation, and the fence
    /// records nothing of it.
    tickets: Arc<std::sync::atomic::AtomicUsize>,
    generation: AtomicU64,
    coherent: AtomicBool,
    next_id: AtomicU64,
    flights: Flights<K, Outcome<V>>,
    removals: Arc<RemovalQueue<K, V>>,
    /// Striped locks that serialise `update` and `update_existing` per key.
    update_locks: Box<[Mutex<()>]>,
    stripes: std::hash::RandomState,
    counters: Counters,
    /// The tables whose changes reach the cache (`watch_tables`): empty for a cache without
    /// a source. Read at each fill.
    watched: std::sync::RwLock<Vec<Arc<str>>>,
    /// Tables already warned about: a fill tagged only with them can never be invalidated.
    warned: Mutex<std::collections::HashSet<String>>,
    callback: Option<Callback<K, V>>,
    /// With `max_bytes`: the heap bytes a value owns.
    weigh: Option<Weigh<K, V>>,
    /// The refresher's queue, while one runs ([`Cache::refresh`]).
    refresher: Mutex<Option<tokio::sync::mpsc::Sender<K>>>,
    /// The cache's clock for refresh deadlines (`Entry::refresh_at`).
    origin: std::time::Instant,
    config: CacheConfig,
    /// Test builds only: the explorer's hook, told of every step boundary of the protocol.
    #[cfg(test)]
    steps: std::sync::OnceLock<crate::explore::Hook>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a lock was held leaves plain data behind, never a broken invariant that a
    // later caller could not live with, so poisoning is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A cache configured by `config`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u64, String> = Cache::new(CacheConfig {
    ///     capacity: 10_000,
    ///     tti: Some(Duration::from_secs(60)),
    ///     ..CacheConfig::default()
    /// });
    /// assert!(cache.is_empty());
    /// ```
    pub fn new(config: CacheConfig) -> Self {
        Self::build(config, None, None)
    }

    /// A cache bounded in bytes ([`CacheConfig::max_bytes`]) whose values own heap memory:
    /// `weigh` says how many bytes a value owns beyond its own size (its strings' and vectors'
    /// capacities, what its `Arc`s point to). Without `max_bytes` the weigher is not used.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, String> = Cache::with_weigher(
    ///     CacheConfig { max_bytes: Some(64 * 1024 * 1024), ..CacheConfig::default() },
    ///     |_key, name: &String| name.capacity(),
    /// );
    /// cache.put(1, "Ada".to_string());
    /// cache.run_pending_tasks();
    /// assert!(cache.weighted_size() > 3);
    /// ```
    pub fn with_weigher(
        config: CacheConfig,
        weigh: impl Fn(&K, &V) -> usize + Send + Sync + 'static,
    ) -> Self {
        Self::build(config, None, Some(Arc::new(weigh)))
    }

    /// A cache that calls `callback` after every modification (ConCache's callback). The
    /// callback runs with no lock held, so it may use the cache.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use nearcache::{Cache, CacheConfig, Cause};
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let log = seen.clone();
    /// let cache: Cache<u32, &str> = Cache::with_callback(CacheConfig::default(), move |change| {
    ///     log.lock().unwrap().push((change.cause, change.key.copied()));
    /// });
    /// cache.put(1, "a");
    /// cache.delete(&1);
    /// assert_eq!(*seen.lock().unwrap(), [(Cause::Insert, Some(1)), (Cause::Delete, Some(1))]);
    /// ```
    pub fn with_callback(
        config: CacheConfig,
        callback: impl Fn(&Change<'_, K, V>) + Send + Sync + 'static,
    ) -> Self {
        Self::build(config, Some(Arc::new(callback)), None)
    }

    fn build(
        config: CacheConfig,
        callback: Option<Callback<K, V>>,
        weigh: Option<Weigh<K, V>>,
    ) -> Self {
        let removals = Arc::new(RemovalQueue::new());
        let queue = removals.clone();
        let mut builder = moka::sync::Cache::builder();
        builder = match config.max_bytes {
            Some(bytes) => {
                let weigh = weigh.clone();
                builder
                    .max_capacity(bytes)
                    .weigher(move |key: &K, entry: &Arc<Entry<V>>| {
                        u32::try_from(weight(weigh.as_ref(), key, entry)).unwrap_or(u32::MAX)
                    })
            }
            None => builder.max_capacity(config.capacity),
        };
        let entries = builder
            .expire_after(EntryExpiry { tti: config.tti })
            .eviction_listener(move |key: Arc<K>, entry, cause| {
                queue.push(Removed {
                    key: (*key).clone(),
                    entry,
                    cause,
                });
            })
            .build();
        let coherent = config.initial_mode == Mode::Coherent;
        let check = config.ttl_check_interval;
        let cache = Self {
            inner: Arc::new(Inner {
                entries,
                fence: Mutex::new(Fence::new(config.fence_memory, config.fence_window)),
                epoch: AtomicU64::new(0),
                tickets: Arc::default(),
                generation: AtomicU64::new(0),
                coherent: AtomicBool::new(coherent),
                next_id: AtomicU64::new(1),
                flights: Flights::new(),
                removals,
                update_locks: (0..64).map(|_| Mutex::new(())).collect(),
                stripes: std::hash::RandomState::new(),
                counters: Counters::default(),
                watched: std::sync::RwLock::default(),
                warned: Mutex::default(),
                callback,
                weigh,
                refresher: Mutex::new(None),
                origin: std::time::Instant::now(),
                config,
                #[cfg(test)]
                steps: std::sync::OnceLock::new(),
            }),
        };
        if let Some(every) = check {
            cache.spawn_expiry_checks(every);
        }
        cache
    }

    /// Runs moka's maintenance (and so expiry and its callbacks) every `every` on a thread of
    /// its own, for as long as the cache lives.
    fn spawn_expiry_checks(&self, every: std::time::Duration) {
        let weak = Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("nearcache-expiry".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                match weak.upgrade() {
                    Some(inner) => Cache { inner }.run_pending_tasks(),
                    None => return,
                }
            });
        if let Err(e) = spawned {
            // Without the thread expiry still happens, as the cache is used.
            eprintln!("nearcache: cannot start the expiry thread: {e}");
        }
    }
    /// Test builds only: the explorer's hook, installed once.
    #[cfg(test)]
    pub(crate) fn explore_with(&self, hook: crate::explore::Hook) {
        assert!(self.inner.steps.set(hook).is_ok(), "one hook per cache");
    }

    /// Test builds only: tells the explorer's hook that a step boundary was reached and, if a
    /// hook is installed, yields to it.
    #[cfg(test)]
    async fn step(&self, step: Step) {
        if let Some(hook) = self.inner.steps.get() {
            hook(step);
            crate::explore::yield_once().await;
        }
    }

    /// The fence, locked, for a change: see [`Fenced`]. Reads of the fence that change nothing
    /// may take `lock(&inner.fence)` instead.
    fn fenced(&self) -> Fenced<'_, K, V> {
        Fenced {
            inner: &self.inner,
            fence: lock(&self.inner.fence),
        }
    }

    fn process_removals(&self) {
        let inner = &*self.inner;
        let batch = inner.removals.take();
        if batch.is_empty() {
            return;
        }
        {
            let mut fence = self.fenced();
            for r in &batch {
                fence.unindex(&r.key, r.entry.id, &r.entry.tags);
            }
        }
        for r in &batch {
            let cause = match r.cause {
                RemovalCause::Expired => {
                    bump(&inner.counters.expired);
                    Cause::Expiry
                }
                RemovalCause::Size => {
                    bump(&inner.counters.evicted);
                    Cause::Eviction
                }
                // Explicit removals and replacements were reported by the call that made them.
                RemovalCause::Explicit | RemovalCause::Replaced => continue,
            };
            self.notify(cause, Some(&r.key), r.entry.value.as_ref());
        }
    }

    fn notify(&self, cause: Cause, key: Option<&K>, value: Option<&V>) {
        if let Some(callback) = &self.inner.callback {
            callback(&Change { cause, key, value });
        }
    }
}

/// The fence, locked. Every change of the fence goes through one, and so do the lock-free copies
/// of its state in [`Inner`]: dropping it republishes the fence's epoch (which tickets read
/// without the lock), and the generation and the mode change only through its methods. While
/// the guard is held none of the three can be seen to disagree with the fence by a caller that
/// locks it; a caller that does not (a ticket, a hit) sees at worst an older epoch, which makes
/// its load's value refused, never wrongly admitted.
struct Fenced<'a, K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    inner: &'a Inner<K, V>,
    fence: MutexGuard<'a, Fence<K>>,
}

impl<K, V> Fenced<'_, K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Empties the cache in O(1): the fence forgets everything (and fences every load under
    /// way), and a new generation begins, so that entries of older ones are never served again
    /// (moka drops them lazily). What the fence forgot is returned, to be dropped without the
    /// lock.
    fn flush(&mut self) -> Forgotten<K> {
        let forgotten = self.fence.flush();
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        self.inner.entries.invalidate_all();
        bump(&self.inner.counters.flushes);
        forgotten
    }

    /// Records an invalidation of `keys` and `tags` (a new epoch) and returns the entries that
    /// carried the tags. The epoch is published before the tickets are counted, and a ticket is
    /// counted before it reads the epoch (both sequentially consistent): so either this sees a
    /// ticket and remembers the invalidation for it, or that ticket sees the new epoch, and
    /// with it no memory of this invalidation is needed to refuse its value.
    fn invalidate(&mut self, keys: &[K], tags: &[Tag]) -> Vec<crate::rows::Rows<K>> {
        let epoch = self.fence.advance();
        self.inner.epoch.store(epoch, Ordering::SeqCst);
        let racing = self.inner.tickets.load(Ordering::SeqCst) > 0;
        self.fence.invalidate_all(keys, tags, racing)
    }

    /// Opens or closes the gate; returns whether it was open.
    fn set_coherent(&mut self, coherent: bool) -> bool {
        self.inner.coherent.swap(coherent, Ordering::AcqRel)
    }
}

impl<K, V> Deref for Fenced<'_, K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    type Target = Fence<K>;

    fn deref(&self) -> &Fence<K> {
        &self.fence
    }
}

impl<K, V> DerefMut for Fenced<'_, K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn deref_mut(&mut self) -> &mut Fence<K> {
        &mut self.fence
    }
}

impl<K, V> Drop for Fenced<'_, K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn drop(&mut self) {
        // Runs before the guard's lock is released.
        self.inner
            .epoch
            .store(self.fence.epoch(), Ordering::Release);
    }
}

impl<K, V> std::fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("coherent", &self.inner.coherent.load(Ordering::Relaxed))
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<K, V> Store<K, V> for Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    async fn get_or_store(&self, key: K, loader: Loader<V>) -> Result<Option<V>, LoadError> {
        Cache::get_or_store(self, key, || loader).await
    }

    fn invalidate(&self, key: &K) {
        Cache::invalidate(self, key);
    }

    fn invalidate_tag(&self, tag: &Tag) {
        Cache::invalidate_tag(self, tag);
    }

    fn flush(&self) {
        Cache::flush(self);
    }

    fn mode(&self) -> Mode {
        Cache::mode(self)
    }
}
