//! The online audit against a real Postgres and a real WAL source: a source that misses a
//! change (a handler that drops one row's invalidation on purpose) is caught by the audit
//! within its rate and bound, and the stale entry is evicted, and nothing else is called stale.

use std::time::Duration;

use nearcache::{Audit, Cache, CacheConfig, Fill, LoadError, TableHandler};
use nearcache_source::Handler;
use nearcache_tests::{wait_until, TestDb};
use sqlx::PgPool;

use crate::support::{exec, seed, user_name, UsersSource};

/// Passes everything on but the invalidations of one key.
struct Deaf {
    inner: TableHandler<String, String>,
    deaf_to: String,
}

impl Handler for Deaf {
    fn bypass(&self) {
        self.inner.bypass();
    }
    fn flush_all(&self) {
        self.inner.flush_all();
    }
    fn coherent(&self) {
        self.inner.coherent();
    }
    fn invalidate(&self, table: &str, keys: &[String]) -> bool {
        let heard: Vec<String> = keys
            .iter()
            .filter(|k| **k != self.deaf_to)
            .cloned()
            .collect();
        self.inner.invalidate(table, &heard)
    }
    fn flush_table(&self, table: &str) -> bool {
        self.inner.flush_table(table)
    }
}

async fn name(pool: &PgPool, id: String) -> Result<Fill<String>, LoadError> {
    user_name(pool, &id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missed_invalidation_is_caught_by_the_audit_and_repaired() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 6).await;
    let ids: Vec<String> = users.iter().map(|u| u.id.to_string()).collect();
    let cache: Cache<String, String> = Cache::new(CacheConfig::default());
    let handler = Deaf {
        inner: TableHandler::new(cache.clone(), ["users"]),
        deaf_to: ids[0].clone(),
    };
    let source = UsersSource::start(db.url(), handler, &cache).await;
    for id in &ids {
        let p = pool.clone();
        cache
            .get_or_store(id.clone(), || name(&p, id.clone()))
            .await
            .unwrap();
    }
    // Every row changes; only the first one's invalidation is lost.
    exec(&pool, "UPDATE users SET name = name || ' (renamed)'").await;
    wait_until(Duration::from_secs(5), "the others evicted", || async {
        ids[1..].iter().all(|id| cache.get(id).is_none())
    })
    .await;
    assert!(cache.get(&ids[0]).is_some(), "the lost one is still served");

    let audit = Audit {
        rate: 50.0,
        bound: Duration::from_millis(500),
    };
    let p = pool.clone();
    let load = move |id: String| {
        let p = p.clone();
        async move { name(&p, id).await }
    };
    let auditing = cache.clone();
    let audit = tokio::spawn(async move { auditing.audit(audit, load, |a, b| a == b).await });
    wait_until(Duration::from_secs(10), "the audit to find it", || async {
        cache.stats().audit_stale == 1
    })
    .await;
    audit.abort();
    let stats = cache.stats();
    assert_eq!(
        stats.audit_stale, 1,
        "only the row whose invalidation was lost: {stats:?}"
    );
    assert_eq!(cache.get(&ids[0]), None, "evicted");
    let p = pool.clone();
    let served = cache
        .get_or_store(ids[0].clone(), || name(&p, ids[0].clone()))
        .await
        .unwrap()
        .unwrap();
    assert!(served.ends_with("(renamed)"), "{served}");
    source.stop().await;
}
