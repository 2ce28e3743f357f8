//! The listener's handler: notifications become tag invalidations on the principal cache.

use std::sync::Arc;

use nearcache::{Cache, Mode, Tag};
use nearcache_http::CachedPrincipal;
use nearcache_listener::Handler;
use nearcache_pg::UserId;

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
