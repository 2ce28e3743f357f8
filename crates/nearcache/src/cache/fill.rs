//! Fenced loads: a load's ticket, the fence's verdict on its value, and storing it.

use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{lock, Cache, Fenced};
use crate::entry::{nanos, Cause, Entry};
#[cfg(test)]
use crate::explore::Step;
use crate::stats::bump;
use crate::tags::Tags;
use crate::weight::weight;
use crate::{Fill, LoadError, Tag};

/// What a load produced, as its waiters see it: the result, the ticket it was loaded under and
/// the tags it depends on, so that a waiter can check the value against the fence itself.
#[derive(Clone)]
pub(super) struct Outcome<V> {
    pub(super) result: Result<Option<V>, LoadError>,
    pub(super) ticket: Ticket,
    pub(super) tags: Tags,
}

/// A load's ticket: the epoch it was taken at, and its place in the count of tickets
/// outstanding, which it holds until its last copy (the leader's, a waiter's) is dropped: while
/// a waiter may still check the outcome against the fence, invalidations are remembered for it.
#[derive(Clone)]
pub(super) struct Ticket {
    pub(super) epoch: u64,
    _held: Arc<Held>,
}

/// One ticket counted outstanding; uncounted when dropped.
struct Held(Arc<AtomicUsize>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Whether a value of `key` depending on `tags`, loaded under `ticket`, is still as fresh as
    /// a load started now: no invalidation of the key or the tags, and no flush, since.
    pub(super) fn admits(&self, key: &K, tags: &[Tag], ticket: u64) -> bool {
        lock(&self.inner.fence).admits(key, tags, ticket)
    }

    pub(super) async fn load<F, Fut>(&self, loader: F) -> Result<Fill<V>, LoadError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fill<V>, LoadError>>,
    {
        bump(&self.inner.counters.loads);
        let result = loader().await;
        if result.is_err() {
            bump(&self.inner.counters.load_errors);
        }
        result
    }

    pub(super) async fn load_and_fill<F, Fut>(&self, key: K, loader: F) -> Outcome<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fill<V>, LoadError>>,
    {
        // The ticket is taken before the loader reads anything: counted first, then the epoch
        // read (see `Fenced::invalidate` for why in this order).
        self.inner.tickets.fetch_add(1, Ordering::SeqCst);
        let held = Arc::new(Held(self.inner.tickets.clone()));
        let ticket = Ticket {
            epoch: self.inner.epoch.load(Ordering::SeqCst),
            _held: held,
        };
        step!(self, Step::TicketTaken);
        let loaded = self.load(loader).await;
        step!(self, Step::LoaderReturned);
        match loaded {
            Ok(fill) => {
                let (value, tags, ttl) = fill.into_parts();
                let ttl = ttl.unwrap_or(if value.is_some() {
                    self.inner.config.ttl
                } else {
                    self.inner.config.negative_ttl
                });
                let tags = Tags::from(tags);
                self.store_fill(&key, value.clone(), tags.clone(), ttl, ticket.epoch);
                step!(self, Step::Filled);
                Outcome {
                    result: Ok(value),
                    ticket,
                    tags,
                }
            }
            Err(e) => Outcome {
                result: Err(e),
                ticket,
                tags: Tags::None,
            },
        }
    }

    pub(super) fn store_fill(
        &self,
        key: &K,
        value: Option<V>,
        tags: Tags,
        ttl: Duration,
        ticket: u64,
    ) -> bool {
        let inner = &*self.inner;
        let replaced = {
            let mut fence = self.fenced();
            // Checking the fence and inserting happen under one lock, so that no invalidation
            // falls between them: this is the fence's whole point.
            if !inner.coherent.load(Ordering::Acquire) || !fence.admits(key, &tags, ticket) {
                drop(fence);
                bump(&inner.counters.discarded_fills);
                return false;
            }
            match self.insert_locked(&mut fence, key, value.clone(), tags.clone(), ttl) {
                Some(replaced) => replaced,
                None => return false,
            }
        };
        self.note_unwatched(&tags);
        self.after_write(key, value.as_ref(), replaced);
        true
    }

    /// Counts a stored value that no change can evict: the cache's source watches some tables
    /// (`watch_tables`) and none of the value's tags is a row of one; warns once per table (or
    /// once for values with no tag at all).
    fn note_unwatched(&self, tags: &[Tag]) {
        let inner = &*self.inner;
        let watched = inner
            .watched
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if watched.is_empty() {
            return;
        }
        if tags
            .iter()
            .filter_map(row_table)
            .any(|t| watched.iter().any(|w| &**w == t))
        {
            return;
        }
        drop(watched);
        bump(&inner.counters.unwatched_fills);
        let name = tags
            .first()
            .map_or("(no tag)", |t| row_table(t).unwrap_or(t.as_str()))
            .to_string();
        if lock(&inner.warned).insert(name.clone()) {
            tracing::warn!(
                tag = %name,
                "nearcache: a loaded value carries no tag of a table this cache's source watches; no change can evict it, only its TTL (tag it with Tag::row of a watched table)"
            );
        }
    }

    /// Stores an entry; the fence must be locked. Returns whether a live entry was replaced,
    /// or `None` when the entry alone weighs more than `max_bytes`: then it is not stored, and
    /// the key's entry, which it would have replaced, goes.
    pub(super) fn insert_locked(
        &self,
        fence: &mut Fenced<'_, K, V>,
        key: &K,
        value: Option<V>,
        tags: Tags,
        ttl: Duration,
    ) -> Option<bool> {
        let inner = &*self.inner;
        let generation = inner.generation.load(Ordering::Acquire);
        let replaced = self.unflushed(key).is_some();
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let refresh_at = AtomicU64::new(self.refresh_deadline(value.is_some()));
        let mut entry = Entry {
            value,
            id,
            tags,
            ttl_nanos: nanos(ttl),
            refresh_at,
            generation,
        };
        if let Some(max) = inner.config.max_bytes {
            if weight(inner.weigh.as_ref(), key, &entry) > max {
                bump(&inner.counters.oversized);
                inner.entries.invalidate(key);
                return None;
            }
        }
        fence.index(key, id, &mut entry.tags);
        inner.entries.insert(key.clone(), Arc::new(entry));
        Some(replaced)
    }

    pub(super) fn after_write(&self, key: &K, value: Option<&V>, replaced: bool) {
        self.process_removals();
        let cause = if replaced {
            Cause::Update
        } else {
            Cause::Insert
        };
        self.notify(cause, Some(key), value);
    }
}

/// The table of a row tag (`table:key`), if it is one.
fn row_table(tag: &Tag) -> Option<&str> {
    tag.as_str().split_once(':').map(|(table, _)| table)
}
