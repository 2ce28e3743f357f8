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
        .fold(sqlx::query(sql), |q, p| q.bind(*p))
        .execute(pool)
        .await
        .unwrap();
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

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
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

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
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

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
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

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
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
    // The WHEN clauses filtered every row: not one function call.
    let none: Vec<(String, i64)> = calls(&mut tx)
        .await
        .into_iter()
        .filter(|c| c.1 > 0)
        .collect();
    assert_eq!(none, vec![]);
    sqlx::query("UPDATE users SET name = name || '!'")
        .execute(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        calls(&mut tx).await,
        vec![
            ("nearcache_collect".to_string(), 100),
            ("nearcache_send".to_string(), 1),
            ("nearcache_touch_updated_at".to_string(), 100),
        ]
    );
    tx.rollback().await.unwrap();
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
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

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
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

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
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

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
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

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
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

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
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

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
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

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
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

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
async fn the_channel_is_configurable(pool: PgPool) {
    let o = org(&pool).await;
    let mut other = PgListener::connect_with(&pool).await.unwrap();
    other.listen("elsewhere").await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL nearcache.channel = 'elsewhere'")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE organizations SET plan = 'pro' WHERE id = $1::uuid")
        .bind(&o)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let n = other.recv().await.unwrap();
    let v: Value = serde_json::from_str(n.payload()).unwrap();
    assert_eq!(
        v,
        json!({"v": 1, "table": "organizations", "op": "update", "keys": [o]})
    );
}

#[sqlx::test(migrator = "nearcache_pg::MIGRATOR")]
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
