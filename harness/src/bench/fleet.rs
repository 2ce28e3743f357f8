//! Fleets: N lightweight in-process instances (each a cache with its own source and, behind
//! the relay, its own NATS connection) following one relay, against N instances each with a
//! direct LISTEN connection. Commit → eviction on all N, the writer's commit latency, the
//! connections Postgres serves for invalidation, and the CPU time its processes spend.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nearcache::{Cache, CacheConfig, Mode, TableHandler};
use nearcache_listener::{ListenerConfig, ListenerStatus};
use nearcache_nats::NatsConfig;
use nearcache_relay::{RelayConfig, RelaySource, RelayStatus};
use nearcache_wal::WalConfig;
use rand::RngExt;
use xtask::proxy::nats_url;

use super::latency::Timed;
use super::report::{ms, pct};
use super::{plot, Ctx};
use crate::seed;

/// One fleet's measure.
pub(super) struct Point {
    pub(super) arm: &'static str,
    pub(super) instances: usize,
    pub(super) connections: i64,
    pub(super) all: Vec<Duration>,
    pub(super) commits: Vec<Duration>,
    pub(super) postgres_cpu: Duration,
    pub(super) updates: usize,
    /// Updates some instance did not show as an eviction within 10 s (its source reconnected
    /// and flushed instead).
    pub(super) missed: usize,
    /// After an UPDATE of every seeded user in one statement, one user renamed: from that
    /// commit to its eviction on every instance, one per round (`None`: some round's did not
    /// come within 10 s).
    pub(super) after_bulk: Option<Vec<Duration>>,
}

/// CPU time (user + system) of every process named `postgres`, from /proc.
fn postgres_cpu() -> Duration {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((comm, rest)) = stat.split_once(") ") else {
                continue;
            };
            if !comm.ends_with("(postgres") {
                continue;
            }
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After the state field: utime is field 14 of stat, index 11 here; stime 12.
            if let (Some(u), Some(s)) = (fields.get(11), fields.get(12)) {
                total += u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0);
            }
        }
    }
    Duration::from_secs_f64(total as f64 / tick)
}

/// Measures a fleet of `n` behind a relay (`relay == true`) or on direct LISTEN connections.
pub(super) async fn fleet(
    url: &str,
    n: usize,
    relay: bool,
    updates: usize,
    bulk_rounds: usize,
) -> Result<Point> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let id = format!("{:08x}", rand::random::<u32>());
    let (stream, prefix) = (format!("NC_BENCH_{id}"), format!("ncbench.{id}"));
    if relay {
        let mut config = RelayConfig::new(RelaySource::Wal(WalConfig::new(url)?), nats_url(), "x");
        config.stream.clone_from(&stream);
        config.prefix.clone_from(&prefix);
        config.lease_ttl = None;
        tokio::spawn(nearcache_relay::run(
            config,
            RelayStatus::default(),
            stopped(stop_rx.clone()),
        ));
    }
    let mut instances = Vec::new();
    for _ in 0..n {
        let cache = Cache::new(CacheConfig {
            initial_mode: Mode::Bypass,
            ..CacheConfig::default()
        });
        let handler = Arc::new(Timed {
            inner: TableHandler::new(cache.clone(), nearcache_pg::tags::PRINCIPAL_TABLES),
            cache,
            seen: Mutex::default(),
            flushed: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        });
        let status = ListenerStatus::default();
        if relay {
            let mut config = NatsConfig::new(nats_url(), "x");
            config.stream.clone_from(&stream);
            config.prefix.clone_from(&prefix);
            config.connect_timeout = Duration::from_secs(30);
            tokio::spawn(nearcache_nats::run(
                config,
                handler.clone(),
                status,
                stopped(stop_rx.clone()),
            ));
        } else {
            tokio::spawn(nearcache_listener::run(
                ListenerConfig::new(url)?,
                handler.clone(),
                status,
                stopped(stop_rx.clone()),
            ));
        }
        instances.push(handler);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while instances.iter().any(|h| h.cache.mode() != Mode::Coherent) {
        if Instant::now() > deadline {
            let _ = stop_tx.send(true);
            bail!("the fleet of {n} did not become coherent in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connections: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database()
            AND application_name IN ('nearcache-listener', 'nearcache-wal')",
    )
    .fetch_one(&pool)
    .await?;
    let cpu_before = postgres_cpu();
    let mut all = Vec::with_capacity(updates);
    let mut commits = Vec::with_capacity(updates);
    let mut missed = 0;
    let mut rng = rand::rng();
    // A name no row has had, so that every update changes its row (see `latency.rs`).
    let run: u64 = rng.random();
    for u in 0..updates {
        let key = seed::user_id(rng.random_range(1..=seed::USERS));
        for h in &instances {
            h.seen.lock().unwrap().remove(&key);
        }
        let start = Instant::now();
        sqlx::query("UPDATE users SET name = $2 WHERE id = $1::uuid")
            .bind(&key)
            .bind(format!("fleet {run:016x} {u}"))
            .execute(&pool)
            .await?;
        let committed = Instant::now();
        commits.push(committed - start);
        let wait_deadline = committed + Duration::from_secs(10);
        let mut worst = Some(Duration::ZERO);
        for h in &instances {
            match h.evicted_after(&key, committed, wait_deadline).await {
                Some(d) => worst = worst.map(|w| w.max(d)),
                // An instance whose source dropped (a late heartbeat under this load) flushed
                // instead of evicting: no latency to record, but counted and reported.
                None => worst = None,
            }
        }
        match worst {
            Some(w) => all.push(w),
            None => {
                missed += 1;
                eprintln!("    update {u} not seen as an eviction on every instance within 10 s");
            }
        }
    }
    let postgres_cpu = postgres_cpu().saturating_sub(cpu_before);
    let mut after = Some(Vec::with_capacity(bulk_rounds));
    for round in 0..bulk_rounds {
        // Another name each round, so that the bulk changes every row again.
        let took = after_bulk(&pool, &instances, run.wrapping_add(round as u64)).await?;
        after = after.zip(took).map(|(mut all, d)| {
            all.push(d);
            all
        });
    }
    let _ = stop_tx.send(true);
    tokio::time::sleep(Duration::from_millis(500)).await;
    if relay {
        let client = async_nats::connect(nats_url()).await?;
        let _ = async_nats::jetstream::new(client)
            .delete_stream(&stream)
            .await;
    }
    pool.close().await;
    Ok(Point {
        arm: if relay {
            "relay + NATS"
        } else {
            "direct LISTEN"
        },
        instances: n,
        connections,
        all,
        commits,
        postgres_cpu,
        updates,
        missed,
        after_bulk: after,
    })
}

/// One statement renames every seeded user but one (9 999 rows: keys for the WAL, a table
/// flush for the triggers), then that one is renamed on its own: from the second commit to the
/// eviction of that row itself (not a flush) on every instance. Behind a relay, the bulk must
/// not hold the single row back.
async fn after_bulk(
    pool: &sqlx::PgPool,
    instances: &[Arc<Timed>],
    run: u64,
) -> Result<Option<Duration>> {
    let key = seed::user_id(rand::rng().random_range(1..=seed::USERS));
    super::bulk::bulk(pool, &key, run).await?;
    for h in instances {
        h.seen.lock().unwrap().remove(&key);
    }
    super::bulk::rename(pool, &key, &format!("after the bulk {run:016x}")).await?;
    let committed = Instant::now();
    let deadline = committed + Duration::from_secs(10);
    let mut worst = Duration::ZERO;
    for h in instances {
        match h.evicted_after_by(&key, committed, deadline, false).await {
            Some(d) => worst = worst.max(d),
            None => return Ok(None),
        }
    }
    Ok(Some(worst))
}

/// Measures fleets behind the relay and on direct LISTEN, and writes their table and chart.
pub(super) fn section(ctx: &Ctx, report: &mut String) -> Result<()> {
    let Ctx {
        url,
        rt,
        args,
        charts,
        ..
    } = ctx;
    let mut points = Vec::new();
    let (sizes, updates, rounds): (&[usize], usize, usize) = if args.quick {
        (&[10], 100, 1)
    } else {
        (&[10, 50, 200], 1000, 3)
    };
    for &n in sizes {
        for relay in [true, false] {
            eprintln!(
                "==> fleet: {n} instances, {}, {updates} updates",
                if relay {
                    "behind one relay"
                } else {
                    "direct LISTEN"
                }
            );
            points.push(rt.block_on(fleet(url, n, relay, updates, rounds))?);
        }
    }
    let sweep = |arm: &str| -> Vec<(f64, f64)> {
        points
            .iter()
            .filter(|p| p.arm == arm)
            .map(|p| (p.instances as f64, pct(&p.all, 99.0).as_secs_f64() * 1000.0))
            .collect()
    };
    let arms: Vec<&str> = points.iter().map(|p| p.arm).fold(Vec::new(), |mut v, a| {
        if !v.contains(&a) {
            v.push(a);
        }
        v
    });
    plot::lines(
        &charts.join("fleet-p99.svg"),
        "Commit → eviction on every instance, p99",
        ("instances", "milliseconds"),
        &arms
            .iter()
            .map(|a| (a.to_string(), sweep(a)))
            .collect::<Vec<_>>(),
    )?;
    writeln!(report, "\n## Fleets\n\nLightweight in-process instances in the bench process: each a nearcache cache with its own source (behind the relay: its own NATS connection and ordered consumer; direct: its own LISTEN connection). The relay runs in-process too, on the WAL. {updates} updates of random users, one at a time; for each, from the UPDATE's return to the eviction on every instance. Postgres CPU: user + system time of all its processes during the updates. After the bulk: one statement renames all {} seeded users but one, then that one is renamed; from that commit to the eviction of its own key (not a flush) on every instance; the median of {rounds} rounds.\n", seed::USERS)?;
    writeln!(report, "| fleet | instances | Postgres connections for invalidation | commit → eviction on all: p50 | p99 | max | writer's commit p50 | p99 | Postgres CPU per update | updates missed (a source reconnected) | one row after a bulk UPDATE: on all |\n|---|---|---|---|---|---|---|---|---|---|---|")?;
    for p in &points {
        writeln!(
            report,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} µs | {} | {} |",
            p.arm,
            p.instances,
            p.connections,
            ms(pct(&p.all, 50.0)),
            ms(pct(&p.all, 99.0)),
            ms(pct(&p.all, 100.0)),
            ms(pct(&p.commits, 50.0)),
            ms(pct(&p.commits, 99.0)),
            p.postgres_cpu.as_secs_f64() * 1e6 / p.updates as f64,
            p.missed,
            p.after_bulk.as_deref().map_or_else(
                || "not within 10 s".to_string(),
                |all| format!(
                    "{} (min {}, max {})",
                    ms(pct(all, 50.0)),
                    ms(pct(all, 0.0)),
                    ms(pct(all, 100.0))
                )
            )
        )?;
    }
    let floor_rounds = if args.quick { 2 } else { 5 };
    eprintln!("==> fleet: the floor under a bulk UPDATE, pg_recvlogical, {floor_rounds} rounds");
    let floor = rt.block_on(super::bulk::recvlogical_floor(url, floor_rounds))?;
    writeln!(
        report,
        "\nThe floor under the last column for anything fed by logical decoding, the relay included: `pg_recvlogical` on the nearcache publication (decoding nothing), the same bulk UPDATE then the same rename, from the rename's commit to its new name in `pg_recvlogical`'s output, no fleet running: median {}, min {}, max {} over {floor_rounds} rounds.",
        ms(pct(&floor, 50.0)),
        ms(pct(&floor, 0.0)),
        ms(pct(&floor, 100.0))
    )?;
    writeln!(report, "\n![fleet p99 by instances](bench/fleet-p99.svg)")?;
    Ok(())
}
