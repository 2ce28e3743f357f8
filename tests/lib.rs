//! Harness of the cross-crate tests: fresh migrated databases, private clusters that a test may
//! stop and crash, and in-process instances of the service on real TCP ports.
//!
//! Tests run through `cargo xtask test`, which provides `DATABASE_URL` (a server whose role can
//! create databases).

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

pub mod app;
pub mod fleet;

/// A database of its own for one test, migrated, dropped when the value is dropped.
pub struct TestDb {
    url: String,
    admin_url: String,
    name: String,
}

fn base_url() -> String {
    std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run the tests through `cargo xtask test`, which starts a database",
    )
}

fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url
        .rsplit_once('/')
        .expect("a database url ends in /dbname");
    // Keep query parameters, if any.
    let params = url
        .split_once('?')
        .map(|(_, p)| format!("?{p}"))
        .unwrap_or_default();
    format!("{base}/{db}{params}")
}

impl TestDb {
    /// A fresh database on the server of `DATABASE_URL`, migrated, its writes for both
    /// sources (`nearcache_set_source('both')`: triggers fire and the WAL is published), so
    /// that any source can follow it.
    pub async fn new() -> Self {
        Self::on(&base_url()).await
    }

    /// A fresh database on the server at `server_url`, for both sources.
    pub async fn on(server_url: &str) -> Self {
        let db = Self::migrated_on(server_url).await;
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&db.url)
            .await
            .unwrap();
        sqlx::query("SELECT nearcache_set_source('both')")
            .execute(&pool)
            .await
            .expect("choosing both sources");
        pool.close().await;
        db
    }

    /// A fresh database on the server of `DATABASE_URL`, just as the migrations leave it (its
    /// writes for the source they choose).
    pub async fn migrated() -> Self {
        Self::migrated_on(&base_url()).await
    }

    /// The same, on the server at `server_url`.
    pub async fn migrated_on(server_url: &str) -> Self {
        let name = format!("nc_test_{}", Uuid::new_v4().simple());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(server_url)
            .await
            .expect("connecting to the test server");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("creating a test database");
        admin.close().await;
        let url = with_database(server_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        nearcache_pg::MIGRATOR.run(&pool).await.expect("migrating");
        pool.close().await;
        Self {
            url,
            admin_url: server_url.to_string(),
            name,
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool on it.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(8)
            .connect(&self.url)
            .await
            .expect("connecting to the test database")
    }
}

/// Runs `work` to completion on a thread with a runtime of its own: for `Drop`, which may run
/// inside a test's runtime, where blocking on it is not allowed.
pub fn block_on_aside(work: impl Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(work);
    })
    .join();
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        block_on_aside(async move {
            if let Ok(admin) = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect(&admin_url)
                .await
            {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&admin)
                .await;
                admin.close().await;
            }
        });
    }
}

/// A PostgreSQL cluster of the test's own, which it may stop, crash and restart.
pub struct PrivateCluster {
    cluster: xtask::Cluster,
}

impl PrivateCluster {
    /// Creates and starts a cluster under target/test-clusters.
    pub fn start() -> Self {
        let dir = xtask::workspace_root()
            .join("target")
            .join("test-clusters")
            .join(Uuid::new_v4().simple().to_string());
        let cluster = xtask::Cluster::new(dir).expect("PostgreSQL server binaries");
        cluster.up().expect("starting a private cluster");
        Self { cluster }
    }

    /// The URL of its `nearcache` database (a superuser, so it can create test databases).
    pub fn url(&self) -> String {
        self.cluster.url().unwrap()
    }

    /// A physical standby of this cluster (streaming replication), started; promote it with
    /// `standby.cluster().promote()`.
    pub fn standby(&self) -> Self {
        let dir = xtask::workspace_root()
            .join("target")
            .join("test-clusters")
            .join(Uuid::new_v4().simple().to_string());
        Self {
            cluster: self
                .cluster
                .standby(dir)
                .expect("a standby of the private cluster"),
        }
    }

    /// The cluster.
    pub fn cluster(&self) -> &xtask::Cluster {
        &self.cluster
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.cluster.destroy();
    }
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `limit`. Returns how long
/// it took.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
