//! The notification triggers, against a real Postgres: each kind of write is observed by a
//! second connection that LISTENs, which must receive exactly the expected payloads.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use sqlx::postgres::PgListener;
use sqlx::PgPool;

/// Listens on the default channel; `drain` returns everything received before a sentinel.
struct Probe {
    listener: PgListener,
}

impl Probe {
    async fn new(pool: &PgPool) -> Self {
        let mut listener = PgListener::connect_with(pool).await.unwrap();
        listener.listen("nearcache").await.unwrap();
        Self { listener }
    }

    /// Every payload committed before this call, in commit order. A sentinel sent after the
    /// writes arrives after all of their notifications, so no timing is involved.
    async fn drain(&mut self, pool: &PgPool) -> Vec<Value> {
        sqlx::query("SELECT pg_notify('nearcache', 'sentinel')")
            .execute(pool)
            .await
            .unwrap();
        let mut got = Vec::new();
        loop {
            let n = self.listener.recv().await.unwrap();
            if n.payload() == "sentinel" {
                return got;
            }
            assert!(
                n.payload().len() < 8000,
                "payload too long: {}",
                n.payload().len()
            );
            got.push(serde_json::from_str(n.payload()).unwrap());
        }
    }
}

/// Runs one statement with text parameters.
async fn run(pool: &PgPool, sql: &str, params: &[&str]) {
    params
        .iter()
        .fold(sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())), |q, p| {
            q.bind(*p)
        })
        .execute(pool)
        .await
        .unwrap();
}

/// Runs `setup` (what a writer may do in its own session), then `sql` with `key` bound, in one
/// transaction that commits.
async fn in_session(pool: &PgPool, setup: &str, sql: &str, key: &str) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(setup.to_owned()))
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(key)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn org(pool: &PgPool) -> String {
    sqlx::query_scalar("INSERT INTO organizations (name) VALUES ('acme') RETURNING id::text")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn user(pool: &PgPool, org: &str, email: &str) -> String {
    sqlx::query_scalar(
        "INSERT INTO users (org_id, email, name) VALUES ($1::uuid, $2, 'Ada') RETURNING id::text",
    )
    .bind(org)
    .bind(email)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn inserts_notify_with_the_new_key(pool: PgPool) {
    let mut probe = Probe::new(&pool).await;
    let o = org(&pool).await;
    let u = user(&pool, &o, "a@x.io").await;
    assert_eq!(
        probe.drain(&pool).await,
        vec![
            json!({"v": 1, "table": "organizations", "op": "insert", "keys": [o]}),
            json!({"v": 1, "table": "users", "op": "insert", "keys": [u]}),
        ]
    );
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn one_user_updated_notifies_its_key(pool: PgPool) {
    let o = org(&pool).await;
    let u = user(&pool, &o, "a@x.io").await;
    let mut probe = Probe::new(&pool).await;
    run(
        &pool,
        "UPDATE users SET name = 'Grace' WHERE id = $1::uuid",
        &[&u],
    )
    .await;
    assert_eq!(
        probe.drain(&pool).await,
        vec![json!({"v": 1, "table": "users", "op": "update", "keys": [u]})]
    );
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn last_seen_only_and_no_op_updates_send_nothing(pool: PgPool) {
    let o = org(&pool).await;
    let u = user(&pool, &o, "a@x.io").await;
    let mut probe = Probe::new(&pool).await;
    for sql in [
        "UPDATE users SET last_seen_at = now() WHERE id = $1::uuid",
        "UPDATE users SET name = name, email = email WHERE id = $1::uuid",
        "UPDATE users SET active = true WHERE id = $1::uuid",
    ] {
        sqlx::query(sql).bind(&u).execute(&pool).await.unwrap();
    }
    assert_eq!(probe.drain(&pool).await, Vec::<Value>::new());
    // And updated_at was left alone by the login, so cached copies stay exact.
    let touched: bool =
        sqlx::query_scalar("SELECT updated_at = created_at FROM users WHERE id = $1::uuid")
            .bind(&u)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(touched);
}

/// Calls of each nearcache_* function in the current transaction.
async fn calls(tx: &mut sqlx::PgConnection) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT CASE WHEN proname LIKE 'nearcache_collect_%' THEN 'nearcache_collect' ELSE proname::text END AS f,
                sum(coalesce(pg_stat_get_xact_function_calls(oid), 0))::int8
           FROM pg_proc
          WHERE proname LIKE 'nearcache_collect_%'
             OR proname IN ('nearcache_send', 'nearcache_touch_updated_at')
          GROUP BY f ORDER BY f",
    )
    .fetch_all(tx)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn ignored_and_no_op_updates_call_no_trigger_function(pool: PgPool) {
    let o = org(&pool).await;
    users(&pool, &o, 100).await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL track_functions = 'all'")
        .execute(&mut *tx)
        .await
        .unwrap();
    for sql in [
        "UPDATE users SET last_seen_at = now()",
        "UPDATE users SET name = name, active = active",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    // The WHEN clauses filtered every row: not one call per row. The statement trigger runs
    // once per statement (its WHEN would be evaluated before the AFTER ROW triggers collect)
    // and returns at once.
    let some: Vec<(String, i64)> = calls(&mut tx)
        .await
        .into_iter()
        .filter(|c| c.1 > 0)
        .collect();
    assert_eq!(some, vec![("nearcache_send".to_string(), 2)]);
    sqlx::query("UPDATE users SET name = name || '!'")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        calls(&mut tx).await,
        vec![
            ("nearcache_collect".to_string(), 100),
            ("nearcache_send".to_string(), 3),
            ("nearcache_touch_updated_at".to_string(), 100),
        ]
    );
    tx.rollback().await.unwrap();
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn a_rolled_back_transaction_sends_nothing(pool: PgPool) {
    let o = org(&pool).await;
    let u = user(&pool, &o, "a@x.io").await;
    let mut probe = Probe::new(&pool).await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("UPDATE users SET name = 'Nope' WHERE id = $1::uuid")
        .bind(&u)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(probe.drain(&pool).await, Vec::<Value>::new());
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn deletes_and_moves_notify_the_user(pool: PgPool) {
    let (o1, o2) = (org(&pool).await, org(&pool).await);
    let u = user(&pool, &o1, "a@x.io").await;
    let mut probe = Probe::new(&pool).await;
    run(
        &pool,
        "UPDATE users SET org_id = $2::uuid WHERE id = $1::uuid",
        &[&u, &o2],
    )
    .await;
    run(&pool, "DELETE FROM users WHERE id = $1::uuid", &[&u]).await;
    assert_eq!(
        probe.drain(&pool).await,
        vec![
            json!({"v": 1, "table": "users", "op": "update", "keys": [u]}),
            json!({"v": 1, "table": "users", "op": "delete", "keys": [u]}),
        ]
    );
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn an_organization_renamed_notifies_its_key(pool: PgPool) {
    let o = org(&pool).await;
    let mut probe = Probe::new(&pool).await;
    run(
        &pool,
        "UPDATE organizations SET name = 'Acme 2' WHERE id = $1::uuid",
        &[&o],
    )
    .await;
    assert_eq!(
        probe.drain(&pool).await,
        vec![json!({"v": 1, "table": "organizations", "op": "update", "keys": [o]})]
    );
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn a_changed_key_notifies_old_and_new(pool: PgPool) {
    let o = org(&pool).await;
    let u = user(&pool, &o, "a@x.io").await;
    let new = "00000000-0000-4000-8000-000000000001";
    let mut probe = Probe::new(&pool).await;
    run(
        &pool,
        "UPDATE users SET id = $2::uuid WHERE id = $1::uuid",
        &[&u, new],
    )
    .await;
    let got = probe.drain(&pool).await;
    assert_eq!(got.len(), 1);
    let keys: BTreeSet<&str> = got[0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(keys, BTreeSet::from([u.as_str(), new]));
}

async fn users(pool: &PgPool, org: &str, n: i32) {
    sqlx::query(
        "INSERT INTO users (org_id, email, name)
         SELECT $1::uuid, 'u' || i || '@x.io', 'User ' || i FROM generate_series(1, $2) i",
    )
    .bind(org)
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn a_statement_on_many_rows_batches_its_keys(pool: PgPool) {
    let o = org(&pool).await;
    users(&pool, &o, 500).await;
    let mut probe = Probe::new(&pool).await;
    sqlx::query("UPDATE users SET name = name || '!'")
        .execute(&pool)
        .await
        .unwrap();
    let got = probe.drain(&pool).await;
    assert!(
        got.len() > 1 && got.len() <= 5,
        "{} notifications",
        got.len()
    );
    let mut keys = BTreeSet::new();
    for n in &got {
        assert_eq!(n["op"], "update");
        for k in n["keys"].as_array().unwrap() {
            keys.insert(k.as_str().unwrap().to_string());
        }
    }
    let all: Vec<String> = sqlx::query_scalar("SELECT id::text FROM users")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(keys, all.into_iter().collect());
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn ten_thousand_rows_send_one_flush(pool: PgPool) {
    let o = org(&pool).await;
    users(&pool, &o, 10_000).await;
    let mut probe = Probe::new(&pool).await;
    let done = sqlx::query("UPDATE users SET name = name || '!'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 10_000);
    assert_eq!(
        probe.drain(&pool).await,
        vec![json!({"v": 1, "table": "users", "op": "flush"})]
    );
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn truncate_sends_a_flush(pool: PgPool) {
    let o = org(&pool).await;
    users(&pool, &o, 3).await;
    let mut probe = Probe::new(&pool).await;
    sqlx::query("TRUNCATE users").execute(&pool).await.unwrap();
    assert_eq!(
        probe.drain(&pool).await,
        vec![json!({"v": 1, "table": "users", "op": "flush"})]
    );
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn a_huge_row_updates_without_error(pool: PgPool) {
    let o = org(&pool).await;
    let u = user(&pool, &o, "a@x.io").await;
    let mut probe = Probe::new(&pool).await;
    let name = "n".repeat(100_000);
    run(
        &pool,
        "UPDATE users SET name = $2 WHERE id = $1::uuid",
        &[&u, &name],
    )
    .await;
    assert_eq!(
        probe.drain(&pool).await,
        vec![json!({"v": 1, "table": "users", "op": "update", "keys": [u]})]
    );
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn the_channel_is_fixed_per_database_and_no_session_setting_redirects_it(pool: PgPool) {
    let o = org(&pool).await;
    let mut probe = Probe::new(&pool).await;
    // A writer's session setting (the old way of choosing the channel) changes nothing.
    in_session(
        &pool,
        "SET LOCAL nearcache.channel = 'elsewhere'",
        "UPDATE organizations SET plan = 'pro' WHERE id = $1::uuid",
        &o,
    )
    .await;
    assert_eq!(
        probe.drain(&pool).await,
        vec![json!({"v": 1, "table": "organizations", "op": "update", "keys": [o]})]
    );
    // The database's channel is changed by a function, for every session.
    run(&pool, "SELECT nearcache_set_channel('elsewhere')", &[]).await;
    let mut other = PgListener::connect_with(&pool).await.unwrap();
    other.listen("elsewhere").await.unwrap();
    run(&pool, "UPDATE organizations SET plan = 'team'", &[]).await;
    let n = other.recv().await.unwrap();
    let v: Value = serde_json::from_str(n.payload()).unwrap();
    assert_eq!(
        v,
        json!({"v": 1, "table": "organizations", "op": "update", "keys": [o]})
    );
    let bad = sqlx::query("SELECT nearcache_set_channel('Bad-Name')")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("invalid channel"), "{bad}");
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn writes_under_the_replica_role_notify(pool: PgPool) {
    let o = org(&pool).await;
    let mut probe = Probe::new(&pool).await;
    // What pg_restore --disable-triggers, apply workers and bulk loaders run under.
    in_session(
        &pool,
        "SET LOCAL session_replication_role = replica",
        "UPDATE organizations SET name = 'renamed' WHERE id = $1::uuid",
        &o,
    )
    .await;
    assert_eq!(
        probe.drain(&pool).await,
        vec![json!({"v": 1, "table": "organizations", "op": "update", "keys": [o]})]
    );
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn an_update_of_updated_at_alone_notifies(pool: PgPool) {
    let o = org(&pool).await;
    let u = user(&pool, &o, "a@x.io").await;
    let mut probe = Probe::new(&pool).await;
    run(
        &pool,
        "UPDATE users SET updated_at = '2001-01-01' WHERE id = $1::uuid",
        &[&u],
    )
    .await;
    run(
        &pool,
        "UPDATE organizations SET updated_at = '2001-01-01' WHERE id = $1::uuid",
        &[&o],
    )
    .await;
    assert_eq!(
        probe.drain(&pool).await,
        vec![
            json!({"v": 1, "table": "users", "op": "update", "keys": [u]}),
            json!({"v": 1, "table": "organizations", "op": "update", "keys": [o]}),
        ]
    );
}

/// The names of the fields of a JSON object.
fn fields(v: &Value) -> Vec<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn no_column_the_api_serves_is_ignored_by_the_triggers(pool: PgPool) {
    use nearcache_pg::{PgUserRepo, UserId, UserRepo};
    let o = org(&pool).await;
    let u = user(&pool, &o, "a@x.io").await;
    let repo = PgUserRepo::new(pool.clone());
    let id = UserId::new(uuid::Uuid::parse_str(&u).unwrap());
    let principal = repo.principal(id).await.unwrap().unwrap();
    // What GET /me serves is the principal as JSON: its user's and organization's fields.
    let served = serde_json::to_value(&principal).unwrap();
    for (part, table) in [("user", "users"), ("organization", "organizations")] {
        let (ignored, watched): (Vec<String>, Vec<String>) = sqlx::query_as(
            "SELECT ignore_columns, watched_columns FROM nearcache_attached WHERE tbl = $1::regclass",
        )
        .bind(table)
        .fetch_one(&pool)
        .await
        .unwrap();
        for field in fields(&served[part]) {
            assert!(
                !ignored.contains(&field),
                "{table}.{field} is served by the API but ignored by the triggers"
            );
            assert!(watched.contains(&field), "{table}.{field} is not watched");
        }
    }
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn a_nullable_key_column_is_refused(pool: PgPool) {
    run(&pool, "CREATE TABLE notes (slug text, body text)", &[]).await;
    let e = sqlx::query("SELECT nearcache_attach('notes', 'slug')")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("may be NULL"), "{e}");
    // Once it cannot be NULL, any row order names every key.
    run(
        &pool,
        "ALTER TABLE notes ALTER COLUMN slug SET NOT NULL",
        &[],
    )
    .await;
    run(&pool, "SELECT nearcache_attach('notes', 'slug')", &[]).await;
    let mut probe = Probe::new(&pool).await;
    run(
        &pool,
        "INSERT INTO notes VALUES ('a', 'x'), ('b', NULL), ('c', 'y')",
        &[],
    )
    .await;
    run(&pool, "UPDATE notes SET body = 'z'", &[]).await;
    let got = probe.drain(&pool).await;
    for payload in &got {
        let mut keys: Vec<&str> = payload["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap())
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["a", "b", "c"]);
    }
    assert_eq!(got.len(), 2);
    // Making the key nullable later is refused too: the re-attach aborts the ALTER.
    let e = sqlx::query("ALTER TABLE notes ALTER COLUMN slug DROP NOT NULL")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("may be NULL"), "{e}");
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn a_column_added_after_attach_notifies(pool: PgPool) {
    let o = org(&pool).await;
    let u = user(&pool, &o, "a@x.io").await;
    run(&pool, "ALTER TABLE users ADD COLUMN nickname text", &[]).await;
    let mut probe = Probe::new(&pool).await;
    run(
        &pool,
        "UPDATE users SET nickname = 'ada' WHERE id = $1::uuid",
        &[&u],
    )
    .await;
    assert_eq!(
        probe.drain(&pool).await,
        vec![json!({"v": 1, "table": "users", "op": "update", "keys": [u]})]
    );
    let problems: Vec<String> =
        sqlx::query_scalar("SELECT nearcache_check('{users,organizations}', 'nearcache')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(problems, Vec::<String>::new());
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn the_check_names_every_problem(pool: PgPool) {
    let check = |channel: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Vec<String>>(
                "SELECT nearcache_check('{users,organizations,invoices,ghosts}', $1)",
            )
            .bind(channel)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    run(&pool, "CREATE TABLE invoices (no int PRIMARY KEY)", &[]).await;
    // The event trigger re-attaches a table after any ALTER TABLE, so this is undone at once.
    run(
        &pool,
        "ALTER TABLE users DISABLE TRIGGER nearcache_send_update",
        &[],
    )
    .await;
    let none: Vec<String> =
        sqlx::query_scalar("SELECT nearcache_check('{users,organizations}', 'nearcache')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(none, Vec::<String>::new());
    // Without the event trigger (as for a role that is not a superuser), neither is undone.
    run(&pool, "ALTER EVENT TRIGGER nearcache_reattach DISABLE", &[]).await;
    run(
        &pool,
        "ALTER TABLE users DISABLE TRIGGER nearcache_send_update",
        &[],
    )
    .await;
    run(&pool, "ALTER TABLE organizations ADD COLUMN logo text", &[]).await;
    let problems = check("other").await;
    let expected = [
        "the triggers notify on channel nearcache, not other",
        "table users: triggers missing or not enabled ALWAYS: nearcache_send_update",
        "table organizations: columns added after nearcache_attach are not watched: logo",
        "table invoices is not attached",
        "table ghosts does not exist",
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:?}");
    for (got, want) in problems.iter().zip(expected) {
        assert!(got.starts_with(want), "{got:?} should start with {want:?}");
    }
}

#[sqlx::test]
async fn install_works_on_a_database_without_the_reference_schema(pool: PgPool) {
    // Twice: installing is idempotent.
    nearcache_pg::install(&pool).await.unwrap();
    nearcache_pg::install(&pool).await.unwrap();
    let users: Option<String> = sqlx::query_scalar("SELECT to_regclass('users')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, None, "install must not create the reference schema");
    sqlx::raw_sql(
        "CREATE TABLE invoices (no bigint PRIMARY KEY, total int);
         SELECT nearcache_attach('invoices', 'no');",
    )
    .execute(&pool)
    .await
    .unwrap();
    // This cluster decodes the WAL (wal_level = logical): by default, writes are for the WAL
    // source and fire no trigger.
    let triggers = async |pool: &PgPool| -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_trigger
              WHERE tgrelid = 'invoices'::regclass AND tgname LIKE 'nearcache%'",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    };
    assert_eq!(triggers(&pool).await, 0);
    // For LISTEN: the database's choice, kept by a second install.
    sqlx::query("SELECT nearcache_set_source('notify')")
        .execute(&pool)
        .await
        .unwrap();
    nearcache_pg::install(&pool).await.unwrap();
    assert!(triggers(&pool).await > 0);
    let mut probe = Probe::new(&pool).await;
    run(&pool, "INSERT INTO invoices VALUES (42, 1)", &[]).await;
    assert_eq!(
        probe.drain(&pool).await,
        vec![json!({"v": 1, "table": "invoices", "op": "insert", "keys": ["42"]})]
    );
}

/// A random key: mostly short, sometimes up to 10 KB, of characters JSON must escape (quotes,
/// backslashes, control characters) and multibyte ones.
fn random_key(rng: &mut impl rand::RngExt, i: usize) -> String {
    const ALPHABET: [char; 12] = [
        '"', '\\', '\u{1}', '\n', '\u{1f}', 'a', 'Z', '0', 'é', '漢', '🦀', ' ',
    ];
    let len = if rng.random_ratio(1, 100) {
        rng.random_range(1_000..10_000)
    } else {
        rng.random_range(0..60)
    };
    let mut key: String = (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
        .collect();
    key.push_str(&format!("#{i}"));
    key
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn keys_of_any_characters_never_abort_a_write_and_are_always_covered(pool: PgPool) {
    use rand::{RngExt, SeedableRng};
    let seed: u64 = std::env::var("NEARCACHE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("keys property test: seed {seed} (NEARCACHE_SEED={seed} repeats it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    run(
        &pool,
        // No btree: its entries are limited to 2704 bytes, and keys here reach 10 KB.
        "CREATE TABLE docs (k text NOT NULL, v int NOT NULL DEFAULT 0)",
        &[],
    )
    .await;
    run(&pool, "CREATE INDEX ON docs USING hash (k)", &[]).await;
    run(&pool, "SELECT nearcache_attach('docs', 'k')", &[]).await;
    let mut probe = Probe::new(&pool).await;
    for case in 0..25 {
        let rows = if rng.random_ratio(1, 5) {
            rng.random_range(500..=2_000)
        } else {
            rng.random_range(1..50)
        };
        let keys: Vec<String> = (0..rows).map(|i| random_key(&mut rng, i)).collect();
        for sql in [
            "INSERT INTO docs (k) SELECT unnest($1::text[])",
            "UPDATE docs SET v = v + 1 WHERE k = ANY ($1::text[])",
            "DELETE FROM docs WHERE k = ANY ($1::text[])",
        ] {
            sqlx::query(sql)
                .bind(&keys)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("case {case} (seed {seed}): {sql} failed: {e}"));
            let got = probe.drain(&pool).await;
            let flushed = got.iter().any(|p| p["op"] == "flush");
            if !flushed {
                let sent: BTreeSet<&str> = got
                    .iter()
                    .flat_map(|p| p["keys"].as_array().unwrap())
                    .map(|k| k.as_str().unwrap())
                    .collect();
                for k in &keys {
                    assert!(
                        sent.contains(k.as_str()),
                        "case {case} (seed {seed}): {sql}: a key of {} bytes was not sent",
                        k.len()
                    );
                }
            }
        }
    }
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn a_session_that_corrupts_the_pending_keys_gets_a_flush_not_an_error(pool: PgPool) {
    let o = org(&pool).await;
    let mut probe = Probe::new(&pool).await;
    let oid: String = sqlx::query_scalar("SELECT 'organizations'::regclass::oid::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    in_session(
        &pool,
        &format!("SELECT set_config('nearcache.pending_{oid}', '\"unterminated', true)"),
        "UPDATE organizations SET plan = 'pro' WHERE id = $1::uuid",
        &o,
    )
    .await;
    assert_eq!(
        probe.drain(&pool).await,
        vec![json!({"v": 1, "table": "organizations", "op": "flush"})]
    );
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn any_table_can_be_attached(pool: PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE invoices (no text PRIMARY KEY, total int, printed_at timestamptz);
         SELECT nearcache_attach('invoices', 'no', '{printed_at}');",
    )
    .execute(&pool)
    .await
    .unwrap();
    let mut probe = Probe::new(&pool).await;
    sqlx::raw_sql(
        "INSERT INTO invoices VALUES ('A-1', 10, NULL);
         UPDATE invoices SET printed_at = now();
         UPDATE invoices SET total = 11;",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        probe.drain(&pool).await,
        vec![
            json!({"v": 1, "table": "invoices", "op": "insert", "keys": ["A-1"]}),
            json!({"v": 1, "table": "invoices", "op": "update", "keys": ["A-1"]}),
        ]
    );
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn a_table_attached_without_notify_sends_nothing_and_the_check_says_so(pool: PgPool) {
    let o = org(&pool).await;
    run(
        &pool,
        "SELECT nearcache_attach('organizations', 'id', notify => false)",
        &[],
    )
    .await;
    let mut probe = Probe::new(&pool).await;
    run(
        &pool,
        "UPDATE organizations SET plan = 'pro' WHERE id = $1::uuid",
        &[&o],
    )
    .await;
    assert_eq!(probe.drain(&pool).await, Vec::<Value>::new());
    let problems: Vec<String> =
        sqlx::query_scalar("SELECT nearcache_check('{organizations}', 'nearcache')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("nearcache_set_source('notify')"),
        "{problems:?}"
    );
    // Still published, for the WAL source.
    let published: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_publication_tables
                         WHERE pubname = 'nearcache' AND tablename = 'organizations')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(published);
}

/// The key contract: the key a change is reported with is Postgres' `key::text`, and
/// `Tag::row` writes a Rust key of the common types the same way, so the tag a loader puts on a
/// value is the tag the change invalidates. (The WAL source reports the same text: pgoutput
/// sends each column through its type's output function, which is what `::text` calls.)
#[sqlx::test(migrator = "nearcache_pg::MIGRATOR", fixtures("both"))]
async fn keys_of_common_types_tag_as_postgres_prints_them(pool: PgPool) {
    use nearcache_store::Tag;

    let upper_uuid = "ABCDEF00-1234-4ABC-8DEF-0123456789AB";
    let text_key = "O'Brien \"quoted\" \\ back — ünïcødé 🦀";
    // (table, column type, SQL literal, the tag the Rust key builds)
    let cases: Vec<(&str, &str, String, Tag)> = vec![
        (
            "k_int4",
            "int4",
            "-2147483648".into(),
            Tag::row("k_int4", i32::MIN),
        ),
        (
            "k_int8",
            "int8",
            "9007199254740993".into(),
            Tag::row("k_int8", 9_007_199_254_740_993_i64),
        ),
        (
            "k_text",
            "text",
            format!("'{}'", text_key.replace('\'', "''")),
            Tag::row("k_text", text_key),
        ),
        (
            "k_numeric",
            "numeric",
            "1.50".into(),
            Tag::row("k_numeric", "1.50"),
        ),
        (
            "k_uuid",
            "uuid",
            format!("'{upper_uuid}'"),
            Tag::row("k_uuid", uuid::Uuid::parse_str(upper_uuid).unwrap()),
        ),
    ];
    for (table, ty, _, _) in &cases {
        run(
            &pool,
            &format!("CREATE TABLE {table} (id {ty} PRIMARY KEY, v int)"),
            &[],
        )
        .await;
        run(
            &pool,
            &format!("SELECT nearcache_attach('{table}', 'id')"),
            &[],
        )
        .await;
    }
    let mut probe = Probe::new(&pool).await;
    for (table, _, literal, _) in &cases {
        run(
            &pool,
            &format!("INSERT INTO {table} VALUES ({literal}, 1)"),
            &[],
        )
        .await;
    }
    let payloads = probe.drain(&pool).await;
    for ((table, _, literal, tag), payload) in cases.iter().zip(&payloads) {
        let printed: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT ({literal})::{}::text",
            cases.iter().find(|c| c.0 == *table).unwrap().1
        )))
        .fetch_one(&pool)
        .await
        .unwrap();
        let want = format!("{table}:{printed}");
        assert_eq!(
            tag.as_str(),
            want,
            "the Rust key of {table} as Postgres prints it"
        );
        let sent = payload["keys"][0].as_str().unwrap();
        assert_eq!(
            format!("{table}:{sent}"),
            want,
            "the key {table} notifies with"
        );
    }
    // What the trait refuses on purpose: a float's text is not numeric's (`1.5` against
    // `1.50`), and 2^53 + 1 is not even a float.
    assert_ne!(format!("{}", 1.50_f64), "1.50");
    assert_ne!(
        format!("{}", 9_007_199_254_740_993_i64 as f64),
        "9007199254740993"
    );
}
