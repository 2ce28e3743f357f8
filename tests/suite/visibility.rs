//! A change is applied when new snapshots can see it, not before.
//!
//! A commit whose record is flushed is decodable from the WAL at once, but it becomes visible
//! only after the committing backend has been removed from the proc array; with a synchronous
//! standby, only once the standby has answered. The test holds a commit in that state
//! deterministically: its private cluster names a synchronous standby that does not exist, the
//! database commits locally by default, and one writer asks for `synchronous_commit = on`. Its
//! COMMIT is then flushed, decodable and invisible until the test cancels the wait, which makes
//! it visible locally (with a warning). An instance must keep serving the old row meanwhile
//! (nobody can see the new one), then serve the new row, and never the old one after it.

use std::time::Duration;

use nearcache_tests::app::token;
use nearcache_tests::{wait_until, PrivateCluster, TestDb};
use serde_json::json;
use sqlx::Connection;

use crate::support::{exec, seed, Deployment, Source};

/// How long an instance may take to serve a change once it is visible (the heartbeat bound,
/// with slack for a loaded machine).
const BOUND: Duration = Duration::from_secs(5);

async fn a_commit_is_applied_once_visible_not_when_decoded(source: Source) {
    let private = PrivateCluster::start();
    private
        .cluster()
        .configure("synchronous_standby_names = 'nobody_answers'\nsynchronous_commit = local")
        .unwrap();
    private.cluster().down().unwrap();
    private.cluster().up().unwrap();
    let db = TestDb::on(&private.url()).await;
    let pool = db.pool().await;
    // WAL-only attachments: with the LISTEN triggers, the held commit would also hold NOTIFY's
    // cluster-wide commit lock while it waits for the standby, and every other writer of an
    // attached table (the sentinel below, the relay's probes) would wait behind it.
    exec(
        &pool,
        "SELECT nearcache_attach('organizations', 'id', notify => false);
         SELECT nearcache_attach('users', 'id', '{last_seen_at}', notify => false);
         SELECT nearcache_attach('nearcache_probe', 'instance', notify => false);",
    )
    .await;
    let (_, users) = seed(&pool, 2).await;
    let (held, sentinel) = (users[0].id, users[1].id);
    let apps = Deployment::start(db.url(), source, 2).await;
    let (t_held, t_sentinel) = (token(held, json!({})), token(sentinel, json!({})));
    for app in &apps {
        assert_eq!(
            app.get("/me", Some(&t_held)).await.1["user"]["name"],
            "User 0"
        );
    }

    // The writer that waits for the standby: flushed, decodable, not visible.
    let mut writer = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut writer)
        .await
        .unwrap();
    exec_on(&mut writer, "SET synchronous_commit = on").await;
    let update = format!("UPDATE users SET name = 'Visible later' WHERE id = '{held}'");
    let write = tokio::spawn(async move {
        let done = sqlx::raw_sql(sqlx::AssertSqlSafe(update))
            .execute(&mut writer)
            .await;
        (done, writer)
    });
    wait_until(
        Duration::from_secs(10),
        "the writer to wait for the synchronous standby",
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT coalesce(wait_event = 'SyncRep', false) FROM pg_stat_activity WHERE pid = $1",
            )
            .bind(pid)
            .fetch_one(&pool)
            .await
            .unwrap()
        },
    )
    .await;
    // A commit after it in the WAL, visible at once: once an instance serves it, the source
    // has decoded the held commit too.
    exec(
        &pool,
        &format!("UPDATE users SET name = 'Sentinel' WHERE id = '{sentinel}'"),
    )
    .await;
    for app in &apps {
        wait_until(BOUND, "the sentinel to be served", || async {
            app.get("/me", Some(&t_sentinel)).await.1["user"]["name"] == "Sentinel"
        })
        .await;
        // The old name is right: no snapshot can see the new one yet. Reading it now is what
        // stores the old row in a cache that applied the held commit when it decoded it.
        assert_eq!(
            app.get("/me", Some(&t_held)).await.1["user"]["name"],
            "User 0",
            "{source:?}: a change served before anyone can see it"
        );
    }
    let visible: String = sqlx::query_scalar("SELECT name FROM users WHERE id = $1")
        .bind(held.as_uuid())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(visible, "User 0", "the held commit is invisible");

    // The wait is cancelled: the commit becomes visible locally.
    let cancelled: bool = sqlx::query_scalar("SELECT pg_cancel_backend($1)")
        .bind(pid)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(cancelled);
    let (done, _writer) = write.await.unwrap();
    done.expect("the cancelled wait leaves the write committed locally");
    for (i, app) in apps.iter().enumerate() {
        wait_until(
            BOUND,
            &format!("{source:?}: instance {i} to serve the now visible name"),
            || async { app.get("/me", Some(&t_held)).await.1["user"]["name"] == "Visible later" },
        )
        .await;
    }
    // And never the old one again.
    for _ in 0..20 {
        for app in &apps {
            assert_eq!(
                app.get("/me", Some(&t_held)).await.1["user"]["name"],
                "Visible later"
            );
        }
    }
    apps.stop().await;
}

async fn exec_on(conn: &mut sqlx::PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await
        .unwrap();
}

// The WAL source and the relay (which reads the WAL) need the gate. LISTEN has it from
// Postgres, which delivers a notification once its transaction is visible.
mod wal {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_commit_is_applied_once_visible_not_when_decoded() {
        super::a_commit_is_applied_once_visible_not_when_decoded(crate::support::Source::Wal).await;
    }
}

mod nats {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_commit_is_applied_once_visible_not_when_decoded() {
        super::a_commit_is_applied_once_visible_not_when_decoded(crate::support::Source::Nats)
            .await;
    }
}
