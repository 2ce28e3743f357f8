//! Configuration of the WAL source.

use std::time::Duration;

use nearcache_pgconn::{ConnectError, Connected, Endpoint, PgUrl};

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The database URL does not parse, or names no host.
    #[error("invalid database url: {0}")]
    Url(String),
    /// The URL's TLS settings cannot work.
    #[error(transparent)]
    Tls(#[from] nearcache_pgconn::UrlError),
    /// The heartbeat timings make no sense.
    #[error("heartbeat interval and timeout must be positive")]
    Heartbeat,
    /// The check interval is zero.
    #[error("check interval must be positive")]
    CheckInterval,
}

/// How the WAL source connects and watches its stream.
#[derive(Debug, Clone)]
pub struct WalConfig {
    pub(crate) url: PgUrl,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) database: String,
    pub(crate) tables: Vec<String>,
    /// The publication the slot decodes. Default `nearcache` (created by the install SQL;
    /// `nearcache_attach` adds each attached table to it).
    pub publication: String,
    /// How often the source sends itself a message through the WAL. Default 1 s.
    pub heartbeat_interval: Duration,
    /// How long that message may take to come back through the slot before the stream is
    /// given up: the longest a silently stuck stream can leave the cache serving. Default 3 s.
    pub heartbeat_timeout: Duration,
    /// First delay before reconnecting. Default 100 ms.
    pub backoff_min: Duration,
    /// Largest delay before reconnecting. Default 10 s.
    pub backoff_max: Duration,
    /// How long connecting, creating the slot and starting may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How many rows' digests of watched columns are remembered, to tell an update of ignored
    /// columns only (which evicts nothing) from one that matters. Past it the memory starts
    /// over, and the next update of each row evicts it (always safe). Default 100 000.
    pub digest_capacity: usize,
    /// How often the checks made at connect (publication, replica identity, attach rules) are
    /// made again while streaming: a table dropped from the publication bypasses, changed
    /// attach rules are reloaded and flush their tables. Default 10 s.
    pub check_interval: Duration,
    /// The least time between two reads of the stream. A read takes everything the server
    /// has sent, so under a steady stream of commits this sets how many each read (and each
    /// wake-up) takes: at a millisecond, dozens where it would be one or two, for up to a
    /// millisecond more before a commit reaches the gate. A commit that comes after a quiet
    /// millisecond is read at once. Zero reads whenever anything arrives. Default 1 ms.
    pub read_pause: Duration,
    /// For measurements only (`cargo xtask bench` compares the gate's cost with it): apply a
    /// commit when it is decoded, before new snapshots can see it, as the source did before
    /// the visibility gate. A load racing the commit can then store the superseded row.
    #[doc(hidden)]
    pub apply_at_decoding: bool,
}

impl WalConfig {
    /// A configuration for the database at `url` (a `postgres://` URL or `key=value` pairs).
    /// With several hosts (`postgres://app@a,b/app`), each session streams from the first that
    /// takes writes, in order, as libpq's `target_session_attrs=read-write` chooses.
    ///
    /// # Errors
    /// [`ConfigError::Url`] when the URL does not parse or names no TCP host.
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let url = PgUrl::parse(url)?;
        if url.endpoints().is_empty() {
            return Err(ConfigError::Url("no TCP host".into()));
        }
        let pg = url.config();
        let user = pg.get_user().unwrap_or("postgres").to_string();
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = pg.get_dbname().unwrap_or(&user).to_string();
        Ok(Self {
            url,
            user,
            password,
            database,
            tables: Vec::new(),
            publication: "nearcache".into(),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            digest_capacity: 100_000,
            check_interval: Duration::from_secs(10),
            read_pause: Duration::from_millis(1),
            apply_at_decoding: false,
        })
    }

    /// The database the URL names.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The tables the handler caches: each must be in the publication, or the source stays in
    /// bypass and says why.
    #[must_use]
    pub fn with_tables<I, S>(mut self, tables: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tables = tables.into_iter().map(Into::into).collect();
        self
    }

    /// Checks what [`run`](crate::run) needs.
    ///
    /// # Errors
    /// [`ConfigError::Heartbeat`] when a heartbeat timing is zero, [`ConfigError::CheckInterval`]
    /// when the check interval is.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval.is_zero() || self.heartbeat_timeout.is_zero() {
            return Err(ConfigError::Heartbeat);
        }
        if self.check_interval.is_zero() {
            return Err(ConfigError::CheckInterval);
        }
        Ok(())
    }
}

impl WalConfig {
    /// The ordinary connection, to the first host that takes writes, the connect timeout
    /// holding for each host as libpq's does; `None` when the time ran out.
    pub(crate) async fn connect_control(
        &self,
    ) -> Option<Result<(Connected, Option<Endpoint>), ConnectError>> {
        let timeout = self.connect_timeout;
        let hosts = u32::try_from(self.url.endpoints().len()).unwrap_or(u32::MAX);
        let connecting = self.url.connect_primary(|pg| {
            pg.connect_timeout(timeout);
        });
        tokio::time::timeout(timeout * hosts, connecting).await.ok()
    }
}
