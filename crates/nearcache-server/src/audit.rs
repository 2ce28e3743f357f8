//! The online audit of the server's cache (`--audit-rate`): cached principals loaded again
//! through the repository and compared by the body they serve (`GET /me`'s JSON), which holds
//! every field the service shows.

use std::sync::Arc;
use std::time::Duration;

use nearcache::{Audit, Cache};
use nearcache_http::CachedPrincipal;
use nearcache_pg::{PgUserRepo, UserId};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runs the audit of `cache` at `rate` per second until `stop`.
pub(crate) fn spawn(
    cache: Cache<UserId, Arc<CachedPrincipal>>,
    repo: PgUserRepo,
    rate: f64,
    bound: Duration,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let stop = stop.clone();
    tokio::spawn(async move {
        let load = crate::handler::loader(repo);
        let same = |a: &Arc<CachedPrincipal>, b: &Arc<CachedPrincipal>| a.me() == b.me();
        tokio::select! {
            () = cache.audit(Audit { rate, bound }, load, same) => {}
            () = stop.cancelled() => {}
        }
    })
}
