//! The soak's traffic: closed-loop readers of `GET /me` with Zipf-skewed tokens (like wrk, a
//! fixed number of connections each sending its next request when the last is answered), a
//! writer of random users and organizations (SQL and PATCH), and the staleness checker: a
//! writer of versions for a few hot users and their organizations, and readers that check
//! every answer against what had been committed more than the bound before the read began.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};

use super::hist::Hist;
use crate::seed;

/// What one instance's readers saw since the last sample.
#[derive(Default)]
pub(super) struct Traffic {
    pub(super) latency: Hist,
    pub(super) ok: u64,
    /// 503: the service said it cannot answer now (database down).
    pub(super) unavailable: u64,
    /// Any other status, or no answer.
    pub(super) errors: u64,
}

/// Shared by the tasks and the sampler.
pub(super) struct Shared {
    pub(super) stop: AtomicBool,
    /// Per instance, since the last sample.
    pub(super) traffic: Vec<Mutex<Traffic>>,
    pub(super) checks: AtomicU64,
    pub(super) stale: AtomicU64,
    pub(super) first_stale: Mutex<Vec<String>>,
    pub(super) writes: AtomicU64,
    pub(super) failed_writes: AtomicU64,
}

impl Shared {
    pub(super) fn new(instances: usize) -> Self {
        Self {
            stop: AtomicBool::new(false),
            traffic: (0..instances).map(|_| Mutex::default()).collect(),
            checks: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            first_stale: Mutex::default(),
            writes: AtomicU64::new(0),
            failed_writes: AtomicU64::new(0),
        }
    }

    pub(super) fn take_traffic(&self, instance: usize) -> Traffic {
        std::mem::take(&mut *lock(&self.traffic[instance]))
    }

    fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Users whose versions the checker writes and checks: the hottest of the Zipf order, so that
/// they are cached nearly always.
pub(super) const CHECKED: u32 = 20;

/// Tokens for users 1..=users, valid for the run and an hour.
pub(super) fn tokens(users: u32, run: Duration) -> Arc<Vec<String>> {
    let valid = run.as_secs() + 3600;
    // Index 0 unused: users are 1-based.
    let mut all = Vec::with_capacity(users as usize + 1);
    all.push(String::new());
    all.extend((1..=users).map(|i| seed::token_valid_for(i, valid)));
    Arc::new(all)
}

/// `connections` readers of `base` (an instance's URL), each its own keep-alive connection.
pub(super) fn readers(
    shared: &Arc<Shared>,
    instance: usize,
    base: String,
    tokens: &Arc<Vec<String>>,
    order: &Arc<Vec<u32>>,
    connections: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..connections)
        .map(|c| {
            let (shared, tokens, order, url) = (
                shared.clone(),
                tokens.clone(),
                order.clone(),
                format!("{base}/me"),
            );
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .timeout(Duration::from_secs(10))
                    .build()
                    .expect("a client");
                let mut i = (c * 7919 + instance * 104_729) % order.len();
                while !shared.stopped() {
                    i = (i + 1) % order.len();
                    let token = &tokens[order[i] as usize];
                    let began = Instant::now();
                    let status = client.get(&url).bearer_auth(token).send().await;
                    let status = match status {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            // Read the body, as a client would, before the next request.
                            let _ = r.bytes().await;
                            Some(s)
                        }
                        Err(_) => None,
                    };
                    let took = began.elapsed();
                    {
                        let mut t = lock(&shared.traffic[instance]);
                        match status {
                            Some(200) => {
                                t.ok += 1;
                                t.latency.record(took.as_micros() as u64);
                            }
                            Some(503) => t.unavailable += 1,
                            _ => t.errors += 1,
                        }
                    }
                    if status != Some(200) {
                        // Do not spin on a service that cannot answer.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect()
}

/// Random users (beyond the checked ones) and organizations changed at a steady rate: a user's
/// name by SQL and another's through `PATCH /me` every 100 ms, an organization's name every
/// five seconds (which evicts its thousand users).
pub(super) fn background_writer(
    shared: &Arc<Shared>,
    pool: sqlx::PgPool,
    bases: Vec<String>,
    tokens: &Arc<Vec<String>>,
    users: u32,
) -> tokio::task::JoinHandle<()> {
    let (shared, tokens) = (shared.clone(), tokens.clone());
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut n = 0u64;
        while !shared.stopped() {
            tick.tick().await;
            n += 1;
            let sql_user = rng.random_range(CHECKED + 1..=users);
            let ok = sqlx::query("UPDATE users SET name = $2 WHERE id = $1::uuid")
                .bind(seed::user_id(sql_user))
                .bind(format!("User {sql_user} w{n}"))
                .execute(&pool)
                .await
                .is_ok();
            count_write(&shared, ok);
            let patch_user = rng.random_range(CHECKED + 1..=users);
            let base = &bases[n as usize % bases.len()];
            let ok = client
                .patch(format!("{base}/me"))
                .bearer_auth(&tokens[patch_user as usize])
                .json(&serde_json::json!({ "name": format!("User {patch_user} p{n}") }))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            count_write(&shared, ok);
            if n.is_multiple_of(50) {
                // Organizations beyond those of the checked users.
                let org = rng.random_range(CHECKED + 2..=seed::ORGS);
                let ok = sqlx::query(
                    "UPDATE organizations SET name = $2
                      WHERE id = ('00000000-0000-4000-8000-' || lpad(to_hex($1), 12, '0'))::uuid",
                )
                .bind(org as i32)
                .bind(format!("Org {org} w{n}"))
                .execute(&pool)
                .await
                .is_ok();
                count_write(&shared, ok);
            }
        }
    })
}

fn count_write(shared: &Shared, ok: bool) {
    if ok {
        shared.writes.fetch_add(1, Relaxed);
    } else {
        shared.failed_writes.fetch_add(1, Relaxed);
    }
}

/// Versions written and when each write returned, per checked user and per organization of a
/// checked user.
#[derive(Default)]
struct Commits {
    users: HashMap<u32, Vec<(u64, Instant)>>,
    orgs: HashMap<u32, Vec<(u64, Instant)>>,
}

/// The newest version of `history` whose write returned at or before `before`.
fn required(history: Option<&Vec<(u64, Instant)>>, before: Instant) -> u64 {
    history
        .into_iter()
        .flatten()
        .rev()
        .find(|(_, at)| *at <= before)
        .map_or(0, |(v, _)| *v)
}

/// The version a name carries (`… vN`), 0 for a name the checker has not written.
fn version_of(name: Option<&str>) -> u64 {
    name.and_then(|n| n.rsplit_once(" v"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The organization of seeded user `u` (see `seed::seed_users`).
fn org_of(user: u32) -> u32 {
    1 + user % seed::ORGS
}

/// The staleness checker: one writer of versions every 50 ms (a user by SQL or PATCH through
/// either instance, one time in twenty the user's organization by SQL) and `readers` readers, each reading a
/// random checked user through a random instance in a loop.
pub(super) fn checker(
    shared: &Arc<Shared>,
    pool: sqlx::PgPool,
    bases: Vec<String>,
    tokens: &Arc<Vec<String>>,
    bound: Duration,
    readers: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let commits: Arc<Mutex<Commits>> = Arc::default();
    let bases = Arc::new(bases);
    let mut tasks = Vec::new();
    {
        let (shared, tokens, commits, bases) = (
            shared.clone(),
            tokens.clone(),
            commits.clone(),
            bases.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut rng = rand::rngs::StdRng::seed_from_u64(13);
            let mut next: HashMap<(bool, u32), u64> = HashMap::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !shared.stopped() {
                tick.tick().await;
                let user = rng.random_range(1..=CHECKED);
                // About one organization a second: each evicts a thousand users.
                let org = rng.random_bool(0.05);
                let id = if org { org_of(user) } else { user };
                let version = next.entry((org, id)).or_insert(0);
                *version += 1;
                let v = *version;
                let ok = if org {
                    sqlx::query(
                        "UPDATE organizations SET name = $2
                          WHERE id = ('00000000-0000-4000-8000-' || lpad(to_hex($1), 12, '0'))::uuid",
                    )
                    .bind(id as i32)
                    .bind(format!("Org {id} v{v}"))
                    .execute(&pool)
                    .await
                    .is_ok()
                } else if rng.random_bool(0.5) {
                    sqlx::query("UPDATE users SET name = $2 WHERE id = $1::uuid")
                        .bind(seed::user_id(id))
                        .bind(format!("User {id} v{v}"))
                        .execute(&pool)
                        .await
                        .is_ok()
                } else {
                    let base = &bases[rng.random_range(0..bases.len())];
                    client
                        .patch(format!("{base}/me"))
                        .bearer_auth(&tokens[id as usize])
                        .json(&serde_json::json!({ "name": format!("User {id} v{v}") }))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
                };
                count_write(&shared, ok);
                // A write that failed may have committed anyway: it is never required, and a
                // later version supersedes it.
                if ok {
                    let mut c = lock(&commits);
                    let map = if org { &mut c.orgs } else { &mut c.users };
                    map.entry(id).or_default().push((v, Instant::now()));
                }
            }
        }));
    }
    for r in 0..readers {
        let (shared, tokens, commits, bases) = (
            shared.clone(),
            tokens.clone(),
            commits.clone(),
            bases.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut rng = rand::rngs::StdRng::seed_from_u64(17 + r as u64);
            while !shared.stopped() {
                let user = rng.random_range(1..=CHECKED);
                let instance = rng.random_range(0..bases.len());
                let began = Instant::now();
                let (need_user, need_org) = {
                    let c = lock(&commits);
                    let before = began.checked_sub(bound).unwrap_or(began);
                    (
                        required(c.users.get(&user), before),
                        required(c.orgs.get(&org_of(user)), before),
                    )
                };
                let answer = client
                    .get(format!("{}/me", bases[instance]))
                    .bearer_auth(&tokens[user as usize])
                    .send()
                    .await;
                let body: Option<serde_json::Value> = match answer {
                    Ok(r) if r.status() == 200 => r.json().await.ok(),
                    _ => None,
                };
                let Some(body) = body else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                shared.checks.fetch_add(1, Relaxed);
                let got_user = version_of(body["user"]["name"].as_str());
                let got_org = version_of(body["organization"]["name"].as_str());
                if got_user < need_user || got_org < need_org {
                    shared.stale.fetch_add(1, Relaxed);
                    let mut first = lock(&shared.first_stale);
                    if first.len() < 10 {
                        first.push(format!(
                            "instance {instance}, user {user}: read user v{got_user} / organization v{got_org}, \
                             but user v{need_user} / organization v{need_org} had been committed more than {bound:?} before the read began"
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    tasks
}

/// Sends `GET /me` for users `from..=to` in order through each instance, with `concurrency`
/// requests in flight per instance.
pub(super) async fn warm(
    bases: &[String],
    tokens: &Arc<Vec<String>>,
    (from, to): (u32, u32),
    concurrency: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let per = u64::from(to - from + 1);
    let total = per * bases.len() as u64;
    let mut tasks = Vec::new();
    for _ in 0..concurrency * bases.len() {
        let (next, tokens, bases) = (next.clone(), tokens.clone(), bases.to_vec());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let n = next.fetch_add(1, Relaxed);
                if n >= total {
                    return anyhow::Ok(());
                }
                let instance = (n % bases.len() as u64) as usize;
                let user = u64::from(from) + n / bases.len() as u64;
                let r = client
                    .get(format!("{}/me", bases[instance]))
                    .bearer_auth(&tokens[user as usize])
                    .send()
                    .await?;
                anyhow::ensure!(
                    r.status() == 200,
                    "warming up: GET /me answered {}",
                    r.status()
                );
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_names_and_required_by_time() {
        assert_eq!(version_of(Some("User 3 v17")), 17);
        assert_eq!(version_of(Some("Org 4 v2")), 2);
        assert_eq!(version_of(Some("User 3")), 0);
        assert_eq!(version_of(Some("User 3 w9")), 0);
        assert_eq!(version_of(None), 0);
        let t0 = Instant::now();
        let history = vec![(1, t0), (2, t0 + Duration::from_secs(1))];
        assert_eq!(required(Some(&history), t0), 1);
        assert_eq!(required(Some(&history), t0 + Duration::from_secs(2)), 2);
        assert_eq!(required(None, t0), 0);
    }
}
