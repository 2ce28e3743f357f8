//! Expiry of entries: a TTL per entry, and time-to-idle capped by that TTL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use crate::entry::Entry;

/// moka's expiry policy for our entries.
pub(crate) struct EntryExpiry {
    pub(crate) tti: Option<Duration>,
}

impl EntryExpiry {
    fn fresh(&self, ttl: Duration) -> Duration {
        self.tti.map_or(ttl, |tti| tti.min(ttl))
    }
}

impl<K, V> Expiry<K, Arc<Entry<V>>> for EntryExpiry {
    fn expire_after_create(&self, _: &K, entry: &Arc<Entry<V>>, _: Instant) -> Option<Duration> {
        Some(self.fresh(entry.ttl()))
    }

    fn expire_after_read(
        &self,
        _: &K,
        entry: &Arc<Entry<V>>,
        read_at: Instant,
        remaining: Option<Duration>,
        stored_at: Instant,
    ) -> Option<Duration> {
        match self.tti {
            // A read extends the idle timer, but never past the entry's absolute TTL.
            Some(tti) => {
                // A TTL past the clock's range (`Duration::MAX`) caps nothing.
                let cap = stored_at
                    .checked_add(entry.ttl())
                    .map_or(tti, |end| end.saturating_duration_since(read_at));
                Some(tti.min(cap))
            }
            None => remaining,
        }
    }

    fn expire_after_update(
        &self,
        _: &K,
        entry: &Arc<Entry<V>>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.fresh(entry.ttl()))
    }
}
