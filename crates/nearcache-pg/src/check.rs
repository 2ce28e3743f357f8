//! What a relay's way of reading relies on, checked for the tables one instance caches, through
//! that instance's own pool: the relay checks every table it reads, but cannot know which an
//! instance caches, nor that the instance's database is the one it reads.

use sqlx::PgPool;

/// One cached table as the WAL sees it: its name, whether it exists, whether it is in the
/// publication, its attached key, whether its replica identity carries that key.
type WalRow = (String, bool, bool, Option<String>, Option<bool>);

/// The problems, each with its fix, that keep the WAL through `publication` from naming the
/// changed rows of `tables` by their attached keys: a table missing, not attached, not in the
/// publication, or with a replica identity that does not carry its key. Empty: none.
///
/// # Errors
/// The query's (nearcache not installed, the database down).
pub async fn read_by_wal(
    pool: &PgPool,
    tables: &[&str],
    publication: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<WalRow> = sqlx::query_as(
        "SELECT t,
                to_regclass(t) IS NOT NULL,
                EXISTS (SELECT 1 FROM pg_publication_tables p
                         WHERE p.pubname = $2 AND p.tablename = t),
                a.key_column,
                nearcache_identity_carries(a.tbl, a.key_column)
           FROM unnest($1::text[]) t
           LEFT JOIN nearcache_attached a ON a.tbl = to_regclass(t)",
    )
    .bind(tables)
    .bind(publication)
    .fetch_all(pool)
    .await?;
    let mut problems = Vec::new();
    for (table, exists, published, key, carried) in rows {
        if !exists {
            problems.push(format!("table {table} does not exist"));
            continue;
        }
        let Some(key) = key else {
            problems.push(format!(
                "table {table} is not attached: SELECT nearcache_attach('{table}', <key column>, <ignored columns>)"
            ));
            continue;
        };
        if !published {
            problems.push(format!(
                "table {table} is not in publication {publication}: SELECT nearcache_attach('{table}', '{key}', <ignored columns>)"
            ));
        }
        if carried != Some(true) {
            problems.push(format!(
                "table {table} is attached by {key}, which its replica identity does not carry: ALTER TABLE {table} REPLICA IDENTITY USING INDEX <a unique index on ({key})>, or SELECT nearcache_attach('{table}', '{key}', <ignored columns>) again"
            ));
        }
    }
    Ok(problems)
}

/// The problems that keep nearcache's triggers on `tables` from notifying on `channel`
/// (`nearcache_check`). Empty: none.
///
/// # Errors
/// The query's (nearcache not installed, the database down).
pub async fn read_by_notify(
    pool: &PgPool,
    tables: &[&str],
    channel: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT nearcache_check($1::text[], $2::text)")
        .bind(tables)
        .bind(channel)
        .fetch_one(pool)
        .await
}

/// The problems that keep any relay from reading `tables`, whatever its way: a table missing
/// or not attached. Empty: none.
///
/// # Errors
/// The query's (nearcache not installed, the database down).
pub async fn attached(pool: &PgPool, tables: &[&str]) -> Result<Vec<String>, sqlx::Error> {
    let missing: Vec<String> = sqlx::query_scalar(
        "SELECT t FROM unnest($1::text[]) t
          WHERE NOT EXISTS (SELECT 1 FROM nearcache_attached a WHERE a.tbl = to_regclass(t))",
    )
    .bind(tables)
    .fetch_all(pool)
    .await?;
    Ok(missing
        .into_iter()
        .map(|t| {
            format!("table {t} is not attached: SELECT nearcache_attach('{t}', <key column>, <ignored columns>)")
        })
        .collect())
}
