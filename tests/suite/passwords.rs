//! Passwords on the WAL source's connections, its own replication client's included: SCRAM-SHA-256
//! and MD5, without TLS and over it, against a private cluster whose pg_hba.conf asks for them.
//! (A wrong password is refused on the control connection, which opens first: pg_hba.conf
//! cannot ask a logical replication connection for another method than an ordinary one to the
//! same database.)

use std::time::Duration;

use nearcache_tests::app::{spawn_app_with, token};
use nearcache_tests::{wait_until, PrivateCluster, TestDb};
use serde_json::json;

use crate::support::{seed, update, Source};
use crate::tls::{authority, serving_tls};

/// `kind` is `host` or `hostssl`: `scram_user` by SCRAM, `md5_user` by MD5, everyone else
/// trusted. (A logical replication connection matches the database's lines, not
/// `replication`'s.)
fn hba(kind: &str) -> String {
    [
        "all scram_user scram-sha-256",
        "all md5_user md5",
        "all all trust",
        "replication all trust",
    ]
    .iter()
    .map(|line| {
        let (what, method) = line.rsplit_once(' ').unwrap();
        format!("{kind} {what} 127.0.0.1/32 {method}\n")
    })
    .collect()
}

/// `url` for `user` with `password`.
fn as_user(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}")
}

/// A private cluster asking for passwords (`kind` of pg_hba line), its roles, a database.
async fn cluster_with_passwords(private: &PrivateCluster, kind: &str, params: &str) -> TestDb {
    private.cluster().set_hba(&hba(kind)).unwrap();
    let db = TestDb::on(&format!("{}{params}", private.url())).await;
    let pool = db.pool().await;
    for sql in [
        "SELECT pg_reload_conf()",
        "CREATE ROLE scram_user SUPERUSER LOGIN PASSWORD 'scram-secret'",
        "SET password_encryption = 'md5'",
        "CREATE ROLE md5_user SUPERUSER LOGIN PASSWORD 'md5-secret'",
        "RESET password_encryption",
    ] {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }
    pool.close().await;
    db
}

/// The WAL source of an instance on `db` as `user`/`password` streams (its walsender is that
/// user's, over TLS when `tls`), the cache becomes coherent and an update reaches it.
async fn streams_as(db: &TestDb, user: &str, password: &str, tls: bool) {
    let pool = db.pool().await;
    let url = as_user(db.url(), user, password);
    let app = spawn_app_with(&url, |s| s.source = Source::Wal.kind()).await;
    wait_until(Duration::from_secs(20), "a coherent cache", || async {
        app.get("/healthz", None).await.1["cache"] == "coherent"
    })
    .await;
    let (by, over_tls): (String, bool) = sqlx::query_as(
        "SELECT r.usename::text, s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)
          WHERE r.application_name = 'nearcache-wal'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((by.as_str(), over_tls), (user, tls), "who streams, how");
    let (_, users) = seed(&pool, 1).await;
    let t = token(users[0].id, json!({}));
    assert_eq!(app.get("/me", Some(&t)).await.0, 200);
    update(&pool, "users", users[0].id, "name = 'Authenticated'").await;
    wait_until(
        Duration::from_secs(5),
        "the update in the cache",
        || async { app.get("/me", Some(&t)).await.1["user"]["name"] == "Authenticated" },
    )
    .await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scram_and_md5_passwords_work() {
    let private = PrivateCluster::start();
    let db = cluster_with_passwords(&private, "host", "").await;
    streams_as(&db, "scram_user", "scram-secret", false).await;
    streams_as(&db, "md5_user", "md5-secret", false).await;
}

/// Over TLS, a server that offers SCRAM with channel binding takes a client that says it cannot
/// bind (and would refuse one that said it could but thought the server could not).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scram_works_over_tls() {
    let ca = authority("nearcache test CA");
    let private = serving_tls(&ca, "localhost");
    let db = cluster_with_passwords(&private, "hostssl", "?sslmode=require").await;
    streams_as(&db, "scram_user", "scram-secret", true).await;
    streams_as(&db, "md5_user", "md5-secret", true).await;
}
