//! `cargo xtask bench`: the system measured side by side in one run, with a markdown report.
//!
//! * HTTP (wrk, tokens rotating over 10 000 users): `GET /healthz` (the ceiling), `GET /me`
//!   with the cache coherent, off, and in ttl mode with a 2 s TTL (the original single-node
//!   setup).
//! * Invalidation latency: from an UPDATE's commit to the eviction in two in-process instances
//!   (cache plus listener each), over 1000 updates.
//! * Write throughput on `users` with the triggers and without, with 1 and 8 writers, for
//!   profile updates and for `last_seen_at`-only updates.
//! * The cache core's criterion benchmark against raw moka.
//!
//! The machine is shared and noisy: compare figures of one run, as ratios.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nearcache::{Cache, CacheConfig, Mode, Tag};
use nearcache_listener::{Handler, ListenerConfig, ListenerStatus};
use rand::Rng;

use crate::seed::{self, Instance};

/// Options of the benchmark.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Seconds of each write-throughput run.
    #[arg(long, default_value_t = 5)]
    write_seconds: u64,
    /// Skip the criterion benchmark of the cache core.
    #[arg(long)]
    no_criterion: bool,
    /// Run only these parts (http, latency, writes, core); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

impl Args {
    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

pub(crate) fn run(args: Args) -> Result<()> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk not found: install it with `apt-get install -y wrk` (Debian's package)");
    }
    let (url, started) = crate::database()?;
    let result = bench(&url, &args);
    if let Some(cluster) = started {
        let _ = cluster.down();
    }
    result
}

fn bench(url: &str, args: &Args) -> Result<()> {
    crate::migrate(url)?;
    let binary = seed::build_server(true)?;
    let rt = crate::runtime()?;
    let mut report = String::new();
    let machine = machine();
    writeln!(report, "# nearcache benchmark\n\n{machine}\n")?;

    rt.block_on(seed::seed(url))?;
    if args.runs("http") {
        eprintln!(
            "==> HTTP: wrk -c{} -d{}s, tokens rotating over {} users",
            args.connections,
            args.seconds,
            seed::USERS
        );
        let http = rt.block_on(http(url, &binary, args))?;
        writeln!(report, "## HTTP\n\nwrk, {} connections, 2 threads, {} s per run, tokens rotating over {} users; one instance at a time, on the same machine as wrk and Postgres. The second ceiling sends the same requests as the /me runs (a token header, built by the same wrk script, which costs wrk CPU on this shared machine).\n", args.connections, args.seconds, seed::USERS)?;
        writeln!(
            report,
            "| run | requests/s | p50 | p99 | x ceiling | x ceiling, same requests | x cache off |\n|---|---|---|---|---|---|---|"
        )?;
        let ceiling = http[0].rps;
        let same = http[1].rps;
        let off = http
            .iter()
            .find(|r| r.name.contains("off"))
            .map_or(1.0, |r| r.rps);
        for r in &http {
            writeln!(
                report,
                "| {} | {:.0} | {} | {} | {:.2} | {:.2} | {:.2} |",
                r.name,
                r.rps,
                r.p50,
                r.p99,
                r.rps / ceiling,
                r.rps / same,
                r.rps / off
            )?;
        }
    }

    if args.runs("latency") {
        eprintln!("==> invalidation latency: 1000 updates, two instances");
        let lat = rt.block_on(invalidation_latency(url))?;
        writeln!(report, "\n## Invalidation latency\n\nFrom the UPDATE's return (commit acknowledged) to the eviction, over 1000 updates, two in-process instances each with its own cache and listener.\n")?;
        writeln!(report, "| measure | p50 | p99 | max |\n|---|---|---|---|")?;
        for (name, v) in &lat {
            writeln!(
                report,
                "| {name} | {} | {} | {} |",
                ms(pct(v, 50.0)),
                ms(pct(v, 99.0)),
                ms(pct(v, 100.0))
            )?;
        }
    }

    if args.runs("writes") {
        eprintln!("==> write throughput with and without triggers");
        let writes = rt.block_on(write_throughput(
            url,
            Duration::from_secs(args.write_seconds),
        ))?;
        writeln!(report, "\n## Write throughput on users\n\n{} s per run, random users, each arm run twice (without, with, with, without) and averaged; with triggers a listener drains the notifications.\n", args.write_seconds)?;
        writeln!(report, "| statement | writers | without triggers (tx/s) | with triggers (tx/s) | ratio |\n|---|---|---|---|---|")?;
        for w in &writes {
            writeln!(
                report,
                "| {} | {} | {:.0} | {:.0} | {:.2} |",
                w.0,
                w.1,
                w.2,
                w.3,
                w.3 / w.2
            )?;
        }
    }

    if !args.no_criterion && args.runs("core") {
        eprintln!("==> cache core: criterion against raw moka");
        let core = criterion()?;
        writeln!(report, "\n## Cache core (criterion, ns per operation)\n\n| operation | nearcache | raw moka | ratio |\n|---|---|---|---|")?;
        for (name, ours, theirs) in core {
            writeln!(
                report,
                "| {name} | {ours:.0} | {theirs:.0} | {:.2} |",
                ours / theirs
            )?;
        }
    }

    let path = crate::workspace_root()
        .join("target")
        .join("bench-report.md");
    std::fs::write(&path, &report)?;
    println!("{report}");
    eprintln!("==> report written to {}", path.display());
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("Run on {date}: {cores} cores ({cpu}), wrk, the service and PostgreSQL (fsync off) on the same machine.")
}

struct HttpRun {
    name: String,
    rps: f64,
    p50: String,
    p99: String,
}

async fn http(url: &str, binary: &std::path::PathBuf, args: &Args) -> Result<Vec<HttpRun>> {
    let dir = crate::workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&dir)?;
    let tokens = dir.join("tokens.txt");
    let all: Vec<String> = (1..=seed::USERS).map(seed::token).collect();
    std::fs::write(&tokens, all.join("\n"))?;
    let script = |path: &str| -> Result<String> {
        let file = dir.join(format!("rotate{}.lua", path.replace('/', "_")));
        std::fs::write(
            &file,
            format!(
                "local tokens = {{}}\nfor line in io.lines(\"{}\") do tokens[#tokens + 1] = line end\n\
                 local i = math.random(#tokens)\n\
                 request = function()\n  i = i % #tokens + 1\n  return wrk.format(\"GET\", \"{path}\", {{[\"Authorization\"] = \"Bearer \" .. tokens[i]}})\nend\n",
                tokens.display()
            ),
        )?;
        Ok(file.display().to_string())
    };
    let client = reqwest::Client::new();
    let mut runs = Vec::new();
    // (name, flags, cache mode, path, rotate tokens)
    let plan: [(&str, &[&str], &str, &str, bool); 5] = [
        ("GET /healthz (ceiling)", &[], "coherent", "/healthz", false),
        (
            "GET /healthz with rotating tokens (ceiling, same requests)",
            &[],
            "coherent",
            "/healthz",
            true,
        ),
        ("GET /me, cache coherent", &[], "coherent", "/me", true),
        (
            "GET /me, cache off",
            &["--cache", "off"],
            "off",
            "/me",
            true,
        ),
        (
            "GET /me, ttl mode, 2 s TTL",
            &["--cache", "ttl", "--cache-ttl", "2s"],
            "ttl",
            "/me",
            true,
        ),
    ];
    for (name, flags, mode, path, rotate) in plan {
        let port = seed::port_near(0)?;
        let mut inst = Instance::start(binary, "bench", url, port, flags)?;
        inst.ready(&client, mode).await?;
        let (target, script_args) = if rotate {
            (inst.url("/"), vec!["-s".to_string(), script(path)?])
        } else {
            (inst.url(path), vec![])
        };
        // Warm up (fills the cache where there is one), then measure.
        wrk(&target, &script_args, args.connections, 3)?;
        let out = wrk(&target, &script_args, args.connections, args.seconds)?;
        let run = parse_wrk(name, &out)?;
        eprintln!(
            "    {name}: {:.0} requests/s, p50 {}, p99 {}",
            run.rps, run.p50, run.p99
        );
        runs.push(run);
        inst.stop();
    }
    Ok(runs)
}

fn wrk(target: &str, script: &[String], connections: u32, seconds: u64) -> Result<String> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "--timeout",
            "5s",
        ])
        .args(script)
        .arg(target)
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(text)
}

fn parse_wrk(name: &str, out: &str) -> Result<HttpRun> {
    if let Some(line) = out.lines().find(|l| l.contains("Non-2xx")) {
        bail!("{name}: {}; wrk said:\n{out}", line.trim());
    }
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{out}"))?;
    let pct = |p: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| "?".into())
    };
    Ok(HttpRun {
        name: name.into(),
        rps,
        p50: pct("50%"),
        p99: pct("99%"),
    })
}

/// A listener handler on a cache that records when each key was evicted.
struct Timed {
    cache: Cache<String, u32>,
    seen: Mutex<HashMap<String, Instant>>,
    changed: tokio::sync::Notify,
}

impl Handler for Timed {
    fn bypass(&self) {
        self.cache.set_mode(Mode::Bypass);
    }
    fn flush_all(&self) {
        self.cache.flush();
    }
    fn coherent(&self) {
        self.cache.set_mode(Mode::Coherent);
    }
    fn invalidate(&self, table: &str, keys: &[String]) -> bool {
        for k in keys {
            self.cache.invalidate_tag(&Tag::row(table, k));
        }
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap();
        for k in keys {
            seen.insert(k.clone(), now);
        }
        self.changed.notify_waiters();
        true
    }
    fn flush_table(&self, _: &str) -> bool {
        self.cache.flush();
        true
    }
}

async fn invalidation_latency(url: &str) -> Result<Vec<(String, Vec<Duration>)>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut instances = Vec::new();
    for _ in 0..2 {
        let handler = Arc::new(Timed {
            cache: Cache::new(CacheConfig {
                initial_mode: Mode::Bypass,
                ..CacheConfig::default()
            }),
            seen: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        });
        let status = ListenerStatus::default();
        let mut stop = stop_rx.clone();
        tokio::spawn(nearcache_listener::run(
            ListenerConfig::new(url)?,
            handler.clone(),
            status.clone(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
        instances.push((handler, status));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while instances
        .iter()
        .any(|(h, _)| h.cache.mode() != Mode::Coherent)
    {
        if Instant::now() > deadline {
            bail!("the listeners did not start");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut per_instance = Vec::new();
    let mut all = Vec::new();
    let mut rng = rand::thread_rng();
    for n in 0..1000 {
        let key = seed::user_id(rng.gen_range(1..=seed::USERS));
        for (h, _) in &instances {
            h.seen.lock().unwrap().remove(&key);
        }
        sqlx::query("UPDATE users SET name = $2 WHERE id = $1::uuid")
            .bind(&key)
            .bind(format!("bench {n}"))
            .execute(&pool)
            .await?;
        let committed = Instant::now();
        let wait_deadline = committed + Duration::from_secs(5);
        let mut worst = Duration::ZERO;
        for (h, _) in &instances {
            loop {
                // Register for the wake-up before looking, so that none is missed.
                let changed = h.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let at = h.seen.lock().unwrap().get(&key).copied();
                if let Some(at) = at {
                    let d = at.saturating_duration_since(committed);
                    per_instance.push(d);
                    worst = worst.max(d);
                    break;
                }
                if tokio::time::timeout_at(wait_deadline.into(), changed)
                    .await
                    .is_err()
                {
                    bail!("update {n} did not reach an instance within 5 s");
                }
            }
        }
        all.push(worst);
    }
    let _ = stop_tx.send(true);
    pool.close().await;
    Ok(vec![
        ("commit to eviction, per instance".into(), per_instance),
        ("commit to eviction on all instances".into(), all),
    ])
}

async fn write_throughput(url: &str, each: Duration) -> Result<Vec<(String, usize, f64, f64)>> {
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
                    "SELECT nearcache_attach('users', 'id', '{updated_at,last_seen_at}')"
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
            sqlx::query("SELECT nearcache_attach('users', 'id', '{updated_at,last_seen_at}')")
                .execute(&pool)
                .await?;
            eprintln!(
                "    {label}, {writers} writers: {without:.0} tx/s without triggers, {with:.0} with"
            );
            rows.push((label.to_string(), writers, without, with));
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

use rand::SeedableRng;

fn criterion() -> Result<Vec<(String, f64, f64)>> {
    crate::check(
        crate::cargo().args([
            "bench",
            "-p",
            "nearcache",
            "--bench",
            "cache",
            "--",
            "--warm-up-time",
            "1",
            "--measurement-time",
            "3",
        ]),
        "cargo bench -p nearcache",
    )?;
    let dir = crate::workspace_root().join("target").join("criterion");
    let mean = |group: &str, name: &str| -> Result<f64> {
        let path = dir
            .join(group)
            .join(name)
            .join("new")
            .join("estimates.json");
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&path).with_context(|| path.display().to_string())?,
        )?;
        v["mean"]["point_estimate"]
            .as_f64()
            .context("no mean in criterion's estimates")
    };
    Ok(vec![
        (
            "hit: get vs moka get".into(),
            mean("hit", "nearcache_get")?,
            mean("hit", "moka_get")?,
        ),
        (
            "hit: get_or_store vs moka get".into(),
            mean("hit", "nearcache_get_or_store")?,
            mean("hit", "moka_get")?,
        ),
        (
            "hit: get_or_store vs moka get_with".into(),
            mean("hit", "nearcache_get_or_store")?,
            mean("hit", "moka_get_with")?,
        ),
        (
            "100 misses + fills vs moka get_with".into(),
            mean("miss", "nearcache_get_or_store")?,
            mean("miss", "moka_get_with")?,
        ),
        (
            "invalidate_tag vs moka invalidate".into(),
            mean("invalidate", "nearcache_invalidate_tag")?,
            mean("invalidate", "moka_invalidate")?,
        ),
    ])
}

fn pct(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let mut s = v.to_vec();
    s.sort();
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}
