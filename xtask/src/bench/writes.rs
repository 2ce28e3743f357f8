//! Write throughput on `users` with the notification triggers and without.

use std::time::{Duration, Instant};

use anyhow::Result;
use rand::SeedableRng;

use crate::seed;

/// One statement at one concurrency, with the triggers attached and detached.
pub(super) struct WriteRow {
    pub(super) statement: &'static str,
    pub(super) writers: usize,
    /// Commits per second without the triggers.
    pub(super) without: f64,
    /// Commits per second with the triggers.
    pub(super) with: f64,
}

/// The triggers attached as the reference service attaches them (sql/0004).
const ATTACH_USERS: &str = "SELECT nearcache_attach('users', 'id', '{last_seen_at}')";

/// Write throughput on `users`, triggers attached against detached, arms A-B-B-A.
pub(super) async fn write_throughput(url: &str, each: Duration) -> Result<Vec<WriteRow>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(url)
        .await?;
    // A listener drains notifications, as instances would.
    let mut drain = sqlx::postgres::PgListener::connect_with(&pool).await?;
    drain.listen("nearcache").await?;
    let drainer = tokio::spawn(async move { while drain.recv().await.is_ok() {} });
    let statements = [
        (
            "UPDATE users SET name (profile)",
            "UPDATE users SET name = 'w' || $2 WHERE id = $1::uuid",
        ),
        (
            "UPDATE users SET last_seen_at",
            "UPDATE users SET last_seen_at = now() + ($2 || ' ms')::interval WHERE id = $1::uuid",
        ),
    ];
    let mut rows = Vec::new();
    for (label, sql) in statements {
        for writers in [1usize, 8] {
            // A, B, B, A: the table ages as it is written (dead tuples, HOT chains), so each
            // arm runs once early and once late.
            let (mut without, mut with) = (0.0, 0.0);
            for attached in [false, true, true, false] {
                let sql_attach = if attached {
                    ATTACH_USERS
                } else {
                    "SELECT nearcache_detach('users')"
                };
                sqlx::query(sql_attach).execute(&pool).await?;
                let rate = writes(&pool, sql, writers, each).await? / 2.0;
                if attached {
                    with += rate;
                } else {
                    without += rate;
                }
            }
            sqlx::query(ATTACH_USERS).execute(&pool).await?;
            eprintln!(
                "    {label}, {writers} writers: {without:.0} tx/s without triggers, {with:.0} with"
            );
            rows.push(WriteRow {
                statement: label,
                writers,
                without,
                with,
            });
        }
    }
    drainer.abort();
    pool.close().await;
    Ok(rows)
}

async fn writes(
    pool: &sqlx::PgPool,
    sql: &'static str,
    writers: usize,
    each: Duration,
) -> Result<f64> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut rng = rand::rngs::StdRng::from_entropy();
            while start.elapsed() < each {
                let key = seed::user_id(rand::Rng::gen_range(&mut rng, 1..=seed::USERS));
                sqlx::query(sql)
                    .bind(key)
                    .bind(n.to_string())
                    .execute(&pool)
                    .await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}
