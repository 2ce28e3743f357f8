//! The instance side: an ordered JetStream consumer of the relay's stream, checked for epoch,
//! sequence, heartbeat and connection, driving a [`Handler`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use futures_util::StreamExt;
use nearcache_source::{
    explain, in_flight, sleep_until_opt, supervise, Handler, SourceState, SourceStatus,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::check::{BoxError, CheckError, Checker};
use crate::config::NatsConfig;
use crate::probe::{Due, Prober};
use crate::wire::{Change, Message, CHANGES};

/// What NATS' client reported.
type Cause = BoxError;

/// Why a session ended: the message says what was being done, the cause is the source (shown
/// once, by [`explain`]).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connecting to NATS")]
    Connect(#[source] Cause),
    #[error("timed out while {0}")]
    Timeout(&'static str),
    #[error("subscribing to the relay's stream {stream} (is a relay running?)")]
    Subscribe {
        stream: String,
        #[source]
        cause: Cause,
    },
    #[error("NATS connection lost")]
    Lost,
    #[error("the stream's delivery ended")]
    Ended(#[source] Cause),
    #[error("the relay was silent for {0:?}")]
    Silent(Duration),
    #[error("the end-to-end probe did not come back within {0:?} (is the relay reading this instance's database?)")]
    ProbeLost(Duration),
    #[error("checking the cached tables against how the relay reads")]
    Check(#[source] CheckError),
}

/// Follows the relay of `config` until `shutdown` completes, driving `handler`: see the
/// [crate docs](crate). Reconnects forever with backoff; the handler bypasses meanwhile.
///
/// # Panics
/// If `config` does not pass [`NatsConfig::validate`].
pub async fn run<H>(
    config: NatsConfig,
    handler: Arc<H>,
    status: SourceStatus,
    shutdown: impl std::future::Future<Output = ()>,
) where
    H: Handler + ?Sized,
{
    config
        .validate()
        .expect("invalid NATS source configuration");
    let backoff = (config.backoff_min, config.backoff_max);
    supervise("nats", backoff, &*handler, &status, shutdown, || {
        session(&config, &*handler, &status)
    })
    .await;
}

/// The relay's state as this instance has followed it.
struct Followed {
    epoch: Option<String>,
    seq: u64,
    /// Whether this instance's cache is coherent.
    coherent: bool,
    /// Whether the relay's last message said it is.
    relay_coherent: bool,
    /// Whether the relay's last heartbeat said it is further behind than `max_lag`.
    lagging: bool,
}

async fn session<H: Handler + ?Sized>(
    config: &NatsConfig,
    handler: &H,
    status: &SourceStatus,
) -> (SessionError, bool) {
    let (lost_tx, mut lost) = mpsc::unbounded_channel::<()>();
    let options = match config.security.options().await {
        Ok(options) => options,
        Err(e) => return (SessionError::Connect(e.into()), false),
    };
    let connecting = options
        .connection_timeout(config.connect_timeout)
        .event_callback(move |event| {
            let lost_tx = lost_tx.clone();
            async move {
                if matches!(event, async_nats::Event::Disconnected) {
                    let _ = lost_tx.send(());
                }
            }
        })
        .connect(&config.url);
    let client = match tokio::time::timeout(config.connect_timeout, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return (SessionError::Connect(e.into()), false),
        Err(_) => return (SessionError::Timeout("connecting to NATS"), false),
    };
    let js = async_nats::jetstream::new(client.clone());
    let subscribing = async {
        let stream = js.get_stream(&config.stream).await.map_err(Cause::from)?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_subject: client.new_inbox(),
                filter_subject: format!("{}.{CHANGES}", config.prefix),
                deliver_policy: DeliverPolicy::New,
                ..OrderedConfig::default()
            })
            .await
            .map_err(Cause::from)?;
        consumer.messages().await.map_err(Cause::from)
    };
    let mut messages = match tokio::time::timeout(config.connect_timeout, subscribing).await {
        Ok(Ok(m)) => m,
        Ok(Err(cause)) => {
            let error = SessionError::Subscribe {
                stream: config.stream.clone(),
                cause,
            };
            status.set_problem(Some(explain(&error)));
            return (error, false);
        }
        Err(_) => return (SessionError::Timeout("subscribing"), false),
    };
    // A problem the check found stays shown until a check passes.
    if config.check.is_none() {
        status.set_problem(None);
    }
    tracing::info!(stream = %config.stream, prefix = %config.prefix, "nats source: subscribed");

    let mut followed = Followed {
        epoch: None,
        seq: 0,
        coherent: false,
        relay_coherent: false,
        lagging: false,
    };
    let mut delivered = false;
    let mut checker = Checker::new(config.check.as_ref());
    let mut consumer: Option<String> = None;
    let (probe_errors, mut probe_failed) = mpsc::unbounded_channel::<BoxError>();
    let mut prober = config.probe.as_ref().map(|p| Prober::new(p, probe_errors));
    // Silence is counted from the last heartbeat, not from the last wake-up (the probe's own
    // wake-ups must not push the relay's deadline back) nor from the last change: heartbeats
    // queue behind changes, so a relay whose backlog holds them back is silent, however many
    // changes still trickle in. A relay that says how often it beats is allowed that interval
    // plus the max lag.
    let mut heard = Instant::now();
    let mut silence = config.heartbeat_timeout;
    loop {
        let deadline = Some(heard + silence);
        let (probe_at, due) = match prober.as_ref().and_then(Prober::deadline) {
            Some((at, due)) => (Some(at), Some(due)),
            None => (None, None),
        };
        let check_at = checker.deadline();
        let next = tokio::select! {
            biased;
            _ = lost.recv() => return (SessionError::Lost, delivered),
            () = sleep_until_opt(deadline) => {
                status.heartbeat_timeout();
                return (SessionError::Silent(config.heartbeat_timeout), delivered);
            }
            () = sleep_until_opt(probe_at) => {
                match (due, prober.as_mut()) {
                    (Some(Due::Late(timeout)), _) => {
                        status.probe_timeout();
                        return (SessionError::ProbeLost(timeout), delivered);
                    }
                    (Some(Due::Send), Some(p)) => p.send(),
                    _ => {}
                }
                continue;
            }
            () = sleep_until_opt(check_at) => {
                checker.start();
                continue;
            }
            result = in_flight(&mut checker.running) => {
                status.recheck();
                if let Err(e) = checker.finished(result) {
                    let error = SessionError::Check(e);
                    status.set_problem(Some(explain(&error)));
                    return (error, delivered);
                }
                status.set_problem(None);
                if checker.passed() && followed.relay_coherent && !followed.lagging && !followed.coherent {
                    become_coherent(&mut followed, handler, status, &mut delivered, prober.as_mut());
                }
                continue;
            }
            Some(error) = probe_failed.recv() => {
                let problem = format!("the end-to-end probe cannot write: {}", explain(&*error));
                tracing::warn!(%problem, "nats source: the end-to-end probe cannot write");
                status.set_problem(Some(problem));
                continue;
            }
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(m)) => {
                // The ordered consumer fills a delivery gap by recreating itself (a new name)
                // from the last stream sequence it saw: a replay, which needs no flush.
                if let Ok(info) = m.info() {
                    if consumer.as_deref().is_some_and(|c| c != info.consumer) {
                        status.replay();
                        tracing::info!("nats source: a delivery gap replayed by the stream");
                    }
                    if consumer.as_deref() != Some(info.consumer) {
                        consumer = Some(info.consumer.to_owned());
                    }
                }
                m
            }
            Some(Err(e)) => return (SessionError::Ended(e.into()), delivered),
            None => return (SessionError::Ended("no more messages".into()), delivered),
        };
        let Ok(message) = Message::parse(&message.payload) else {
            // Never trust what follows a message we could not read: start from scratch.
            status.malformed();
            tracing::warn!("nats source: a message that does not parse: flushing");
            handler.bypass();
            handler.flush_all();
            followed.coherent = false;
            if let Some(p) = prober.as_mut() {
                p.pause();
            }
            continue;
        };
        if !follow(&mut followed, &message, handler, status) {
            continue;
        }
        match (&message.change, prober.as_mut()) {
            // Probes are the source's own business, not the handler's.
            (Change::Keys { table, keys }, Some(p)) if *table == p.table() => {
                if let Some(rtt) = p.arrived(keys) {
                    status.probe(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX));
                    status.set_problem(None);
                }
            }
            (
                Change::Heartbeat {
                    reads,
                    lag_micros,
                    queued_micros,
                    every_micros,
                },
                _,
            ) => {
                heard = Instant::now();
                silence = every_micros.map_or(config.heartbeat_timeout, |every| {
                    (Duration::from_micros(every) + config.max_lag).min(config.heartbeat_timeout)
                });
                checker.heard(reads.as_ref());
                apply(&message.change, handler, status);
                let behind =
                    Duration::from_micros(lag_micros.saturating_add(queued_micros.unwrap_or(0)));
                let lagging = behind > config.max_lag;
                if lagging != followed.lagging {
                    followed.lagging = lagging;
                    if lagging {
                        status.lagging();
                        let problem = format!(
                            "the relay is {behind:.1?} behind, more than the max lag of {:?}: bypassing until it catches up",
                            config.max_lag
                        );
                        tracing::warn!("nats source: {problem}");
                        status.set_problem(Some(problem));
                    } else {
                        tracing::info!("nats source: the relay caught up");
                        status.set_problem(None);
                    }
                }
            }
            (change, _) => apply(change, handler, status),
        }
        followed.relay_coherent = message.coherent;
        match (followed.coherent, message.coherent && !followed.lagging) {
            (false, true) if checker.passed() => {
                become_coherent(
                    &mut followed,
                    handler,
                    status,
                    &mut delivered,
                    prober.as_mut(),
                );
            }
            (true, false) => {
                handler.bypass();
                followed.coherent = false;
                status.set_state(SourceState::Connecting);
                if followed.lagging {
                    tracing::warn!("nats source: the relay is behind: bypassing");
                } else {
                    tracing::warn!("nats source: the relay's source is in doubt: bypassing");
                }
            }
            _ => {}
        }
        if !followed.coherent {
            if let Some(p) = prober.as_mut() {
                p.pause();
            }
        }
    }
}

/// Everything before this point is flushed away; everything after arrives.
fn become_coherent<H: Handler + ?Sized>(
    followed: &mut Followed,
    handler: &H,
    status: &SourceStatus,
    delivered: &mut bool,
    prober: Option<&mut Prober<'_>>,
) {
    handler.flush_all();
    handler.coherent();
    followed.coherent = true;
    if !*delivered {
        *delivered = true;
        status.connected();
    }
    status.set_state(SourceState::Listening);
    if let Some(p) = prober {
        p.start();
    }
    tracing::info!(epoch = ?followed.epoch, seq = followed.seq, "nats source: cache coherent");
}

/// Checks `message` against the relay's epoch and sequence; on a new epoch or a gap the cache
/// bypasses and flushes (and becomes coherent again with the next coherent message). Returns
/// whether the message is to be applied.
fn follow<H: Handler + ?Sized>(
    followed: &mut Followed,
    message: &Message,
    handler: &H,
    status: &SourceStatus,
) -> bool {
    match &followed.epoch {
        Some(epoch) if *epoch == message.epoch => {
            if message.seq <= followed.seq {
                // A replayed message already applied.
                return false;
            }
            if message.seq != followed.seq + 1 {
                status.gap();
                tracing::warn!(
                    expected = followed.seq + 1,
                    got = message.seq,
                    "nats source: messages lost beyond replay: flushing"
                );
                handler.bypass();
                handler.flush_all();
                followed.coherent = false;
            }
        }
        Some(_) => {
            status.new_epoch();
            tracing::info!(epoch = %message.epoch, "nats source: a new relay epoch: flushing");
            handler.bypass();
            handler.flush_all();
            followed.coherent = false;
        }
        None => {}
    }
    followed.epoch = Some(message.epoch.clone());
    followed.seq = message.seq;
    true
}

fn apply<H: Handler + ?Sized>(change: &Change, handler: &H, status: &SourceStatus) {
    match change {
        Change::Keys { table, keys } => {
            status.notification();
            if !handler.invalidate(table, keys) {
                status.ignored();
            }
        }
        Change::FlushTable { table } => {
            status.notification();
            if !handler.flush_table(table) {
                status.ignored();
            }
        }
        Change::FlushAll => {
            status.notification();
            handler.flush_all();
        }
        Change::Heartbeat { lag_micros, .. } => status.heartbeat(*lag_micros),
    }
}
