//! Which invalidation source drives the cache, and running it: `auto` asks the database once it
//! answers whether the WAL can be decoded, and falls back to LISTEN otherwise.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use nearcache_listener::ListenerConfig;
use nearcache_source::{Handler, SourceStatus};
use nearcache_wal::{Decodable, WalConfig};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::SourceKind;

/// The configurations of both sources and the choice between them.
pub(crate) struct Sources {
    pub(crate) kind: SourceKind,
    pub(crate) notify: ListenerConfig,
    /// `None` when the URL cannot serve a replication connection (then `auto` means LISTEN).
    pub(crate) wal: Option<WalConfig>,
    /// The relay to follow with `--source nats`.
    pub(crate) nats: nearcache_nats::NatsConfig,
}

/// Runs the chosen source until `stop`; records the choice in `chosen` once it is made.
pub(crate) async fn run<H: Handler>(
    sources: Sources,
    handler: Arc<H>,
    status: SourceStatus,
    chosen: Arc<OnceLock<SourceKind>>,
    pool: PgPool,
    stop: CancellationToken,
) {
    let mut reason = None;
    let kind = match (sources.kind, &sources.wal) {
        (SourceKind::Auto, None) => SourceKind::Notify,
        (SourceKind::Auto, Some(wal)) => loop {
            // The cache stays in bypass (it starts there) until the database answers.
            match wal.decodable().await {
                Ok(Decodable::Yes) => break SourceKind::Wal,
                Ok(Decodable::No(why)) => {
                    reason = Some(why);
                    break SourceKind::Notify;
                }
                Err(e) => tracing::debug!(error = %e, "source: cannot ask the database yet"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        },
        (kind, _) => kind,
    };
    let _ = chosen.set(kind);
    tracing::info!(
        source = kind.as_str(),
        configured = sources.kind.as_str(),
        reason = reason.as_deref().unwrap_or(""),
        "invalidation source chosen"
    );
    if kind != SourceKind::Notify {
        warn_of_idle_triggers(&pool).await;
    }
    let stopped = async move { stop.cancelled().await };
    match (kind, sources.wal) {
        (SourceKind::Nats, _) => {
            let mut nats = sources.nats;
            if let Some(probe) = &mut nats.probe {
                probe.write = probe_write(pool.clone(), probe.instance.clone());
            }
            if let Some(check) = &mut nats.check {
                check.check = table_check(pool);
            }
            nearcache_nats::run(nats, handler, status, stopped).await;
        }
        (SourceKind::Wal, Some(wal)) => {
            on_own_thread(
                "nearcache-wal",
                nearcache_wal::run(wal, handler, status, stopped),
            )
            .await;
        }
        _ => nearcache_listener::run(sources.notify, handler, status, stopped).await,
    }
}

/// Runs `work` on a thread of its own with a single-threaded runtime, until it ends. The WAL
/// source's stream, its replication client and its control connection then wake one another
/// on one thread: a commit costs no wake-up across threads, and requests served on the main
/// runtime do not delay it.
async fn on_own_thread(name: &str, work: impl std::future::Future<Output = ()> + Send + 'static) {
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(work),
                Err(e) => tracing::error!(error = %e, "cannot start the source's runtime"),
            }
            let _ = done.send(());
        });
    match spawned {
        Ok(_) => {
            let _ = finished.await;
        }
        Err(e) => tracing::error!(error = %e, "cannot start the source's thread"),
    }
}

/// Says so when writers run triggers that this instance does not read (only LISTEN does),
/// unless the database's writes are meant for both sources.
async fn warn_of_idle_triggers(pool: &PgPool) {
    let firing: Result<(i64, String), sqlx::Error> = sqlx::query_as(
        "SELECT (SELECT count(*) FROM nearcache_attached WHERE notify), nearcache_source()",
    )
    .fetch_one(pool)
    .await;
    // An error: an installation before nearcache_set_source, or none; the source's check speaks.
    if let Ok((n, source)) = firing {
        if n > 0 && source != "both" {
            tracing::warn!(
                tables = n,
                "writers run nearcache's triggers on {n} tables for LISTEN, which this instance does not use: if no instance does, SELECT nearcache_set_source('wal') spares them that cost"
            );
        }
    }
}

/// The check of the cached tables against how the relay reads, through this instance's pool.
fn table_check(pool: PgPool) -> nearcache_nats::CheckTables {
    Arc::new(move |reads| {
        let pool = pool.clone();
        Box::pin(async move {
            let tables = &crate::handler::TABLES;
            let problems = match reads {
                Some(nearcache_nats::Reads::Wal { publication }) => {
                    nearcache_pg::check::read_by_wal(&pool, tables, &publication).await
                }
                Some(nearcache_nats::Reads::Notify { channel }) => {
                    nearcache_pg::check::read_by_notify(&pool, tables, &channel).await
                }
                None => nearcache_pg::check::attached(&pool, tables).await,
            }
            .map_err(|e| nearcache_nats::CheckError::Failed(e.into()))?;
            if problems.is_empty() {
                Ok(())
            } else {
                Err(nearcache_nats::CheckError::Problems(problems))
            }
        })
    })
}

/// The end-to-end probe's write: this instance's row of `nearcache_probe`, through its pool.
fn probe_write(pool: PgPool, instance: String) -> nearcache_nats::ProbeWrite {
    Arc::new(move |n| {
        let (pool, instance) = (pool.clone(), instance.clone());
        Box::pin(async move {
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            nearcache_pg::probe::write(&pool, &instance, n)
                .await
                .map_err(Into::into)
        })
    })
}
