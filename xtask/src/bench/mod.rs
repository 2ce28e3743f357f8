//! `cargo xtask bench`: the system measured side by side in one run, with a markdown report.
//!
//! * HTTP (wrk, tokens rotating over 10 000 users): `GET /healthz` (the ceiling), `GET /me`
//!   with the cache coherent, off, and in ttl mode with a 2 s TTL (the original single-node
//!   setup).
//! * Invalidation latency: from an UPDATE's commit to the eviction in two in-process instances
//!   (cache plus source each), over 1000 updates, for the WAL source and for LISTEN.
//! * Write throughput on `users` with no nearcache, the WAL source and LISTEN, with 1 and 8
//!   writers, for profile updates and for `last_seen_at`-only updates.
//! * What `wal_level = logical` costs a writer, against a second cluster at `replica`.
//! * The cache core's criterion benchmark against raw moka, and its instruction counts under
//!   callgrind (exact on a noisy machine).
//! * Memory per cached principal, in a process of its own.
//! * Charts (SVG, plotters) beside the report, in `target/bench/`.
//!
//! `--quick` is a smoke run (CI runs it): every part, small, and a failure if any measurement
//! produced no number.
//!
//! The machine is shared and noisy: compare figures of one run, as ratios.
//!
//! One module per measurement (`http`, `latency`, `writes`, `core`), each returning named rows;
//! this one runs them and writes the report (`report` has its helpers).

mod core;
mod deployed;
mod fleet;
mod http;
mod instructions;
mod latency;
pub(crate) mod plot;
mod report;
mod sweep;
mod writes;

use std::fmt::Write as _;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::seed;
pub(crate) use report::machine;
use report::{ms, pct};

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
    /// Run only these parts (http, sweep, latency, writes, fleet, wal-level, core,
    /// instructions, memory); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// A smoke run: every part, briefly and small (1 s runs, one small fleet, 100 000 cached
    /// principals, a flush of 10 000); fails if a measurement produced no number.
    #[arg(long)]
    quick: bool,
}

impl Args {
    fn runs(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

pub(crate) fn run(mut args: Args) -> Result<()> {
    if args.quick {
        args.seconds = args.seconds.min(1);
        args.write_seconds = args.write_seconds.min(1);
    }
    if args.runs("http") && Command::new("wrk").arg("--version").output().is_err() {
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
    let binary = crate::instance::build_server(true)?;
    let rt = crate::runtime()?;
    let mut report = String::new();
    let machine = machine();
    writeln!(report, "# nearcache benchmark\n\n{machine}\n")?;

    let charts = crate::workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&charts)?;
    rt.block_on(seed::seed(url))?;
    // Every source is measured on this database: its writes are for both.
    rt.block_on(crate::choose_source(url, "both"))?;
    if args.runs("http") {
        eprintln!(
            "==> HTTP: wrk -c{} -d{}s, tokens rotating over {} users",
            args.connections,
            args.seconds,
            seed::USERS
        );
        let http = rt.block_on(http::http(url, &binary, args))?;
        writeln!(report, "## HTTP\n\nwrk, {} connections, 2 threads, {} s per run, tokens rotating over {} users; one instance at a time, on the same machine as wrk and Postgres. The second ceiling sends the same requests as the /me runs (a token header, built by the same wrk script, which costs wrk CPU on this shared machine).\n", args.connections, args.seconds, seed::USERS)?;
        writeln!(
            report,
            "| run | requests/s | p50 | p99 | x ceiling | x ceiling, same requests | x cache off |\n|---|---|---|---|---|---|---|"
        )?;
        plot::bars(
            &charts.join("http.svg"),
            "HTTP throughput per cache mode",
            "requests/s",
            &http
                .iter()
                .map(|r| (r.name.clone(), r.rps))
                .collect::<Vec<_>>(),
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
        writeln!(report, "\n![HTTP throughput](bench/http.svg)")?;
    }

    if args.runs("sweep") {
        let sizes: &[u32] = if args.quick {
            &[1_000]
        } else {
            &[1_000, 10_000, 100_000, 1_000_000]
        };
        eprintln!(
            "==> key-space sweep: {sizes:?} users, uniform and Zipf, capacity above and below"
        );
        let points = rt.block_on(sweep::sweep(url, &binary, args, sizes))?;
        writeln!(report, "\n## Key-space sweep\n\nCached GET /me (coherent) against GET /healthz with the very same requests (the ceiling), wrk {} connections, {} s per run after 3 s of warm-up. Tokens rotate over every user in a shuffled order (uniform) or over 200 000 draws of a Zipf distribution with s = 1 (hot users first); the cache holds twice the key space or a tenth of it (at least 100). Hit ratio: the cache's own counters during the measured run.\n", args.connections, args.seconds)?;
        writeln!(report, "| users | tokens | capacity | /me req/s | ceiling req/s | ratio | hit ratio | p99 |\n|---|---|---|---|---|---|---|---|")?;
        for p in &points {
            writeln!(
                report,
                "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.1} % | {} |",
                p.users,
                p.skew,
                p.capacity,
                p.rps,
                p.ceiling,
                p.rps / p.ceiling,
                p.hit_ratio * 100.0,
                p.p99
            )?;
        }
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for p in &points {
            let name = format!(
                "{}, capacity {}",
                p.skew,
                if p.capacity > u64::from(p.users) {
                    "2x"
                } else {
                    "1/10"
                }
            );
            let point = (f64::from(p.users).log10(), p.rps);
            match series.iter_mut().find(|s| s.0 == name) {
                Some(s) => s.1.push(point),
                None => series.push((name, vec![point])),
            }
        }
        plot::lines(
            &charts.join("sweep.svg"),
            "Cached GET /me by key space",
            ("log10(users)", "requests/s"),
            &series,
        )?;
        writeln!(report, "\n![key-space sweep](bench/sweep.svg)")?;
    }

    if args.runs("latency") {
        eprintln!("==> invalidation latency: 1000 updates, two instances");
        let lat = rt.block_on(latency::invalidation_latency(url))?;
        writeln!(report, "\n## Invalidation latency\n\nFrom the UPDATE's return (commit acknowledged) to the eviction, over 1000 updates, two in-process instances each with its own cache and source, for each source.\n")?;
        writeln!(report, "| measure | p50 | p99 | max |\n|---|---|---|---|")?;
        plot::lines(
            &charts.join("latency-cdf.svg"),
            "Commit → eviction (CDF)",
            ("milliseconds", "fraction of updates"),
            &lat.iter()
                .map(|s| (s.name.clone(), plot::cdf(&s.samples)))
                .collect::<Vec<_>>(),
        )?;
        writeln!(
            report,
            "![commit to eviction, CDF](bench/latency-cdf.svg)\n"
        )?;
        for series in &lat {
            let v = &series.samples;
            writeln!(
                report,
                "| {} | {} | {} | {} |",
                series.name,
                ms(pct(v, 50.0)),
                ms(pct(v, 99.0)),
                ms(pct(v, 100.0))
            )?;
        }
        writeln!(
            report,
            "\n![commit to eviction, CDF](bench/latency-cdf.svg)"
        )?;
    }

    if args.runs("writes") {
        eprintln!("==> what writers pay as deployed: pgbench, the release server, pg_recvlogical");
        let rows = rt.block_on(deployed::deployed(url, args.write_seconds, 8))?;
        writeln!(report, "\n## What writers pay, as deployed\n\npgbench, 8 clients, prepared single-row UPDATEs of `users.name` (random users of {}), {} s per arm, arms run A-B-C-D-D-C-B-A and averaged, on the database as the migrations leave it (`wal_level = logical`: no trigger) and, for LISTEN, after `nearcache_set_source('notify')`. The consumer is the release `nearcache-server` (no HTTP load) or `pg_recvlogical` on the same publication, the least a logical-decoding consumer costs. CPU from /proc: every Postgres process (the WAL sender included), and the consumer's own.\n", seed::USERS, args.write_seconds)?;
        writeln!(report, "| arm | tx/s | x no consumer | Postgres CPU per commit | consumer CPU per commit |\n|---|---|---|---|---|")?;
        let base = rows.first().map_or(1.0, |r| r.tps);
        for r in &rows {
            writeln!(
                report,
                "| {} | {:.0} | {:.2} | {:.0} µs | {} |",
                r.arm,
                r.tps,
                r.tps / base,
                r.postgres_us,
                r.consumer_us
                    .map_or("—".to_string(), |u| format!("{u:.1} µs"))
            )?;
        }
        if rows.iter().any(|r| r.tps <= 0.0) {
            bail!("a write arm measured no commits");
        }
        eprintln!("==> write throughput: no nearcache, WAL source, LISTEN");
        let writes = rt.block_on(writes::write_throughput(
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
    }

    if args.runs("fleet") {
        let mut points = Vec::new();
        let (sizes, updates): (&[usize], usize) = if args.quick {
            (&[10], 100)
        } else {
            (&[10, 50, 200], 1000)
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
                points.push(rt.block_on(fleet::fleet(url, n, relay, updates))?);
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
        writeln!(report, "\n## Fleets\n\nLightweight in-process instances in the bench process: each a nearcache cache with its own source (behind the relay: its own NATS connection and ordered consumer; direct: its own LISTEN connection). The relay runs in-process too, on the WAL. {updates} updates of random users, one at a time; for each, from the UPDATE's return to the eviction on every instance. Postgres CPU: user + system time of all its processes during the updates. After the bulk: one statement renames all {} seeded users but one, then that one is renamed; from that commit to the eviction of its own key (not a flush) on every instance.\n", seed::USERS)?;
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
                p.after_bulk
                    .map_or_else(|| "not within 10 s".to_string(), ms)
            )?;
        }
        writeln!(report, "\n![fleet p99 by instances](bench/fleet-p99.svg)")?;
    }

    if args.runs("wal-level") {
        eprintln!("==> what wal_level = logical costs a writer, against replica (two clusters)");
        let rows = writes::wal_level_cost(&rt, url, Duration::from_secs(args.write_seconds))?;
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
    }

    if !args.no_criterion && args.runs("core") {
        eprintln!("==> cache core: criterion against raw moka");
        let core = core::criterion()?;
        writeln!(report, "\n## Cache core (criterion, ns per operation)\n\n| operation | nearcache | raw moka | ratio |\n|---|---|---|---|")?;
        for row in core {
            writeln!(
                report,
                "| {} | {:.0} | {:.0} | {:.2} |",
                row.operation,
                row.nearcache,
                row.moka,
                row.nearcache / row.moka
            )?;
        }
    }

    if args.runs("instructions") {
        eprintln!("==> cache core: instruction counts under callgrind");
        let flush = if args.quick { 10_000 } else { 1_000_000 };
        let rows = instructions::counts(flush)?;
        writeln!(report, "\n## Cache core: instructions per operation (callgrind)\n\nvalgrind's callgrind counts instructions, not time: the same on a busy or an idle machine. Each operation runs after the same setup with 0 and with n repetitions (n = 10 000; 10 for the 1000-dependent tag); the difference over n is one operation, moka's periodic housekeeping included. Release build, 10 000 entries.\n")?;
        writeln!(
            report,
            "| operation | nearcache | raw moka | ratio |\n|---|---|---|---|"
        )?;
        let mut bars = Vec::new();
        for r in &rows {
            let (moka, ratio) = match r.moka {
                Some(m) => (format!("{m:.0}"), format!("{:.2}", r.nearcache / m)),
                None => ("".into(), "".into()),
            };
            writeln!(
                report,
                "| {} | {:.0} | {moka} | {ratio} |",
                r.operation, r.nearcache
            )?;
            if let Some(m) = r.moka {
                bars.push((format!("{}: nearcache", r.operation), r.nearcache));
                bars.push((format!("{}: moka", r.operation), m));
            }
        }
        plot::bars(
            &charts.join("instructions.svg"),
            "Instructions per operation (callgrind)",
            "instructions",
            &bars,
        )?;
        writeln!(report, "\n![instructions](bench/instructions.svg)")?;
    }

    if args.runs("memory") {
        let n: u64 = if args.quick { 100_000 } else { 1_000_000 };
        eprintln!("==> memory: {n} cached principals in a process of their own");
        let m = memory(n)?;
        writeln!(report, "\n## Memory per cached principal\n\n{n} principals (user + organization, their two rendered JSON bodies, two tags each, the tag index) in a nearcache `Cache` as the service fills it, in a process of its own (`crates/nearcache-http/examples/memory.rs`), with jemalloc as the server runs; resident set before and after.\n")?;
        writeln!(
            report,
            "| RSS empty | RSS with {n} | per principal | of which the value | of which its JSON | the rest (moka entry, tags, index, allocator) |\n|---|---|---|---|---|---|"
        )?;
        let per = m.per_entry();
        writeln!(
            report,
            "| {:.1} MB | {:.1} MB | {per:.0} B | {} B | {} B | {:.0} B |",
            m.rss_before as f64 / 1e6,
            m.rss_after as f64 / 1e6,
            m.value_bytes,
            m.json_bytes,
            per - (m.value_bytes + m.json_bytes) as f64
        )?;
    }

    if args.quick {
        // A smoke run is good only if every table cell that should hold a number does.
        for line in report.lines().filter(|l| l.starts_with('|')) {
            if ["NaN", "inf", "| ? |"].iter().any(|bad| line.contains(bad)) {
                bail!("a measurement produced no number: {line}");
            }
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

/// What the memory example printed.
struct Memory {
    entries: u64,
    rss_before: u64,
    rss_after: u64,
    value_bytes: u64,
    json_bytes: u64,
}

impl Memory {
    fn per_entry(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.entries.max(1) as f64
    }
}

fn memory(n: u64) -> Result<Memory> {
    crate::check(
        crate::cargo().args([
            "build",
            "--release",
            "-p",
            "nearcache-http",
            "--example",
            "memory",
        ]),
        "cargo build --release -p nearcache-http --example memory",
    )?;
    let binary = xtask::target_dir()
        .join("release")
        .join("examples")
        .join("memory");
    let out = Command::new(&binary).arg(n.to_string()).output()?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let field = |name: &str| {
        v[name]
            .as_u64()
            .ok_or_else(|| anyhow::anyhow!("no {name} in the memory example's output: {v}"))
    };
    Ok(Memory {
        entries: field("entries")?,
        rss_before: field("rss_before")?,
        rss_after: field("rss_after")?,
        value_bytes: field("value_bytes")?,
        json_bytes: field("json_bytes")?,
    })
}
