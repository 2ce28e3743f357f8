//! Configuration of the listener.

use std::time::Duration;

use nearcache_pgconn::PgUrl;

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The database URL does not parse, or its TLS settings cannot work.
    #[error(transparent)]
    Url(#[from] nearcache_pgconn::UrlError),
    /// The channel is not a lowercase identifier.
    #[error(
        "invalid channel {0:?}: use 1 to 40 characters of a-z, 0-9 and _, starting with a letter"
    )]
    Channel(String),
    /// The heartbeat timings make no sense.
    #[error("heartbeat interval and timeout must be positive")]
    Heartbeat,
    /// The check interval is zero.
    #[error("check interval must be positive")]
    CheckInterval,
    /// The notification queue's limit is not a fraction above 0.
    #[error("the notification queue limit must be above 0 and at most 1, not {0}")]
    QueueLimit(f64),
}

/// How the listener connects and how it watches its connection.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub(crate) url: PgUrl,
    pub(crate) channel: String,
    pub(crate) tables: Vec<String>,
    /// How often the listener notifies itself. Default 1 s.
    pub heartbeat_interval: Duration,
    /// How long a heartbeat may take to come back before the connection is given up, and so
    /// the longest a silently broken connection can leave the cache serving. Default 3 s.
    pub heartbeat_timeout: Duration,
    /// First delay before reconnecting. Default 100 ms.
    pub backoff_min: Duration,
    /// Largest delay before reconnecting. Default 10 s.
    pub backoff_max: Duration,
    /// How long connecting and LISTEN may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How often the check made at connect (`nearcache_check`: triggers there and enabled
    /// ALWAYS, columns watched, the channel) is made again while listening: a problem
    /// bypasses, a table attached again (other ignored columns) is flushed. Default 10 s.
    pub check_interval: Duration,
    /// How full Postgres' notification queue (`pg_notification_queue_usage()`, 0 to 1) may be
    /// before the check calls it a problem and the cache bypasses until it drains. The queue is
    /// the cluster's: a LISTEN session that stopped reading holds it back, and once it is full
    /// every commit that notifies fails. Default 0.5.
    pub queue_limit: f64,
}

impl ListenerConfig {
    /// A configuration for the database at `url`, on the default channel `nearcache`.
    ///
    /// # Errors
    /// [`ConfigError::Url`] when the URL does not parse, its `sslmode` is unknown or its
    /// `sslrootcert` cannot be read (see [`nearcache_pgconn`] for the TLS settings).
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            url: PgUrl::parse(url)?,
            channel: "nearcache".into(),
            tables: Vec::new(),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            check_interval: Duration::from_secs(10),
            queue_limit: 0.5,
        })
    }

    /// Listens on `channel` instead of `nearcache`; it must match the database's channel
    /// (`nearcache_channel()`, set with `SELECT nearcache_set_channel(…)`), which the listener
    /// checks on every connection.
    ///
    /// # Errors
    /// [`ConfigError::Channel`] unless it is a lowercase identifier of at most 40 characters
    /// (the heartbeat channel adds a suffix within Postgres' 63).
    pub fn with_channel(mut self, channel: &str) -> Result<Self, ConfigError> {
        let ok = (1..=40).contains(&channel.len())
            && channel.starts_with(|c: char| c.is_ascii_lowercase())
            && channel
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !ok {
            return Err(ConfigError::Channel(channel.into()));
        }
        self.channel = channel.into();
        Ok(self)
    }

    /// The channel of the triggers.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The tables the handler caches. On every connection, before the cache may serve, the
    /// listener asks the database (`nearcache_check`) whether each carries nearcache's triggers,
    /// enabled ALWAYS and watching every column; if not, it stays in bypass and says why.
    #[must_use]
    pub fn with_tables<I, S>(mut self, tables: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.tables = tables.into_iter().map(Into::into).collect();
        self
    }

    /// The tables checked on every connection.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }

    /// Checks what [`run`](crate::run) needs: positive heartbeat timings and check interval, a
    /// queue limit in (0, 1].
    ///
    /// # Errors
    /// [`ConfigError::Heartbeat`] when a heartbeat timing is zero, [`ConfigError::CheckInterval`]
    /// when the check interval is, [`ConfigError::QueueLimit`] when the limit is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval.is_zero() || self.heartbeat_timeout.is_zero() {
            return Err(ConfigError::Heartbeat);
        }
        if self.check_interval.is_zero() {
            return Err(ConfigError::CheckInterval);
        }
        if !(self.queue_limit > 0.0 && self.queue_limit <= 1.0) {
            return Err(ConfigError::QueueLimit(self.queue_limit));
        }
        Ok(())
    }

    /// What the listener needs on top of the URL's settings (a primary is chosen by
    /// [`PgUrl::connect_primary`]).
    pub(crate) fn configure(&self, pg: &mut tokio_postgres::Config) {
        pg.application_name("nearcache-listener")
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_lowercase_identifiers() {
        let c = ListenerConfig::new("postgres://u@localhost/db").unwrap();
        assert_eq!(c.channel(), "nearcache");
        assert!(c.clone().with_channel("app_cache2").is_ok());
        for bad in ["", "App", "1x", "a-b", "a b", &"x".repeat(41)] {
            assert!(c.clone().with_channel(bad).is_err(), "{bad:?}");
        }
        assert!(ListenerConfig::new("not a url at all = =").is_err());
    }
}
