//! The fleet path on a secured NATS: a `nats-server` of the test's own, with users, subject
//! permissions and TLS (certificates made here). The relay and the instances connect with
//! credentials over TLS; a wrong password or an untrusted authority is a clear error, counted
//! and retried with backoff; and what a client allowed to publish on the changes subject can do
//! once the relay is gone is bounded by the end-to-end probe.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nearcache_nats::{Change, Message, NatsSecurity, CHANGES};
use nearcache_tests::app::{spawn_app_with, token, App};
use nearcache_tests::fleet::{Channel, Relay};
use nearcache_tests::{wait_until, TestDb};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::json;

use crate::support::{seed, update};

/// The stream and subjects of the test's relay.
const STREAM: &str = "NC_SECURED";
const PREFIX: &str = "ncsecured.app";

fn authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// The subject permissions each side needs, as README shows them.
fn permissions() -> String {
    format!(
        r#"
    {{ user: relay, password: relay-secret, permissions: {{
        publish: ["{PREFIX}.>", "$JS.API.>", "$KV.nearcache_relays.>"],
        subscribe: ["_INBOX.>"] }} }}
    {{ user: instance, password: instance-secret, permissions: {{
        publish: ["$JS.API.INFO", "$JS.API.STREAM.INFO.{STREAM}", "$JS.API.CONSUMER.CREATE.{STREAM}", "$JS.API.CONSUMER.CREATE.{STREAM}.>",
                  "$JS.API.CONSUMER.DELETE.{STREAM}.>", "$JS.FC.{STREAM}.>"],
        subscribe: ["_INBOX.>"] }} }}
    {{ user: forger, password: forger-secret, permissions: {{
        publish: ["{PREFIX}.>"], subscribe: ["{PREFIX}.>"] }} }}"#
    )
}

/// A `nats-server` with JetStream, TLS and users, killed when dropped.
struct SecuredNats {
    child: Child,
    port: u16,
    dir: PathBuf,
    ca: PathBuf,
    /// The authority, to sign client certificates.
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl SecuredNats {
    /// Users with the permissions README shows, TLS without client certificates.
    fn start() -> Self {
        Self::start_with(
            &format!("authorization {{ users = [ {} ] }}", permissions()),
            false,
        )
    }

    /// `auth` as the server's authorization block; `verify`: client certificates required.
    fn start_with(auth: &str, verify: bool) -> Self {
        let dir = xtask::workspace_root()
            .join("target")
            .join("test-nats")
            .join(uuid::Uuid::new_v4().simple().to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let ca = authority("nearcache NATS test CA");
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_file = write("ca.pem", ca.pem());
        let cert_file = write("server.pem", cert.pem());
        let key_file = write("server-key.pem", key.serialize_pem());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = write(
            "nats.conf",
            format!(
                r#"listen: "127.0.0.1:{port}"
jetstream {{ store_dir: "{}" }}
tls {{ cert_file: "{}", key_file: "{}", ca_file: "{}", verify: {verify} }}
{auth}
"#,
                dir.join("js").display(),
                cert_file.display(),
                key_file.display(),
                ca_file.display(),
            ),
        );
        let binary = ["nats-server", "/usr/sbin/nats-server"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").output().is_ok())
            .expect("nats-server (Debian's package nats-server)");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(dir.join("nats.log"))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start: {}",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            dir,
            ca: ca_file,
            issuer: ca,
        }
    }

    /// A client certificate signed by the server's authority, and its key, as files.
    fn client_certificate(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_file = self.dir.join(format!("{name}.pem"));
        let key_file = self.dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    fn as_user(&self, user: &str, password: &str) -> NatsSecurity {
        NatsSecurity {
            user: Some(user.into()),
            password: Some(password.into()),
            tls_ca: Some(self.ca.clone()),
            ..NatsSecurity::default()
        }
    }
}

impl Drop for SecuredNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The test's relay on the secured NATS as `security`.
fn relay(db: &TestDb, nats: &SecuredNats, security: NatsSecurity) -> Relay {
    let channel = Channel {
        stream: STREAM.into(),
        prefix: PREFIX.into(),
    };
    let relay = Relay::start_with(db.url(), &channel, |c| {
        c.nats_url = nats.url();
        c.nats_security = security;
    });
    // Not a stream of the shared NATS: nothing to delete there.
    std::mem::forget(channel);
    relay
}

/// An instance following the test's relay on the secured NATS as `security`.
async fn instance(db: &TestDb, nats: &SecuredNats, security: NatsSecurity) -> App {
    let channel = Channel {
        stream: STREAM.into(),
        prefix: PREFIX.into(),
    };
    let url = nats.url();
    let app = spawn_app_with(db.url(), |s| {
        crate::relay::following(s, &channel);
        s.nats.url = url;
        s.nats.security = security;
    })
    .await;
    // Not a stream of the shared NATS: nothing to delete there.
    std::mem::forget(channel);
    app
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_and_instances_on_credentials_and_tls() {
    let nats = SecuredNats::start();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let relay = relay(&db, &nats, nats.as_user("relay", "relay-secret"));
    // Two instances with subscribe-side rights only.
    let apps = [
        instance(&db, &nats, nats.as_user("instance", "instance-secret")).await,
        instance(&db, &nats, nats.as_user("instance", "instance-secret")).await,
    ];
    let t = token(users[0].id, json!({}));
    for app in &apps {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = app.get("/healthz", None).await.1;
            if health["cache"] == "coherent" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not coherent within 20 s: {health}; the relay: {:?} {:?}",
                relay.status.role(),
                relay.status.nats_error()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(app.get("/me", Some(&t)).await.0, 200);
    }
    update(&pool, "users", users[0].id, "name = 'Over secured NATS'").await;
    for app in &apps {
        wait_until(Duration::from_secs(5), "the write relayed", || async {
            app.get("/me", Some(&t)).await.1["user"]["name"] == "Over secured NATS"
        })
        .await;
    }

    // A wrong password and an untrusted authority: refused, said, retried with backoff.
    let stranger = authority("someone else's CA");
    let stranger_file = nats.dir.join("stranger.pem");
    std::fs::write(&stranger_file, stranger.pem()).unwrap();
    let wrong_ca = NatsSecurity {
        tls_ca: Some(stranger_file),
        ..nats.as_user("instance", "instance-secret")
    };
    for (what, security, said) in [
        (
            "a wrong password",
            nats.as_user("instance", "wrong"),
            "authorization",
        ),
        ("an untrusted authority", wrong_ca, "certificate"),
    ] {
        let app = instance(&db, &nats, security).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let health = app.get("/healthz", None).await.1;
        assert_eq!(health["cache"], "bypass", "{what}: {health}");
        let error = health["source_error"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            error.contains(said),
            "{what}: the reason says {said}: {health}"
        );
        let tries = metric(&app.metrics().await, "nearcache_source_failures_total");
        assert!(
            (2.0..=8.0).contains(&tries),
            "{what}: {tries} attempts in 3 s"
        );
        app.stop().await.unwrap();
    }
    for app in apps {
        app.stop().await.unwrap();
    }
    relay.stop().await;
}

/// A client allowed to publish on the changes subject (here `forger`) can speak for a relay
/// that died: it follows the relay's messages and goes on with its epoch and sequence, sending
/// "all is well" heartbeats. Heartbeats cannot tell it apart; the end-to-end probe can: the
/// instance's own write never comes back, so it bypasses within the probe's interval plus its
/// timeout of the relay's death. Measured here, and bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_heartbeats_after_the_relay_died_keep_no_instance_coherent_past_the_probe() {
    let nats = SecuredNats::start();
    let db = TestDb::new().await;
    let relay = relay(&db, &nats, nats.as_user("relay", "relay-secret"));
    let apps = [
        instance(&db, &nats, nats.as_user("instance", "instance-secret")).await,
        instance(&db, &nats, nats.as_user("instance", "instance-secret")).await,
    ];
    for app in &apps {
        app.ready("coherent").await;
    }
    let forger = nats
        .as_user("forger", "forger-secret")
        .options()
        .await
        .unwrap()
        .connect(nats.url())
        .await
        .unwrap();
    let subject = format!("{PREFIX}.{CHANGES}");
    let mut heard = forger.subscribe(subject.clone()).await.unwrap();
    // The relay's last heartbeat, then its death.
    let last = loop {
        let m = futures_util::StreamExt::next(&mut heard).await.unwrap();
        let m = Message::parse(&m.payload).unwrap();
        if matches!(m.change, Change::Heartbeat { .. }) {
            break m;
        }
    };
    relay.kill();
    let died = Instant::now();
    let forging = tokio::spawn({
        let forger = forger.clone();
        async move {
            let mut seq = last.seq;
            loop {
                // Whatever the relay sent after `last` is lost to the forger: it guesses on.
                seq += 1;
                let beat = Message {
                    seq,
                    ..last.clone()
                };
                let _ = forger
                    .publish(subject.clone(), beat.to_bytes().into())
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    // The instances follow with a probe every second, back within two (`following`).
    let bound = Duration::from_secs(1 + 2);
    for app in &apps {
        wait_until(
            bound + Duration::from_secs(3),
            "bypass despite the forged heartbeats",
            || async { app.get("/healthz", None).await.1["cache"] == "bypass" },
        )
        .await;
    }
    let took = died.elapsed();
    println!("forged heartbeats: every instance bypassed {took:?} after the relay died (probe every 1 s, timeout 2 s)");
    assert!(
        took <= bound + Duration::from_secs(2),
        "bypassed {took:?} after the relay died; the probe bounds it to about {bound:?}"
    );
    for app in &apps {
        let m = app.metrics().await;
        assert!(
            metric(&m, "nearcache_source_probe_timeouts_total") >= 1.0,
            "the probe is what caught it"
        );
    }
    forging.abort();
    for app in apps {
        app.stop().await.unwrap();
    }
}

/// Mutual TLS and a token: the server asks every client for a certificate signed by its
/// authority. The relay and an instance with one are served; an instance without is refused at
/// the handshake, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_and_a_token() {
    let nats = SecuredNats::start_with("authorization { token: \"s3cret\" }", true);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, users) = seed(&pool, 1).await;
    let with_certificate = |name: &str| {
        let (cert, key) = nats.client_certificate(name);
        NatsSecurity {
            token: Some("s3cret".into()),
            tls_ca: Some(nats.ca.clone()),
            tls_cert: Some(cert),
            tls_key: Some(key),
            ..NatsSecurity::default()
        }
    };
    let relay = relay(&db, &nats, with_certificate("relay"));
    let app = instance(&db, &nats, with_certificate("instance")).await;
    app.ready("coherent").await;
    let t = token(users[0].id, json!({}));
    assert_eq!(app.get("/me", Some(&t)).await.0, 200);
    update(&pool, "users", users[0].id, "name = 'Over mutual TLS'").await;
    wait_until(Duration::from_secs(5), "the write relayed", || async {
        app.get("/me", Some(&t)).await.1["user"]["name"] == "Over mutual TLS"
    })
    .await;

    let without = NatsSecurity {
        token: Some("s3cret".into()),
        tls_ca: Some(nats.ca.clone()),
        ..NatsSecurity::default()
    };
    let refused = instance(&db, &nats, without).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let health = refused.get("/healthz", None).await.1;
    assert_eq!(health["cache"], "bypass", "{health}");
    assert!(
        health["source_error"]
            .as_str()
            .is_some_and(|e| e.contains("connecting to NATS")),
        "{health}"
    );
    refused.stop().await.unwrap();
    app.stop().await.unwrap();
    relay.stop().await;
}

/// An nkey user: the server knows only the user's public key; the instance signs the server's
/// challenge with its seed, read from a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_nkey_user() {
    let relay_key = nkeys::KeyPair::new_user();
    let instance_key = nkeys::KeyPair::new_user();
    let nats = SecuredNats::start_with(
        &format!(
            "authorization {{ users = [ {{ nkey: {} }}, {{ nkey: {} }} ] }}",
            relay_key.public_key(),
            instance_key.public_key()
        ),
        false,
    );
    let seed_file = |name: &str, key: &nkeys::KeyPair| {
        let path = nats.dir.join(format!("{name}.nk"));
        std::fs::write(&path, key.seed().unwrap()).unwrap();
        NatsSecurity {
            nkey_seed: Some(path),
            tls_ca: Some(nats.ca.clone()),
            ..NatsSecurity::default()
        }
    };
    let db = TestDb::new().await;
    let relay = relay(&db, &nats, seed_file("relay", &relay_key));
    let app = instance(&db, &nats, seed_file("instance", &instance_key)).await;
    app.ready("coherent").await;
    // A seed the server does not know.
    let stranger = instance(
        &db,
        &nats,
        seed_file("stranger", &nkeys::KeyPair::new_user()),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let health = stranger.get("/healthz", None).await.1;
    assert_eq!(health["cache"], "bypass", "{health}");
    assert!(
        health["source_error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("authorization")),
        "{health}"
    );
    stranger.stop().await.unwrap();
    app.stop().await.unwrap();
    relay.stop().await;
}
