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
    let name = format!(
        "nc_relay_{}_{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
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
    // The sample, not the HELP line (which reads "nearcache_relay_active 1 while …").
    assert!(
        metrics.lines().any(|l| l == "nearcache_relay_active 1"),
        "{metrics}"
    );

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

async fn active(port: u16) -> bool {
    let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await else {
        return false;
    };
    response
        .text()
        .await
        .is_ok_and(|m| m.lines().any(|l| l == "nearcache_relay_active 1"))
}

async fn until_active(port: u16, limit: Duration) {
    let start = Instant::now();
    while !active(port).await {
        assert!(
            start.elapsed() < limit,
            "relay on {port} not active within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two relays whose leases overlap: the active one stalled (SIGSTOP) past its lease while the
/// standby took over, then resumed (SIGCONT). The stalled one knows its lease may have expired
/// and publishes nothing more: after the first message of the new epoch the stream holds none
/// of the old, so instances switch epochs once instead of flushing at every alternation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_stalled_past_its_lease_publishes_nothing_once_resumed() {
    use futures_util::StreamExt;
    let (url, _pool) = fresh_database().await;
    let id = std::process::id();
    let (stream, prefix) = (format!("NC_FENCE_{id}"), format!("ncfence.{id}"));
    let (port_a, port_b) = (free_port(), free_port());
    let a = start_relay(&url, &stream, &prefix, port_a);
    until_active(port_a, Duration::from_secs(30)).await;
    let _b = start_relay(&url, &stream, &prefix, port_b);

    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut messages = js
        .get_stream(&stream)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: format!("{prefix}.changes"),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap()
        .messages()
        .await
        .unwrap();

    signal(&a.0, "-STOP");
    until_active(port_b, Duration::from_secs(15)).await;
    signal(&a.0, "-CONT");
    // Long enough for the resumed relay's overdue timers, its renewal and its heartbeats.
    let mut epochs = Vec::new();
    let end = Instant::now() + Duration::from_secs(4);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(end.into(), messages.next()).await {
        let m = nearcache_nats::Message::parse(&m.payload).unwrap();
        if epochs.last() != Some(&m.epoch) {
            epochs.push(m.epoch);
        }
    }
    assert!(
        active(port_b).await,
        "the relay that took over is still active"
    );
    assert!(!active(port_a).await, "the resumed relay stands by");
    let health: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port_b}/healthz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new = health["epoch"].as_str().unwrap().to_string();
    // Whatever came before, the new epoch comes last and alone.
    assert_eq!(
        epochs.iter().position(|e| *e == new),
        Some(epochs.len() - 1),
        "epochs on the stream, in order of arrival (the new one is {new}): {epochs:?}"
    );
    let _ = js.delete_stream(&stream).await;
}

/// A network namespace of the test's own holding a NATS server, reached over a veth pair;
/// removed when dropped.
struct Partitionable {
    ns: String,
    host_if: String,
    nats: Option<Child>,
    store: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Partitionable {
    fn new() -> Self {
        let id = std::process::id() % 100_000;
        let (ns, host_if, peer_if) = (
            format!("ncpart{id}"),
            format!("ncvh{id}"),
            format!("ncvn{id}"),
        );
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        let store = format!("/tmp/ncpart-{id}");
        let mut me = Self {
            ns,
            host_if,
            nats: None,
            store,
        };
        ip(&["netns", "add", &me.ns]);
        ip(&[
            "link",
            "add",
            &me.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer_if,
        ]);
        ip(&["link", "set", &peer_if, "netns", &me.ns]);
        ip(&["addr", "add", "10.213.7.1/30", "dev", &me.host_if]);
        ip(&["link", "set", &me.host_if, "up"]);
        for args in [
            vec!["addr", "add", "10.213.7.2/30", "dev", peer_if.as_str()],
            vec!["link", "set", peer_if.as_str(), "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut full = vec!["netns", "exec", me.ns.as_str(), "ip"];
            full.extend(args);
            ip(&full);
        }
        let nats_server = [
            "/usr/sbin/nats-server",
            "/usr/bin/nats-server",
            "nats-server",
        ]
        .into_iter()
        .find(|p| !p.starts_with('/') || std::path::Path::new(p).exists())
        .unwrap();
        me.nats = Some(
            Command::new("ip")
                .args(["netns", "exec", &me.ns, nats_server])
                .args(["-a", "10.213.7.2", "-p", "4222", "-js", "-sd", &me.store])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        me
    }

    fn url(&self) -> String {
        "nats://10.213.7.2:4222".into()
    }

    /// Drops every packet on the link: TCP on both ends sees silence, not a refusal.
    fn cut(&self, down: bool) {
        ip(&[
            "link",
            "set",
            &self.host_if,
            if down { "down" } else { "up" },
        ]);
    }
}

impl Drop for Partitionable {
    fn drop(&mut self) {
        if let Some(mut nats) = self.nats.take() {
            let _ = nats.kill();
            let _ = nats.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

fn can_make_namespaces() -> Result<(), String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&root.stdout).trim() != "0" {
        return Err("not root".into());
    }
    Command::new("ip")
        .arg("-V")
        .output()
        .map_err(|e| format!("no iproute2: {e}"))?;
    let found = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .iter()
        .any(|p| std::path::Path::new(p).exists());
    if !found {
        return Err("no nats-server binary".into());
    }
    Ok(())
}

/// A partition, not a refused connection: the link to NATS goes silent. The cache bypasses
/// within the heartbeat timeout, and is coherent again once the link is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_from_nats_bypasses_within_the_timeout_and_heals() {
    if let Err(why) = can_make_namespaces() {
        eprintln!("skipped: the partition test needs root, iproute2 and nats-server ({why})");
        return;
    }
    let net = Partitionable::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect("10.213.7.2:4222")
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the namespace's NATS did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (url, _pool) = fresh_database().await;
    let mut relay_config = nearcache_relay::RelayConfig::new(
        nearcache_relay::RelaySource::Wal(nearcache_wal::WalConfig::new(&url).unwrap()),
        net.url(),
        "partition",
    );
    relay_config.lease_ttl = None;
    let (stop_relay, relay_stopped) = tokio::sync::oneshot::channel::<()>();
    let relay = tokio::spawn(nearcache_relay::run(
        relay_config,
        nearcache_relay::RelayStatus::default(),
        async {
            let _ = relay_stopped.await;
        },
    ));
    let cache: Cache<u32, String> = Cache::new(CacheConfig {
        initial_mode: Mode::Bypass,
        ..CacheConfig::default()
    });
    let config = NatsConfig::new(net.url(), "partition");
    let timeout = config.heartbeat_timeout;
    let handler = Arc::new(TableHandler::new(cache.clone(), ["users"]));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let follower = tokio::spawn(nearcache_nats::run(
        config,
        handler,
        SourceStatus::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let coherent = || cache.mode() == Mode::Coherent;
    let bypass = || cache.mode() == Mode::Bypass;
    until(
        "coherent behind the relay",
        Duration::from_secs(30),
        coherent,
    )
    .await;

    net.cut(true);
    let took = until(
        "bypass in the partition",
        timeout + Duration::from_secs(2),
        bypass,
    )
    .await;
    eprintln!("partition: bypass after {took:?} (heartbeat timeout {timeout:?})");
    net.cut(false);
    let took = until(
        "coherent after the partition healed",
        Duration::from_secs(60),
        coherent,
    )
    .await;
    eprintln!("partition healed: coherent after {took:?}");

    let _ = stop.send(());
    let _ = stop_relay.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), follower).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), relay).await;
}
