//! What a source relies on is checked again while it runs, not only when it connects: a table
//! dropped from the publication or a trigger dropped bypasses with the reason; a table attached
//! again with fewer ignored columns is flushed (its newly watched columns' earlier changes were
//! never delivered).

use std::time::Duration;

use nearcache_listener::ListenerConfig;
use nearcache_tests::{wait_until, TestDb};
use nearcache_wal::WalConfig;

use crate::listener::{start_wal, start_with, Running};
use crate::support::{exec, Source};

const CHECK: Duration = Duration::from_millis(300);
const TABLES: [&str; 2] = ["users", "organizations"];

fn start(source: Source, url: &str) -> Running {
    match source {
        Source::Notify => {
            let mut config = ListenerConfig::new(url).unwrap().with_tables(TABLES);
            config.check_interval = CHECK;
            start_with(config)
        }
        Source::Wal => {
            let mut config = WalConfig::new(url).unwrap().with_tables(TABLES);
            config.check_interval = CHECK;
            start_wal(config)
        }
        Source::Nats => unreachable!("instances behind a relay are tested in relay.rs"),
    }
}

/// Breaks what `source` relies on, for a cached table.
fn breakage(source: Source) -> &'static str {
    match source {
        Source::Notify => "DROP TRIGGER nearcache_send_update ON users",
        Source::Wal => "ALTER PUBLICATION nearcache DROP TABLE users",
        Source::Nats => unreachable!(),
    }
}

async fn a_broken_installation_bypasses_within_the_check_interval(source: Source) {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let l = start(source, db.url());
    let ready = l.until("coherent", 0, "coherent").await;
    exec(&pool, breakage(source)).await;
    l.until("bypass after the check", ready, "bypass").await;
    wait_until(Duration::from_secs(5), "the problem reported", || {
        std::future::ready(l.status.problem().is_some_and(|p| p.contains("users")))
    })
    .await;
    assert!(l.status.snapshot().rechecks >= 1);
    // Repaired, the next connection's check passes.
    exec(
        &pool,
        "SELECT nearcache_attach('users', 'id', '{last_seen_at}')",
    )
    .await;
    l.until("coherent again", ready + 1, "coherent").await;
    assert_eq!(l.status.problem(), None);
    l.stop().await;
}

async fn a_table_attached_again_is_flushed(source: Source) {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let l = start(source, db.url());
    let ready = l.until("coherent", 0, "coherent").await;
    // last_seen_at is served from now on: what is cached never heard of its changes.
    exec(&pool, "SELECT nearcache_attach('users', 'id')").await;
    l.until("the table flushed", ready, "users:*").await;
    assert!(
        !l.handler.events()[ready..].contains(&"bypass".to_string()),
        "{source:?}: a re-attach is no reason to bypass"
    );
    l.stop().await;
}

for_each_source!(direct:
    a_broken_installation_bypasses_within_the_check_interval,
    a_table_attached_again_is_flushed,
);
