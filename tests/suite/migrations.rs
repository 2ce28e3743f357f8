//! Live migrations under a running service: Postgres invalidates a prepared statement's plan
//! when a table it reads changes, and refuses to run one whose result type changed (`0A000
//! cached plan must not change result type`). Every pooled connection keeps its statements, so
//! without a re-prepare each one would fail every request from then on.

use nearcache_server::CacheMode;
use nearcache_tests::app::{spawn_app_with, token, App};
use nearcache_tests::TestDb;
use serde_json::json;

use crate::support::{exec, seed};

/// Reads `/me` through every token `rounds` times, eight at once (so that every connection of
/// a small pool runs the statement), and returns the statuses that were not 200.
async fn read_all(app: &App, tokens: &[String], rounds: usize) -> Vec<(u16, String)> {
    let mut failed = Vec::new();
    for _ in 0..rounds {
        for chunk in tokens.chunks(8) {
            let answers =
                futures_util::future::join_all(chunk.iter().map(|t| app.get("/me", Some(t)))).await;
            for (status, body) in answers {
                if status != 200 {
                    failed.push((status, body.to_string()));
                }
            }
        }
    }
    failed
}

/// A column's type changed as the reference schema's own migration must change it: its
/// `updated_at` trigger names the column in its WHEN clause, which Postgres will not let an
/// ALTER TYPE change, so it is dropped and made again in the same transaction.
fn retyped(table: &str, column: &str, to: &str) -> String {
    let watched = match table {
        "users" => "id, org_id, email, name, active, created_at",
        _ => "id, name, plan, created_at",
    };
    let old = watched.replace(", ", ", OLD.").replacen("id", "OLD.id", 1);
    let new = watched.replace(", ", ", NEW.").replacen("id", "NEW.id", 1);
    format!(
        "BEGIN;
         DROP TRIGGER {table}_touch_updated_at ON {table};
         ALTER TABLE {table} ALTER COLUMN {column} TYPE {to};
         CREATE TRIGGER {table}_touch_updated_at BEFORE UPDATE ON {table} FOR EACH ROW
             WHEN (({old}) IS DISTINCT FROM ({new}))
             EXECUTE FUNCTION nearcache_touch_updated_at();
         COMMIT;"
    )
}

/// Each served column's type changed, a column added and one dropped that the query does not
/// name, while the service runs with the cache off (every request reads the database): no
/// request fails, and the re-prepares are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_column_type_change_under_load_fails_no_request() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    // The WAL's deployment, the default: no nearcache trigger. (Under LISTEN the attached
    // update trigger's WHEN names the watched columns, and Postgres refuses to change the type
    // of a column a trigger's WHEN names: see README, "Migrations".)
    exec(&pool, "SELECT nearcache_set_source('wal')").await;
    let (_, users) = seed(&pool, 8).await;
    let tokens: Vec<String> = users.iter().map(|u| token(u.id, json!({}))).collect();
    let app = spawn_app_with(db.url(), |s| {
        s.cache = CacheMode::Off;
        s.db_pool_size = 4;
    })
    .await;
    assert!(read_all(&app, &tokens, 4).await.is_empty(), "before");

    for (step, ddl) in [
        &retyped("users", "name", "varchar(200)"),
        &retyped("users", "email", "varchar(320)"),
        &retyped("organizations", "name", "varchar(200)"),
        &retyped("organizations", "plan", "varchar(50)"),
        "ALTER TABLE users ADD COLUMN nickname text",
        "ALTER TABLE users DROP COLUMN nickname",
    ]
    .into_iter()
    .enumerate()
    {
        exec(&pool, ddl).await;
        let failed = read_all(&app, &tokens, 2).await;
        assert!(failed.is_empty(), "after {ddl}: {failed:?}");
        let (status, body) = app
            .patch_me(&tokens[0], &json!({ "name": format!("after step {step}") }))
            .await;
        assert_eq!(status, 200, "PATCH /me after {ddl}: {body}");
    }
    let metrics = app.metrics().await;
    let replans: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("nearcache_db_replans_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("nearcache_db_replans_total in /metrics");
    assert!(replans >= 1.0, "re-prepares counted: {replans}");
    app.stop().await.unwrap();
}
