//! The listening loop: connect, LISTEN, serve notifications and heartbeats, reconnect.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Notification};

use nearcache_source::{in_flight, sleep_until_opt, supervise, AbortOnDrop};

use crate::{parse, Handler, ListenerConfig, ListenerState, ListenerStatus, Payload};

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connecting: {0}")]
    Connect(#[source] nearcache_pgconn::ConnectError),
    #[error("connecting timed out")]
    ConnectTimeout,
    #[error("LISTEN: {0}")]
    Listen(#[source] tokio_postgres::Error),
    #[error("connection lost: {0}")]
    Lost(#[source] tokio_postgres::Error),
    #[error("connection closed by the server")]
    Closed,
    #[error("heartbeat not back within {0:?}")]
    HeartbeatTimeout(Duration),
    #[error("checking the triggers: {0}")]
    Check(#[source] tokio_postgres::Error),
    #[error("the database cannot be trusted to notify: {0}")]
    Misconfigured(String),
}

/// Runs the listener until `shutdown` completes; see the crate docs for the protocol. Never
/// returns early: every failure leads to [`Handler::bypass`] and a reconnect. On shutdown the
/// handler is put in bypass too, since nobody will tell it about changes any more.
///
/// # Panics
/// If `config` has a zero heartbeat interval or timeout.
pub async fn run<H>(
    config: ListenerConfig,
    handler: Arc<H>,
    status: ListenerStatus,
    shutdown: impl Future<Output = ()>,
) where
    H: Handler + ?Sized,
{
    config.validate().expect("invalid listener configuration");
    let heartbeat_channel = format!("{}_hb_{:08x}", config.channel, rand::random::<u32>());
    let backoff = (config.backoff_min, config.backoff_max);
    supervise("listener", backoff, &*handler, &status, shutdown, || {
        session(&config, &*handler, &status, &heartbeat_channel)
    })
    .await;
}

/// One connection's life. Returns why it ended and whether it got as far as listening.
async fn session<H: Handler + ?Sized>(
    config: &ListenerConfig,
    handler: &H,
    status: &ListenerStatus,
    heartbeat_channel: &str,
) -> (SessionError, bool) {
    // The first host that takes writes and is not a former primary, with several.
    // The connect timeout holds for each host, as libpq's does.
    let connecting = config.url.connect_primary(|pg| config.configure(pg));
    let hosts = u32::try_from(config.url.endpoints().len().max(1)).unwrap_or(u32::MAX);
    let (client, mut connection) =
        match tokio::time::timeout(config.connect_timeout * hosts, connecting).await {
            Ok(Ok((pair, _))) => pair,
            Ok(Err(e)) => return (SessionError::Connect(e), false),
            Err(_) => return (SessionError::ConnectTimeout, false),
        };
    let client = Arc::new(client);

    // The connection is driven by its own task, which forwards notifications and the error
    // that ends it; dropping the guard aborts it and so closes the socket.
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<Notification, SessionError>>();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(Ok(n)).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(SessionError::Lost(e)));
                    return;
                }
            }
        }
        let _ = tx.send(Err(SessionError::Closed));
    });
    let _driver = AbortOnDrop(driver);

    // LISTEN in autocommit (a simple query outside any transaction): it takes effect at once.
    let listen = format!("LISTEN {}; LISTEN {}", config.channel, heartbeat_channel);
    match tokio::time::timeout(config.connect_timeout, client.batch_execute(&listen)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return (SessionError::Listen(e), false),
        Err(_) => return (SessionError::ConnectTimeout, false),
    }
    // Listening proves nothing if the tables do not notify: ask the database first.
    let mut attached =
        match tokio::time::timeout(config.connect_timeout, check(&client, config)).await {
            Ok(Ok(attached)) => {
                status.set_problem(None);
                attached
            }
            Ok(Err(e)) => {
                if let SessionError::Misconfigured(problem) = &e {
                    status.set_problem(Some(problem.clone()));
                }
                return (e, false);
            }
            Err(_) => return (SessionError::ConnectTimeout, false),
        };
    // Only now may the cache serve: anything committed before the LISTEN is flushed away,
    // anything after it will be notified.
    handler.flush_all();
    handler.coherent();
    status.connected();
    status.set_state(ListenerState::Listening);
    tracing::info!(channel = %config.channel, "listener: listening, cache coherent");

    let mut ticker = tokio::time::interval(config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sequence: u64 = 0;
    let mut pending: Option<(u64, Instant)> = None;
    let mut rechecks = tokio::time::interval_at(
        tokio::time::Instant::now() + config.check_interval,
        config.check_interval,
    );
    rechecks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut recheck: Option<Recheck> = None;
    loop {
        let deadline = pending
            .map(|(_, sent)| tokio::time::Instant::from_std(sent + config.heartbeat_timeout));
        tokio::select! {
            message = rx.recv() => match message {
                Some(Ok(n)) if n.channel() == heartbeat_channel => {
                    if let Some((seq, sent)) = pending {
                        if n.payload() == seq.to_string() {
                            let rtt = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                            status.heartbeat(rtt);
                            pending = None;
                        }
                    }
                }
                Some(Ok(n)) => dispatch(handler, status, n.payload()),
                Some(Err(e)) => return (e, true),
                None => return (SessionError::Closed, true),
            },
            _ = ticker.tick(), if pending.is_none() => {
                sequence += 1;
                pending = Some((sequence, Instant::now()));
                let client = client.clone();
                let channel = heartbeat_channel.to_string();
                // Sent from a task of its own so that a server that stops answering cannot
                // stall this loop; the deadline below catches it.
                let status = status.clone();
                tokio::spawn(async move {
                    match client
                        .query_one(
                            "SELECT pg_notify($1, $2), pg_notification_queue_usage()",
                            &[&channel, &sequence.to_string()],
                        )
                        .await
                    {
                        Ok(row) => status.notify_queue_usage(row.get(1)),
                        Err(e) => tracing::debug!(error = %e, "listener: heartbeat not sent"),
                    }
                });
            }
            () = sleep_until_opt(deadline) => {
                status.heartbeat_timeout();
                return (SessionError::HeartbeatTimeout(config.heartbeat_timeout), true);
            }
            // The check again, on the same connection (one SELECT, no transaction); a server
            // that stops answering it also stops answering heartbeats, whose deadline holds.
            _ = rechecks.tick(), if recheck.is_none() => {
                let (client, config) = (client.clone(), config.clone());
                recheck = Some(Box::pin(async move { check(&client, &config).await }));
            }
            result = in_flight(&mut recheck) => {
                recheck = None;
                status.recheck();
                match result {
                    Ok(now) => {
                        // A table attached again may watch columns whose changes were not
                        // notified before: what is cached of it may be stale.
                        for (table, rule) in &now {
                            if attached.get(table).is_some_and(|before| before != rule) {
                                tracing::info!(%table, "listener: table attached again; flushing it");
                                handler.flush_table(table);
                            }
                        }
                        attached = now;
                    }
                    Err(e) => {
                        if let SessionError::Misconfigured(problem) = &e {
                            status.set_problem(Some(problem.clone()));
                        }
                        return (e, true);
                    }
                }
            }
        }
    }
}

/// Each attached table's rule as `nearcache_attached` records it (key, ignored and watched
/// columns), to notice a table attached again.
type Attached = std::collections::HashMap<String, String>;

type Recheck = Pin<Box<dyn Future<Output = Result<Attached, SessionError>> + Send>>;

/// Asks the database whether the tables carry nearcache's triggers as they must
/// (`nearcache_check`, installed with the triggers), and how each table is attached.
async fn check(
    client: &tokio_postgres::Client,
    config: &ListenerConfig,
) -> Result<Attached, SessionError> {
    let (problems, attached): (Vec<String>, Attached) = match client
        .query_one(
            "SELECT nearcache_check($1::text[], $2::text),
                    ARRAY(SELECT tbl::text FROM nearcache_attached ORDER BY 1),
                    ARRAY(SELECT concat_ws('|', key_column, ignore_columns::text,
                                           watched_columns::text, notify::text)
                            FROM nearcache_attached ORDER BY tbl::text),
                    pg_notification_queue_usage()",
            &[&config.tables, &config.channel],
        )
        .await
    {
        Ok(row) => {
            let mut problems: Vec<String> = row.get(0);
            let tables: Vec<String> = row.get(1);
            let rules: Vec<String> = row.get(2);
            let usage: f64 = row.get(3);
            if usage > config.queue_limit {
                problems.push(queue_problem(usage));
            }
            (problems, tables.into_iter().zip(rules).collect())
        }
        Err(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION)
                || e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
        {
            (
                vec![
                    "nearcache is not installed in this database (nearcache_sql::sqlx::install, or \
                      sql/0003_nearcache_install.sql)"
                        .to_string(),
                ],
                Attached::new(),
            )
        }
        Err(e) => return Err(SessionError::Check(e)),
    };
    if problems.is_empty() {
        Ok(attached)
    } else {
        Err(SessionError::Misconfigured(problems.join("; ")))
    }
}

/// What to say when the notification queue is fuller than the limit.
fn queue_problem(usage: f64) -> String {
    format!(
        "Postgres' notification queue is {:.1} % full (pg_notification_queue_usage()): a LISTEN \
         session that stopped reading (a stopped or hung listener, a listening session left in a \
         transaction) holds it back for the whole cluster, and once it is full every commit \
         that notifies fails. Find it in pg_stat_activity (LISTEN sessions idle in transaction \
         or not reading) and end it with pg_terminate_backend, or put the instances behind the \
         relay (one listener per fleet)",
        usage * 100.0
    )
}

fn dispatch<H: Handler + ?Sized>(handler: &H, status: &ListenerStatus, payload: &str) {
    status.notification();
    match parse(payload) {
        Ok(Payload::Rows { table, keys, .. }) => {
            if !handler.invalidate(&table, &keys) {
                status.ignored();
            }
        }
        Ok(Payload::Flush { table }) => {
            if !handler.flush_table(&table) {
                status.ignored();
            }
        }
        Err(e) => {
            // We cannot tell what changed, so everything may have.
            status.malformed();
            let shown: String = payload.chars().take(200).collect();
            tracing::warn!(error = %e, payload = %shown, "listener: unreadable notification, flushing");
            handler.flush_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Handler for Recorder {
        fn bypass(&self) {
            self.0.lock().unwrap().push("bypass".into());
        }
        fn flush_all(&self) {
            self.0.lock().unwrap().push("flush".into());
        }
        fn coherent(&self) {
            self.0.lock().unwrap().push("coherent".into());
        }
        fn invalidate(&self, table: &str, keys: &[String]) -> bool {
            self.0
                .lock()
                .unwrap()
                .push(format!("{table}:{}", keys.join(",")));
            table == "users"
        }
        fn flush_table(&self, table: &str) -> bool {
            self.0.lock().unwrap().push(format!("{table}:*"));
            table == "users"
        }
    }

    #[test]
    fn dispatch_maps_payloads_to_handler_calls() {
        let h = Recorder::default();
        let s = ListenerStatus::default();
        dispatch(
            &h,
            &s,
            r#"{"v":1,"table":"users","op":"update","keys":["a","b"]}"#,
        );
        dispatch(&h, &s, r#"{"v":1,"table":"users","op":"flush"}"#);
        dispatch(
            &h,
            &s,
            r#"{"v":1,"table":"other","op":"delete","keys":["c"]}"#,
        );
        dispatch(&h, &s, "garbage");
        dispatch(&h, &s, r#"{"v":9,"table":"users","op":"flush"}"#);
        assert_eq!(
            *h.0.lock().unwrap(),
            ["users:a,b", "users:*", "other:c", "flush", "flush"]
        );
        let snap = s.snapshot();
        assert_eq!(
            (snap.notifications, snap.ignored, snap.malformed),
            (5, 1, 2)
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_keeps_the_handler_in_bypass_until_shutdown() {
        let config = ListenerConfig::new("postgres://nobody@127.0.0.1:1/none").unwrap();
        let handler = Arc::new(Recorder::default());
        let status = ListenerStatus::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(config, handler.clone(), status.clone(), async {
            let _ = stopped.await;
        }));
        // Wait for two failed attempts, then stop.
        let deadline = Instant::now() + Duration::from_secs(10);
        while handler.0.lock().unwrap().len() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops promptly")
            .unwrap();
        let calls = handler.0.lock().unwrap().clone();
        assert!(calls.len() >= 2);
        assert!(calls.iter().all(|c| c == "bypass"), "{calls:?}");
        assert_eq!(status.snapshot().state, ListenerState::Stopped);
    }
}
