//! The reference service: configuration, composition of cache, repository, listener and HTTP
//! layer, and graceful shutdown. `main.rs` adds only flags, signals and telemetry.
//!
//! Build separate from run: [`Application::build`] checks [`Settings`] (made from flags or in
//! code) and composes the parts without I/O; [`Application::run_until_stopped`] serves on a
//! bound listener until a shutdown future completes. Tests run whole instances in-process on a
//! port of their own this way, without argv.
//!
//! Nothing depends on this crate but its binary and the cross-crate tests.

mod audit;
mod config;
mod database;
mod handler;
mod parse;
mod probe;
mod refresh;
mod source;
mod warm;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nearcache::{Cache, CacheConfig, Mode};
use nearcache_http::{AppState, Authenticator, CachedPrincipal, PrincipalStore, ServeConfig};
use nearcache_listener::{ListenerConfig, ListenerStatus};
use nearcache_pg::{PgUserRepo, Replans, UserId};
use nearcache_store::PassThrough;
use nearcache_wal::WalConfig;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{
    CacheMode, Command, Config, ConfigError, LogFormat, NatsSettings, Settings, SourceKind,
};
use probe::ServerProbe;
use source::Sources;

/// How long background tasks get to stop after the HTTP server has drained.
const TASK_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long closing the pool may wait for busy connections at exit.
const POOL_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// An instance, composed and checked, not yet running.
pub struct Application {
    settings: Settings,
    /// The pool's settings, one per host of the URL, in order.
    database: Vec<PgConnectOptions>,
    authenticator: Authenticator,
    cache: Option<Cache<UserId, Arc<CachedPrincipal>>>,
    sources: Option<Sources>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("cache", &self.settings.cache)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Checks `settings` and composes the parts. Does no I/O and needs no runtime.
    ///
    /// # Errors
    /// [`ConfigError`] for anything that cannot work: an unusable key, a database URL that
    /// does not parse, zero timings, a bad channel.
    pub fn build(settings: Settings) -> Result<Self, ConfigError> {
        let authenticator = Authenticator::new(&settings.auth)?;
        let mut database = database::pool_options(&settings.database_url)?;
        if !settings.db_statement_timeout.is_zero() {
            // Set at connection start: a query blocked by a lock ends within it, and its
            // request answers 503 (the repository maps the cancellation to unavailable).
            for host in &mut database {
                *host = host.clone().options([(
                    "statement_timeout",
                    format!("{}ms", settings.db_statement_timeout.as_millis()),
                )]);
            }
        }
        if settings.cache_ttl.is_zero() || settings.cache_tti.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::Timing(
                "--cache-ttl and --cache-tti must be positive",
            ));
        }
        if settings
            .refresh_after
            .is_some_and(|after| after.is_zero() || after >= settings.cache_ttl)
        {
            return Err(ConfigError::Timing(
                "--refresh-after must be positive and below --cache-ttl",
            ));
        }
        if settings.shutdown_timeout.is_zero() {
            return Err(ConfigError::Timing("--shutdown-timeout must be positive"));
        }
        if settings.db_timeout.is_zero() || settings.db_pool_size == 0 {
            return Err(ConfigError::Timing(
                "--db-timeout and --db-pool-size must be positive",
            ));
        }
        // The listener's own rules check the channel and the heartbeat, whatever the mode.
        let mut listener = ListenerConfig::new(&settings.database_url)?
            .with_channel(&settings.channel)?
            .with_tables(handler::TABLES);
        listener.heartbeat_interval = settings.heartbeat_interval;
        listener.heartbeat_timeout = settings.heartbeat_timeout;
        listener.check_interval = settings.check_interval;
        listener.queue_limit = settings.notify_queue_limit;
        listener.validate().map_err(|e| match e {
            nearcache_listener::ConfigError::CheckInterval => {
                ConfigError::Timing("--check-interval must be positive")
            }
            nearcache_listener::ConfigError::QueueLimit(_) => {
                ConfigError::Timing("--notify-queue-limit must be above 0 and at most 1")
            }
            _ => {
                ConfigError::Timing("--heartbeat-interval and --heartbeat-timeout must be positive")
            }
        })?;
        // The WAL source needs a TCP host; `auto` falls back to LISTEN without one.
        let wal = match WalConfig::new(&settings.database_url) {
            Ok(mut wal) => {
                wal = wal.with_tables(handler::TABLES);
                wal.heartbeat_interval = settings.heartbeat_interval;
                wal.heartbeat_timeout = settings.heartbeat_timeout;
                wal.check_interval = settings.check_interval;
                Some(wal)
            }
            Err(e) if settings.source == SourceKind::Wal => return Err(e.into()),
            Err(_) => None,
        };
        let nats = {
            let NatsSettings {
                url,
                stream,
                prefix,
                probe_interval,
                probe_timeout,
                max_lag,
                security,
            } = settings.nats.clone();
            let mut nats = nearcache_nats::NatsConfig::new(
                url,
                database[0].get_database().unwrap_or("postgres"),
            );
            nats.stream = stream;
            if let Some(prefix) = prefix {
                nats.prefix = prefix;
            }
            nats.heartbeat_timeout = settings.heartbeat_timeout;
            nats.max_lag = max_lag;
            security
                .validate()
                .map_err(|e| ConfigError::Nats(e.to_string()))?;
            nats.security = security;
            if !probe_interval.is_zero() {
                // The write needs the pool, made when serving: `source::run` fills it in.
                let mut probe = nearcache_nats::Probe::new(
                    nearcache_pg::probe::TABLE,
                    uuid::Uuid::new_v4().simple().to_string(),
                    Arc::new(|_| Box::pin(async { Err("no pool yet".into()) })),
                );
                probe.interval = probe_interval;
                probe.timeout = probe_timeout;
                nats.probe = Some(probe);
            }
            // Likewise the check of the cached tables, which needs the pool.
            let mut check = nearcache_nats::TableCheck::new(Arc::new(|_| {
                Box::pin(async { Err(nearcache_nats::CheckError::Failed("no pool yet".into())) })
            }));
            check.interval = settings.check_interval;
            nats.check = Some(check);
            nats.validate().map_err(|e| {
                ConfigError::Timing(if matches!(e, nearcache_nats::NatsConfigError::Heartbeat) {
                    "--heartbeat-timeout, --nats-probe-timeout and --check-interval must be positive"
                } else {
                    "--nats-stream and --nats-prefix must not be empty"
                })
            })?;
            nats
        };
        let cache = match settings.cache {
            CacheMode::Off => None,
            mode => Some(Cache::with_weigher(
                CacheConfig {
                    capacity: settings.cache_capacity,
                    max_bytes: settings.cache_max_bytes,
                    ttl: settings.cache_ttl,
                    tti: settings.cache_tti,
                    refresh_after: settings.refresh_after,
                    // With a listener, nothing is served until LISTEN is in place.
                    initial_mode: if mode == CacheMode::Coherent {
                        Mode::Bypass
                    } else {
                        Mode::Coherent
                    },
                    ..CacheConfig::default()
                },
                |_, p: &Arc<CachedPrincipal>| p.heap_bytes(),
            )),
        };
        Ok(Self {
            sources: (settings.cache == CacheMode::Coherent).then_some(Sources {
                kind: settings.source,
                notify: listener,
                wal,
                nats,
            }),
            settings,
            database,
            authenticator,
            cache,
        })
    }

    /// Serves on `listener` until `shutdown` completes, then drains connections, stops the
    /// invalidation listener and the database probe, and returns.
    ///
    /// The instance starts even while the database is down: `/healthz` says 503 until the
    /// database answers, and requests that need it get 503.
    ///
    /// Returns whether every request finished within the shutdown timeout (those that did not
    /// were answered 503).
    ///
    /// # Errors
    /// When the listener's address cannot be read.
    pub async fn run_until_stopped(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<Stopped> {
        let Self {
            settings,
            database,
            authenticator,
            cache,
            sources,
        } = self;
        // A migration that changes a served column's type makes the pool's prepared statements
        // stale: the query runs again and the older connections are renewed (`Replans`).
        let replans = Replans::default();
        let pool = replans
            .guard(
                PgPoolOptions::new()
                    .max_connections(settings.db_pool_size)
                    .acquire_timeout(settings.db_timeout),
            )
            .connect_lazy_with(database[0].clone());
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();

        let chosen = Arc::new(OnceLock::new());
        let listener_status = match (&cache, sources) {
            (Some(c), Some(sources)) => {
                let status = ListenerStatus::default();
                let handler = Arc::new(handler::handler(c.clone()));
                let task = source::run(
                    sources,
                    handler,
                    status.clone(),
                    chosen.clone(),
                    pool.clone(),
                    stop.clone(),
                );
                tasks.push(("invalidation source", tokio::spawn(task)));
                Some(status)
            }
            _ => None,
        };
        let db_ok = Arc::new(AtomicBool::new(false));
        tasks.push((
            "database probe",
            database::spawn_probe(
                pool.clone(),
                database,
                replans.clone(),
                db_ok.clone(),
                settings.db_timeout,
                &stop,
            ),
        ));

        if let (Some(cache), Some(file)) = (&cache, &settings.warm_file) {
            let ids = warm::read(file);
            if !ids.is_empty() {
                let repo = PgUserRepo::with_replans(pool.clone(), replans.clone());
                let warming = warm::spawn(cache.clone(), repo, ids, settings.warm_rate, &stop);
                tasks.push(("warm start", warming));
            }
        }
        let kept = cache.clone().filter(|_| settings.warm_file.is_some());
        let audits = settings.cache == CacheMode::Coherent && settings.audit_rate > 0.0;
        if let (Some(cache), true) = (&cache, audits) {
            // A healthy source evicts a change within its heartbeat's interval and timeout,
            // or bypasses.
            let bound = settings.heartbeat_interval + settings.heartbeat_timeout;
            let repo = PgUserRepo::with_replans(pool.clone(), replans.clone());
            let rate = settings.audit_rate;
            tasks.push((
                "audit",
                audit::spawn(cache.clone(), repo, rate, bound, &stop),
            ));
        }
        if let (Some(cache), Some(_)) = (&cache, settings.refresh_after) {
            let repo = PgUserRepo::with_replans(pool.clone(), replans.clone());
            tasks.push(("refresh", refresh::spawn(cache.clone(), repo, &stop)));
        }
        let store: PrincipalStore = match &cache {
            Some(c) => Arc::new(c.clone()),
            None => Arc::new(PassThrough::new()),
        };
        let probe = Arc::new(ServerProbe::new(
            settings.cache,
            cache,
            listener_status,
            chosen,
            db_ok,
            replans.clone(),
            audits,
        ));
        let repo = Arc::new(PgUserRepo::with_replans(pool.clone(), replans));
        let state = AppState::new(store, repo, authenticator, probe);
        tracing::info!(
            addr = %listener.local_addr()?,
            cache = settings.cache.as_str(),
            "serving"
        );
        let serve = ServeConfig {
            drain_timeout: settings.shutdown_timeout,
            access_log: settings.access_log,
            ..ServeConfig::default()
        };
        let drained = nearcache_http::serve(listener, state, serve, shutdown).await;

        // Before the source stops: stopping, it flushes the cache.
        let ids = kept.map(|cache| warm::ids(&cache));
        stop.cancel();
        stop_tasks(tasks).await;
        if let (Some(ids), Some(file)) = (ids, &settings.warm_file) {
            match warm::write(file, &ids) {
                Ok(n) => tracing::info!(file = %file.display(), ids = n, "warm start: ids kept"),
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "warm start: cannot write the file")
                }
            }
        }
        // A query abandoned at the shutdown timeout still holds its connection until Postgres
        // answers it (a lock may hold it for long): closing waits a little, not for that.
        if tokio::time::timeout(POOL_CLOSE_TIMEOUT, pool.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections still busy at exit: closed without waiting");
        }
        tracing::info!(every_request_answered = drained, "shut down");
        Ok(Stopped { drained })
    }
}

/// How an instance stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Every request in flight at shutdown finished within the shutdown timeout.
    pub drained: bool,
}

/// Applies the migrations of `sql/` (the reference schema, nearcache's functions, the
/// reference tables attached) to the database at `database_url`; returns how many were new.
///
/// # Errors
/// When the database cannot be reached or a migration fails.
pub async fn migrate(database_url: &str, timeout: Duration) -> anyhow::Result<usize> {
    use anyhow::Context;
    let hosts = database::pool_options(database_url)?;
    // With several hosts, the first that takes writes, as the pool and the sources choose.
    let options = match database::first_primary(&hosts, timeout).await {
        Some(i) => hosts[i].clone(),
        None => hosts[0].clone(),
    };
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(timeout)
        .connect_with(options)
        .await
        .context("connecting to the database")?;
    // Before the first migration the table does not exist: nothing applied yet.
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap_or_default();
    nearcache_pg::MIGRATOR
        .run(&pool)
        .await
        .context("applying the migrations")?;
    pool.close().await;
    let all = nearcache_pg::MIGRATOR.iter().count();
    Ok(all.saturating_sub(usize::try_from(applied).unwrap_or(0)))
}

/// Waits for each background task to end, and logs how it did.
async fn stop_tasks(tasks: Vec<(&'static str, JoinHandle<()>)>) {
    for (name, task) in tasks {
        match tokio::time::timeout(TASK_STOP_TIMEOUT, task).await {
            Ok(Ok(())) => tracing::info!(task = name, "stopped"),
            Ok(Err(e)) => tracing::error!(task = name, error = %e, "ended abnormally"),
            Err(_) => tracing::warn!(task = name, "did not stop within {TASK_STOP_TIMEOUT:?}"),
        }
    }
}
