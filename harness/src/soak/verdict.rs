//! The soak's verdict: each criterion against what was measured (the command fails on any
//! one), and the report with its charts. Limits come from the configuration's own defaults.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Result;
use nearcache_tower::Authenticator;

use super::faults::Outcome;
use super::hist::Hist;
use super::load;
use super::sample::{Row, Samples};
use super::{Args, Plan, POOL_SIZE};
use crate::bench::plot;

/// A chart of the report: file stem, title, unit, and the value of a row.
type Chart = (&'static str, &'static str, &'static str, fn(&Row) -> f64);

/// One pass criterion and what was measured against it.
pub(super) struct Criterion {
    pub(super) name: String,
    pub(super) measured: String,
    pub(super) pass: bool,
}

pub(super) fn judge(
    args: &Args,
    plan: &Plan,
    samples: &Samples,
    outcomes: &[Outcome],
    shared: &load::Shared,
    exits: &[(String, Option<String>)],
) -> Vec<Criterion> {
    let (rows, hists) = (&samples.rows, &samples.hists);
    let fence_memory = nearcache::CacheConfig::default().fence_memory as f64;
    let tokens_max = Authenticator::<i64>::REMEMBERED_MAX as f64;
    let mut out = Vec::new();
    let mut check = |name: &str, pass: bool, measured: String| {
        out.push(Criterion {
            name: name.into(),
            measured,
            pass,
        });
    };
    let checks = shared.checks.load(Relaxed);
    let stale = shared.stale.load(Relaxed);
    check(
        "no stale read past the bound",
        stale == 0 && checks >= 100,
        format!(
            "{stale} stale of {checks} checked reads (bound {:?})",
            args.heartbeat_timeout + Duration::from_secs(1)
        ),
    );
    // Each instance's own audit (the server's default rate), as its last sample says.
    let last = |i: usize| rows.iter().rev().find(|r| r.instance == i);
    let audited: Vec<&Row> = (0..).map_while(last).collect();
    let sum = |f: fn(&Row) -> f64| {
        audited
            .iter()
            .map(|r| f(r))
            .filter(|v| v.is_finite())
            .sum::<f64>()
    };
    let (audit_checked, audit_stale) = (sum(|r| r.audit_checked), sum(|r| r.audit_stale));
    check(
        "the online audit found nothing stale",
        audit_stale == 0.0 && audit_checked > 0.0,
        format!("{audit_stale} stale of {audit_checked} entries audited (all instances)"),
    );
    check(
        "the instances (and the relay) ran to the end",
        exits.iter().all(|(_, e)| e.is_none()),
        exits
            .iter()
            .map(|(who, e)| format!("{who}: {}", e.as_deref().unwrap_or("running")))
            .collect::<Vec<_>>()
            .join(", "),
    );
    let steady = plan.total * 0.2;
    let instances = rows.iter().map(|r| r.instance).max().map_or(0, |m| m + 1);
    for i in 0..instances {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.instance == i).collect();
        let after: Vec<&Row> = mine.iter().copied().filter(|r| r.t >= steady).collect();
        let Some(base) = after.first() else { continue };
        // Against the high-water mark of the first 20 %, not one sample: the allocator returns
        // memory in steps (jemalloc's decay), and a sample just after one would call the
        // climb back to where it was growth.
        let high = mine
            .iter()
            .filter(|r| r.t <= base.t)
            .map(|r| r.rss)
            .max()
            .unwrap_or(base.rss);
        let max_rss = after.iter().map(|r| r.rss).max().unwrap_or(0);
        let growth = max_rss as f64 / high.max(1) as f64 - 1.0;
        check(
            &format!("#{i}: RSS grows < 5 % after the first 20 %"),
            growth < 0.05,
            format!(
                "at most {:.1} MB up to {:.0} s ({:.1} MB then), at most {:.1} MB later ({:+.1} %)",
                high as f64 / 1e6,
                base.t,
                base.rss as f64 / 1e6,
                max_rss as f64 / 1e6,
                growth * 100.0
            ),
        );
        let cap = args.capacity as f64;
        let worst = |f: fn(&Row) -> f64| mine.iter().map(|r| f(r)).fold(0.0, f64::max);
        let (entries, rows_, tags, fence, tokens) = (
            worst(|r| r.entries),
            worst(|r| r.index_rows),
            worst(|r| r.indexed_tags),
            worst(|r| r.fence_remembered),
            worst(|r| r.tokens),
        );
        let unread = mine.iter().any(|r| r.entries.is_nan());
        // moka applies writes, and the evictions they cause, once 64 of them are logged (its
        // WRITE_LOG_FLUSH_POINT) or at its next maintenance: until then the entries it has
        // taken beyond its capacity are cached, and indexed, one row each (a principal carries
        // its organization's tag, a negative entry its user's).
        let in_flight = 64.0;
        check(
            &format!("#{i}: internal sizes within their capacities"),
            !unread
                && entries <= cap
                && rows_ <= cap + in_flight
                && tags <= rows_.max(0.0)
                && fence <= fence_memory
                && tokens <= tokens_max,
            format!(
                "at most: entries {entries:.0} (capacity {cap:.0}), index rows {rows_:.0} (≤ 1 tag × (capacity + {in_flight:.0} writes moka has yet to apply)), \
                 indexed tags {tags:.0}, fence {fence:.0} (memory {fence_memory}), tokens {tokens:.0} (≤ {tokens_max}){}",
                if unread { "; some samples could not be scraped" } else { "" }
            ),
        );
        let in_first = |r: &&&Row| r.t >= plan.first_window().0 && r.t < plan.first_window().1;
        let first_fds = mine
            .iter()
            .filter(in_first)
            .map(|r| r.fds - r.pg_connections)
            .max()
            .unwrap_or(0);
        let last = mine.last().copied().cloned().unwrap_or_default();
        let max_pg = mine.iter().map(|r| r.pg_connections).max().unwrap_or(0);
        check(
            &format!("#{i}: file descriptors flat"),
            last.fds - last.pg_connections <= first_fds + 2
                && max_pg <= u64::from(POOL_SIZE) + 3,
            format!(
                "{} besides Postgres at the end, {} at most in the first window; Postgres connections at most {} (pool {} + source)",
                last.fds - last.pg_connections,
                first_fds,
                max_pg,
                POOL_SIZE
            ),
        );
        let first_tasks = mine
            .iter()
            .filter(in_first)
            .map(|r| r.tasks)
            .fold(0.0, f64::max);
        check(
            &format!("#{i}: tokio tasks flat"),
            last.tasks <= first_tasks + 4.0,
            format!(
                "{:.0} at the end, {first_tasks:.0} at most in the first window",
                last.tasks
            ),
        );
        let errors: u64 = mine.iter().map(|r| r.errors).sum();
        check(
            &format!("#{i}: every answer 200, or 503 while the database is down"),
            errors == 0,
            format!(
                "{errors} other answers or failures; {} 503",
                mine.iter().map(|r| r.unavailable).sum::<u64>()
            ),
        );
    }
    let window = |(from, to): (f64, f64)| {
        let mut h = Hist::default();
        for (t, s) in hists {
            // A sample covers the period before its time.
            if *t > from && *t <= to {
                h.merge(s);
            }
        }
        h
    };
    let (first, last) = (window(plan.first_window()), window(plan.last_window()));
    let (p_first, p_last) = (first.quantile_ms(0.99), last.quantile_ms(0.99));
    check(
        "p99 of the last window ≤ 1.5x the first steady window",
        first.count() > 0 && last.count() > 0 && p_last <= 1.5 * p_first,
        format!(
            "{p_last:.2} ms ({} requests) vs {p_first:.2} ms ({} requests): {:.2}x",
            last.count(),
            first.count(),
            p_last / p_first.max(1e-9)
        ),
    );
    let unrecovered: Vec<String> = outcomes
        .iter()
        .filter(|o| o.recovered_after.is_none())
        .map(|o| format!("{} at {:.0} s", o.fault.name(), o.at))
        .collect();
    let expected = plan.fault_times().len();
    check(
        "every fault followed by recovery to Coherent",
        unrecovered.is_empty() && outcomes.len() == expected,
        format!(
            "{} of {expected} faults applied; slowest recovery {:.2} s{}",
            outcomes.len(),
            outcomes
                .iter()
                .filter_map(|o| o.recovered_after)
                .max()
                .unwrap_or_default()
                .as_secs_f64(),
            if unrecovered.is_empty() {
                String::new()
            } else {
                format!("; not recovered: {}", unrecovered.join(", "))
            }
        ),
    );
    out
}

pub(super) fn report(
    args: &Args,
    plan: &Plan,
    rows: &[Row],
    outcomes: &[Outcome],
    shared: &load::Shared,
    verdict: &[Criterion],
    out: &std::path::Path,
) -> Result<()> {
    let mut md = String::new();
    writeln!(
        md,
        "# nearcache soak\n\n{}\n\n{:.1} minutes, source {}, 2 release instances, {} users (tokens Zipf s = 1 over all), cache capacity {} each, {} reading connections per instance; writers: a user by SQL and one through PATCH every 100 ms, an organization every 5 s; the staleness checker writes a version of one of {} hot users (by SQL or PATCH) or, one time in twenty, of its organization, every 50 ms, and reads them through both instances (bound {:?}). Samples every {:.0} s in `soak/samples.csv`.\n",
        crate::bench::machine().replace("wrk", "the load generator"),
        args.minutes,
        args.source,
        args.users,
        args.capacity,
        args.connections,
        load::CHECKED,
        args.heartbeat_timeout + Duration::from_secs(1),
        plan.period
    )?;
    writeln!(
        md,
        "## Verdict\n\n| criterion | measured | |\n|---|---|---|"
    )?;
    for c in verdict {
        writeln!(
            md,
            "| {} | {} | {} |",
            c.name,
            c.measured,
            if c.pass { "pass" } else { "**FAIL**" }
        )?;
    }
    writeln!(
        md,
        "\nWrites: {} acknowledged, {} failed (during faults). Checked reads: {}.\n",
        shared.writes.load(Relaxed),
        shared.failed_writes.load(Relaxed),
        shared.checks.load(Relaxed)
    )?;
    writeln!(
        md,
        "## Faults\n\n| at | fault | what happened | took | every instance coherent after |\n|---|---|---|---|---|"
    )?;
    for o in outcomes {
        writeln!(
            md,
            "| {:.0} s | {} | {} | {:.2} s | {} |",
            o.at,
            o.fault.name(),
            o.detail,
            o.took.as_secs_f64(),
            o.recovered_after
                .map_or("not within 60 s".into(), |d| format!(
                    "{:.2} s",
                    d.as_secs_f64()
                ))
        )?;
    }
    let series = |f: fn(&Row) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        let n = rows.iter().map(|r| r.instance).max().map_or(0, |m| m + 1);
        (0..n)
            .map(|i| {
                (
                    format!("instance {i}"),
                    rows.iter()
                        .filter(|r| r.instance == i && f(r).is_finite())
                        .map(|r| (r.t, f(r)))
                        .collect(),
                )
            })
            .collect()
    };
    let charts: [Chart; 5] = [
        ("rss", "Resident memory", "MB", |r| r.rss as f64 / 1e6),
        ("p99", "p99 of GET /me", "ms", |r| r.p99_ms),
        ("rps", "GET /me answered", "requests/s", |r| r.rps),
        ("entries", "Cache entries", "entries", |r| r.entries),
        ("fds", "Open file descriptors", "fds", |r| r.fds as f64),
    ];
    writeln!(md, "\n## Over time\n\nFaults between {:.0} s and {:.0} s; windows compared: {:.0}–{:.0} s and {:.0}–{:.0} s.\n", plan.faults_from, plan.faults_to, plan.first_window().0, plan.first_window().1, plan.last_window().0, plan.total)?;
    for (file, title, unit, f) in charts {
        let path = out.join(format!("{file}.svg"));
        plot::lines(&path, title, ("seconds", unit), &series(f))?;
        writeln!(md, "![{title}](soak/{file}.svg)")?;
    }
    let path = out.parent().expect("target").join("soak-report.md");
    std::fs::write(&path, md)?;
    Ok(())
}
