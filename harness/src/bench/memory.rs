//! Memory per cached principal: the memory example (`crates/nearcache-http/examples/memory.rs`)
//! in a process of its own, its resident set before and after filling.

use std::fmt::Write as _;
use std::process::Command;

use anyhow::{bail, Result};

use super::Ctx;
use crate::instance::Instance;

/// Fills a cache with principals in a process of its own and writes the bytes per principal.
pub(super) fn section(ctx: &Ctx, report: &mut String) -> Result<()> {
    let Ctx { args, .. } = ctx;
    let n: u64 = if args.quick { 100_000 } else { 1_000_000 };
    eprintln!("==> memory: {n} cached principals in a process of their own");
    let m = measure(n, None)?;
    writeln!(report, "\n## Memory per cached principal\n\n{n} principals as the service caches them (their rendered JSON bodies, the user's id and active flag, the organization's tag, the tag index) in a nearcache `Cache`, in a process of its own (`crates/nearcache-http/examples/memory.rs`), with jemalloc as the server runs; resident set before and after.\n")?;
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
    // The same fill bounded in bytes, as `--cache-max-bytes` bounds the server's cache.
    let bound: u64 = if args.quick { 64 << 20 } else { 512 << 20 };
    eprintln!(
        "==> memory: {n} principals into a cache of at most {} MiB",
        bound >> 20
    );
    let b = measure(n, Some(bound))?;
    let grown = b.rss_after.saturating_sub(b.rss_before);
    writeln!(
        report,
        "\nThe same {n} principals into a cache bounded by `max_bytes` = {} MiB (`--cache-max-bytes`), in a process of its own: it kept {} of them, weighing {:.1} MB; the resident set grew by {:.1} MB, {:.1} % of the bound.",
        bound >> 20,
        b.kept,
        b.weighted as f64 / 1e6,
        grown as f64 / 1e6,
        grown as f64 * 100.0 / bound as f64
    )?;
    if b.weighted > bound {
        anyhow::bail!("the weighted size {} passed the bound {bound}", b.weighted);
    }
    // The running server, as deployed: the release binary and its allocator, filled over HTTP.
    eprintln!("==> memory: the release server filled over HTTP with every user's token");
    let (entries, before, after) = ctx.rt.block_on(server_fill(ctx))?;
    let per = after.saturating_sub(before) as f64 / entries.max(1.0);
    writeln!(
        report,
        "\nThe release server (`nearcache-server`, jemalloc) filled over HTTP: `GET /me` with each of the {} seeded users' tokens in turn (wrk, {} connections, 3 s), {entries:.0} principals cached: resident set {:.1} MB before, {:.1} MB after, **{per:.0} B per principal** (the example above, {:.0} B, beside it; the server's figure also holds what serving took: hyper's and sqlx's buffers, the tokens it remembers).",
        crate::seed::USERS,
        args.connections,
        before as f64 / 1e6,
        after as f64 / 1e6,
        m.per_entry()
    )?;
    Ok(())
}

/// Starts the release server with room for every seeded user, sends `GET /me` with each
/// user's token, and returns the principals cached and its resident set before and after.
async fn server_fill(ctx: &Ctx) -> Result<(f64, u64, u64)> {
    let client = reqwest::Client::new();
    let port = crate::instance::port_near(0)?;
    let capacity = (u64::from(crate::seed::USERS) * 2).to_string();
    let flags = ["--cache-capacity", capacity.as_str(), "--audit-rate", "0"];
    let mut inst = Instance::start(&ctx.binary, "bench-memory", &ctx.url, port, &flags)?;
    inst.ready(&client, "coherent").await?;
    let rss = |pid| crate::soak::process::look(pid, 0).map(|p| p.rss);
    let before = rss(inst.pid())?;
    let script = super::http::every_users_token("/me")?;
    super::http::wrk(
        &inst.url("/"),
        &["-s".into(), script],
        ctx.args.connections,
        3,
    )?;
    let metrics = super::http::scrape(&client, &inst).await?;
    let entries = super::http::sample(&metrics, "nearcache_cache_entries")
        .ok_or_else(|| anyhow::anyhow!("no nearcache_cache_entries on /metrics"))?;
    let after = rss(inst.pid())?;
    inst.stop();
    Ok((entries, before, after))
}

/// What the memory example printed.
struct Memory {
    entries: u64,
    rss_before: u64,
    rss_after: u64,
    value_bytes: u64,
    json_bytes: u64,
    /// Entries the cache held at the end, and what they weighed (bytes with a bound).
    kept: u64,
    weighted: u64,
}

impl Memory {
    fn per_entry(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.entries.max(1) as f64
    }
}

fn measure(n: u64, max_bytes: Option<u64>) -> Result<Memory> {
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
    let out = Command::new(&binary)
        .arg(n.to_string())
        .args(max_bytes.map(|b| b.to_string()))
        .output()?;
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
        kept: field("kept")?,
        weighted: field("weighted")?,
    })
}
