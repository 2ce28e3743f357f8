//! The release relay cut off from NATS while writers keep writing: its resident set against
//! its queue's bound (`--max-queued-keys`), and how soon it is active again once NATS is back.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xtask::proxy::Proxy;

use super::http::{sample, scrape};
use super::Ctx;
use crate::instance::Instance;

/// What one outage showed.
struct Outage {
    commits: f64,
    rss_before: u64,
    rss_most: u64,
    rss_after: u64,
    queued_most: f64,
    overflows: f64,
    /// From the cut to the relay no longer active (its lease lost: it stands by).
    stood_by: Option<Duration>,
    /// From NATS being reachable again to the relay being active.
    back: Duration,
}

fn rss(relay: &Instance) -> Result<u64> {
    Ok(crate::soak::process::look(relay.pid(), 0)?.rss)
}

/// Waits until the relay says it is the active relay; how long that took.
async fn until_active(client: &reqwest::Client, relay: &Instance) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let text = scrape(client, relay).await.unwrap_or_default();
        if sample(&text, "nearcache_relay_active") == Some(1.0) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "the relay was not active within 60 s (log: {})",
                relay.log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn outage(url: &str, seconds: u64, clients: usize) -> Result<Outage> {
    let bin = xtask::find_pg_bin().context("no PostgreSQL binaries (pgbench)")?;
    let script = super::deployed::users_script()?;
    let relay_binary = crate::instance::build("nearcache-relay", true)?;
    let nats = xtask::proxy::nats_url();
    let proxy = Proxy::start(nats.trim_start_matches("nats://")).await;
    let id = format!("{:08x}", rand::random::<u32>());
    let (stream, prefix) = (format!("NC_BENCH_OUTAGE_{id}"), format!("ncoutage.{id}"));
    let port = crate::instance::port_near(0)?;
    let mut relay = Instance::start(
        &relay_binary,
        "bench-relay-outage",
        url,
        port,
        &[
            "--nats-url",
            &proxy.nats_url(),
            "--nats-stream",
            &stream,
            "--nats-prefix",
            &prefix,
        ],
    )?;
    let client = reqwest::Client::new();
    until_active(&client, &relay).await?;
    // Settled: what it holds while following a quiet database.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss(&relay)?;

    proxy.down();
    let cut = Instant::now();
    let writes = {
        let (url, script) = (url.to_string(), script.clone());
        tokio::task::spawn_blocking(move || {
            super::deployed::pgbench(&bin, &url, &script, clients, seconds)
        })
    };
    let (mut rss_most, mut queued_most, mut overflows) = (rss_before, 0f64, 0f64);
    let mut stood_by = None;
    while !writes.is_finished() {
        rss_most = rss_most.max(rss(&relay)?);
        let text = scrape(&client, &relay).await.unwrap_or_default();
        queued_most = queued_most.max(sample(&text, "nearcache_relay_queued").unwrap_or(0.0));
        overflows =
            overflows.max(sample(&text, "nearcache_relay_queue_overflows_total").unwrap_or(0.0));
        if stood_by.is_none() && sample(&text, "nearcache_relay_active") == Some(0.0) {
            stood_by = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tps = writes.await??;
    rss_most = rss_most.max(rss(&relay)?);

    proxy.up();
    let back = until_active(&client, &relay).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss(&relay)?;
    relay.stop();
    if let Ok(nats) = async_nats::connect(nats).await {
        let _ = async_nats::jetstream::new(nats)
            .delete_stream(&stream)
            .await;
    }
    Ok(Outage {
        commits: tps * seconds as f64,
        rss_before,
        rss_most,
        rss_after,
        queued_most,
        overflows,
        stood_by,
        back,
    })
}

/// Cuts the release relay off from NATS under pgbench and writes what its memory did.
pub(super) fn section(ctx: &Ctx, report: &mut String) -> Result<()> {
    // Long enough, at this machine's 10 000 commits/s, to fill the default bound and pass it.
    let seconds = if ctx.args.quick { 3 } else { 40 };
    let clients = 8;
    eprintln!("==> relay outage: the release relay cut off from NATS for {seconds} s of pgbench");
    let o = ctx.rt.block_on(outage(&ctx.url, seconds, clients))?;
    let mb = |b: u64| format!("{:.1} MB", b as f64 / 1e6);
    writeln!(report, "\n## The relay cut off from NATS\n\nThe release `nearcache-relay` on the WAL, as deployed (`--max-queued-keys` at its default, 200 000), its NATS connection through a loopback proxy. Once it is active, the proxy cuts NATS off for {seconds} s while pgbench ({clients} clients, single-row UPDATEs of random users' names) writes, then lets it through again. Its resident set and `/metrics` are sampled every 100 ms.\n")?;
    writeln!(report, "| commits during the outage | relay RSS before | most during | 2 s after NATS is back | most keys queued | queue overflows (each a new epoch) | stood by (lease lost) after the cut | active again after NATS is back |\n|---|---|---|---|---|---|---|---|")?;
    writeln!(
        report,
        "| {:.0} | {} | {} | {} | {:.0} | {:.0} | {} | {} |",
        o.commits,
        mb(o.rss_before),
        mb(o.rss_most),
        mb(o.rss_after),
        o.queued_most,
        o.overflows,
        o.stood_by
            .map_or_else(|| "no".to_string(), super::report::ms),
        super::report::ms(o.back)
    )?;
    Ok(())
}
