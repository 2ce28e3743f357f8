//! Three instances of the service against one database, each with its own invalidation
//! source; every test runs once per source.

use std::time::{Duration, Instant};

use nearcache_tests::app::{token, App};
use nearcache_tests::{wait_until, PrivateCluster, TestDb};
use serde_json::json;

use crate::support::{seed, terminate_source, update, Deployment, Source};

/// How long a notification may take to reach every instance in these tests; on a LAN it is
/// well under a millisecond, the rest is slack for a loaded machine. The cache TTL is five
/// minutes, so only invalidation can meet it.
const BOUND: Duration = Duration::from_secs(5);

async fn three(url: &str, source: Source) -> Deployment {
    Deployment::start(url, source, 3).await
}

async fn all_see(
    apps: &[App],
    what: &str,
    t: &str,
    path: &str,
    pointer: &str,
    want: &serde_json::Value,
) {
    for app in apps {
        let deadline = Instant::now() + BOUND;
        loop {
            let (status, body) = app.get(path, Some(t)).await;
            if status == 200 && body.pointer(pointer) == Some(want) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what} on {}: still {status} {body} after {BOUND:?}",
                app.addr
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One fresh database with an organization and `n` users, three coherent instances, and a
/// token per user whose principal every instance has cached.
struct Fixture {
    _db: TestDb,
    pool: sqlx::PgPool,
    org: nearcache_pg::Organization,
    users: Vec<nearcache_pg::User>,
    tokens: Vec<String>,
    apps: Deployment,
}

async fn fixture(n: usize, source: Source) -> Fixture {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (org, users) = seed(&pool, n).await;
    let apps = three(db.url(), source).await;
    let tokens: Vec<String> = users.iter().map(|u| token(u.id, json!({}))).collect();
    for t in &tokens {
        warm(&apps, t).await;
    }
    Fixture {
        _db: db,
        pool,
        org,
        users,
        tokens,
        apps,
    }
}

async fn warm(apps: &[App], t: &str) {
    for app in apps {
        assert_eq!(app.get("/me", Some(t)).await.0, 200);
    }
}

async fn writes_through_one_instance_and_by_sql_reach_the_others(source: Source) {
    // `_db` is bound so that the database lives as long as the test.
    let Fixture {
        _db,
        pool,
        users,
        tokens,
        apps,
        ..
    } = fixture(1, source).await;
    let t = &tokens[0];
    let (status, _) = apps[0].patch_me(t, &json!({"name": "Via A"})).await;
    assert_eq!(status, 200);
    all_see(
        &apps,
        "the write through A",
        t,
        "/me",
        "/user/name",
        &json!("Via A"),
    )
    .await;
    update(&pool, "users", users[0].id, "name = 'Via SQL'").await;
    all_see(
        &apps,
        "the write by SQL",
        t,
        "/me",
        "/user/name",
        &json!("Via SQL"),
    )
    .await;
}

async fn renaming_an_organization_refreshes_all_its_users_everywhere(source: Source) {
    let Fixture {
        _db,
        pool,
        org,
        tokens,
        apps,
        ..
    } = fixture(3, source).await;
    update(&pool, "organizations", org.id, "name = 'Renamed'").await;
    for t in &tokens {
        all_see(
            &apps,
            "the new organization name",
            t,
            "/me/organization",
            "/name",
            &json!("Renamed"),
        )
        .await;
    }
}

async fn a_deactivated_user_gets_401_everywhere(source: Source) {
    // `_db` is bound so that the database lives as long as the test.
    let Fixture {
        _db,
        pool,
        users,
        tokens,
        apps,
        ..
    } = fixture(1, source).await;
    let t = &tokens[0];
    update(&pool, "users", users[0].id, "active = false").await;
    for app in &apps {
        wait_until(BOUND, "401", || async {
            app.get("/me", Some(t)).await.0 == 401
        })
        .await;
    }
}

async fn an_instance_whose_listener_is_killed_stays_fresh_and_recovers(source: Source) {
    // `_db` is bound so that the database lives as long as the test.
    let Fixture {
        _db,
        pool,
        users,
        tokens,
        apps,
        ..
    } = fixture(1, source).await;
    let t = &tokens[0];
    // Every instance's listener goes; each must bypass, then recover.
    // (Behind a relay: the relay's one connection.)
    assert_eq!(terminate_source(&pool, source).await, source.streams(3));
    for name in ["one", "two", "three"] {
        update(&pool, "users", users[0].id, &format!("name = '{name}'")).await;
        // Whether bypassing or coherent again, a fresh value: a write committed after the
        // kill is never hidden by an entry cached before it.
        all_see(
            &apps,
            "the write after the kill",
            t,
            "/me",
            "/user/name",
            &json!(name),
        )
        .await;
    }
    for app in &apps {
        app.ready("coherent").await;
    }
    update(&pool, "users", users[0].id, "name = 'after'").await;
    all_see(
        &apps,
        "a write after recovery",
        t,
        "/me",
        "/user/name",
        &json!("after"),
    )
    .await;
}

async fn every_instance_recovers_from_a_cluster_restart(source: Source) {
    let cluster = PrivateCluster::start();
    let db = TestDb::on(&cluster.url()).await;
    let (t, user) = {
        let pool = db.pool().await;
        let (_, users) = seed(&pool, 1).await;
        pool.close().await;
        (token(users[0].id, json!({})), users[0].id)
    };
    let apps = three(db.url(), source).await;
    warm(&apps, &t).await;
    cluster.cluster().crash().unwrap();
    for app in &apps {
        wait_until(BOUND, "bypass after the crash", || async {
            app.get("/healthz", None).await.1["cache"] == "bypass"
        })
        .await;
    }
    cluster.cluster().up().unwrap();
    for app in &apps {
        app.ready("coherent").await;
    }
    let pool = db.pool().await;
    update(&pool, "users", user, "name = 'restarted'").await;
    all_see(
        &apps,
        "a write after the restart",
        &t,
        "/me",
        "/user/name",
        &json!("restarted"),
    )
    .await;
    // Before the cluster goes: a server stopping waits for its WAL consumers.
    apps.stop().await;
}

for_each_source!(
    writes_through_one_instance_and_by_sql_reach_the_others,
    renaming_an_organization_refreshes_all_its_users_everywhere,
    a_deactivated_user_gets_401_everywhere,
    an_instance_whose_listener_is_killed_stays_fresh_and_recovers,
    every_instance_recovers_from_a_cluster_restart,
);
