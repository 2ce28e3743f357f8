//! `cargo xtask soak`: two release instances under steady load for minutes or hours, with
//! writers, a staleness checker and faults on a schedule, sampled into a CSV and charts, and
//! judged by the command itself (it exits non-zero when a criterion fails).
//!
//! The run is cut in fifths: the first is warm-up (caches fill), the second the first steady
//! window, faults happen in the third and fourth, the fifth is the last steady window, compared
//! with the first. Windows are a minute long at most.
//!
//! It runs on the project's own cluster (it restarts it), in a database of its own made afresh.

//!
//! Which file to open: `fleet.rs` (the database and the processes), `load.rs` (tokens,
//! readers, writers, the staleness checker, warm-up), `faults.rs` (the faults and their
//! evidence), `sample.rs` (the samples and their CSV), `verdict.rs` (the criteria and the
//! report); this file runs them in order.

mod faults;
mod fleet;
mod hist;
mod load;
mod metrics;
pub(crate) mod process;
mod sample;
mod verdict;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rand::SeedableRng;

use crate::instance::Instance;
use crate::seed;
use fleet::Fleet;
use verdict::Criterion;

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
    fleet::prepare(args, admin, url).await?;
    let pg_port = crate::cluster()?.port()?;
    let client = reqwest::Client::new();
    let mut fleet = Fleet::start(args, url, binary, &client).await?;
    let bases = fleet.bases.clone();

    let tokens = load::tokens(args.users, Duration::from_secs_f64(plan.total));
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
    let empty = rss(&fleet.instances)?;
    // Warm-up brings what is bounded to its steady state before the clock starts: every
    // user's token once (the token memory fills and cycles), then the hottest users (the cache
    // holds the hot set).
    eprintln!(
        "    warming up: every user's token, then the {warm} hottest users, through each instance"
    );
    load::warm(&bases, &tokens, (1, args.users), 16).await?;
    load::warm(&bases, &tokens, (1, warm), 16).await?;
    let warmed = rss(&fleet.instances)?;
    eprintln!(
        "    RSS empty {:?} MB, warm {:?} MB",
        empty.iter().map(|b| b / 1_000_000).collect::<Vec<_>>(),
        warmed.iter().map(|b| b / 1_000_000).collect::<Vec<_>>()
    );

    // The load: readers on every instance, a background writer, the staleness checker.
    let shared = Arc::new(load::Shared::new(bases.len()));
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
    let (bypass_ms, watchers) = sample::watch_bypass(&shared, &bases, &client);
    tasks.extend(watchers);

    let start = Instant::now();
    let fault_task = faults::spawn(
        url,
        &fleet,
        &client,
        plan.fault_times(),
        args.heartbeat_timeout,
        start,
    );
    let csv = out.join("samples.csv");
    let samples = sample::sample(
        &plan, &fleet, &shared, &bypass_ms, &client, pg_port, start, &csv,
    )
    .await?;
    shared.stop.store(true, Relaxed);
    let outcomes = match tokio::time::timeout(Duration::from_secs(120), fault_task).await {
        Ok(joined) => joined??,
        Err(_) => bail!("the faults did not finish within two minutes of the run's end"),
    };
    for t in tasks {
        t.abort();
    }
    let exits = fleet.stop();

    let verdict = verdict::judge(args, &plan, &samples, &outcomes, &shared, &exits);
    verdict::report(
        args,
        &plan,
        &samples.rows,
        &outcomes,
        &shared,
        &verdict,
        &out,
    )?;
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
