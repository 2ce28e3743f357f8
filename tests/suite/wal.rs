//! What only the WAL source does: ignored columns without triggers' help, writes the triggers
//! cannot see, columns added later, its slot's life, and a database not set up for it.

use std::time::Duration;

use nearcache_tests::{wait_until, PrivateCluster, TestDb};
use nearcache_wal::{Decodable, WalConfig};

use crate::listener::{start, start_wal};
use crate::support::{exec, seed, update, Source};

const HB: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn an_update_of_ignored_columns_only_evicts_nothing() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (org, users) = seed(&pool, 2).await;
    let l = start(Source::Wal, db.url(), HB, TIMEOUT);
    let ready = l.until("coherent", 0, "coherent").await;
    let u = users[0].id;
    let evicted = format!("users:{u}");
    // The first change of a row the source has not seen evicts it, and teaches its digest.
    update(&pool, "users", u, "name = 'Grace'").await;
    let first = l.until("the first eviction", ready, &evicted).await;
    // A login: only last_seen_at, which users ignore.
    update(&pool, "users", u, "last_seen_at = now()").await;
    // A change after it, on another table, is a sentinel: once it is seen, the login was too.
    update(&pool, "organizations", org.id, "name = 'Sentinel'").await;
    let sentinel = l
        .until("the sentinel", first, &format!("organizations:{}", org.id))
        .await;
    let events = l.handler.events();
    assert!(
        !events[first + 1..sentinel].contains(&evicted),
        "a last_seen_at-only update evicted the user: {events:?}"
    );
    // A watched column evicts again.
    update(&pool, "users", u, "email = 'new@example.com'").await;
    l.until("an eviction for a watched column", sentinel, &evicted)
        .await;
}

#[tokio::test]
async fn writes_the_triggers_cannot_see_are_evicted_too() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let l = start(Source::Wal, db.url(), HB, TIMEOUT);
    let ready = l.until("coherent", 0, "coherent").await;
    let u = users[0].id;
    // Under the replica role (pg_restore --disable-triggers, apply workers), with triggers
    // disabled outright.
    exec(
        &pool,
        "ALTER EVENT TRIGGER nearcache_reattach DISABLE;
         ALTER TABLE users DISABLE TRIGGER ALL;",
    )
    .await;
    exec(
        &pool,
        &format!(
            "BEGIN; SET LOCAL session_replication_role = replica;
             UPDATE users SET name = 'Replica' WHERE id = '{u}'; COMMIT;"
        ),
    )
    .await;
    let first = l
        .until("the replica-role write", ready, &format!("users:{u}"))
        .await;
    // A column added later, with nothing re-attached.
    exec(&pool, "ALTER TABLE users ADD COLUMN nickname text").await;
    update(&pool, "users", u, "nickname = 'ada'").await;
    l.until("the new column's change", first + 1, &format!("users:{u}"))
        .await;
}

#[tokio::test]
async fn a_stopped_source_leaves_no_slot() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let mut l = start(Source::Wal, db.url(), HB, TIMEOUT);
    l.until("coherent", 0, "coherent").await;
    let slots = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_replication_slots
              WHERE database = current_database() AND slot_name LIKE 'nearcache\\_%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(slots().await, 1, "one temporary slot while streaming");
    l.stop.take().unwrap().send(()).unwrap();
    (&mut l.task).await.unwrap();
    wait_until(Duration::from_secs(10), "the slot gone", || async {
        slots().await == 0
    })
    .await;
}

#[tokio::test]
async fn a_live_source_confirms_what_it_processed() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let l = start(Source::Wal, db.url(), HB, TIMEOUT);
    l.until("coherent", 0, "coherent").await;
    for n in 0..200 {
        update(&pool, "users", users[0].id, &format!("name = 'n{n}'")).await;
    }
    // The slot's confirmed position catches up with the WAL, so it holds nothing back.
    wait_until(Duration::from_secs(20), "the slot caught up", || async {
        let behind: i64 = sqlx::query_scalar(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 FROM pg_replication_slots
              WHERE database = current_database() AND slot_name LIKE 'nearcache\\_%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        behind < 64 * 1024
    })
    .await;
}

#[tokio::test]
async fn a_table_outside_the_publication_keeps_the_cache_in_bypass() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    exec(&pool, "ALTER PUBLICATION nearcache DROP TABLE users").await;
    let config = WalConfig::new(db.url())
        .unwrap()
        .with_tables(["users", "organizations"]);
    let l = start_wal(config);
    wait_until(Duration::from_secs(20), "the problem reported", || {
        std::future::ready(l.status.problem().is_some())
    })
    .await;
    let problem = l.status.problem().unwrap();
    assert!(problem.contains("users is not in publication"), "{problem}");
    assert!(!l.handler.events().contains(&"coherent".to_string()));
    exec(&pool, "ALTER PUBLICATION nearcache ADD TABLE users").await;
    l.until("coherent", 0, "coherent").await;
    assert_eq!(l.status.problem(), None);
}

#[tokio::test]
async fn a_two_phase_write_is_evicted_at_commit_prepared() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (org, users) = seed(&pool, 1).await;
    // WAL only: no trigger in the writer's path, so nothing refuses PREPARE.
    exec(
        &pool,
        "SELECT nearcache_attach('users', 'id', '{last_seen_at}', notify => false)",
    )
    .await;
    let l = start(Source::Wal, db.url(), HB, TIMEOUT);
    let ready = l.until("coherent", 0, "coherent").await;
    let u = users[0].id;
    let evicted = format!("users:{u}");
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; UPDATE users SET name = 'Prepared' WHERE id = '{u}';
         PREPARE TRANSACTION 'nearcache_2pc';"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    // A change committed after the PREPARE is a sentinel: once it is seen, a decoding of the
    // prepared transaction at PREPARE would have been seen too.
    update(&pool, "organizations", org.id, "name = 'Sentinel'").await;
    let sentinel = l
        .until("the sentinel", ready, &format!("organizations:{}", org.id))
        .await;
    assert!(
        !l.handler.events()[ready..sentinel].contains(&evicted),
        "the prepared write was decoded before COMMIT PREPARED"
    );
    sqlx::raw_sql("COMMIT PREPARED 'nearcache_2pc'")
        .execute(&mut *conn)
        .await
        .unwrap();
    l.until("the prepared write, at COMMIT PREPARED", sentinel, &evicted)
        .await;
}

#[tokio::test]
async fn a_statement_on_many_rows_becomes_a_table_flush() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    exec(
        &pool,
        "CREATE TABLE docs (k int PRIMARY KEY, v int NOT NULL);
         INSERT INTO docs SELECT g, 0 FROM generate_series(1, 100000) g;
         SELECT nearcache_attach('docs', 'k', notify => false);",
    )
    .await;
    let l = start(Source::Wal, db.url(), HB, TIMEOUT);
    let ready = l.until("coherent", 0, "coherent").await;
    exec(&pool, "UPDATE docs SET v = v + 1").await;
    l.until("the table flush", ready, "docs:*").await;
    let keys = l
        .handler
        .events()
        .iter()
        .filter(|e| e.starts_with("docs:") && *e != "docs:*")
        .count();
    assert_eq!(keys, 0, "100 000 rows are one flush, not 100 000 keys");
}

#[tokio::test]
async fn no_free_slot_keeps_the_cache_in_bypass_and_says_why() {
    let cluster = PrivateCluster::start();
    let db = TestDb::on(&cluster.url()).await;
    let pool = db.pool().await;
    // Every slot of the cluster taken (it has 100).
    exec(
        &pool,
        "SELECT pg_create_logical_replication_slot('filler_' || g, 'pgoutput')
           FROM generate_series(1, 100) g",
    )
    .await;
    let l = start(Source::Wal, db.url(), HB, TIMEOUT);
    wait_until(Duration::from_secs(20), "the problem reported", || {
        std::future::ready(l.status.problem().is_some())
    })
    .await;
    let problem = l.status.problem().unwrap();
    assert!(
        problem.contains("cannot create a replication slot"),
        "{problem}"
    );
    assert!(!l.handler.events().contains(&"coherent".to_string()));
    // A slot freed: the next attempt streams.
    exec(&pool, "SELECT pg_drop_replication_slot('filler_1')").await;
    l.until("coherent", 0, "coherent").await;
    assert_eq!(l.status.problem(), None);
    exec(
        &pool,
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
          WHERE slot_name LIKE 'filler\\_%'",
    )
    .await;
    l.stop().await;
}

/// `WalConfig::decodable`, what `--source auto` and the example ask before they choose: yes for
/// a role that may replicate on a logical cluster, no with the fix for one that may not, and an
/// error (ask again later) for a database that does not answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decodable_says_whether_the_wal_can_be_used_and_why_not() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let asked = WalConfig::new(db.url()).unwrap().decodable().await.unwrap();
    assert_eq!(asked, Decodable::Yes);

    let role = format!("reader_{}", std::process::id());
    exec(&pool, &format!("DROP ROLE IF EXISTS {role}")).await;
    exec(&pool, &format!("CREATE ROLE {role} LOGIN NOREPLICATION")).await;
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    let as_reader = db
        .url()
        .replacen(&format!("{user}@"), &format!("{role}@"), 1);
    assert_ne!(as_reader, db.url());
    let asked = WalConfig::new(&as_reader)
        .unwrap()
        .decodable()
        .await
        .unwrap();
    assert!(
        matches!(&asked, Decodable::No(why) if why.contains("REPLICATION")),
        "{asked:?}"
    );
    exec(&pool, &format!("DROP ROLE {role}")).await;

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let nobody = WalConfig::new(&format!(
        "postgres://x@127.0.0.1:{port}/x?connect_timeout=2"
    ));
    let err = nobody.unwrap().decodable().await.unwrap_err();
    assert!(err.to_string().contains("cannot ask the database"), "{err}");
}

/// `read_pause`: a commit that arrives within the pause after a read waits for the pause to
/// end, never less, and never more than a pause after it arrives. (That a commit after a quiet
/// pause is read at once cannot be asserted here: after each commit the server pings, the
/// source answers with its next status update and other databases' WAL moves the server on,
/// so the stream is never quiet for long. The writes and latency benches show it.)
#[tokio::test]
async fn a_commit_waits_for_the_read_pause_and_no_longer() {
    const PAUSE: Duration = Duration::from_secs(1);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 3).await;
    let mut config = WalConfig::new(db.url()).unwrap();
    // No heartbeat after the first.
    config.heartbeat_interval = Duration::from_secs(600);
    config.heartbeat_timeout = Duration::from_secs(30);
    config.read_pause = PAUSE;
    let l = start_wal(config);
    let ready = l.until("coherent", 0, "coherent").await;
    update(&pool, "users", users[0].id, "name = 'First'").await;
    let first = l
        .until("the first", ready, &format!("users:{}", users[0].id))
        .await;
    let first_seen = std::time::Instant::now();
    update(&pool, "users", users[1].id, "name = 'Second'").await;
    let second = format!("users:{}", users[1].id);
    // The first was read before it was seen; the second can be read no sooner than a pause
    // after that read.
    tokio::time::sleep_until((first_seen + PAUSE / 2).into()).await;
    assert!(
        l.handler.position_after(first, &second).is_none(),
        "read within the pause"
    );
    let second = l
        .until("the second, once the pause ended", first, &second)
        .await;
    let sent = std::time::Instant::now();
    update(&pool, "users", users[2].id, "name = 'Third'").await;
    l.until("the third", second, &format!("users:{}", users[2].id))
        .await;
    assert!(
        sent.elapsed() < PAUSE + PAUSE / 2,
        "the third waited {:?}, more than a pause",
        sent.elapsed()
    );
}
