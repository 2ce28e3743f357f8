//! Whether a database can feed this source: the question `--source auto` asks before it
//! chooses between the WAL and LISTEN.

use crate::WalConfig;

/// What [`WalConfig::decodable`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decodable {
    /// `wal_level = logical` and the role may replicate: the WAL source can run.
    Yes,
    /// It cannot, and why, with the fix (for a log line or a health check).
    No(String),
}

/// The database could not be asked (unreachable, refused, timed out).
#[derive(Debug, thiserror::Error)]
#[error("cannot ask the database whether its WAL can be decoded: {0}")]
pub struct AskError(Box<dyn std::error::Error + Send + Sync>);

fn ask_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> AskError {
    AskError(e.into())
}

impl WalConfig {
    /// Asks the database, on one ordinary connection to the first host that takes writes and
    /// within the connect timeout, whether the WAL source can run on it: logical decoding on,
    /// and a role with the REPLICATION attribute (or a superuser). Choose the LISTEN source
    /// otherwise; the server's `--source auto` does exactly that.
    ///
    /// # Errors
    /// When the database cannot be asked; ask again later (a cache stays in bypass meanwhile).
    pub async fn decodable(&self) -> Result<Decodable, AskError> {
        let timeout = self.connect_timeout;
        let ((client, connection), _) = self
            .connect_control()
            .await
            .ok_or_else(|| ask_error("timed out connecting to the database"))?
            .map_err(ask_error)?;
        let driver = tokio::spawn(connection);
        let asked = tokio::time::timeout(
            timeout,
            client.query_one(
                "SELECT current_setting('wal_level'),
                        (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
                &[],
            ),
        )
        .await;
        driver.abort();
        let row = asked
            .map_err(|_| ask_error("timed out asking the database"))?
            .map_err(ask_error)?;
        let (wal_level, replicates): (String, Option<bool>) = (row.get(0), row.get(1));
        Ok(if wal_level != "logical" {
            Decodable::No(format!(
                "wal_level is {wal_level}: set wal_level = logical (and restart Postgres) to use the WAL source"
            ))
        } else if replicates != Some(true) {
            Decodable::No(
                "the role may not replicate: ALTER ROLE … REPLICATION to use the WAL source".into(),
            )
        } else {
            Decodable::Yes
        })
    }
}
