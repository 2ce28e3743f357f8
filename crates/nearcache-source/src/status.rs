//! What an invalidation source is doing, for health checks and metrics.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::Exposition;

/// The source's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceState {
    /// Not delivering (starting, reconnecting): the cache is in bypass.
    Connecting,
    /// Delivering every change from a known point on: the cache is coherent.
    Listening,
    /// Shut down.
    Stopped,
}

/// Counters and state of a source, shared with whoever reports them. Cheap to clone. The
/// methods that change it are for sources; readers call [`SourceStatus::snapshot`] and
/// [`SourceStatus::problem`].
#[derive(Debug, Clone, Default)]
pub struct SourceStatus {
    inner: Arc<Counters>,
}

/// One counter or gauge of a [`StatusSnapshot`], described for an exposition such as
/// Prometheus', in base units (seconds, not microseconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metric {
    /// Its name, `snake_case`, without prefix (`notifications`).
    pub name: &'static str,
    /// One sentence saying what it measures.
    pub help: &'static str,
    /// Its value in the snapshot.
    pub value: f64,
}

// Each counter is declared once: its name and help text (also its doc). The atomics, the
// snapshot's fields and the list an exposition iterates over come from this declaration.
macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        #[derive(Debug, Default)]
        struct Counters {
            state: AtomicU8,
            heartbeat_rtt_micros: AtomicU64,
            probe_rtt_micros: AtomicU64,
            notify_queue_ppb: AtomicU64,
            /// Why the database's installation cannot be trusted, if it cannot.
            problem: Mutex<Option<String>>,
            /// Why the last attempt or connection ended, until the next one delivers.
            last_error: Mutex<Option<String>>,
            $($name: AtomicU64,)*
        }

        /// A snapshot of a [`SourceStatus`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct StatusSnapshot {
            /// Current state.
            pub state: SourceState,
            $(
                #[doc = $help]
                pub $name: u64,
            )*
            /// Round trip of the last heartbeat, in microseconds: how far behind the listener
            /// reads.
            pub heartbeat_rtt_micros: u64,
            /// Round trip of the last end-to-end probe (database, relay, NATS, instance), in
            /// microseconds; 0 before the first or without probes.
            pub probe_rtt_micros: u64,
            /// How full Postgres' notification queue was at the last heartbeat, in parts per
            /// billion (LISTEN only; 0 otherwise).
            pub notify_queue_ppb: u64,
            /// Whether the last check of the database found its triggers missing or wrong (see
            /// [`SourceStatus::problem`]); the cache stays in bypass meanwhile.
            pub misconfigured: bool,
        }

        impl StatusSnapshot {
            /// The monotonic counters, with their names and help texts.
            pub fn counters(&self) -> Vec<Metric> {
                vec![$(Metric { name: stringify!($name), help: $help, value: self.$name as f64 },)*]
            }
        }

        impl SourceStatus {
            /// Current counters and state.
            pub fn snapshot(&self) -> StatusSnapshot {
                let c = &*self.inner;
                StatusSnapshot {
                    state: match c.state.load(Relaxed) {
                        1 => SourceState::Listening,
                        2 => SourceState::Stopped,
                        _ => SourceState::Connecting,
                    },
                    $($name: c.$name.load(Relaxed),)*
                    heartbeat_rtt_micros: c.heartbeat_rtt_micros.load(Relaxed),
                    probe_rtt_micros: c.probe_rtt_micros.load(Relaxed),
                    notify_queue_ppb: c.notify_queue_ppb.load(Relaxed),
                    misconfigured: self.problem().is_some(),
                }
            }
        }
    };
}

counters! {
    connections: "Connections that began delivering (LISTEN or slot ready, checks passed), the first included.",
    disconnects: "Connections lost or given up after delivering.",
    failures: "Attempts that ended before delivering (refused, TLS or authentication failures, failed checks); retried with backoff.",
    notifications: "Change messages received (notifications, decoded WAL changes).",
    malformed: "Payloads that did not parse (each answered with a flush).",
    ignored: "Notifications for tables the handler does not cache.",
    heartbeats: "Heartbeats that came back.",
    heartbeat_timeouts: "Heartbeats that did not come back in time.",
    gaps: "Messages of a relay lost beyond what its stream could replay (each answered with a flush).",
    replays: "Delivery gaps between NATS and this instance that JetStream replayed (no flush needed).",
    new_epochs: "Relay restarts or takeovers seen (each answered with a flush).",
    probes: "End-to-end probes that came back (written through the instance's own pool, read back from the relay).",
    probe_timeouts: "End-to-end probes that did not come back in time (each answered with bypass and a new subscription).",
    lag_bypasses: "Times a relay's heartbeat said it was further behind than the max lag (each answered with bypass until it caught up).",
    visibility_polls: "Snapshots taken to see whether decoded commits are visible yet (WAL source: a commit applies only once new snapshots see it).",
    rechecks: "Checks of the database repeated while delivering (publication, replica identity, triggers, attach rules).",
}

impl StatusSnapshot {
    /// Adds the gauges (`nearcache_source_<name>`) and counters
    /// (`nearcache_source_<name>_total`) to `out`, each with `labels`.
    pub fn render(&self, labels: &[(&str, &str)], out: &mut Exposition) {
        for m in self.gauges() {
            let name = format!("nearcache_source_{}", m.name);
            out.gauge(&name, m.help, labels, m.value);
        }
        for m in self.counters() {
            let name = format!("nearcache_source_{}_total", m.name);
            out.counter(&name, m.help, labels, m.value);
        }
    }

    /// The gauges: whether the listener listens, the last heartbeat's round trip, and whether
    /// the database's triggers are missing or wrong.
    pub fn gauges(&self) -> Vec<Metric> {
        vec![
            Metric {
                name: "listening",
                help: "1 while the source delivers changes (the cache may serve).",
                value: f64::from(u8::from(self.state == SourceState::Listening)),
            },
            Metric {
                name: "heartbeat_rtt_seconds",
                help: "Round trip of the last heartbeat: how far behind the source reads.",
                value: self.heartbeat_rtt_micros as f64 / 1e6,
            },
            Metric {
                name: "probe_rtt_seconds",
                help: "Round trip of the last end-to-end probe through the relay (0 without probes).",
                value: self.probe_rtt_micros as f64 / 1e6,
            },
            Metric {
                name: "notify_queue_usage",
                help: "Fraction of Postgres' notification queue in use at the last heartbeat (LISTEN: pg_notification_queue_usage()). A LISTEN session that stopped reading holds it back for the whole cluster; full, every notifying commit fails.",
                value: self.notify_queue_ppb as f64 / 1e9,
            },
            Metric {
                name: "misconfigured",
                help: "1 while the database's triggers are missing or wrong (the cache bypasses; /healthz says why).",
                value: f64::from(u8::from(self.misconfigured)),
            },
        ]
    }
}

impl SourceStatus {
    /// What the last check of the database found wrong (triggers missing, disabled or not
    /// watching every column, another channel, nearcache not installed), or `None`.
    pub fn problem(&self) -> Option<String> {
        self.inner
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records what the source's check found wrong, or that nothing is.
    pub fn set_problem(&self, problem: Option<String>) {
        *self
            .inner
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = problem;
    }

    /// Why the last attempt or connection ended (a refused connection, a certificate the TLS
    /// settings do not trust, a lost stream), until a connection delivers again; `None` then.
    pub fn last_error(&self) -> Option<String> {
        self.inner
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records why an attempt or a connection ended: a `failure` if it never delivered.
    pub fn ended(&self, error: String, delivered: bool) {
        if delivered {
            self.inner.disconnects.fetch_add(1, Relaxed);
        } else {
            self.inner.failures.fetch_add(1, Relaxed);
        }
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
    }

    /// Records the connection state.
    pub fn set_state(&self, state: SourceState) {
        let v = match state {
            SourceState::Connecting => 0,
            SourceState::Listening => 1,
            SourceState::Stopped => 2,
        };
        self.inner.state.store(v, Relaxed);
    }

    /// Counts a connection that began delivering, and forgets the last error.
    pub fn connected(&self) {
        self.inner.connections.fetch_add(1, Relaxed);
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
    /// Counts a change message.
    pub fn notification(&self) {
        self.inner.notifications.fetch_add(1, Relaxed);
    }
    /// Counts a message that could not be read (answered with a flush).
    pub fn malformed(&self) {
        self.inner.malformed.fetch_add(1, Relaxed);
    }
    /// Counts a message for a table the handler does not cache.
    pub fn ignored(&self) {
        self.inner.ignored.fetch_add(1, Relaxed);
    }
    /// Records how full Postgres' notification queue is (a fraction, 0 to 1).
    pub fn notify_queue_usage(&self, fraction: f64) {
        let ppb = (fraction.clamp(0.0, 1.0) * 1e9).round() as u64;
        self.inner.notify_queue_ppb.store(ppb, Relaxed);
    }
    /// Counts a heartbeat that came back, with its round trip.
    pub fn heartbeat(&self, rtt_micros: u64) {
        self.inner.heartbeats.fetch_add(1, Relaxed);
        self.inner.heartbeat_rtt_micros.store(rtt_micros, Relaxed);
    }
    /// Counts a gap in a relay's sequence.
    pub fn gap(&self) {
        self.inner.gaps.fetch_add(1, Relaxed);
    }
    /// Counts a delivery gap that the stream replayed.
    pub fn replay(&self) {
        self.inner.replays.fetch_add(1, Relaxed);
    }
    /// Counts a new relay epoch.
    pub fn new_epoch(&self) {
        self.inner.new_epochs.fetch_add(1, Relaxed);
    }
    /// Counts an end-to-end probe that came back, with its round trip.
    pub fn probe(&self, rtt_micros: u64) {
        self.inner.probes.fetch_add(1, Relaxed);
        self.inner.probe_rtt_micros.store(rtt_micros, Relaxed);
    }
    /// Counts an end-to-end probe that did not come back in time.
    pub fn probe_timeout(&self) {
        self.inner.probe_timeouts.fetch_add(1, Relaxed);
    }
    /// Counts a relay found further behind than the max lag.
    pub fn lagging(&self) {
        self.inner.lag_bypasses.fetch_add(1, Relaxed);
    }
    /// Counts a snapshot taken for the visibility gate.
    pub fn visibility_poll(&self) {
        self.inner.visibility_polls.fetch_add(1, Relaxed);
    }
    /// Counts a check of the database repeated while delivering.
    pub fn recheck(&self) {
        self.inner.rechecks.fetch_add(1, Relaxed);
    }
    /// Counts a heartbeat that did not come back in time.
    pub fn heartbeat_timeout(&self) {
        self.inner.heartbeat_timeouts.fetch_add(1, Relaxed);
    }
}
