//! Fleets in tests: relays running in-process on a stream and subject prefix of the test's own
//! (on the shared NATS server, `NATS_URL`, default 127.0.0.1:4222), and a loopback TCP proxy
//! that can cut an instance's NATS connection.

use std::time::Duration;

use nearcache_relay::{RelayConfig, RelaySource, RelayStatus};
use nearcache_wal::WalConfig;
use tokio::task::JoinHandle;
pub use xtask::proxy::{nats_url, Proxy};

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
