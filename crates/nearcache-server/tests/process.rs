//! The server binary as a process: killed with SIGKILL while it streams from the WAL, it leaves
//! no replication slot behind (its slot is temporary), so a dead instance retains no WAL.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// Kills the child when dropped, even if the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A new, migrated database on the server of `server`; its URL and a pool on it.
async fn fresh_database(server: &str) -> (String, PgPool) {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(server)
        .await
        .expect("DATABASE_URL (cargo xtask test sets it) must reach a server");
    let name = format!("nc_process_{}", std::process::id());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let base = server.rsplit_once('/').unwrap().0;
    let url = format!("{base}/{name}");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    nearcache_pg::MIGRATOR.run(&pool).await.unwrap();
    (url, pool)
}

async fn slots(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn eventually(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_killed_instance_leaves_no_slot() {
    let Ok(server) = std::env::var("DATABASE_URL") else {
        panic!("DATABASE_URL is not set: run the tests with `cargo xtask test`");
    };
    let (url, pool) = fresh_database(&server).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_nearcache-server"))
        .args([
            "--database-url",
            &url,
            "--jwt-secret",
            "s",
            "--source",
            "wal",
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Killed(child);
    let client = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/healthz");
    eventually(
        "the instance coherent on the WAL",
        Duration::from_secs(30),
        async || match client.get(&health).send().await {
            Ok(r) => {
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                body["cache"] == "coherent" && body["source"] == "wal"
            }
            Err(_) => false,
        },
    )
    .await;
    assert_eq!(slots(&pool).await, 1, "one slot while it streams");
    // No shutdown, no goodbye: the kernel closes its sockets.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    eventually("the slot gone", Duration::from_secs(30), async || {
        slots(&pool).await == 0
    })
    .await;
    pool.close().await;
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&server)
        .await
        .unwrap();
    let name = url.rsplit_once('/').unwrap().1;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}
