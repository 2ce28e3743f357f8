//! The principal cache's invalidation handler: the core's [`TableHandler`] over the tables a
//! principal is built from.

use std::sync::Arc;

use nearcache::{Cache, TableHandler};
use nearcache_http::CachedPrincipal;
use nearcache_pg::tags::PRINCIPAL_TABLES;
use nearcache_pg::UserId;

/// The tables whose rows principals are built from.
pub(crate) const TABLES: [&str; 2] = PRINCIPAL_TABLES;

/// Turns changes into invalidations: a row `table:key` is the tag of every principal built
/// from it.
pub(crate) type CacheHandler = TableHandler<UserId, Arc<CachedPrincipal>>;

/// The handler for the principal cache.
pub(crate) fn handler(cache: Cache<UserId, Arc<CachedPrincipal>>) -> CacheHandler {
    TableHandler::new(cache, TABLES)
}
