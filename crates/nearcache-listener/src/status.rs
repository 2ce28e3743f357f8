//! What the listener is doing, for health checks and metrics.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// The listener's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerState {
    /// Not listening (starting, reconnecting, stopped): the cache is in bypass.
    Connecting,
    /// Listening: the cache is coherent.
    Listening,
    /// Shut down.
    Stopped,
}

/// Counters and state of a listener, shared with whoever reports them. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ListenerStatus {
    inner: Arc<Counters>,
}

/// One counter or gauge of a [`StatusSnapshot`], described for an exposition such as
/// Prometheus'.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// Its name, `snake_case`, without prefix (`notifications`).
    pub name: &'static str,
    /// One sentence saying what it measures.
    pub help: &'static str,
    /// Its value in the snapshot.
    pub value: u64,
}

// Each counter is declared once: its name and help text (also its doc). The atomics, the
// snapshot's fields and the list an exposition iterates over come from this declaration.
macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        #[derive(Debug, Default)]
        struct Counters {
            state: AtomicU8,
            heartbeat_rtt_micros: AtomicU64,
            /// Why the database's installation cannot be trusted, if it cannot.
            problem: Mutex<Option<String>>,
            $($name: AtomicU64,)*
        }

        /// A snapshot of a [`ListenerStatus`].
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct StatusSnapshot {
            /// Current state.
            pub state: ListenerState,
            $(
                #[doc = $help]
                pub $name: u64,
            )*
            /// Round trip of the last heartbeat, in microseconds: how far behind the listener
            /// reads.
            pub heartbeat_rtt_micros: u64,
            /// Whether the last check of the database found its triggers missing or wrong (see
            /// [`ListenerStatus::problem`]); the cache stays in bypass meanwhile.
            pub misconfigured: bool,
        }

        impl StatusSnapshot {
            /// The monotonic counters, with their names and help texts.
            pub fn counters(&self) -> Vec<Metric> {
                vec![$(Metric { name: stringify!($name), help: $help, value: self.$name },)*]
            }
        }

        impl ListenerStatus {
            /// Current counters and state.
            pub fn snapshot(&self) -> StatusSnapshot {
                let c = &*self.inner;
                StatusSnapshot {
                    state: match c.state.load(Relaxed) {
                        1 => ListenerState::Listening,
                        2 => ListenerState::Stopped,
                        _ => ListenerState::Connecting,
                    },
                    $($name: c.$name.load(Relaxed),)*
                    heartbeat_rtt_micros: c.heartbeat_rtt_micros.load(Relaxed),
                    misconfigured: self.problem().is_some(),
                }
            }
        }
    };
}

counters! {
    connections: "Connections that reached LISTEN and passed the trigger check, the first included.",
    disconnects: "Connections lost or given up after listening.",
    notifications: "Notifications received on the cache channel.",
    malformed: "Payloads that did not parse (each answered with a flush).",
    ignored: "Notifications for tables the handler does not cache.",
    heartbeats: "Heartbeats that came back.",
    heartbeat_timeouts: "Heartbeats that did not come back in time.",
}

impl StatusSnapshot {
    /// The gauges: whether the listener listens, the last heartbeat's round trip, and whether
    /// the database's triggers are missing or wrong.
    pub fn gauges(&self) -> Vec<Metric> {
        vec![
            Metric {
                name: "listening",
                help: "1 while the listener listens (the cache may serve).",
                value: u64::from(self.state == ListenerState::Listening),
            },
            Metric {
                name: "heartbeat_rtt_microseconds",
                help: "Round trip of the last heartbeat, in microseconds.",
                value: self.heartbeat_rtt_micros,
            },
            Metric {
                name: "misconfigured",
                help: "1 while the database's triggers are missing or wrong (the cache bypasses; /healthz says why).",
                value: u64::from(self.misconfigured),
            },
        ]
    }
}

impl ListenerStatus {
    /// What the last check of the database found wrong (triggers missing, disabled or not
    /// watching every column, another channel, nearcache not installed), or `None`.
    pub fn problem(&self) -> Option<String> {
        self.inner
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_problem(&self, problem: Option<String>) {
        *self
            .inner
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = problem;
    }

    pub(crate) fn set_state(&self, state: ListenerState) {
        let v = match state {
            ListenerState::Connecting => 0,
            ListenerState::Listening => 1,
            ListenerState::Stopped => 2,
        };
        self.inner.state.store(v, Relaxed);
    }

    pub(crate) fn connected(&self) {
        self.inner.connections.fetch_add(1, Relaxed);
    }
    pub(crate) fn disconnected(&self) {
        self.inner.disconnects.fetch_add(1, Relaxed);
    }
    pub(crate) fn notification(&self) {
        self.inner.notifications.fetch_add(1, Relaxed);
    }
    pub(crate) fn malformed(&self) {
        self.inner.malformed.fetch_add(1, Relaxed);
    }
    pub(crate) fn ignored(&self) {
        self.inner.ignored.fetch_add(1, Relaxed);
    }
    pub(crate) fn heartbeat(&self, rtt_micros: u64) {
        self.inner.heartbeats.fetch_add(1, Relaxed);
        self.inner.heartbeat_rtt_micros.store(rtt_micros, Relaxed);
    }
    pub(crate) fn heartbeat_timeout(&self) {
        self.inner.heartbeat_timeouts.fetch_add(1, Relaxed);
    }
}
