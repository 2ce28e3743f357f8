//! The cache: moka underneath, the fence, coalesced fenced loads and callbacks on top. Writes
//! are in `write.rs`, invalidations and the gate in `gate.rs`.

mod gate;
mod write;

pub use write::Write;

use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use moka::notification::RemovalCause;

use crate::entry::{Callback, Cause, Change, Entry};
use crate::expiry::EntryExpiry;
#[cfg(test)]
use crate::explore::Step;
use crate::fence::Fence;
use crate::flight::{Flights, Role};
use crate::removal::{RemovalQueue, Removed};
use crate::stats::{bump, Counters};
use crate::{CacheConfig, Fill, LoadError, Loader, Mode, Stats, Store, Tag};

/// A step boundary of the protocol, where the explorer of the tests may switch to another
/// operation. Compiled into test builds only; elsewhere it expands to nothing.
macro_rules! step {
    ($cache:expr, $step:expr) => {
        #[cfg(test)]
        $cache.step($step).await;
    };
}

/// What a load produced, as its waiters see it: the result, the ticket it was loaded under and
/// the tags it depends on, so that a waiter can check the value against the fence itself.
#[derive(Clone)]
struct Outcome<V> {
    result: Result<Option<V>, LoadError>,
    ticket: u64,
    tags: Arc<[Tag]>,
}

/// The sizes of a cache's own structures (see [`Cache::internals`]), and what bounds each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Internals {
    /// Distinct tags that cached entries carry (at most `index_rows`).
    pub indexed_tags: usize,
    /// Rows of the tag index, one per tag of each cached entry: bounded by the entries' tags
    /// in all (an evicted entry's rows leave when its removal is processed).
    pub index_rows: usize,
    /// Keys and tags whose latest invalidation the fence remembers: those of the last one to two
    /// [`CacheConfig::fence_window`]s, and at most [`CacheConfig::fence_memory`] (past it the
    /// fence forgets them all and fences every load under way instead).
    pub fence_remembered: usize,
    /// Loads under way, one per key however many callers wait on it.
    pub loads_in_flight: usize,
    /// Removals reported by moka and not yet processed (index rows, callbacks): emptied by the
    /// next use of the cache.
    pub removals_queued: usize,
}

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
    generation: AtomicU64,
    coherent: AtomicBool,
    next_id: AtomicU64,
    flights: Flights<K, Outcome<V>>,
    removals: Arc<RemovalQueue<K, V>>,
    /// Striped locks that serialise `update` and `update_existing` per key.
    update_locks: Box<[Mutex<()>]>,
    stripes: std::hash::RandomState,
    counters: Counters,
    callback: Option<Callback<K, V>>,
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
        Self::build(config, None)
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
        Self::build(config, Some(Arc::new(callback)))
    }

    fn build(config: CacheConfig, callback: Option<Callback<K, V>>) -> Self {
        let removals = Arc::new(RemovalQueue::new());
        let queue = removals.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(config.capacity)
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
                generation: AtomicU64::new(0),
                coherent: AtomicBool::new(coherent),
                next_id: AtomicU64::new(1),
                flights: Flights::new(),
                removals,
                update_locks: (0..64).map(|_| Mutex::new(())).collect(),
                stripes: std::hash::RandomState::new(),
                counters: Counters::default(),
                callback,
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

    /// The value of `key`, if it is cached and the cache is coherent. A negative entry reads as
    /// `None`, like a miss.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// assert_eq!(cache.get(&1), None);
    /// cache.put(1, "a");
    /// assert_eq!(cache.get(&1), Some("a"));
    /// ```
    pub fn get(&self, key: &K) -> Option<V> {
        match self.lookup(key) {
            Some(entry) => {
                bump(&self.inner.counters.hits);
                entry.value.clone()
            }
            None => None,
        }
    }

    /// The entry of `key`, counting a miss or a bypassed lookup when there is none.
    fn lookup(&self, key: &K) -> Option<Arc<Entry<V>>> {
        let inner = &*self.inner;
        if inner.removals.pending() {
            self.process_removals();
        }
        if !inner.coherent.load(Ordering::Acquire) {
            bump(&inner.counters.bypassed);
            return None;
        }
        let found = self.live(key);
        if found.is_none() {
            bump(&inner.counters.misses);
        }
        found
    }

    /// The cached value of `key`, or else the result of `loader`, which is stored unless an
    /// invalidation of the key or of one of the value's tags, or a flush, happened since the
    /// load began. `Ok(None)` means the loader said "no such row" (a negative entry).
    ///
    /// Concurrent callers that miss the same key share one load and all get its result, errors
    /// included. One that has waited [`CacheConfig::fill_wait`] for another's load loads for
    /// itself. In [`Mode::Bypass`] the loader is called every time and nothing is stored.
    ///
    /// # Errors
    /// The loader's error, which is not cached.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Fill, LoadError, Tag};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let cache: Cache<u64, String> = Cache::new(CacheConfig::default());
    /// // Your query; `?` converts any error into LoadError. Tag the value with its rows.
    /// let load = |id: u64| async move {
    ///     let name: String = format!("user {id}");
    ///     let _parsed: u64 = "42".parse()?;
    ///     Ok::<_, LoadError>(Fill::found(name).with_tag(Tag::row("users", id)))
    /// };
    /// assert_eq!(cache.get_or_store(42, || load(42)).await.unwrap().as_deref(), Some("user 42"));
    /// // The second call is a hit: the loader is not called.
    /// let never = || async { unreachable!("cached") };
    /// assert_eq!(cache.get_or_store(42, never).await.unwrap().as_deref(), Some("user 42"));
    /// // "No such row" is remembered briefly as a negative entry.
    /// assert_eq!(cache.get_or_store(7, || async { Ok(Fill::absent()) }).await.unwrap(), None);
    /// # });
    /// ```
    pub async fn get_or_store<F, Fut>(&self, key: K, loader: F) -> Result<Option<V>, LoadError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fill<V>, LoadError>>,
    {
        if let Some(entry) = self.lookup(&key) {
            bump(&self.inner.counters.hits);
            return Ok(entry.value.clone());
        }
        if !self.inner.coherent.load(Ordering::Acquire) {
            return self.load(loader).await.map(Fill::into_value);
        }
        match self.inner.flights.join_or_lead(&key) {
            Role::Leader(lead) => {
                step!(self, Step::Led);
                // Someone may have stored the key between our miss and our taking the lead.
                if let Some(entry) = self.current(&key) {
                    return Ok(entry.value.clone());
                }
                let outcome = self.load_and_fill(key.clone(), loader).await;
                let result = outcome.result.clone();
                lead.hand_over(outcome);
                step!(self, Step::HandedOver);
                // Returning is the step after this one: nothing happens between the two.
                drop(lead);
                result
            }
            Role::Follower(waiter) => {
                step!(self, Step::Joined);
                let shared = waiter.outcome(self.inner.config.fill_wait).await;
                if let Some(outcome) = shared {
                    // The leader's value is ours only if it is as fresh as a load of our own
                    // would be: nothing it depends on was invalidated after its ticket. The
                    // leader having stored it proves nothing, since an invalidation may have
                    // evicted it again before we joined. Errors are never stale.
                    if outcome.result.is_err() || self.admits(&key, &outcome.tags, outcome.ticket) {
                        bump(&self.inner.counters.coalesced);
                        step!(self, Step::TookOver);
                        return outcome.result;
                    }
                }
                // The leader hung, vanished, or loaded before an invalidation we must honour.
                // A write may have stored a newer value meanwhile.
                step!(self, Step::Refused);
                if let Some(entry) = self.current(&key) {
                    bump(&self.inner.counters.hits);
                    return Ok(entry.value.clone());
                }
                self.load_and_fill(key, loader).await.result
            }
        }
    }

    /// The live entry of `key` in coherent mode, counting nothing.
    fn current(&self, key: &K) -> Option<Arc<Entry<V>>> {
        if !self.inner.coherent.load(Ordering::Acquire) {
            return None;
        }
        self.live(key)
    }

    /// The entry of `key` if it belongs to the current generation (was not flushed), whatever
    /// the mode; counting nothing.
    fn live(&self, key: &K) -> Option<Arc<Entry<V>>> {
        self.inner.entries.get(key).filter(|e| self.is_current(e))
    }

    /// Whether a value of `key` depending on `tags`, loaded under `ticket`, is still as fresh as
    /// a load started now: no invalidation of the key or the tags, and no flush, since.
    fn admits(&self, key: &K, tags: &[Tag], ticket: u64) -> bool {
        lock(&self.inner.fence).admits(key, tags, ticket)
    }

    async fn load<F, Fut>(&self, loader: F) -> Result<Fill<V>, LoadError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fill<V>, LoadError>>,
    {
        bump(&self.inner.counters.loads);
        let result = loader().await;
        if result.is_err() {
            bump(&self.inner.counters.load_errors);
        }
        result
    }

    async fn load_and_fill<F, Fut>(&self, key: K, loader: F) -> Outcome<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fill<V>, LoadError>>,
    {
        // The ticket is taken before the loader reads anything.
        let ticket = self.inner.epoch.load(Ordering::Acquire);
        step!(self, Step::TicketTaken);
        let loaded = self.load(loader).await;
        step!(self, Step::LoaderReturned);
        match loaded {
            Ok(fill) => {
                let (value, tags, ttl) = fill.into_parts();
                let ttl = ttl.unwrap_or(if value.is_some() {
                    self.inner.config.ttl
                } else {
                    self.inner.config.negative_ttl
                });
                let tags: Arc<[Tag]> = tags.into();
                self.store_fill(&key, value.clone(), tags.clone(), ttl, ticket);
                step!(self, Step::Filled);
                Outcome {
                    result: Ok(value),
                    ticket,
                    tags,
                }
            }
            Err(e) => Outcome {
                result: Err(e),
                ticket,
                tags: Arc::from([]),
            },
        }
    }

    fn store_fill(
        &self,
        key: &K,
        value: Option<V>,
        tags: Arc<[Tag]>,
        ttl: Duration,
        ticket: u64,
    ) -> bool {
        let inner = &*self.inner;
        let replaced = {
            let mut fence = lock(&inner.fence);
            // Checking the fence and inserting happen under one lock, so that no invalidation
            // falls between them: this is the fence's whole point.
            if !inner.coherent.load(Ordering::Acquire) || !fence.admits(key, &tags, ticket) {
                drop(fence);
                bump(&inner.counters.discarded_fills);
                return false;
            }
            self.insert_locked(&mut fence, key, value.clone(), tags, ttl)
        };
        self.after_write(key, value.as_ref(), replaced);
        true
    }

    /// Stores an entry; the fence must be locked. Returns whether a live entry was replaced.
    fn insert_locked(
        &self,
        fence: &mut Fence<K>,
        key: &K,
        value: Option<V>,
        tags: Arc<[Tag]>,
        ttl: Duration,
    ) -> bool {
        let inner = &*self.inner;
        let generation = inner.generation.load(Ordering::Acquire);
        let replaced = self.live(key).is_some();
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        fence.index(key, id, &tags);
        inner.entries.insert(
            key.clone(),
            Arc::new(Entry {
                value,
                id,
                tags,
                ttl,
                generation,
            }),
        );
        replaced
    }

    fn after_write(&self, key: &K, value: Option<&V>, replaced: bool) {
        self.process_removals();
        let cause = if replaced {
            Cause::Update
        } else {
            Cause::Insert
        };
        self.notify(cause, Some(key), value);
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

    fn publish_epoch(&self, fence: &Fence<K>) {
        self.inner.epoch.store(fence.epoch(), Ordering::Release);
    }

    /// Marks `key` as read, which extends its time to idle (never past its TTL). Returns whether
    /// the key has an entry.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// cache.put(1, "a");
    /// assert!(cache.touch(&1));
    /// assert!(!cache.touch(&2));
    /// ```
    pub fn touch(&self, key: &K) -> bool {
        self.lookup(key).is_some()
    }

    /// The number of entries, after moka has caught up with pending work.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// cache.put(1, "a");
    /// assert_eq!(cache.len(), 1);
    /// ```
    pub fn len(&self) -> u64 {
        self.inner.entries.run_pending_tasks();
        self.process_removals();
        self.inner.entries.entry_count()
    }

    /// Whether [`Cache::len`] is 0.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// assert!(cache.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lets moka run its pending maintenance now (expiry, eviction), and the callbacks it
    /// causes. moka otherwise does it as the cache is used.
    ///
    /// ```
    /// use std::time::Duration;
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> =
    ///     Cache::new(CacheConfig { ttl: Duration::from_millis(10), ..CacheConfig::default() });
    /// cache.put(1, "a");
    /// std::thread::sleep(Duration::from_millis(30));
    /// cache.run_pending_tasks(); // expiry and its callbacks, now
    /// assert_eq!(cache.get(&1), None);
    /// ```
    pub fn run_pending_tasks(&self) {
        self.inner.entries.run_pending_tasks();
        self.process_removals();
    }

    /// The counters so far.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// cache.put(1, "a");
    /// cache.get(&1);
    /// cache.get(&2);
    /// let stats = cache.stats();
    /// assert_eq!((stats.hits, stats.misses), (1, 1));
    /// ```
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot()
    }

    /// The configuration the cache was made with.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig};
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig { capacity: 5, ..CacheConfig::default() });
    /// assert_eq!(cache.config().capacity, 5);
    /// ```
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// The sizes of the cache's own structures beside moka's entries, each bounded (see
    /// [`Internals`]): for metrics, and for a soak test that they stay flat.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Fill, Tag};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let cache: Cache<u32, &str> = Cache::new(CacheConfig::default());
    /// let (user, org) = (Tag::row("users", 1), Tag::row("organizations", 7));
    /// let fill = Fill::found("Ada").with_tag(user).with_tag(org.clone());
    /// cache.get_or_store(1, || async { Ok(fill) }).await.unwrap();
    /// cache.invalidate(&2);
    /// let sizes = cache.internals();
    /// assert_eq!((sizes.indexed_tags, sizes.index_rows, sizes.fence_remembered), (2, 2, 1));
    /// cache.invalidate_tag(&org); // the entry goes, and with it both its index rows
    /// let sizes = cache.internals();
    /// assert_eq!((sizes.indexed_tags, sizes.index_rows, sizes.fence_remembered), (0, 0, 2));
    /// # });
    /// ```
    pub fn internals(&self) -> Internals {
        let inner = &*self.inner;
        let (indexed_tags, index_rows, fence_remembered) = lock(&inner.fence).sizes();
        Internals {
            indexed_tags,
            index_rows,
            fence_remembered,
            loads_in_flight: inner.flights.len(),
            removals_queued: inner.removals.len(),
        }
    }

    #[cfg(test)]
    pub(crate) fn indexed_tags(&self) -> usize {
        lock(&self.inner.fence).indexed_tags()
    }

    fn is_current(&self, entry: &Entry<V>) -> bool {
        entry.generation == self.inner.generation.load(Ordering::Acquire)
    }

    fn process_removals(&self) {
        let inner = &*self.inner;
        let batch = inner.removals.take();
        if batch.is_empty() {
            return;
        }
        {
            let mut fence = lock(&inner.fence);
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
