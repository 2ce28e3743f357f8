//! A randomized checker: concurrent writers and readers across three instances, with faults
//! at random (source connections killed; behind a relay also the relay killed and replaced, or
//! an instance's NATS connection cut), and every read checked for staleness.
//!
//! Each user has one writer, which writes versions 1, 2, 3, … in order (through a random
//! instance, or by SQL) and records when each write returned. A read of a user that started
//! more than `BOUND` after version `v` was committed must return `v` or newer. The bound is the
//! delivery time of a notification with slack for a loaded machine; the cache's TTL is five
//! minutes, so without invalidation reads would be stale for far longer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nearcache_tests::app::token;
use nearcache_tests::TestDb;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use crate::support::{seed, terminate_source, Deployment, Source};

const BOUND: Duration = Duration::from_millis(1000);
const RUN_FOR: Duration = Duration::from_secs(6);

/// Per user, the versions written and when each write returned.
pub(crate) type Commits = Arc<Mutex<HashMap<usize, Vec<(u64, Instant)>>>>;

/// One read: of which user, through which instance, when it began, which version it returned.
#[derive(Debug, Clone)]
pub(crate) struct Read {
    pub(crate) user: usize,
    pub(crate) instance: usize,
    pub(crate) started: Instant,
    pub(crate) version: u64,
}

/// The reads that returned an older version than one written more than `bound` before they
/// began, each with the version it should have returned at least.
pub(crate) fn stale_reads(
    commits: &HashMap<usize, Vec<(u64, Instant)>>,
    reads: &[Read],
    bound: Duration,
) -> Vec<(Read, u64)> {
    reads
        .iter()
        .filter_map(|read| {
            let must_see = commits
                .get(&read.user)
                .into_iter()
                .flatten()
                .filter(|(_, at)| *at + bound <= read.started)
                .map(|(v, _)| *v)
                .max()
                .unwrap_or(0);
            (read.version < must_see).then(|| (read.clone(), must_see))
        })
        .collect()
}

async fn no_read_is_stale(source: Source) {
    let seed_value: u64 = rand::random();
    println!("checker ({source:?}) seed {seed_value}");
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 6).await;
    let apps = Arc::new(Deployment::start(db.url(), source, 3).await);
    let tokens: Arc<Vec<String>> = Arc::new(users.iter().map(|u| token(u.id, json!({}))).collect());
    // Version 0 is the seeded name.
    let commits: Commits = Arc::default();
    let reads: Arc<Mutex<Vec<Read>>> = Arc::default();
    let start = Instant::now();
    let mut tasks = Vec::new();

    for (u, user) in users.iter().enumerate() {
        let (apps, tokens, commits, pool) =
            (apps.clone(), tokens.clone(), commits.clone(), pool.clone());
        let id = user.id;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed_value ^ u as u64);
        tasks.push(tokio::spawn(async move {
            let mut version = 0u64;
            while start.elapsed() < RUN_FOR {
                version += 1;
                let name = format!("v{version}");
                if rng.random_bool(0.5) {
                    let app = &apps[rng.random_range(0..apps.len())];
                    let (status, _) = app.patch_me(&tokens[u], &json!({"name": name})).await;
                    assert_eq!(status, 200);
                } else {
                    sqlx::query("UPDATE users SET name = $2 WHERE id = $1")
                        .bind(id)
                        .bind(&name)
                        .execute(&pool)
                        .await
                        .unwrap();
                }
                commits
                    .lock()
                    .unwrap()
                    .entry(u)
                    .or_default()
                    .push((version, Instant::now()));
                tokio::time::sleep(Duration::from_millis(rng.random_range(5..60))).await;
            }
        }));
    }
    for r in 0..6 {
        let (apps, tokens, reads) = (apps.clone(), tokens.clone(), reads.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed_value.wrapping_add(1000 + r));
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < RUN_FOR {
                let (user, instance) = (
                    rng.random_range(0..tokens.len()),
                    rng.random_range(0..apps.len()),
                );
                let started = Instant::now();
                let (status, body) = apps[instance].get("/me", Some(&tokens[user])).await;
                assert_eq!(status, 200);
                let name = body["user"]["name"].as_str().unwrap().to_string();
                let version = name
                    .strip_prefix('v')
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                reads.lock().unwrap().push(Read {
                    user,
                    instance,
                    started,
                    version,
                });
            }
        }));
    }
    // Faults now and then: every source's connections to Postgres terminated; behind a relay
    // also the relay killed and replaced (a new epoch) or one instance's NATS connection cut.
    let faults = {
        let (pool, apps) = (pool.clone(), apps.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed_value.wrapping_add(7));
        tokio::spawn(async move {
            let mut faults = Vec::new();
            while start.elapsed() < RUN_FOR {
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
                let fault = match (source, rng.random_range(0..3)) {
                    (Source::Nats, 1) if apps.kill_relay() => {
                        // Dead for a while, longer than BOUND at times: silence must tell.
                        let dead = Duration::from_millis(rng.random_range(0..1500));
                        tokio::time::sleep(dead).await;
                        apps.start_relay();
                        format!("relay killed for {dead:?}")
                    }
                    (Source::Nats, 2) => {
                        let i = rng.random_range(0..apps.len());
                        apps.cut_nats(i);
                        format!("NATS of instance {i} cut")
                    }
                    _ => format!(
                        "{} source connections terminated",
                        terminate_source(&pool, source).await
                    ),
                };
                faults.push(fault);
            }
            faults
        })
    };
    for t in tasks {
        t.await.unwrap();
    }
    let faults = faults.await.unwrap();

    let commits = commits.lock().unwrap().clone();
    let reads = reads.lock().unwrap().clone();
    let writes: usize = commits.values().map(Vec::len).sum();
    let stale = stale_reads(&commits, &reads, BOUND);
    println!(
        "checker ({source:?}): {} reads, {writes} writes, {} stale; faults: {}",
        reads.len(),
        stale.len(),
        faults.join(", ")
    );
    assert!(reads.len() > 100 && writes > 50, "the run did too little");
    if !stale.is_empty() {
        let (read, must) = &stale[0];
        let history = &commits[&read.user];
        panic!(
            "{} stale reads; first: user {} on instance {} read v{} but v{must} was committed \
             {:?} before the read began; commits of that user: {:?}",
            stale.len(),
            read.user,
            read.instance,
            read.version,
            history
                .iter()
                .find(|(v, _)| v == must)
                .map(|(_, at)| read.started - *at),
            history
                .iter()
                .map(|(v, at)| (v, at.duration_since(start)))
                .collect::<Vec<_>>(),
        );
    }
}

for_each_source!(no_read_is_stale);
