//! The ephemeral cluster of `cargo xtask db`: idempotent start, recovery after SIGKILL.

use std::process::Command;
use std::time::Duration;

use nearcache_tests::{wait_until, PrivateCluster};

async fn answers(url: &str) -> bool {
    match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
    {
        Ok(pool) => {
            let ok = sqlx::query("SELECT 1").execute(&pool).await.is_ok();
            pool.close().await;
            ok
        }
        Err(_) => false,
    }
}

#[tokio::test]
async fn up_is_idempotent_and_recovers_from_a_killed_postmaster() {
    let private = PrivateCluster::start();
    let cluster = private.cluster();
    let url = private.url();
    assert!(answers(&url).await);
    // A second `up` starts nothing and keeps the URL.
    assert!(!cluster.up().unwrap());
    assert_eq!(cluster.url().unwrap(), url);

    let pid = cluster.postmaster_pid().expect("a running postmaster");
    assert!(Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    wait_until(Duration::from_secs(10), "the postmaster to die", || {
        std::future::ready(!cluster.is_running())
    })
    .await;
    // The pid file is stale now, and orphaned backends may linger a moment: `up` copes.
    assert!(cluster.up().unwrap(), "up starts the server again");
    assert_eq!(cluster.url().unwrap(), url);
    assert!(answers(&url).await);
    assert!(cluster.down().unwrap());
    assert!(!cluster.is_running());
}
