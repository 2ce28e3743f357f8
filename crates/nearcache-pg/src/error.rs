//! Errors of the repository.

/// Why a repository call failed, in terms a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The row to change does not exist.
    #[error("not found")]
    NotFound,
    /// A unique value (an email) is taken.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database cannot be reached now (connection refused or lost, pool timeout, server
    /// shutting down): worth retrying later, a 503 to a client.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else.
    #[error("database error")]
    Other(#[source] sqlx::Error),
}

impl From<sqlx::Error> for RepoError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => RepoError::NotFound,
            sqlx::Error::Database(db) => match db.code().as_deref() {
                Some("23505") => RepoError::Conflict(
                    db.constraint()
                        .map_or_else(|| "duplicate value".into(), |c| format!("{c} is taken")),
                ),
                // Connection exceptions, admin shutdown, crash shutdown, cannot connect now,
                // too many connections; a statement cancelled by statement_timeout (a lock
                // held too long) and a lock not available: all pass with time.
                Some(code)
                    if code.starts_with("08")
                        || matches!(
                            code,
                            "57P01" | "57P02" | "57P03" | "53300" | "57014" | "55P03"
                        ) =>
                {
                    RepoError::Unavailable(e)
                }
                _ => RepoError::Other(e),
            },
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_) => RepoError::Unavailable(e),
            _ => RepoError::Other(e),
        }
    }
}
