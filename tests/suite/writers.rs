//! What writers pay: triggers fire only where a LISTEN source needs them. The migrations (and
//! `nearcache_attach`) leave them out where the WAL is decoded; LISTEN on such a database says
//! so, with the fix, instead of serving; moving between the sources, both ways, is one setting.

use std::time::Duration;

use nearcache_listener::ListenerConfig;
use nearcache_server::SourceKind;
use nearcache_tests::app::{spawn_app_with, token};
use nearcache_tests::{wait_until, PrivateCluster, TestDb};
use serde_json::json;
use sqlx::PgPool;

use crate::listener::{start, start_with, Running};
use crate::support::{exec, seed, update, Source};

const HB: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(3);
const TABLES: [&str; 2] = ["users", "organizations"];

/// nearcache's triggers on the reference tables.
async fn triggers(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger
          WHERE tgrelid IN ('users'::regclass, 'organizations'::regclass)
            AND tgname LIKE 'nearcache%'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

fn listen(url: &str) -> Running {
    let mut config = ListenerConfig::new(url).unwrap().with_tables(TABLES);
    config.check_interval = Duration::from_millis(300);
    start_with(config)
}

async fn says_how_to_fix(l: &Running) {
    wait_until(Duration::from_secs(10), "the problem, with its fix", || {
        std::future::ready(
            l.status
                .problem()
                .is_some_and(|p| p.contains("nearcache_set_source('notify')")),
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_wal_a_migrated_database_fires_no_trigger_and_listen_says_how_to_fix_it() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    assert_eq!(
        triggers(&pool).await,
        0,
        "wal_level = logical: writes are for the WAL"
    );
    let (_, users) = seed(&pool, 1).await;
    let wal = start(Source::Wal, db.url(), HB, TIMEOUT);
    let ready = wal.until("coherent", 0, "coherent").await;
    update(&pool, "users", users[0].id, "name = 'Decoded'").await;
    wal.until("the change", ready, &format!("users:{}", users[0].id))
        .await;

    let l = listen(db.url());
    says_how_to_fix(&l).await;
    assert!(!l.handler.events().contains(&"coherent".to_string()));
    l.stop().await;
    wal.stop().await;
}

/// The documented steps: to LISTEN, `both` while the instances move, then `notify`; back to
/// the WAL, `both` again, then `wal`. Each source is coherent where it should be and bypasses,
/// saying why, where it should not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn moving_from_the_wal_to_listen_and_back_is_one_setting_each_way() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let user = format!("users:{}", users[0].id);
    let wal = start(Source::Wal, db.url(), HB, TIMEOUT);
    let mut w = wal.until("coherent", 0, "coherent").await + 1;

    exec(&pool, "SELECT nearcache_set_source('both')").await;
    assert!(triggers(&pool).await > 0);
    let l = listen(db.url());
    let mut n = l.until("LISTEN coherent", 0, "coherent").await + 1;
    update(&pool, "users", users[0].id, "name = 'Both'").await;
    n = l.until("LISTEN hears", n, &user).await + 1;
    w = wal.until("the WAL too", w, &user).await + 1;

    exec(&pool, "SELECT nearcache_set_source('notify')").await;
    update(&pool, "users", users[0].id, "name = 'Listened'").await;
    n = l.until("LISTEN still hears", n, &user).await + 1;

    // And back.
    exec(&pool, "SELECT nearcache_set_source('both')").await;
    exec(&pool, "SELECT nearcache_set_source('wal')").await;
    assert_eq!(triggers(&pool).await, 0);
    update(&pool, "users", users[0].id, "name = 'Decoded again'").await;
    wal.until("the WAL hears", w, &user).await;
    l.until("LISTEN bypasses at its next check", n, "bypass")
        .await;
    says_how_to_fix(&l).await;
    l.stop().await;
    wal.stop().await;
}

/// `wal_level` lowered under a database whose writes were for the WAL: a server on `auto`
/// falls back to LISTEN, which finds no trigger and bypasses, saying how to fix it; the fix
/// (`nearcache_set_source('auto')` again, which now wants triggers) makes it coherent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_leaves_the_wal_is_never_served_incoherently() {
    let private = PrivateCluster::start();
    let db = TestDb::migrated_on(&private.url()).await;
    let pool = db.pool().await;
    assert_eq!(triggers(&pool).await, 0);
    let (_, users) = seed(&pool, 1).await;
    pool.close().await;
    private.cluster().configure("wal_level = replica").unwrap();
    private.cluster().down().unwrap();
    private.cluster().up().unwrap();
    let pool = db.pool().await;

    let app = spawn_app_with(db.url(), |s| s.source = SourceKind::Auto).await;
    wait_until(
        Duration::from_secs(20),
        "LISTEN's problem in /healthz",
        || async {
            let health = app.get("/healthz", None).await.1;
            health["source"] == "notify"
                && health["cache"] == "bypass"
                && health["problem"]
                    .as_str()
                    .is_some_and(|p| p.contains("nearcache_set_source('notify')"))
        },
    )
    .await;
    let t = token(users[0].id, json!({}));
    update(&pool, "users", users[0].id, "name = 'Fresh'").await;
    assert_eq!(app.get("/me", Some(&t)).await.1["user"]["name"], "Fresh");

    exec(&pool, "SELECT nearcache_set_source('auto')").await;
    assert!(
        triggers(&pool).await > 0,
        "auto wants triggers without the WAL"
    );
    app.ready("coherent").await;
    update(&pool, "users", users[0].id, "name = 'Fresher'").await;
    wait_until(Duration::from_secs(5), "the change served", || async {
        app.get("/me", Some(&t)).await.1["user"]["name"] == "Fresher"
    })
    .await;
}
