//! TLS to Postgres on every connection an instance opens (the pool, the LISTEN connection, the
//! WAL source's control and replication connections), against a private cluster that accepts
//! TLS only, with certificates made here.

use std::path::Path;
use std::time::Duration;

use nearcache_tests::app::{spawn_app_with, token};
use nearcache_tests::{wait_until, PrivateCluster, TestDb};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::json;

use crate::support::{seed, update, Source};

/// A certificate authority of the test's own.
pub(crate) fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A private cluster that accepts TLS only, with a certificate of `ca` naming `name`.
pub(crate) fn serving_tls(ca: &CertifiedIssuer<'static, KeyPair>, name: &str) -> PrivateCluster {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, ca)
        .unwrap();
    let private = PrivateCluster::start();
    let cluster = private.cluster();
    cluster.down().unwrap();
    cluster
        .serve_tls_only(&cert.pem(), &key.serialize_pem())
        .unwrap();
    cluster.up().unwrap();
    private
}

/// Whether every connection of `application_name` to the database uses TLS (and one exists).
async fn all_tls(pool: &sqlx::PgPool, application_name: &str) -> bool {
    let (plain, all): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*)
           FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
          WHERE a.application_name = $1",
    )
    .bind(application_name)
    .fetch_one(pool)
    .await
    .unwrap();
    plain == 0 && all > 0
}

/// An instance on `url` and `source` that must become coherent, serve, and see an update.
async fn serves_coherently(url: &str, source: Source, pool: &sqlx::PgPool) {
    let app = spawn_app_with(url, |s| s.source = source.kind()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let health = app.get("/healthz", None).await.1;
        if health["cache"] == "coherent" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{source:?} on {url}: not coherent within 20 s: {health}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, users) = seed(pool, 1).await;
    let t = token(users[0].id, json!({}));
    assert_eq!(app.get("/me", Some(&t)).await.0, 200);
    update(pool, "users", users[0].id, "name = 'Over TLS'").await;
    wait_until(
        Duration::from_secs(5),
        "the update to reach the cache",
        || async { app.get("/me", Some(&t)).await.1["user"]["name"] == "Over TLS" },
    )
    .await;
    assert!(
        all_tls(pool, source.application_name()).await,
        "{source:?}: the source's connections use TLS"
    );
    app.stop().await.unwrap();
}

/// Counts the source's failed attempts in /metrics.
fn failures(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("nearcache_source_failures_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the failures counter in /metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn require_and_verify_full_work_and_a_wrong_authority_is_refused_clearly() {
    let ca = authority("nearcache test CA");
    let stranger = authority("someone else's CA");
    let private = serving_tls(&ca, "localhost");
    let cluster = private.cluster();

    let dir = cluster.dir();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca_file = write("ca.pem", ca.pem());
    let stranger_file = write("stranger.pem", stranger.pem());
    let root = |p: &Path| p.to_str().unwrap().to_string();

    // The test's own connections: sqlx prefers TLS by default, and the server takes nothing else.
    let db = TestDb::on(&private.url()).await;
    let pool = db.pool().await;
    let plain = db.url().to_string();
    let named = plain.replace("127.0.0.1", "localhost");

    for source in [Source::Notify, Source::Wal] {
        serves_coherently(&format!("{plain}?sslmode=require"), source, &pool).await;
        let verified = format!("{named}?sslmode=verify-full&sslrootcert={}", root(&ca_file));
        serves_coherently(&verified, source, &pool).await;

        // A certificate from an authority the instance does not trust: no connection, the
        // cache bypasses and says why, and the source retries with backoff, not in a loop.
        let wrong = format!(
            "{named}?sslmode=verify-full&sslrootcert={}",
            root(&stranger_file)
        );
        let app = spawn_app_with(&wrong, |s| s.source = source.kind()).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (status, health) = app.get("/healthz", None).await;
        assert_eq!(
            status, 503,
            "{source:?}: the database is unreachable: {health}"
        );
        assert_eq!(health["cache"], "bypass", "{source:?}: {health}");
        let error = health["source_error"].as_str().unwrap_or_default();
        assert!(
            error.contains("certificate") && error.contains("UnknownIssuer"),
            "{source:?}: the reason names the certificate: {health}"
        );
        let metrics = app.metrics().await;
        let tries = failures(&metrics);
        // Backoff from 100 ms, doubling, with jitter: at most 8 attempts in 3 s; a loop
        // without backoff would make hundreds.
        assert!(
            (2..=8).contains(&tries),
            "{source:?}: {tries} attempts in 3 s"
        );
        let t = token(uuid_of(&pool).await, json!({}));
        assert_eq!(
            app.get("/me", Some(&t)).await.0,
            503,
            "{source:?}: the pool refuses the certificate too"
        );
        app.stop().await.unwrap();
    }
}

async fn uuid_of(pool: &sqlx::PgPool) -> nearcache_pg::UserId {
    sqlx::query_scalar("SELECT id FROM users LIMIT 1")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// libpq takes `sslmode=verify-full` with an IP address for the host when the certificate
/// names that address (an iPAddress subjectAltName), and refuses a host name the certificate
/// does not carry. So does every connection an instance opens: the pool, LISTEN, the WAL
/// source's two, the relay's. A refusal names the certificate, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_full_takes_an_ip_address_its_certificate_names_as_libpq_does() {
    let ca = authority("nearcache test CA");
    // rcgen makes an iPAddress subjectAltName of a string that parses as an address.
    let private = serving_tls(&ca, "127.0.0.1");
    let cluster = private.cluster();
    let ca_file = cluster.dir().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let ca_file = ca_file.to_str().unwrap().to_string();

    let db = TestDb::on(&private.url()).await;
    let pool = db.pool().await;
    let by_address = format!("{}?sslmode=verify-full&sslrootcert={ca_file}", db.url());
    assert!(by_address.contains("127.0.0.1"), "{by_address}");
    let by_name = by_address.replace("127.0.0.1", "localhost");

    for source in [Source::Notify, Source::Wal] {
        serves_coherently(&by_address, source, &pool).await;

        let app = spawn_app_with(&by_name, |s| s.source = source.kind()).await;
        wait_until(Duration::from_secs(5), "a refusal, said", || async {
            app.get("/healthz", None).await.1["source_error"].is_string()
        })
        .await;
        let health = app.get("/healthz", None).await.1;
        assert_eq!(health["cache"], "bypass", "{source:?}: {health}");
        let said = format!("{} {}", health["source_error"], health["problem"]);
        assert!(
            said.contains("NotValidForName") || said.contains("not valid for name"),
            "{source:?}: the reason names the certificate's names: {health}"
        );
        assert!(
            !said.contains("max_replication_slots"),
            "{source:?}: nothing about slots: {health}"
        );
        app.stop().await.unwrap();
    }

    // Behind a relay: the relay's WAL connections and the instance's pool, both by address.
    let (_, users) = seed(&pool, 1).await;
    let channel = nearcache_tests::fleet::Channel::new();
    let relay = nearcache_tests::fleet::Relay::start(&by_address, &channel, None);
    let app = spawn_app_with(&by_address, |s| crate::relay::following(s, &channel)).await;
    app.ready("coherent").await;
    let t = token(users[0].id, json!({}));
    assert_eq!(app.get("/me", Some(&t)).await.0, 200);
    update(&pool, "users", users[0].id, "name = 'Relayed over TLS'").await;
    wait_until(Duration::from_secs(5), "the relayed update", || async {
        app.get("/me", Some(&t)).await.1["user"]["name"] == "Relayed over TLS"
    })
    .await;
    assert!(all_tls(&pool, "nearcache-wal").await, "the relay uses TLS");
    app.stop().await.unwrap();
    relay.stop().await;
}
