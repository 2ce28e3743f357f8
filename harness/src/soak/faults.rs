//! The soak's faults, each applied to the running system, with the evidence that it took
//! effect (a counter of every instance's source that must move) and the wait for recovery to
//! Coherent on every instance.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use tokio::task::JoinHandle;

use super::fleet::Fleet;
use super::metrics::Scrape;
use super::DATABASE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// `pg_terminate_backend` of every instance's source connection.
    Terminate,
    /// SIGSTOP of every instance's source backend for longer than the heartbeat timeout, then
    /// SIGCONT.
    Stop,
    /// One UPDATE of 10 000 users (cached ones among them).
    Burst,
    /// The whole cluster stopped (fast shutdown) and started again.
    Restart,
    /// A synchronous standby that does not exist, for a few seconds: every commit meanwhile is
    /// flushed and decodable but not visible until the setting is reset.
    SyncStandby,
}

/// How long the synchronous standby is missing.
const SYNC_MISSING: Duration = Duration::from_secs(3);

impl Fault {
    pub(super) fn name(self) -> &'static str {
        match self {
            Fault::Terminate => "source backends terminated",
            Fault::Stop => "source backends SIGSTOPped past the heartbeat timeout",
            Fault::Burst => "10 000-row UPDATE",
            Fault::Restart => "cluster restarted",
            Fault::SyncStandby => "synchronous standby missing for 3 s",
        }
    }

    /// The counter of `nearcache_source_*` that must move on every instance, and by how much.
    fn evidence(self) -> (&'static str, f64) {
        match self {
            Fault::Terminate | Fault::Restart => ("nearcache_source_connections_total", 1.0),
            Fault::Stop => ("nearcache_source_heartbeat_timeouts_total", 1.0),
            // LISTEN may carry many rows in one notification: at least one came. After a
            // missing standby, the held commits were delivered once visible.
            Fault::Burst | Fault::SyncStandby => ("nearcache_source_notifications_total", 1.0),
        }
    }
}

/// The schedule: `slots` faults, cycling through terminate, stop, a missing synchronous
/// standby and burst, with the cluster restarted once, in the middle (so that the one-minute
/// soak's four slots have each kind but the burst).
pub(super) fn schedule(slots: usize) -> Vec<Fault> {
    let cycle = [
        Fault::Terminate,
        Fault::Stop,
        Fault::SyncStandby,
        Fault::Burst,
    ];
    (0..slots)
        .map(|i| {
            if i == slots / 2 {
                Fault::Restart
            } else {
                cycle[(i - usize::from(i > slots / 2)) % cycle.len()]
            }
        })
        .collect()
}

/// What happened to one fault.
#[derive(Debug, Clone)]
pub(super) struct Outcome {
    pub(super) fault: Fault,
    /// Seconds into the run when it was applied.
    pub(super) at: f64,
    /// How long the fault itself took (a stop's pause, a restart, the UPDATE).
    pub(super) took: Duration,
    /// From the end of the fault to every instance coherent with the evidence seen; `None`
    /// if that did not happen within the deadline.
    pub(super) recovered_after: Option<Duration>,
    pub(super) detail: String,
}

/// Everything a fault needs.
pub(super) struct Target<'a> {
    pub(super) pool: &'a sqlx::PgPool,
    pub(super) database: &'a str,
    /// The instances, which must be coherent again.
    pub(super) bases: &'a [String],
    /// Where the fault's counter moves: the instances, or the relay they follow.
    pub(super) evidence: &'a [String],
    pub(super) client: &'a reqwest::Client,
    pub(super) heartbeat_timeout: Duration,
}

/// The source backends of the soak's database: WAL senders and LISTEN connections.
macro_rules! source_backends {
    ($select:literal) => {
        concat!(
            "SELECT ",
            $select,
            " FROM pg_stat_activity
              WHERE application_name IN ('nearcache-wal', 'nearcache-listener') AND datname = $1"
        )
    };
}

/// Applies the faults of [`schedule`] at `times` (seconds after `start`) on a task of their
/// own, saying each one's outcome as it comes. A fault that cannot be applied is recorded as
/// not recovered (the verdict fails on it), said at once, and the schedule goes on.
pub(super) fn spawn(
    url: &str,
    fleet: &Fleet,
    client: &reqwest::Client,
    times: Vec<f64>,
    heartbeat_timeout: Duration,
    start: Instant,
) -> JoinHandle<Result<Vec<Outcome>>> {
    let (url, bases, evidence, client) = (
        url.to_string(),
        fleet.bases.clone(),
        fleet.evidence.clone(),
        client.clone(),
    );
    tokio::spawn(async move {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await?;
        let target = Target {
            pool: &pool,
            database: DATABASE,
            bases: &bases,
            evidence: &evidence,
            client: &client,
            heartbeat_timeout,
        };
        let mut outcomes: Vec<Outcome> = Vec::new();
        for (fault, due) in schedule(times.len()).into_iter().zip(times) {
            let wait = due - start.elapsed().as_secs_f64();
            if wait > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            }
            let outcome = match apply(fault, &target, start).await {
                Ok(outcome) => outcome,
                Err(e) => Outcome {
                    fault,
                    at: start.elapsed().as_secs_f64(),
                    took: Duration::ZERO,
                    recovered_after: None,
                    detail: format!("FAILED to apply: {e:#}"),
                },
            };
            eprintln!(
                "    {:>6.1} s  fault: {} ({}); {}",
                outcome.at,
                fault.name(),
                outcome.detail,
                match outcome.recovered_after {
                    Some(d) => format!("every instance coherent {:.2} s after", d.as_secs_f64()),
                    None => "NOT recovered within 60 s".into(),
                }
            );
            outcomes.push(outcome);
        }
        anyhow::Ok(outcomes)
    })
}

pub(super) async fn apply(fault: Fault, t: &Target<'_>, started: Instant) -> Result<Outcome> {
    let at = started.elapsed().as_secs_f64();
    let (counter, by) = fault.evidence();
    let mut before = Vec::new();
    for base in t.evidence {
        before.push(Scrape::get(t.client, base).await?.value(counter));
    }
    let began = Instant::now();
    let detail = match fault {
        Fault::Terminate => {
            let n: i64 = sqlx::query_scalar(source_backends!("count(pg_terminate_backend(pid))"))
                .bind(t.database)
                .fetch_one(t.pool)
                .await?;
            format!("{n} backends terminated")
        }
        Fault::Stop => {
            let pids: Vec<i32> = sqlx::query_scalar(source_backends!("pid"))
                .bind(t.database)
                .fetch_all(t.pool)
                .await?;
            if pids.is_empty() {
                bail!("no source backend to stop");
            }
            signal("-STOP", &pids)?;
            let pause = t.heartbeat_timeout + Duration::from_secs(2);
            tokio::time::sleep(pause).await;
            signal("-CONT", &pids)?;
            format!("{} backends stopped for {pause:?}", pids.len())
        }
        Fault::Burst => {
            let n = sqlx::query(
                "UPDATE users SET name = name || '.'
                  WHERE id IN (SELECT id FROM users ORDER BY id OFFSET 1000 LIMIT 10000)",
            )
            .execute(t.pool)
            .await?
            .rows_affected();
            format!("{n} rows in one transaction")
        }
        Fault::Restart => {
            tokio::task::spawn_blocking(move || -> Result<()> {
                let cluster = crate::cluster()?;
                cluster.down()?;
                cluster.up()?;
                Ok(())
            })
            .await??;
            "fast shutdown, start".to_string()
        }
        Fault::SyncStandby => {
            // ALTER SYSTEM and a reload assign no xid, so they do not wait themselves.
            let set = async |sql: &str| -> Result<()> {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(t.pool)
                    .await?;
                Ok(())
            };
            // One statement each: ALTER SYSTEM refuses to run in a transaction block, which a
            // multi-statement query is.
            set("ALTER SYSTEM SET synchronous_standby_names = 'nearcache_soak_missing'").await?;
            set("SELECT pg_reload_conf()").await?;
            tokio::time::sleep(SYNC_MISSING / 2).await;
            let waiting: Result<i64, sqlx::Error> = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
            )
            .fetch_one(t.pool)
            .await;
            tokio::time::sleep(SYNC_MISSING / 2).await;
            // Whatever happened meanwhile, the standby comes back: left missing, every writer
            // would wait for ever.
            set("ALTER SYSTEM RESET synchronous_standby_names").await?;
            set("SELECT pg_reload_conf()").await?;
            let waiting = waiting?;
            if waiting == 0 {
                bail!("no commit waited for the missing standby");
            }
            format!("{waiting} commits waiting for the standby halfway")
        }
    };
    let took = began.elapsed();
    let ended = Instant::now();
    let deadline = ended + Duration::from_secs(60);
    let mut recovered_after = None;
    while Instant::now() < deadline {
        let mut all = true;
        for (base, before) in t.evidence.iter().zip(&before) {
            let moved = Scrape::get(t.client, base)
                .await
                .is_ok_and(|s| s.value(counter) >= before + by);
            all &= moved;
        }
        for base in t.bases {
            let coherent = Scrape::get(t.client, base)
                .await
                .is_ok_and(|s| s.value("nearcache_cache_coherent") >= 1.0);
            all &= coherent;
        }
        if all {
            recovered_after = Some(ended.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Outcome {
        fault,
        at,
        took,
        recovered_after,
        detail,
    })
}

fn signal(which: &str, pids: &[i32]) -> Result<()> {
    let status = std::process::Command::new("kill")
        .arg(which)
        .args(pids.iter().map(ToString::to_string))
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill {which} {pids:?} failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_restarts_once_in_the_middle() {
        use Fault::*;
        assert_eq!(schedule(4), [Terminate, Stop, Restart, SyncStandby]);
        assert_eq!(
            schedule(7),
            [
                Terminate,
                Stop,
                SyncStandby,
                Restart,
                Burst,
                Terminate,
                Stop
            ]
        );
    }
}
