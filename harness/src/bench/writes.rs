//! Write throughput on `users` with no nearcache, with the WAL source and with LISTEN.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nearcache_listener::Handler;

use super::latency::{spawn_source, Source};
use super::{plot, Ctx};
use crate::seed;

/// One statement at one concurrency: commits per second with no nearcache, with the WAL
/// source (table published, no trigger, a consumer decoding), and with the LISTEN source
/// (triggers, a listener draining).
pub(super) struct WriteRow {
    /// Postgres on one core, the bench process (writers' clients and the consumers) on the
    /// other, as a deployment keeps its instances off the database's CPUs.
    pub(super) pinned: bool,
    pub(super) statement: &'static str,
    pub(super) writers: usize,
    pub(super) none: f64,
    pub(super) wal: f64,
    pub(super) notify: f64,
    /// The most WAL the WAL source's slot held back during its arms, in bytes.
    pub(super) retained_max: i64,
}

/// How `users` is set up for an arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    None,
    Wal,
    Notify,
}

impl Arm {
    fn setup(self) -> &'static str {
        match self {
            Arm::None => "SELECT nearcache_detach('users')",
            Arm::Wal => "SELECT nearcache_attach('users', 'id', '{last_seen_at}', notify => false)",
            // As the reference service attaches it (sql/0004).
            Arm::Notify => "SELECT nearcache_attach('users', 'id', '{last_seen_at}')",
        }
    }
}

/// A handler that only counts: the consumers' work, without a cache.
#[derive(Default)]
struct Sink(AtomicU64);

impl Handler for Sink {
    fn bypass(&self) {}
    fn flush_all(&self) {}
    fn coherent(&self) {}
    fn invalidate(&self, _: &str, keys: &[String]) -> bool {
        self.0.fetch_add(keys.len() as u64, Ordering::Relaxed);
        true
    }
    fn flush_table(&self, _: &str) -> bool {
        true
    }
}

/// Write throughput on `users` in three arms, run A-B-C-C-B-A so that each runs once early and
/// once late (the table ages as it is written: dead tuples, HOT chains). Both consumers run in
/// every arm, as instances would, so that they take the same CPU from the writers in each.
pub(super) async fn write_throughput(url: &str, each: Duration) -> Result<Vec<WriteRow>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(url)
        .await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sink = Arc::new(Sink::default());
    spawn_source(Source::Wal, url, sink.clone(), stop_rx.clone())?;
    spawn_source(Source::Notify, url, sink.clone(), stop_rx)?;
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
    for pinned in [false, true] {
        let _pins = if pinned {
            Some(Pins::apply(&pool).await?)
        } else {
            None
        };
        for (label, sql) in statements {
            for writers in [1usize, 8] {
                let mut rate: HashMap<&'static str, f64> = HashMap::new();
                let mut retained_max = 0;
                for arm in [
                    Arm::None,
                    Arm::Wal,
                    Arm::Notify,
                    Arm::Notify,
                    Arm::Wal,
                    Arm::None,
                ] {
                    sqlx::query(arm.setup()).execute(&pool).await?;
                    let sampler =
                        (arm == Arm::Wal).then(|| tokio::spawn(retained(pool.clone(), each)));
                    *rate.entry(arm.setup()).or_default() +=
                        writes(&pool, sql, writers, each).await? / 2.0;
                    if let Some(sampler) = sampler {
                        retained_max = retained_max.max(sampler.await??);
                    }
                }
                let row = WriteRow {
                    pinned,
                    statement: label,
                    writers,
                    none: rate[Arm::None.setup()],
                    wal: rate[Arm::Wal.setup()],
                    notify: rate[Arm::Notify.setup()],
                    retained_max,
                };
                eprintln!(
                "    {label}, {writers} writers{}: {:.0} tx/s with no nearcache, {:.0} with the WAL source, {:.0} with LISTEN",
                if pinned { ", pinned" } else { "" },
                row.none, row.wal, row.notify
            );
                rows.push(row);
            }
        }
    }
    sqlx::query(Arm::Notify.setup()).execute(&pool).await?;
    let _ = stop_tx.send(true);
    pool.close().await;
    Ok(rows)
}

/// CPU pinning for a run: every process of the Postgres server on CPU 1 (new backends inherit
/// the postmaster's), this process (writers' clients, consumers) on CPU 0. Undone on drop.
struct Pins(Vec<u32>);

impl Pins {
    async fn apply(pool: &sqlx::PgPool) -> Result<Self> {
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(pool)
            .await?;
        let postmaster = ppid(backend as u32).context("the backend's parent")?;
        let mut server = vec![postmaster];
        for entry in std::fs::read_dir("/proc")? {
            let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if ppid(pid) == Some(postmaster) {
                server.push(pid);
            }
        }
        for pid in &server {
            taskset("1", *pid)?;
        }
        taskset("0", std::process::id())?;
        Ok(Self(server))
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        for pid in self.0.iter().copied().chain([std::process::id()]) {
            let _ = taskset("0-1", pid);
        }
    }
}

/// The parent of `pid`, from /proc.
fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command may hold spaces and parentheses: fields start after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Pins every thread of `pid` to `cpus`.
fn taskset(cpus: &str, pid: u32) -> Result<()> {
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .context("taskset (util-linux)")?;
    anyhow::ensure!(
        out.status.success() || !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "taskset -c {cpus} {pid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The most WAL the WAL source's slot holds back (`pg_current_wal_lsn() -
/// confirmed_flush_lsn`), sampled every 100 ms for `each`.
async fn retained(pool: sqlx::PgPool, each: Duration) -> Result<i64> {
    let start = Instant::now();
    let mut max = 0;
    while start.elapsed() < each {
        let behind: Option<i64> = sqlx::query_scalar(
            "SELECT max(pg_current_wal_lsn() - confirmed_flush_lsn)::int8 FROM pg_replication_slots
              WHERE slot_name LIKE 'nearcache\\_%'",
        )
        .fetch_one(&pool)
        .await?;
        max = max.max(behind.unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(max)
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
            let mut rng = rand::make_rng::<rand::rngs::StdRng>();
            while start.elapsed() < each {
                let key = seed::user_id(rand::RngExt::random_range(&mut rng, 1..=seed::USERS));
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

/// What `wal_level = logical` itself costs a writer: the same profile updates, with no
/// nearcache, on this cluster (logical) and on a second one made with `wal_level = replica`,
/// arms A-B-B-A. Rows: (writers, logical commits/s, replica commits/s).
pub(super) fn wal_level_cost(
    rt: &tokio::runtime::Runtime,
    url: &str,
    each: Duration,
) -> Result<Vec<(usize, f64, f64)>> {
    let dir = crate::workspace_root().join("target").join("bench-replica");
    let replica = xtask::Cluster::new(&dir)?;
    replica.up()?;
    replica.configure("wal_level = replica")?;
    replica.down()?;
    replica.up()?;
    let replica_url = replica.url()?;
    let result = crate::migrate(&replica_url).and_then(|()| {
        rt.block_on(async {
            seed::seed(&replica_url).await?;
            let logical = sqlx::postgres::PgPoolOptions::new()
                .max_connections(10)
                .connect(url)
                .await?;
            let other = sqlx::postgres::PgPoolOptions::new()
                .max_connections(10)
                .connect(&replica_url)
                .await?;
            let level: String = sqlx::query_scalar("SHOW wal_level")
                .fetch_one(&other)
                .await?;
            anyhow::ensure!(
                level == "replica",
                "the second cluster runs wal_level = {level}"
            );
            let sql = "UPDATE users SET name = 'w' || $2 WHERE id = $1::uuid";
            for pool in [&logical, &other] {
                sqlx::query(Arm::None.setup()).execute(pool).await?;
            }
            let mut rows = Vec::new();
            for writers in [1usize, 8] {
                let (mut a, mut b) = (0.0, 0.0);
                for on_logical in [true, false, false, true] {
                    let pool = if on_logical { &logical } else { &other };
                    let rate = writes(pool, sql, writers, each).await? / 2.0;
                    if on_logical {
                        a += rate;
                    } else {
                        b += rate;
                    }
                }
                eprintln!(
                    "    {writers} writers: {a:.0} tx/s at wal_level = logical, {b:.0} at replica"
                );
                rows.push((writers, a, b));
            }
            sqlx::query(Arm::Notify.setup()).execute(&logical).await?;
            anyhow::Ok(rows)
        })
    });
    let _ = replica.destroy();
    result
}

/// Measures writer throughput with the in-process consumers (a stand-in) and writes its table
/// and chart.
pub(super) fn section(ctx: &Ctx, report: &mut String) -> Result<()> {
    let Ctx {
        url,
        rt,
        args,
        charts,
        ..
    } = ctx;
    eprintln!("==> write throughput: no nearcache, WAL source, LISTEN");
    let writes = rt.block_on(write_throughput(
        url,
        Duration::from_secs(args.write_seconds),
    ))?;
    writeln!(report, "\n## Write throughput on users, in-process consumers (a stand-in)\n\n{} s per run, random users, arms run A-B-C-C-B-A and averaged. Both consumers (a WAL source and a LISTEN source, in the bench process) run during every arm. Unpinned, everything shares both cores; pinned, every Postgres process runs on CPU 1 and the bench process (writers' clients and consumers) on CPU 0, as instances would run off the database's CPUs.\n", args.write_seconds)?;
    let mut bars = Vec::new();
    for w in &writes {
        let name = format!(
            "{}{}, {} writer(s)",
            w.statement,
            if w.pinned { ", pinned" } else { "" },
            w.writers
        );
        for (arm, v) in [("none", w.none), ("WAL", w.wal), ("LISTEN", w.notify)] {
            bars.push((format!("{name}: {arm}"), v));
        }
    }
    plot::bars(
        &charts.join("writes.svg"),
        "Writer throughput per source",
        "transactions/s",
        &bars,
    )?;
    writeln!(report, "![writer throughput](bench/writes.svg)\n")?;
    writeln!(report, "| statement | writers | no nearcache (tx/s) | WAL source (tx/s) | LISTEN (tx/s) | WAL x none | LISTEN x none | WAL held back (max) |\n|---|---|---|---|---|---|---|---|")?;
    for w in &writes {
        writeln!(
            report,
            "| {}{} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} MB |",
            w.statement,
            if w.pinned { ", pinned" } else { "" },
            w.writers,
            w.none,
            w.wal,
            w.notify,
            w.wal / w.none,
            w.notify / w.none,
            w.retained_max as f64 / 1e6
        )?;
    }
    Ok(())
}

/// Measures what `wal_level = logical` costs a writer against `replica`, and writes its table.
pub(super) fn wal_level_section(ctx: &Ctx, report: &mut String) -> Result<()> {
    let Ctx { url, rt, args, .. } = ctx;
    eprintln!("==> what wal_level = logical costs a writer, against replica (two clusters)");
    let rows = wal_level_cost(rt, url, Duration::from_secs(args.write_seconds))?;
    writeln!(report, "\n## The cost of wal_level = logical\n\nProfile updates with no nearcache, {} s per run, on this cluster (wal_level = logical) and on a second one made alike but with wal_level = replica, arms A-B-B-A.\n", args.write_seconds)?;
    writeln!(
        report,
        "| writers | logical (tx/s) | replica (tx/s) | logical x replica |\n|---|---|---|---|"
    )?;
    for (writers, logical, replica) in rows {
        writeln!(
            report,
            "| {writers} | {logical:.0} | {replica:.0} | {:.2} |",
            logical / replica
        )?;
    }
    Ok(())
}
