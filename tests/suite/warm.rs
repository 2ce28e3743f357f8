//! A warm start (`--warm-file`) across a real restart of the service: the ids kept at shutdown
//! are loaded again once the source is coherent, so the first requests for them are hits; a
//! user deleted while the instance was down is not served; a corrupt file starts cold.

use std::time::Duration;

use nearcache_tests::app::{spawn_app_with, token};
use nearcache_tests::{wait_until, TestDb};
use serde_json::json;

use crate::support::{exec, metric as value, seed};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_with_a_warm_file_answers_its_first_requests_from_the_cache() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 12).await;
    let file = std::env::temp_dir().join(format!("nearcache-warm-{}.ids", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let warm =
        |f: std::path::PathBuf| move |s: &mut nearcache_server::Settings| s.warm_file = Some(f);

    let app = spawn_app_with(db.url(), warm(file.clone())).await;
    app.ready("coherent").await;
    for u in &users[..10] {
        assert_eq!(app.get("/me", Some(&token(u.id, json!({})))).await.0, 200);
    }
    app.stop().await.unwrap();
    let kept = std::fs::read_to_string(&file).unwrap();
    assert_eq!(kept.lines().count(), 10, "{kept}");

    // While it is down, one of them leaves.
    exec(
        &pool,
        &format!("DELETE FROM users WHERE id = '{}'", users[0].id),
    )
    .await;

    let app = spawn_app_with(db.url(), warm(file.clone())).await;
    app.ready("coherent").await;
    wait_until(Duration::from_secs(10), "the warm start", || async {
        value(&app.metrics().await, "nearcache_cache_warmed_total") >= 10.0
    })
    .await;
    let before = app.metrics().await;
    for u in &users[1..10] {
        assert_eq!(app.get("/me", Some(&token(u.id, json!({})))).await.0, 200);
    }
    assert_eq!(
        app.get("/me", Some(&token(users[0].id, json!({})))).await.0,
        401,
        "deleted meanwhile"
    );
    let after = app.metrics().await;
    let hits =
        value(&after, "nearcache_cache_hits_total") - value(&before, "nearcache_cache_hits_total");
    let loads = value(&after, "nearcache_cache_loads_total")
        - value(&before, "nearcache_cache_loads_total");
    // Nine principals and the deleted user's negative entry, all from the cache.
    assert_eq!((hits, loads), (10.0, 0.0));
    app.stop().await.unwrap();

    // A corrupt file: a warning, a cold start, never a failed one.
    std::fs::write(&file, "not an id\n\u{0}\u{1}garbage").unwrap();
    let app = spawn_app_with(db.url(), warm(file.clone())).await;
    app.ready("coherent").await;
    assert_eq!(
        value(&app.metrics().await, "nearcache_cache_warmed_total"),
        0.0
    );
    app.stop().await.unwrap();
    let _ = std::fs::remove_file(&file);
}
