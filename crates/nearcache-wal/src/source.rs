//! The WAL source's sessions: open a stream (connect, check, a temporary slot), then a loop
//! that routes the stream's events through the decoder and the visibility gate, heartbeats
//! through the WAL, and checks the database again on a timer.
//!
//! Which file to open: this one for the session; `heartbeat.rs` for the heartbeat; `check.rs`
//! for what the database must offer; `replication.rs` for the replication connection (`lsn.rs`
//! for the positions it speaks of); `pgoutput.rs` for the wire format; `decoder.rs` for
//! decoding (the relation cache, rows named by their key); `txn.rs` for the transaction
//! buffer; `digests.rs` for the stored values a change is compared by; `gate.rs` for the
//! visibility gate; `apply.rs` for applying a commit once it is visible; `config.rs` for the
//! settings.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nearcache_source::{
    in_flight, supervise, AbortOnDrop, Handler, SourceState, SourceStatus, Timer,
};

use crate::apply::apply;
use crate::check::{check, running_xids};
use crate::decoder::{Decoded, Decoder, Rules};
use crate::gate::{Gate, Snapshot, SnapshotError};
use crate::heartbeat::Heartbeat;
use crate::pgoutput;
use crate::replication::{Replication, ReplicationError};
use crate::WalConfig;

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("connecting")]
    Connect(#[source] nearcache_pgconn::ConnectError),
    #[error("timed out while {0}")]
    Timeout(&'static str),
    #[error("checking the database")]
    Check(#[source] tokio_postgres::Error),
    #[error("the database cannot be trusted to deliver: {0}")]
    Misconfigured(String),
    #[error("replication")]
    Replication(#[source] ReplicationError),
    #[error(transparent)]
    Decode(#[from] pgoutput::DecodeError),
    #[error("taking a snapshot to see which commits are visible")]
    Poll(#[source] tokio_postgres::Error),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("heartbeat not back through the WAL within {0:?}")]
    HeartbeatTimeout(Duration),
}

/// Runs the WAL source until `shutdown` completes. Never returns early: every failure leads to
/// [`Handler::bypass`] and a reconnect with a new slot. On shutdown the handler is put in
/// bypass too.
///
/// # Panics
/// If `config` does not validate ([`WalConfig::validate`]).
pub async fn run<H>(
    config: WalConfig,
    handler: Arc<H>,
    status: SourceStatus,
    shutdown: impl Future<Output = ()>,
) where
    H: Handler + ?Sized,
{
    config.validate().expect("invalid WAL source configuration");
    let nonce = format!("{:016x}", rand::random::<u64>());
    let backoff = (config.backoff_min, config.backoff_max);
    supervise("wal", backoff, &*handler, &status, shutdown, || {
        session(&config, &*handler, &status, &nonce)
    })
    .await;
}

/// One stream's life. Returns why it ended and whether it got as far as streaming.
async fn session<H: Handler + ?Sized>(
    config: &WalConfig,
    handler: &H,
    status: &SourceStatus,
    nonce: &str,
) -> (SessionError, bool) {
    let stream = match Stream::open(config, status).await {
        Ok(stream) => stream,
        Err(e) => return (e, false),
    };
    // The slot delivers every change committed after its consistent point; anything before
    // it is flushed away now (and the gate watches the transactions that were still running).
    handler.flush_all();
    handler.coherent();
    status.connected();
    status.set_state(SourceState::Listening);
    tracing::info!(slot = %stream.slot, publication = %config.publication, "wal source: streaming, cache coherent");
    (stream.run(config, handler, status, nonce).await, true)
}

type Query<T> = Pin<Box<dyn Future<Output = Result<T, SessionError>> + Send>>;

/// The first pause between two polls of the gate; it doubles while commits stay invisible.
const POLL_MIN: Duration = Duration::from_millis(1);
/// The longest pause between two polls while something waits.
const POLL_MAX: Duration = Duration::from_millis(50);

/// A session's stream: the control connection, the replication connection and its slot.
struct Stream {
    control: Arc<tokio_postgres::Client>,
    /// `pg_current_snapshot()`, prepared once: a poll is then one round trip.
    snapshot: tokio_postgres::Statement,
    _driver: AbortOnDrop,
    /// The replication connection; the temporary slot goes when it closes.
    repl: Replication,
    slot: String,
    rules: Rules,
    /// Transactions that held an xid once the slot was consistent.
    running: Vec<u32>,
}

impl Stream {
    /// Connects, checks the database and creates the slot; every step within the connect
    /// timeout.
    async fn open(config: &WalConfig, status: &SourceStatus) -> Result<Self, SessionError> {
        let timeout = config.connect_timeout;
        // The first host that takes writes; the replication connection goes to the same one.
        let ((control, connection), endpoint) = config
            .connect_control()
            .await
            .ok_or(SessionError::Timeout("connecting"))?
            .map_err(SessionError::Connect)?;
        let endpoint = endpoint.expect("WalConfig::new refuses settings without a TCP host");
        let control = Arc::new(control);
        let driver = AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "wal source: control connection ended");
            }
        }));
        let rules = match tokio::time::timeout(timeout, check(&control, config)).await {
            Ok(Ok(rules)) => {
                status.set_problem(None);
                rules
            }
            Ok(Err(e)) => {
                if let SessionError::Misconfigured(p) = &e {
                    status.set_problem(Some(p.clone()));
                }
                return Err(e);
            }
            Err(_) => return Err(SessionError::Timeout("checking the database")),
        };

        let snapshot = tokio::time::timeout(
            timeout,
            control.prepare("SELECT pg_current_snapshot()::text"),
        )
        .await
        .map_err(|_| SessionError::Timeout("preparing the snapshot query"))?
        .map_err(SessionError::Check)?;

        // A temporary slot belongs to the replication session that creates it: it goes when
        // the session ends, however it ends, and retains no WAL after that.
        let slot = format!("nearcache_{:016x}", rand::random::<u64>());
        let mut repl = tokio::time::timeout(
            timeout,
            Replication::connect(
                &endpoint,
                config.url.tls(),
                &config.user,
                &config.password,
                &config.database,
            ),
        )
        .await
        .map_err(|_| SessionError::Timeout("connecting for replication"))?
        .map_err(SessionError::Replication)?;
        let create =
            format!("CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT");
        match tokio::time::timeout(timeout, repl.command(&create)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // The server refused: usually every slot is taken (max_replication_slots) or
                // the role may not replicate, something an operator must fix, so it is shown,
                // not just logged. Anything else (TLS, the network) is the session's error.
                if let ReplicationError::Server(_) = e {
                    status.set_problem(Some(format!(
                        "cannot create a replication slot: {e} (free slots: max_replication_slots, max_wal_senders; the role needs REPLICATION)"
                    )));
                }
                return Err(SessionError::Replication(e));
            }
            Err(_) => return Err(SessionError::Timeout("creating the slot")),
        }
        // The slot is consistent: what committed before this point is not decoded, and a
        // transaction among those may still be invisible. Each holds its xid's lock until it
        // is visible, so listing them now catches every one.
        let running = tokio::time::timeout(timeout, running_xids(&control))
            .await
            .map_err(|_| SessionError::Timeout("listing running transactions"))??;
        tokio::time::timeout(timeout, repl.start(&slot, &config.publication))
            .await
            .map_err(|_| SessionError::Timeout("starting replication"))?
            .map_err(SessionError::Replication)?;
        status.set_problem(None);
        Ok(Self {
            control,
            snapshot,
            _driver: driver,
            repl,
            slot,
            rules,
            running,
        })
    }

    /// A snapshot's text, from the control connection.
    fn poll(&self) -> Query<Snapshot> {
        let control = self.control.clone();
        let statement = self.snapshot.clone();
        Box::pin(async move {
            let text: String = control
                .query_one(&statement, &[])
                .await
                .map_err(SessionError::Poll)?
                .get(0);
            Ok(Snapshot::parse(&text)?)
        })
    }

    /// The database's checks, again.
    fn recheck(&self, config: &WalConfig) -> Query<Rules> {
        let control = self.control.clone();
        let config = config.clone();
        Box::pin(async move { check(&control, &config).await })
    }

    /// Routes events until something ends the session: the stream to the decoder and the gate,
    /// visible commits to the handler, heartbeats and re-checks on their timers.
    async fn run<H: Handler + ?Sized>(
        mut self,
        config: &WalConfig,
        handler: &H,
        status: &SourceStatus,
        nonce: &str,
    ) -> SessionError {
        let mut decoder = Decoder::new(std::mem::take(&mut self.rules), config.digest_capacity);
        let mut gate = Gate::new(std::mem::take(&mut self.running));
        let mut ticker = tokio::time::interval(config.heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rechecks = tokio::time::interval_at(
            tokio::time::Instant::now() + config.check_interval,
            config.check_interval,
        );
        rechecks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sequence: u64 = 0;
        let mut heartbeat: Option<Heartbeat> = None;
        // The poll in flight (with the horizon it decides up to), the polls begun,
        // when the next is due and the pause before it.
        let mut poll: Option<Query<Snapshot>> = None;
        let mut horizon = 0;
        let mut begun = 0u64;
        let mut due: Option<Instant> = gate.waiting().then(Instant::now);
        let mut pause = POLL_MIN;
        let mut recheck: Option<Query<Rules>> = None;
        // The deadlines below are worked out on every turn; each timer is armed anew only
        // when its deadline moves.
        let (mut status_timer, mut poll_timer, mut heartbeat_timer) =
            (Timer::default(), Timer::default(), Timer::default());
        // When the stream may be read again (`read_pause` after the last read).
        let mut read_timer = Timer::default();
        read_timer.set(Some(tokio::time::Instant::now()));
        loop {
            // A due poll starts here rather than on a timer, which would round it up to the
            // next millisecond.
            if poll.is_none() && due.is_some_and(|d| d <= Instant::now()) {
                horizon = gate.horizon();
                begun += 1;
                poll = Some(self.poll());
                due = None;
            }
            heartbeat_timer.set(
                heartbeat
                    .as_ref()
                    .map(|h| tokio::time::Instant::from_std(h.sent + config.heartbeat_timeout)),
            );
            poll_timer.set(
                due.filter(|_| poll.is_none())
                    .map(tokio::time::Instant::from_std),
            );
            status_timer.set(Some(self.repl.status_due().into()));
            let repl = &mut self.repl;
            tokio::select! {
                read = async {
                    read_timer.wait().await;
                    repl.fill().await
                } => {
                    if let Err(e) = read {
                        return SessionError::Replication(e);
                    }
                    // One clock reading for the whole read: what it makes due is due by now.
                    let now = Instant::now();
                    read_timer.set(Some((now + config.read_pause).into()));
                    // Every whole message read, decoded where it lies.
                    loop {
                        let ours = heartbeat.as_ref().map(|h| h.message.as_str());
                        let decoded = match self.repl.next() {
                            Ok(Some(message)) => decoder.event(message, ours),
                            Ok(None) => break,
                            Err(e) => return SessionError::Replication(e),
                        };
                        match decoded {
                            Err(e) => return e.into(),
                            Ok(Decoded::Nothing) => {}
                            Ok(Decoded::Commit(commit)) if config.apply_at_decoding => {
                                let end = commit.end_lsn;
                                apply(commit, handler, status);
                                gate.keepalive(end);
                                self.confirm(&gate);
                            }
                            Ok(Decoded::Commit(commit)) => {
                                let applies = !commit.changes.is_empty();
                                gate.admit(commit);
                                if applies {
                                    // Usually visible by the time the snapshot is taken.
                                    due = Some(now);
                                    pause = POLL_MIN;
                                }
                                self.confirm(&gate);
                            }
                            Ok(Decoded::Position(lsn)) => {
                                gate.keepalive(lsn);
                                self.confirm(&gate);
                            }
                            Ok(Decoded::Heartbeat) => {
                                if let Some(h) = heartbeat.as_mut() {
                                    if gate.waiting() || poll.is_some() {
                                        h.back = Some(begun + 1);
                                        due = Some(now);
                                    } else {
                                        let rtt = h.sent.elapsed();
                                        status.heartbeat(micros(rtt));
                                        heartbeat = None;
                                    }
                                }
                            }
                        }
                    }
                    if self.repl.status_due() <= now {
                        if let Err(e) = self.send_status(config).await {
                            return e;
                        }
                    }
                }
                () = status_timer.wait() => {
                    if let Err(e) = self.send_status(config).await {
                        return e;
                    }
                }
                result = in_flight(&mut poll) => {
                    poll = None;
                    // One poll at a time: the one that ended is the last begun.
                    let done = begun;
                    let snapshot = match result {
                        Ok(s) => s,
                        Err(e) => return e,
                    };
                    status.visibility_poll();
                    let decided = gate.decide(&snapshot, horizon);
                    if decided.flush_all {
                        tracing::info!("wal source: a transaction from before the slot became visible; flushing");
                        handler.flush_all();
                    }
                    for commit in decided.visible {
                        apply(commit, handler, status);
                    }
                    self.confirm(&gate);
                    if heartbeat.as_ref().and_then(|h| h.back).is_some_and(|n| n <= done) {
                        if let Some(h) = heartbeat.take() {
                            status.heartbeat(micros(h.sent.elapsed()));
                        }
                    }
                    due = if heartbeat.as_ref().and_then(|h| h.back).is_some_and(|n| n > done) {
                        Some(Instant::now())
                    } else if gate.waiting() {
                        pause = (pause * 2).min(POLL_MAX);
                        Some(Instant::now() + pause)
                    } else {
                        None
                    };
                }
                () = poll_timer.wait() => {}
                _ = ticker.tick(), if heartbeat.is_none() => {
                    sequence += 1;
                    let message = format!("{nonce}:{sequence}");
                    heartbeat = Some(Heartbeat::send(&self.control, message));
                }
                () = heartbeat_timer.wait() => {
                    status.heartbeat_timeout();
                    return SessionError::HeartbeatTimeout(config.heartbeat_timeout);
                }
                _ = rechecks.tick(), if recheck.is_none() => {
                    recheck = Some(self.recheck(config));
                }
                result = in_flight(&mut recheck) => {
                    recheck = None;
                    status.recheck();
                    match result {
                        Ok(rules) => {
                            let changed = decoder.set_rules(rules);
                            if !changed.is_empty() {
                                tracing::info!(tables = ?changed, "wal source: attach rules changed; flushing those tables");
                                gate.flush_tables(&changed);
                                for t in &changed {
                                    handler.flush_table(t);
                                }
                            }
                        }
                        Err(e) => {
                            if let SessionError::Misconfigured(p) = &e {
                                status.set_problem(Some(p.clone()));
                            }
                            return e;
                        }
                    }
                }
            }
        }
    }

    /// Lets the slot free WAL up to the oldest commit not applied; the server hears it with the
    /// next status update.
    fn confirm(&mut self, gate: &Gate) {
        if let Some(lsn) = gate.confirmable() {
            self.repl.confirm(lsn);
        }
    }

    /// Sends a status update, within the heartbeat's timeout: a server that takes nothing more
    /// ends the session.
    async fn send_status(&mut self, config: &WalConfig) -> Result<(), SessionError> {
        match tokio::time::timeout(config.heartbeat_timeout, self.repl.send_status()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SessionError::Replication(e)),
            Err(_) => Err(SessionError::Timeout("sending a status update")),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
