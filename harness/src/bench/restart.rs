//! A restart under load: the first seconds of a release instance that comes back while wrk
//! reads every user, warm (`--warm-file`, the ids the instance before it kept) beside cold.

use std::fmt::Write as _;

use anyhow::{Context, Result};

use super::http::{every_users_token, parse_wrk, sample, scrape, wrk};
use super::Ctx;
use crate::instance::Instance;
use crate::seed;

/// The first seconds after one restart.
struct Restart {
    name: &'static str,
    rps: f64,
    p50: String,
    p99: String,
    /// Requests answered from the cache, of all requests that reached it.
    hit_ratio: f64,
    /// Principals loaded by the warm start during the run.
    warmed: f64,
}

/// How long after a restart is measured.
fn first_seconds(args: &super::Args) -> u64 {
    if args.quick {
        2
    } else {
        10
    }
}

/// The named counters of the instance's cache, by name without the `nearcache_cache_` prefix,
/// from one scrape.
async fn counters<const N: usize>(
    client: &reqwest::Client,
    inst: &Instance,
    names: [&str; N],
) -> Result<[f64; N]> {
    let metrics = scrape(client, inst).await?;
    let mut values = [0.0; N];
    for (value, name) in values.iter_mut().zip(names) {
        let name = format!("nearcache_cache_{name}_total");
        *value = sample(&metrics, &name).with_context(|| format!("no {name} in /metrics"))?;
    }
    Ok(values)
}

async fn restarts(ctx: &Ctx) -> Result<Vec<Restart>> {
    let Ctx {
        url, binary, args, ..
    } = ctx;
    let client = reqwest::Client::new();
    let script = vec!["-s".to_string(), every_users_token("/me")?];
    let file = ctx.charts.join("warm.ids");
    let file = file.to_string_lossy().to_string();
    let seconds = first_seconds(args);
    let plan: [(&str, &[&str]); 3] = [
        ("cold", &[]),
        (
            "warm, --warm-rate 500 (the default)",
            &["--warm-file", &file],
        ),
        (
            "warm, --warm-rate 5000",
            &["--warm-file", &file, "--warm-rate", "5000"],
        ),
    ];
    let mut runs = Vec::new();
    for (name, flags) in plan {
        let _ = std::fs::remove_file(&file);
        if !flags.is_empty() {
            // The instance before: it serves every user, then stops and keeps their ids.
            let port = crate::instance::port_near(0)?;
            let mut before = Instance::start(binary, "bench-before", url, port, flags)?;
            before.ready(&client, "coherent").await?;
            wrk(&before.url("/"), &script, args.connections, 3)?;
            before.stop();
            let kept = std::fs::read_to_string(&file).context("the warm file")?;
            eprintln!("    {name}: {} ids kept", kept.lines().count());
        }
        let port = crate::instance::port_near(0)?;
        let mut inst = Instance::start(binary, "bench-restart", url, port, flags)?;
        inst.ready(&client, "coherent").await?;
        let out = wrk(&inst.url("/"), &script, args.connections, seconds)?;
        let run = parse_wrk(name, &out)?;
        let [hits, misses, warmed] = counters(&client, &inst, ["hits", "misses", "warmed"]).await?;
        // Each principal the warm start loaded was one miss of its own, not a request's.
        let requests = hits + misses - warmed;
        let restart = Restart {
            name,
            rps: run.rps,
            p50: run.p50,
            p99: run.p99,
            hit_ratio: hits / requests.max(1.0),
            warmed,
        };
        eprintln!(
            "    {name}: {:.0} requests/s, hit ratio {:.3}, p99 {}, {warmed} warmed",
            restart.rps, restart.hit_ratio, restart.p99
        );
        runs.push(restart);
        inst.stop();
    }
    let _ = std::fs::remove_file(&file);
    Ok(runs)
}

/// Measures the first seconds after a restart, warm beside cold, and writes their table.
pub(super) fn section(ctx: &Ctx, report: &mut String) -> Result<()> {
    let seconds = first_seconds(&ctx.args);
    eprintln!("==> restart: the first {seconds} s, warm beside cold");
    let runs = ctx.rt.block_on(restarts(ctx))?;
    writeln!(
        report,
        "## A restart under load\n\nThe first {seconds} s of a release instance that comes back while wrk (-c{}, 2 threads) reads all {} users in turn, from the moment its cache is coherent. A warm instance starts from the ids the instance before it kept at shutdown (`--warm-file`, after 3 s of the same load) and loads them in the background at `--warm-rate`; requests do not wait for it. The hit ratio counts requests (the warm start's own loads left out).\n",
        ctx.args.connections,
        seed::USERS
    )?;
    writeln!(
        report,
        "| restart | requests/s | hit ratio | p50 | p99 | warmed |\n|---|---|---|---|---|---|"
    )?;
    for r in &runs {
        writeln!(
            report,
            "| {} | {:.0} | {:.3} | {} | {} | {:.0} |",
            r.name, r.rps, r.hit_ratio, r.p50, r.p99, r.warmed
        )?;
    }
    Ok(())
}
