//! What the relay is doing, for `/healthz` and `/metrics`: its role, its counters, the last
//! NATS error and the epoch it publishes under.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use nearcache_source::SourceStatus;

/// What the relay is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Connecting to NATS.
    Connecting,
    /// Waiting for the lease held by another relay.
    Standby,
    /// Holding the lease (or running without one) and publishing.
    Active,
    /// Shut down.
    Stopped,
}

#[derive(Debug, Default)]
pub(crate) struct Inner {
    pub(crate) role: AtomicU8,
    pub(crate) published: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
    pub(crate) takeovers: AtomicU64,
    pub(crate) queued: AtomicUsize,
    pub(crate) overflows: AtomicU64,
    pub(crate) nats_failures: AtomicU64,
    /// Why the last NATS connection failed or ended, until the next one is up.
    pub(crate) nats_error: Mutex<Option<String>>,
    pub(crate) epoch: Mutex<String>,
    pub(crate) source: SourceStatus,
}

/// The relay's counters and state, for `/healthz` and `/metrics`. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct RelayStatus(pub(crate) Arc<Inner>);

impl RelayStatus {
    /// The role now.
    pub fn role(&self) -> Role {
        match self.0.role.load(Relaxed) {
            1 => Role::Standby,
            2 => Role::Active,
            3 => Role::Stopped,
            _ => Role::Connecting,
        }
    }

    pub(crate) fn set_role(&self, role: Role) {
        let v = match role {
            Role::Connecting => 0,
            Role::Standby => 1,
            Role::Active => 2,
            Role::Stopped => 3,
        };
        self.0.role.store(v, Relaxed);
    }

    /// NATS connections that failed or ended (refused credentials or certificate included);
    /// each is retried with backoff.
    pub fn nats_failures(&self) -> u64 {
        self.0.nats_failures.load(Relaxed)
    }

    /// Why the last NATS connection failed or ended, with its causes, until the next one is
    /// up.
    pub fn nats_error(&self) -> Option<String> {
        self.0
            .nats_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_nats_error(&self, error: Option<String>) {
        *self
            .0
            .nats_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }

    /// Messages published (heartbeats included).
    pub fn published(&self) -> u64 {
        self.0.published.load(Relaxed)
    }

    /// Publications NATS did not acknowledge (instances see the gap and flush).
    pub fn publish_errors(&self) -> u64 {
        self.0.publish_errors.load(Relaxed)
    }

    /// Times this relay became the active one.
    pub fn takeovers(&self) -> u64 {
        self.0.takeovers.load(Relaxed)
    }

    /// Keys (and other events) waiting to be published.
    pub fn queued(&self) -> u64 {
        self.0.queued.load(Relaxed) as u64
    }

    /// Times the queue overflowed (and the relay started a new epoch).
    pub fn overflows(&self) -> u64 {
        self.0.overflows.load(Relaxed)
    }

    /// The current epoch, empty before the first.
    pub fn epoch(&self) -> String {
        self.0
            .epoch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The status of the relay's own source.
    pub fn source(&self) -> &SourceStatus {
        &self.0.source
    }
}
