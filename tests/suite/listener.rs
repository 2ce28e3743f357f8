//! The invalidation sources against a real Postgres: invalidations, faults, bad payloads,
//! shutdown. The tests that hold for every source run for each (`notify::…`, `wal::…`).

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nearcache_listener::{run, Handler, ListenerConfig, ListenerState, ListenerStatus};
use nearcache_tests::{wait_until, PrivateCluster, TestDb};
use nearcache_wal::WalConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::support::{exec, seed, terminate_source, update, Source};

#[derive(Default)]
pub(crate) struct Recorder(Mutex<Vec<String>>);

impl Recorder {
    pub(crate) fn push(&self, e: impl Into<String>) {
        self.0.lock().unwrap().push(e.into());
    }
    pub(crate) fn events(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    pub(crate) fn position_after(&self, from: usize, e: &str) -> Option<usize> {
        self.events()
            .iter()
            .skip(from)
            .position(|x| x == e)
            .map(|p| p + from)
    }
}

impl Handler for Recorder {
    fn bypass(&self) {
        self.push("bypass");
    }
    fn flush_all(&self) {
        self.push("flush");
    }
    fn coherent(&self) {
        self.push("coherent");
    }
    fn invalidate(&self, table: &str, keys: &[String]) -> bool {
        for k in keys {
            self.push(format!("{table}:{k}"));
        }
        true
    }
    fn flush_table(&self, table: &str) -> bool {
        self.push(format!("{table}:*"));
        true
    }
}

pub(crate) struct Running {
    pub(crate) handler: Arc<Recorder>,
    pub(crate) status: ListenerStatus,
    pub(crate) stop: Option<oneshot::Sender<()>>,
    pub(crate) task: JoinHandle<()>,
}

/// Starts `source` on the database at `url` with these heartbeat timings.
pub(crate) fn start(source: Source, url: &str, heartbeat: Duration, timeout: Duration) -> Running {
    match source {
        Source::Notify => {
            let mut config = ListenerConfig::new(url).unwrap();
            config.heartbeat_interval = heartbeat;
            config.heartbeat_timeout = timeout;
            start_with(config)
        }
        Source::Wal => {
            let mut config = WalConfig::new(url).unwrap();
            config.heartbeat_interval = heartbeat;
            config.heartbeat_timeout = timeout;
            start_wal(config)
        }
        Source::Nats => unreachable!("these tests run the direct sources on their own"),
    }
}

/// Starts the WAL source with `config`.
pub(crate) fn start_wal(mut config: WalConfig) -> Running {
    config.backoff_max = Duration::from_millis(500);
    let handler = Arc::new(Recorder::default());
    let status = ListenerStatus::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(nearcache_wal::run(
        config,
        handler.clone(),
        status.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    Running {
        handler,
        status,
        stop: Some(stop),
        task,
    }
}

pub(crate) fn start_with(mut config: ListenerConfig) -> Running {
    config.backoff_max = Duration::from_millis(500);
    let handler = Arc::new(Recorder::default());
    let status = ListenerStatus::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(config, handler.clone(), status.clone(), async {
        let _ = stopped.await;
    }));
    Running {
        handler,
        status,
        stop: Some(stop),
        task,
    }
}

impl Running {
    /// Stops the source and waits until it has.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    pub(crate) async fn until(&self, what: &str, from: usize, event: &str) -> usize {
        let mut at = 0;
        wait_until(Duration::from_secs(20), what, || {
            let found = self.handler.position_after(from, event);
            if let Some(p) = found {
                at = p;
            }
            std::future::ready(found.is_some())
        })
        .await;
        at
    }
}

const SLOW: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_table_without_triggers_keeps_the_cache_in_bypass_and_says_why() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    // The schema is there, the triggers of one table are not.
    exec(&pool, "SELECT nearcache_detach('users')").await;
    let config = ListenerConfig::new(db.url())
        .unwrap()
        .with_tables(["users", "organizations"]);
    let l = start_with(config);
    wait_until(Duration::from_secs(20), "the problem reported", || {
        std::future::ready(l.status.problem().is_some())
    })
    .await;
    let problem = l.status.problem().unwrap();
    assert!(problem.contains("users is not attached"), "{problem}");
    assert!(l.status.snapshot().misconfigured);
    // It keeps checking, and never lets the cache serve meanwhile.
    let first = l.status.snapshot().connections;
    wait_until(Duration::from_secs(20), "a second check", || {
        let events = l.handler.events();
        std::future::ready(events.iter().filter(|e| *e == "bypass").count() >= 2)
    })
    .await;
    assert!(!l.handler.events().contains(&"coherent".to_string()));
    assert_eq!(
        first, 0,
        "a connection that failed its check is not counted as listening"
    );
    // Once the table is attached, the next connection's check passes.
    exec(
        &pool,
        "SELECT nearcache_attach('users', 'id', '{last_seen_at}')",
    )
    .await;
    l.until("coherent", 0, "coherent").await;
    assert_eq!(l.status.problem(), None);
    assert!(!l.status.snapshot().misconfigured);
}

#[tokio::test]
async fn a_database_without_nearcache_keeps_the_cache_in_bypass() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    exec(&pool, "DROP FUNCTION nearcache_check(text[], text)").await;
    let l = start_with(ListenerConfig::new(db.url()).unwrap());
    wait_until(Duration::from_secs(20), "the problem reported", || {
        std::future::ready(l.status.problem().is_some())
    })
    .await;
    assert!(l.status.problem().unwrap().contains("not installed"));
    assert!(!l.handler.events().contains(&"coherent".to_string()));
}

async fn committed_changes_reach_the_handler_as_invalidations(source: Source) {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (org, users) = seed(&pool, 1).await;
    let l = start(
        source,
        db.url(),
        Duration::from_secs(1),
        Duration::from_secs(3),
    );
    let ready = l.until("coherent", 0, "coherent").await;
    assert_eq!(
        &l.handler.events()[..=ready],
        ["flush", "coherent"],
        "LISTEN or slot, flush, coherent"
    );
    let u = users[0].id;
    update(&pool, "users", u, "name = 'Grace'").await;
    l.until("the user's invalidation", ready, &format!("users:{u}"))
        .await;
    update(&pool, "organizations", org.id, "name = 'Acme 2'").await;
    l.until(
        "the organization's invalidation",
        ready,
        &format!("organizations:{}", org.id),
    )
    .await;
    exec(&pool, "TRUNCATE users").await;
    l.until("the table flush", ready, "users:*").await;
}

async fn a_terminated_backend_bypasses_at_once_and_recovers_with_a_flush(source: Source) {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let l = start(
        source,
        db.url(),
        Duration::from_secs(1),
        Duration::from_secs(3),
    );
    let ready = l.until("coherent", 0, "coherent").await;
    assert_eq!(terminate_source(&pool, source).await, 1);
    let down = l.until("bypass", ready, "bypass").await;
    // A change committed while the listener is away.
    let u = users[0].id;
    update(&pool, "users", u, "name = 'While down'").await;
    l.handler.push("committed");
    let committed = l.handler.position_after(down, "committed").unwrap();
    let back = l.until("coherent again", down, "coherent").await;
    let events = l.handler.events();
    assert_eq!(
        events[back - 1],
        "flush",
        "flush comes right before coherent: {events:?}"
    );
    // Either the flush after LISTEN or the notification covers the change.
    let covered = events[committed..]
        .iter()
        .any(|e| e == "flush" || *e == format!("users:{u}"));
    assert!(covered, "{events:?}");
    assert_eq!(l.status.snapshot().connections, 2);
}

async fn a_crashed_and_restarted_cluster_is_recovered_from(source: Source) {
    let cluster = PrivateCluster::start();
    let db = TestDb::on(&cluster.url()).await;
    let l = start(
        source,
        db.url(),
        Duration::from_millis(200),
        Duration::from_secs(1),
    );
    let ready = l.until("coherent", 0, "coherent").await;
    cluster.cluster().crash().unwrap();
    let down = l.until("bypass", ready, "bypass").await;
    assert_ne!(l.status.snapshot().state, ListenerState::Listening);
    cluster.cluster().up().unwrap();
    l.until("coherent after the restart", down, "coherent")
        .await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let u = users[0].id;
    update(&pool, "users", u, "name = 'After'").await;
    l.until(
        "an invalidation after the restart",
        down,
        &format!("users:{u}"),
    )
    .await;
    // Before the cluster goes: a server stopping waits for its WAL consumers.
    l.stop().await;
}

/// Sends SIGCONT to a stopped backend when dropped, even if the test fails.
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

async fn a_backend_that_stops_answering_bypasses_within_the_heartbeat_timeout(source: Source) {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let timeout = Duration::from_millis(800);
    let interval = Duration::from_millis(100);
    let l = start(source, db.url(), interval, timeout);
    let ready = l.until("coherent", 0, "coherent").await;
    wait_until(SLOW, "a first heartbeat", || {
        std::future::ready(l.status.snapshot().heartbeats > 0)
    })
    .await;
    let pid: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity
          WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(source.application_name())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let _cont = Stopped(pid);
    let stopped_at = Instant::now();
    l.until("bypass", ready, "bypass").await;
    let took = stopped_at.elapsed();
    // At most one interval until the next heartbeat, then the timeout; plus scheduling slack.
    assert!(
        took < interval + timeout + Duration::from_secs(2),
        "bypass after {took:?}"
    );
    assert!(l.status.snapshot().heartbeat_timeouts >= 1);
}

#[tokio::test]
async fn bad_payloads_are_counted_and_flushed_and_listening_goes_on() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let l = start(
        Source::Notify,
        db.url(),
        Duration::from_secs(1),
        Duration::from_secs(3),
    );
    let ready = l.until("coherent", 0, "coherent").await;
    for bad in [
        "garbage",
        "{\"v\":2,\"table\":\"users\",\"op\":\"flush\"}",
        "{\"v\":1}",
        "",
    ] {
        sqlx::query("SELECT pg_notify('nearcache', $1)")
            .bind(bad)
            .execute(&pool)
            .await
            .unwrap();
    }
    let u = users[0].id;
    update(&pool, "users", u, "name = 'Still'").await;
    l.until(
        "a good notification after the bad ones",
        ready,
        &format!("users:{u}"),
    )
    .await;
    let events = l.handler.events();
    let flushes = events[ready..].iter().filter(|e| *e == "flush").count();
    assert_eq!(flushes, 4, "{events:?}");
    let s = l.status.snapshot();
    assert_eq!(
        (s.malformed, s.connections, s.state),
        (4, 1, ListenerState::Listening)
    );
    assert!(!events.contains(&"bypass".to_string()));
}

async fn shutdown_stops_the_source_promptly(source: Source) {
    let db = TestDb::new().await;
    let mut l = start(
        source,
        db.url(),
        Duration::from_secs(1),
        Duration::from_secs(3),
    );
    l.until("coherent", 0, "coherent").await;
    l.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), &mut l.task)
        .await
        .expect("stopped within 2 s")
        .unwrap();
    assert_eq!(l.handler.events().last().unwrap(), "bypass");
    assert_eq!(l.status.snapshot().state, ListenerState::Stopped);
}

for_each_source!(
    direct:
    committed_changes_reach_the_handler_as_invalidations,
    a_terminated_backend_bypasses_at_once_and_recovers_with_a_flush,
    a_crashed_and_restarted_cluster_is_recovered_from,
    a_backend_that_stops_answering_bypasses_within_the_heartbeat_timeout,
    shutdown_stops_the_source_promptly,
);
