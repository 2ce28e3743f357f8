//! The samples: one row per instance every period, into `target/soak/samples.csv` and a line
//! on the console. A row's columns are declared once, in `row!`: the struct, the CSV's header
//! and its lines come from there.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::fleet::Fleet;
use super::hist::Hist;
use super::load::Shared;
use super::metrics::Scrape;
use super::process;
use super::Plan;

/// Declares the row: each field with its type, its CSV column and its CSV format.
macro_rules! row {
    ($($(#[$doc:meta])* $field:ident: $ty:ty => $column:literal, $format:literal;)*) => {
        /// One instance at one sample.
        #[derive(Debug, Clone, Default)]
        pub(super) struct Row {
            $($(#[$doc])* pub(super) $field: $ty,)*
        }

        impl Row {
            /// The CSV's header line.
            pub(super) fn header() -> String {
                [$($column),*].join(",")
            }

            /// The row as a CSV line.
            pub(super) fn csv(&self) -> String {
                let mut line = String::new();
                $(let _ = write!(line, concat!($format, ","), self.$field);)*
                line.pop();
                line
            }
        }
    };
}

row! {
    /// Seconds since the load began.
    t: f64 => "t_s", "{:.1}";
    instance: usize => "instance", "{}";
    rss: u64 => "rss_bytes", "{}";
    fds: u64 => "fds", "{}";
    pg_connections: u64 => "pg_connections", "{}";
    entries: f64 => "entries", "{}";
    indexed_tags: f64 => "indexed_tags", "{}";
    index_rows: f64 => "index_rows", "{}";
    fence_remembered: f64 => "fence_remembered", "{}";
    loads_in_flight: f64 => "loads_in_flight", "{}";
    tokens: f64 => "tokens_remembered", "{}";
    tasks: f64 => "tokio_tasks", "{}";
    rps: f64 => "requests_per_s", "{:.0}";
    p50_ms: f64 => "p50_ms", "{:.3}";
    p99_ms: f64 => "p99_ms", "{:.3}";
    /// 503 answers (the database down), counted apart from errors.
    unavailable: u64 => "unavailable", "{}";
    errors: u64 => "errors", "{}";
    lag_ms: f64 => "heartbeat_rtt_ms", "{:.2}";
    bypass_s: f64 => "bypass_s", "{:.2}";
    /// The instance's online audit so far (`--audit-rate`): entries checked, and found stale.
    audit_checked: f64 => "audit_checked", "{}";
    audit_stale: f64 => "audit_stale", "{}";
    /// Checked reads so far, all instances.
    checks: u64 => "checks", "{}";
    stale: u64 => "stale", "{}";
}

/// Each instance's time in bypass, from the cache's own gauge every 200 ms, in milliseconds.
pub(super) fn watch_bypass(
    shared: &Arc<Shared>,
    bases: &[String],
    client: &reqwest::Client,
) -> (Arc<Vec<AtomicU64>>, Vec<tokio::task::JoinHandle<()>>) {
    let bypass_ms: Arc<Vec<AtomicU64>> =
        Arc::new(bases.iter().map(|_| AtomicU64::new(0)).collect());
    let tasks = bases
        .iter()
        .enumerate()
        .map(|(i, base)| {
            let (shared, bypass_ms, base, client) = (
                shared.clone(),
                bypass_ms.clone(),
                base.clone(),
                client.clone(),
            );
            tokio::spawn(async move {
                while !shared.stop.load(Relaxed) {
                    let coherent = Scrape::get(&client, &base)
                        .await
                        .is_ok_and(|s| s.value("nearcache_cache_coherent") >= 1.0);
                    if !coherent {
                        bypass_ms[i].fetch_add(200, Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        })
        .collect();
    (bypass_ms, tasks)
}

/// What the samples saw: every row, and each period's latency histogram of all instances.
pub(super) struct Samples {
    pub(super) rows: Vec<Row>,
    pub(super) hists: Vec<(f64, Hist)>,
}

/// Samples every instance each period until the plan's end, writing the CSV as it goes.
#[allow(clippy::too_many_arguments)]
pub(super) async fn sample(
    plan: &Plan,
    fleet: &Fleet,
    shared: &Shared,
    bypass_ms: &[AtomicU64],
    client: &reqwest::Client,
    pg_port: u16,
    start: Instant,
    csv_path: &std::path::Path,
) -> Result<Samples> {
    let mut samples = Samples {
        rows: Vec::new(),
        hists: Vec::new(),
    };
    let mut csv = format!("{}\n", Row::header());
    let mut next = plan.period;
    let mut last_bypass = vec![0u64; fleet.bases.len()];
    let mut last_at = 0.0;
    while next <= plan.total + 1e-9 {
        let wait = next - start.elapsed().as_secs_f64();
        if wait > 0.0 {
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
        let t = start.elapsed().as_secs_f64();
        let span = t - last_at;
        last_at = t;
        let mut all = Hist::default();
        let mut line = String::new();
        for (i, (inst, base)) in fleet.instances.iter().zip(&fleet.bases).enumerate() {
            let traffic = shared.take_traffic(i);
            all.merge(&traffic.latency);
            let proc = process::look(inst.pid(), pg_port)
                .with_context(|| format!("instance {i} (log: {})", inst.log.display()))?;
            let m = Scrape::get(client, base).await.ok();
            let v = |name: &str| m.as_ref().map_or(f64::NAN, |m| m.value(name));
            let bypass = bypass_ms[i].load(Relaxed);
            let row = Row {
                t,
                instance: i,
                rss: proc.rss,
                fds: proc.fds,
                pg_connections: proc.pg_connections,
                entries: v("nearcache_cache_entries"),
                indexed_tags: v("nearcache_cache_indexed_tags"),
                index_rows: v("nearcache_cache_index_rows"),
                fence_remembered: v("nearcache_cache_fence_remembered"),
                loads_in_flight: v("nearcache_cache_loads_in_flight"),
                tokens: v("nearcache_auth_tokens_remembered"),
                tasks: v("nearcache_runtime_alive_tasks"),
                rps: traffic.ok as f64 / span,
                p50_ms: traffic.latency.quantile_ms(0.5),
                p99_ms: traffic.latency.quantile_ms(0.99),
                unavailable: traffic.unavailable,
                errors: traffic.errors,
                lag_ms: v("nearcache_source_heartbeat_rtt_seconds") * 1000.0,
                bypass_s: (bypass - last_bypass[i]) as f64 / 1000.0,
                audit_checked: v("nearcache_cache_audit_checked_total"),
                audit_stale: v("nearcache_cache_audit_stale_total"),
                checks: shared.checks.load(Relaxed),
                stale: shared.stale.load(Relaxed),
            };
            last_bypass[i] = bypass;
            let _ = write!(
                line,
                " | #{i} {:.0} req/s p99 {:.1} ms rss {:.0} MB entries {:.0}",
                row.rps,
                row.p99_ms,
                row.rss as f64 / 1e6,
                row.entries
            );
            csv.push_str(&row.csv());
            csv.push('\n');
            samples.rows.push(row);
        }
        samples.hists.push((t, all));
        eprintln!(
            "    {t:>6.1} s / {:.0} s{line} | {} checks, {} stale",
            plan.total,
            shared.checks.load(Relaxed),
            shared.stale.load(Relaxed)
        );
        std::fs::write(csv_path, &csv)?;
        next += plan.period;
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::Row;

    #[test]
    fn a_rows_line_has_a_value_for_each_column_of_the_header() {
        let row = Row {
            t: 2.0,
            rps: 10.4,
            ..Row::default()
        };
        let header = Row::header();
        let line = row.csv();
        assert_eq!(header.split(',').count(), line.split(',').count());
        assert!(header.starts_with("t_s,instance,rss_bytes"), "{header}");
        assert!(line.starts_with("2.0,0,0"), "{line}");
        assert_eq!(line.split(',').nth(12), Some("10"), "{line}");
    }
}
