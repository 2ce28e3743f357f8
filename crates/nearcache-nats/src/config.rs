//! Where the relay publishes, how long it may stay silent or behind, and the instance's own
//! checks (probe, cached tables).

use std::time::Duration;

use crate::check::TableCheck;
use crate::probe::Probe;
use crate::security::NatsSecurity;

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum NatsConfigError {
    /// Zero timings.
    #[error("the heartbeat timeout, the probe's interval and timeout and the check's interval must be positive")]
    Heartbeat,
    /// An empty stream name or subject prefix.
    #[error("the stream and the subject prefix must not be empty")]
    Names,
}

/// Where the relay publishes and how long it may stay silent.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Credentials and TLS for it (none by default).
    pub security: NatsSecurity,
    /// The JetStream stream the relay writes (default `NEARCACHE`).
    pub stream: String,
    /// The relay's subject prefix (default `nearcache.<database>`).
    pub prefix: String,
    /// How long the relay may stay silent (its heartbeats come every second by default)
    /// before the cache bypasses. Default 3 s.
    pub heartbeat_timeout: Duration,
    /// First delay before reconnecting. Default 100 ms.
    pub backoff_min: Duration,
    /// Largest delay before reconnecting. Default 10 s.
    pub backoff_max: Duration,
    /// How long connecting and subscribing may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How far behind the relay may be before the cache bypasses: its source's lag plus how
    /// long its heartbeat waited behind unpublished changes, as each heartbeat says. Default
    /// 1 s. (A backlog that holds heartbeats back entirely is caught by `heartbeat_timeout`.)
    pub max_lag: Duration,
    /// The end-to-end probe, if any (none by default: it needs the instance's database).
    pub probe: Option<Probe>,
    /// The instance's own check of its cached tables against how the relay reads, if any
    /// (none by default: it needs the instance's database). With one, the cache becomes
    /// coherent only once it has passed.
    pub check: Option<TableCheck>,
}

impl NatsConfig {
    /// The relay of the database `database` on the NATS server at `url`, with the defaults.
    pub fn new(url: impl Into<String>, database: &str) -> Self {
        Self {
            url: url.into(),
            security: NatsSecurity::default(),
            stream: "NEARCACHE".into(),
            prefix: format!("nearcache.{database}"),
            heartbeat_timeout: Duration::from_secs(3),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_lag: Duration::from_secs(1),
            probe: None,
            check: None,
        }
    }

    /// Checks what [`run`] needs.
    ///
    /// # Errors
    /// [`NatsConfigError`] for a zero timeout or an empty name.
    pub fn validate(&self) -> Result<(), NatsConfigError> {
        if self.heartbeat_timeout.is_zero()
            || self.max_lag.is_zero()
            || self
                .probe
                .as_ref()
                .is_some_and(|p| p.interval.is_zero() || p.timeout.is_zero())
            || self.check.as_ref().is_some_and(|c| c.interval.is_zero())
        {
            return Err(NatsConfigError::Heartbeat);
        }
        if self.stream.is_empty() || self.prefix.is_empty() {
            return Err(NatsConfigError::Names);
        }
        Ok(())
    }
}
