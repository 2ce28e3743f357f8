//! The axum example (`examples/axum-accounts`) against a real Postgres over TCP: its own table,
//! the tower Layer, the reusable handler, the WAL source.

use std::time::Duration;

use nearcache::Mode;
use nearcache_example_axum as example;
use nearcache_source::SourceStatus;
use nearcache_tests::app::{token_for, SECRET};
use nearcache_tests::{wait_until, TestDb};
use nearcache_tower::{AuthConfig, Authenticator, Key};
use serde_json::Value;

use crate::support::exec;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_update_by_sql_is_seen_on_the_next_request() {
    let db = TestDb::new().await;
    let (pool, replans) = example::connect(db.url()).await.unwrap();
    example::prepare(&pool).await.unwrap();
    example::prepare(&pool)
        .await
        .expect("prepare is idempotent");
    exec(&pool, "INSERT INTO accounts VALUES (7, 'Acme', 'pro')").await;

    let cache = example::cache();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let source = tokio::spawn(
        example::keep_coherent(db.url(), cache.clone(), SourceStatus::default(), async {
            let _ = stopped.await;
        })
        .unwrap(),
    );
    let auth =
        Authenticator::new(&AuthConfig::new(Key::Secret(SECRET.as_bytes().to_vec()))).unwrap();
    let app = example::router(cache.clone(), (pool.clone(), replans), auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    wait_until(Duration::from_secs(20), "the cache to be coherent", || {
        std::future::ready(cache.mode() == Mode::Coherent)
    })
    .await;

    let client = reqwest::Client::new();
    let get = |t: Option<String>| {
        let mut req = client.get(format!("http://{addr}/account"));
        if let Some(t) = t {
            req = req.bearer_auth(t);
        }
        async move {
            let res = req.send().await.unwrap();
            (
                res.status().as_u16(),
                res.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let t = token_for("7");
    let (status, body) = get(Some(t.clone())).await;
    assert_eq!(
        (status, &body["name"]),
        (200, &Value::from("Acme")),
        "{body}"
    );
    assert_eq!(cache.len(), 1, "the account is cached");
    assert_eq!(get(Some(t.clone())).await.1["name"], "Acme");

    exec(&pool, "UPDATE accounts SET name = 'Acme Corp' WHERE id = 7").await;
    wait_until(
        Duration::from_secs(5),
        "the update to be served",
        || async { get(Some(t.clone())).await.1["name"] == "Acme Corp" },
    )
    .await;

    let (status, body) = get(None).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &Value::from("unauthorized"))
    );
    assert_eq!(get(Some(token_for("8"))).await.0, 401, "no such account");
    assert_eq!(get(Some(token_for("not-a-number"))).await.0, 401);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), source)
        .await
        .unwrap()
        .unwrap();
    server.abort();
}
