//! In-process instances of the service on real TCP ports, and clients for them.

use std::net::SocketAddr;
use std::time::Duration;

use jsonwebtoken::{encode, EncodingKey, Header};
use nearcache_http::Key;
use nearcache_pg::UserId;
use nearcache_server::{Application, Settings, Stopped};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The HS256 secret of test instances.
pub const SECRET: &str = "nearcache-test-secret";

/// A running instance.
pub struct App {
    /// Where it listens.
    pub addr: SocketAddr,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<Stopped>>>,
}

/// Starts an instance on a free port with the HS256 secret [`SECRET`], a 1 s database
/// timeout, and whatever `configure` changes.
pub async fn spawn_app_with(database_url: &str, configure: impl FnOnce(&mut Settings)) -> App {
    let mut settings = Settings::new(database_url, Key::Secret(SECRET.as_bytes().to_vec()));
    settings.db_timeout = Duration::from_secs(1);
    configure(&mut settings);
    let app = Application::build(settings).expect("valid settings");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until_stopped(listener, async {
        let _ = stopped.await;
    }));
    App {
        addr,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        stop: Some(stop),
        task: Some(task),
    }
}

/// Starts an instance with the default settings of [`spawn_app_with`].
pub async fn spawn_app(database_url: &str) -> App {
    spawn_app_with(database_url, |_| {}).await
}

impl App {
    /// The URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GET `path` with an optional bearer token; status and JSON body (null if not JSON).
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// The text of /metrics.
    pub async fn metrics(&self) -> String {
        let res = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request sent");
        res.text().await.expect("a text body")
    }

    /// GET with a raw Authorization header.
    pub async fn get_with_header(&self, path: &str, authorization: &str) -> (u16, Value) {
        let res = self
            .client
            .get(self.url(path))
            .header("authorization", authorization)
            .send()
            .await
            .expect("request sent");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// PATCH /me with a JSON body.
    pub async fn patch_me(&self, token: &str, body: &Value) -> (u16, Value) {
        let res = self
            .client
            .patch(self.url("/me"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request sent");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Waits until /healthz says ready with the cache in `mode`.
    pub async fn ready(&self, mode: &str) {
        let what = format!("{} to be ready with cache {mode}", self.addr);
        crate::wait_until(Duration::from_secs(20), &what, || async {
            matches!(self.get("/healthz", None).await, (200, v) if v["cache"] == mode)
        })
        .await;
    }

    /// Shuts the instance down and waits for it, as SIGTERM would.
    pub async fn stop(mut self) -> anyhow::Result<Stopped> {
        self.shutdown().await
    }

    async fn shutdown(&mut self) -> anyhow::Result<Stopped> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("the instance stops within 20 s")
                .expect("the instance task did not panic"),
            None => Ok(Stopped { drained: true }),
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A token whose `sub` is `subject`, valid for ten minutes, signed with [`SECRET`].
pub fn token_for(subject: &str) -> String {
    sign(json!({"sub": subject, "exp": now() + 600}))
}

/// A token for `user`, valid for ten minutes, with `extra` claims merged in.
pub fn token(user: UserId, extra: Value) -> String {
    let exp = now() + 600;
    let mut claims = json!({"sub": user.to_string(), "exp": exp});
    if let (Some(c), Value::Object(e)) = (claims.as_object_mut(), extra) {
        c.extend(e);
    }
    sign(claims)
}

fn sign(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
