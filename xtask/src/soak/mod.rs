//! `cargo xtask soak`: two release instances under steady load for minutes or hours, with
//! writers, a staleness checker and faults on a schedule, sampled into a CSV and charts, and
//! judged by the command itself (it exits non-zero when a criterion fails).
//!
//! The run is cut in fifths: the first is warm-up (caches fill), the second the first steady
//! window, faults happen in the third and fourth, the fifth is the last steady window, compared
//! with the first. Windows are a minute long at most.
//!
//! It runs on the project's own cluster (it restarts it), in a database of its own made afresh.

mod faults;
mod hist;
mod load;
mod metrics;
mod process;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::SeedableRng;

use crate::bench::plot;
use crate::instance::Instance;
use crate::seed;
use faults::{Outcome, Target};
use hist::Hist;
use metrics::Scrape;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Length of the run, in minutes (fractions allowed).
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// The instances' invalidation source: wal, notify, or nats (a release relay reading the
    /// WAL and publishing to NATS at `NATS_URL`, default nats://127.0.0.1:4222; the instances
    /// follow it).
    #[arg(long, default_value = "wal")]
    source: String,
    /// Users seeded; the readers' tokens rotate over all of them (Zipf, s = 1).
    #[arg(long, default_value_t = 100_000)]
    users: u32,
    /// Cache capacity of each instance (below the key space, so that eviction runs too).
    #[arg(long, default_value_t = 20_000)]
    capacity: u64,
    /// Reading connections per instance.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// The instances' heartbeat timeout; the staleness bound is one second more.
    #[arg(long, default_value = "3s", value_parser = humantime_secs)]
    heartbeat_timeout: Duration,
    /// Seconds between samples (10 by default; a run shorter than two minutes samples twelve
    /// times).
    #[arg(long)]
    sample_seconds: Option<f64>,
}

impl Args {
    /// One minute with the defaults, the default source: what `cargo xtask test` runs.
    pub(crate) fn minute() -> Self {
        Self {
            minutes: 1.0,
            source: "wal".into(),
            users: 100_000,
            capacity: 20_000,
            connections: 8,
            heartbeat_timeout: Duration::from_secs(3),
            sample_seconds: None,
        }
    }
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let secs = s
        .strip_suffix("ms")
        .map(|ms| ms.parse::<f64>().map(|v| v / 1000.0))
        .or_else(|| s.strip_suffix('s').map(str::parse::<f64>))
        .unwrap_or_else(|| s.parse::<f64>())
        .map_err(|_| format!("{s:?} is not a duration like 3s or 700ms"))?;
    Ok(Duration::from_secs_f64(secs))
}

const DATABASE: &str = "nearcache_soak";
const POOL_SIZE: u32 = 16;

/// One instance at one sample.
#[derive(Debug, Clone, Default)]
struct Row {
    t: f64,
    instance: usize,
    rss: u64,
    fds: u64,
    pg_connections: u64,
    entries: f64,
    indexed_tags: f64,
    index_rows: f64,
    fence_remembered: f64,
    loads_in_flight: f64,
    tokens: f64,
    tasks: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    unavailable: u64,
    errors: u64,
    lag_ms: f64,
    bypass_s: f64,
    checks: u64,
    stale: u64,
}

const CSV_HEADER: &str = "t_s,instance,rss_bytes,fds,pg_connections,entries,indexed_tags,index_rows,fence_remembered,loads_in_flight,tokens_remembered,tokio_tasks,requests_per_s,p50_ms,p99_ms,unavailable,errors,heartbeat_rtt_ms,bypass_s,checks,stale";

impl Row {
    fn csv(&self) -> String {
        format!(
            "{:.1},{},{},{},{},{},{},{},{},{},{},{},{:.0},{:.3},{:.3},{},{},{:.2},{:.2},{},{}",
            self.t,
            self.instance,
            self.rss,
            self.fds,
            self.pg_connections,
            self.entries,
            self.indexed_tags,
            self.index_rows,
            self.fence_remembered,
            self.loads_in_flight,
            self.tokens,
            self.tasks,
            self.rps,
            self.p50_ms,
            self.p99_ms,
            self.unavailable,
            self.errors,
            self.lag_ms,
            self.bypass_s,
            self.checks,
            self.stale
        )
    }
}

/// The run's plan in seconds.
struct Plan {
    total: f64,
    period: f64,
    window: f64,
    faults_from: f64,
    faults_to: f64,
}

impl Plan {
    fn new(minutes: f64, sample_seconds: Option<f64>) -> Self {
        let total = minutes * 60.0;
        let period = sample_seconds.unwrap_or(if total < 120.0 { total / 12.0 } else { 10.0 });
        Self {
            total,
            period: period.max(0.5),
            window: (total * 0.2).min(60.0),
            faults_from: total * 0.4,
            faults_to: total * 0.8,
        }
    }

    fn first_window(&self) -> (f64, f64) {
        let from = self.total * 0.2;
        (from, from + self.window)
    }

    fn last_window(&self) -> (f64, f64) {
        (self.total - self.window, self.total + 1.0)
    }

    /// How many faults, one a minute (four at least), and when each is due.
    fn fault_times(&self) -> Vec<f64> {
        let span = self.faults_to - self.faults_from;
        let n = ((span / 60.0) as usize).max(4);
        (0..n)
            .map(|i| self.faults_from + span * i as f64 / n as f64)
            .collect()
    }
}

pub(crate) fn run(args: Args) -> Result<()> {
    if !matches!(args.source.as_str(), "wal" | "notify" | "nats") {
        bail!("--source is wal, notify or nats, not {:?}", args.source);
    }
    if args.minutes <= 0.0 {
        bail!("--minutes must be positive");
    }
    let cluster = crate::cluster()?;
    let started = cluster.up()?;
    let result = (|| {
        let admin = cluster.url()?;
        let url = format!("{}/{DATABASE}", admin.rsplit_once('/').expect("a URL").0);
        let binary = crate::instance::build_server(true)?;
        crate::runtime()?.block_on(soak(&args, &admin, &url, &binary))
    })();
    if started {
        let _ = cluster.down();
    }
    result
}

async fn soak(args: &Args, admin: &str, url: &str, binary: &std::path::Path) -> Result<()> {
    let plan = Plan::new(args.minutes, args.sample_seconds);
    let out = crate::workspace_root().join("target").join("soak");
    std::fs::create_dir_all(&out)?;
    eprintln!(
        "==> soak: {:.1} min, {} source, 2 instances, {} users (Zipf), capacity {}, faults from {:.0} s to {:.0} s",
        args.minutes, args.source, args.users, args.capacity, plan.faults_from, plan.faults_to
    );

    // A database of its own, made afresh.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(admin)
        .await?;
    sqlx::query("DROP DATABASE IF EXISTS nearcache_soak WITH (FORCE)")
        .execute(&pool)
        .await?;
    sqlx::query("CREATE DATABASE nearcache_soak")
        .execute(&pool)
        .await?;
    pool.close().await;
    {
        let url = url.to_string();
        tokio::task::spawn_blocking(move || crate::migrate(&url)).await??;
    }
    if args.source == "notify" {
        // LISTEN needs the triggers, which the migrations leave out where the WAL is decoded.
        crate::choose_source(url, "notify").await?;
    }
    eprintln!("    seeding {} users", args.users);
    seed::seed_users(url, args.users).await?;
    let pg_port = crate::cluster()?.port()?;

    let heartbeat_timeout = format!("{}ms", args.heartbeat_timeout.as_millis());
    let capacity = args.capacity.to_string();
    let pool_size = POOL_SIZE.to_string();
    let client = reqwest::Client::new();
    // Behind a relay: one release relay reads the WAL and publishes on a stream of the soak's
    // own; the faults' evidence (its source's counters) is read from it.
    let nats = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let mut relay = None;
    let mut source_flags = vec!["--source", args.source.as_str()];
    if args.source == "nats" {
        let relay_binary = crate::instance::build("nearcache-relay", true)?;
        let port = crate::instance::port_near(0)?;
        let r = Instance::start(
            &relay_binary,
            "soak-relay",
            url,
            port,
            &["--nats-url", &nats, "--nats-stream", "NEARCACHE_SOAK"],
        )?;
        eprintln!(
            "    relay: {} (log: {})",
            r.url("/healthz"),
            r.log.display()
        );
        relay = Some(r);
        source_flags.extend(["--nats-url", &nats, "--nats-stream", "NEARCACHE_SOAK"]);
    }
    let mut instances = Vec::new();
    for i in 0..2 {
        let port = crate::instance::port_near(0)?;
        let mut inst = Instance::start(
            &binary.to_path_buf(),
            &format!("soak-{i}"),
            url,
            port,
            &[
                source_flags.as_slice(),
                &[
                    "--cache-capacity",
                    &capacity,
                    "--heartbeat-timeout",
                    &heartbeat_timeout,
                    "--db-pool-size",
                    &pool_size,
                ],
            ]
            .concat(),
        )?;
        inst.ready(&client, "coherent").await?;
        instances.push(inst);
    }
    let bases: Vec<String> = instances.iter().map(|i| i.url("")).collect();
    let evidence_bases: Vec<String> = match &relay {
        Some(r) => vec![r.url("")],
        None => bases.clone(),
    };
    let run_for = Duration::from_secs_f64(plan.total);

    let tokens = load::tokens(args.users, run_for);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let order = Arc::new(seed::user_order(args.users, true, 1_000_000, &mut rng));
    let writers = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await?;
    let warm = args.capacity.min(u64::from(args.users)) as u32;
    let rss = |instances: &[Instance]| -> Result<Vec<u64>> {
        instances
            .iter()
            .map(|i| Ok(process::look(i.pid(), pg_port)?.rss))
            .collect()
    };
    let empty = rss(&instances)?;
    // Warm-up brings what is bounded to its steady state before the clock starts: every
    // user's token once (the token memory fills and cycles), then the hottest users (the cache
    // holds the hot set).
    eprintln!(
        "    warming up: every user's token, then the {warm} hottest users, through each instance"
    );
    load::warm(&bases, &tokens, (1, args.users), 16).await?;
    load::warm(&bases, &tokens, (1, warm), 16).await?;
    let warmed = rss(&instances)?;
    eprintln!(
        "    RSS empty {:?} MB, warm {:?} MB",
        empty.iter().map(|b| b / 1_000_000).collect::<Vec<_>>(),
        warmed.iter().map(|b| b / 1_000_000).collect::<Vec<_>>()
    );
    let shared = Arc::new(load::Shared::new(instances.len()));
    let bound = args.heartbeat_timeout + Duration::from_secs(1);
    let mut tasks = Vec::new();
    for (i, base) in bases.iter().enumerate() {
        tasks.extend(load::readers(
            &shared,
            i,
            base.clone(),
            &tokens,
            &order,
            args.connections,
        ));
    }
    tasks.push(load::background_writer(
        &shared,
        writers.clone(),
        bases.clone(),
        &tokens,
        args.users,
    ));
    tasks.extend(load::checker(
        &shared,
        writers.clone(),
        bases.clone(),
        &tokens,
        bound,
        4,
    ));
    // Bypass time, from the cache's own gauge every 200 ms.
    let bypass_ms: Arc<Vec<AtomicU64>> =
        Arc::new(bases.iter().map(|_| AtomicU64::new(0)).collect());
    for (i, base) in bases.iter().enumerate() {
        let (shared, bypass_ms, base, client) = (
            shared.clone(),
            bypass_ms.clone(),
            base.clone(),
            client.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while !shared.stop.load(Relaxed) {
                let coherent = Scrape::get(&client, &base)
                    .await
                    .is_ok_and(|s| s.value("nearcache_cache_coherent") >= 1.0);
                if !coherent {
                    bypass_ms[i].fetch_add(200, Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }

    // Faults, on their own task.
    let start = Instant::now();
    let fault_task = {
        let (url, bases, evidence_bases, client) = (
            url.to_string(),
            bases.clone(),
            evidence_bases.clone(),
            client.clone(),
        );
        let times = plan.fault_times();
        let heartbeat_timeout = args.heartbeat_timeout;
        tokio::spawn(async move {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await?;
            let target = Target {
                pool: &pool,
                database: DATABASE,
                bases: &bases,
                evidence: &evidence_bases,
                client: &client,
                heartbeat_timeout,
            };
            let mut outcomes: Vec<Outcome> = Vec::new();
            for (fault, due) in faults::schedule(times.len()).into_iter().zip(times) {
                let wait = due - start.elapsed().as_secs_f64();
                if wait > 0.0 {
                    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
                }
                // A fault that cannot be applied is recorded as not recovered (the verdict
                // fails on it), said at once, and the schedule goes on.
                let outcome = match faults::apply(fault, &target, start).await {
                    Ok(outcome) => outcome,
                    Err(e) => Outcome {
                        fault,
                        at: start.elapsed().as_secs_f64(),
                        took: Duration::ZERO,
                        recovered_after: None,
                        detail: format!("FAILED to apply: {e:#}"),
                    },
                };
                eprintln!(
                    "    {:>6.1} s  fault: {} ({}); {}",
                    outcome.at,
                    fault.name(),
                    outcome.detail,
                    match outcome.recovered_after {
                        Some(d) =>
                            format!("every instance coherent {:.2} s after", d.as_secs_f64()),
                        None => "NOT recovered within 60 s".into(),
                    }
                );
                outcomes.push(outcome);
            }
            anyhow::Ok(outcomes)
        })
    };

    // Samples.
    let mut rows: Vec<Row> = Vec::new();
    let mut hists: Vec<(f64, Hist)> = Vec::new();
    let mut csv = format!("{CSV_HEADER}\n");
    let mut next = plan.period;
    let mut last_bypass = vec![0u64; bases.len()];
    let mut last_at = 0.0;
    while next <= plan.total + 1e-9 {
        let wait = next - start.elapsed().as_secs_f64();
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
        let t = start.elapsed().as_secs_f64();
        let span = t - last_at;
        last_at = t;
        let mut all = Hist::default();
        let mut line = String::new();
        for (i, (inst, base)) in instances.iter().zip(&bases).enumerate() {
            let traffic = shared.take_traffic(i);
            all.merge(&traffic.latency);
            let proc = process::look(inst.pid(), pg_port)
                .with_context(|| format!("instance {i} (log: {})", inst.log.display()))?;
            let m = Scrape::get(&client, base).await.ok();
            let v = |name: &str| m.as_ref().map_or(f64::NAN, |m| m.value(name));
            let bypass = bypass_ms[i].load(Relaxed);
            let row = Row {
                t,
                instance: i,
                rss: proc.rss,
                fds: proc.fds,
                pg_connections: proc.pg_connections,
                entries: v("nearcache_cache_entries"),
                indexed_tags: v("nearcache_cache_indexed_tags"),
                index_rows: v("nearcache_cache_index_rows"),
                fence_remembered: v("nearcache_cache_fence_remembered"),
                loads_in_flight: v("nearcache_cache_loads_in_flight"),
                tokens: v("nearcache_auth_tokens_remembered"),
                tasks: v("nearcache_runtime_alive_tasks"),
                rps: traffic.ok as f64 / span,
                p50_ms: traffic.latency.quantile_ms(0.5),
                p99_ms: traffic.latency.quantile_ms(0.99),
                unavailable: traffic.unavailable,
                errors: traffic.errors,
                lag_ms: v("nearcache_source_heartbeat_rtt_seconds") * 1000.0,
                bypass_s: (bypass - last_bypass[i]) as f64 / 1000.0,
                checks: shared.checks.load(Relaxed),
                stale: shared.stale.load(Relaxed),
            };
            last_bypass[i] = bypass;
            let _ = write!(
                line,
                " | #{i} {:.0} req/s p99 {:.1} ms rss {:.0} MB entries {:.0}",
                row.rps,
                row.p99_ms,
                row.rss as f64 / 1e6,
                row.entries
            );
            csv.push_str(&row.csv());
            csv.push('\n');
            rows.push(row);
        }
        hists.push((t, all));
        eprintln!(
            "    {t:>6.1} s / {:.0} s{line} | {} checks, {} stale",
            plan.total,
            shared.checks.load(Relaxed),
            shared.stale.load(Relaxed)
        );
        std::fs::write(out.join("samples.csv"), &csv)?;
        next += plan.period;
    }
    shared.stop.store(true, Relaxed);
    let outcomes = match tokio::time::timeout(Duration::from_secs(120), fault_task).await {
        Ok(joined) => joined??,
        Err(_) => bail!("the faults did not finish within two minutes of the run's end"),
    };
    for t in tasks {
        t.abort();
    }
    let mut exits = Vec::new();
    for (i, inst) in instances.iter_mut().enumerate() {
        exits.push((format!("#{i}"), inst.exited()));
        inst.stop();
    }
    if let Some(r) = relay.as_mut() {
        exits.push(("the relay".to_string(), r.exited()));
        r.stop();
    }

    let verdict = judge(args, &plan, &rows, &hists, &outcomes, &shared, &exits);
    report(args, &plan, &rows, &outcomes, &shared, &verdict, &out)?;
    let failed: Vec<&Criterion> = verdict.iter().filter(|c| !c.pass).collect();
    eprintln!("==> soak report: target/soak-report.md, samples: target/soak/samples.csv");
    if failed.is_empty() {
        eprintln!("soak passed: every criterion met");
        Ok(())
    } else {
        for c in &failed {
            eprintln!("FAILED: {}: {}", c.name, c.measured);
        }
        for s in shared
            .first_stale
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
        {
            eprintln!("  stale read: {s}");
        }
        bail!("soak failed {} of {} criteria", failed.len(), verdict.len())
    }
}

/// A chart of the report: file stem, title, unit, and the value of a row.
type Chart = (&'static str, &'static str, &'static str, fn(&Row) -> f64);

/// One pass criterion and what was measured against it.
struct Criterion {
    name: String,
    measured: String,
    pass: bool,
}

fn judge(
    args: &Args,
    plan: &Plan,
    rows: &[Row],
    hists: &[(f64, Hist)],
    outcomes: &[Outcome],
    shared: &load::Shared,
    exits: &[(String, Option<String>)],
) -> Vec<Criterion> {
    let mut out = Vec::new();
    let mut check = |name: &str, pass: bool, measured: String| {
        out.push(Criterion {
            name: name.into(),
            measured,
            pass,
        });
    };
    let checks = shared.checks.load(Relaxed);
    let stale = shared.stale.load(Relaxed);
    check(
        "no stale read past the bound",
        stale == 0 && checks >= 100,
        format!(
            "{stale} stale of {checks} checked reads (bound {:?})",
            args.heartbeat_timeout + Duration::from_secs(1)
        ),
    );
    check(
        "the instances (and the relay) ran to the end",
        exits.iter().all(|(_, e)| e.is_none()),
        exits
            .iter()
            .map(|(who, e)| format!("{who}: {}", e.as_deref().unwrap_or("running")))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let steady = plan.total * 0.2;
    let instances = rows.iter().map(|r| r.instance).max().map_or(0, |m| m + 1);
    for i in 0..instances {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.instance == i).collect();
        let after: Vec<&Row> = mine.iter().copied().filter(|r| r.t >= steady).collect();
        let Some(base) = after.first() else { continue };
        // Against the high-water mark of the first 20 %, not one sample: the allocator returns
        // memory in steps (jemalloc's decay), and a sample just after one would call the
        // climb back to where it was growth.
        let high = mine
            .iter()
            .filter(|r| r.t <= base.t)
            .map(|r| r.rss)
            .max()
            .unwrap_or(base.rss);
        let max_rss = after.iter().map(|r| r.rss).max().unwrap_or(0);
        let growth = max_rss as f64 / high.max(1) as f64 - 1.0;
        check(
            &format!("#{i}: RSS grows < 5 % after the first 20 %"),
            growth < 0.05,
            format!(
                "at most {:.1} MB up to {:.0} s ({:.1} MB then), at most {:.1} MB later ({:+.1} %)",
                high as f64 / 1e6,
                base.t,
                base.rss as f64 / 1e6,
                max_rss as f64 / 1e6,
                growth * 100.0
            ),
        );
        let cap = args.capacity as f64;
        let worst = |f: fn(&Row) -> f64| mine.iter().map(|r| f(r)).fold(0.0, f64::max);
        let (entries, rows_, tags, fence, tokens) = (
            worst(|r| r.entries),
            worst(|r| r.index_rows),
            worst(|r| r.indexed_tags),
            worst(|r| r.fence_remembered),
            worst(|r| r.tokens),
        );
        let unread = mine.iter().any(|r| r.entries.is_nan());
        check(
            &format!("#{i}: internal sizes within their capacities"),
            !unread
                && entries <= cap
                && rows_ <= 2.0 * cap
                && tags <= rows_.max(0.0)
                && fence <= 65_536.0
                && tokens <= 65_536.0,
            format!(
                "at most: entries {entries:.0} (capacity {cap:.0}), index rows {rows_:.0} (≤ 2 tags × capacity), \
                 indexed tags {tags:.0}, fence {fence:.0} (memory 65 536), tokens {tokens:.0} (≤ 65 536){}",
                if unread { "; some samples could not be scraped" } else { "" }
            ),
        );
        let in_first = |r: &&&Row| r.t >= plan.first_window().0 && r.t < plan.first_window().1;
        let first_fds = mine
            .iter()
            .filter(in_first)
            .map(|r| r.fds - r.pg_connections)
            .max()
            .unwrap_or(0);
        let last = mine.last().copied().cloned().unwrap_or_default();
        let max_pg = mine.iter().map(|r| r.pg_connections).max().unwrap_or(0);
        check(
            &format!("#{i}: file descriptors flat"),
            last.fds - last.pg_connections <= first_fds + 2
                && max_pg <= u64::from(POOL_SIZE) + 3,
            format!(
                "{} besides Postgres at the end, {} at most in the first window; Postgres connections at most {} (pool {} + source)",
                last.fds - last.pg_connections,
                first_fds,
                max_pg,
                POOL_SIZE
            ),
        );
        let first_tasks = mine
            .iter()
            .filter(in_first)
            .map(|r| r.tasks)
            .fold(0.0, f64::max);
        check(
            &format!("#{i}: tokio tasks flat"),
            last.tasks <= first_tasks + 4.0,
            format!(
                "{:.0} at the end, {first_tasks:.0} at most in the first window",
                last.tasks
            ),
        );
        let errors: u64 = mine.iter().map(|r| r.errors).sum();
        check(
            &format!("#{i}: every answer 200, or 503 while the database is down"),
            errors == 0,
            format!(
                "{errors} other answers or failures; {} 503",
                mine.iter().map(|r| r.unavailable).sum::<u64>()
            ),
        );
    }
    let window = |(from, to): (f64, f64)| {
        let mut h = Hist::default();
        for (t, s) in hists {
            // A sample covers the period before its time.
            if *t > from && *t <= to {
                h.merge(s);
            }
        }
        h
    };
    let (first, last) = (window(plan.first_window()), window(plan.last_window()));
    let (p_first, p_last) = (first.quantile_ms(0.99), last.quantile_ms(0.99));
    check(
        "p99 of the last window ≤ 1.5x the first steady window",
        first.count() > 0 && last.count() > 0 && p_last <= 1.5 * p_first,
        format!(
            "{p_last:.2} ms ({} requests) vs {p_first:.2} ms ({} requests): {:.2}x",
            last.count(),
            first.count(),
            p_last / p_first.max(1e-9)
        ),
    );
    let unrecovered: Vec<String> = outcomes
        .iter()
        .filter(|o| o.recovered_after.is_none())
        .map(|o| format!("{} at {:.0} s", o.fault.name(), o.at))
        .collect();
    let expected = plan.fault_times().len();
    check(
        "every fault followed by recovery to Coherent",
        unrecovered.is_empty() && outcomes.len() == expected,
        format!(
            "{} of {expected} faults applied; slowest recovery {:.2} s{}",
            outcomes.len(),
            outcomes
                .iter()
                .filter_map(|o| o.recovered_after)
                .max()
                .unwrap_or_default()
                .as_secs_f64(),
            if unrecovered.is_empty() {
                String::new()
            } else {
                format!("; not recovered: {}", unrecovered.join(", "))
            }
        ),
    );
    out
}

fn report(
    args: &Args,
    plan: &Plan,
    rows: &[Row],
    outcomes: &[Outcome],
    shared: &load::Shared,
    verdict: &[Criterion],
    out: &std::path::Path,
) -> Result<()> {
    let mut md = String::new();
    writeln!(
        md,
        "# nearcache soak\n\n{}\n\n{:.1} minutes, source {}, 2 release instances, {} users (tokens Zipf s = 1 over all), cache capacity {} each, {} reading connections per instance; writers: a user by SQL and one through PATCH every 100 ms, an organization every 5 s; the staleness checker writes a version of one of {} hot users (by SQL or PATCH) or, one time in twenty, of its organization, every 50 ms, and reads them through both instances (bound {:?}). Samples every {:.0} s in `soak/samples.csv`.\n",
        crate::bench::machine().replace("wrk", "the load generator"),
        args.minutes,
        args.source,
        args.users,
        args.capacity,
        args.connections,
        load::CHECKED,
        args.heartbeat_timeout + Duration::from_secs(1),
        plan.period
    )?;
    writeln!(
        md,
        "## Verdict\n\n| criterion | measured | |\n|---|---|---|"
    )?;
    for c in verdict {
        writeln!(
            md,
            "| {} | {} | {} |",
            c.name,
            c.measured,
            if c.pass { "pass" } else { "**FAIL**" }
        )?;
    }
    writeln!(
        md,
        "\nWrites: {} acknowledged, {} failed (during faults). Checked reads: {}.\n",
        shared.writes.load(Relaxed),
        shared.failed_writes.load(Relaxed),
        shared.checks.load(Relaxed)
    )?;
    writeln!(
        md,
        "## Faults\n\n| at | fault | what happened | took | every instance coherent after |\n|---|---|---|---|---|"
    )?;
    for o in outcomes {
        writeln!(
            md,
            "| {:.0} s | {} | {} | {:.2} s | {} |",
            o.at,
            o.fault.name(),
            o.detail,
            o.took.as_secs_f64(),
            o.recovered_after
                .map_or("not within 60 s".into(), |d| format!(
                    "{:.2} s",
                    d.as_secs_f64()
                ))
        )?;
    }
    let series = |f: fn(&Row) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        let n = rows.iter().map(|r| r.instance).max().map_or(0, |m| m + 1);
        (0..n)
            .map(|i| {
                (
                    format!("instance {i}"),
                    rows.iter()
                        .filter(|r| r.instance == i && f(r).is_finite())
                        .map(|r| (r.t, f(r)))
                        .collect(),
                )
            })
            .collect()
    };
    let charts: [Chart; 5] = [
        ("rss", "Resident memory", "MB", |r| r.rss as f64 / 1e6),
        ("p99", "p99 of GET /me", "ms", |r| r.p99_ms),
        ("rps", "GET /me answered", "requests/s", |r| r.rps),
        ("entries", "Cache entries", "entries", |r| r.entries),
        ("fds", "Open file descriptors", "fds", |r| r.fds as f64),
    ];
    writeln!(md, "\n## Over time\n\nFaults between {:.0} s and {:.0} s; windows compared: {:.0}–{:.0} s and {:.0}–{:.0} s.\n", plan.faults_from, plan.faults_to, plan.first_window().0, plan.first_window().1, plan.last_window().0, plan.total)?;
    for (file, title, unit, f) in charts {
        let path = out.join(format!("{file}.svg"));
        plot::lines(&path, title, ("seconds", unit), &series(f))?;
        writeln!(md, "![{title}](soak/{file}.svg)")?;
    }
    let path = out.parent().expect("target").join("soak-report.md");
    std::fs::write(&path, md)?;
    Ok(())
}
