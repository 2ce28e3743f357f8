//! nearcache's SQL, for any Postgres database and with no opinion about its schema: the
//! generic trigger functions, the `nearcache` publication and the table of attach rules
//! ([`INSTALL`]), and the Rust calls that install them and attach a table, from sqlx (feature
//! `sqlx`) or tokio-postgres (feature `tokio-postgres`).
//!
//! Install once per database (idempotent: a service may do it at every start, or ship
//! [`INSTALL`] as a migration), then attach each table it caches, naming its key column (`NOT
//! NULL`; the value of `Tag::row(table, key)` its loader tags values with) and the columns
//! whose changes must not evict (only columns the cache never serves):
//!
//! ```sql
//! SELECT nearcache_attach('products', 'sku', '{viewed_at}');
//! ```
//!
//! [`install`](crate::sqlx::install) runs with `client_min_messages = warning`: Postgres'
//! notices about objects it creates for the first time ("… does not exist, skipping") are not
//! sent, so a service's log stays quiet when all is well. Creating the event trigger that
//! watches columns added later needs a superuser; without one the rest is installed and
//! Postgres warns.
//!
//! Which source the writes are for decides whether the triggers fire at all: `SELECT
//! nearcache_set_source('auto' | 'wal' | 'notify' | 'both')`, default `auto` (no trigger when
//! `wal_level = logical`, where the WAL source needs none).

/// nearcache's functions, publication and rules, in the order the reference service's
/// migrations apply them (`sql/0003_nearcache_install.sql`, `0006_nearcache_stored_values.sql`,
/// `0007_nearcache_notify_by_source.sql`): idempotent, and touching no table of yours. Run it in
/// one transaction (`psql -1`).
pub const INSTALL: &str = concat!(
    include_str!("../sql/0003_nearcache_install.sql"),
    "\n",
    include_str!("../sql/0006_nearcache_stored_values.sql"),
    "\n",
    include_str!("../sql/0007_nearcache_notify_by_source.sql")
);

/// Run first in the install's transaction: Postgres keeps its notices to itself.
pub const QUIET: &str = "SET LOCAL client_min_messages = warning";

/// Attaches a table: `$1` the table, `$2` its key column, `$3` the ignored columns (`text[]`).
pub const ATTACH: &str = "SELECT nearcache_attach($1::text::regclass, $2, $3)";

#[cfg(feature = "sqlx")]
mod replan;

/// Installing and attaching from sqlx, and a pool that survives a column's type change.
#[cfg(feature = "sqlx")]
pub mod sqlx {
    use sqlx::PgPool;

    pub use crate::replan::Replans;

    /// Installs (or reinstalls) [`INSTALL`](crate::INSTALL) on the database of `pool`, in one
    /// transaction, quietly.
    ///
    /// # Errors
    /// When the database refuses (a role that may not create functions, for one).
    pub async fn install(pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::raw_sql(crate::QUIET).execute(&mut *tx).await?;
        sqlx::raw_sql(crate::INSTALL).execute(&mut *tx).await?;
        tx.commit().await
    }

    /// Attaches `table` by `key_column`, ignoring changes of `ignored` columns (idempotent).
    ///
    /// # Errors
    /// When the table or a column does not exist, or the key column may be NULL.
    pub async fn attach(
        pool: &PgPool,
        table: &str,
        key_column: &str,
        ignored: &[&str],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(crate::ATTACH)
            .bind(table)
            .bind(key_column)
            .bind(ignored)
            .execute(pool)
            .await
            .map(drop)
    }
}

/// Installing and attaching from tokio-postgres.
#[cfg(feature = "tokio-postgres")]
pub mod tokio_postgres {
    use tokio_postgres::Client;

    /// Installs (or reinstalls) [`INSTALL`](crate::INSTALL) through `client`, in one
    /// transaction, quietly.
    ///
    /// # Errors
    /// When the database refuses (a role that may not create functions, for one).
    pub async fn install(client: &mut Client) -> Result<(), tokio_postgres::Error> {
        let tx = client.transaction().await?;
        tx.batch_execute(crate::QUIET).await?;
        tx.batch_execute(crate::INSTALL).await?;
        tx.commit().await
    }

    /// Attaches `table` by `key_column`, ignoring changes of `ignored` columns (idempotent).
    ///
    /// # Errors
    /// When the table or a column does not exist, or the key column may be NULL.
    pub async fn attach(
        client: &Client,
        table: &str,
        key_column: &str,
        ignored: &[&str],
    ) -> Result<(), tokio_postgres::Error> {
        client
            .execute(crate::ATTACH, &[&table, &key_column, &ignored])
            .await
            .map(drop)
    }
}
