//! The transaction being decoded: its evictions, one per table, collected until its commit.

use crate::decoder::Evict;
use crate::gate::Commit;
use crate::replication::Lsn;

/// Past this many keys in one transaction, its changes become table flushes: a statement
/// that touches a million rows needs no million strings in memory.
const MAX_TXN_KEYS: usize = 10_000;

/// The transaction being decoded.
#[derive(Debug, Default)]
pub(crate) struct Txn {
    xid: u32,
    changes: Vec<Evict>,
    keys: usize,
    /// Tables of the transaction that will be flushed whole.
    flushed: Vec<String>,
}

impl Txn {
    pub(crate) fn begin(xid: u32) -> Self {
        Self {
            xid,
            ..Self::default()
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.flushed.is_empty()
    }

    /// Queues an eviction; past [`MAX_TXN_KEYS`], every table of the transaction is flushed
    /// instead.
    pub(crate) fn push(&mut self, e: Evict) {
        if self.flushed.iter().any(|t| t == e.table()) {
            return;
        }
        match e {
            Evict::Keys(table, keys) => {
                self.keys += keys.len();
                // One eviction per table per commit: the handler is called once for the table,
                // and a relay publishes one message for it.
                match self.changes.iter_mut().find_map(|c| match c {
                    Evict::Keys(t, k) if *t == table => Some(k),
                    _ => None,
                }) {
                    Some(batch) => batch.extend(keys),
                    None => self.changes.push(Evict::Keys(table, keys)),
                }
            }
            Evict::Table(t) => {
                self.changes.retain(|c| c.table() != t);
                self.flushed.push(t);
                return;
            }
        }
        if self.keys > MAX_TXN_KEYS {
            for c in self.changes.drain(..) {
                let t = match c {
                    Evict::Keys(t, _) | Evict::Table(t) => t,
                };
                if !self.flushed.contains(&t) {
                    self.flushed.push(t);
                }
            }
            self.keys = 0;
        }
    }

    pub(crate) fn commit(self, end_lsn: Lsn) -> Commit {
        let mut changes = self.changes;
        changes.extend(self.flushed.into_iter().map(Evict::Table));
        Commit {
            xid: self.xid,
            end_lsn,
            changes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(table: &str, keys: &[&str]) -> Evict {
        Evict::Keys(
            table.into(),
            keys.iter().map(|k| (*k).to_string()).collect(),
        )
    }

    #[test]
    fn a_commit_evicts_each_table_once_with_all_its_keys() {
        let mut txn = Txn::begin(7);
        txn.push(keys("users", &["a"]));
        txn.push(keys("organizations", &["x"]));
        txn.push(keys("users", &["b", "c"]));
        txn.push(Evict::Table("audit".into()));
        txn.push(keys("audit", &["z"]));
        let commit = txn.commit(Lsn(1));
        assert_eq!(
            commit.changes,
            [
                keys("users", &["a", "b", "c"]),
                keys("organizations", &["x"]),
                Evict::Table("audit".into()),
            ]
        );
    }

    #[test]
    fn past_the_key_limit_every_table_of_the_commit_is_flushed() {
        let mut txn = Txn::begin(7);
        txn.push(keys("organizations", &["x"]));
        for i in 0..=MAX_TXN_KEYS {
            txn.push(keys("users", &[&i.to_string()]));
        }
        txn.push(keys("users", &["late"]));
        let mut changes = txn.commit(Lsn(1)).changes;
        changes.sort_by(|a, b| a.table().cmp(b.table()));
        assert_eq!(
            changes,
            [
                Evict::Table("organizations".into()),
                Evict::Table("users".into())
            ]
        );
    }
}
