//! Refresh ahead of expiry against a real Postgres: a busy user of the service under a short TTL
//! is never a miss once cached, a change still reaches it at once, and a refresh that read a row
//! before the row changed is discarded when the WAL source's invalidation arrives meanwhile.

use std::sync::Arc;
use std::time::Duration;

use nearcache::{Cache, CacheConfig, TableHandler};
use nearcache_tests::app::{spawn_app_with, token};
use nearcache_tests::{wait_until, TestDb};
use serde_json::json;
use tokio::sync::Notify;

use crate::support::{exec, metric, seed, user_name, UsersSource};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_busy_user_under_a_short_ttl_never_waits_for_the_database() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 2).await;
    let app = spawn_app_with(db.url(), |s| {
        s.cache_ttl = Duration::from_millis(1_200);
        s.refresh_after = Some(Duration::from_millis(300));
        s.audit_rate = 0.0;
    })
    .await;
    app.ready("coherent").await;
    let me = token(users[0].id, json!({}));
    // Three seconds of requests: without the refresh, at least two more misses.
    for _ in 0..60 {
        assert_eq!(app.get("/me", Some(&me)).await.0, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = app.metrics().await;
    assert_eq!(metric(&metrics, "nearcache_cache_misses_total"), 1.0);
    let refreshes = metric(&metrics, "nearcache_cache_refreshes_total");
    assert!(refreshes >= 3.0, "{refreshes}");

    // A change is an invalidation as always: served at once, never the refreshed old value.
    exec(
        &pool,
        &format!(
            "UPDATE users SET name = 'Renamed' WHERE id = '{}'",
            users[0].id
        ),
    )
    .await;
    wait_until(Duration::from_secs(5), "the change served", || async {
        app.get("/me", Some(&me)).await.1["user"]["name"] == "Renamed"
    })
    .await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_that_read_the_row_before_it_changed_is_discarded() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let id = users[0].id.to_string();
    let cache: Cache<String, String> = Cache::new(CacheConfig {
        refresh_after: Some(Duration::from_millis(50)),
        ..CacheConfig::default()
    });
    let handler = TableHandler::new(cache.clone(), ["users"]);
    let source = UsersSource::start(db.url(), handler, &cache).await;
    let original = cache
        .get_or_store(id.clone(), || user_name(&pool, &id))
        .await
        .unwrap()
        .unwrap();

    // The refresh reads the row, then stalls until the row has changed and its invalidation
    // has arrived.
    let (read, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (r, go, p) = (read.clone(), release.clone(), pool.clone());
    let load = move |id: String| {
        let (r, go, p) = (r.clone(), go.clone(), p.clone());
        async move {
            let fill = user_name(&p, &id).await;
            r.notify_one();
            go.notified().await;
            fill
        }
    };
    let refresher = cache.clone();
    let worker = tokio::spawn(async move { refresher.refresh(load).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        cache.get(&id).as_ref(),
        Some(&original),
        "due: served, queued"
    );
    read.notified().await;
    let invalidations = cache.stats().invalidations;
    exec(
        &pool,
        &format!("UPDATE users SET name = 'Renamed' WHERE id = '{id}'"),
    )
    .await;
    wait_until(Duration::from_secs(5), "the invalidation", || async {
        cache.stats().invalidations > invalidations
    })
    .await;
    release.notify_one();
    wait_until(Duration::from_secs(5), "the refresh discarded", || async {
        cache.stats().discarded_fills == 1
    })
    .await;
    assert_eq!(cache.get(&id), None, "no old value stored");
    let served = cache
        .get_or_store(id.clone(), || user_name(&pool, &id))
        .await;
    assert_eq!(served.unwrap().as_deref(), Some("Renamed"));
    assert_eq!(cache.stats().refreshes, 1);
    worker.abort();
    source.stop().await;
}
