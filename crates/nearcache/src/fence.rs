//! The fence: what was invalidated after which ticket, and which entries carry which tag.
//!
//! Every invalidation and flush advances an epoch. A load takes the epoch as its ticket before
//! it reads the database; its value may be stored only if nothing it depends on was invalidated
//! at a later epoch. All of this lives behind one mutex, taken by writes (fills, invalidations,
//! flushes) and never by hits, so that checking the fence and storing the entry are one step
//! that no invalidation can fall between.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::time::{Duration, Instant};

use crate::rows::Rows;
use crate::tags::Tags;
use crate::Tag;

/// State a flush forgot, dropped outside the lock.
pub(crate) struct Forgotten<K> {
    _keys: Remembered,
    _tags: Remembered,
    _index: HashMap<Tag, Rows<K>>,
}

/// The latest invalidation's epoch of each key (or tag), by a keyed 64-bit hash of it. Two that
/// share a hash make each other's loads look invalidated: a load discarded, never a stale value
/// stored. The hash's key is random per cache, so nobody can aim a collision. In exchange a
/// record holds no copy of its key or tag, and finding one compares no text.
type Remembered = HashMap<u64, u64, BuildHasherDefault<Prehashed>>;

/// The hasher of a map whose keys are keyed hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) struct Fence<K> {
    /// Advanced by every invalidation and flush.
    epoch: u64,
    /// Tickets below this are stale: a flush happened, or the fence forgot details.
    floor: u64,
    /// The epoch of the latest invalidation of each key and tag still remembered.
    keys: Remembered,
    tags: Remembered,
    /// Keys [`Remembered`]'s hashes, at random per fence.
    names: RandomState,
    /// Which entries (key and entry id) carry each tag.
    index: HashMap<Tag, Rows<K>>,
    /// Rows of `index` in all (tag, entry pairs).
    index_rows: usize,
    memory: usize,
    /// Every `window`, invalidations older than the previous rotation are forgotten (see
    /// [`Fence::age`]): when the last rotation happened, and the epoch then.
    window: Duration,
    rotated: Instant,
    rotated_epoch: u64,
}

impl<K: Hash + Eq + Clone> Fence<K> {
    pub(crate) fn new(memory: usize, window: Duration) -> Self {
        Self {
            epoch: 0,
            floor: 0,
            keys: Remembered::default(),
            tags: Remembered::default(),
            names: RandomState::new(),
            index: HashMap::new(),
            index_rows: 0,
            memory: memory.max(1),
            window,
            rotated: Instant::now(),
            rotated_epoch: 0,
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether a value of `key` depending on `tags`, loaded under `ticket`, may be stored.
    pub(crate) fn admits(&self, key: &K, tags: &[Tag], ticket: u64) -> bool {
        ticket >= self.floor
            && self
                .keys
                .get(&self.names.hash_one(key))
                .is_none_or(|&e| e <= ticket)
            && tags.iter().all(|t| {
                self.tags
                    .get(&self.names.hash_one(t))
                    .is_none_or(|&e| e <= ticket)
            })
    }

    /// Records a write or invalidation of `key`, for a load that may be racing it.
    #[cfg(test)]
    pub(crate) fn invalidate_key(&mut self, key: &K) {
        self.advance();
        self.invalidate_all(std::slice::from_ref(key), &[], true);
    }

    /// Records an invalidation of `tag`, for a load that may be racing it; returns the entries
    /// that carried it.
    #[cfg(test)]
    pub(crate) fn invalidate_tag(&mut self, tag: &Tag) -> Option<Rows<K>> {
        self.advance();
        self.invalidate_all(&[], std::slice::from_ref(tag), true)
            .pop()
    }

    /// Begins an invalidation: a new epoch, returned for the caller to publish.
    pub(crate) fn advance(&mut self) -> u64 {
        self.age(Instant::now());
        self.epoch += 1;
        self.epoch
    }

    /// Records an invalidation of every key and tag given, at the epoch [`Fence::advance`]
    /// began (one for all), and returns the entries that carried the tags. With `remember`
    /// false (no ticket is outstanding, so no load is racing it) the keys and tags are not
    /// remembered: every ticket taken from now on is of this epoch or later, which they would
    /// admit anyway.
    pub(crate) fn invalidate_all(
        &mut self,
        keys: &[K],
        tags: &[Tag],
        remember: bool,
    ) -> Vec<Rows<K>> {
        let epoch = self.epoch;
        if remember {
            for key in keys {
                self.keys.insert(self.names.hash_one(key), epoch);
            }
        }
        let mut carried = Vec::new();
        for tag in tags {
            if remember {
                self.tags.insert(self.names.hash_one(tag), epoch);
            }
            if let Some(rows) = self.index.remove(tag) {
                self.index_rows -= rows.len();
                carried.push(rows);
            }
        }
        self.forget_if_full();
        carried
    }

    /// Records a flush: every ticket taken so far is stale. Returns the forgotten state, for
    /// the caller to drop once the lock is released, so that a flush holds the lock for O(1).
    pub(crate) fn flush(&mut self) -> Forgotten<K> {
        self.epoch += 1;
        self.floor = self.epoch;
        self.index_rows = 0;
        Forgotten {
            _keys: std::mem::take(&mut self.keys),
            _tags: std::mem::take(&mut self.tags),
            _index: std::mem::take(&mut self.index),
        }
    }

    /// Records that entry `id` of `key` carries `tags`. A tag the index already holds is
    /// shared: `tags` is made to point at the index's copy of its name, so that a tag many
    /// entries carry (an organization's) is held once, not once per entry.
    pub(crate) fn index(&mut self, key: &K, id: u64, tags: &mut Tags) {
        for n in 0..tags.len() {
            let added = match self.index.entry(tags[n].clone()) {
                Entry::Vacant(v) => {
                    v.insert(Rows::One(key.clone(), id));
                    true
                }
                Entry::Occupied(mut o) => {
                    if !std::ptr::eq(o.key().as_str(), tags[n].as_str()) {
                        tags.share(n, o.key());
                    }
                    o.get_mut().insert(key.clone(), id).is_none()
                }
            };
            if added {
                self.index_rows += 1;
            }
        }
    }

    /// Drops the index rows of entry `id` of `key`, leaving a newer entry of the key alone.
    pub(crate) fn unindex(&mut self, key: &K, id: u64, tags: &[Tag]) {
        for tag in tags {
            if let Some(entries) = self.index.get_mut(tag) {
                if entries.get(key) == Some(id) {
                    self.index_rows -= 1;
                    if entries.remove(key) {
                        self.index.remove(tag);
                    }
                }
            }
        }
    }

    /// Tags in the index, rows of the index, and keys and tags whose invalidation is
    /// remembered.
    pub(crate) fn sizes(&self) -> (usize, usize, usize) {
        debug_assert_eq!(
            self.index_rows,
            self.index.values().map(Rows::len).sum::<usize>()
        );
        (
            self.index.len(),
            self.index_rows,
            self.keys.len() + self.tags.len(),
        )
    }

    #[cfg(test)]
    pub(crate) fn indexed_tags(&self) -> usize {
        self.index.len()
    }

    /// Forgets what no load needs any more. Once a window has passed since the last rotation,
    /// the floor rises to the epoch of that rotation: a load whose ticket is older began more
    /// than a window ago, and is discarded instead of stored (always safe). Every remembered
    /// invalidation at or below the floor then admits every ticket that may still store, so it
    /// goes. The memory holds the invalidations of the last one to two windows, not of the
    /// process's life (until `memory` forces a forgetting of everything).
    pub(crate) fn age(&mut self, now: Instant) {
        if now.saturating_duration_since(self.rotated) < self.window {
            return;
        }
        self.floor = self.floor.max(self.rotated_epoch);
        let floor = self.floor;
        self.keys.retain(|_, e| *e > floor);
        self.tags.retain(|_, e| *e > floor);
        // Give back what a burst took.
        if self.keys.capacity() > 4 * self.keys.len().max(1024) {
            self.keys.shrink_to_fit();
        }
        if self.tags.capacity() > 4 * self.tags.len().max(1024) {
            self.tags.shrink_to_fit();
        }
        self.rotated = now;
        self.rotated_epoch = self.epoch;
    }

    fn forget_if_full(&mut self) {
        // Forgetting which keys were invalidated is safe only if every ticket taken before now
        // is treated as stale, which raising the floor does.
        if self.keys.len() + self.tags.len() > self.memory {
            self.floor = self.epoch;
            self.keys.clear();
            self.tags.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const WINDOW: Duration = Duration::from_secs(10);

    #[test]
    fn invalidations_older_than_a_window_are_forgotten_and_so_are_loads_that_old() {
        let mut f = Fence::<u32>::new(1000, WINDOW);
        let t0 = f.rotated;
        let old_ticket = f.epoch();
        f.invalidate_key(&1);
        let a = Tag::new("a");
        f.invalidate_tag(&a);
        let ticket = f.epoch();
        assert_eq!(f.sizes().2, 2);
        // Within the window nothing is forgotten.
        f.age(t0 + WINDOW / 2);
        assert_eq!(f.sizes().2, 2);
        assert!(!f.admits(&1, &[], old_ticket));
        // One window on: the rotation marks the epoch; both are still remembered, since a load
        // that began just before them may still be running.
        f.age(t0 + WINDOW);
        assert_eq!(f.sizes().2, 2);
        assert!(!f.admits(&1, &[], old_ticket));
        assert!(!f.admits(&2, std::slice::from_ref(&a), old_ticket));
        f.invalidate_key(&3);
        // Another window on: what came before the last rotation goes, and a load that began
        // before it (two windows ago) may no longer store; later ones are judged as before.
        f.age(t0 + 2 * WINDOW);
        assert_eq!(f.sizes().2, 1, "only key 3 is remembered");
        assert!(!f.admits(&9, &[], old_ticket));
        assert!(f.admits(&1, std::slice::from_ref(&a), ticket));
        assert!(!f.admits(&3, &[], ticket));
        assert!(f.admits(&3, &[], f.epoch()));
    }

    #[test]
    fn a_ticket_is_stale_after_an_invalidation_of_its_tags() {
        let mut f = Fence::<u32>::new(100, WINDOW);
        let t = Tag::new("a");
        let ticket = f.epoch();
        assert!(f.admits(&1, std::slice::from_ref(&t), ticket));
        f.invalidate_tag(&Tag::new("b"));
        assert!(f.admits(&1, std::slice::from_ref(&t), ticket));
        f.invalidate_tag(&t);
        assert!(!f.admits(&1, std::slice::from_ref(&t), ticket));
        // A load that started after the invalidation is fine.
        assert!(f.admits(&1, std::slice::from_ref(&t), f.epoch()));
    }

    #[test]
    fn forgetting_raises_the_floor() {
        let mut f = Fence::<u32>::new(2, WINDOW);
        let ticket = f.epoch();
        f.invalidate_key(&1);
        f.invalidate_key(&2);
        f.invalidate_key(&3);
        // Key 9 was never invalidated, but the fence no longer knows that, so it refuses.
        assert!(!f.admits(&9, &[], ticket));
        assert!(f.admits(&9, &[], f.epoch()));
    }

    #[test]
    fn unindex_leaves_a_newer_entry() {
        let mut f = Fence::<u32>::new(10, WINDOW);
        let t = Tag::new("t");
        let mut tags = Tags::from(vec![t.clone()]);
        f.index(&1, 10, &mut tags);
        f.index(&1, 11, &mut tags);
        f.unindex(&1, 10, std::slice::from_ref(&t));
        assert_eq!(f.invalidate_tag(&t).unwrap().get(&1), Some(11));
        assert_eq!(f.indexed_tags(), 0);
    }

    #[test]
    fn a_tag_several_entries_carry_is_held_once() {
        let mut f = Fence::<u32>::new(10, WINDOW);
        let (mut first, mut second) = (
            Tags::from(vec![Tag::new("users:1"), Tag::new("organizations:7")]),
            Tags::from(vec![Tag::new("users:2"), Tag::new("organizations:7")]),
        );
        let before = second.clone();
        f.index(&1, 10, &mut first);
        f.index(&2, 11, &mut second);
        assert_eq!(second, before, "the same names");
        assert!(
            std::ptr::eq(second[1].as_str(), first[1].as_str()),
            "one copy"
        );
        assert!(!std::ptr::eq(second[1].as_str(), before[1].as_str()));
        // An entry with the one tag, as a principal carries its organization's.
        let mut third = Tags::from(vec![Tag::new("organizations:7")]);
        f.index(&3, 13, &mut third);
        assert!(std::ptr::eq(third[0].as_str(), first[1].as_str()));
        let mut again = first.clone();
        f.index(&1, 12, &mut again);
        let (Tags::Many(again), Tags::Many(first)) = (again, first) else {
            panic!("two tags are held behind an Arc");
        };
        assert!(
            Arc::ptr_eq(&again, &first),
            "nothing to share: no new slice"
        );
    }
}
