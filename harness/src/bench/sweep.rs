//! The key-space sweep: cached `GET /me` as the number of users grows, with tokens rotating
//! uniformly or with a Zipf skew (s = 1), and a cache larger or smaller than the key space;
//! each point beside its ceiling (`GET /healthz` with the very same requests).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use rand::SeedableRng;

use super::http::{parse_wrk, rotate_script, wrk};
use super::Args;
use super::{plot, Ctx};
use crate::instance::Instance;
use crate::seed;

/// One point of the sweep.
pub(super) struct Point {
    pub(super) users: u32,
    pub(super) skew: &'static str,
    pub(super) capacity: u64,
    pub(super) rps: f64,
    pub(super) ceiling: f64,
    pub(super) hit_ratio: f64,
    pub(super) p99: String,
}

/// Requests per token file: rotating over it, wrk sends these in order, again and again.
const SEQUENCE: usize = 200_000;

fn counter(metrics: &str, name: &str) -> f64 {
    super::http::sample(metrics, name).unwrap_or(0.0)
}

/// Every point; `sizes` are user counts (seeded up to the largest).
pub(super) async fn sweep(
    url: &str,
    binary: &std::path::PathBuf,
    args: &Args,
    sizes: &[u32],
) -> Result<Vec<Point>> {
    let dir = crate::workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&dir)?;
    let largest = sizes.iter().copied().max().unwrap_or(0);
    eprintln!("    seeding {largest} users");
    seed::seed_users(url, largest).await?;
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut points = Vec::new();
    for &users in sizes {
        for (skew, zipf) in [("uniform", false), ("zipf s=1", true)] {
            let order = seed::user_order(users, zipf, SEQUENCE, &mut rng);
            let tokens = dir.join(format!(
                "sweep-{users}-{}.txt",
                if zipf { "zipf" } else { "uniform" }
            ));
            write_tokens(&tokens, &order)?;
            for capacity in [u64::from(users) * 2, u64::from(users / 10).max(100)] {
                eprintln!("    {users} users, {skew}, capacity {capacity}");
                let port = crate::instance::port_near(0)?;
                let cap = capacity.to_string();
                let mut inst =
                    Instance::start(binary, "sweep", url, port, &["--cache-capacity", &cap])?;
                inst.ready(&client, "coherent").await?;
                let (ceiling, _) = measure(&inst, &client, &dir, &tokens, "/healthz", args).await?;
                let (me, (hits, misses)) =
                    measure(&inst, &client, &dir, &tokens, "/me", args).await?;
                inst.stop();
                let point = Point {
                    users,
                    skew,
                    capacity,
                    rps: me.rps,
                    ceiling: ceiling.rps,
                    hit_ratio: hits / (hits + misses).max(1.0),
                    p99: me.p99,
                };
                eprintln!(
                    "      /me {:.0} requests/s ({:.2}x the same requests' ceiling), hits {:.1} %, p99 {}",
                    point.rps,
                    point.rps / point.ceiling,
                    point.hit_ratio * 100.0,
                    point.p99
                );
                points.push(point);
            }
        }
    }
    Ok(points)
}

fn write_tokens(path: &Path, order: &[u32]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    // One token per user, signed once.
    let mut signed = std::collections::HashMap::new();
    for &i in order {
        let t = signed.entry(i).or_insert_with(|| seed::token(i));
        writeln!(out, "{t}")?;
    }
    out.flush()?;
    Ok(())
}

/// One warmed-up wrk run of `path` with the tokens of `tokens`, and the cache hits and misses
/// counted during it.
async fn measure(
    inst: &Instance,
    client: &reqwest::Client,
    dir: &Path,
    tokens: &Path,
    path: &str,
    args: &Args,
) -> Result<(super::http::HttpRun, (f64, f64))> {
    let script = vec!["-s".to_string(), rotate_script(dir, tokens, path)?];
    wrk(&inst.url("/"), &script, args.connections, 3)?;
    let metrics = || async {
        let text = super::http::scrape(client, inst).await?;
        anyhow::Ok((
            counter(&text, "nearcache_cache_hits_total"),
            counter(&text, "nearcache_cache_misses_total"),
        ))
    };
    let before = metrics().await?;
    let out = wrk(&inst.url("/"), &script, args.connections, args.seconds)?;
    let after = metrics().await?;
    Ok((
        parse_wrk(path, &out)?,
        (after.0 - before.0, after.1 - before.1),
    ))
}

/// Runs the key-space sweep and writes its table and chart.
pub(super) fn section(ctx: &Ctx, report: &mut String) -> Result<()> {
    let Ctx {
        url,
        binary,
        rt,
        args,
        charts,
        ..
    } = ctx;
    let sizes: &[u32] = if args.quick {
        &[1_000]
    } else {
        &[1_000, 10_000, 100_000, 1_000_000]
    };
    eprintln!("==> key-space sweep: {sizes:?} users, uniform and Zipf, capacity above and below");
    let points = rt.block_on(sweep(url, binary, args, sizes))?;
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
    Ok(())
}
