//! Connecting to NATS, holding the lease, running the source and publishing what it reports.
//!
//! Which file to open: this one for the relay's life (connect, lease, source, publish, drain on
//! shutdown) and its status; `lease.rs` for the lease; `forward.rs` for the source's handler
//! and the bounded queue; `publisher.rs` for the publish queue (batches, the window of acks,
//! heartbeats behind the backlog); `main.rs` for the binary's flags, `/healthz` and `/metrics`.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use nearcache_listener::ListenerConfig;
use nearcache_nats::CHANGES;
use nearcache_source::AbortOnDrop;
use nearcache_wal::WalConfig;
use tokio_util::sync::CancellationToken;

use crate::forward::{Event, Forward, Queue};
use crate::lease::Lease;
use crate::publisher::{heartbeat, Publisher};
pub use crate::status::{RelayStatus, Role};

/// Which source the relay reads.
#[derive(Debug, Clone)]
pub enum RelaySource {
    /// Logical decoding through a temporary slot.
    Wal(WalConfig),
    /// LISTEN/NOTIFY, fed by the triggers.
    Notify(ListenerConfig),
}

/// What a relay needs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Its source, configured as an instance's would be.
    pub source: RelaySource,
    /// The NATS server.
    pub nats_url: String,
    /// Credentials and TLS for it (none by default).
    pub nats_security: nearcache_nats::NatsSecurity,
    /// The JetStream stream to publish to (created if missing). Default `NEARCACHE`.
    pub stream: String,
    /// The subject prefix, `nearcache.<database>` by default: messages go to
    /// `<prefix>.changes`.
    pub prefix: String,
    /// How long the stream keeps messages (for replays to instances that fell behind).
    /// Default 10 minutes.
    pub retention: Duration,
    /// How often the relay publishes a heartbeat. Default 1 s.
    pub heartbeat_interval: Duration,
    /// With a lease, any number of relays may run and one publishes: the key `<prefix>`
    /// of the bucket `nearcache_relays`, with this time to live. `None`: publish at once,
    /// alone. Default 3 s.
    pub lease_ttl: Option<Duration>,
    /// The key-value bucket of the leases. Default `nearcache_relays`.
    pub lease_bucket: String,
    /// Most keys (other events count one each) waiting to be published. Past it the relay
    /// stops reading, says it is in doubt (instances bypass) and starts a new epoch, rather
    /// than grow. Default 200 000.
    pub max_queued_keys: usize,
}

impl RelayConfig {
    /// A relay of `source` for the database `database` on the NATS server at `nats_url`.
    pub fn new(source: RelaySource, nats_url: impl Into<String>, database: &str) -> Self {
        Self {
            source,
            nats_url: nats_url.into(),
            nats_security: nearcache_nats::NatsSecurity::default(),
            stream: "NEARCACHE".into(),
            prefix: format!("nearcache.{database}"),
            retention: Duration::from_secs(600),
            heartbeat_interval: Duration::from_secs(1),
            lease_ttl: Some(Duration::from_secs(3)),
            lease_bucket: "nearcache_relays".into(),
            max_queued_keys: 200_000,
        }
    }
}

/// Runs the relay until `shutdown` completes: connects to NATS (again and again, with
/// backoff), waits for the lease if there is one, and while it holds it runs the source and
/// publishes. On shutdown it says "in doubt" to the instances first, so that they bypass at
/// once rather than after the heartbeat timeout.
///
/// # Errors
/// When the relay's source stops by itself (it panicked, or its configuration does not
/// validate): there is nothing left to publish, and a supervisor should know. The relay says
/// "in doubt" and lets its lease go first.
pub async fn run(
    config: RelayConfig,
    status: RelayStatus,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let relay = async {
        let mut delay = Duration::from_millis(100);
        loop {
            status.set_role(Role::Connecting);
            match connected(&config, &status, &stop).await {
                Ok(Ended::Shutdown) => break Ok(()),
                Ok(Ended::SourceDied(why)) => {
                    break Err(anyhow::anyhow!("the relay's source stopped: {why}"));
                }
                // `publish` starts a new epoch itself after an overflow; never returned.
                Ok(Ended::Overflow) => continue,
                Ok(Ended::LeaseLost) => {
                    tracing::warn!("relay: lease lost: standing by");
                    delay = Duration::from_millis(100);
                    continue;
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    tracing::warn!(%error, "relay: NATS: retrying in {delay:?}");
                    status.0.nats_failures.fetch_add(1, Relaxed);
                    status.set_nats_error(Some(error));
                }
            }
            tokio::select! {
                () = stop.cancelled() => break Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    };
    tokio::pin!(relay);
    let result = tokio::select! {
        result = &mut relay => result,
        () = shutdown => {
            // The drain: the relay sees the token, says "in doubt" and lets its lease go.
            stop.cancel();
            relay.await
        }
    };
    status.set_role(Role::Stopped);
    match &result {
        Ok(()) => tracing::info!("relay: stopped"),
        Err(e) => tracing::error!(error = %e, "relay: stopped"),
    }
    result
}

enum Ended {
    Shutdown,
    LeaseLost,
    Overflow,
    /// The source's task ended without being asked to: why.
    SourceDied(String),
}

/// One NATS connection's life: the stream, the lease, the publishing.
async fn connected(
    config: &RelayConfig,
    status: &RelayStatus,
    stop: &CancellationToken,
) -> anyhow::Result<Ended> {
    let client = config
        .nats_security
        .options()
        .await?
        .connection_timeout(Duration::from_secs(5))
        .connect(&config.nats_url)
        .await?;
    let js = jetstream::new(client);
    let subjects = vec![format!("{}.>", config.prefix)];
    let stream = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: subjects.clone(),
            max_age: config.retention,
            ..stream::Config::default()
        })
        .await?;
    let info = stream.cached_info();
    if !info.config.subjects.iter().any(|s| subjects.contains(s)) {
        // A stream shared by several databases: add this relay's subjects to it.
        let mut updated = info.config.clone();
        updated.subjects.extend(subjects);
        js.update_stream(updated).await?;
    }
    status.set_nats_error(None);
    let lease = match config.lease_ttl {
        None => None,
        Some(ttl) => match Lease::acquire(&js, config, ttl, status, stop).await? {
            Some(lease) => Some(lease),
            None => return Ok(Ended::Shutdown),
        },
    };
    publish(config, status, &js, lease, stop).await
}

pub(crate) fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Runs the source and publishes what it reports, under a new epoch each time, until shutdown
/// or the lease is lost; a queue that overflowed starts a new epoch.
async fn publish(
    config: &RelayConfig,
    status: &RelayStatus,
    js: &jetstream::Context,
    mut lease: Option<Lease>,
    stop: &CancellationToken,
) -> anyhow::Result<Ended> {
    loop {
        let epoch = new_epoch();
        if let Some(l) = lease.as_mut() {
            l.epoch.clone_from(&epoch);
        }
        match epoch_of(config, status, js, &mut lease, stop, epoch).await {
            Ended::Overflow => {
                status.0.overflows.fetch_add(1, Relaxed);
                tracing::warn!(
                    bound = config.max_queued_keys,
                    "relay: the queue is full (NATS slower than the database's writes): instances bypass; starting a new epoch"
                );
            }
            ended @ (Ended::Shutdown | Ended::SourceDied(_)) => {
                if let Some(l) = lease {
                    l.release().await;
                }
                return Ok(ended);
            }
            ended => return Ok(ended),
        }
    }
}

/// One epoch: runs the source and publishes what it reports, in order, heartbeats queued
/// behind the changes, until shutdown, the lease is lost or the queue overflows.
async fn epoch_of(
    config: &RelayConfig,
    status: &RelayStatus,
    js: &jetstream::Context,
    lease: &mut Option<Lease>,
    stop: &CancellationToken,
    epoch: String,
) -> Ended {
    *status
        .0
        .epoch
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = epoch.clone();
    status.set_role(Role::Active);
    status.0.takeovers.fetch_add(1, Relaxed);
    tracing::info!(%epoch, prefix = %config.prefix, "relay: active: publishing");

    let (queue, mut events) = Queue::new(config.max_queued_keys, status.clone());
    let handler = Arc::new(Forward(queue.clone()));
    let stop_source = CancellationToken::new();
    let source_status = status.source().clone();
    let stopped = stop_source.clone().cancelled_owned();
    // Aborted with the relay, however it ends: a relay dropped mid-way (or killed) must not
    // leave its slot streaming to nobody.
    let mut source = AbortOnDrop(match config.source.clone() {
        RelaySource::Wal(wal) => {
            tokio::spawn(nearcache_wal::run(wal, handler, source_status, stopped))
        }
        RelaySource::Notify(listen) => tokio::spawn(nearcache_listener::run(
            listen,
            handler,
            source_status,
            stopped,
        )),
    });

    let subject = format!("{}.{CHANGES}", config.prefix);
    let mut out = Publisher::new(js, subject, epoch, status);
    out.until = lease.as_ref().map(Lease::held_until);
    out.send(heartbeat(config, status, Instant::now())).await;
    let mut beat = tokio::time::interval(config.heartbeat_interval);
    // Renewals, with a lease only.
    let mut renew = lease
        .as_ref()
        .map(|l| tokio::time::interval_at(tokio::time::Instant::now() + l.every, l.every));
    let ended = loop {
        tokio::select! {
            () = stop.cancelled() => break Ended::Shutdown,
            event = events.recv() => {
                // The queue holds a sender, so the channel stays open while this epoch runs.
                let Some(event) = event else {
                    break Ended::SourceDied("its queue closed".into());
                };
                queue.took(&event);
                if queue.overflowed() {
                    break Ended::Overflow;
                }
                let publish = async {
                    match event {
                        Event::State(coherent) => {
                            out.coherent = coherent;
                            out.lsn = None;
                            out.send(heartbeat(config, status, Instant::now())).await;
                        }
                        Event::Commit(lsn) => out.lsn = Some(lsn),
                        Event::Change(change) => out.send(change).await,
                        Event::Beat(queued) => out.send(heartbeat(config, status, queued)).await,
                    }
                };
                // A publication that hangs (NATS away) must not hide an overflow meanwhile.
                tokio::select! {
                    biased;
                    () = queue.overflow() => break Ended::Overflow,
                    () = publish => {}
                }
                if out.deposed() {
                    break Ended::LeaseLost;
                }
            }
            // A heartbeat waits its turn behind the changes queued before it.
            // An overflow is acted on here too: the event it dropped may have been the last.
            _ = beat.tick() => {
                if queue.overflowed() {
                    break Ended::Overflow;
                }
                queue.push(Event::Beat(Instant::now()));
            }
            // Only shutdown stops the source: its end is a failure.
            ended = &mut source.0 => {
                let why = match ended {
                    Ok(()) => "it returned".to_string(),
                    Err(e) if e.is_panic() => {
                        let payload = e.into_panic();
                        let message = payload
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| payload.downcast_ref::<&str>().copied())
                            .unwrap_or("no message");
                        format!("it panicked: {message}")
                    }
                    Err(e) => e.to_string(),
                };
                break Ended::SourceDied(why);
            }
            () = tick(&mut renew) => {
                if let Some(l) = lease.as_mut() {
                    if !l.renew().await {
                        break Ended::LeaseLost;
                    }
                    out.until = Some(l.held_until());
                }
            }
        }
    };
    // Tell the instances at once (unless the lease is lost: another relay may publish by now,
    // and a word from this one would make its instances flush); then stop the source.
    if !matches!(ended, Ended::LeaseLost) {
        out.coherent = false;
        out.send(heartbeat(config, status, Instant::now())).await;
    }
    out.drain().await;
    stop_source.cancel();
    if !matches!(ended, Ended::SourceDied(_)) {
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut source.0).await;
    }
    // The queue goes with its epoch: nothing it held waits any more (`nearcache_relay_queued`
    // would otherwise show its last count while the relay stands by).
    status.0.queued.store(0, Relaxed);
    ended
}

/// The next tick of `interval`; never without one.
async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}
