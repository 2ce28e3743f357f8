//! What the WAL source remembers of each row to tell a change of watched columns from a change
//! of ignored ones alone: a hash per watched column, per table and key, bounded.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use crate::pgoutput::Value;

/// Per table and key, a hash of each watched column's value as last seen: at most `capacity`
/// rows, all forgotten at once past it (forgetting is safe: a row without a digest counts as
/// changed). Looked up by `&str`, so that a row that has one costs no allocation.
pub(crate) struct Digests {
    tables: HashMap<String, HashMap<Box<str>, Box<[u64]>>>,
    rows: usize,
    capacity: usize,
    /// Keyed at random per decoder, so that nobody can choose a new value whose hash equals
    /// the old one's and have its change ignored.
    hasher: RandomState,
}

impl Digests {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            tables: HashMap::new(),
            rows: 0,
            capacity: capacity.max(1),
            hasher: RandomState::new(),
        }
    }

    pub(crate) fn hash(&self, value: &Value<'_>) -> u64 {
        self.hasher.hash_one(value)
    }

    pub(crate) fn get(&self, table: &str, key: &str) -> Option<&[u64]> {
        self.tables.get(table)?.get(key).map(|d| &**d)
    }

    pub(crate) fn insert(&mut self, table: &str, key: &str, digest: &[u64]) {
        if let Some(d) = self.tables.get_mut(table).and_then(|t| t.get_mut(key)) {
            if d.len() == digest.len() {
                d.copy_from_slice(digest);
            } else {
                *d = digest.into();
            }
            return;
        }
        if self.rows >= self.capacity {
            self.tables.clear();
            self.rows = 0;
        }
        if !self.tables.contains_key(table) {
            self.tables.insert(table.to_string(), HashMap::new());
        }
        if let Some(t) = self.tables.get_mut(table) {
            t.insert(key.into(), digest.into());
            self.rows += 1;
        }
    }

    /// Forgets a row's digest, and returns it.
    pub(crate) fn remove(&mut self, table: &str, key: &str) -> Option<Box<[u64]>> {
        let d = self.tables.get_mut(table)?.remove(key)?;
        self.rows -= 1;
        Some(d)
    }

    pub(crate) fn forget_table(&mut self, table: &str) {
        if let Some(t) = self.tables.remove(table) {
            self.rows -= t.len();
        }
    }
}
