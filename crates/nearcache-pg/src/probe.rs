//! The table of the end-to-end probe that instances following a relay write
//! (`sql/0005_nearcache_probe.sql`): each instance writes a row per probe, keyed by an id of
//! its own and the probe's number, through its own pool; the change travels database → relay → NATS → instance like
//! any other, and the instance's `nats` source waits for it.

use sqlx::PgPool;

use crate::RepoError;

/// The probe table: attached like a cached table, so that its changes reach every source.
pub const TABLE: &str = "nearcache_probe";

/// Creates the probe table and attaches it, idempotently (needs [`install`](crate::install)
/// first). The reference schema's migrations do this already.
pub const INSTALL_SQL: &str = include_str!("../sql/0005_nearcache_probe.sql");

/// Runs [`INSTALL_SQL`] on the database of `pool`, in one transaction.
///
/// # Errors
/// [`RepoError`] if the database refuses (nearcache not installed, no right to create tables).
pub async fn install(pool: &PgPool) -> Result<(), RepoError> {
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(INSTALL_SQL).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Writes probe `n` of `instance`: the row keyed `<instance>/<n>` (the number travels in the
/// key, so that only this probe's return answers it), deleting the instance's earlier rows and
/// the rows of instances that have not probed for an hour; one autocommitted statement.
///
/// # Errors
/// [`RepoError`] if the write fails (the table missing, the database down).
pub async fn write(pool: &PgPool, instance: &str, n: i64) -> Result<(), RepoError> {
    sqlx::query(
        "WITH gone AS (DELETE FROM nearcache_probe
                        WHERE starts_with(instance, $1 || '/') OR at < now() - interval '1 hour')
         INSERT INTO nearcache_probe (instance, n, at) VALUES ($1 || '/' || $2, $2, now())
         ON CONFLICT (instance) DO UPDATE SET n = excluded.n, at = excluded.at",
    )
    .bind(instance)
    .bind(n)
    .execute(pool)
    .await?;
    Ok(())
}
