//! Refresh ahead of expiry (`--refresh-after`): a cached principal read after this age is
//! served at once and loaded again in the background, so that a busy user's requests never
//! wait for the database when the TTL ends.

use std::sync::Arc;

use nearcache::Cache;
use nearcache_http::CachedPrincipal;
use nearcache_pg::{PgUserRepo, UserId};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runs the refresher of `cache` until `stop`.
pub(crate) fn spawn(
    cache: Cache<UserId, Arc<CachedPrincipal>>,
    repo: PgUserRepo,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = cache.refresh(crate::handler::loader(repo)) => {}
            () = stop.cancelled() => {}
        }
    })
}
