//! Seed data and small helpers shared by the suite.

use std::time::Duration;

use nearcache_pg::{NewUser, Organization, PgUserRepo, User, UserRepo};
use nearcache_tests::app::{spawn_app_with, App};
use nearcache_tests::fleet::{nats_url, Channel, Proxy, Relay};
use sqlx::PgPool;

/// An organization with `n` users.
pub(crate) async fn seed(pool: &PgPool, n: usize) -> (Organization, Vec<User>) {
    let repo = PgUserRepo::new(pool.clone());
    let org = repo.create_organization("Acme", "pro").await.unwrap();
    let mut users = Vec::new();
    for i in 0..n {
        let email = format!("user{i}-{}@acme.io", uuid::Uuid::new_v4().simple());
        users.push(
            repo.create_user(&NewUser {
                org_id: org.id,
                email,
                name: format!("User {i}"),
            })
            .await
            .unwrap(),
        );
    }
    (org, users)
}

/// Runs one statement.
pub(crate) async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap();
}

/// `UPDATE <table> SET <assignments> WHERE id = <id>`, committed by SQL, not through a service.
pub(crate) async fn update(
    pool: &PgPool,
    table: &str,
    id: impl std::fmt::Display,
    assignments: &str,
) {
    exec(
        pool,
        &format!("UPDATE {table} SET {assignments} WHERE id = '{id}'"),
    )
    .await;
}

/// Terminates the listener backends of the pool's database; returns how many.
/// Each named `async fn name(source: Source)` of the calling module becomes three tests,
/// `notify::name`, `wal::name` and `nats::name` (instances behind a relay of the test's own):
/// a test that holds for every source is written once. `for_each_source!(direct: ...)` makes
/// only the first two, for tests of a source on its own.
macro_rules! for_each_source {
    (direct: $($test:ident),* $(,)?) => {
        mod notify {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::$test(crate::support::Source::Notify).await;
            })*
        }
        mod wal {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::$test(crate::support::Source::Wal).await;
            })*
        }
    };
    ($($test:ident),* $(,)?) => {
        for_each_source!(direct: $($test),*);
        mod nats {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::$test(crate::support::Source::Nats).await;
            })*
        }
    };
}

/// An invalidation source, for tests that hold for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// LISTEN/NOTIFY (`nearcache-listener`).
    Notify,
    /// Logical decoding (`nearcache-wal`).
    Wal,
    /// A relay (reading the WAL) publishing to NATS JetStream, followed by `nearcache-nats`.
    Nats,
}

impl Source {
    /// The server's setting for it.
    pub(crate) fn kind(self) -> nearcache_server::SourceKind {
        match self {
            Source::Notify => nearcache_server::SourceKind::Notify,
            Source::Wal => nearcache_server::SourceKind::Wal,
            Source::Nats => nearcache_server::SourceKind::Nats,
        }
    }

    /// The application_name of its streaming connections to Postgres (the relay's, for NATS).
    pub(crate) fn application_name(self) -> &'static str {
        match self {
            Source::Notify => "nearcache-listener",
            Source::Wal | Source::Nats => "nearcache-wal",
        }
    }

    /// How many streaming connections `instances` instances hold: one each, or the relay's.
    pub(crate) fn streams(self, instances: usize) -> i64 {
        match self {
            Source::Nats => 1,
            _ => i64::try_from(instances).unwrap(),
        }
    }
}

/// How often the tests' relays heartbeat, and how long their instances wait for one.
const RELAY_HEARTBEAT: Duration = Duration::from_millis(200);
const RELAY_SILENCE: Duration = Duration::from_millis(700);

fn start_relay(url: &str, channel: &Channel) -> Relay {
    Relay::start_with(url, channel, |c| c.heartbeat_interval = RELAY_HEARTBEAT)
}

/// Instances of the service on one database with one source; for `Nats`, a relay of the test's
/// own in front of them, each instance reaching NATS through a proxy the test can cut.
pub(crate) struct Deployment {
    // Dropped in this order: instances, then the relay, then its stream.
    apps: Vec<App>,
    proxies: Vec<Proxy>,
    relay: std::sync::Mutex<Option<Relay>>,
    channel: Option<Channel>,
    url: String,
    source: Source,
}

impl Deployment {
    /// `n` coherent instances on the database at `url`.
    pub(crate) async fn start(url: &str, source: Source, n: usize) -> Self {
        let channel = (source == Source::Nats).then(Channel::new);
        let relay = channel.as_ref().map(|c| start_relay(url, c));
        let mut d = Self {
            apps: Vec::new(),
            proxies: Vec::new(),
            relay: std::sync::Mutex::new(relay),
            channel,
            url: url.to_owned(),
            source,
        };
        for _ in 0..n {
            d.add().await;
        }
        d
    }

    /// One more instance, once coherent.
    pub(crate) async fn add(&mut self) -> &App {
        let proxy = match &self.channel {
            Some(_) => {
                let nats = nats_url();
                Some(Proxy::start(nats.trim_start_matches("nats://")).await)
            }
            None => None,
        };
        let source = self.source;
        let nats = match (&self.channel, &proxy) {
            (Some(c), Some(p)) => Some(nearcache_server::NatsSettings {
                url: p.nats_url(),
                stream: c.stream.clone(),
                prefix: Some(c.prefix.clone()),
                probe_interval: Duration::from_secs(1),
                probe_timeout: Duration::from_secs(3),
                max_lag: Duration::from_secs(1),
                security: nearcache_nats::NatsSecurity::default(),
            }),
            _ => None,
        };
        let app = spawn_app_with(&self.url, |s| {
            s.source = source.kind();
            if let Some(nats) = nats {
                s.nats = nats;
                // The relay heartbeats every RELAY_HEARTBEAT: a relay that dies silently is
                // noticed well within the tests' staleness bounds.
                s.heartbeat_timeout = RELAY_SILENCE;
            }
        })
        .await;
        app.ready("coherent").await;
        self.proxies.extend(proxy);
        self.apps.push(app);
        self.apps.last().unwrap()
    }

    /// Kills the relay, as SIGKILL would; returns whether there was one (`Nats` only).
    pub(crate) fn kill_relay(&self) -> bool {
        self.relay.lock().unwrap().take().map(Relay::kill).is_some()
    }

    /// Starts a relay again after [`Deployment::kill_relay`]: a new epoch.
    pub(crate) fn start_relay(&self) {
        let mut relay = self.relay.lock().unwrap();
        if let (None, Some(channel)) = (&*relay, &self.channel) {
            *relay = Some(start_relay(&self.url, channel));
        }
    }

    /// How many times the relay's own source began delivering (`Nats` only).
    pub(crate) fn relay_connections(&self) -> Option<u64> {
        self.relay
            .lock()
            .unwrap()
            .as_ref()
            .map(|r| r.status.source().snapshot().connections)
    }

    /// Cuts instance `i`'s connection to NATS (`Nats` only; it reconnects at once).
    pub(crate) fn cut_nats(&self, i: usize) {
        if let Some(p) = self.proxies.get(i) {
            p.cut();
        }
    }

    /// Stops the instances, then the relay (a server waits for its WAL consumers before it
    /// stops: a test that stops its cluster stops these first).
    pub(crate) async fn stop(mut self) {
        for app in std::mem::take(&mut self.apps) {
            app.stop().await.unwrap();
        }
        let relay = self.relay.lock().unwrap().take();
        if let Some(relay) = relay {
            relay.stop().await;
        }
    }
}

impl std::ops::Deref for Deployment {
    type Target = [App];
    fn deref(&self) -> &[App] {
        &self.apps
    }
}

impl<'a> IntoIterator for &'a Deployment {
    type Item = &'a App;
    type IntoIter = std::slice::Iter<'a, App>;
    fn into_iter(self) -> Self::IntoIter {
        self.apps.iter()
    }
}

/// Terminates the streaming backends of `source` on the pool's database; returns how many.
pub(crate) async fn terminate_source(pool: &PgPool, source: Source) -> i64 {
    sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE application_name = $1 AND datname = current_database()",
    )
    .bind(source.application_name())
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The value of the unlabelled sample `name` in a Prometheus exposition.
pub(crate) fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} in\n{metrics}"))
        .parse()
        .unwrap()
}

/// A user's name by id, tagged with the user's row: the loader of the tests that cache names
/// beside a source of their own.
pub(crate) async fn user_name(
    pool: &PgPool,
    id: &str,
) -> Result<nearcache::Fill<String>, nearcache::LoadError> {
    let row: Option<String> = sqlx::query_scalar("SELECT name FROM users WHERE id::text = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(nearcache::LoadError::new)?;
    Ok(nearcache::Fill::from_option(row).with_tag(nearcache::Tag::row("users", id)))
}

/// A WAL source on `url`'s `users` (heartbeat every 200 ms) driving `handler`, until
/// [`UsersSource::stop`].
pub(crate) struct UsersSource {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl UsersSource {
    /// Starts it, and waits until `cache` is coherent.
    pub(crate) async fn start<K, V>(
        url: &str,
        handler: impl nearcache_source::Handler + 'static,
        cache: &nearcache::Cache<K, V>,
    ) -> Self
    where
        K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        let mut config = nearcache_wal::WalConfig::new(url)
            .unwrap()
            .with_tables(["users"]);
        config.heartbeat_interval = Duration::from_millis(200);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(nearcache_wal::run(
            config,
            std::sync::Arc::new(handler),
            nearcache_source::SourceStatus::default(),
            async {
                let _ = stopped.await;
            },
        ));
        nearcache_tests::wait_until(Duration::from_secs(10), "coherent", || async {
            cache.mode() == nearcache::Mode::Coherent
        })
        .await;
        Self { stop, task }
    }

    /// Stops it and waits (10 s at most) for it to end.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}
