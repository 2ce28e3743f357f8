//! Statements a migration made stale. Postgres plans a prepared statement again when a table it
//! reads changes, but refuses to run one whose result type changed (`0A000 cached plan must not
//! change result type`: a served column's type altered, `text` to `citext`). sqlx prepares each
//! query once per connection and keeps it, so every pooled connection would fail that query
//! from then on. [`Replans`] makes that one failure the last: the query runs once more, and
//! every connection opened before the failure is closed as it is next acquired (the pool opens
//! fresh ones, which prepare against the new types).
//!
//! ```no_run
//! # async fn f() -> Result<(), sqlx::Error> {
//! use nearcache_sql::sqlx::Replans;
//! let replans = Replans::default();
//! let pool = replans
//!     .guard(sqlx::postgres::PgPoolOptions::new().max_connections(8))
//!     .connect("postgres://app@db/app")
//!     .await?;
//! let name: Option<String> = replans
//!     .retry(|| sqlx::query_scalar("SELECT name FROM users LIMIT 1").fetch_optional(&pool))
//!     .await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;

/// Re-preparing after a migration: a pool's guard ([`Replans::guard`]) and the retry its
/// queries run in ([`Replans::retry`]). Clones share their state.
#[derive(Debug, Clone, Default)]
pub struct Replans(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// What `last` counts from.
    base: Instant,
    /// When a statement was last found stale, in nanoseconds after `base` (0: never). An
    /// atomic, not a lock: the guard reads it at every acquire.
    last: AtomicU64,
    /// How many times.
    count: AtomicU64,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            last: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Inner {
    /// How long ago a statement was last found stale, if ever.
    fn stale_ago(&self) -> Option<Duration> {
        match self.last.load(Relaxed) {
            0 => None,
            nanos => Some(
                self.base
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(nanos)),
            ),
        }
    }
}

impl Replans {
    /// `options` with a check before each acquire that closes a connection opened before the
    /// last stale statement was found (its other statements may be stale too), or before the
    /// last [`Replans::renew`].
    #[must_use]
    pub fn guard(&self, options: PgPoolOptions) -> PgPoolOptions {
        let inner = self.0.clone();
        options.before_acquire(move |_, meta| {
            let keep = inner.stale_ago().is_none_or(|ago| meta.age < ago);
            Box::pin(async move { Ok(keep) })
        })
    }

    /// Runs `query`; if Postgres says its prepared statement no longer fits the table, records
    /// that (so the guard closes the connections opened before) and runs it once more.
    ///
    /// # Errors
    /// The query's error (the second run's, after a stale statement).
    pub async fn retry<T, Fut>(&self, mut query: impl FnMut() -> Fut) -> Result<T, sqlx::Error>
    where
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        match query().await {
            Err(e) if is_stale_plan(&e) => {
                self.renew();
                self.0.count.fetch_add(1, Relaxed);
                query().await
            }
            other => other,
        }
    }

    /// Closes every connection opened before now as it is next acquired (the pool moved to
    /// another server, after a failover): the pool opens fresh ones.
    pub fn renew(&self) {
        let now = u64::try_from(self.0.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.last.store(now.max(1), Relaxed);
    }

    /// How many statements were found stale and run again.
    pub fn count(&self) -> u64 {
        self.0.count.load(Relaxed)
    }
}

/// Whether `e` is Postgres refusing a prepared statement whose result type changed.
fn is_stale_plan(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.code().as_deref() == Some("0A000")
                && db
                    .message()
                    .starts_with("cached plan must not change result type")
        }
        _ => false,
    }
}
