//! Fleets: a relay reads the database once (the WAL) and publishes to the machine's NATS
//! JetStream; instances follow it with `--source nats`. Each test has a stream and subject
//! prefix of its own on the shared NATS server (`NATS_URL`, default 127.0.0.1:4222).

use std::time::{Duration, Instant};

use nearcache_relay::Role;
use nearcache_server::SourceKind;
use nearcache_tests::app::{spawn_app_with, token, App};
use nearcache_tests::fleet::{nats_url, Channel, Relay};
use nearcache_tests::{wait_until, TestDb};
use serde_json::json;

use crate::support::{exec, seed, update};

/// How long a change may take to reach every instance here (slack for a loaded machine).
const BOUND: Duration = Duration::from_secs(5);

/// Settings of an instance following the relay of `channel`, probing every second.
pub(crate) fn following(s: &mut nearcache_server::Settings, channel: &Channel) {
    s.source = SourceKind::Nats;
    s.nats = nearcache_server::NatsSettings {
        url: nats_url(),
        stream: channel.stream.clone(),
        prefix: Some(channel.prefix.clone()),
        probe_interval: Duration::from_secs(1),
        probe_timeout: Duration::from_secs(2),
        max_lag: Duration::from_secs(1),
        security: nearcache_nats::NatsSecurity::default(),
    };
}

/// The value of an unlabelled metric.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

async fn instances(url: &str, channel: &Channel, n: usize) -> Vec<App> {
    let mut apps = Vec::new();
    for _ in 0..n {
        let app = spawn_app_with(url, |s| following(s, channel)).await;
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
        change: nearcache_nats::Change::Heartbeat {
            lag_micros: 0,
            queued_micros: None,
            every_micros: None,
            reads: None,
        },
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
}

/// Each instance proves the whole path: its own row of `nearcache_probe`, written through its
/// own pool, read back from the relay's stream, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_probe_the_path_through_the_relay() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let channel = Channel::new();
    let relay = Relay::start(db.url(), &channel, None);
    let apps = instances(db.url(), &channel, 2).await;
    for app in &apps {
        wait_until(BOUND, "two probes back", || async {
            metric(&app.metrics().await, "nearcache_source_probes_total") >= 2.0
        })
        .await;
        let text = app.metrics().await;
        assert!(metric(&text, "nearcache_source_probe_rtt_seconds") > 0.0);
        assert_eq!(metric(&text, "nearcache_source_probe_timeouts_total"), 0.0);
        // Probes are the source's own: not counted as changes of an uncached table.
        assert_eq!(metric(&text, "nearcache_source_ignored_total"), 0.0);
        // One consumer all along: nothing was replayed, nothing flushed.
        assert_eq!(metric(&text, "nearcache_source_replays_total"), 0.0);
        assert_eq!(metric(&text, "nearcache_source_gaps_total"), 0.0);
        assert_eq!(app.get("/healthz", None).await.1["cache"], "coherent");
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM nearcache_probe")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 2);
    relay.stop().await;
}

/// A relay reading another database than the one the instance writes to: its heartbeats say
/// all is well, but the instance's probe never comes back, so the instance bypasses and says
/// why instead of serving what no one invalidates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_whose_relay_reads_another_database_bypasses_and_says_why() {
    let db = TestDb::new().await;
    let other = TestDb::new().await;
    let channel = Channel::new();
    let relay = Relay::start(other.url(), &channel, None);
    let app = spawn_app_with(db.url(), |s| following(s, &channel)).await;
    wait_until(Duration::from_secs(10), "a probe timeout", || async {
        metric(
            &app.metrics().await,
            "nearcache_source_probe_timeouts_total",
        ) >= 1.0
    })
    .await;
    assert_eq!(
        metric(&app.metrics().await, "nearcache_source_probes_total"),
        0.0
    );
    wait_until(BOUND, "bypass, saying why", || async {
        let health = app.get("/healthz", None).await.1;
        health["cache"] == "bypass"
            && health["source_error"]
                .as_str()
                .is_some_and(|e| e.contains("probe did not come back"))
    })
    .await;
    relay.stop().await;
}

/// The relay checks what its source relies on for the tables it reads, but only an instance
/// knows which tables it caches: a cached table dropped from the relay's publication makes the
/// instance bypass within its check interval, saying why, and a repair makes it coherent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_whose_cached_table_leaves_the_publication_bypasses_and_says_why() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let channel = Channel::new();
    let relay = Relay::start(db.url(), &channel, None);
    let app = spawn_app_with(db.url(), |s| {
        following(s, &channel);
        s.check_interval = Duration::from_millis(300);
    })
    .await;
    app.ready("coherent").await;
    let t = token(users[0].id, json!({}));
    all_see(std::slice::from_ref(&app), &t, "User 0").await;
    let checks = metric(&app.metrics().await, "nearcache_source_rechecks_total");
    assert!(checks >= 1.0, "checked before becoming coherent");

    sqlx::query("ALTER PUBLICATION nearcache DROP TABLE users")
        .execute(&pool)
        .await
        .unwrap();
    wait_until(BOUND, "bypass, saying why", || async {
        let health = app.get("/healthz", None).await.1;
        health["cache"] == "bypass"
            && health["problem"]
                .as_str()
                .is_some_and(|p| p.contains("users is not in publication nearcache"))
    })
    .await;
    // Nobody hears about this change any more: it must not be hidden behind a cached entry.
    update(&pool, "users", users[0].id, "name = 'Unrelayed'").await;
    all_see(std::slice::from_ref(&app), &t, "Unrelayed").await;

    sqlx::query("SELECT nearcache_attach('users', 'id', '{last_seen_at}')")
        .execute(&pool)
        .await
        .unwrap();
    app.ready("coherent").await;
    assert!(app.get("/healthz", None).await.1["problem"].is_null());
    update(&pool, "users", users[0].id, "name = 'Relayed again'").await;
    all_see(std::slice::from_ref(&app), &t, "Relayed again").await;
    relay.stop().await;
}

/// Adds `n` users to `org` by one statement (a bulk that would take long row by row).
async fn bulk_users(pool: &sqlx::PgPool, org: impl std::fmt::Display, n: i32) {
    sqlx::query(
        "INSERT INTO users (id, org_id, email, name)
         SELECT gen_random_uuid(), $1::uuid, 'bulk' || i || '-' || gen_random_uuid() || '@acme.io', 'Bulk'
           FROM generate_series(1, $2) i",
    )
    .bind(org.to_string())
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// A commit of 900 rows is two messages (500 keys each at most), one of 9 000 a flush of the
/// table (past 1 000 keys, as the triggers do), published with their acknowledgements
/// pipelined, not a publication per row in series: the rename of one user committed right
/// after them reaches every instance behind the relay within the bound (it took 1.6–2.0 s
/// before).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bulk_update_does_not_hold_the_next_change_back() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (org, users) = seed(&pool, 1).await;
    bulk_users(&pool, org.id, 9_000).await;
    let channel = Channel::new();
    let relay = Relay::start(db.url(), &channel, None);
    let apps = instances(db.url(), &channel, 2).await;
    let t = token(users[0].id, json!({}));
    all_see(&apps, &t, "User 0").await;
    let published = relay.status.published();
    exec(
        &pool,
        "UPDATE users SET name = 'Bulk, some' WHERE id IN (SELECT id FROM users WHERE name = 'Bulk' LIMIT 900)",
    )
    .await;
    exec(
        &pool,
        "UPDATE users SET name = 'Bulk again' WHERE name LIKE 'Bulk%'",
    )
    .await;
    update(&pool, "users", users[0].id, "name = 'After the bulk'").await;
    let committed = Instant::now();
    for app in &apps {
        wait_until(BOUND, "the rename after the bulk", || async {
            app.get("/me", Some(&t)).await.1["user"]["name"] == "After the bulk"
        })
        .await;
    }
    let took = committed.elapsed();
    // Two messages, a flush, a heartbeat or two, the rename: a handful, not thousands.
    let messages = relay.status.published() - published;
    assert!(
        messages < 20,
        "{messages} messages for one bulk commit and one rename"
    );
    assert!(
        took < Duration::from_millis(1_000),
        "the rename reached every instance {took:?} after its commit"
    );
    for app in &apps {
        assert_eq!(app.get("/healthz", None).await.1["cache"], "coherent");
    }
    relay.stop().await;
}

/// A relay whose queue overflows drops nothing silently: it says it is in doubt, starts a new
/// epoch (instances flush) and nothing it dropped is served stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_whose_queue_overflows_starts_a_new_epoch_and_serves_nothing_stale() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (org, users) = seed(&pool, 2).await;
    bulk_users(&pool, org.id, 2_000).await;
    let channel = Channel::new();
    let relay = Relay::start_with(db.url(), &channel, |c| c.max_queued_keys = 1_000);
    let apps = instances(db.url(), &channel, 2).await;
    let t = token(users[0].id, json!({}));
    all_see(&apps, &t, "User 0").await;
    let epoch = relay.status.epoch();
    // One commit: 2 000 other rows and user 0, more keys than the queue holds.
    exec(
        &pool,
        &format!(
            "UPDATE users SET name = CASE WHEN id = '{}' THEN 'Dropped?' ELSE 'Bulk again' END
              WHERE name = 'Bulk' OR id = '{}'",
            users[0].id, users[0].id
        ),
    )
    .await;
    wait_until(BOUND, "an overflow", || async {
        relay.status.overflows() >= 1
    })
    .await;
    assert_ne!(relay.status.epoch(), epoch);
    all_see(&apps, &t, "Dropped?").await;
    for app in &apps {
        wait_until(BOUND, "coherent again", || async {
            app.get("/healthz", None).await.1["cache"] == "coherent"
        })
        .await;
        assert!(metric(&app.metrics().await, "nearcache_source_new_epochs_total") >= 1.0);
    }
    // And the new epoch carries changes as before.
    update(&pool, "users", users[0].id, "name = 'After the overflow'").await;
    all_see(&apps, &t, "After the overflow").await;
    relay.stop().await;
}

/// A relay whose publishing is slowed (a proxy holds NATS' answers back) falls behind a stream
/// of commits. Its heartbeats wait behind the backlog and say so, so the instances bypass
/// rather than serve, coherent, what the backlog holds; once it drains, they are coherent again
/// and serve the last write. (Before heartbeats queued behind changes, they overtook the
/// backlog and the instances stayed coherent through it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_bypass_while_their_relay_is_behind_a_backlog() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let channel = Channel::new();
    let proxy =
        nearcache_tests::fleet::Proxy::start(nats_url().trim_start_matches("nats://")).await;
    let relay = Relay::start_with(db.url(), &channel, |c| c.nats_url = proxy.nats_url());
    // No probe: its write would wait behind the backlog too and time out; this is about what
    // the heartbeats say.
    let app = spawn_app_with(db.url(), |s| {
        following(s, &channel);
        s.nats.probe_interval = Duration::ZERO;
    })
    .await;
    app.ready("coherent").await;
    let apps = [app];
    let app = &apps[0];
    let t = token(users[0].id, json!({}));
    all_see(&apps, &t, "User 0").await;

    proxy.delay_answers(Duration::from_millis(200));
    // Commits, one row each, faster than the slowed relay publishes them.
    let writing = {
        let (pool, id) = (pool.clone(), users[0].id);
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(3);
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                update(&pool, "users", id, &format!("name = 'Write {n}'")).await;
            }
            n
        })
    };
    let started = Instant::now();
    wait_until(BOUND, "bypass while the relay is behind", || async {
        app.get("/healthz", None).await.1["cache"] == "bypass"
    })
    .await;
    let took = started.elapsed();
    let writes = writing.await.unwrap();
    let text = app.metrics().await;
    assert!(
        metric(&text, "nearcache_source_lag_bypasses_total")
            + metric(&text, "nearcache_source_heartbeat_timeouts_total")
            >= 1.0,
        "bypassed for the relay's lag: {text}"
    );
    eprintln!("{writes} writes; bypass {took:?} after they began");
    proxy.delay_answers(Duration::ZERO);
    update(&pool, "users", users[0].id, "name = 'Last'").await;
    wait_until(
        Duration::from_secs(60),
        "coherent, serving the last write",
        || async {
            app.get("/healthz", None).await.1["cache"] == "coherent"
                && app.get("/me", Some(&t)).await.1["user"]["name"] == "Last"
        },
    )
    .await;
    relay.stop().await;
}

/// A database with one user, and a relay on it whose NATS connection goes through a proxy the
/// test can cut; `configure` changes the relay's configuration.
struct CutOff {
    db: TestDb,
    pool: sqlx::PgPool,
    users: Vec<nearcache_pg::User>,
    channel: Channel,
    proxy: nearcache_tests::fleet::Proxy,
    relay: Relay,
}

async fn relay_behind_a_proxy(configure: impl FnOnce(&mut nearcache_relay::RelayConfig)) -> CutOff {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let channel = Channel::new();
    let proxy =
        nearcache_tests::fleet::Proxy::start(nats_url().trim_start_matches("nats://")).await;
    let relay = Relay::start_with(db.url(), &channel, |c| {
        c.nats_url = proxy.nats_url();
        configure(c);
    });
    CutOff {
        db,
        pool,
        users,
        channel,
        proxy,
        relay,
    }
}

/// A relay cut off from NATS holds no more than its bound: past it, it drops what it holds,
/// says it is in doubt and starts a new epoch (again while the outage lasts), so its memory
/// does not grow with the writes. Once NATS is back, instances are coherent again and serve
/// what changed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_cut_off_from_nats_holds_no_more_than_its_bound() {
    let CutOff {
        db,
        pool,
        users,
        channel,
        proxy,
        relay,
    } = relay_behind_a_proxy(|c| c.max_queued_keys = 300).await;
    let apps = instances(db.url(), &channel, 1).await;
    let t = token(users[0].id, json!({}));
    all_see(&apps, &t, "User 0").await;

    proxy.down();
    let bound = 300;
    let mut most = 0;
    for n in 0..1_000 {
        update(&pool, "users", users[0].id, &format!("name = 'Write {n}'")).await;
        most = most.max(relay.status.queued());
    }
    let start = Instant::now();
    while relay.status.overflows() == 0 {
        most = most.max(relay.status.queued());
        assert!(
            start.elapsed() < BOUND,
            "no overflow while NATS is away: queued {}, published {}, errors {}",
            relay.status.queued(),
            relay.status.published(),
            relay.status.publish_errors()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(most <= bound, "{most} keys queued, the bound is {bound}");
    all_bypass(&apps, BOUND).await;

    proxy.up();
    update(&pool, "users", users[0].id, "name = 'Back'").await;
    wait_until(
        Duration::from_secs(60),
        "coherent, serving the last write",
        || async {
            apps[0].get("/healthz", None).await.1["cache"] == "coherent"
                && apps[0].get("/me", Some(&t)).await.1["user"]["name"] == "Back"
        },
    )
    .await;
    relay.stop().await;
}

/// A relay that loses its lease while cut off from NATS stands by, and its queue goes with its
/// epoch: `nearcache_relay_queued` says it holds nothing, not the count it last held (measured
/// by the outage bench before this: 200 000 keys said queued by a relay standing by).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_that_lost_its_lease_holds_no_queue() {
    // Every field bound: the database and the stream live until the test ends.
    let CutOff {
        db: _db,
        pool,
        users,
        channel: _channel,
        proxy,
        relay,
    } = relay_behind_a_proxy(|c| c.lease_ttl = Some(Duration::from_secs(2))).await;
    wait_until(BOUND, "the relay active", || async {
        relay.status.role() == Role::Active
    })
    .await;

    proxy.down();
    let mut most = 0;
    for n in 0..200 {
        update(&pool, "users", users[0].id, &format!("name = 'Write {n}'")).await;
        most = most.max(relay.status.queued());
    }
    assert!(most > 0, "changes queued while NATS is away");
    // A renewal waits for NATS' answer up to its timeout (5 s) before the lease counts as lost.
    wait_until(Duration::from_secs(30), "the relay standing by", || async {
        relay.status.role() != Role::Active
    })
    .await;
    wait_until(Duration::from_secs(10), "nothing said queued", || async {
        relay.status.queued() == 0
    })
    .await;
    proxy.up();
    relay.stop().await;
}

/// A relay whose source stops by itself (here it panics on a configuration that does not
/// validate) fails and says why, having said it is in doubt and let its lease go, so that a
/// supervisor restarts it; it does not stay active with nothing to publish, nor exit as if asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_whose_source_dies_fails_and_says_why() {
    let db = TestDb::new().await;
    let channel = Channel::new();
    let relay = Relay::start_with(db.url(), &channel, |c| {
        if let nearcache_relay::RelaySource::Wal(wal) = &mut c.source {
            wal.heartbeat_timeout = Duration::ZERO;
        }
    });
    let status = relay.status.clone();
    let error = relay
        .ended(BOUND)
        .await
        .expect_err("a relay whose source died fails");
    let text = format!("{error:#}");
    assert!(
        text.contains("source stopped") && text.contains("panicked"),
        "{text}"
    );
    assert_eq!(status.role(), Role::Stopped);
}

/// An instance whose relay's stream does not exist (no relay ever ran) bypasses and says so:
/// what it was doing, and NATS' own reason after it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_without_its_relays_stream_says_why_in_natss_words() {
    let db = TestDb::new().await;
    let channel = Channel::new();
    let app = spawn_app_with(db.url(), |s| following(s, &channel)).await;
    wait_until(BOUND, "the reason in /healthz", || async {
        let health = app.get("/healthz", None).await.1;
        health["cache"] == "bypass"
            && health["source_error"].as_str().is_some_and(|e| {
                e.contains("subscribing to the relay's stream")
                    && e.contains("is a relay running?): ")
                    && e.to_lowercase().contains("stream not found")
            })
    })
    .await;
}
