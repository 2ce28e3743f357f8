//! Readiness and metrics of the parts the HTTP layer does not see: the cache, the listener and
//! the database. The cache's and the source's come from the [`Monitor`] any service of
//! nearcache uses (`nearcache_tower::HealthRoutes` serves it); this adds what only this service
//! has: its cache modes `ttl` and `off`, the database probe, the build and the runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use nearcache::{Cache, Exposition, Mode, Monitor};
use nearcache_http::{CacheState, CachedPrincipal, Health, Probe};
use nearcache_listener::{ListenerState, ListenerStatus};
use nearcache_pg::{Replans, UserId};

use crate::{CacheMode, SourceKind};

/// What `/healthz` and `/metrics` report beyond HTTP.
pub(crate) struct ServerProbe {
    mode: CacheMode,
    /// The cache and the source, unnamed (this service has one of each).
    monitor: Monitor,
    cache: Option<Cache<UserId, Arc<CachedPrincipal>>>,
    listener: Option<ListenerStatus>,
    /// The invalidation source, once chosen.
    source: Arc<OnceLock<SourceKind>>,
    db_ok: Arc<AtomicBool>,
    /// The pool's statements made stale by migrations.
    replans: Replans,
    /// Whether the audit runs (`--audit-rate` above 0, coherent mode).
    audit: bool,
}

impl ServerProbe {
    pub(crate) fn new(
        mode: CacheMode,
        cache: Option<Cache<UserId, Arc<CachedPrincipal>>>,
        listener: Option<ListenerStatus>,
        source: Arc<OnceLock<SourceKind>>,
        db_ok: Arc<AtomicBool>,
        replans: Replans,
        audit: bool,
    ) -> Self {
        let mut monitor = Monitor::new();
        if let Some(cache) = &cache {
            monitor = monitor.cache("", cache);
        }
        if let Some(listener) = &listener {
            monitor = monitor.source("", listener);
        }
        Self {
            mode,
            monitor,
            cache,
            listener,
            source,
            db_ok,
            replans,
            audit,
        }
    }
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
        let shared = self.monitor.health();
        Health {
            // A listening source proves the database answers too. A coherent cache that
            // bypasses (its source reconnecting) sends every request to the database: not
            // ready, so that a load balancer can prefer instances that are.
            ready: (listening || self.db_ok.load(Ordering::Relaxed)) && cache != CacheState::Bypass,
            cache,
            problem: shared.problem,
            source_error: shared.source_error,
            source: self.source.get().map(|s| s.as_str()),
            audit: self
                .cache
                .as_ref()
                .filter(|_| self.audit)
                .map(|c| c.stats())
                .map(|s| (s.audit_checked, s.audit_stale)),
        }
    }

    fn render_metrics(&self, out: &mut String) {
        let mut e = Exposition::new();
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        e.gauge("nearcache_build_info", "The running build.", &version, 1.0);
        e.counter(
            "nearcache_db_replans_total",
            "Queries run again because a migration changed their result type (Postgres' 0A000 'cached plan must not change result type'); the pool's older connections are renewed.",
            &[],
            self.replans.count() as f64,
        );
        self.monitor.render(&mut e);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let tasks = runtime.metrics().num_alive_tasks();
            let help = "Tasks alive in the server's tokio runtime.";
            e.gauge("nearcache_runtime_alive_tasks", help, &[], tasks as f64);
        }
        if let Some(source) = self.source.get() {
            let help = "The invalidation source in use.";
            e.gauge(
                "nearcache_source_info",
                help,
                &[("source", source.as_str())],
                1.0,
            );
        }
        out.push_str(&e.finish());
    }
}
