//! Installing and attaching on a real Postgres (`DATABASE_URL`; `cargo xtask test` sets it),
//! from both clients, on databases without the reference schema.

use std::sync::{Arc, Mutex};

use sqlx::PgPool;
use tokio_postgres::AsyncMessage;

/// A tokio-postgres client on the database of `pool`, and the notices the server sends it.
async fn client(pool: &PgPool) -> (tokio_postgres::Client, Arc<Mutex<Vec<String>>>) {
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(pool)
        .await
        .unwrap();
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let mut config: tokio_postgres::Config = url.parse().unwrap();
    config.dbname(&name);
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let notices = Arc::new(Mutex::new(Vec::new()));
    let heard = notices.clone();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let AsyncMessage::Notice(n) = message {
                heard.lock().unwrap().push(n.message().to_string());
            }
        }
    });
    (client, notices)
}

#[sqlx::test]
async fn tokio_postgres_installs_quietly_and_attaches(pool: PgPool) {
    let (mut client, notices) = client(&pool).await;
    nearcache_sql::tokio_postgres::install(&mut client)
        .await
        .unwrap();
    client.execute("SELECT 1", &[]).await.unwrap(); // every notice has arrived
    assert_eq!(
        *notices.lock().unwrap(),
        Vec::<String>::new(),
        "a quiet install"
    );

    // The same SQL without QUIET tells (so the check above can fail).
    client
        .batch_execute(&format!("BEGIN; {}; COMMIT", nearcache_sql::INSTALL))
        .await
        .unwrap();
    assert!(
        notices
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.contains("skipping")),
        "{:?}",
        notices.lock().unwrap()
    );

    client
        .batch_execute("CREATE TABLE products (id serial PRIMARY KEY, sku text NOT NULL UNIQUE, seen timestamptz)")
        .await
        .unwrap();
    nearcache_sql::tokio_postgres::attach(&client, "products", "sku", &["seen"])
        .await
        .unwrap();
    let rule: (String, Vec<String>) = sqlx::query_as(
        "SELECT key_column, ignore_columns FROM nearcache_attached WHERE tbl = 'products'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(rule, ("sku".to_string(), vec!["seen".to_string()]));
    let users: Option<String> = sqlx::query_scalar("SELECT to_regclass('users')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(users, None, "no reference schema");
}

#[sqlx::test]
async fn sqlx_installs_idempotently_and_attach_refuses_a_nullable_key(pool: PgPool) {
    nearcache_sql::sqlx::install(&pool).await.unwrap();
    nearcache_sql::sqlx::install(&pool).await.unwrap();
    sqlx::raw_sql("CREATE TABLE notes (id bigint PRIMARY KEY, author text)")
        .execute(&pool)
        .await
        .unwrap();
    nearcache_sql::sqlx::attach(&pool, "notes", "id", &[])
        .await
        .unwrap();
    let err = nearcache_sql::sqlx::attach(&pool, "notes", "author", &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("author"), "{err}");
    let err = nearcache_sql::sqlx::attach(&pool, "ghosts", "id", &[])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("ghosts"), "{err}");
}
