//! The principal cache's invalidation handler (the core's [`TableHandler`] over the tables a
//! principal is built from), and its loader for work in the background (audit, refresh, warm
//! start).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use nearcache::{Cache, Fill, LoadError, TableHandler};
use nearcache_http::CachedPrincipal;
use nearcache_pg::tags::{PRINCIPAL_TABLES, USERS};
use nearcache_pg::{PgUserRepo, UserId};

/// The tables whose rows principals are built from.
pub(crate) const TABLES: [&str; 2] = PRINCIPAL_TABLES;

/// Turns changes into invalidations: a row `table:key` is the tag of every principal built
/// from it, and a `users` row is also the key of its principal (which carries no tag for it:
/// see [`CachedPrincipal::load`]).
pub(crate) type CacheHandler = TableHandler<UserId, Arc<CachedPrincipal>>;

/// The handler for the principal cache.
pub(crate) fn handler(cache: Cache<UserId, Arc<CachedPrincipal>>) -> CacheHandler {
    TableHandler::new(cache, TABLES).keyed_by(USERS, |key| key.parse().ok())
}

/// A principal's load, as the background work on the cache calls it.
pub(crate) type Load =
    Pin<Box<dyn Future<Output = Result<Fill<Arc<CachedPrincipal>>, LoadError>> + Send>>;

/// Loads principals through `repo` ([`CachedPrincipal::load`], what `/me` loads on a miss).
pub(crate) fn loader(repo: PgUserRepo) -> impl Fn(UserId) -> Load + Send + Sync + 'static {
    move |id| {
        let repo = repo.clone();
        Box::pin(async move { CachedPrincipal::load(&repo, id).await })
    }
}
