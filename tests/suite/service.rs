//! The service over real TCP against a real database: tokens, deactivation, read-your-writes,
//! starting without a database, shutdown.

use std::time::{Duration, Instant};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use nearcache_server::CacheMode;
use nearcache_tests::app::{now, spawn_app, spawn_app_with, token, SECRET};
use nearcache_tests::{wait_until, PrivateCluster, TestDb};
use serde_json::json;

use crate::support::{exec, metric as value, seed, update};

fn b64(v: &serde_json::Value) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = v.to_string().into_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn the_token_battery() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let id = users[0].id;
    let app = spawn_app_with(db.url(), |s| {
        s.auth.issuer = Some("issuer".into());
        s.auth.audience = Some("api".into());
    })
    .await;
    app.ready("coherent").await;
    let good = json!({"iss": "issuer", "aud": "api"});
    let sign = |claims: serde_json::Value, alg: Algorithm, secret: &[u8]| {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    };
    let claims = |extra: serde_json::Value| {
        let mut c =
            json!({"sub": id.to_string(), "exp": now() + 600, "iss": "issuer", "aud": "api"});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    let valid = token(id, good.clone());
    assert_eq!(app.get("/me", Some(&valid)).await.0, 200);

    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims(json!({})))
    );
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            sign(
                claims(json!({"exp": now() - 3600})),
                Algorithm::HS256,
                SECRET.as_bytes(),
            ),
        ),
        (
            "not yet valid",
            sign(
                claims(json!({"nbf": now() + 3600})),
                Algorithm::HS256,
                SECRET.as_bytes(),
            ),
        ),
        (
            "no exp",
            sign(
                json!({"sub": id.to_string(), "iss": "issuer", "aud": "api"}),
                Algorithm::HS256,
                SECRET.as_bytes(),
            ),
        ),
        (
            "wrong signature",
            sign(claims(json!({})), Algorithm::HS256, b"another secret"),
        ),
        (
            "wrong algorithm",
            sign(claims(json!({})), Algorithm::HS512, SECRET.as_bytes()),
        ),
        ("alg none", alg_none),
        (
            "wrong issuer",
            sign(
                claims(json!({"iss": "mallory"})),
                Algorithm::HS256,
                SECRET.as_bytes(),
            ),
        ),
        (
            "wrong audience",
            sign(
                claims(json!({"aud": "other"})),
                Algorithm::HS256,
                SECRET.as_bytes(),
            ),
        ),
        (
            "sub not a user id",
            sign(
                claims(json!({"sub": "admin"})),
                Algorithm::HS256,
                SECRET.as_bytes(),
            ),
        ),
        (
            "unknown user",
            token(
                nearcache_pg::UserId::new(uuid::Uuid::new_v4()),
                good.clone(),
            ),
        ),
        ("malformed", "abc.def".into()),
    ];
    let mut bodies = Vec::new();
    for (what, t) in &cases {
        let (status, body) = app.get("/me", Some(t)).await;
        assert_eq!(status, 401, "{what}");
        bodies.push(body);
    }
    let (status, body) = app.get("/me", None).await;
    assert_eq!(status, 401, "missing header");
    bodies.push(body);
    let (status, body) = app.get_with_header("/me", &format!("Basic {valid}")).await;
    assert_eq!(status, 401, "not Bearer");
    bodies.push(body);
    // One body for every failure: nothing that tells an attacker which check failed.
    let expected = json!({"error": "unauthorized", "message": "authentication required"});
    assert!(bodies.iter().all(|b| *b == expected), "{bodies:?}");
}

#[tokio::test]
async fn a_user_deactivated_by_sql_gets_401_in_coherent_mode() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let app = spawn_app(db.url()).await;
    app.ready("coherent").await;
    let t = token(users[0].id, json!({}));
    assert_eq!(app.get("/me", Some(&t)).await.0, 200);
    assert_eq!(
        app.get("/me", Some(&t)).await.0,
        200,
        "now served from the cache"
    );
    update(&pool, "users", users[0].id, "active = false").await;
    // The cache's TTL is five minutes, so only the notification can make this pass within the
    // deadline (wait_until fails the test past it).
    wait_until(Duration::from_secs(5), "401 after deactivation", || async {
        app.get("/me", Some(&t)).await.0 == 401
    })
    .await;
}

#[tokio::test]
async fn healthz_says_why_the_cache_bypasses_when_a_table_lacks_its_triggers() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    exec(&pool, "SELECT nearcache_detach('organizations')").await;
    let app = spawn_app(db.url()).await;
    wait_until(Duration::from_secs(10), "a problem on /healthz", || async {
        app.get("/healthz", None).await.1["problem"].is_string()
    })
    .await;
    let (status, body) = app.get("/healthz", None).await;
    // Not ready: every request would go to the database; alive all the same.
    assert_eq!((status, body["cache"].as_str()), (503, Some("bypass")));
    assert_eq!(app.get("/livez", None).await.0, 200);
    // The default source is auto, which is the WAL on the test cluster.
    assert_eq!(body["source"], "wal");
    let problem = body["problem"].as_str().unwrap();
    assert!(
        problem.contains("table organizations is not in publication nearcache"),
        "{problem}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn patch_me_is_seen_by_the_next_get_at_once() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 2).await;
    let app = spawn_app(db.url()).await;
    app.ready("coherent").await;
    let t = token(users[0].id, json!({}));
    assert_eq!(app.get("/me", Some(&t)).await.1["user"]["name"], "User 0");
    for name in ["Ada", "Ada L.", "Countess"] {
        let (status, body) = app.patch_me(&t, &json!({"name": name})).await;
        assert_eq!(status, 200);
        assert_eq!(body["user"]["name"], name);
        // No waiting: read-your-writes.
        assert_eq!(app.get("/me", Some(&t)).await.1["user"]["name"], name);
    }
    let taken = users[1].email.clone();
    let (status, body) = app.patch_me(&t, &json!({"email": taken})).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));
    let (status, _) = app.patch_me(&t, &json!({"email": "not an email"})).await;
    assert_eq!(status, 400);
    assert_eq!(app.get("/me", Some(&t)).await.1["user"]["name"], "Countess");
}

#[tokio::test]
async fn every_cache_mode_serves_the_same_answers() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (org, users) = seed(&pool, 1).await;
    let t = token(users[0].id, json!({}));
    for (mode, cache) in [
        ("coherent", CacheMode::Coherent),
        ("ttl", CacheMode::Ttl),
        ("off", CacheMode::Off),
    ] {
        let app = spawn_app_with(db.url(), |s| s.cache = cache).await;
        app.ready(mode).await;
        let (status, body) = app.get("/me/organization", Some(&t)).await;
        assert_eq!(
            (status, body["id"].as_str()),
            (200, Some(org.id.to_string().as_str()))
        );
        let metrics = app.metrics().await;
        assert!(metrics.contains(
            "nearcache_http_requests_total{route=\"GET /me/organization\",status=\"200\"} 1"
        ));
        assert_eq!(
            metrics.contains("nearcache_cache_hits_total"),
            mode != "off",
            "{mode}"
        );
        assert_eq!(
            metrics.contains("nearcache_source_listening 1"),
            mode == "coherent",
            "{mode}"
        );
        assert_eq!(
            metrics.contains("nearcache_source_misconfigured 0"),
            mode == "coherent",
            "{mode}"
        );
        assert!(metrics.contains("nearcache_build_info{version=\""));
        assert!(
            metrics.contains("nearcache_auth_tokens_remembered 1"),
            "{mode}"
        );
        assert!(metrics.contains("nearcache_runtime_alive_tasks "), "{mode}");
        if mode == "coherent" {
            // One principal cached, carrying its organization's tag (its user's row is its
            // key, invalidated as such).
            for line in [
                "nearcache_cache_entries 1",
                "nearcache_cache_index_rows 1",
                "nearcache_cache_indexed_tags 1",
                "nearcache_cache_loads_in_flight 0",
                "nearcache_cache_fence_memory 65536",
            ] {
                assert!(metrics.contains(line), "{line} in\n{metrics}");
            }
        }
        promtool_accepts(&metrics);
        // HEAD on the operational routes; /livez answers whatever the readiness.
        for path in ["/healthz", "/metrics", "/livez"] {
            let res = reqwest::Client::new()
                .head(app.url(path))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "HEAD {path}");
            assert!(
                res.bytes().await.unwrap().is_empty(),
                "HEAD {path} has no body"
            );
        }
        app.stop().await.unwrap();
    }
}

/// `promtool check metrics` finds nothing to complain about (units, suffixes, help texts).
/// Skipped with a line saying so where promtool is missing, except on CI, which installs it.
pub(crate) fn promtool_accepts(metrics: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var("CI").is_err() => {
            eprintln!("skipped: promtool check metrics ({e}; apt-get install prometheus)");
            return;
        }
        Err(e) => panic!("promtool is needed on CI: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{metrics}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn starts_without_a_database_and_recovers_by_itself() {
    let cluster = PrivateCluster::start();
    let db = TestDb::on(&cluster.url()).await;
    let t = {
        let pool = db.pool().await;
        let (_, users) = seed(&pool, 1).await;
        pool.close().await;
        token(users[0].id, json!({}))
    };
    cluster.cluster().down().unwrap();
    let app = spawn_app(db.url()).await;
    let (status, body) = app.get("/healthz", None).await;
    assert_eq!((status, body["cache"].as_str()), (503, Some("bypass")));
    let start = Instant::now();
    let (status, body) = app.get("/me", Some(&t)).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "a 503, not a hang"
    );
    cluster.cluster().up().unwrap();
    app.ready("coherent").await;
    assert_eq!(app.get("/me", Some(&t)).await.0, 200);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_drains_and_stops_everything() {
    let db = TestDb::new().await;
    let app = spawn_app(db.url()).await;
    app.ready("coherent").await;
    let addr = app.addr;
    let started = Instant::now();
    app.stop().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

/// A query blocked by a lock ends at the statement timeout: the request answers 503 within
/// it, instead of waiting as long as the lock lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_blocked_by_a_lock_answers_503_within_the_statement_timeout() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let t = token(users[0].id, json!({}));
    let app = spawn_app_with(db.url(), |s| {
        s.cache = CacheMode::Off;
        s.db_statement_timeout = Duration::from_millis(500);
    })
    .await;
    app.ready("off").await;
    assert_eq!(app.get("/me", Some(&t)).await.0, 200);

    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let start = Instant::now();
    let (status, body) = app.get("/me", Some(&t)).await;
    let took = start.elapsed();
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "answered at the timeout, not when the lock went: {took:?}"
    );
    locker.rollback().await.unwrap();
    assert_eq!(app.get("/me", Some(&t)).await.0, 200);
    app.stop().await.unwrap();
}

/// At shutdown, a request still running when the shutdown timeout ends is answered 503 (not
/// dropped), and the instance reports that the drain did not complete; with nothing in
/// flight, it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_still_running_at_the_shutdown_timeout_gets_a_503() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let t = token(users[0].id, json!({}));
    let configure = |s: &mut nearcache_server::Settings| {
        s.cache = CacheMode::Off;
        s.db_statement_timeout = Duration::from_secs(60);
        s.shutdown_timeout = Duration::from_millis(500);
    };
    let quiet = spawn_app_with(db.url(), configure).await;
    quiet.ready("off").await;
    assert!(quiet.stop().await.unwrap().drained, "nothing in flight");

    let app = spawn_app_with(db.url(), configure).await;
    app.ready("off").await;
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let url = app.url("/me");
    let blocked = tokio::spawn(async move {
        let res = reqwest::Client::new()
            .get(url)
            .bearer_auth(t)
            .send()
            .await
            .expect("an answer, not a dropped connection");
        let status = res.status().as_u16();
        (status, res.json::<serde_json::Value>().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let stopped = app.stop().await.unwrap();
    assert!(!stopped.drained, "a request outlived the shutdown timeout");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let (status, body) = blocked.await.unwrap();
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    locker.rollback().await.unwrap();
}

/// `--cache-max-bytes`: principals past the bound are evicted by moka's policy, what the cache
/// holds stays under it, and `/metrics` says both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cache_bounded_in_bytes_stays_under_its_bound() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 100).await;
    let bound = 32 * 1024;
    let app = spawn_app_with(db.url(), |s| s.cache_max_bytes = Some(bound)).await;
    app.ready("coherent").await;
    for u in &users {
        assert_eq!(app.get("/me", Some(&token(u.id, json!({})))).await.0, 200);
    }
    wait_until(
        Duration::from_secs(5),
        "moka to apply the bound",
        || async {
            let m = app.metrics().await;
            value(&m, "nearcache_cache_entries") < 100.0
        },
    )
    .await;
    let m = app.metrics().await;
    assert_eq!(value(&m, "nearcache_cache_max_bytes"), bound as f64);
    let (bytes, entries) = (
        value(&m, "nearcache_cache_bytes"),
        value(&m, "nearcache_cache_entries"),
    );
    assert!(bytes <= bound as f64, "{bytes} bytes");
    // Each principal weighs well over a kilobyte: its value, its JSON, its tags, the overheads.
    assert!(
        entries > 0.0 && bytes / entries > 1_000.0,
        "{bytes} bytes in {entries}"
    );
    assert!(value(&m, "nearcache_cache_evicted_total") > 0.0);

    // The audit runs by default (2 a second) and finds nothing stale here.
    wait_until(Duration::from_secs(10), "an audit in /healthz", || async {
        app.get("/healthz", None).await.1["audit"]["checked"].as_u64() > Some(0)
    })
    .await;
    let health = app.get("/healthz", None).await.1;
    assert_eq!(health["audit"]["stale"], 0, "{health}");
    assert!(value(&app.metrics().await, "nearcache_cache_audit_checked_total") > 0.0);
}
