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

#[derive(Debug, Default)]
struct Counters {
    state: AtomicU8,
    connections: AtomicU64,
    disconnects: AtomicU64,
    notifications: AtomicU64,
    malformed: AtomicU64,
    ignored: AtomicU64,
    heartbeats: AtomicU64,
    heartbeat_timeouts: AtomicU64,
    heartbeat_rtt_micros: AtomicU64,
    /// Why the database's installation cannot be trusted, if it cannot.
    problem: Mutex<Option<String>>,
}

/// A snapshot of a [`ListenerStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatusSnapshot {
    /// Current state.
    pub state: ListenerState,
    /// Successful connections (LISTEN done), the first included.
    pub connections: u64,
    /// Connections lost or given up.
    pub disconnects: u64,
    /// Notifications received on the cache channel.
    pub notifications: u64,
    /// Payloads that did not parse (each answered with a flush).
    pub malformed: u64,
    /// Notifications for tables the handler does not cache.
    pub ignored: u64,
    /// Heartbeats that came back.
    pub heartbeats: u64,
    /// Heartbeats that did not come back in time.
    pub heartbeat_timeouts: u64,
    /// Round trip of the last heartbeat, in microseconds: how far behind the listener reads.
    pub heartbeat_rtt_micros: u64,
    /// Whether the last check of the database found its triggers missing or wrong (see
    /// [`ListenerStatus::problem`]); the cache stays in bypass meanwhile.
    pub misconfigured: bool,
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
            connections: c.connections.load(Relaxed),
            disconnects: c.disconnects.load(Relaxed),
            notifications: c.notifications.load(Relaxed),
            malformed: c.malformed.load(Relaxed),
            ignored: c.ignored.load(Relaxed),
            heartbeats: c.heartbeats.load(Relaxed),
            heartbeat_timeouts: c.heartbeat_timeouts.load(Relaxed),
            heartbeat_rtt_micros: c.heartbeat_rtt_micros.load(Relaxed),
            misconfigured: self.problem().is_some(),
        }
    }

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
