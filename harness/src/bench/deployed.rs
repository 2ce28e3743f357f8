//! What writers pay as users deploy nearcache: pgbench (prepared single-row UPDATEs of
//! `users.name`) against the database as the migrations leave it, with the release server as
//! the consumer, beside no consumer at all and beside `pg_recvlogical` on the same publication
//! (the least any logical-decoding consumer costs). Arms run A-B-C-D-D-C-B-A and are averaged;
//! each reports commits per second, the Postgres CPU per commit (every backend, the WAL sender
//! included) and the consumer's own CPU per commit.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::Ctx;
use crate::instance::Instance;
use crate::seed;

/// One arm's averages.
#[derive(Debug, Clone, Default)]
pub(super) struct DeployedRow {
    pub(super) arm: &'static str,
    pub(super) tps: f64,
    /// Postgres CPU (user + system, every process) per commit.
    pub(super) postgres_us: f64,
    /// The consumer's CPU per commit (none without one).
    pub(super) consumer_us: Option<f64>,
    /// The WAL source's visibility polls per commit.
    pub(super) polls: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    /// The database's writes for the WAL (as migrated), nobody decoding.
    None,
    /// `pg_recvlogical` decoding the `nearcache` publication.
    Recvlogical,
    /// `nearcache-server --source wal`, the database as migrated.
    Wal,
    /// `nearcache-server --source notify`, the triggers on (`nearcache_set_source('notify')`).
    Notify,
}

impl Arm {
    fn name(self) -> &'static str {
        match self {
            Arm::None => "no consumer, no trigger",
            Arm::Recvlogical => "pg_recvlogical (pgoutput, the nearcache publication)",
            Arm::Wal => "nearcache-server --source wal (as migrated)",
            Arm::Notify => "nearcache-server --source notify (triggers)",
        }
    }

    fn writes_for(self) -> &'static str {
        if self == Arm::Notify {
            "notify"
        } else {
            "wal"
        }
    }
}

/// CPU (user + system) of a process from /proc, in ticks; with `children`, what its reaped
/// children used too.
fn ticks(pid: u32, children: bool) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0;
    };
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // After the state: utime, stime, cutime, cstime are stat's fields 14-17 (11-14 here).
    let own = f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0);
    if children {
        own + f.get(13).unwrap_or(&0) + f.get(14).unwrap_or(&0)
    } else {
        own
    }
}

/// Every Postgres process's CPU, in ticks, those that exited included (the postmaster reaps
/// them, and its children's time keeps theirs).
fn postgres_ticks() -> u64 {
    let mut total = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if !stat.contains("(postgres)") {
                continue;
            }
            let ppid: Option<u32> = stat
                .rsplit_once(") ")
                .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok());
            // The postmaster (its parent is not a postgres) counts its reaped children.
            let postmaster = ppid.is_some_and(|p| {
                !std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .is_ok_and(|s| s.contains("(postgres)"))
            });
            total += ticks(pid, postmaster);
        }
    }
    total
}

/// A consumer of an arm, stopped when dropped.
enum Consumer {
    Recvlogical(Child, String),
    Server(Instance),
}

impl Consumer {
    fn pid(&self) -> u32 {
        match self {
            Consumer::Recvlogical(c, _) => c.id(),
            Consumer::Server(i) => i.pid(),
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        match self {
            Consumer::Recvlogical(child, _) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Consumer::Server(i) => i.stop(),
        }
    }
}

pub(super) fn pg_tool(bin: &Path, name: &str) -> PathBuf {
    bin.join(name)
}

/// `pg_recvlogical` on the nearcache publication (pgoutput), creating `slot` if need be and
/// writing what it receives to `to` (`-` for its standard output): the least a logical-decoding
/// consumer costs, the floor the benches set the WAL source and the relay against.
pub(super) fn recvlogical(bin: &Path, url: &str, slot: &str, to: &str) -> Command {
    let mut command = Command::new(pg_tool(bin, "pg_recvlogical"));
    command
        .args([
            "-d",
            url,
            "--slot",
            slot,
            "--create-slot",
            "--if-not-exists",
        ])
        .args(["-P", "pgoutput", "--start", "-f", to])
        .args(["-o", "proto_version=1", "-o", "publication_names=nearcache"]);
    command
}

/// Runs pgbench for `seconds` with `clients` against `url`; returns commits per second.
pub(super) fn pgbench(
    bin: &Path,
    url: &str,
    script: &Path,
    clients: usize,
    seconds: u64,
) -> Result<f64> {
    let out = Command::new(pg_tool(bin, "pgbench"))
        .args([
            "-n",
            "-M",
            "prepared",
            "-c",
            &clients.to_string(),
            "-j",
            "2",
        ])
        .args(["-T", &seconds.to_string(), "-f"])
        .arg(script)
        .arg(url)
        .output()
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text.lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no tps in pgbench's output: {text}"))
}

async fn start(
    arm: Arm,
    bin: &Path,
    server: &PathBuf,
    url: &str,
    client: &reqwest::Client,
) -> Result<Option<Consumer>> {
    Ok(match arm {
        Arm::None => None,
        Arm::Recvlogical => {
            let slot = "nearcache_bench_recvlogical".to_string();
            let child = recvlogical(bin, url, &slot, "/dev/null")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting pg_recvlogical")?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some(Consumer::Recvlogical(child, slot))
        }
        Arm::Wal | Arm::Notify => {
            let port = crate::instance::port_near(0)?;
            let source = if arm == Arm::Wal { "wal" } else { "notify" };
            let mut i = Instance::start(
                server,
                &format!("bench-writes-{source}"),
                url,
                port,
                &["--source", source],
            )?;
            i.ready(client, "coherent").await?;
            Some(Consumer::Server(i))
        }
    })
}

/// Writes pgbench's script: a single-row UPDATE of a random seeded user's name; its path.
pub(super) fn users_script() -> Result<PathBuf> {
    let script = crate::workspace_root()
        .join("target")
        .join("bench")
        .join("pgbench-users.sql");
    std::fs::create_dir_all(script.parent().expect("a parent"))?;
    std::fs::write(
        &script,
        format!(
            // A new name every time: an UPDATE that stores what was there already fires no
            // notification and evicts nothing, and would flatter the consumers.
            "\\set k random(1, {})\n\\set v random(1, 1000000000)\nUPDATE users SET name = 'w' || :v WHERE id = ('00000000-0000-4000-9000-' || lpad(to_hex(:k::int), 12, '0'))::uuid;\n",
            crate::seed::USERS
        ),
    )?;
    Ok(script)
}

/// Runs the arms; `seconds` each, `clients` pgbench clients.
pub(super) async fn deployed(url: &str, seconds: u64, clients: usize) -> Result<Vec<DeployedRow>> {
    let bin = xtask::find_pg_bin().context("no PostgreSQL binaries (pgbench, pg_recvlogical)")?;
    let server = crate::instance::build_server(true)?;
    let client = reqwest::Client::new();
    let script = users_script()?;
    let order = [
        Arm::None,
        Arm::Recvlogical,
        Arm::Wal,
        Arm::Notify,
        Arm::Notify,
        Arm::Wal,
        Arm::Recvlogical,
        Arm::None,
    ];
    let mut runs: Vec<(Arm, DeployedRow)> = Vec::new();
    for arm in order {
        crate::choose_source(url, arm.writes_for()).await?;
        let consumer = start(arm, &bin, &server, url, &client).await?;
        let (pg0, c0) = (
            postgres_ticks(),
            consumer.as_ref().map(|c| ticks(c.pid(), false)),
        );
        let tps = {
            let (bin, url, script) = (bin.clone(), url.to_string(), script.clone());
            tokio::task::spawn_blocking(move || pgbench(&bin, &url, &script, clients, seconds))
                .await??
        };
        // The consumer catches up before its CPU is read.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c1 = consumer.as_ref().map(|c| ticks(c.pid(), false));
        let pg1 = postgres_ticks();
        let polls = match &consumer {
            Some(Consumer::Server(i)) if arm != Arm::Notify => visibility_polls(&client, i).await,
            _ => None,
        };
        let slot = match &consumer {
            Some(Consumer::Recvlogical(_, slot)) => Some(slot.clone()),
            _ => None,
        };
        drop(consumer);
        if let Some(slot) = slot {
            drop_slot(url, &slot).await?;
        }
        let commits = tps * seconds as f64;
        let us = |ticks: u64| ticks as f64 * 10_000.0 / commits.max(1.0);
        eprintln!("    {}: {tps:.0} tx/s", arm.name());
        runs.push((
            arm,
            DeployedRow {
                arm: arm.name(),
                tps,
                postgres_us: us(pg1 - pg0),
                consumer_us: c0.zip(c1).map(|(a, b)| us(b - a)),
                polls: polls.map(|p| p / commits.max(1.0)),
            },
        ));
    }
    crate::choose_source(url, "both").await?;
    let mut rows = Vec::new();
    for arm in [Arm::None, Arm::Recvlogical, Arm::Wal, Arm::Notify] {
        let of_arm: Vec<&DeployedRow> = runs.iter().filter(|r| r.0 == arm).map(|r| &r.1).collect();
        let n = of_arm.len() as f64;
        let mean = |f: fn(&DeployedRow) -> Option<f64>| {
            of_arm
                .iter()
                .map(|r| f(r))
                .sum::<Option<f64>>()
                .map(|s| s / n)
        };
        rows.push(DeployedRow {
            arm: arm.name(),
            tps: mean(|r| Some(r.tps)).unwrap_or(0.0),
            postgres_us: mean(|r| Some(r.postgres_us)).unwrap_or(0.0),
            consumer_us: mean(|r| r.consumer_us),
            polls: mean(|r| r.polls),
        });
    }
    Ok(rows)
}

/// The visibility polls a WAL instance has taken, from its /metrics.
async fn visibility_polls(client: &reqwest::Client, inst: &Instance) -> Option<f64> {
    let text = super::http::scrape(client, inst).await.ok()?;
    super::http::sample(&text, "nearcache_source_visibility_polls_total")
}

pub(super) async fn drop_slot(url: &str, slot: &str) -> Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    for _ in 0..50 {
        let dropped = sqlx::query(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
              WHERE slot_name = $1 AND NOT active",
        )
        .bind(slot)
        .execute(&pool)
        .await?
        .rows_affected();
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1")
                .bind(slot)
                .fetch_one(&pool)
                .await?;
        if dropped > 0 || left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.close().await;
    Ok(())
}

/// Measures what writers pay with the release server and `pg_recvlogical` as consumers, and
/// writes its table.
pub(super) fn section(ctx: &Ctx, report: &mut String) -> Result<()> {
    let Ctx { url, rt, args, .. } = ctx;
    eprintln!("==> what writers pay as deployed: pgbench, the release server, pg_recvlogical");
    let rows = rt.block_on(deployed(url, args.write_seconds, 8))?;
    writeln!(report, "\n## What writers pay, as deployed\n\npgbench, 8 clients, prepared single-row UPDATEs of `users.name` (random users of {}), {} s per arm, arms run A-B-C-D-D-C-B-A and averaged, on the database as the migrations leave it (`wal_level = logical`: no trigger) and, for LISTEN, after `nearcache_set_source('notify')`. The consumer is the release `nearcache-server` (no HTTP load) or `pg_recvlogical` on the same publication, the least a logical-decoding consumer costs. CPU from /proc: every Postgres process (the WAL sender included), and the consumer's own.\n", seed::USERS, args.write_seconds)?;
    writeln!(report, "| arm | tx/s | x no consumer | Postgres CPU per commit | consumer CPU per commit | visibility polls per commit |\n|---|---|---|---|---|---|")?;
    let base = rows.first().map_or(1.0, |r| r.tps);
    for r in &rows {
        writeln!(
            report,
            "| {} | {:.0} | {:.2} | {:.0} µs | {} | {} |",
            r.arm,
            r.tps,
            r.tps / base,
            r.postgres_us,
            r.consumer_us
                .map_or("—".to_string(), |u| format!("{u:.1} µs")),
            r.polls.map_or("—".to_string(), |p| format!("{p:.3}"))
        )?;
    }
    if rows.iter().any(|r| r.tps <= 0.0) {
        bail!("a write arm measured no commits");
    }
    Ok(())
}
