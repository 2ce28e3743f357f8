//! Invalidation latency: from an UPDATE's commit to the eviction in two in-process instances,
//! each a cache with its own listener.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nearcache::{Cache, CacheConfig, Mode, Tag};
use nearcache_listener::{Handler, ListenerConfig, ListenerStatus};
use rand::Rng;

use crate::seed;

/// A listener handler on a cache that records when each key was evicted.
struct Timed {
    cache: Cache<String, u32>,
    seen: Mutex<HashMap<String, Instant>>,
    changed: tokio::sync::Notify,
}

impl Handler for Timed {
    fn bypass(&self) {
        self.cache.set_mode(Mode::Bypass);
    }
    fn flush_all(&self) {
        self.cache.flush();
    }
    fn coherent(&self) {
        self.cache.set_mode(Mode::Coherent);
    }
    fn invalidate(&self, table: &str, keys: &[String]) -> bool {
        for k in keys {
            self.cache.invalidate_tag(&Tag::row(table, k));
        }
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap();
        for k in keys {
            seen.insert(k.clone(), now);
        }
        self.changed.notify_waiters();
        true
    }
    fn flush_table(&self, _: &str) -> bool {
        self.cache.flush();
        true
    }
}

/// Latencies of one measure.
pub(super) struct Series {
    pub(super) name: &'static str,
    pub(super) samples: Vec<Duration>,
}

/// From an UPDATE's return to the eviction, in two in-process instances, over 1000 updates.
pub(super) async fn invalidation_latency(url: &str) -> Result<Vec<Series>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut instances = Vec::new();
    for _ in 0..2 {
        let handler = Arc::new(Timed {
            cache: Cache::new(CacheConfig {
                initial_mode: Mode::Bypass,
                ..CacheConfig::default()
            }),
            seen: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        });
        let status = ListenerStatus::default();
        let mut stop = stop_rx.clone();
        tokio::spawn(nearcache_listener::run(
            ListenerConfig::new(url)?,
            handler.clone(),
            status.clone(),
            async move {
                let _ = stop.wait_for(|s| *s).await;
            },
        ));
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
    let mut rng = rand::thread_rng();
    for n in 0..1000 {
        let key = seed::user_id(rng.gen_range(1..=seed::USERS));
        for (h, _) in &instances {
            h.seen.lock().unwrap().remove(&key);
        }
        sqlx::query("UPDATE users SET name = $2 WHERE id = $1::uuid")
            .bind(&key)
            .bind(format!("bench {n}"))
            .execute(&pool)
            .await?;
        let committed = Instant::now();
        let wait_deadline = committed + Duration::from_secs(5);
        let mut worst = Duration::ZERO;
        for (h, _) in &instances {
            loop {
                // Register for the wake-up before looking, so that none is missed.
                let changed = h.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let at = h.seen.lock().unwrap().get(&key).copied();
                if let Some(at) = at {
                    let d = at.saturating_duration_since(committed);
                    per_instance.push(d);
                    worst = worst.max(d);
                    break;
                }
                if tokio::time::timeout_at(wait_deadline.into(), changed)
                    .await
                    .is_err()
                {
                    bail!("update {n} did not reach an instance within 5 s");
                }
            }
        }
        all.push(worst);
    }
    let _ = stop_tx.send(true);
    pool.close().await;
    Ok(vec![
        Series {
            name: "commit to eviction, per instance",
            samples: per_instance,
        },
        Series {
            name: "commit to eviction on all instances",
            samples: all,
        },
    ])
}
