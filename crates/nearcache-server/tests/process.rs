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

/// Runs the binary to completion with `args` and `env` (nothing inherited that could change
/// the outcome); its exit code and stderr lines.
fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, Vec<String>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_nearcache-server"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    (
        out.status.code().unwrap_or(-1),
        stderr.lines().map(str::to_string).collect(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_bad_configuration_exits_2_with_one_line_naming_what_was_set() {
    let url = "postgres://localhost/db";
    // (flags, environment, what the one line must say)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 6] = [
        (
            &["--database-url", "foo", "--jwt-secret", "s"],
            &[],
            "--database-url: invalid database url",
        ),
        (
            &["--jwt-secret", "s"],
            &[("DATABASE_URL", "foo")],
            "DATABASE_URL: invalid database url",
        ),
        (
            &["--database-url", url, "--jwt-secret", "s"],
            &[("NEARCACHE_CACHE_TTL", "soon")],
            "invalid value 'soon' for NEARCACHE_CACHE_TTL",
        ),
        (
            &[
                "--database-url",
                url,
                "--jwt-secret",
                "s",
                "--cache-ttl",
                "soon",
            ],
            &[],
            "invalid value 'soon' for '--cache-ttl",
        ),
        (
            &["--database-url", url],
            &[],
            "give exactly one of --jwt-secret",
        ),
        (
            &["--database-url", url, "--jwt-secret", "s"],
            &[("RUST_LOG", "x=y=z")],
            "RUST_LOG: invalid filter",
        ),
    ];
    for (args, env, want) in cases {
        let (code, lines, _) = run(args, env);
        assert_eq!(code, 2, "{args:?} {env:?}: {lines:?}");
        assert_eq!(
            lines.len(),
            1,
            "{args:?} {env:?}: exactly one line: {lines:?}"
        );
        assert!(lines[0].contains(want), "{args:?} {env:?}: {lines:?}");
    }
    let (code, _, help) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(
        help.contains("RUST_LOG") && help.contains("migrate"),
        "{help}"
    );
}

#[tokio::test]
async fn migrate_applies_the_migrations_and_exits() {
    let server = std::env::var("DATABASE_URL").expect("cargo xtask test sets DATABASE_URL");
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&server)
        .await
        .unwrap();
    let name = format!("nc_migrate_{}", std::process::id());
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .unwrap();
    }
    let url = format!("{}/{name}", server.rsplit_once('/').unwrap().0);
    let all = nearcache_pg::MIGRATOR.iter().count();
    let (code, lines, out) = run(&["migrate", "--database-url", &url], &[]);
    assert_eq!(code, 0, "{lines:?}");
    assert!(out.contains(&format!("({all} new)")), "{out}");
    let (code, _, out) = run(&["migrate"], &[("DATABASE_URL", &url)]);
    assert_eq!(code, 0);
    assert!(out.contains("(0 new)"), "idempotent: {out}");
    let pool = PgPoolOptions::new().connect(&url).await.unwrap();
    let attached: i64 = sqlx::query_scalar("SELECT count(*) FROM nearcache_attached")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        attached, 3,
        "the reference tables and the relay probe's table are attached"
    );
    pool.close().await;
    let (code, lines, _) = run(
        &["migrate", "--database-url", "postgres://127.0.0.1:1/x"],
        &[],
    );
    assert_eq!(code, 1, "an unreachable database is an error: {lines:?}");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await
    .unwrap();
}
