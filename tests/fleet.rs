//! Fleets in tests: relays running in-process on a stream and subject prefix of the test's own
//! (on the shared NATS server, `NATS_URL`, default 127.0.0.1:4222), and a loopback TCP proxy
//! that can cut an instance's NATS connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use nearcache_relay::{RelayConfig, RelaySource, RelayStatus};
use nearcache_wal::WalConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The NATS server of the tests.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A stream and subject prefix of one test's own; the stream is deleted when the value is
/// dropped.
pub struct Channel {
    /// The JetStream stream.
    pub stream: String,
    /// The subject prefix.
    pub prefix: String,
}

impl Channel {
    /// Fresh names.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            stream: format!("NC_TEST_{id}"),
            prefix: format!("nctest.{id}"),
        }
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        let stream = self.stream.clone();
        crate::block_on_aside(async move {
            let Ok(Ok(client)) =
                tokio::time::timeout(Duration::from_secs(2), async_nats::connect(nats_url())).await
            else {
                return;
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                async_nats::jetstream::new(client).delete_stream(&stream),
            )
            .await;
        });
    }
}

/// A relay running in-process, as the binary runs it; killed (aborted) when dropped.
pub struct Relay {
    /// Its status (role, epoch).
    pub status: RelayStatus,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Relay {
    /// A WAL relay of the database at `url`, publishing on `channel`; with `lease`, it takes
    /// the lease first (a standby otherwise).
    pub fn start(url: &str, channel: &Channel, lease: Option<Duration>) -> Self {
        Self::start_with(url, channel, |c| c.lease_ttl = lease)
    }

    /// The same, with the configuration changed by `configure` (no lease by default).
    pub fn start_with(
        url: &str,
        channel: &Channel,
        configure: impl FnOnce(&mut RelayConfig),
    ) -> Self {
        let wal = WalConfig::new(url).unwrap();
        let mut config = RelayConfig::new(RelaySource::Wal(wal), nats_url(), "unused");
        config.stream = channel.stream.clone();
        config.prefix = channel.prefix.clone();
        config.lease_ttl = None;
        config.lease_bucket = "nearcache_relays_test".into();
        configure(&mut config);
        let status = RelayStatus::default();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(nearcache_relay::run(config, status.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            status,
            stop: Some(stop),
            task,
        }
    }

    /// A graceful stop: the relay tells the instances it is in doubt, and lets its lease go.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the relay stops")
            .unwrap()
            .expect("a relay asked to stop ends well");
    }

    /// Waits for the relay to end by itself (within `within`), and returns how it ended.
    pub async fn ended(mut self, within: Duration) -> anyhow::Result<()> {
        tokio::time::timeout(within, &mut self.task)
            .await
            .expect("the relay ends by itself")
            .unwrap()
    }

    /// Gone at once, as with SIGKILL: no goodbye, the lease left to expire.
    pub fn kill(self) {
        drop(self);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A loopback TCP proxy to one address, whose open connections a test can cut.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cuts: watch::Sender<u64>,
    /// Milliseconds each chunk from the server waits before it is passed on.
    delay: Arc<AtomicU64>,
    /// While set, new connections are closed at once (the server looks down).
    refusing: Arc<AtomicBool>,
    /// Where new connections go.
    target: Arc<std::sync::Mutex<SocketAddr>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `target` (`host:port`).
    pub async fn start(target: &str) -> Self {
        let target = tokio::net::lookup_host(target)
            .await
            .unwrap()
            .next()
            .expect("an address for the proxy's target");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cuts, watching) = watch::channel(0u64);
        let delay = Arc::new(AtomicU64::new(0));
        let delays = delay.clone();
        let refusing = Arc::new(AtomicBool::new(false));
        let refuse = refusing.clone();
        let target = Arc::new(std::sync::Mutex::new(target));
        let targets = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if refuse.load(Relaxed) {
                    drop(client);
                    continue;
                }
                let mut cut = watching.clone();
                cut.mark_unchanged();
                let delay = delays.clone();
                let target = *targets.lock().unwrap();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.split();
                    let (mut server_read, mut server_write) = server.split();
                    let up = tokio::io::copy(&mut client_read, &mut server_write);
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = server_read.read(&mut buf).await?;
                            if n == 0 {
                                return std::io::Result::Ok(());
                            }
                            let ms = delay.load(Relaxed);
                            if ms > 0 {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            client_write.write_all(&buf[..n]).await?;
                        }
                    };
                    // Both sides closed as soon as one ends or the test cuts.
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            addr,
            cuts,
            delay,
            refusing,
            target,
            task,
        }
    }

    /// New connections go to `to` from now on (a name that follows the primary, after a
    /// failover); open ones stay where they are.
    pub fn retarget(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = to;
    }

    /// The server looks down: open connections are cut and new ones closed at once, until
    /// [`up`](Self::up).
    pub fn down(&self) {
        self.refusing.store(true, Relaxed);
        self.cut();
    }

    /// The server is reachable again.
    pub fn up(&self) {
        self.refusing.store(false, Relaxed);
    }

    /// Holds back everything the server sends (acknowledgements, deliveries) by `delay` per
    /// chunk read, from now on; zero passes it on at once again.
    pub fn delay_answers(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay.store(ms, Relaxed);
    }

    /// Closes every connection open through the proxy; new ones are accepted.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// `nats://` URL of the proxy.
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
