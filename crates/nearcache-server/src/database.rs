//! The pool's database: its settings from the URL, one per host as libpq takes several
//! (`postgres://app@a:5432,b:5432/app`), and the probe that says whether it answers and, with
//! several hosts, moves the pool to the first that takes writes when its own stops (a
//! failover). sqlx reads one host per URL, so the hosts are split here and the pool's
//! settings replaced through its public API (`Pool::set_connect_options`).

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nearcache_pg::Replans;
use nearcache_pgconn::fence;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ConfigError;

/// The pool's settings for each host of the database URL, in order. The pool (sqlx) reads URLs
/// only; the sources read libpq's `key=value` strings too, so one is refused here, at once, with
/// what to give instead, rather than with sqlx's "relative URL without a base".
pub(crate) fn pool_options(database_url: &str) -> Result<Vec<PgConnectOptions>, ConfigError> {
    let Some((scheme, rest)) = database_url
        .split_once("://")
        .filter(|(s, _)| *s == "postgres" || *s == "postgresql")
    else {
        return Err(ConfigError::DatabaseUrl(
            "not a postgres:// URL (a key=value connection string?): give the database as postgres://user:password@host:port/database?sslmode=…".into(),
        ));
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (user, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (format!("{user}@"), hosts),
        None => (String::new(), authority),
    };
    hosts
        .split(',')
        .map(|host| {
            PgConnectOptions::from_str(&format!("{scheme}://{user}{host}{tail}"))
                .map_err(|e| ConfigError::DatabaseUrl(e.to_string()))
        })
        .collect()
}

/// Readiness: whether the database answers, checked every second until `stop`. With several
/// hosts, a pool whose server stops answering or stops taking writes (a standby now) is moved
/// to the first host, in the URL's order, that takes writes; the connections opened before are
/// closed as they are next acquired.
pub(crate) fn spawn_probe(
    pool: PgPool,
    hosts: Vec<PgConnectOptions>,
    replans: Replans,
    db_ok: Arc<AtomicBool>,
    timeout: Duration,
    stop: &CancellationToken,
) -> JoinHandle<()> {
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut current = 0;
        loop {
            let answer = tokio::time::timeout(timeout, takes_writes(&pool)).await;
            let mut ok = matches!(answer, Ok(Ok(_)));
            let primary = matches!(answer, Ok(Ok(true)));
            if hosts.len() > 1 && !primary {
                if let Some(i) = first_primary(&hosts, timeout).await {
                    if i != current {
                        tracing::warn!(
                            from = %describe(&hosts[current]),
                            to = %describe(&hosts[i]),
                            "database: the pool's server no longer takes writes; following the primary"
                        );
                        pool.set_connect_options(hosts[i].clone());
                        replans.renew();
                        current = i;
                    }
                    ok = true;
                }
            }
            if db_ok.swap(ok, Ordering::Relaxed) != ok {
                if ok {
                    tracing::info!("database reachable: ready");
                } else {
                    tracing::warn!("database unreachable: not ready");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    })
}

/// Whether the server of `db` takes writes and is not a former primary (a timeline older than
/// one this process has seen: see `nearcache_pgconn::fence`).
async fn takes_writes<'c>(db: impl sqlx::PgExecutor<'c>) -> Result<bool, sqlx::Error> {
    let (system, timeline): (Option<String>, Option<i32>) =
        sqlx::query_as(fence::TIMELINE_SQL).fetch_one(db).await?;
    let (Some(system), Some(timeline)) = (system, timeline) else {
        return Ok(false);
    };
    match fence::admit(&system, timeline) {
        Ok(()) => Ok(true),
        Err(former) => {
            tracing::warn!(%former, "database: the pool's server is a former primary");
            Ok(false)
        }
    }
}

/// The first host, in order, that answers and takes writes (and is not a former primary).
pub(crate) async fn first_primary(hosts: &[PgConnectOptions], timeout: Duration) -> Option<usize> {
    for (i, options) in hosts.iter().enumerate() {
        let attempt = async {
            let mut conn = sqlx::PgConnection::connect_with(options).await?;
            let primary = takes_writes(&mut conn).await;
            let _ = conn.close().await;
            primary
        };
        if let Ok(Ok(true)) = tokio::time::timeout(timeout, attempt).await {
            return Some(i);
        }
    }
    None
}

fn describe(options: &PgConnectOptions) -> String {
    format!("{}:{}", options.get_host(), options.get_port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_refuses_a_key_value_string_saying_what_to_give() {
        let err = pool_options("host=db dbname=app sslmode=verify-full")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not a postgres:// URL") && err.contains("postgres://user:password@"),
            "{err}"
        );
        assert!(pool_options("postgres://u@h/db").is_ok());
        assert!(pool_options("postgresql://u@h/db").is_ok());
    }

    #[test]
    fn several_hosts_make_one_setting_each_in_order() {
        let hosts = pool_options(
            "postgres://app:secret@a:5433,b,[::1]:5434/db?sslmode=require&application_name=api&target_session_attrs=read-write",
        )
        .unwrap();
        let seen: Vec<String> = hosts.iter().map(describe).collect();
        assert_eq!(seen, ["a:5433", "b:5432", "[::1]:5434"]);
        for h in &hosts {
            assert_eq!(h.get_username(), "app");
            assert_eq!(h.get_database(), Some("db"));
            assert_eq!(h.get_application_name(), Some("api"));
        }
    }
}
