//! A loopback TCP proxy that tests and benches put between a client and its server (NATS,
//! Postgres) to cut, refuse or delay what passes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The NATS server of the tests and benches: `NATS_URL`, or the machine's on 127.0.0.1:4222.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
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
