//! One source, several caches: `Handlers` over a `TableHandler` per cache, driven by one WAL
//! source against a real Postgres. Each cache hears its own tables' changes, and all of them
//! the source's doubts.

use std::sync::Arc;
use std::time::Duration;

use nearcache::{Cache, CacheConfig, Fill, Mode, TableHandler, Tag};
use nearcache_source::{Handlers, SourceStatus};
use nearcache_tests::{wait_until, TestDb};
use nearcache_wal::WalConfig;

use crate::support::{seed, terminate_source, update, Source};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_source_drives_a_cache_per_table_and_all_bypass_together() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (org, users) = seed(&pool, 1).await;
    // Built coherent by default; the handlers put them in bypass until the source delivers.
    let names: Cache<String, String> = Cache::new(CacheConfig::default());
    let orgs: Cache<String, String> = Cache::new(CacheConfig::default());
    let handler = Handlers::new()
        .with(TableHandler::new(names.clone(), ["users"]))
        .with(TableHandler::new(orgs.clone(), ["organizations"]));
    assert_eq!((names.mode(), orgs.mode()), (Mode::Bypass, Mode::Bypass));
    let mut config = WalConfig::new(db.url())
        .unwrap()
        .with_tables(["users", "organizations"]);
    config.heartbeat_interval = Duration::from_millis(200);
    let status = SourceStatus::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let source = tokio::spawn(nearcache_wal::run(
        config,
        Arc::new(handler),
        status,
        async {
            let _ = stopped.await;
        },
    ));
    let coherent = || async { names.mode() == Mode::Coherent && orgs.mode() == Mode::Coherent };
    wait_until(Duration::from_secs(10), "both coherent", coherent).await;

    let (u, o) = (users[0].id.to_string(), org.id.to_string());
    let fill = |table: &'static str, key: String| async move {
        Ok(Fill::found(format!("{table} {key}")).with_tag(Tag::row(table, &key)))
    };
    names
        .get_or_store(u.clone(), || fill("users", u.clone()))
        .await
        .unwrap();
    orgs.get_or_store(o.clone(), || fill("organizations", o.clone()))
        .await
        .unwrap();

    update(&pool, "users", users[0].id, "name = 'Renamed'").await;
    wait_until(Duration::from_secs(5), "the user evicted", || async {
        names.get(&u).is_none()
    })
    .await;
    assert!(
        orgs.get(&o).is_some(),
        "the organizations' cache kept its entry"
    );
    update(&pool, "organizations", org.id, "name = 'Renamed'").await;
    wait_until(
        Duration::from_secs(5),
        "the organization evicted",
        || async { orgs.get(&o).is_none() },
    )
    .await;

    // The source's doubt reaches both: its connection is cut, both bypass, both come back.
    names
        .get_or_store(u.clone(), || fill("users", u.clone()))
        .await
        .unwrap();
    assert!(terminate_source(&pool, Source::Wal).await >= 1);
    wait_until(Duration::from_secs(5), "both in bypass", || async {
        names.mode() == Mode::Bypass && orgs.mode() == Mode::Bypass
    })
    .await;
    wait_until(Duration::from_secs(10), "both coherent again", coherent).await;
    assert!(names.get(&u).is_none(), "flushed on the way");
    // Every value was tagged with a watched table's row; one that is not can never be evicted,
    // and the cache says so.
    assert_eq!(names.stats().unwatched_fills, 0);
    names
        .get_or_store("stray".to_string(), || fill("products", "1".to_string()))
        .await
        .unwrap();
    assert_eq!(names.stats().unwatched_fills, 1);
    let _ = stop.send(());
    source.await.unwrap();
}
