//! Command-line flags, each with an environment variable, and their validation.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use nearcache_http::{AuthConfig, Key};

use crate::parse::{byte_size, duration, rate};

/// How principals are cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    /// Cache plus LISTEN/NOTIFY invalidation: safe with any number of instances.
    Coherent,
    /// Cache with TTL only, no listener: a single instance only; with several, an instance
    /// serves another's superseded writes until the TTL ends.
    Ttl,
    /// No cache: every request queries the database (what tests use).
    Off,
}

/// Where a coherent cache hears about changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// The WAL when the database allows it (`wal_level = logical` and a role that may
    /// replicate), LISTEN/NOTIFY otherwise; decided once the database answers, and logged.
    Auto,
    /// Logical decoding of the publication `nearcache` through a temporary slot: nothing in the
    /// writer's path.
    Wal,
    /// LISTEN/NOTIFY, fed by the triggers.
    Notify,
    /// What a `nearcache-relay` publishes to NATS JetStream (`--nats-url`): for fleets, one
    /// connection to Postgres per relay instead of one per instance.
    Nats,
}

impl SourceKind {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Auto => "auto",
            SourceKind::Wal => "wal",
            SourceKind::Notify => "notify",
            SourceKind::Nats => "nats",
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What the binary does besides serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Apply the migrations (the schema, nearcache's functions, the reference tables attached)
    /// to --database-url, then exit.
    Migrate,
}

impl CacheMode {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Coherent => "coherent",
            CacheMode::Ttl => "ttl",
            CacheMode::Off => "off",
        }
    }
}

/// The flags of `nearcache-server`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "nearcache-server",
    version,
    about = "The nearcache reference service",
    after_help = "Environment: RUST_LOG sets the log filter (default: info,sqlx=warn; e.g. \
                  RUST_LOG=nearcache=debug,info). Every flag also reads the variable named \
                  in its help.\n\nExit status: 0 stopped with every request answered; 1 a \
                  fatal error; 2 a bad configuration (one line on stderr); 3 stopped when the \
                  shutdown timeout ran out (the requests still running got 503)."
)]
pub struct Config {
    /// What to do instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Postgres URL (the primary: LISTEN does not work on standbys).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// Address to listen on.
    #[arg(long, env = "NEARCACHE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// HS256 secret for JWTs.
    #[arg(long, env = "NEARCACHE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// PEM public key for JWTs (RS256 or EdDSA): a file path, or the PEM itself.
    #[arg(long, env = "NEARCACHE_JWT_PUBLIC_KEY", allow_hyphen_values = true)]
    pub jwt_public_key: Option<String>,
    /// Required `iss` claim.
    #[arg(long, env = "NEARCACHE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim.
    #[arg(long, env = "NEARCACHE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[arg(long, env = "NEARCACHE_JWT_LEEWAY", default_value = "30s", value_parser = duration)]
    pub jwt_leeway: Duration,
    /// Cache mode.
    #[arg(long, env = "NEARCACHE_CACHE", value_enum, default_value = "coherent")]
    pub cache: CacheMode,
    /// Absolute time to live of a cached principal (a backstop in coherent mode).
    #[arg(long, env = "NEARCACHE_CACHE_TTL", default_value = "5m", value_parser = duration)]
    pub cache_ttl: Duration,
    /// Time to idle of a cached principal (touch on read), capped by the TTL.
    #[arg(long, env = "NEARCACHE_CACHE_TTI", value_parser = duration)]
    pub cache_tti: Option<Duration>,
    /// Refresh ahead of expiry: a cached principal read when older than this is served at
    /// once and loaded again in the background (below --cache-ttl). Off unless set.
    #[arg(long, env = "NEARCACHE_REFRESH_AFTER", value_parser = duration)]
    pub refresh_after: Option<Duration>,
    /// Most principals cached.
    #[arg(long, env = "NEARCACHE_CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: u64,
    /// Bound the cache in bytes instead (`512MiB`, `2GiB`): each principal weighs its value,
    /// its JSON and what the cache spends to hold it. Replaces --cache-capacity.
    #[arg(long, env = "NEARCACHE_CACHE_MAX_BYTES", value_parser = byte_size)]
    pub cache_max_bytes: Option<u64>,
    /// How often the listener checks its connection with a notification to itself.
    #[arg(long, env = "NEARCACHE_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = duration)]
    pub heartbeat_interval: Duration,
    /// How long a heartbeat may take before the cache bypasses and the listener reconnects.
    #[arg(long, env = "NEARCACHE_HEARTBEAT_TIMEOUT", default_value = "3s", value_parser = duration)]
    pub heartbeat_timeout: Duration,
    /// How often the source checks again what it relies on (publication and replica identity,
    /// triggers, attach rules): a problem bypasses, a table attached again is flushed.
    #[arg(long, env = "NEARCACHE_CHECK_INTERVAL", default_value = "10s", value_parser = duration)]
    pub check_interval: Duration,
    /// Under LISTEN: how full Postgres' notification queue (`pg_notification_queue_usage()`, 0
    /// to 1) may be before the cache bypasses until it drains. A LISTEN session that stopped
    /// reading holds it back for the whole cluster; full, every notifying commit fails.
    #[arg(long, env = "NEARCACHE_NOTIFY_QUEUE_LIMIT", default_value_t = 0.5)]
    pub notify_queue_limit: f64,
    /// Cached principals per second the audit loads again and compares (coherent mode; 0
    /// turns it off): nearcache_cache_audit_*_total on /metrics, the ratio on /healthz.
    #[arg(long, env = "NEARCACHE_AUDIT_RATE", default_value = "2", value_parser = rate)]
    pub audit_rate: f64,
    /// A file for a warm start: the ids of the principals cached are written there at
    /// shutdown and loaded again at start, once the source is coherent.
    #[arg(long, env = "NEARCACHE_WARM_FILE")]
    pub warm_file: Option<std::path::PathBuf>,
    /// Principals per second loaded by a warm start.
    #[arg(long, env = "NEARCACHE_WARM_RATE", default_value = "500", value_parser = rate)]
    pub warm_rate: f64,
    /// Notification channel of the triggers (the database's `nearcache_channel()`).
    #[arg(long, env = "NEARCACHE_CHANNEL", default_value = "nearcache")]
    pub channel: String,
    /// Where a coherent cache hears about changes: `auto` (the WAL if the database allows it,
    /// else LISTEN), `wal` or `notify`.
    #[arg(long, env = "NEARCACHE_SOURCE", value_enum, default_value = "auto")]
    pub source: SourceKind,
    /// The NATS server of `--source nats`.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub nats_security: nearcache_nats::NatsSecurity,
    /// The JetStream stream the relay publishes to.
    #[arg(long, env = "NEARCACHE_NATS_STREAM", default_value = "NEARCACHE")]
    pub nats_stream: String,
    /// The relay's subject prefix (default `nearcache.<database name>`).
    #[arg(long, env = "NEARCACHE_NATS_PREFIX")]
    pub nats_prefix: Option<String>,
    /// With `--source nats`, how often the instance writes its row of `nearcache_probe` and
    /// waits to read it back from the relay (the first at once when coherent); 0s: never.
    #[arg(long, env = "NEARCACHE_NATS_PROBE_INTERVAL", default_value = "5s", value_parser = duration)]
    pub nats_probe_interval: Duration,
    /// How long a probe may take to come back before the cache bypasses and resubscribes.
    #[arg(long, env = "NEARCACHE_NATS_PROBE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub nats_probe_timeout: Duration,
    /// With `--source nats`, how far behind the relay may be (its source's lag plus how long
    /// its heartbeats wait behind unpublished changes) before the cache bypasses.
    #[arg(long, env = "NEARCACHE_NATS_MAX_LAG", default_value = "1s", value_parser = duration)]
    pub nats_max_lag: Duration,
    /// Database connections in the pool.
    #[arg(long, env = "NEARCACHE_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,
    /// How long a request waits for a database connection before answering 503.
    #[arg(long, env = "NEARCACHE_DB_TIMEOUT", default_value = "2s", value_parser = duration, global = true)]
    pub db_timeout: Duration,
    /// Longest a query of the service may run (Postgres' statement_timeout), for instance
    /// while a lock blocks it; the request then answers 503. 0s: no limit.
    #[arg(long, env = "NEARCACHE_DB_STATEMENT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub db_statement_timeout: Duration,
    /// On SIGTERM or Ctrl-C, how long requests in flight may take to finish; those still
    /// running then are answered 503 and the exit status is 3.
    #[arg(long, env = "NEARCACHE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub shutdown_timeout: Duration,
    /// Log lines as `text` or `json`.
    #[arg(long, env = "NEARCACHE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// One log line per request (method, path, status, duration), target `access`.
    #[arg(long, env = "NEARCACHE_ACCESS_LOG")]
    pub access_log: bool,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Neither or both of the JWT secret and public key.
    #[error("give exactly one of --jwt-secret (NEARCACHE_JWT_SECRET) and --jwt-public-key (NEARCACHE_JWT_PUBLIC_KEY)")]
    JwtKey,
    /// The public key file cannot be read.
    #[error("cannot read the JWT public key {path}: {source}")]
    KeyFile {
        /// The path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key does not work.
    #[error("{0}")]
    Key(#[from] nearcache_http::AuthConfigError),
    /// Zero or inconsistent timings.
    #[error("{0}")]
    Timing(&'static str),
    /// The WAL source cannot use this database URL.
    #[error("{0}")]
    Wal(#[from] nearcache_wal::ConfigError),
    /// A bad channel name.
    #[error("{0}")]
    Channel(#[from] nearcache_listener::ConfigError),
    /// A bad listen address.
    #[error("--listen {0:?} is not an address like 127.0.0.1:8080")]
    Listen(String),
    /// No database URL.
    #[error("give --database-url (DATABASE_URL)")]
    NoDatabaseUrl,
    /// The database URL does not parse.
    #[error("--database-url: invalid database url: {0}")]
    DatabaseUrl(String),
    /// NATS' credentials or TLS settings cannot work.
    #[error("NATS: {0}")]
    Nats(String),
}

/// Where a relay publishes (`--nats-url`, `--nats-stream`, `--nats-prefix`).
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// The NATS server.
    pub url: String,
    /// The JetStream stream.
    pub stream: String,
    /// The subject prefix; `None`: `nearcache.<database name>`, the relay's default.
    pub prefix: Option<String>,
    /// Time between end-to-end probes (`nearcache_probe`); zero: no probe.
    pub probe_interval: Duration,
    /// How long a probe may take to come back.
    pub probe_timeout: Duration,
    /// How far behind the relay may be before the cache bypasses.
    pub max_lag: Duration,
    /// Credentials and TLS for NATS.
    pub security: nearcache_nats::NatsSecurity,
}

/// What an instance runs with. Build it from flags ([`Config::into_settings`]) or in code
/// ([`Settings::new`], then change the public fields); [`Application::build`](crate::Application::build)
/// checks it, in one place.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Postgres URL.
    pub database_url: String,
    /// Address to listen on (the binary binds it; tests bind their own).
    pub listen: std::net::SocketAddr,
    /// Cache mode.
    pub cache: CacheMode,
    /// TTL.
    pub cache_ttl: Duration,
    /// TTI.
    pub cache_tti: Option<Duration>,
    /// Refresh ahead of expiry, if set.
    pub refresh_after: Option<Duration>,
    /// Capacity.
    pub cache_capacity: u64,
    /// A bound in bytes, replacing the capacity.
    pub cache_max_bytes: Option<u64>,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Heartbeat timeout.
    pub heartbeat_timeout: Duration,
    /// How often a source checks the database again.
    pub check_interval: Duration,
    /// How full the notification queue may be under LISTEN.
    pub notify_queue_limit: f64,
    /// Principals audited per second (0: off).
    pub audit_rate: f64,
    /// The warm start's file, if any.
    pub warm_file: Option<std::path::PathBuf>,
    /// Principals per second loaded by a warm start.
    pub warm_rate: f64,
    /// Notification channel.
    pub channel: String,
    /// Invalidation source of a coherent cache.
    pub source: SourceKind,
    /// Where the relay publishes, for `--source nats`.
    pub nats: NatsSettings,
    /// Pool size.
    pub db_pool_size: u32,
    /// Pool acquire timeout.
    pub db_timeout: Duration,
    /// Postgres' statement_timeout for the service's queries; zero for none.
    pub db_statement_timeout: Duration,
    /// How long a shutdown waits for requests in flight.
    pub shutdown_timeout: Duration,
    /// A log line per request.
    pub access_log: bool,
    /// How tokens are verified.
    pub auth: AuthConfig,
}

impl Settings {
    /// The flags' defaults, for the database at `database_url` and tokens verified with `key`.
    pub fn new(database_url: impl Into<String>, key: Key) -> Self {
        Self {
            database_url: database_url.into(),
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            cache: CacheMode::Coherent,
            cache_ttl: Duration::from_secs(300),
            cache_tti: None,
            refresh_after: None,
            cache_capacity: 100_000,
            cache_max_bytes: None,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(3),
            check_interval: Duration::from_secs(10),
            notify_queue_limit: 0.5,
            audit_rate: 2.0,
            warm_file: None,
            warm_rate: 500.0,
            channel: "nearcache".into(),
            source: SourceKind::Auto,
            nats: NatsSettings {
                url: "nats://127.0.0.1:4222".into(),
                stream: "NEARCACHE".into(),
                prefix: None,
                probe_interval: Duration::from_secs(5),
                probe_timeout: Duration::from_secs(5),
                max_lag: Duration::from_secs(1),
                security: nearcache_nats::NatsSecurity::default(),
            },
            db_pool_size: 16,
            db_timeout: Duration::from_secs(2),
            db_statement_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            access_log: false,
            auth: AuthConfig::new(key),
        }
    }
}

impl Config {
    /// The settings these flags describe: reads the key file and parses the address. The rest
    /// is checked by [`Application::build`](crate::Application::build).
    ///
    /// # Errors
    /// [`ConfigError`] when the key is missing, given twice or unreadable, or the address is
    /// not one.
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        if self.database_url.is_none() {
            return Err(ConfigError::NoDatabaseUrl);
        }
        let key = match (self.jwt_secret, self.jwt_public_key) {
            (Some(secret), None) => Key::Secret(secret.into_bytes()),
            (None, Some(pem)) if pem.trim_start().starts_with("-----BEGIN") => {
                Key::PublicPem(pem.into_bytes())
            }
            (None, Some(path)) => {
                let path = PathBuf::from(path);
                Key::PublicPem(
                    std::fs::read(&path).map_err(|source| ConfigError::KeyFile { path, source })?,
                )
            }
            _ => return Err(ConfigError::JwtKey),
        };
        let listen = self
            .listen
            .parse()
            .map_err(|_| ConfigError::Listen(self.listen.clone()))?;
        let database_url = self.database_url.ok_or(ConfigError::NoDatabaseUrl)?;
        let mut settings = Settings::new(database_url, key);
        settings.auth.issuer = self.jwt_issuer;
        settings.auth.audience = self.jwt_audience;
        settings.auth.leeway_secs = self.jwt_leeway.as_secs();
        settings.listen = listen;
        settings.cache = self.cache;
        settings.cache_ttl = self.cache_ttl;
        settings.cache_tti = self.cache_tti;
        settings.refresh_after = self.refresh_after;
        settings.cache_capacity = self.cache_capacity;
        settings.cache_max_bytes = self.cache_max_bytes;
        settings.heartbeat_interval = self.heartbeat_interval;
        settings.heartbeat_timeout = self.heartbeat_timeout;
        settings.check_interval = self.check_interval;
        settings.notify_queue_limit = self.notify_queue_limit;
        settings.audit_rate = self.audit_rate;
        settings.warm_file = self.warm_file;
        settings.warm_rate = self.warm_rate;
        settings.channel = self.channel;
        settings.source = self.source;
        settings.nats = NatsSettings {
            url: self.nats_url,
            stream: self.nats_stream,
            prefix: self.nats_prefix,
            probe_interval: self.nats_probe_interval,
            probe_timeout: self.nats_probe_timeout,
            max_lag: self.nats_max_lag,
            security: self.nats_security,
        };
        settings.db_pool_size = self.db_pool_size;
        settings.db_timeout = self.db_timeout;
        settings.db_statement_timeout = self.db_statement_timeout;
        settings.shutdown_timeout = self.shutdown_timeout;
        settings.access_log = self.access_log;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let mut all = vec![
            "nearcache-server",
            "--database-url",
            "postgres://localhost/db",
        ];
        all.extend_from_slice(args);
        let settings = Config::try_parse_from(all)
            .map_err(|e| e.to_string())?
            .into_settings()
            .map_err(|e| e.to_string())?;
        crate::Application::build(settings.clone()).map_err(|e| e.to_string())?;
        Ok(settings)
    }

    #[test]
    fn defaults_follow_the_design() {
        let s = parse(&["--jwt-secret", "s"]).unwrap();
        assert_eq!(s.cache, CacheMode::Coherent);
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.channel, "nearcache");
        assert_eq!(s.cache_ttl, Duration::from_secs(300));
    }

    #[test]
    fn settings_made_in_code_are_checked_like_flags() {
        for mode in [CacheMode::Coherent, CacheMode::Off] {
            let mut s = Settings::new("not a url", Key::Secret(b"s".to_vec()));
            s.cache = mode;
            let err = crate::Application::build(s).unwrap_err().to_string();
            assert!(err.contains("invalid database url"), "{mode:?}: {err}");
        }
        let mut s = Settings::new("postgres://localhost/db", Key::Secret(Vec::new()));
        assert!(
            crate::Application::build(s.clone()).is_err(),
            "an empty secret"
        );
        s.auth = AuthConfig::new(Key::Secret(b"s".to_vec()));
        assert!(crate::Application::build(s).is_ok());
    }

    #[test]
    fn a_public_key_is_read_from_a_file() {
        let pem = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../nearcache-tower/tests/keys/ed25519.pub.pem"
        );
        assert!(parse(&["--jwt-public-key", pem]).is_ok());
        let inline = std::fs::read_to_string(pem).unwrap();
        assert!(parse(&["--jwt-public-key", &inline]).is_ok());
    }

    #[test]
    fn bad_configurations_are_refused_with_one_clear_line() {
        let cases: [(&[&str], &str); 10] = [
            (&[], "give exactly one of --jwt-secret"),
            (
                &["--jwt-secret", "s", "--jwt-public-key", "k"],
                "give exactly one",
            ),
            (
                &["--jwt-public-key", "/nonexistent.pem"],
                "cannot read the JWT public key",
            ),
            (
                &[
                    "--jwt-public-key",
                    "-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----",
                ],
                "not an RSA or Ed25519",
            ),
            (
                &["--jwt-secret", "s", "--cache-ttl", "soon"],
                "invalid value 'soon'",
            ),
            (
                &["--jwt-secret", "s", "--channel", "Bad-Name"],
                "invalid channel",
            ),
            (
                &["--jwt-secret", "s", "--heartbeat-timeout", "0s"],
                "must be positive",
            ),
            (
                &[
                    "--jwt-secret",
                    "s",
                    "--cache-ttl",
                    "1m",
                    "--refresh-after",
                    "2m",
                ],
                "--refresh-after must be positive and below --cache-ttl",
            ),
            (&["--jwt-secret", "s", "--audit-rate=-1"], "not a rate"),
            (&["--jwt-secret", "s", "--audit-rate", "NaN"], "not a rate"),
        ];
        for (args, want) in cases {
            let err = parse(args).unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }
}
