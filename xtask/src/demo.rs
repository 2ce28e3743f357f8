//! `cargo xtask demo`: the whole system on this machine.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use crate::instance::{self, Instance};
use crate::seed;

/// Options of the demo.
#[derive(clap::Args)]
pub(crate) struct Args {
    /// Run the scenario, then stop everything and exit instead of waiting for Ctrl-C.
    #[arg(long)]
    exit: bool,
    /// A fleet instead: a relay reading the WAL and publishing to NATS (`NATS_URL`, default
    /// nats://127.0.0.1:4222), and three instances following it with `--source nats`.
    #[arg(long)]
    fleet: bool,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let (url, started) = crate::database()?;
    let result = demo(&url, &args);
    if let Some(cluster) = started {
        match cluster.down() {
            Ok(_) => eprintln!("==> database stopped"),
            Err(e) => eprintln!("xtask: could not stop the database: {e}"),
        }
    }
    result
}

fn demo(url: &str, args: &Args) -> Result<()> {
    crate::migrate(url)?;
    let binary = instance::build_server(false)?;
    let rt = crate::runtime()?;
    rt.block_on(async {
        seed::seed(url).await?;
        println!("==> database {url}");
        println!("    migrated and seeded: {} organizations, {} users", seed::ORGS, seed::USERS);
        let client = reqwest::Client::new();
        let nats = xtask::proxy::nats_url();
        let mut relay = None;
        let mut flags: Vec<&str> = Vec::new();
        if args.fleet {
            let relay_binary = instance::build("nearcache-relay", false)?;
            let port = instance::port_near(9090)?;
            let r = Instance::start(&relay_binary, "relay", url, port, &["--nats-url", &nats])?;
            println!("==> relay: {} (reads the WAL once, publishes to {nats}; log: {})", r.url("/healthz"), r.log.display());
            relay = Some(r);
            flags = vec!["--source", "nats", "--nats-url", &nats];
        }
        // Each instance keeps its cached ids for the next demo's warm start, and refreshes a
        // busy user's entry a minute before its TTL (5 minutes) ends.
        let dir = xtask::workspace_root().join("target").join("instances");
        std::fs::create_dir_all(&dir)?;
        let start = |name: &str, port: u16| {
            let warm = dir.join(format!("{name}.warm")).to_string_lossy().to_string();
            let kept = std::fs::read_to_string(&warm).map_or(0, |ids| ids.lines().count());
            let mut all = flags.clone();
            all.extend(["--warm-file", &warm, "--refresh-after", "4m"]);
            let started = Instance::start(&binary, name, url, instance::port_near(port)?, &all);
            if kept > 0 {
                println!("==> instance {name}: a warm start, {kept} ids kept by the last demo (--warm-file {warm})");
            }
            started
        };
        let mut a = start("a", 8081)?;
        let mut b = start("b", 8082)?;
        let mut c = if args.fleet { Some(start("c", 8083)?) } else { None };
        a.ready(&client, "coherent").await?;
        b.ready(&client, "coherent").await?;
        if let Some(c) = c.as_mut() {
            c.ready(&client, "coherent").await?;
        }
        for i in [Some(&a), Some(&b), c.as_ref()].into_iter().flatten() {
            let health: serde_json::Value = client.get(i.url("/healthz")).send().await?.json().await?;
            println!(
                "==> instance {}: {}  (invalidation source: {}; log: {})",
                i.name,
                i.url(""),
                health["source"].as_str().unwrap_or("?"),
                i.log.display()
            );
        }
        println!("\n==> tokens (HS256, secret {:?}, valid for an hour)", seed::SECRET);
        let tokens: Vec<String> = (1..=3).map(seed::token).collect();
        for (i, t) in tokens.iter().enumerate() {
            println!("T{}={t}   # user {}", i + 1, seed::user_id(i as u32 + 1));
        }
        println!("\n==> try");
        println!("curl -s -H \"Authorization: Bearer $T1\" {}", a.url("/me"));
        println!("curl -s -H \"Authorization: Bearer $T2\" {}", b.url("/me/organization"));
        println!(
            "curl -s -X PATCH -H \"Authorization: Bearer $T1\" -H 'content-type: application/json' -d '{{\"name\":\"Ada\"}}' {}",
            a.url("/me")
        );
        println!("curl -s {}", b.url("/healthz"));
        println!("curl -s {} | grep -E '^nearcache_(cache|source)'", b.url("/metrics"));

        println!("\n==> a change through A, seen through B");
        let get_name = |inst: &Instance, t: &str| {
            let req = client.get(inst.url("/me")).bearer_auth(t.to_string());
            async move {
                let body: serde_json::Value = req.send().await?.json().await?;
                anyhow::Ok(body["user"]["name"].as_str().unwrap_or("?").to_string())
            }
        };
        let before = get_name(&b, &tokens[0]).await?;
        println!("GET   B /me        -> name {before:?} (now cached on B)");
        let again = get_name(&b, &tokens[0]).await?;
        println!("GET   B /me        -> name {again:?} (a cache hit)");
        let new_name = format!("Ada {}", std::process::id());
        let patched = client
            .patch(a.url("/me"))
            .bearer_auth(&tokens[0])
            .json(&json!({"name": new_name}))
            .send()
            .await?;
        println!("PATCH A /me        -> {} (name {new_name:?})", patched.status().as_u16());
        let start = Instant::now();
        loop {
            let seen = get_name(&b, &tokens[0]).await?;
            if seen == new_name {
                println!(
                    "GET   B /me        -> name {seen:?} (B evicted its copy when the change reached it; seen {:.1} ms after the PATCH returned)",
                    start.elapsed().as_secs_f64() * 1000.0
                );
                break;
            }
            if start.elapsed() > Duration::from_secs(5) {
                bail!("B still serves {seen:?} 5 s after the change: coherence is broken");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let health: serde_json::Value = client.get(b.url("/healthz")).send().await?.json().await?;
        println!(
            "\n==> B's online audit so far (--audit-rate 2): {} cached principals loaded again and compared, {} stale",
            health["audit"]["checked"], health["audit"]["stale"]
        );
        if args.exit {
            println!("\n==> stopping (--exit)");
        } else {
            println!("\n==> running; press Ctrl-C to stop");
            tokio::signal::ctrl_c().await?;
            println!("\n==> stopping");
        }
        a.stop();
        b.stop();
        if let Some(c) = c.as_mut() {
            c.stop();
        }
        if let Some(r) = relay.as_mut() {
            r.stop();
        }
        println!("==> instances stopped");
        anyhow::Ok(())
    })
}
