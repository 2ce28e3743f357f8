//! Fleets: a relay reads the database once (the WAL) and publishes to the machine's NATS
//! JetStream; instances follow it with `--source nats`. Each test has a stream and subject
//! prefix of its own on the shared NATS server (`NATS_URL`, default 127.0.0.1:4222).

use std::time::{Duration, Instant};

use nearcache_relay::{RelayConfig, RelaySource, RelayStatus, Role};
use nearcache_server::SourceKind;
use nearcache_tests::app::{spawn_app_with, token, App};
use nearcache_tests::{wait_until, TestDb};
use nearcache_wal::WalConfig;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::support::{seed, update};

/// How long a change may take to reach every instance here (slack for a loaded machine).
const BOUND: Duration = Duration::from_secs(5);

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A stream and prefix of the test's own.
struct Channel {
    stream: String,
    prefix: String,
}

impl Channel {
    fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            stream: format!("NC_TEST_{id}"),
            prefix: format!("nctest.{id}"),
        }
    }
}

/// A relay running in-process, as the binary runs it.
struct Relay {
    status: RelayStatus,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Relay {
    fn start(url: &str, channel: &Channel, lease: Option<Duration>) -> Self {
        let wal = WalConfig::new(url).unwrap();
        let mut config = RelayConfig::new(RelaySource::Wal(wal), nats_url(), "unused");
        config.stream = channel.stream.clone();
        config.prefix = channel.prefix.clone();
        config.lease_ttl = lease;
        config.lease_bucket = "nearcache_relays_test".into();
        let status = RelayStatus::default();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(nearcache_relay::run(config, status.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            status,
            stop: Some(stop),
            task,
        }
    }

    /// A graceful stop: the relay tells the instances it is in doubt, and lets its lease go.
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the relay stops")
            .unwrap();
    }

    /// Gone at once, as with SIGKILL: no goodbye, the lease left to expire.
    fn kill(self) {
        self.task.abort();
    }
}

async fn instances(url: &str, channel: &Channel, n: usize) -> Vec<App> {
    let mut apps = Vec::new();
    for _ in 0..n {
        let app = spawn_app_with(url, |s| {
            s.source = SourceKind::Nats;
            s.nats = nearcache_server::NatsSettings {
                url: nats_url(),
                stream: channel.stream.clone(),
                prefix: Some(channel.prefix.clone()),
            };
        })
        .await;
        app.ready("coherent").await;
        apps.push(app);
    }
    apps
}

async fn all_see(apps: &[App], t: &str, name: &str) {
    for app in apps {
        wait_until(BOUND, &format!("{} to serve {name}", app.addr), || async {
            app.get("/me", Some(t)).await.1["user"]["name"] == name
        })
        .await;
    }
}

async fn all_bypass(apps: &[App], within: Duration) {
    for app in apps {
        wait_until(within, &format!("{} to bypass", app.addr), || async {
            app.get("/healthz", None).await.1["cache"] == "bypass"
        })
        .await;
    }
}

/// The relay's messages from now on, as an instance's consumer gets them.
async fn follow_raw(channel: &Channel) -> async_nats::jetstream::consumer::push::Ordered {
    use async_nats::jetstream::consumer::{push::OrderedConfig, DeliverPolicy};
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(&channel.stream).await.unwrap();
    stream
        .create_consumer(OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: format!("{}.changes", channel.prefix),
            deliver_policy: DeliverPolicy::New,
            ..OrderedConfig::default()
        })
        .await
        .unwrap()
        .messages()
        .await
        .unwrap()
}

async fn delete_stream(channel: &Channel) {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&channel.stream)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_behind_a_relay_see_every_change() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 2).await;
    let channel = Channel::new();
    let relay = Relay::start(db.url(), &channel, None);
    let apps = instances(db.url(), &channel, 3).await;
    let t = token(users[0].id, json!({}));
    for app in &apps {
        assert_eq!(app.get("/me", Some(&t)).await.0, 200);
    }
    let mut raw = follow_raw(&channel).await;
    update(&pool, "users", users[0].id, "name = 'Via SQL'").await;
    all_see(&apps, &t, "Via SQL").await;
    // The message carries the commit position the change came from.
    let keys = loop {
        let next = tokio::time::timeout(BOUND, futures_util::StreamExt::next(&mut raw))
            .await
            .expect("the change on the stream")
            .unwrap()
            .unwrap();
        let m = nearcache_nats::Message::parse(&next.payload).unwrap();
        if matches!(&m.change, nearcache_nats::Change::Keys { table, .. } if table == "users") {
            break m;
        }
    };
    let lsn = keys.lsn.expect("an LSN on a change from the WAL");
    assert!(lsn.contains('/'), "{lsn}");
    let (status, _) = apps[0].patch_me(&t, &json!({"name": "Via A"})).await;
    assert_eq!(status, 200);
    all_see(&apps, &t, "Via A").await;
    // One connection to Postgres for invalidation, however many instances.
    let streaming: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND backend_type = 'walsender'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(streaming, 1);
    assert_eq!(relay.status.role(), Role::Active);
    relay.stop().await;
    delete_stream(&channel).await;
}

/// A relay that stops says so: the instances bypass at once; a new relay is a new epoch, and
/// what changed in between is not served stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_restart_is_a_new_epoch_and_nothing_changed_meanwhile_is_served() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let channel = Channel::new();
    let relay = Relay::start(db.url(), &channel, None);
    let apps = instances(db.url(), &channel, 2).await;
    let t = token(users[0].id, json!({}));
    all_see(&apps, &t, "User 0").await;
    let first = relay.status.epoch();
    relay.stop().await;
    all_bypass(&apps, Duration::from_secs(1)).await;
    // Committed while nobody relays.
    update(&pool, "users", users[0].id, "name = 'Meanwhile'").await;
    let relay = Relay::start(db.url(), &channel, None);
    for app in &apps {
        app.ready("coherent").await;
    }
    assert_ne!(relay.status.epoch(), first);
    all_see(&apps, &t, "Meanwhile").await;
    relay.stop().await;
    delete_stream(&channel).await;
}

/// Two relays with a lease: one publishes. The active one dies without a word: the instances
/// bypass within the heartbeat timeout, the standby takes over within the lease's time to
/// live, and the instances are coherent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_relay_takes_over_when_the_active_one_dies() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let channel = Channel::new();
    let lease = Some(Duration::from_secs(3));
    let a = Relay::start(db.url(), &channel, lease);
    wait_until(Duration::from_secs(10), "relay a active", || {
        std::future::ready(a.status.role() == Role::Active)
    })
    .await;
    let b = Relay::start(db.url(), &channel, lease);
    wait_until(Duration::from_secs(10), "relay b standing by", || {
        std::future::ready(b.status.role() == Role::Standby)
    })
    .await;
    let apps = instances(db.url(), &channel, 2).await;
    let t = token(users[0].id, json!({}));
    all_see(&apps, &t, "User 0").await;

    let killed = Instant::now();
    a.kill();
    all_bypass(&apps, Duration::from_secs(5)).await;
    let bypassed = killed.elapsed();
    for app in &apps {
        app.ready("coherent").await;
    }
    let back = killed.elapsed();
    assert_eq!(b.status.role(), Role::Active);
    eprintln!("failover: instances bypassed {bypassed:?} and were coherent again {back:?} after the active relay died");
    assert!(back < Duration::from_secs(15), "{back:?}");
    update(&pool, "users", users[0].id, "name = 'After failover'").await;
    all_see(&apps, &t, "After failover").await;
    b.stop().await;
    delete_stream(&channel).await;
}

/// A message lost beyond what the stream can replay (here: a sequence that jumps) makes the
/// instances flush, and they go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gap_in_the_relays_sequence_flushes() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let channel = Channel::new();
    let relay = Relay::start(db.url(), &channel, None);
    let apps = instances(db.url(), &channel, 1).await;
    let t = token(users[0].id, json!({}));
    all_see(&apps, &t, "User 0").await;
    let cached = apps[0].metrics().await;
    assert!(cached.contains("nearcache_cache_entries 1"), "{cached}");

    // A message from the relay's epoch, far ahead of its sequence.
    let forged = nearcache_nats::Message {
        epoch: relay.status.epoch(),
        seq: 1_000_000,
        coherent: true,
        lsn: None,
        change: nearcache_nats::Change::Heartbeat { lag_micros: 0 },
    };
    let client = async_nats::connect(nats_url()).await.unwrap();
    async_nats::jetstream::new(client)
        .publish(
            format!("{}.changes", channel.prefix),
            forged.to_bytes().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    wait_until(BOUND, "the gap to be counted", || async {
        apps[0]
            .metrics()
            .await
            .contains("nearcache_source_gaps_total 1")
    })
    .await;
    assert!(apps[0]
        .metrics()
        .await
        .contains("nearcache_cache_entries 0"));
    relay.stop().await;
    delete_stream(&channel).await;
}
