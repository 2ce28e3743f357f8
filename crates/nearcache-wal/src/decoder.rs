//! Turns the stream's events into what a commit evicts: rows named by the key column each table
//! was attached with, collected per transaction, handed on at its commit.

use std::collections::HashMap;

use crate::digests::Digests;
use crate::gate::Commit;
use crate::pgoutput::{self, Change, Old, Relation, Tuple, Value};
use crate::replication::{Lsn, Message};
use crate::txn::Txn;

/// The prefix of the source's heartbeat messages (`pg_logical_emit_message`).
pub(crate) const HEARTBEAT_PREFIX: &str = "nearcache_hb";

/// What one change evicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Evict {
    /// Rows of a table, by key (`key::text`).
    Keys(String, Vec<String>),
    /// A whole table.
    Table(String),
}

impl Evict {
    pub(crate) fn table(&self) -> &str {
        match self {
            Evict::Keys(t, _) | Evict::Table(t) => t,
        }
    }
}

/// How an attached table's rows are named and which of its columns do not count
/// (`nearcache_attached`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rule {
    /// The column the table was attached with; rows are evicted by its text.
    pub(crate) key: String,
    /// Columns whose changes alone evict nothing.
    pub(crate) ignored: Vec<String>,
}

/// Each attached table's rule, by table name.
pub(crate) type Rules = HashMap<String, Rule>;

/// What an event amounted to.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// Nothing to act on yet.
    Nothing,
    /// The heartbeat the session waits for came back.
    Heartbeat,
    /// A transaction committed: its evictions, for the gate.
    Commit(Commit),
    /// The server's position between transactions.
    Position(Lsn),
}

/// What decoding a row of a relation needs, worked out when the relation arrives (and again
/// when the rules change), not for every row.
#[derive(Debug)]
struct Shape {
    /// The key column's position, if the relation has it.
    column: Option<usize>,
    /// Whether the key column is part of the replica identity (or the identity is FULL).
    identity_has_key: bool,
    /// The columns whose changes count, when the table ignores some; none when every change
    /// counts (no digest is kept).
    watched: Option<Watched>,
}

/// The positions of a table's watched columns: those of fixed-length types, always sent and
/// digested together in one hash, and the others, each digested alone since an unchanged
/// TOASTed value is not sent.
#[derive(Debug)]
struct Watched {
    fixed: Vec<usize>,
    varying: Vec<usize>,
}

impl Shape {
    fn of(r: &Relation, rules: &Rules) -> Self {
        let rule = rules.get(&r.name);
        let column = match rule {
            // Attached: by the key column it was attached with.
            Some(rule) => r.columns.iter().position(|c| c.name == rule.key),
            // Published by hand: by its replica identity, if that is one column.
            None => {
                let identity: Vec<usize> =
                    (0..r.columns.len()).filter(|&i| r.columns[i].key).collect();
                match identity.as_slice() {
                    [i] => Some(*i),
                    _ => None,
                }
            }
        };
        let watched = rule.filter(|rule| !rule.ignored.is_empty()).map(|rule| {
            let (fixed, varying) = (0..r.columns.len())
                .filter(|&i| !rule.ignored.contains(&r.columns[i].name))
                .partition(|&i| r.columns[i].fixed);
            Watched { fixed, varying }
        });
        Self {
            column,
            identity_has_key: column.is_some_and(|i| r.columns[i].key),
            watched,
        }
    }
}

/// Decodes a session's stream.
pub(crate) struct Decoder {
    relations: HashMap<u32, (Relation, Shape)>,
    rules: Rules,
    digests: Digests,
    /// The watched columns' hashes of the row being remembered (kept to spare an allocation).
    hashes: Vec<Option<u64>>,
    txn: Txn,
}

impl Decoder {
    pub(crate) fn new(rules: Rules, capacity: usize) -> Self {
        Self {
            relations: HashMap::new(),
            rules,
            digests: Digests::new(capacity),
            hashes: Vec::new(),
            txn: Txn::default(),
        }
    }

    /// Replaces the rules; returns the tables whose rule changed (or appeared or went), whose
    /// cached rows must be flushed since changes decoded before were named by the old rules.
    pub(crate) fn set_rules(&mut self, rules: Rules) -> Vec<String> {
        let mut changed: Vec<String> = rules
            .iter()
            .filter(|(t, r)| self.rules.get(*t) != Some(*r))
            .map(|(t, _)| t.clone())
            .chain(
                self.rules
                    .keys()
                    .filter(|t| !rules.contains_key(*t))
                    .cloned(),
            )
            .collect();
        changed.sort();
        for t in &changed {
            self.digests.forget_table(t);
        }
        self.rules = rules;
        for (r, shape) in self.relations.values_mut() {
            *shape = Shape::of(r, &self.rules);
        }
        changed
    }

    /// Whether a transaction is being decoded and has changes.
    pub(crate) fn in_transaction(&self) -> bool {
        !self.txn.is_empty()
    }

    /// Handles one event; `heartbeat` is the message the session waits for, if any.
    pub(crate) fn event(
        &mut self,
        message: Message<'_>,
        heartbeat: Option<&str>,
    ) -> Result<Decoded, pgoutput::DecodeError> {
        let data = match message {
            Message::XLogData(data) => data,
            Message::KeepAlive { wal_end } if !self.in_transaction() => {
                return Ok(Decoded::Position(wal_end))
            }
            Message::KeepAlive { .. } => return Ok(Decoded::Nothing),
        };
        match pgoutput::decode(data)? {
            Change::Begin { xid } => self.txn = Txn::begin(xid),
            Change::Commit { end_lsn } => {
                let txn = std::mem::take(&mut self.txn);
                return Ok(Decoded::Commit(txn.commit(Lsn(end_lsn))));
            }
            Change::Message { prefix, content } => {
                if prefix == HEARTBEAT_PREFIX.as_bytes()
                    && heartbeat.is_some_and(|h| h.as_bytes() == content)
                {
                    return Ok(Decoded::Heartbeat);
                }
            }
            change => self.change(change)?,
        }
        Ok(Decoded::Nothing)
    }

    fn change(&mut self, change: Change<'_>) -> Result<(), pgoutput::DecodeError> {
        match change {
            Change::Relation(r) => {
                let shape = Shape::of(&r, &self.rules);
                self.relations.insert(r.id, (r, shape));
            }
            Change::Insert { relation, new } => {
                let row = self.row(relation)?;
                match row.key(&new) {
                    Some(key) => {
                        self.remember(relation, &key, &new, None);
                        self.txn.push(Evict::Keys(row.table, vec![key]));
                    }
                    None => self.txn.push(Evict::Table(row.table)),
                }
            }
            Change::Update { relation, old, new } => {
                let row = self.row(relation)?;
                let new_key = row
                    .key(&new)
                    .or_else(|| old.as_ref().and_then(|o| row.old_key(o.tuple())));
                // The old key: `Same` as the new one, `Was` another, or `Unknown`.
                let old_key = match &old {
                    Some(old) => row
                        .old_key(old.tuple())
                        .map_or(OldKey::Unknown, OldKey::Was),
                    // No old tuple: the replica identity did not change. That says the key
                    // did not either only if the identity carries the key.
                    None if row.identity_has_key => OldKey::Same,
                    None => OldKey::Unknown,
                };
                match (old_key, new_key) {
                    (OldKey::Was(old_key), Some(new_key)) if old_key != new_key => {
                        // The row keeps its digest under its new key: an unchanged TOASTed
                        // value in the new tuple is known from it, so that a later change of
                        // ignored columns alone is still told apart.
                        if let Some(digest) = self.digests.remove(&row.table, &old_key) {
                            self.digests.insert(&row.table, &new_key, &digest);
                        }
                        self.remember(relation, &new_key, &new, None);
                        self.txn
                            .push(Evict::Keys(row.table, vec![old_key, new_key]));
                    }
                    (OldKey::Same | OldKey::Was(_), Some(key)) => {
                        // Only a whole old row says what the other columns were.
                        if self.remember(relation, &key, &new, old.as_ref().and_then(Old::row)) {
                            self.txn.push(Evict::Keys(row.table, vec![key]));
                        }
                    }
                    _ => self.txn.push(Evict::Table(row.table)),
                }
            }
            Change::Delete { relation, old } => {
                let row = self.row(relation)?;
                match row.old_key(&old) {
                    Some(key) => {
                        self.digests.remove(&row.table, &key);
                        self.txn.push(Evict::Keys(row.table, vec![key]));
                    }
                    None => self.txn.push(Evict::Table(row.table)),
                }
            }
            Change::Truncate { relations } => {
                for id in relations {
                    let table = self.relation(id)?.0.name.clone();
                    self.digests.forget_table(&table);
                    self.txn.push(Evict::Table(table));
                }
            }
            Change::Begin { .. }
            | Change::Commit { .. }
            | Change::Message { .. }
            | Change::Skipped => {}
        }
        Ok(())
    }

    fn relation(&self, id: u32) -> Result<&(Relation, Shape), pgoutput::DecodeError> {
        self.relations
            .get(&id)
            .ok_or_else(|| pgoutput::DecodeError(format!("change of unknown relation {id}")))
    }

    /// How rows of `relation` are named.
    fn row(&self, relation: u32) -> Result<RowNames, pgoutput::DecodeError> {
        let (r, shape) = self.relation(relation)?;
        Ok(RowNames {
            table: r.name.clone(),
            column: shape.column,
            identity_has_key: shape.identity_has_key,
        })
    }

    /// Records the watched columns of a row as decoded, and returns whether they changed (or
    /// may have: a row never seen counts as changed). Tables that ignore no column always
    /// count as changed, without a digest.
    fn remember(
        &mut self,
        relation: u32,
        key: &str,
        new: &Tuple<'_>,
        old: Option<&Tuple<'_>>,
    ) -> bool {
        let Some((
            r,
            Shape {
                watched: Some(watched),
                ..
            },
        )) = self.relations.get(&relation)
        else {
            return true;
        };
        // With a full replica identity the old row says what changed by itself. Values are
        // compared as stored (their text), not by the type's equality.
        if let Some(old) = old {
            return watched.fixed.iter().chain(&watched.varying).any(|&i| {
                new.get(i).is_none_or(|n| *n != Value::Unchanged) && old.get(i) != new.get(i)
            });
        }
        self.hashes.clear();
        if !watched.fixed.is_empty() {
            // A fixed-length value not sent (it should not happen) leaves nothing to compare.
            match self
                .digests
                .hash_all(watched.fixed.iter().map(|&i| new.get(i)))
            {
                Some(h) => self.hashes.push(Some(h)),
                None => {
                    self.digests.remove(&r.name, key);
                    return true;
                }
            }
        }
        // A tuple shorter than its relation (it should not happen) hashes as unknown.
        self.hashes
            .extend(watched.varying.iter().map(|&i| match new.get(i) {
                None | Some(Value::Unchanged) => None,
                Some(v) => Some(self.digests.hash(v)),
            }));
        self.digests.record(&r.name, key, &self.hashes)
    }
}

/// What an UPDATE says of the row's key before it.
enum OldKey {
    /// The same as after it.
    Same,
    /// This one (which may still equal the new one).
    Was(String),
    /// Nothing to go by.
    Unknown,
}

/// Where a relation's rows keep their key.
struct RowNames {
    table: String,
    /// The key column's position, if the relation has it.
    column: Option<usize>,
    /// Whether the key column is part of the replica identity (or the identity is FULL), so
    /// that old tuples (of UPDATEs that change the identity, and of DELETEs) carry it.
    identity_has_key: bool,
}

impl RowNames {
    /// The key in a new row (INSERT, UPDATE); none if absent or an unchanged TOASTed value.
    fn key(&self, tuple: &Tuple<'_>) -> Option<String> {
        match tuple.get(self.column?) {
            // `from_utf8`'s check is quicker than the lossy conversion's walk by chunks; text
            // that is not UTF-8 (it should not be) still converts lossily.
            Some(Value::Data(b)) => Some(match std::str::from_utf8(b) {
                Ok(text) => text.to_owned(),
                Err(_) => String::from_utf8_lossy(b).into_owned(),
            }),
            _ => None,
        }
    }

    /// The key in an old row, which carries only the replica identity's columns (all of them
    /// under FULL).
    fn old_key(&self, tuple: &Tuple<'_>) -> Option<String> {
        if self.identity_has_key {
            self.key(tuple)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// pgoutput's Relation message: `(name, type oid)` per column, the first the key.
    fn relation(columns: &[(&str, u32)]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend(1u32.to_be_bytes());
        m.extend(b"public\0t\0d");
        m.extend(u16::try_from(columns.len()).unwrap().to_be_bytes());
        for (i, (name, oid)) in columns.iter().enumerate() {
            m.push(u8::from(i == 0));
            m.extend(name.as_bytes());
            m.push(0);
            m.extend(oid.to_be_bytes());
            m.extend((-1i32).to_be_bytes());
        }
        m
    }

    /// An UPDATE of relation 1 with no old tuple: each value's text, `None` for unchanged
    /// TOAST.
    fn update(values: &[Option<&str>]) -> Vec<u8> {
        let mut m = vec![b'U'];
        m.extend(1u32.to_be_bytes());
        m.push(b'N');
        m.extend(u16::try_from(values.len()).unwrap().to_be_bytes());
        for v in values {
            match v {
                None => m.push(b'u'),
                Some(v) => {
                    m.push(b't');
                    m.extend(u32::try_from(v.len()).unwrap().to_be_bytes());
                    m.extend(v.as_bytes());
                }
            }
        }
        m
    }

    /// The keys a transaction of `updates` evicts.
    fn evicted(d: &mut Decoder, updates: &[Vec<u8>]) -> Vec<String> {
        let mut begin = vec![b'B'];
        begin.extend([0; 16]);
        begin.extend(7u32.to_be_bytes());
        let mut commit = vec![b'C', 0];
        commit.extend([0; 24]);
        let messages = std::iter::once(&begin).chain(updates).chain([&commit]);
        let mut keys = Vec::new();
        for m in messages {
            if let Decoded::Commit(c) = d.event(Message::XLogData(m), None).unwrap() {
                for change in c.changes {
                    match change {
                        Evict::Keys(_, k) => keys.extend(k),
                        Evict::Table(t) => keys.push(format!("table {t}")),
                    }
                }
            }
        }
        keys
    }

    #[test]
    fn each_watched_column_counts_whether_it_is_digested_with_others_or_alone() {
        let rules = Rules::from([(
            "t".to_string(),
            Rule {
                key: "k".into(),
                ignored: vec!["seen".into()],
            },
        )]);
        let mut d = Decoder::new(rules, 100);
        // int4, int8, bool, timestamptz: fixed length, one hash; text and the ignored column.
        let columns = [
            ("k", 23),
            ("n", 20),
            ("on", 16),
            ("at", 1184),
            ("body", 25),
            ("seen", 23),
        ];
        d.event(Message::XLogData(&relation(&columns)), None)
            .unwrap();
        let row = ["1", "5", "t", "2026-01-01 00:00:00+00", "hello", "0"];
        let with = |i: usize, v: &'static str| {
            let mut r: Vec<Option<&str>> = row.iter().copied().map(Some).collect();
            r[i] = Some(v);
            update(&r)
        };
        assert_eq!(evicted(&mut d, &[with(5, "0")]), ["1"], "never seen");
        assert!(evicted(&mut d, &[with(5, "1")]).is_empty(), "only ignored");
        for (i, v) in [
            (1, "6"),
            (2, "f"),
            (3, "2026-01-01 00:00:01+00"),
            (4, "bye"),
        ] {
            assert_eq!(evicted(&mut d, &[with(i, v)]), ["1"], "column {i} changed");
            assert_eq!(
                evicted(&mut d, &[update(&row.map(Some))]),
                ["1"],
                "{i} back"
            );
        }
        // Values that would run together without their lengths.
        assert_eq!(evicted(&mut d, &[with(1, "52")]), ["1"]);
        let mut shifted = row.map(Some);
        shifted[1] = Some("5");
        shifted[2] = Some("2t");
        assert_eq!(
            evicted(&mut d, &[update(&shifted)]),
            ["1"],
            "a shifted byte"
        );
        (shifted[1], shifted[2]) = (Some("5"), Some("x\u{2}y"));
        assert_eq!(evicted(&mut d, &[update(&shifted)]), ["1"]);
        (shifted[1], shifted[2]) = (Some("5\u{2}x"), Some("y"));
        assert_eq!(
            evicted(&mut d, &[update(&shifted)]),
            ["1"],
            "a shifted kind byte"
        );
        let mut unsent = row.map(Some);
        unsent[4] = None;
        assert_eq!(evicted(&mut d, &[update(&row.map(Some))]), ["1"]);
        assert!(
            evicted(&mut d, &[update(&unsent)]).is_empty(),
            "an unchanged TOASTed value keeps its hash"
        );
    }
}
