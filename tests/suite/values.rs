//! What a change is, on every direct source: a row is named by the key column it was attached
//! with (not the replica identity), a change is a change of the stored value (not of the
//! type's equality), and a table without a key evicts its changed rows one by one.

use std::time::Duration;

use nearcache_tests::{wait_until, TestDb};
use nearcache_wal::WalConfig;

use crate::listener::{start, start_wal, Running};
use crate::support::{exec, Source};

const HB: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(3);

impl Running {
    /// Runs `sql`, then a sentinel change of `sentinel` (an `organizations` id), and returns the
    /// events the source delivered in between: everything the statement caused.
    async fn between(
        &self,
        pool: &sqlx::PgPool,
        from: usize,
        sql: &str,
        sentinel: &str,
    ) -> (Vec<String>, usize) {
        exec(pool, sql).await;
        exec(
            pool,
            &format!("UPDATE organizations SET name = name || '.' WHERE id = '{sentinel}'"),
        )
        .await;
        let at = self
            .until(sql, from, &format!("organizations:{sentinel}"))
            .await;
        (self.handler.events()[from..at].to_vec(), at + 1)
    }
}

/// A database with an organization (the sentinel's row) and `ddl` run; the source started on it.
async fn setup(source: Source, ddl: &str) -> (TestDb, sqlx::PgPool, Running, String, usize) {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let org: (uuid::Uuid,) = sqlx::query_as(
        "INSERT INTO organizations (name, plan) VALUES ('Sentinel', 'free') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    exec(&pool, ddl).await;
    let l = start(source, db.url(), HB, TIMEOUT);
    let ready = l.until("coherent", 0, "coherent").await;
    (db, pool, l, org.0.to_string(), ready + 1)
}

async fn rows_are_named_by_the_attached_key(source: Source) {
    let (_db, pool, l, s, mut at) = setup(
        source,
        "CREATE TABLE products (id bigserial PRIMARY KEY, sku text NOT NULL UNIQUE, name text);
         SELECT nearcache_attach('products', 'sku');",
    )
    .await;
    let steps: [(&str, &[&str]); 4] = [
        (
            "INSERT INTO products (sku, name) VALUES ('A-1', 'Lamp')",
            &["products:A-1"],
        ),
        (
            "UPDATE products SET name = 'Desk lamp' WHERE sku = 'A-1'",
            &["products:A-1"],
        ),
        (
            "UPDATE products SET sku = 'B-2' WHERE sku = 'A-1'",
            &["products:A-1", "products:B-2"],
        ),
        ("DELETE FROM products WHERE sku = 'B-2'", &["products:B-2"]),
    ];
    for (sql, expected) in steps {
        let (events, next) = l.between(&pool, at, sql, &s).await;
        at = next;
        let mut got: Vec<&str> = events.iter().map(String::as_str).collect();
        got.sort_unstable();
        assert_eq!(got, expected, "{source:?}: {sql}");
    }
    l.stop().await;
}

async fn a_change_is_a_change_of_the_stored_value(source: Source) {
    let (_db, pool, l, s, mut at) = setup(
        source,
        "CREATE EXTENSION IF NOT EXISTS citext;
         CREATE TABLE accounts (id int PRIMARY KEY, email citext NOT NULL, balance numeric,
                                prefs json, name text, note text);
         -- Fires after nearcache's BEFORE triggers would have (name order), and rewrites a
         -- watched column when only an ignored one was set.
         CREATE FUNCTION rewrite_name() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.note = 'rewrite' THEN NEW.name := NEW.name || ' (rewritten)'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER zz_rewrite_name BEFORE UPDATE ON accounts
             FOR EACH ROW EXECUTE FUNCTION rewrite_name();
         INSERT INTO accounts VALUES (1, 'Bob@example.com', 1.50, '{\"a\": 1}', 'Bob', '');
         SELECT nearcache_attach('accounts', 'id', '{note}');",
    )
    .await;
    // The WAL source learns a row's watched values from its first change.
    let (_, next) = l
        .between(
            &pool,
            at,
            "UPDATE accounts SET name = 'Bob' || '' WHERE id = 1",
            &s,
        )
        .await;
    at = next;
    for sql in [
        "UPDATE accounts SET email = 'bob@example.com' WHERE id = 1",
        "UPDATE accounts SET balance = 1.500 WHERE id = 1",
        "UPDATE accounts SET prefs = '{\"a\":1}' WHERE id = 1",
        "UPDATE accounts SET note = 'rewrite' WHERE id = 1",
    ] {
        let (events, next) = l.between(&pool, at, sql, &s).await;
        at = next;
        assert_eq!(events, ["accounts:1"], "{source:?}: {sql}");
    }
    // An ignored column alone still evicts nothing.
    let (events, _) = l
        .between(
            &pool,
            at,
            "UPDATE accounts SET note = 'plain' WHERE id = 1",
            &s,
        )
        .await;
    assert_eq!(events, Vec::<String>::new(), "{source:?}");
    l.stop().await;
}

async fn a_table_without_a_key_evicts_changed_rows_by_key(source: Source) {
    let (_db, pool, l, s, at) = setup(
        source,
        "CREATE TABLE labels (name text NOT NULL, colour text);
         SELECT nearcache_attach('labels', 'name');
         INSERT INTO labels SELECT 'l' || i, 'red' FROM generate_series(1, 100) AS i;",
    )
    .await;
    let identity: String =
        sqlx::query_scalar("SELECT relreplident::text FROM pg_class WHERE relname = 'labels'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(identity, "f", "no key to use: FULL");
    let (events, at) = l
        .between(
            &pool,
            at,
            "UPDATE labels SET colour = 'blue' WHERE name = 'l7'",
            &s,
        )
        .await;
    assert_eq!(events, ["labels:l7"], "{source:?}");
    let (events, _) = l
        .between(&pool, at, "DELETE FROM labels WHERE name = 'l8'", &s)
        .await;
    assert_eq!(events, ["labels:l8"], "{source:?}");
    l.stop().await;
}

/// Found by the property test (seed 10414604505050310669): a row whose key changed kept no
/// digest in the WAL source when a TOASTed watched value came unchanged, so its next change of
/// ignored columns alone evicted it.
async fn a_row_whose_key_changed_still_tells_ignored_changes_apart(source: Source) {
    let (_db, pool, l, s, at) = setup(
        source,
        "CREATE TABLE docs (k text PRIMARY KEY, body text, seen int);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
         SELECT nearcache_attach('docs', 'k', '{seen}');",
    )
    .await;
    let (_, at) = l
        .between(
            &pool,
            at,
            "INSERT INTO docs VALUES ('a', repeat(md5('x'), 100), 0)",
            &s,
        )
        .await;
    let (events, at) = l
        .between(&pool, at, "UPDATE docs SET k = 'b' WHERE k = 'a'", &s)
        .await;
    assert_eq!(events, ["docs:a", "docs:b"], "{source:?}");
    let (events, _) = l
        .between(&pool, at, "UPDATE docs SET seen = 1 WHERE k = 'b'", &s)
        .await;
    assert_eq!(events, Vec::<String>::new(), "{source:?}");
    l.stop().await;
}

/// An UPDATE of a row whose key is stored out of line (TOASTed) carries the old key (pgoutput's
/// `K`) though the key did not change, every other column null there rather than its old value:
/// a watched column set to NULL must still count as a change (#29).
async fn a_watched_column_set_to_null_beside_a_toasted_key_is_a_change(source: Source) {
    let (_db, pool, l, s, at) = setup(
        source,
        "CREATE TABLE docs (k text PRIMARY KEY, body text, seen int);
         ALTER TABLE docs ALTER COLUMN k SET STORAGE EXTERNAL;
         SELECT nearcache_attach('docs', 'k', '{seen}');",
    )
    .await;
    let key = format!("docs:{}", "k".repeat(2100));
    let (events, at) = l
        .between(
            &pool,
            at,
            "INSERT INTO docs VALUES (repeat('k', 2100), 'text', 0)",
            &s,
        )
        .await;
    assert_eq!(events, std::slice::from_ref(&key), "{source:?}");
    let (events, _) = l
        .between(
            &pool,
            at,
            "UPDATE docs SET body = NULL WHERE k = repeat('k', 2100)",
            &s,
        )
        .await;
    assert_eq!(events, [key], "{source:?}");
    l.stop().await;
}

for_each_source!(direct:
    a_watched_column_set_to_null_beside_a_toasted_key_is_a_change,
    a_row_whose_key_changed_still_tells_ignored_changes_apart,
    rows_are_named_by_the_attached_key,
    a_change_is_a_change_of_the_stored_value,
    a_table_without_a_key_evicts_changed_rows_by_key,
);

#[tokio::test]
async fn a_replica_identity_without_the_key_keeps_the_wal_source_in_bypass_and_says_how_to_fix_it()
{
    let db = TestDb::new().await;
    let pool = db.pool().await;
    // Keyed by a column with no unique index: attach cannot make it the identity.
    exec(
        &pool,
        "CREATE TABLE parts (id int PRIMARY KEY, code text NOT NULL);
         SELECT nearcache_attach('parts', 'code');",
    )
    .await;
    let l = start_wal(WalConfig::new(db.url()).unwrap().with_tables(["parts"]));
    wait_until(Duration::from_secs(20), "the problem reported", || {
        std::future::ready(l.status.problem().is_some())
    })
    .await;
    let problem = l.status.problem().unwrap();
    assert!(
        problem.contains("parts") && problem.contains("REPLICA IDENTITY"),
        "{problem}"
    );
    assert!(!l.handler.events().contains(&"coherent".to_string()));
    exec(&pool, "ALTER TABLE parts REPLICA IDENTITY FULL").await;
    l.until("coherent once the identity carries the key", 0, "coherent")
        .await;
    assert_eq!(l.status.problem(), None);
    l.stop().await;
}
