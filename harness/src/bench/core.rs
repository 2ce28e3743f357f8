//! The cache core's criterion benchmark against raw moka.

use super::Ctx;
use anyhow::{Context, Result};
use std::fmt::Write as _;

/// One operation of the cache core against its raw moka counterpart, in ns.
pub(super) struct CoreRow {
    pub(super) operation: &'static str,
    pub(super) nearcache: f64,
    pub(super) moka: f64,
}

/// Runs the core's criterion benchmark and reads its estimates.
pub(super) fn criterion() -> Result<Vec<CoreRow>> {
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
        CoreRow {
            operation: "hit: get vs moka get",
            nearcache: mean("hit", "nearcache_get")?,
            moka: mean("hit", "moka_get")?,
        },
        CoreRow {
            operation: "hit: get_or_store vs moka get",
            nearcache: mean("hit", "nearcache_get_or_store")?,
            moka: mean("hit", "moka_get")?,
        },
        CoreRow {
            operation: "hit: get_or_store vs moka get_with",
            nearcache: mean("hit", "nearcache_get_or_store")?,
            moka: mean("hit", "moka_get_with")?,
        },
        CoreRow {
            operation: "100 misses + fills vs moka get_with",
            nearcache: mean("miss", "nearcache_get_or_store")?,
            moka: mean("miss", "moka_get_with")?,
        },
        CoreRow {
            operation: "invalidate_tag vs moka invalidate",
            nearcache: mean("invalidate", "nearcache_invalidate_tag")?,
            moka: mean("invalidate", "moka_invalidate")?,
        },
    ])
}

/// Runs the criterion benchmark of the cache core against raw moka (unless `--no-criterion`),
/// and writes its table.
pub(super) fn section(ctx: &Ctx, report: &mut String) -> Result<()> {
    let Ctx { args, .. } = ctx;
    if args.no_criterion {
        return Ok(());
    }
    eprintln!("==> cache core: criterion against raw moka");
    let core = criterion()?;
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
    Ok(())
}
