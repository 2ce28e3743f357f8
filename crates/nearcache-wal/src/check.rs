//! What the WAL source relies on, read from the database when it connects and again while it
//! streams: logical decoding on, the publication there with every cached table in it, and each
//! attached table's key carried by its replica identity.

use crate::decoder::{Rule, Rules};
use crate::source::SessionError;
use crate::WalConfig;

/// Checks the database on the ordinary (control) connection. Returns each attached table's
/// rule.
///
/// # Errors
/// [`SessionError::Misconfigured`] naming every problem found, or the query's error.
pub(crate) async fn check(
    control: &tokio_postgres::Client,
    config: &WalConfig,
) -> Result<Rules, SessionError> {
    let mut problems = Vec::new();
    let wal_level: String = control
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(SessionError::Check)?
        .get(0);
    if wal_level != "logical" {
        problems.push(format!(
            "wal_level is {wal_level}: set wal_level = logical (and restart Postgres) for the WAL source, or use the LISTEN source"
        ));
    }
    let published: Vec<String> = control
        .query(
            "SELECT tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(SessionError::Check)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let exists = control
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(SessionError::Check)?
        .is_some();
    if !exists {
        problems.push(format!(
            "publication {} does not exist (install nearcache: nearcache_sql::sqlx::install, or sql/0003_nearcache_install.sql)",
            config.publication
        ));
    }
    for t in &config.tables {
        if exists && !published.contains(t) {
            problems.push(format!(
                "table {t} is not in publication {}: SELECT nearcache_attach('{t}', <key column>, <ignored columns>)",
                config.publication
            ));
        }
    }
    // Whether the replica identity carries the key: FULL, or the key is a column of the
    // identity's index (the primary key by default).
    let attached = match control
        .query(
            "SELECT c.relname::text, a.key_column, a.ignore_columns,
                    c.relreplident = 'f' OR EXISTS (
                        SELECT 1 FROM pg_index i
                          JOIN pg_attribute att
                            ON att.attrelid = i.indrelid AND att.attnum = ANY (i.indkey)
                         WHERE i.indrelid = c.oid AND att.attname = a.key_column
                           AND ((c.relreplident = 'd' AND i.indisprimary)
                                OR (c.relreplident = 'i' AND i.indisreplident))),
                    (SELECT i.indexrelid::regclass::text FROM pg_index i
                      WHERE i.indrelid = c.oid AND i.indisunique AND i.indpred IS NULL
                        AND i.indexprs IS NULL AND i.indnkeyatts = 1
                        AND i.indkey[0] = (SELECT attnum FROM pg_attribute
                                            WHERE attrelid = c.oid AND attname = a.key_column)
                      LIMIT 1)
               FROM nearcache_attached a JOIN pg_class c ON c.oid = a.tbl",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        // Tables published by hand, without nearcache_attach: rows are named by their
        // replica identity and nothing is ignored.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Vec::new(),
        Err(e) => return Err(SessionError::Check(e)),
    };
    let mut rules = Rules::new();
    for row in attached {
        let table: String = row.get(0);
        let key: String = row.get(1);
        let carried: bool = row.get(3);
        if !carried && config.tables.contains(&table) {
            let fix = match row.get::<_, Option<String>>(4) {
                Some(index) => format!("ALTER TABLE {table} REPLICA IDENTITY USING INDEX {index}"),
                None => format!(
                    "create a unique index on {table} ({key}) and ALTER TABLE {table} REPLICA IDENTITY USING INDEX it, or ALTER TABLE {table} REPLICA IDENTITY FULL"
                ),
            };
            problems.push(format!(
                "table {table} is attached by {key}, which its replica identity does not carry, so the WAL cannot name its rows by it: {fix}"
            ));
        }
        rules.insert(
            table,
            Rule {
                key,
                ignored: row.get(2),
            },
        );
    }
    if !problems.is_empty() {
        return Err(SessionError::Misconfigured(problems.join("; ")));
    }
    Ok(rules)
}

/// The transactions of this database that hold an xid now (each holds the lock on its own xid
/// until after it has become visible): those among them whose commit precedes the slot's consistent point are
/// never decoded, and may not be visible yet.
pub(crate) async fn running_xids(
    control: &tokio_postgres::Client,
) -> Result<Vec<u32>, SessionError> {
    let rows = control
        .query(
            // Only this database's: a transaction of another is never decoded here, and
            // watching it would flush everything for nothing. A prepared transaction has no
            // backend: its database is in pg_prepared_xacts. A lock whose database is
            // unknown is kept.
            "SELECT l.transactionid::text FROM pg_locks l
               LEFT JOIN pg_stat_activity a ON a.pid = l.pid
               LEFT JOIN pg_prepared_xacts p ON p.transaction = l.transactionid
              WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted
                AND coalesce(a.datname, p.database, current_database()) = current_database()",
            &[],
        )
        .await
        .map_err(SessionError::Check)?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(0)?.parse().ok())
        .collect())
}
