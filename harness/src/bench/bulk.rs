//! A bulk UPDATE then one row: the two statements the fleet bench runs, and the floor under
//! what it measures for anything fed by logical decoding (`pg_recvlogical`, decoding nothing).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::RngExt;

use crate::seed;

/// Renames every seeded user but `key` in one statement.
pub(super) async fn bulk(pool: &sqlx::PgPool, key: &str, run: u64) -> Result<()> {
    sqlx::query(
        "UPDATE users SET name = 'bulk ' || $1 || ' ' || id
          WHERE email LIKE '%@demo.example' AND id <> $2::uuid",
    )
    .bind(format!("{run:016x}"))
    .bind(key)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn rename(pool: &sqlx::PgPool, key: &str, name: &str) -> Result<()> {
    sqlx::query("UPDATE users SET name = $2 WHERE id = $1::uuid")
        .bind(key)
        .bind(name)
        .execute(pool)
        .await?;
    Ok(())
}

/// The floor under "one row after a bulk UPDATE" for anything fed by logical decoding, the
/// relay included: `pg_recvlogical` on the nearcache publication, which decodes nothing. The
/// same bulk, then the same rename; from the rename's commit to its new name in
/// `pg_recvlogical`'s output, `rounds` times.
pub(super) async fn recvlogical_floor(url: &str, rounds: usize) -> Result<Vec<Duration>> {
    use tokio::io::AsyncReadExt;
    let bin = xtask::find_pg_bin().context("no PostgreSQL binaries (pg_recvlogical)")?;
    let slot = "nearcache_bench_floor";
    let mut child =
        tokio::process::Command::from(super::deployed::recvlogical(&bin, url, slot, "-"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting pg_recvlogical")?;
    let mut out = child.stdout.take().context("pg_recvlogical's output")?;
    // The name looked for, and when it was read.
    let found: Arc<Mutex<(Vec<u8>, Option<Instant>)>> = Arc::default();
    let reader = {
        let found = found.clone();
        tokio::spawn(async move {
            let (mut window, mut chunk) = (Vec::new(), vec![0u8; 1 << 16]);
            while let Ok(n @ 1..) = out.read(&mut chunk).await {
                let at = Instant::now();
                window.extend_from_slice(&chunk[..n]);
                let mut f = found.lock().unwrap();
                if f.1.is_none() && !f.0.is_empty() && window.windows(f.0.len()).any(|w| w == f.0) {
                    f.1 = Some(at);
                }
                // Keep enough to find a name cut between two reads.
                let keep = window.len().saturating_sub(128);
                window.drain(..keep);
            }
        })
    };
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    let streaming = Instant::now() + Duration::from_secs(30);
    while !sqlx::query_scalar::<_, bool>(
        "SELECT coalesce(bool_or(active), false) FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_one(&pool)
    .await?
    {
        if Instant::now() > streaming {
            bail!("pg_recvlogical did not start streaming in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut floor = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let run: u64 = rand::random();
        let key = seed::user_id(rand::rng().random_range(1..=seed::USERS));
        bulk(&pool, &key, run).await?;
        let name = format!("floor {run:016x}");
        *found.lock().unwrap() = (name.clone().into_bytes(), None);
        rename(&pool, &key, &name).await?;
        let committed = Instant::now();
        let deadline = committed + Duration::from_secs(10);
        loop {
            if let Some(at) = found.lock().unwrap().1 {
                floor.push(at.saturating_duration_since(committed));
                break;
            }
            if Instant::now() > deadline {
                bail!("pg_recvlogical did not show the rename within 10 s");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    drop(child);
    reader.abort();
    pool.close().await;
    super::deployed::drop_slot(url, slot).await?;
    Ok(floor)
}
