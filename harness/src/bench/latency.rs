//! Invalidation latency: from an UPDATE's commit to the eviction in two in-process instances,
//! each a cache with its own source, for each source.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nearcache::{Cache, CacheConfig, Mode, TableHandler};
use nearcache_listener::{Handler, ListenerConfig, ListenerStatus};
use nearcache_wal::WalConfig;
use rand::RngExt;

use super::report::{ms, pct};
use super::{plot, Ctx};
use crate::seed;

/// The core's handler on a cache, recording when each key was evicted.
pub(super) struct Timed {
    pub(super) cache: Cache<String, u32>,
    pub(super) inner: TableHandler<String, u32>,
    pub(super) seen: Mutex<HashMap<String, Instant>>,
    /// When the whole cache was last flushed (a source that reconnected, a table flush): that
    /// evicts every key too.
    pub(super) flushed: Mutex<Option<Instant>>,
    pub(super) changed: tokio::sync::Notify,
}

impl Timed {
    /// How long after `committed` this instance evicted `key`, waiting until `deadline`;
    /// `None` if it did not by then. A flush counts as the key's eviction.
    pub(super) async fn evicted_after(
        &self,
        key: &str,
        committed: Instant,
        deadline: Instant,
    ) -> Option<Duration> {
        self.evicted_after_by(key, committed, deadline, true).await
    }

    /// The same; with `flushes == false`, only an eviction of the key itself counts.
    pub(super) async fn evicted_after_by(
        &self,
        key: &str,
        committed: Instant,
        deadline: Instant,
        flushes: bool,
    ) -> Option<Duration> {
        loop {
            // Register for the wake-up before looking, so that none is missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let flushed = (*self.flushed.lock().unwrap()).filter(|f| flushes && *f >= committed);
            let at = self.seen.lock().unwrap().get(key).copied().or(flushed);
            if let Some(at) = at {
                return Some(at.saturating_duration_since(committed));
            }
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                return None;
            }
        }
    }
}

impl Handler for Timed {
    fn bypass(&self) {
        // In bypass the cache serves nothing (and is flushed before it serves again).
        self.inner.bypass();
        self.flushed_now();
    }
    fn flush_all(&self) {
        self.inner.flush_all();
        self.flushed_now();
    }
    fn coherent(&self) {
        self.inner.coherent();
    }
    fn invalidate(&self, table: &str, keys: &[String]) -> bool {
        let cached = self.inner.invalidate(table, keys);
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap();
        for k in keys {
            seen.insert(k.clone(), now);
        }
        self.changed.notify_waiters();
        cached
    }
    fn flush_table(&self, table: &str) -> bool {
        let cached = self.inner.flush_table(table);
        self.flushed_now();
        cached
    }
}

impl Timed {
    fn flushed_now(&self) {
        *self.flushed.lock().unwrap() = Some(Instant::now());
        self.changed.notify_waiters();
    }
}

/// Latencies of one measure.
pub(super) struct Series {
    pub(super) name: String,
    pub(super) samples: Vec<Duration>,
}

/// An invalidation source to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Wal,
    /// The WAL source applying commits when decoded, without the visibility gate: what it did
    /// before, kept to measure the gate's cost (it can serve superseded rows).
    WalAtDecoding,
    Notify,
}

impl Source {
    pub(super) fn name(self) -> &'static str {
        match self {
            Source::Wal => "WAL",
            Source::WalAtDecoding => "WAL applied at decoding (no gate, for comparison)",
            Source::Notify => "LISTEN",
        }
    }
}

/// Spawns `source` for `handler` until `stop` says so.
pub(super) fn spawn_source<H: Handler>(
    source: Source,
    url: &str,
    handler: Arc<H>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<ListenerStatus> {
    let status = ListenerStatus::default();
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    match source {
        Source::Wal | Source::WalAtDecoding => {
            let mut config = WalConfig::new(url)?;
            config.apply_at_decoding = source == Source::WalAtDecoding;
            tokio::spawn(nearcache_wal::run(config, handler, status.clone(), stopped));
        }
        Source::Notify => {
            tokio::spawn(nearcache_listener::run(
                ListenerConfig::new(url)?,
                handler,
                status.clone(),
                stopped,
            ));
        }
    }
    Ok(status)
}

/// For each source, from an UPDATE's return to the eviction, in two in-process instances,
/// over 1000 updates.
pub(super) async fn invalidation_latency(url: &str) -> Result<Vec<Series>> {
    let mut all = Vec::new();
    for source in [Source::Wal, Source::WalAtDecoding, Source::Notify] {
        all.extend(latency_of(url, source).await?);
    }
    Ok(all)
}

async fn latency_of(url: &str, source: Source) -> Result<Vec<Series>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut instances = Vec::new();
    for _ in 0..2 {
        let cache = Cache::new(CacheConfig {
            initial_mode: Mode::Bypass,
            ..CacheConfig::default()
        });
        let handler = Arc::new(Timed {
            inner: TableHandler::new(cache.clone(), nearcache_pg::tags::PRINCIPAL_TABLES),
            cache,
            seen: Mutex::default(),
            flushed: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        });
        let status = spawn_source(source, url, handler.clone(), stop_rx.clone())?;
        instances.push((handler, status));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while instances
        .iter()
        .any(|(h, _)| h.cache.mode() != Mode::Coherent)
    {
        if Instant::now() > deadline {
            bail!("the listeners did not start");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut per_instance = Vec::new();
    let mut all = Vec::new();
    let mut rng = rand::rng();
    // Every update stores a name no row has had: an update that leaves a row as it was (the same
    // key drawn at the same `n` by an earlier arm or run) changes nothing, and no source reports
    // it, rightly.
    let run: u64 = rng.random();
    for n in 0..1000 {
        let key = seed::user_id(rng.random_range(1..=seed::USERS));
        for (h, _) in &instances {
            h.seen.lock().unwrap().remove(&key);
        }
        sqlx::query("UPDATE users SET name = $2 WHERE id = $1::uuid")
            .bind(&key)
            .bind(format!("bench {run:016x} {n}"))
            .execute(&pool)
            .await?;
        let committed = Instant::now();
        let wait_deadline = committed + Duration::from_secs(5);
        let mut worst = Duration::ZERO;
        for (i, (h, status)) in instances.iter().enumerate() {
            let Some(d) = h.evicted_after(&key, committed, wait_deadline).await else {
                let s = status.snapshot();
                bail!(
                    "{}: update {n} did not reach instance {i} within 5 s (connections {}, disconnects {}, heartbeat timeouts {}, visibility polls {}, last error: {})",
                    source.name(),
                    s.connections,
                    s.disconnects,
                    s.heartbeat_timeouts,
                    s.visibility_polls,
                    status.last_error().unwrap_or_else(|| "none".into())
                );
            };
            per_instance.push(d);
            worst = worst.max(d);
        }
        all.push(worst);
    }
    let _ = stop_tx.send(true);
    pool.close().await;
    Ok(vec![
        Series {
            name: format!("{}: commit to eviction, per instance", source.name()),
            samples: per_instance,
        },
        Series {
            name: format!("{}: commit to eviction on all instances", source.name()),
            samples: all,
        },
    ])
}

/// Measures commit → eviction for each source and writes its table and CDF.
pub(super) fn section(ctx: &Ctx, report: &mut String) -> Result<()> {
    let Ctx {
        url, rt, charts, ..
    } = ctx;
    eprintln!("==> invalidation latency: 1000 updates, two instances");
    let lat = rt.block_on(invalidation_latency(url))?;
    writeln!(report, "\n## Invalidation latency\n\nFrom the UPDATE's return (commit acknowledged) to the eviction, over 1000 updates, two in-process instances each with its own cache and source, for each source.\n")?;
    writeln!(report, "| measure | p50 | p99 | max |\n|---|---|---|---|")?;
    plot::lines(
        &charts.join("latency-cdf.svg"),
        "Commit → eviction (CDF)",
        ("milliseconds", "fraction of updates"),
        &lat.iter()
            .map(|s| (s.name.clone(), plot::cdf(&s.samples)))
            .collect::<Vec<_>>(),
    )?;
    for series in &lat {
        let v = &series.samples;
        writeln!(
            report,
            "| {} | {} | {} | {} |",
            series.name,
            ms(pct(v, 50.0)),
            ms(pct(v, 99.0)),
            ms(pct(v, 100.0))
        )?;
    }
    writeln!(
        report,
        "\n![commit to eviction, CDF](bench/latency-cdf.svg)"
    )?;
    Ok(())
}
