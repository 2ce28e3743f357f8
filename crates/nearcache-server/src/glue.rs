//! What connects the parts: the listener's handler on the cache, and the HTTP layer's probe.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nearcache::{Cache, Mode, Tag};
use nearcache_http::{CachedPrincipal, Health, Probe};
use nearcache_listener::{Handler, ListenerState, ListenerStatus};
use nearcache_pg::UserId;

use crate::CacheMode;

/// The tables whose rows principals are built from.
pub(crate) const TABLES: [&str; 2] = ["users", "organizations"];

/// Turns notifications into cache invalidations: a row `table:key` is the tag of every
/// principal built from it.
pub(crate) struct CacheHandler {
    cache: Cache<UserId, Arc<CachedPrincipal>>,
}

impl CacheHandler {
    pub(crate) fn new(cache: Cache<UserId, Arc<CachedPrincipal>>) -> Self {
        Self { cache }
    }
}

impl Handler for CacheHandler {
    fn bypass(&self) {
        self.cache.set_mode(Mode::Bypass);
    }

    fn flush_all(&self) {
        self.cache.flush();
    }

    fn coherent(&self) {
        self.cache.set_mode(Mode::Coherent);
    }

    fn invalidate(&self, table: &str, keys: &[String]) -> bool {
        if !TABLES.contains(&table) {
            return false;
        }
        for key in keys {
            self.cache.invalidate_tag(&Tag::row(table, key));
        }
        true
    }

    fn flush_table(&self, table: &str) -> bool {
        if !TABLES.contains(&table) {
            return false;
        }
        self.cache.flush();
        true
    }
}

/// Readiness and metrics of the parts the HTTP layer does not see.
pub(crate) struct ServerProbe {
    mode: CacheMode,
    cache: Option<Cache<UserId, Arc<CachedPrincipal>>>,
    listener: Option<ListenerStatus>,
    db_ok: Arc<AtomicBool>,
}

impl ServerProbe {
    pub(crate) fn new(
        mode: CacheMode,
        cache: Option<Cache<UserId, Arc<CachedPrincipal>>>,
        listener: Option<ListenerStatus>,
        db_ok: Arc<AtomicBool>,
    ) -> Self {
        Self {
            mode,
            cache,
            listener,
            db_ok,
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
            (CacheMode::Coherent, Some(c)) => c.mode().as_str(),
            (mode, _) => mode.as_str(),
        };
        Health {
            // A listening listener proves the database answers too.
            ready: listening || self.db_ok.load(Ordering::Relaxed),
            cache: cache.to_string(),
            problem: self.listener.as_ref().and_then(ListenerStatus::problem),
        }
    }

    fn render_metrics(&self, out: &mut String) {
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        if let Some(cache) = &self.cache {
            let s = cache.stats();
            let coherent = u64::from(cache.mode() == Mode::Coherent);
            metric(
                "nearcache_cache_coherent",
                "gauge",
                "1 if the cache serves entries.",
                coherent,
            );
            metric(
                "nearcache_cache_entries",
                "gauge",
                "Entries in the cache.",
                cache.len(),
            );
            for (name, help, v) in [
                ("hits", "Lookups answered from the cache.", s.hits),
                ("misses", "Lookups not in the cache.", s.misses),
                ("bypassed", "Lookups made in bypass mode.", s.bypassed),
                ("loads", "Loader calls.", s.loads),
                ("load_errors", "Loader calls that failed.", s.load_errors),
                (
                    "coalesced",
                    "Lookups served by another caller's load.",
                    s.coalesced,
                ),
                (
                    "discarded_fills",
                    "Loads not stored because of a later invalidation.",
                    s.discarded_fills,
                ),
                ("invalidations", "Invalidations received.", s.invalidations),
                (
                    "invalidated_entries",
                    "Entries removed by invalidations.",
                    s.invalidated_entries,
                ),
                ("flushes", "Flushes.", s.flushes),
                ("expired", "Entries expired.", s.expired),
                ("evicted", "Entries evicted for capacity.", s.evicted),
            ] {
                metric(&format!("nearcache_cache_{name}_total"), "counter", help, v);
            }
        }
        if let Some(listener) = &self.listener {
            let s = listener.snapshot();
            let listening = u64::from(s.state == ListenerState::Listening);
            metric(
                "nearcache_listener_listening",
                "gauge",
                "1 while the listener listens.",
                listening,
            );
            metric(
                "nearcache_listener_misconfigured",
                "gauge",
                "1 while the database's triggers are missing or wrong (the cache bypasses; /healthz says why).",
                u64::from(s.misconfigured),
            );
            metric(
                "nearcache_listener_heartbeat_rtt_microseconds",
                "gauge",
                "Round trip of the last heartbeat, in microseconds.",
                s.heartbeat_rtt_micros,
            );
            for (name, help, v) in [
                (
                    "connections",
                    "Connections that reached LISTEN.",
                    s.connections,
                ),
                (
                    "disconnects",
                    "Connections lost or given up.",
                    s.disconnects,
                ),
                ("notifications", "Notifications received.", s.notifications),
                (
                    "malformed",
                    "Unreadable payloads (each flushed the cache).",
                    s.malformed,
                ),
                ("ignored", "Notifications for tables not cached.", s.ignored),
                ("heartbeats", "Heartbeats that came back.", s.heartbeats),
                (
                    "heartbeat_timeouts",
                    "Heartbeats that did not come back in time.",
                    s.heartbeat_timeouts,
                ),
            ] {
                metric(
                    &format!("nearcache_listener_{name}_total"),
                    "counter",
                    help,
                    v,
                );
            }
        }
    }
}
