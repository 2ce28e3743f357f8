//! What a service says about its caches and sources on `/healthz` and `/metrics`, for any set of
//! them: readiness and the reason when not ready ([`Monitor::health`]), and every counter and
//! gauge the caches and sources declare ([`Monitor::render`]).

use std::hash::Hash;
use std::sync::Arc;

use nearcache_source::{Exposition, SourceState, SourceStatus};

use crate::{Cache, Mode};

/// A cache seen through what a monitor asks of it, whatever its key and value types.
trait Watched: Send + Sync {
    fn mode(&self) -> Mode;
    fn render(&self, labels: &[(&str, &str)], out: &mut Exposition);
}

impl<K, V> Watched for Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn mode(&self) -> Mode {
        Cache::mode(self)
    }

    fn render(&self, labels: &[(&str, &str)], out: &mut Exposition) {
        let sizes = self.internals();
        let config = self.config();
        let gauges = [
            ("nearcache_cache_coherent", "1 if the cache serves entries.", f64::from(u8::from(self.mode() == Mode::Coherent))),
            ("nearcache_cache_entries", "Entries in the cache.", self.len() as f64),
            ("nearcache_cache_capacity", "The most entries the cache holds.", config.capacity as f64),
            ("nearcache_cache_indexed_tags", "Distinct tags that cached entries carry.", sizes.indexed_tags as f64),
            ("nearcache_cache_index_rows", "Rows of the tag index (one per tag of each cached entry).", sizes.index_rows as f64),
            ("nearcache_cache_fence_remembered", "Keys and tags whose latest invalidation the fence remembers (at most nearcache_cache_fence_memory).", sizes.fence_remembered as f64),
            ("nearcache_cache_fence_memory", "The most invalidations the fence remembers before it forgets them all.", config.fence_memory as f64),
            ("nearcache_cache_loads_in_flight", "Loads under way (one per key).", sizes.loads_in_flight as f64),
            ("nearcache_cache_removals_queued", "Removals reported by moka not yet processed.", sizes.removals_queued as f64),
        ];
        for (name, help, value) in gauges {
            out.gauge(name, help, labels, value);
        }
        if let Some(max) = config.max_bytes {
            let help =
                "What the entries weigh together, in bytes (values and the cache's overhead).";
            out.gauge(
                "nearcache_cache_bytes",
                help,
                labels,
                self.weighted_size() as f64,
            );
            let help = "The most the entries may weigh, in bytes (max_bytes).";
            out.gauge("nearcache_cache_max_bytes", help, labels, max as f64);
        }
        for m in self.stats().metrics() {
            let name = format!("nearcache_cache_{}_total", m.name);
            out.counter(&name, m.help, labels, m.value);
        }
    }
}

/// Readiness, as a monitor reads it from its caches and sources.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Whether a load balancer should send requests here: every cache serves (a cache driven
    /// by a source serves while its source delivers every change; a standalone cache always
    /// does). A cache that bypasses sends every request to the database.
    pub ready: bool,
    /// Each cache's name (as given to [`Monitor::cache`]) and mode.
    pub caches: Vec<(String, Mode)>,
    /// Why a cache bypasses, when it is something an operator must fix (a source's check of
    /// the database failed: missing triggers, no publication, no replication right).
    pub problem: Option<String>,
    /// While a cache bypasses: why a source's last attempt or connection ended, as it said.
    pub source_error: Option<String>,
}

/// The caches and sources of a service, for its health check and its metrics. Cheap to clone;
/// it holds handles, so what it reports is always current.
///
/// ```
/// use nearcache::{Cache, CacheConfig, Monitor, Mode};
/// use nearcache_source::SourceStatus;
///
/// // Driven by a source: bypasses until the source delivers (a `TableHandler` sees to it).
/// let products: Cache<String, u32> =
///     Cache::new(CacheConfig { initial_mode: Mode::Bypass, ..CacheConfig::default() });
/// // Standalone (no source; TTL only): always serves.
/// let sessions: Cache<u64, u32> = Cache::new(CacheConfig::default());
/// let wal = SourceStatus::default();
/// let monitor = Monitor::new()
///     .cache("products", &products)
///     .cache("sessions", &sessions)
///     .source("wal", &wal);
///
/// // Not ready until the source says it hears every change.
/// let health = monitor.health();
/// assert!(!health.ready);
/// assert_eq!(health.caches[0], ("products".to_string(), Mode::Bypass));
/// products.set_mode(Mode::Coherent);
/// assert!(monitor.health().ready);
///
/// let text = monitor.render_text();
/// assert!(text.contains("nearcache_cache_hits_total{cache=\"sessions\"} 0\n"));
/// assert!(text.contains("nearcache_source_listening{source=\"wal\"} 0\n"));
/// ```
#[derive(Clone, Default)]
pub struct Monitor {
    caches: Vec<(Arc<str>, Arc<dyn Watched>)>,
    sources: Vec<(Arc<str>, SourceStatus)>,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let caches: Vec<&str> = self.caches.iter().map(|(n, _)| &**n).collect();
        let sources: Vec<&str> = self.sources.iter().map(|(n, _)| &**n).collect();
        f.debug_struct("Monitor")
            .field("caches", &caches)
            .field("sources", &sources)
            .finish()
    }
}

/// The label a part is reported under: none for the empty name.
fn label<'a>(key: &'static str, name: &'a str) -> Vec<(&'static str, &'a str)> {
    if name.is_empty() {
        Vec::new()
    } else {
        vec![(key, name)]
    }
}

impl Monitor {
    /// A monitor of nothing (ready, no metrics).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a cache, reported with the label `cache="<name>"` (no label for `""`, for a
    /// service with one cache).
    #[must_use]
    pub fn cache<K, V>(mut self, name: &str, cache: &Cache<K, V>) -> Self
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        self.caches.push((name.into(), Arc::new(cache.clone())));
        self
    }

    /// Adds a source, reported with the label `source="<name>"` (none for `""`).
    #[must_use]
    pub fn source(mut self, name: &str, status: &SourceStatus) -> Self {
        self.sources.push((name.into(), status.clone()));
        self
    }

    /// Readiness now.
    pub fn health(&self) -> Health {
        let caches: Vec<(String, Mode)> = self
            .caches
            .iter()
            .map(|(name, c)| (name.to_string(), c.mode()))
            .collect();
        let bypassing = caches.iter().any(|(_, mode)| *mode == Mode::Bypass);
        Health {
            ready: !bypassing,
            caches,
            problem: self.sources.iter().find_map(|(_, s)| s.problem()),
            source_error: self
                .sources
                .iter()
                .filter(|_| bypassing)
                .filter(|(_, s)| s.snapshot().state != SourceState::Listening)
                .find_map(|(_, s)| s.last_error()),
        }
    }

    /// Adds every cache's and source's counters and gauges to `out`: `nearcache_cache_*` and
    /// `nearcache_source_*`, as the reference service exports them.
    pub fn render(&self, out: &mut Exposition) {
        for (name, cache) in &self.caches {
            cache.render(&label("cache", name), out);
        }
        for (name, status) in &self.sources {
            status.snapshot().render(&label("source", name), out);
        }
    }

    /// [`render`](Self::render) into an exposition of its own, as text.
    pub fn render_text(&self) -> String {
        let mut out = Exposition::new();
        self.render(&mut out);
        out.finish()
    }
}
