//! The reference service: configuration, composition of cache, repository, listener and HTTP
//! layer, and graceful shutdown. `main.rs` adds only signals and telemetry, so that tests can
//! run whole instances in-process on a port of their own with [`run`].
//!
//! Nothing depends on this crate but its binary and the cross-crate tests.

mod config;
mod handler;
mod probe;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nearcache::{Cache, CacheConfig, Mode};
use nearcache_http::{AppState, PrincipalStore, ServeConfig};
use nearcache_listener::{ListenerConfig, ListenerStatus};
use nearcache_pg::PgUserRepo;
use nearcache_store::PassThrough;
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{CacheMode, Config, ConfigError, Settings};
use handler::CacheHandler;
use probe::ServerProbe;

/// How long background tasks get to stop after the HTTP server has drained.
const TASK_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one instance on `listener` until `shutdown` completes, then drains connections, stops
/// the listener and the database probe, and returns.
///
/// The instance starts even while the database is down: `/healthz` says 503 until the
/// database answers, and requests that need it get 503.
///
/// # Errors
/// When the database URL is unusable.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(settings.db_pool_size)
        .acquire_timeout(settings.db_timeout)
        .connect_lazy(&settings.database_url)
        .context("invalid database url")?;
    let repo = Arc::new(PgUserRepo::new(pool.clone()));
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();

    let cache = match settings.cache {
        CacheMode::Off => None,
        mode => Some(Cache::new(CacheConfig {
            capacity: settings.cache_capacity,
            ttl: settings.cache_ttl,
            tti: settings.cache_tti,
            // With a listener, nothing is served until LISTEN is in place.
            initial_mode: if mode == CacheMode::Coherent {
                Mode::Bypass
            } else {
                Mode::Coherent
            },
            ..CacheConfig::default()
        })),
    };
    let store: PrincipalStore = match &cache {
        Some(c) => Arc::new(c.clone()),
        None => Arc::new(PassThrough::new()),
    };

    let listener_status = match (&cache, settings.cache) {
        (Some(c), CacheMode::Coherent) => {
            let mut lc = ListenerConfig::new(&settings.database_url)?
                .with_channel(&settings.channel)?
                .with_tables(handler::TABLES);
            lc.heartbeat_interval = settings.heartbeat_interval;
            lc.heartbeat_timeout = settings.heartbeat_timeout;
            let status = ListenerStatus::default();
            let handler = Arc::new(CacheHandler::new(c.clone()));
            let token = stop.clone();
            tasks.push((
                "listener",
                tokio::spawn(nearcache_listener::run(
                    lc,
                    handler,
                    status.clone(),
                    async move { token.cancelled().await },
                )),
            ));
            Some(status)
        }
        _ => None,
    };

    // Readiness: whether the database answers, checked every second.
    let db_ok = Arc::new(AtomicBool::new(false));
    {
        let (pool, db_ok, token) = (pool.clone(), db_ok.clone(), stop.clone());
        let timeout = settings.db_timeout;
        tasks.push((
            "database probe",
            tokio::spawn(async move {
                loop {
                    let ping =
                        tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&pool));
                    let ok = matches!(ping.await, Ok(Ok(_)));
                    if db_ok.swap(ok, Ordering::Relaxed) != ok {
                        if ok {
                            tracing::info!("database reachable: ready");
                        } else {
                            tracing::warn!("database unreachable: not ready");
                        }
                    }
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }),
        ));
    }

    let probe = Arc::new(ServerProbe::new(
        settings.cache,
        cache.clone(),
        listener_status,
        db_ok,
    ));
    let state = AppState::new(store, repo, settings.authenticator()?, probe);
    tracing::info!(
        addr = %listener.local_addr()?,
        cache = settings.cache.as_str(),
        "serving"
    );
    let drained = nearcache_http::serve(listener, state, ServeConfig::default(), shutdown).await;

    stop.cancel();
    for (name, task) in tasks {
        match tokio::time::timeout(TASK_STOP_TIMEOUT, task).await {
            Ok(Ok(())) => tracing::info!(task = name, "stopped"),
            Ok(Err(e)) => tracing::error!(task = name, error = %e, "ended abnormally"),
            Err(_) => tracing::warn!(task = name, "did not stop within {TASK_STOP_TIMEOUT:?}"),
        }
    }
    pool.close().await;
    tracing::info!(all_connections_drained = drained, "shut down");
    Ok(())
}
