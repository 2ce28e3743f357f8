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
//! One module per measurement (`http`, `sweep`, `latency`, `deployed` and `writes`, `fleet`,
//! `core`, `instructions`, `memory`), each with a `section` that measures and writes its part
//! of the report; this one runs the parts asked for, in order, and writes the report (`report`
//! has its helpers, `plot` the charts).

mod bulk;
mod core;
mod deployed;
mod fleet;
mod http;
mod instructions;
mod latency;
mod memory;
mod outage;
pub(crate) mod plot;
mod report;
mod restart;
mod sweep;
mod writes;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Result};

use crate::seed;
pub(crate) use report::machine;

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
    /// Run only these parts (http, restart, sweep, latency, writes, fleet, outage, wal-level, core,
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
    let result = bench(&url, args);
    if let Some(cluster) = started {
        let _ = cluster.down();
    }
    result
}

/// What every part of the bench works with.
struct Ctx {
    /// The bench's database, migrated and seeded; its writes are for every source.
    url: String,
    /// The release server.
    binary: PathBuf,
    rt: tokio::runtime::Runtime,
    args: Args,
    /// Where the charts go (`target/bench/`).
    charts: PathBuf,
}

/// A part of the report: measures and writes its section.
type Part = fn(&Ctx, &mut String) -> Result<()>;

/// The parts, by the name `--only` knows them by, in the report's order.
const PARTS: [(&str, Part); 11] = [
    ("http", http::section),
    ("restart", restart::section),
    ("sweep", sweep::section),
    ("latency", latency::section),
    ("writes", writes_sections),
    ("fleet", fleet::section),
    ("outage", outage::section),
    ("wal-level", writes::wal_level_section),
    ("core", core::section),
    ("instructions", instructions::section),
    ("memory", memory::section),
];

/// What writers pay: as deployed first, then with the in-process consumers.
fn writes_sections(ctx: &Ctx, report: &mut String) -> Result<()> {
    deployed::section(ctx, report)?;
    writes::section(ctx, report)
}

fn bench(url: &str, args: Args) -> Result<()> {
    if let Some(unknown) = args
        .only
        .iter()
        .find(|p| !PARTS.iter().any(|(name, _)| name == p))
    {
        bail!(
            "--only {unknown:?}: the parts are {}",
            PARTS.map(|(name, _)| name).join(", ")
        );
    }
    crate::migrate(url)?;
    let ctx = Ctx {
        url: url.to_string(),
        binary: crate::instance::build_server(true)?,
        rt: crate::runtime()?,
        args,
        charts: crate::workspace_root().join("target").join("bench"),
    };
    let mut report = String::new();
    writeln!(report, "# nearcache benchmark\n\n{}\n", machine())?;
    std::fs::create_dir_all(&ctx.charts)?;
    ctx.rt.block_on(seed::seed(url))?;
    // Every source is measured on this database: its writes are for both.
    ctx.rt.block_on(crate::choose_source(url, "both"))?;
    for (name, part) in PARTS {
        if ctx.args.runs(name) {
            part(&ctx, &mut report)?;
        }
    }

    if ctx.args.quick {
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
