//! HTTP throughput: wrk against one release instance at a time, in every cache mode.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::Args;
use super::{plot, Ctx};
use crate::instance::Instance;
use crate::seed;

/// One wrk run.
pub(super) struct HttpRun {
    pub(super) name: String,
    pub(super) rps: f64,
    pub(super) p50: String,
    pub(super) p99: String,
    /// Per second during the run, from `/metrics`: requests that missed the cache, and
    /// loads from the database (a miss's, a refresh's); `None` without a cache.
    pub(super) misses_loads: Option<(f64, f64)>,
}

/// Every HTTP run, one instance at a time.
pub(super) async fn http(
    url: &str,
    binary: &std::path::PathBuf,
    args: &Args,
) -> Result<Vec<HttpRun>> {
    let script = |path: &str| every_users_token(path);
    let client = reqwest::Client::new();
    let mut runs = Vec::new();
    // (name, flags, cache mode, path, rotate tokens)
    let plan: [(&str, &[&str], &str, &str, bool); 8] = [
        ("GET /healthz (ceiling)", &[], "coherent", "/healthz", false),
        (
            "GET /healthz with rotating tokens (ceiling, same requests)",
            &[],
            "coherent",
            "/healthz",
            true,
        ),
        (
            "GET /me, cache coherent (audit at its default, 2/s)",
            &[],
            "coherent",
            "/me",
            true,
        ),
        (
            "GET /me, cache coherent, no audit (--audit-rate 0)",
            &["--audit-rate", "0"],
            "coherent",
            "/me",
            true,
        ),
        (
            "GET /me, cache coherent, 5 s TTL",
            &["--cache-ttl", "5s"],
            "coherent",
            "/me",
            true,
        ),
        (
            "GET /me, cache coherent, 5 s TTL, refreshed after 3 s (--refresh-after 3s)",
            &["--cache-ttl", "5s", "--refresh-after", "3s"],
            "coherent",
            "/me",
            true,
        ),
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
        let port = crate::instance::port_near(0)?;
        let mut inst = Instance::start(binary, "bench", url, port, flags)?;
        inst.ready(&client, mode).await?;
        let (target, script_args) = if rotate {
            (inst.url("/"), vec!["-s".to_string(), script(path)?])
        } else {
            (inst.url(path), vec![])
        };
        // Warm up (fills the cache where there is one), then measure.
        wrk(&target, &script_args, args.connections, 3)?;
        let before = misses_loads(&client, &inst).await;
        let out = wrk(&target, &script_args, args.connections, args.seconds)?;
        let after = misses_loads(&client, &inst).await;
        let mut run = parse_wrk(name, &out)?;
        #[allow(clippy::cast_precision_loss)]
        let seconds = args.seconds as f64;
        run.misses_loads = before
            .zip(after)
            .map(|(b, a)| ((a.0 - b.0) / seconds, (a.1 - b.1) / seconds));
        eprintln!(
            "    {name}: {:.0} requests/s, p50 {}, p99 {}",
            run.rps, run.p50, run.p99
        );
        runs.push(run);
        inst.stop();
    }
    Ok(runs)
}

/// The instance's `/metrics`.
pub(super) async fn scrape(client: &reqwest::Client, inst: &Instance) -> Result<String> {
    let res = client.get(inst.url("/metrics")).send().await?;
    Ok(res.error_for_status()?.text().await?)
}

/// The value of the unlabelled series `name` in an exposition, if it is there.
pub(super) fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The instance's `nearcache_cache_misses_total` and `nearcache_cache_loads_total`, if it
/// has a cache.
async fn misses_loads(client: &reqwest::Client, inst: &Instance) -> Option<(f64, f64)> {
    let text = scrape(client, inst).await.ok()?;
    sample(&text, "nearcache_cache_misses_total").zip(sample(&text, "nearcache_cache_loads_total"))
}

pub(super) fn wrk(
    target: &str,
    script: &[String],
    connections: u32,
    seconds: u64,
) -> Result<String> {
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

pub(super) fn parse_wrk(name: &str, out: &str) -> Result<HttpRun> {
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
        misses_loads: None,
    })
}

/// A wrk script sending `path` with every seeded user's token in turn (the tokens written to
/// `target/bench/tokens.txt`).
pub(super) fn every_users_token(path: &str) -> Result<String> {
    let dir = crate::workspace_root().join("target").join("bench");
    std::fs::create_dir_all(&dir)?;
    let tokens = dir.join("tokens.txt");
    let all: Vec<String> = (1..=seed::USERS).map(seed::token).collect();
    std::fs::write(&tokens, all.join("\n"))?;
    rotate_script(&dir, &tokens, path)
}

/// A wrk script that sends `GET path` with the tokens of `tokens` (one per line) in order,
/// from a random starting point, round and round.
pub(super) fn rotate_script(
    dir: &std::path::Path,
    tokens: &std::path::Path,
    path: &str,
) -> Result<String> {
    let stem = tokens
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let file = dir.join(format!("rotate-{stem}{}.lua", path.replace('/', "_")));
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
}

/// Measures `GET /healthz` and `GET /me` per cache mode with wrk, and writes their table and
/// chart.
pub(super) fn section(ctx: &Ctx, report: &mut String) -> Result<()> {
    let Ctx {
        url,
        binary,
        rt,
        args,
        charts,
        ..
    } = ctx;
    eprintln!(
        "==> HTTP: wrk -c{} -d{}s, tokens rotating over {} users",
        args.connections,
        args.seconds,
        seed::USERS
    );
    let http = rt.block_on(http(url, binary, args))?;
    writeln!(report, "## HTTP\n\nwrk, {} connections, 2 threads, {} s per run, tokens rotating over {} users; one instance at a time, on the same machine as wrk and Postgres. The second ceiling sends the same requests as the /me runs (a token header, built by the same wrk script, which costs wrk CPU on this shared machine). In the 5 s TTL runs each user is read several times a second, so without refresh each one misses once per TTL (its requests wait for the database); with `--refresh-after` its entry is loaded again in the background instead (more loads, none waited for). Misses/s and loads/s are the cache's counters over the run (a coalesced caller counts as a miss; loads are misses' and refreshes', not the audit's).\n", args.connections, args.seconds, seed::USERS)?;
    writeln!(
            report,
            "| run | requests/s | p50 | p99 | x ceiling | x ceiling, same requests | x cache off | misses/s | loads/s |\n|---|---|---|---|---|---|---|---|---|"
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
            "| {} | {:.0} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} |",
            r.name,
            r.rps,
            r.p50,
            r.p99,
            r.rps / ceiling,
            r.rps / same,
            r.rps / off,
            r.misses_loads
                .map_or_else(|| "-".to_string(), |(m, _)| format!("{m:.0}")),
            r.misses_loads
                .map_or_else(|| "-".to_string(), |(_, l)| format!("{l:.0}"))
        )?;
    }
    writeln!(report, "\n![HTTP throughput](bench/http.svg)")?;
    Ok(())
}
