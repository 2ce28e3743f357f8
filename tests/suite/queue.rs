//! Postgres' notification queue is the cluster's: a LISTEN session that stops reading holds it
//! back for everyone, and once it is full every commit that notifies fails. LISTEN instances
//! watch it: a gauge of its usage, and past a limit a problem that bypasses until it drains.

use std::time::Duration;

use nearcache_server::SourceKind;
use nearcache_tests::app::spawn_app_with;
use nearcache_tests::{wait_until, TestDb};
use sqlx::Connection;

use crate::support::exec;

/// The value of an unlabelled metric.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Notifications of about 7 kB each on a channel nobody acts on: a queue page each.
async fn fill(pool: &sqlx::PgPool, n: usize) {
    for _ in 0..n {
        exec(
            pool,
            "SELECT pg_notify('nearcache_queue_filler', repeat('x', 7000))",
        )
        .await;
    }
}

/// A listener left in a transaction stops reading: the other instances' gauge shows the queue
/// growing behind it, an instance whose limit it passes bypasses and says why, and when the
/// session reads again the queue drains and that instance serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_listener_is_seen_in_the_queue_gauge_and_past_the_limit_bypasses() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let watching = spawn_app_with(db.url(), |s| s.source = SourceKind::Notify).await;
    let strict = spawn_app_with(db.url(), |s| {
        s.source = SourceKind::Notify;
        s.notify_queue_limit = 1e-5;
        s.check_interval = Duration::from_millis(300);
    })
    .await;
    watching.ready("coherent").await;
    strict.ready("coherent").await;

    // A session that listens, then sits in a transaction: it reads nothing until it ends.
    let mut stalled = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut stalled)
        .await
        .unwrap();
    // LISTEN takes effect when its transaction commits: alone, before the one left open.
    sqlx::raw_sql("LISTEN nearcache_queue_filler")
        .execute(&mut stalled)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; SELECT 1")
        .execute(&mut stalled)
        .await
        .unwrap();
    fill(&pool, 200).await;
    wait_until(
        Duration::from_secs(5),
        "the gauge to show the held queue",
        || async {
            metric(
                &watching.metrics().await,
                "nearcache_source_notify_queue_usage",
            ) > 1e-5
        },
    )
    .await;
    assert_eq!(
        watching.get("/healthz", None).await.1["cache"],
        "coherent",
        "under its limit an instance only watches"
    );
    wait_until(
        Duration::from_secs(5),
        "bypass past the limit, saying why",
        || async {
            let health = strict.get("/healthz", None).await.1;
            health["cache"] == "bypass"
                && health["problem"].as_str().is_some_and(|p| {
                    p.contains("notification queue is") && p.contains("pg_terminate_backend")
                })
        },
    )
    .await;

    // The remedy the problem names: the session is terminated. More notifications make
    // Postgres move the queue's tail past what the remaining listeners have read.
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&pool)
        .await
        .unwrap();
    wait_until(Duration::from_secs(10), "the queue to drain", || async {
        fill(&pool, 10).await;
        metric(
            &watching.metrics().await,
            "nearcache_source_notify_queue_usage",
        ) < 1e-5
    })
    .await;
    strict.ready("coherent").await;
    drop(stalled);
    watching.stop().await.unwrap();
    strict.stop().await.unwrap();
}
