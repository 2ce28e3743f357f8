//! A primary failover, as a managed service does it: the primary dies, its streaming standby is
//! promoted, and the name the instances connect to follows the new primary (here a TCP proxy
//! the test retargets, as a DNS name or a virtual IP would be). A temporary slot cannot move
//! with a failover, so the WAL sources start anew on the new primary; every source bypasses in
//! between and flushes before it serves again.

use std::time::{Duration, Instant};

use nearcache_tests::app::{token, App};
use nearcache_tests::fleet::Proxy;
use nearcache_tests::{wait_until, PrivateCluster, TestDb};
use serde_json::json;

use crate::checker::{stale_reads, Commits, Read};
use crate::support::{seed, terminate_source, Deployment, Source};

/// How long a change may take to reach every instance (slack for a loaded machine).
const BOUND: Duration = Duration::from_secs(5);

/// Every instance serves `want` as the user's name within the bound.
async fn all_see(apps: &Deployment, t: &str, want: &str) {
    for app in apps {
        wait_until(
            BOUND,
            &format!("{} to serve {want:?}", app.addr),
            || async {
                let (status, body) = app.get("/me", Some(t)).await;
                status == 200 && body["user"]["name"] == want
            },
        )
        .await;
    }
}

/// Renames the user through `pool`, retrying while the database is away or read-only.
async fn rename(pool: &sqlx::PgPool, id: nearcache_pg::UserId, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sqlx::query("UPDATE users SET name = $2 WHERE id = $1")
            .bind(id)
            .bind(name)
            .execute(pool)
            .await
        {
            Ok(_) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "rename to {name:?}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The value of an unlabelled metric.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

/// A primary with a test database and `n` seeded users, and a streaming standby of it.
async fn pair(
    n: usize,
) -> (
    PrivateCluster,
    PrivateCluster,
    TestDb,
    Vec<nearcache_pg::User>,
) {
    let primary = PrivateCluster::start();
    let db = TestDb::on(&primary.url()).await;
    let users = {
        let pool = db.pool().await;
        let (_, users) = seed(&pool, n).await;
        pool.close().await;
        users
    };
    let standby = primary.standby();
    (primary, standby, db, users)
}

/// `host:port` of a cluster.
fn at(c: &PrivateCluster) -> String {
    format!("127.0.0.1:{}", c.cluster().port().unwrap())
}

/// Waits until the standby has replayed everything the primary has written: the failover then
/// loses nothing committed.
async fn replayed(primary: &sqlx::PgPool, standby: &sqlx::PgPool) {
    let written: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(primary)
        .await
        .unwrap();
    wait_until(BOUND, "the standby to replay the primary's WAL", || async {
        sqlx::query_scalar::<_, bool>("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn")
            .bind(&written)
            .fetch_one(standby)
            .await
            .unwrap()
    })
    .await;
}

async fn coherent(app: &App) -> bool {
    app.get("/healthz", None).await.1["cache"] == "coherent"
}

async fn every_instance_follows_a_promoted_standby(source: Source) {
    let (primary, standby, db, users) = pair(2).await;
    let proxy = Proxy::start(&at(&primary)).await;
    let url = db.url().replace(&at(&primary), &proxy.addr.to_string());
    let writer = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&url)
        .await
        .unwrap();
    let apps = Deployment::start(&url, source, 3).await;
    let tokens: Vec<String> = users.iter().map(|u| token(u.id, json!({}))).collect();
    rename(&writer, users[0].id, "before").await;
    all_see(&apps, &tokens[0], "before").await;
    // Cached everywhere, and replayed on the standby: the failover loses nothing committed.
    all_see(&apps, &tokens[1], &users[1].name).await;
    let standby_pool = sqlx::PgPool::connect(&db.url().replace(&at(&primary), &at(&standby)))
        .await
        .unwrap();
    replayed(&writer, &standby_pool).await;

    // The primary dies; the standby is promoted; the name follows it.
    primary.cluster().crash().unwrap();
    let died = Instant::now();
    proxy.retarget(at(&standby).parse().unwrap());
    standby.cluster().promote().unwrap();
    // Writes while the instances reconnect: the second user, whom they all had cached.
    rename(&writer, users[1].id, "during").await;
    // Coherent again, after connecting again (behind a relay: the relay's source did).
    for app in &apps {
        wait_until(
            Duration::from_secs(30),
            "coherent on the new primary",
            || async {
                let connections = match apps.relay_connections() {
                    Some(n) => n,
                    None => {
                        metric(&app.metrics().await, "nearcache_source_connections_total") as u64
                    }
                };
                connections >= 2 && coherent(app).await
            },
        )
        .await;
    }
    let took = died.elapsed();
    println!(
        "{source:?}: every instance coherent on the new primary {took:?} after the old one died"
    );
    all_see(&apps, &tokens[1], "during").await;
    rename(&writer, users[0].id, "after").await;
    all_see(&apps, &tokens[0], "after").await;

    // The sources stream from the new primary: a slot per WAL reader, LISTEN per instance.
    let streams: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(source.application_name())
    .fetch_one(&standby_pool)
    .await
    .unwrap();
    assert_eq!(
        streams,
        source.streams(3),
        "{source:?}: streams on the new primary"
    );
    writer.close().await;
    standby_pool.close().await;
    apps.stop().await;
}

/// The instances' URL names both servers (`postgres://…@primary,standby/db`), as libpq takes
/// several hosts: each connection takes the first that takes writes. After the failover that is
/// the promoted standby. Then the old primary comes back read-write on its old timeline, first
/// in the URL, while the new one takes writes (split brain): the sources, connecting again in
/// the URL's order, refuse it as a former primary (they have seen a newer timeline of the
/// cluster) and stay on the new primary, so no instance becomes coherent against it.
async fn a_multi_host_url_follows_the_primary_and_refuses_the_former_one(source: Source) {
    let (primary, standby, db, users) = pair(2).await;
    let both = db
        .url()
        .replace(&at(&primary), &format!("{},{}", at(&primary), at(&standby)));
    let old = db.pool().await;
    let new = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&db.url().replace(&at(&primary), &at(&standby)))
        .await
        .unwrap();
    let apps = Deployment::start(&both, source, 3).await;
    let tokens: Vec<String> = users.iter().map(|u| token(u.id, json!({}))).collect();
    rename(&old, users[0].id, "before").await;
    all_see(&apps, &tokens[0], "before").await;
    all_see(&apps, &tokens[1], &users[1].name).await;
    replayed(&old, &new).await;
    old.close().await;

    primary.cluster().crash().unwrap();
    standby.cluster().promote().unwrap();
    rename(&new, users[1].id, "during").await;
    wait_reconnected(&apps, 2).await;
    all_see(&apps, &tokens[1], "during").await;

    // Split brain: the old primary is back, read-write, first in the URL.
    primary.cluster().up().unwrap();
    let old = db.pool().await;
    rename(&old, users[0].id, "on the former primary").await;
    // Every source connects again, in the URL's order.
    assert!(terminate_source(&new, source).await >= 1);
    wait_reconnected(&apps, 3).await;
    // Cached again everywhere, from the new primary (the pool's); then changed there.
    all_see(&apps, &tokens[0], "before").await;
    rename(&new, users[0].id, "after").await;
    all_see(&apps, &tokens[0], "after").await;
    let on_old: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(source.application_name())
            .fetch_one(&old)
            .await
            .unwrap();
    assert_eq!(
        on_old, 0,
        "{source:?}: no source streams from the former primary"
    );
    old.close().await;
    new.close().await;
    apps.stop().await;
}

/// Every instance coherent after its source (the relay's, behind a relay) began delivering
/// `connections` times.
async fn wait_reconnected(apps: &Deployment, connections: u64) {
    for app in apps {
        wait_until(
            Duration::from_secs(30),
            "coherent after connecting again",
            || async {
                let seen = match apps.relay_connections() {
                    Some(n) => n,
                    None => {
                        metric(&app.metrics().await, "nearcache_source_connections_total") as u64
                    }
                };
                seen >= connections && coherent(app).await
            },
        )
        .await;
    }
}

/// The randomized checker across a promotion: writers rename users by SQL through the name
/// that follows the primary (retrying while there is none), readers read every instance at
/// random, and the primary crashes in the middle while the standby, synchronous so that no
/// acknowledged commit is lost, is promoted. A read that began more than `CHECK_BOUND` after a
/// version was acknowledged must return it or a newer one.
async fn no_read_is_stale_across_a_promotion(source: Source) {
    use rand::{RngExt, SeedableRng};
    use std::sync::Arc;

    const CHECK_BOUND: Duration = Duration::from_secs(1);
    const RUN_FOR: Duration = Duration::from_secs(8);
    let seed_value: u64 = rand::random();
    println!("failover checker ({source:?}) seed {seed_value}");
    let (primary, standby, db, users) = pair(4).await;
    {
        // Synchronous: an acknowledged commit is on the standby too.
        let pool = db.pool().await;
        for sql in [
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
            "SELECT pg_reload_conf()",
        ] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
        }
        wait_until(BOUND, "the standby to be synchronous", || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                == 1
        })
        .await;
        pool.close().await;
    }
    let proxy = Proxy::start(&at(&primary)).await;
    let url = db.url().replace(&at(&primary), &proxy.addr.to_string());
    let writer = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect(&url)
        .await
        .unwrap();
    let apps = Arc::new(Deployment::start(&url, source, 3).await);
    let tokens: Arc<Vec<String>> = Arc::new(users.iter().map(|u| token(u.id, json!({}))).collect());
    let commits: Commits = Arc::default();
    let reads: Arc<std::sync::Mutex<Vec<Read>>> = Arc::default();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (u, user) in users.iter().enumerate() {
        let (commits, writer, id) = (commits.clone(), writer.clone(), user.id);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed_value ^ u as u64);
        tasks.push(tokio::spawn(async move {
            let mut version = 0u64;
            while start.elapsed() < RUN_FOR {
                version += 1;
                let renamed = sqlx::query("UPDATE users SET name = $2 WHERE id = $1")
                    .bind(id)
                    .bind(format!("v{version}"))
                    .execute(&writer)
                    .await;
                // Only an acknowledged commit counts; one in doubt may or may not be there.
                if renamed.is_ok() {
                    let mut commits = commits.lock().unwrap();
                    commits
                        .entry(u)
                        .or_default()
                        .push((version, Instant::now()));
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(5..60))).await;
            }
        }));
    }
    for r in 0..6 {
        let (apps, tokens, reads) = (apps.clone(), tokens.clone(), reads.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed_value.wrapping_add(1000 + r));
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < RUN_FOR {
                let (user, instance) = (
                    rng.random_range(0..tokens.len()),
                    rng.random_range(0..apps.len()),
                );
                let started = Instant::now();
                let (status, body) = apps[instance].get("/me", Some(&tokens[user])).await;
                // While there is no primary an answer may be 503: not a read.
                if status != 200 {
                    continue;
                }
                let version = body["user"]["name"]
                    .as_str()
                    .and_then(|n| n.strip_prefix('v'))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                reads.lock().unwrap().push(Read {
                    user,
                    instance,
                    started,
                    version,
                });
            }
        }));
    }
    tokio::time::sleep(RUN_FOR / 3).await;
    primary.cluster().crash().unwrap();
    proxy.retarget(at(&standby).parse().unwrap());
    standby.cluster().promote().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let commits = commits.lock().unwrap().clone();
    let reads = reads.lock().unwrap().clone();
    let after: usize = commits
        .values()
        .flatten()
        .filter(|(_, at)| *at > start + RUN_FOR / 2)
        .count();
    let stale = stale_reads(&commits, &reads, CHECK_BOUND);
    println!(
        "failover checker ({source:?}): {} reads, {} writes ({after} after the promotion), {} stale",
        reads.len(),
        commits.values().map(Vec::len).sum::<usize>(),
        stale.len()
    );
    assert!(reads.len() > 100 && after > 10, "the run did too little");
    assert!(
        stale.is_empty(),
        "stale reads: {:?}",
        &stale[..stale.len().min(5)]
    );
    writer.close().await;
    Arc::into_inner(apps)
        .expect("the tasks are done")
        .stop()
        .await;
}

for_each_source!(
    every_instance_follows_a_promoted_standby,
    a_multi_host_url_follows_the_primary_and_refuses_the_former_one,
    no_read_is_stale_across_a_promotion,
);
