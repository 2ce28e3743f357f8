//! What the WAL source remembers of each row to tell a change of watched columns from a change
//! of ignored ones alone: a hash per watched column, per table and key, bounded.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::ops::{Deref, DerefMut};

use siphasher::sip128::{Hasher128, SipHasher13};

use crate::pgoutput::Value;

/// The maps' hasher: foldhash, seeded at random, several times faster than SipHash on keys
/// like a UUID's text. It only places rows in the map; what tells a value from another is
/// [`Digests::hash`]'s keyed SipHash.
type Fast = foldhash::quality::RandomState;

/// One table's rows: a hash per watched column, by the key's [`Digests::name`].
type Rows = HashMap<u128, Hashes, Fast>;

/// How many columns' hashes a row keeps in the map's own slot.
const INLINE: usize = 7;

/// A row's hashes, one per watched column: in the map's slot up to [`INLINE`] columns, where
/// the lookup that found the row has already read them; allocated past that.
pub(crate) enum Hashes {
    Inline(u8, [u64; INLINE]),
    Heap(Box<[u64]>),
}

impl Hashes {
    fn new(hashes: &[u64]) -> Self {
        match u8::try_from(hashes.len()) {
            Ok(len) if hashes.len() <= INLINE => {
                let mut inline = [0; INLINE];
                inline[..hashes.len()].copy_from_slice(hashes);
                Hashes::Inline(len, inline)
            }
            _ => Hashes::Heap(hashes.into()),
        }
    }

    /// Every column's hash, if each was sent.
    fn sent(now: &[Option<u64>]) -> Option<Self> {
        let mut inline = [0; INLINE];
        if now.len() > INLINE {
            return now.iter().copied().collect::<Option<_>>().map(Hashes::Heap);
        }
        for (slot, hash) in inline.iter_mut().zip(now) {
            *slot = (*hash)?;
        }
        Some(Hashes::Inline(u8::try_from(now.len()).ok()?, inline))
    }
}

impl Deref for Hashes {
    type Target = [u64];

    fn deref(&self) -> &[u64] {
        match self {
            Hashes::Inline(len, hashes) => &hashes[..usize::from(*len)],
            Hashes::Heap(hashes) => hashes,
        }
    }
}

impl DerefMut for Hashes {
    fn deref_mut(&mut self) -> &mut [u64] {
        match self {
            Hashes::Inline(len, hashes) => &mut hashes[..usize::from(*len)],
            Hashes::Heap(hashes) => hashes,
        }
    }
}

/// Per table and key, a hash of each watched column's value as last seen: at most `capacity`
/// rows, all forgotten at once past it (forgetting is safe: a row without a digest counts as
/// changed).
///
/// A row is found by a 128-bit keyed hash of its key rather than by the key's text: the lookup
/// then reads the map's slot and the digest, not a third allocation to compare the text with,
/// and remembering a row allocates one thing, not two. Two keys of a table with one name would
/// share a digest; with a random key per decoder that takes about 2^64 rows to happen by chance,
/// and cannot be aimed at.
pub(crate) struct Digests {
    tables: HashMap<String, Rows, Fast>,
    rows: usize,
    capacity: usize,
    /// Keyed at random per decoder, so that nobody can choose a new value whose hash equals
    /// the old one's and have its change ignored.
    hasher: RandomState,
    /// The keys of [`Digests::name`]'s SipHash-1-3-128, at random per decoder.
    names: (u64, u64),
    /// [`Digests::hash_all`]'s buffer, kept to spare an allocation.
    scratch: Vec<u8>,
}

impl Digests {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            tables: HashMap::default(),
            rows: 0,
            capacity: capacity.max(1),
            hasher: RandomState::new(),
            names: (rand::random(), rand::random()),
            scratch: Vec::new(),
        }
    }

    /// What a row is found by: its key's keyed 128-bit hash.
    fn name(&self, key: &str) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.names.0, self.names.1);
        h.write(key.as_bytes());
        h.finish128().into()
    }

    /// A value's hash: its kind, then its bytes, in one keyed SipHash (two writes, where
    /// hashing the enum took three).
    pub(crate) fn hash(&self, value: &Value<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        match value {
            Value::Null => h.write_u8(0),
            Value::Unchanged => h.write_u8(1),
            Value::Data(bytes) => {
                h.write_u8(2);
                h.write(bytes);
            }
        }
        h.finish()
    }

    /// One hash of several values in order, or none if one is missing or was not sent: for
    /// columns that are always sent, one hash where each would take its own. The values are
    /// laid out in a buffer first (each with its kind and length, so that no two sequences
    /// run together) and hashed in one write.
    pub(crate) fn hash_all<'v, 'a: 'v>(
        &mut self,
        values: impl IntoIterator<Item = Option<&'v Value<'a>>>,
    ) -> Option<u64> {
        self.scratch.clear();
        for value in values {
            match value? {
                Value::Unchanged => return None,
                Value::Null => self.scratch.push(0),
                Value::Data(bytes) => {
                    self.scratch.push(2);
                    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
                    self.scratch.extend_from_slice(&len.to_le_bytes());
                    self.scratch.extend_from_slice(bytes);
                }
            }
        }
        let mut h = self.hasher.build_hasher();
        h.write(&self.scratch);
        Some(h.finish())
    }

    pub(crate) fn insert(&mut self, table: &str, key: &str, digest: &[u64]) {
        self.insert_named(table, self.name(key), digest);
    }

    fn insert_named(&mut self, table: &str, key: u128, digest: &[u64]) {
        if let Some(d) = self.tables.get_mut(table).and_then(|t| t.get_mut(&key)) {
            if d.len() == digest.len() {
                d.copy_from_slice(digest);
            } else {
                *d = Hashes::new(digest);
            }
            return;
        }
        if self.rows >= self.capacity {
            self.tables.clear();
            self.rows = 0;
        }
        if !self.tables.contains_key(table) {
            self.tables.insert(table.to_string(), Rows::default());
        }
        if let Some(t) = self.tables.get_mut(table) {
            t.insert(key, Hashes::new(digest));
            self.rows += 1;
        }
    }

    /// Records a row's watched columns as hashed now (`None`: an unchanged TOASTed value, not
    /// sent) and returns whether they changed, or may have: a row without a digest of this
    /// shape counts as changed. A column not sent keeps its earlier hash; a row with such a
    /// column and no earlier digest is forgotten rather than remembered with a guess. One
    /// lookup, and no allocation for a row already remembered.
    pub(crate) fn record(&mut self, table: &str, key: &str, now: &[Option<u64>]) -> bool {
        let key = self.name(key);
        if let Some(before) = self.tables.get_mut(table).and_then(|t| t.get_mut(&key)) {
            if before.len() == now.len() {
                let mut changed = false;
                for (b, n) in before.iter_mut().zip(now) {
                    if let Some(n) = *n {
                        changed |= *b != n;
                        *b = n;
                    }
                }
                return changed;
            }
        }
        match Hashes::sent(now) {
            Some(digest) => self.insert_named(table, key, &digest),
            None => {
                self.remove_named(table, key);
            }
        }
        true
    }

    /// Forgets a row's digest, and returns it.
    pub(crate) fn remove(&mut self, table: &str, key: &str) -> Option<Hashes> {
        self.remove_named(table, self.name(key))
    }

    fn remove_named(&mut self, table: &str, key: u128) -> Option<Hashes> {
        let d = self.tables.get_mut(table)?.remove(&key)?;
        self.rows -= 1;
        Some(d)
    }

    pub(crate) fn forget_table(&mut self, table: &str) {
        if let Some(t) = self.tables.remove(table) {
            self.rows -= t.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_counts_as_changed_until_a_watched_hash_is_the_same_as_before() {
        let mut d = Digests::new(10);
        assert!(d.record("users", "a", &[Some(1), Some(2)]), "never seen");
        assert!(
            !d.record("users", "a", &[Some(1), Some(2)]),
            "the same values"
        );
        assert!(
            d.record("users", "a", &[Some(1), Some(3)]),
            "one column changed"
        );
        assert!(
            !d.record("users", "a", &[None, Some(3)]),
            "a column not sent keeps its hash"
        );
        assert!(
            d.record("users", "a", &[Some(9), None]),
            "changed beside a column not sent"
        );
        assert!(
            !d.record("users", "a", &[Some(9), Some(3)]),
            "the hash kept was the last sent"
        );
        assert!(
            d.record("users", "a", &[Some(9), Some(3), Some(4)]),
            "a column was added"
        );
        assert!(
            d.record("organizations", "a", &[Some(1), Some(2)]),
            "another table's row is new"
        );
    }

    #[test]
    fn a_row_never_seen_with_a_column_not_sent_is_not_remembered() {
        let mut d = Digests::new(10);
        assert!(d.record("users", "a", &[None, Some(2)]));
        assert!(
            d.record("users", "a", &[Some(1), Some(2)]),
            "nothing to compare with"
        );
        assert!(!d.record("users", "a", &[Some(1), Some(2)]));
    }

    #[test]
    fn a_row_wider_than_the_slot_is_told_apart_the_same_way() {
        let mut d = Digests::new(10);
        let wide: Vec<Option<u64>> = (0..9).map(Some).collect();
        assert!(d.record("t", "a", &wide), "never seen");
        assert!(!d.record("t", "a", &wide), "the same values");
        let mut changed = wide.clone();
        changed[8] = Some(99);
        assert!(d.record("t", "a", &changed), "the last column changed");
        let mut unsent = changed.clone();
        unsent[0] = None;
        assert!(
            !d.record("t", "a", &unsent),
            "a column not sent keeps its hash"
        );
        assert!(d.record("t", "a", &wide[..3]), "narrower: another shape");
        assert!(!d.record("t", "a", &wide[..3]), "held in the slot now");
        assert!(d.record("t", "a", &wide), "wider again");
    }

    #[test]
    fn past_its_capacity_everything_is_forgotten_and_counts_as_changed() {
        let mut d = Digests::new(2);
        assert!(d.record("users", "a", &[Some(1)]));
        assert!(d.record("users", "b", &[Some(1)]));
        assert!(
            d.record("users", "c", &[Some(1)]),
            "a third row starts over"
        );
        assert!(d.record("users", "a", &[Some(1)]), "forgotten");
        assert!(
            !d.record("users", "c", &[Some(1)]),
            "remembered after the start over"
        );
    }
}
