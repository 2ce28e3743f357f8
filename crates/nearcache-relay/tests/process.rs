//! The relay binary as a process, with an instance's cache following it through the machine's
//! NATS: stalled (SIGSTOP) and resumed, its Postgres backend terminated, killed (SIGKILL) and
//! started again. Each time the cache bypasses, then is coherent again.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nearcache::{Cache, CacheConfig, Mode, TableHandler};
use nearcache_nats::NatsConfig;
use nearcache_source::SourceStatus;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success());
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_relay(url: &str, stream: &str, prefix: &str, port: u16) -> Relay {
    Relay(
        Command::new(env!("CARGO_BIN_EXE_nearcache-relay"))
            .args(["--database-url", url, "--nats-url", &nats_url()])
            .args(["--nats-stream", stream, "--nats-prefix", prefix])
            .args([
                "--lease-ttl",
                "2s",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn fresh_database() -> (String, PgPool) {
    let server = std::env::var("DATABASE_URL").expect("cargo xtask test sets DATABASE_URL");
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&server)
        .await
        .unwrap();
    let name = format!("nc_relay_{}", std::process::id());
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&admin)
            .await
            .unwrap();
    }
    let url = format!("{}/{name}", server.rsplit_once('/').unwrap().0);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    nearcache_pg::MIGRATOR.run(&pool).await.unwrap();
    (url, pool)
}

async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_follows_a_relay_through_stall_kill_and_a_lost_backend() {
    let (url, pool) = fresh_database().await;
    let id = std::process::id();
    let (stream, prefix) = (format!("NC_PROC_{id}"), format!("ncproc.{id}"));
    let port = free_port();
    let mut relay = start_relay(&url, &stream, &prefix, port);

    let cache: Cache<u32, String> = Cache::new(CacheConfig {
        initial_mode: Mode::Bypass,
        ..CacheConfig::default()
    });
    let mut config = NatsConfig::new(nats_url(), "unused");
    config.stream = stream.clone();
    config.prefix = prefix.clone();
    let handler = Arc::new(TableHandler::new(cache.clone(), ["users"]));
    let status = SourceStatus::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let follower = tokio::spawn(nearcache_nats::run(
        config,
        handler,
        status.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    let coherent = || cache.mode() == Mode::Coherent;
    let bypass = || cache.mode() == Mode::Bypass;
    until(
        "the cache coherent behind the relay",
        Duration::from_secs(30),
        coherent,
    )
    .await;

    let health = reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("nearcache_relay_active 1"), "{metrics}");

    // Stalled: heartbeats stop; bypass within the timeout (3 s) plus a heartbeat interval.
    signal(&relay.0, "-STOP");
    let took = until(
        "bypass while the relay is stalled",
        Duration::from_secs(6),
        bypass,
    )
    .await;
    eprintln!("relay stalled: bypass after {took:?}");
    signal(&relay.0, "-CONT");
    until(
        "coherent once the relay resumes",
        Duration::from_secs(30),
        coherent,
    )
    .await;

    // The relay's Postgres backend terminated: its source says so, the cache bypasses, and
    // both are back once the relay's source has reconnected.
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE application_name = 'nearcache-wal' AND datname = current_database()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(terminated >= 1);
    until(
        "bypass after the relay's backend died",
        Duration::from_secs(5),
        bypass,
    )
    .await;
    until(
        "coherent after the relay reconnected",
        Duration::from_secs(30),
        coherent,
    )
    .await;

    // Killed: silence; started again: a new epoch, flushed, coherent.
    relay.0.kill().unwrap();
    relay.0.wait().unwrap();
    until(
        "bypass after the relay died",
        Duration::from_secs(6),
        bypass,
    )
    .await;
    let _relay = start_relay(&url, &stream, &prefix, free_port());
    let took = until(
        "coherent behind the new relay",
        Duration::from_secs(30),
        coherent,
    )
    .await;
    eprintln!("relay restarted: coherent after {took:?}");
    let snapshot = status.snapshot();
    assert!(
        snapshot.heartbeat_timeouts >= 2,
        "stall and kill were silences: {snapshot:?}"
    );

    let _ = stop.send(());
    follower.await.unwrap();
    let client = async_nats::connect(nats_url()).await.unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await;
}
