//! The axum example (`examples/axum-accounts`) against a real Postgres over TCP: two tables of
//! its own, the tower Layer, one source for both caches (chosen as `--source auto` chooses),
//! and its health and metrics routes.

use std::time::Duration;

use nearcache::Mode;
use nearcache_example_axum as example;
use nearcache_tests::app::{token_for, SECRET};
use nearcache_tests::{wait_until, TestDb};
use nearcache_tower::{AuthConfig, Authenticator, Key};
use serde_json::Value;

use crate::support::exec;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn updates_by_sql_of_either_table_are_seen_on_the_next_request() {
    let db = TestDb::new().await;
    let conn = example::connect(db.url()).await.unwrap();
    example::prepare(&conn.pool).await.unwrap();
    example::prepare(&conn.pool)
        .await
        .expect("prepare is idempotent");
    exec(&conn.pool, "INSERT INTO accounts VALUES (7, 'Acme', 'pro')").await;
    exec(
        &conn.pool,
        "INSERT INTO products (sku, name, price_cents) VALUES ('TEA-1', 'Green tea', 450)",
    )
    .await;

    let caches = example::Caches::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let source = {
        let (caches, url) = (caches.clone(), db.url().to_string());
        tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            caches.keep_coherent(&url, stopped).await
        })
    };
    let auth =
        Authenticator::new(&AuthConfig::new(Key::Secret(SECRET.as_bytes().to_vec()))).unwrap();
    let app = example::router(&caches, conn.clone(), auth);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let get = |path: &str, t: Option<String>| {
        let mut req = client.get(format!("http://{addr}{path}"));
        if let Some(t) = t {
            req = req.bearer_auth(t);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let text = res.text().await.unwrap();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
    };

    // Both caches bypass until the source delivers, and /healthz says so.
    assert_eq!(caches.products.mode(), Mode::Bypass);
    wait_until(
        Duration::from_secs(20),
        "both caches to be coherent",
        || {
            std::future::ready(
                caches.accounts.mode() == Mode::Coherent
                    && caches.products.mode() == Mode::Coherent,
            )
        },
    )
    .await;
    let (status, health) = get("/healthz", None).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["caches"]["products"], "coherent", "{health}");
    assert_eq!(get("/livez", None).await.0, 200);

    let t = token_for("7");
    let (status, body) = get("/account", Some(t.clone())).await;
    assert_eq!(
        (status, &body["name"]),
        (200, &Value::from("Acme")),
        "{body}"
    );
    let (status, body) = get("/products/TEA-1", None).await;
    assert_eq!(
        (status, &body["price_cents"]),
        (200, &Value::from(450)),
        "{body}"
    );
    assert_eq!((caches.accounts.len(), caches.products.len()), (1, 1));
    assert_eq!(get("/products/NONE", None).await.0, 404);

    exec(
        &conn.pool,
        "UPDATE accounts SET name = 'Acme Corp' WHERE id = 7",
    )
    .await;
    exec(
        &conn.pool,
        "UPDATE products SET price_cents = 500 WHERE sku = 'TEA-1'",
    )
    .await;
    wait_until(
        Duration::from_secs(5),
        "both updates to be served",
        || async {
            get("/account", Some(t.clone())).await.1["name"] == "Acme Corp"
                && get("/products/TEA-1", None).await.1["price_cents"] == 500
        },
    )
    .await;
    // An ignored column evicts nothing.
    let hits = caches.products.stats().hits;
    exec(
        &conn.pool,
        "UPDATE products SET viewed_at = now() WHERE sku = 'TEA-1'",
    )
    .await;
    exec(&conn.pool, "UPDATE accounts SET plan = 'team' WHERE id = 7").await;
    wait_until(
        Duration::from_secs(5),
        "the plan change to be served",
        || async { get("/account", Some(t.clone())).await.1["plan"] == "team" },
    )
    .await;
    assert_eq!(get("/products/TEA-1", None).await.1["price_cents"], 500);
    assert_eq!(
        caches.products.stats().hits,
        hits + 1,
        "served from the cache"
    );

    // The audit: the cached account loaded again and compared; nothing stale.
    let audit = {
        let (caches, conn) = (caches.clone(), conn.clone());
        tokio::spawn(async move { caches.audit(conn, 20.0).await })
    };
    wait_until(Duration::from_secs(10), "the audit to check", || {
        std::future::ready(caches.accounts.stats().audit_checked >= 3)
    })
    .await;
    audit.abort();
    assert_eq!(caches.accounts.stats().audit_stale, 0);

    let (status, metrics) = get("/metrics", None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert_eq!(status, 200);
    for line in [
        // The product and the remembered absence of NONE.
        "nearcache_cache_entries{cache=\"products\"} 2",
        "nearcache_cache_entries{cache=\"accounts\"} 1",
        "nearcache_source_listening 1",
        "nearcache_cache_audit_stale_total{cache=\"accounts\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    assert_eq!(
        metrics
            .matches("# TYPE nearcache_cache_hits_total ")
            .count(),
        1
    );

    let (status, body) = get("/account", None).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &Value::from("unauthorized"))
    );
    assert_eq!(
        get("/account", Some(token_for("8"))).await.0,
        401,
        "no such account"
    );
    assert_eq!(
        get("/account", Some(token_for("not-a-number"))).await.0,
        401
    );

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), source)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Stopped: the caches bypass and the service is no longer ready.
    let (status, health) = get("/healthz", None).await;
    assert_eq!(
        (status, &health["status"]),
        (503, &Value::from("unavailable")),
        "{health}"
    );
    server.abort();
}
