//! Instruction counts of the cache core against raw moka, under valgrind's callgrind: exact
//! and repeatable on a shared, noisy machine. Each operation runs twice after the same setup,
//! with 0 and with `n` repetitions (`crates/nearcache/examples/instructions.rs`); the
//! difference over `n` is one operation.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{plot, Ctx};
use anyhow::{bail, Context, Result};

/// One operation: nearcache's instructions against raw moka's counterpart, if it has one.
pub(super) struct CountRow {
    pub(super) operation: String,
    pub(super) nearcache: f64,
    pub(super) moka: Option<f64>,
}

fn build() -> Result<PathBuf> {
    crate::check(
        crate::cargo().args([
            "build",
            "--release",
            "-p",
            "nearcache",
            "--example",
            "instructions",
        ]),
        "cargo build --release -p nearcache --example instructions",
    )?;
    Ok(xtask::target_dir()
        .join("release")
        .join("examples")
        .join("instructions"))
}

/// Instructions of one run.
fn collected(binary: &Path, args: &[String]) -> Result<u64> {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(binary)
        .args(args)
        .output()
        .context("running valgrind (apt-get install -y valgrind)")?;
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("valgrind {args:?} failed: {text}");
    }
    text.lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no 'Collected' in callgrind's output: {text}"))
}

/// Instructions of one `op`, over `n` repetitions after its setup (`entries` sizes a flush).
fn per_op(binary: &Path, op: &str, n: u64, entries: u64) -> Result<f64> {
    let run = |k: u64| collected(binary, &[op.into(), k.to_string(), entries.to_string()]);
    let (base, with) = (run(0)?, run(n)?);
    Ok(with.saturating_sub(base) as f64 / n as f64)
}

/// Every count; `flush_entries` sizes the cache a flush empties.
pub(super) fn counts(flush_entries: u64) -> Result<Vec<CountRow>> {
    let binary = build()?;
    let n = 10_000;
    let mut rows = Vec::new();
    let pairs: [(&str, &str, Option<&str>, u64); 4] = [
        ("hit: get", "hit", Some("moka-get"), n),
        (
            "miss + fill (get_or_store, one tag) vs moka insert",
            "miss",
            Some("moka-insert"),
            n,
        ),
        (
            "invalidate_tag, 1 dependent vs moka invalidate",
            "invalidate-tag-1",
            Some("moka-invalidate"),
            n,
        ),
        (
            "invalidate_tag, 1000 dependents",
            "invalidate-tag-1000",
            None,
            10,
        ),
    ];
    for (name, op, moka, n) in pairs {
        eprintln!("    callgrind: {name}");
        let ours = per_op(&binary, op, n, 0)?;
        let moka = moka.map(|m| per_op(&binary, m, n, 0)).transpose()?;
        rows.push(CountRow {
            operation: name.into(),
            nearcache: ours,
            moka,
        });
    }
    eprintln!("    callgrind: flush of {flush_entries} entries");
    rows.push(CountRow {
        operation: format!("flush of {flush_entries} entries (with moka's deferred work)"),
        nearcache: per_op(&binary, "flush", 1, flush_entries)?,
        moka: None,
    });
    Ok(rows)
}

/// Counts instructions per operation under callgrind and writes their table and chart.
pub(super) fn section(ctx: &Ctx, report: &mut String) -> Result<()> {
    let Ctx { args, charts, .. } = ctx;
    eprintln!("==> cache core: instruction counts under callgrind");
    let flush = if args.quick { 10_000 } else { 1_000_000 };
    let rows = counts(flush)?;
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
    Ok(())
}
