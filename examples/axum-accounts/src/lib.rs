//! An axum service that caches two tables of its own with nearcache: `accounts` (a `bigint`
//! key), through which the tower [`AuthLayer`] resolves each token's account, and `products`
//! (keyed by a unique `sku`), read by `GET /products/{sku}`. One source keeps both caches
//! coherent (the WAL when the database allows it, LISTEN otherwise), and [`HealthRoutes`]
//! answers `/healthz`, `/livez` and `/metrics` for both. `main.rs` runs it; the workspace's
//! test suite runs it against a real Postgres and checks that UPDATEs by SQL are seen on the
//! next request.
//!
//! Everything a service of your own writes is in this file.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use nearcache::{Audit, Cache, CacheConfig, Fill, LoadError, Monitor, Store, TableHandler, Tag};
use nearcache_listener::ListenerConfig;
use nearcache_source::{Handlers, SourceStatus};
use nearcache_sql::sqlx::Replans;
use nearcache_tower::{AuthLayer, Authenticator, HealthRoutes};
use nearcache_wal::{Decodable, WalConfig};
use serde::Serialize;
use sqlx::PgPool;

/// The tables this service caches.
pub const ACCOUNTS: &str = "accounts";
/// See [`ACCOUNTS`].
pub const PRODUCTS: &str = "products";

/// A row of `accounts`, what handlers receive for the token's subject.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Account {
    /// Key; the token's `sub`.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Billing plan.
    pub plan: String,
}

/// A row of `products` (its `viewed_at` column is never served, so its changes evict nothing).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Product {
    /// Key.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Price in cents.
    pub price_cents: i64,
}

/// A pool on `url` whose queries survive a migration that changes a column's type (its stale
/// prepared statements are made again: see [`Replans`]).
///
/// # Errors
/// When the database cannot be reached.
pub async fn connect(url: &str) -> anyhow::Result<Db> {
    let replans = Replans::default();
    let pool = replans
        .guard(sqlx::postgres::PgPoolOptions::new())
        .connect(url)
        .await?;
    Ok(Db { pool, replans })
}

/// The pool and its [`Replans`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    /// The pool.
    pub pool: PgPool,
    /// Its statements made stale by migrations.
    pub replans: Replans,
}

/// Creates the tables if needed, installs nearcache's SQL and attaches the tables: all
/// idempotent, so a service may run it at every start (or once, as a migration).
///
/// # Errors
/// When the database refuses.
pub async fn prepare(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS accounts (
             id bigint PRIMARY KEY, name text NOT NULL, plan text NOT NULL);
         CREATE TABLE IF NOT EXISTS products (
             id serial PRIMARY KEY, sku text NOT NULL UNIQUE, name text NOT NULL,
             price_cents bigint NOT NULL, viewed_at timestamptz)",
    )
    .execute(pool)
    .await?;
    nearcache_sql::sqlx::install(pool).await?;
    nearcache_sql::sqlx::attach(pool, ACCOUNTS, "id", &[]).await?;
    nearcache_sql::sqlx::attach(pool, PRODUCTS, "sku", &["viewed_at"]).await?;
    Ok(())
}

/// The service's caches and the one source that keeps them coherent. Cheap to clone.
#[derive(Clone)]
pub struct Caches {
    /// Accounts by id.
    pub accounts: Cache<i64, Arc<Account>>,
    /// Products by sku.
    pub products: Cache<String, Arc<Product>>,
    /// What the source is doing.
    pub status: SourceStatus,
    handler: Arc<Handlers>,
}

impl Caches {
    /// Both caches, serving nothing until the source delivers every change (each
    /// `TableHandler` puts its cache in bypass until then).
    pub fn new() -> Self {
        let accounts = Cache::new(CacheConfig::default());
        let products = Cache::new(CacheConfig::default());
        let handler = Handlers::new()
            .with(TableHandler::new(accounts.clone(), [ACCOUNTS]))
            .with(TableHandler::new(products.clone(), [PRODUCTS]));
        let (status, handler) = (SourceStatus::default(), Arc::new(handler));
        Self {
            accounts,
            products,
            status,
            handler,
        }
    }

    /// Keeps both caches coherent until `shutdown` completes: with the WAL when the database
    /// allows it, with LISTEN otherwise (and says why).
    ///
    /// # Errors
    /// When the URL cannot be used or the database cannot be asked.
    pub async fn keep_coherent(
        &self,
        url: &str,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let tables = [ACCOUNTS, PRODUCTS];
        let (handler, status) = (self.handler.clone(), self.status.clone());
        let wal = WalConfig::new(url)?.with_tables(tables);
        match wal.decodable().await? {
            Decodable::Yes => nearcache_wal::run(wal, handler, status, shutdown).await,
            Decodable::No(why) => {
                tracing::info!(%why, "invalidations by LISTEN/NOTIFY, not the WAL");
                let listen = ListenerConfig::new(url)?.with_tables(tables);
                nearcache_listener::run(listen, handler, status, shutdown).await;
            }
        }
        Ok(())
    }

    /// Checks the accounts cache against the database until dropped: `rate` cached accounts a
    /// second loaded again and compared, a mismatch still cached after the source's bound (4 s:
    /// the WAL's and LISTEN's heartbeat interval plus timeout) counted as stale and evicted.
    /// Its counters are on `/metrics` (`nearcache_cache_audit_*_total{cache="accounts"}`).
    pub async fn audit(&self, db: Db, rate: f64) {
        let audit = Audit {
            rate,
            bound: Duration::from_secs(4),
        };
        let load = |id: i64| load_account(db.clone(), id);
        self.accounts.audit(audit, load, |a, b| a == b).await;
    }

    /// `/healthz`, `/livez` and `/metrics` for both caches and the source.
    pub fn health(&self) -> HealthRoutes {
        let monitor = Monitor::new()
            .cache(ACCOUNTS, &self.accounts)
            .cache(PRODUCTS, &self.products)
            .source("", &self.status);
        HealthRoutes::new(monitor)
    }
}

impl Default for Caches {
    fn default() -> Self {
        Self::new()
    }
}

/// The routes: `GET /account` answers the token's account and `GET /products/{sku}` a
/// product, both through their caches; `/healthz`, `/livez`, `/metrics`.
pub fn router(caches: &Caches, db: Db, auth: Authenticator<i64>) -> Router {
    let store: Arc<dyn Store<i64, Arc<Account>>> = Arc::new(caches.accounts.clone());
    let accounts = db.clone();
    let auth = AuthLayer::through_store(auth, store, move |id| load_account(accounts.clone(), id));
    let health = caches.health();
    Router::new()
        .route("/account", get(account))
        .layer(auth)
        .route("/products/{sku}", get(product))
        .with_state((caches.products.clone(), db))
        .route_service("/healthz", health.clone())
        .route_service("/livez", health.clone())
        .route_service("/metrics", health)
}

/// The account `id`, as the accounts cache stores it.
async fn load_account(Db { pool, replans }: Db, id: i64) -> Result<Fill<Arc<Account>>, LoadError> {
    let query = "SELECT id, name, plan FROM accounts WHERE id = $1";
    let row: Option<Account> = replans
        .retry(|| sqlx::query_as(query).bind(id).fetch_optional(&pool))
        .await?; // sqlx::Error into LoadError
    let fill = Fill::from_option(row.map(Arc::new));
    // Tagged with its row: an UPDATE of `accounts` row `id` evicts it.
    Ok(fill.with_tag(Tag::row(ACCOUNTS, id)))
}

async fn account(Extension(account): Extension<Arc<Account>>) -> Json<Arc<Account>> {
    Json(account)
}

async fn product(
    State((products, Db { pool, replans })): State<(Cache<String, Arc<Product>>, Db)>,
    Path(sku): Path<String>,
) -> Result<Json<Arc<Product>>, StatusCode> {
    let load = || async {
        let query = "SELECT sku, name, price_cents FROM products WHERE sku = $1";
        let row: Option<Product> = replans
            .retry(|| sqlx::query_as(query).bind(&sku).fetch_optional(&pool))
            .await?;
        Ok(Fill::from_option(row.map(Arc::new)).with_tag(Tag::row(PRODUCTS, &sku)))
    };
    match products.get_or_store(sku.clone(), load).await {
        Ok(Some(product)) => Ok(Json(product)),
        Ok(None) => Err(StatusCode::NOT_FOUND),
        Err(e) => {
            tracing::warn!(error = %e, %sku, "loading a product");
            Err(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}
