//! Seed data and small helpers shared by the suite.

use nearcache_pg::{NewUser, Organization, PgUserRepo, User, UserRepo};
use sqlx::PgPool;

/// An organization with `n` users.
pub(crate) async fn seed(pool: &PgPool, n: usize) -> (Organization, Vec<User>) {
    let repo = PgUserRepo::new(pool.clone());
    let org = repo.create_organization("Acme", "pro").await.unwrap();
    let mut users = Vec::new();
    for i in 0..n {
        let email = format!("user{i}-{}@acme.io", uuid::Uuid::new_v4().simple());
        users.push(
            repo.create_user(&NewUser {
                org_id: org.id,
                email,
                name: format!("User {i}"),
            })
            .await
            .unwrap(),
        );
    }
    (org, users)
}

/// Runs one statement.
pub(crate) async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap();
}

/// `UPDATE <table> SET <assignments> WHERE id = <id>`, committed by SQL, not through a service.
pub(crate) async fn update(
    pool: &PgPool,
    table: &str,
    id: impl std::fmt::Display,
    assignments: &str,
) {
    exec(
        pool,
        &format!("UPDATE {table} SET {assignments} WHERE id = '{id}'"),
    )
    .await;
}

/// Terminates the listener backends of the pool's database; returns how many.
/// Each named `async fn name(source: Source)` of the calling module becomes two tests,
/// `notify::name` and `wal::name`: a test that holds for every source is written once.
macro_rules! for_each_source {
    ($($test:ident),* $(,)?) => {
        mod notify {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::$test(crate::support::Source::Notify).await;
            })*
        }
        mod wal {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::$test(crate::support::Source::Wal).await;
            })*
        }
    };
}

/// An invalidation source, for tests that hold for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// LISTEN/NOTIFY (`nearcache-listener`).
    Notify,
    /// Logical decoding (`nearcache-wal`).
    Wal,
}

impl Source {
    /// The server's setting for it.
    pub(crate) fn kind(self) -> nearcache_server::SourceKind {
        match self {
            Source::Notify => nearcache_server::SourceKind::Notify,
            Source::Wal => nearcache_server::SourceKind::Wal,
        }
    }

    /// The application_name of its streaming connection.
    pub(crate) fn application_name(self) -> &'static str {
        match self {
            Source::Notify => "nearcache-listener",
            Source::Wal => "nearcache-wal",
        }
    }
}

/// Terminates the streaming backends of `source` on the pool's database; returns how many.
pub(crate) async fn terminate_source(pool: &PgPool, source: Source) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(source.application_name())
    .fetch_one(pool)
    .await
    .unwrap()
}
