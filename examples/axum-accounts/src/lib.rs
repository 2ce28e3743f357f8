//! An axum service that caches its own table, `accounts` (a `bigint` key), with nearcache:
//! the tower [`AuthLayer`] resolves the token's account through the cache, the WAL source keeps
//! the cache coherent through the reusable [`TableHandler`], and `nearcache_attach` puts the
//! table in the publication. `main.rs` runs it; the workspace's test suite runs it against a
//! real Postgres and checks that an UPDATE by SQL is seen on the next request.
//!
//! Everything a service of your own writes is in this file.

use std::future::Future;
use std::sync::Arc;

use axum::routing::get;
use axum::{Extension, Json, Router};
use nearcache::{Cache, CacheConfig, Fill, Mode, Store, TableHandler, Tag};
use nearcache_pg::Replans;
use nearcache_source::SourceStatus;
use nearcache_tower::{AuthLayer, Authenticator};
use nearcache_wal::WalConfig;
use serde::Serialize;
use sqlx::PgPool;

/// The table this service caches.
pub const ACCOUNTS: &str = "accounts";

/// A row of `accounts`, what handlers receive for the token's subject.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Account {
    /// Key; the token's `sub`.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Billing plan.
    pub plan: String,
}

/// A pool on `url` whose queries survive a migration that changes a column's type (its stale
/// prepared statements are made again: see [`Replans`]).
///
/// # Errors
/// When the database cannot be reached.
pub async fn connect(url: &str) -> anyhow::Result<(PgPool, Replans)> {
    let replans = Replans::default();
    let pool = replans
        .guard(sqlx::postgres::PgPoolOptions::new())
        .connect(url)
        .await?;
    Ok((pool, replans))
}

/// Creates the table if needed, installs nearcache's functions and attaches the table: all
/// idempotent, so a service may run it at every start (or once, as a migration).
///
/// # Errors
/// When the database refuses.
pub async fn prepare(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS accounts (
             id bigint PRIMARY KEY, name text NOT NULL, plan text NOT NULL)",
    )
    .execute(pool)
    .await?;
    nearcache_pg::install(pool).await?;
    sqlx::query("SELECT nearcache_attach('accounts', 'id')")
        .execute(pool)
        .await?;
    Ok(())
}

/// A cache of accounts that serves nothing until a source says it hears every change.
pub fn cache() -> Cache<i64, Arc<Account>> {
    Cache::new(CacheConfig {
        initial_mode: Mode::Bypass,
        ..CacheConfig::default()
    })
}

/// The routes: `GET /account` answers the token's account, through the cache.
pub fn router(
    cache: Cache<i64, Arc<Account>>,
    (pool, replans): (PgPool, Replans),
    auth: Authenticator<i64>,
) -> Router {
    let store: Arc<dyn Store<i64, Arc<Account>>> = Arc::new(cache);
    let auth = AuthLayer::through_store(auth, store, move |id: i64| {
        let (pool, replans) = (pool.clone(), replans.clone());
        async move {
            let query = "SELECT id, name, plan FROM accounts WHERE id = $1";
            let row: Option<Account> = replans
                .retry(|| sqlx::query_as(query).bind(id).fetch_optional(&pool))
                .await?; // sqlx::Error into LoadError
                         // Tagged with its row: an UPDATE of `accounts` row `id` evicts it.
            Ok(match row {
                Some(a) => Fill::found(Arc::new(a)),
                None => Fill::absent(),
            }
            .with_tag(Tag::row(ACCOUNTS, id)))
        }
    });
    Router::new().route("/account", get(account)).layer(auth)
}

async fn account(Extension(account): Extension<Arc<Account>>) -> Json<Arc<Account>> {
    Json(account)
}

/// Keeps `cache` coherent with the WAL of `database_url` until `shutdown` completes.
///
/// # Errors
/// When the URL cannot be used.
pub fn keep_coherent(
    database_url: &str,
    cache: Cache<i64, Arc<Account>>,
    status: SourceStatus,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let config = WalConfig::new(database_url)?.with_tables([ACCOUNTS]);
    let handler = Arc::new(TableHandler::new(cache, [ACCOUNTS]));
    Ok(nearcache_wal::run(config, handler, status, shutdown))
}
