//! Readiness and metrics of the parts the HTTP layer does not see: the cache, the listener and
//! the database. The metrics come from the cache's and the listener's own declarations
//! (`Stats::metrics`, `StatusSnapshot::counters` and `gauges`); nothing is listed twice.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use nearcache::{Cache, Mode};
use nearcache_http::{CacheState, CachedPrincipal, Health, Probe};
use nearcache_listener::{ListenerState, ListenerStatus};
use nearcache_pg::{Replans, UserId};

use crate::{CacheMode, SourceKind};

/// What `/healthz` and `/metrics` report beyond HTTP.
pub(crate) struct ServerProbe {
    mode: CacheMode,
    cache: Option<Cache<UserId, Arc<CachedPrincipal>>>,
    listener: Option<ListenerStatus>,
    /// The invalidation source, once chosen.
    source: Arc<OnceLock<SourceKind>>,
    db_ok: Arc<AtomicBool>,
    /// The pool's statements made stale by migrations.
    replans: Replans,
}

impl ServerProbe {
    pub(crate) fn new(
        mode: CacheMode,
        cache: Option<Cache<UserId, Arc<CachedPrincipal>>>,
        listener: Option<ListenerStatus>,
        source: Arc<OnceLock<SourceKind>>,
        db_ok: Arc<AtomicBool>,
        replans: Replans,
    ) -> Self {
        Self {
            mode,
            cache,
            listener,
            source,
            db_ok,
            replans,
        }
    }
}

/// Appends one metric in Prometheus' text format.
fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

impl Probe for ServerProbe {
    fn health(&self) -> Health {
        let listening = self
            .listener
            .as_ref()
            .is_some_and(|l| l.snapshot().state == ListenerState::Listening);
        let cache = match (self.mode, &self.cache) {
            (CacheMode::Coherent, Some(c)) if c.mode() == Mode::Coherent => CacheState::Coherent,
            (CacheMode::Coherent, _) => CacheState::Bypass,
            (CacheMode::Ttl, _) => CacheState::Ttl,
            (CacheMode::Off, _) => CacheState::Off,
        };
        Health {
            // A listening source proves the database answers too. A coherent cache that
            // bypasses (its source reconnecting) sends every request to the database: not
            // ready, so that a load balancer can prefer instances that are.
            ready: (listening || self.db_ok.load(Ordering::Relaxed)) && cache != CacheState::Bypass,
            cache,
            problem: self.listener.as_ref().and_then(ListenerStatus::problem),
            source_error: self
                .listener
                .as_ref()
                .filter(|_| cache == CacheState::Bypass)
                .and_then(ListenerStatus::last_error),
            source: self.source.get().map(|s| s.as_str()),
        }
    }

    fn render_metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP nearcache_build_info The running build.\n# TYPE nearcache_build_info gauge\nnearcache_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        metric(
            out,
            "nearcache_db_replans_total",
            "counter",
            "Queries run again because a migration changed their result type (Postgres' 0A000 'cached plan must not change result type'); the pool's older connections are renewed.",
            self.replans.count(),
        );
        if let Some(cache) = &self.cache {
            let coherent = u64::from(cache.mode() == Mode::Coherent);
            let help = "1 if the cache serves entries.";
            metric(out, "nearcache_cache_coherent", "gauge", help, coherent);
            let entries = cache.len();
            metric(
                out,
                "nearcache_cache_entries",
                "gauge",
                "Entries in the cache.",
                entries,
            );
            let capacity = cache.config().capacity;
            metric(
                out,
                "nearcache_cache_capacity",
                "gauge",
                "The most entries the cache holds (--cache-capacity).",
                capacity,
            );
            let sizes = cache.internals();
            let internals = [
                ("nearcache_cache_indexed_tags", "Distinct tags that cached entries carry.", sizes.indexed_tags),
                ("nearcache_cache_index_rows", "Rows of the tag index (one per tag of each cached entry).", sizes.index_rows),
                ("nearcache_cache_fence_remembered", "Keys and tags whose latest invalidation the fence remembers (at most nearcache_cache_fence_memory).", sizes.fence_remembered),
                ("nearcache_cache_fence_memory", "The most invalidations the fence remembers before it forgets them all.", cache.config().fence_memory),
                ("nearcache_cache_loads_in_flight", "Loads under way (one per key).", sizes.loads_in_flight),
                ("nearcache_cache_removals_queued", "Removals reported by moka not yet processed.", sizes.removals_queued),
            ];
            for (name, help, value) in internals {
                metric(out, name, "gauge", help, value);
            }
            for m in cache.stats().metrics() {
                let name = format!("nearcache_cache_{}_total", m.name);
                metric(out, &name, "counter", m.help, m.value);
            }
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tasks = runtime.metrics().num_alive_tasks();
            metric(
                out,
                "nearcache_runtime_alive_tasks",
                "gauge",
                "Tasks alive in the server's tokio runtime.",
                tasks,
            );
        }
        if let Some(source) = self.source.get() {
            let _ = writeln!(
                out,
                "# HELP nearcache_source_info The invalidation source in use.\n# TYPE nearcache_source_info gauge\nnearcache_source_info{{source=\"{}\"}} 1",
                source.as_str()
            );
        }
        if let Some(listener) = &self.listener {
            let s = listener.snapshot();
            for m in s.gauges() {
                let name = format!("nearcache_source_{}", m.name);
                metric(out, &name, "gauge", m.help, m.value);
            }
            for m in s.counters() {
                let name = format!("nearcache_source_{}_total", m.name);
                metric(out, &name, "counter", m.help, m.value);
            }
        }
    }
}
