//! The visibility gate: a decoded commit takes effect only once a snapshot taken after it was
//! decoded shows it visible.
//!
//! Postgres flushes a commit record to the WAL before it removes the transaction from the proc
//! array, and a WAL sender sends what is flushed. So a commit can be decoded while new
//! snapshots still see the row as it was: with a synchronous standby, for as long as the
//! standby takes to answer. A load that started then would read the old row after its ticket
//! passed the invalidation, and be stored. The gate holds each decoded commit until a snapshot
//! (`pg_current_snapshot()`, one per poll for every waiting commit) taken after it was decoded
//! shows its transaction complete; only then are its changes applied.
//!
//! The start-up variant: a transaction whose commit record precedes a new slot's consistent
//! point is never decoded by that slot, yet may not be visible when the source flushes and
//! declares itself coherent. Every transaction that holds an xid when the slot is ready is
//! remembered; one that becomes visible without having been decoded flushes everything.
//!
//! This module decides; it does no I/O. The session takes the snapshots.

use std::collections::VecDeque;

use crate::replication::Lsn;

use crate::decoder::Evict;

/// A snapshot as `pg_current_snapshot()::text` prints it: `xmin:xmax:xip,…`, with 64-bit
/// transaction ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

/// A snapshot that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable snapshot {0:?}")]
pub(crate) struct SnapshotError(String);

impl Snapshot {
    pub(crate) fn parse(text: &str) -> Result<Self, SnapshotError> {
        let bad = || SnapshotError(text.to_owned());
        let mut parts = text.trim().splitn(3, ':');
        let mut number = || -> Result<u64, SnapshotError> {
            parts.next().ok_or_else(bad)?.parse().map_err(|_| bad())
        };
        let (xmin, xmax) = (number()?, number()?);
        let xip = match parts.next().ok_or_else(bad)? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?,
        };
        if xmin > xmax {
            return Err(bad());
        }
        Ok(Self { xmin, xmax, xip })
    }

    /// The 64-bit transaction id whose low 32 bits are `xid`, nearest to `xmax`. A transaction
    /// that is running, or committed but not yet visible, is within 2^31 of it either way
    /// (Postgres stops assigning xids long before they wrap that far); one at or past `xmax` is
    /// possible (`xmax` is one past the latest *completed* xid).
    fn widen(&self, xid: u32) -> u64 {
        const WRAP: u64 = 1 << 32;
        const HALF: u64 = 1 << 31;
        let mut x = (self.xmax & !(WRAP - 1)) | u64::from(xid);
        if x > self.xmax + HALF && x >= WRAP {
            x -= WRAP;
        } else if x + HALF < self.xmax {
            x += WRAP;
        }
        x
    }

    /// Whether the transaction `xid` had completed (committed or aborted) when the snapshot
    /// was taken. For a transaction known to have committed, that is: its changes are visible
    /// to this snapshot and every later one.
    pub(crate) fn shows(&self, xid: u32) -> bool {
        let x = self.widen(xid);
        x < self.xmin || (x < self.xmax && !self.xip.contains(&x))
    }
}

/// A decoded transaction's changes, as they will be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Commit {
    /// Its top-level transaction id, from pgoutput's BEGIN.
    pub(crate) xid: u32,
    /// The end of its commit record.
    pub(crate) end_lsn: Lsn,
    pub(crate) changes: Vec<Evict>,
}

impl Commit {
    fn keys(&self) -> usize {
        self.changes
            .iter()
            .map(|c| match c {
                Evict::Keys(_, k) => k.len(),
                Evict::Table(_) => 0,
            })
            .sum()
    }

    /// Every change of this commit to one of `tables` becomes a flush of that table.
    fn flush(&mut self, tables: &dyn Fn(&str) -> bool) {
        for c in &mut self.changes {
            if let Evict::Keys(t, _) = c {
                if tables(t) {
                    *c = Evict::Table(std::mem::take(t));
                }
            }
        }
    }
}

/// Past this many keys waiting in all, the waiting commits' keys become table flushes: a
/// commit that stays invisible for long (a synchronous standby that is down) must not let
/// memory grow with every write behind it.
pub(crate) const MAX_WAITING_KEYS: usize = 100_000;

/// What a poll decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Decided {
    /// Commits that became visible, in the order they were decoded: apply them.
    pub(crate) visible: Vec<Commit>,
    /// A transaction that may have committed before the slot's consistent point became
    /// visible: flush everything.
    pub(crate) flush_all: bool,
}

#[derive(Debug)]
struct Waiting {
    commit: Commit,
    /// Its place in decoding order: a poll decides only commits decoded before it began.
    seq: u64,
    /// What could be confirmed to the server before it: the end of the previous commit.
    before: Option<Lsn>,
}

/// The commits decoded but not yet visible, and the transactions that may predate the slot.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    waiting: VecDeque<Waiting>,
    waiting_keys: usize,
    next_seq: u64,
    /// Transactions that held an xid when the slot became ready and have been neither decoded
    /// nor seen complete.
    startup: Vec<u32>,
    /// The end of the latest commit (or keepalive position) decoded.
    latest: Option<Lsn>,
}

impl Gate {
    /// A gate for a slot that became ready while `running` transactions held xids.
    pub(crate) fn new(running: Vec<u32>) -> Self {
        Self {
            startup: running,
            ..Self::default()
        }
    }

    /// Whether a poll is needed: something waits.
    pub(crate) fn waiting(&self) -> bool {
        !self.waiting.is_empty() || !self.startup.is_empty()
    }

    /// A poll that starts now decides the commits decoded so far: pass this to
    /// [`Gate::decide`] with the snapshot it took.
    pub(crate) fn horizon(&self) -> u64 {
        self.next_seq
    }

    /// Takes a decoded commit. One with no change to apply waits for nothing.
    pub(crate) fn admit(&mut self, commit: Commit) {
        self.startup.retain(|x| *x != commit.xid);
        if commit.changes.is_empty() {
            self.keepalive(commit.end_lsn);
            return;
        }
        self.waiting_keys += commit.keys();
        let seq = self.next_seq;
        self.next_seq += 1;
        let before = self.latest;
        self.latest = Some(commit.end_lsn);
        self.waiting.push_back(Waiting {
            commit,
            seq,
            before,
        });
        if self.waiting_keys > MAX_WAITING_KEYS {
            for w in &mut self.waiting {
                w.commit.flush(&|_| true);
            }
            self.waiting_keys = 0;
        }
    }

    /// The server's position between transactions, from a keepalive.
    pub(crate) fn keepalive(&mut self, wal_end: Lsn) {
        self.latest = Some(self.latest.map_or(wal_end, |l| l.max(wal_end)));
    }

    /// How far the slot may be confirmed: to the latest position when nothing waits, else to
    /// the end of the commit before the oldest one waiting.
    pub(crate) fn confirmable(&self) -> Option<Lsn> {
        match self.waiting.front() {
            None => self.latest,
            Some(w) => w.before,
        }
    }

    /// Decides, with a snapshot taken by a poll that began at `horizon`, every commit decoded
    /// before it; visible ones leave the gate, in decoding order.
    pub(crate) fn decide(&mut self, snapshot: &Snapshot, horizon: u64) -> Decided {
        let mut decided = Decided::default();
        let before = self.startup.len();
        self.startup.retain(|x| !snapshot.shows(*x));
        decided.flush_all = self.startup.len() != before;
        // A commit that stays keeps its `before`: the commits before it are either applied
        // now or still waiting ahead of it.
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        for w in self.waiting.drain(..) {
            if w.seq < horizon && snapshot.shows(w.commit.xid) {
                decided.visible.push(w.commit);
            } else {
                kept.push_back(w);
            }
        }
        self.waiting = kept;
        self.waiting_keys = self.waiting.iter().map(|w| w.commit.keys()).sum();
        decided
    }

    /// The rules naming `tables`' rows changed: commits still waiting flush those tables
    /// instead of evicting keys named under the old rules.
    pub(crate) fn flush_tables(&mut self, tables: &[String]) {
        for w in &mut self.waiting {
            w.commit.flush(&|t| tables.iter().any(|x| x == t));
        }
        self.waiting_keys = self.waiting.iter().map(|w| w.commit.keys()).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(text: &str) -> Snapshot {
        Snapshot::parse(text).unwrap()
    }

    fn commit(xid: u32, lsn: u64, key: &str) -> Commit {
        Commit {
            xid,
            end_lsn: Lsn(lsn),
            changes: vec![Evict::Keys("users".into(), vec![key.into()])],
        }
    }

    #[test]
    fn snapshots_parse_and_refuse_garbage() {
        assert_eq!(
            snap("10:20:12,15"),
            Snapshot {
                xmin: 10,
                xmax: 20,
                xip: vec![12, 15]
            }
        );
        assert_eq!(snap("7:7:").xip, Vec::<u64>::new());
        for bad in ["", "1:2", "a:2:", "3:2:", "1:5:x", "1:5:2,"] {
            assert!(Snapshot::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn visibility_follows_xmin_xmax_and_the_running_list() {
        let s = snap("100:110:100,105");
        assert!(s.shows(99), "below xmin");
        assert!(!s.shows(100), "running");
        assert!(s.shows(101), "completed between");
        assert!(!s.shows(105), "running");
        assert!(
            !s.shows(110),
            "at xmax: not completed when the snapshot was taken"
        );
        assert!(!s.shows(111), "past xmax");
    }

    #[test]
    fn xids_widen_across_an_epoch() {
        let epoch = 1u64 << 32;
        // xmax just past the wrap: a 32-bit xid near u32::MAX belongs to the epoch before.
        let s = snap(&format!("{}:{}:{}", epoch - 5, epoch + 3, epoch - 3));
        assert!(s.shows(u32::MAX - 10), "completed in the previous epoch");
        assert!(!s.shows(u32::MAX - 2), "running, previous epoch");
        assert!(s.shows(1), "completed, this epoch");
        assert!(!s.shows(3), "at xmax");
        // xmax just before the wrap: a small xid is past it, in the next epoch.
        let s = snap(&format!("{}:{}:", epoch - 10, epoch - 2));
        assert!(!s.shows(0), "next epoch, not yet completed");
        assert!(s.shows(u32::MAX - 5));
    }

    #[test]
    fn a_commit_waits_until_a_later_snapshot_shows_it() {
        let mut g = Gate::new(Vec::new());
        g.admit(commit(105, 1000, "a"));
        let h = g.horizon();
        assert!(g.waiting());
        // Committed in the WAL, still in the proc array.
        assert!(g.decide(&snap("100:110:105"), h).visible.is_empty());
        assert!(g.decide(&snap("100:105:"), h).visible.is_empty());
        let d = g.decide(&snap("106:106:"), h);
        assert_eq!(d.visible, vec![commit(105, 1000, "a")]);
        assert!(!g.waiting());
    }

    #[test]
    fn a_poll_decides_only_what_was_decoded_before_it_began() {
        let mut g = Gate::new(Vec::new());
        g.admit(commit(101, 1000, "a"));
        let h = g.horizon();
        g.admit(commit(102, 1100, "b"));
        let d = g.decide(&snap("200:200:"), h);
        assert_eq!(d.visible.len(), 1);
        assert_eq!(g.waiting.len(), 1);
        let d = g.decide(&snap("200:200:"), g.horizon());
        assert_eq!(d.visible, vec![commit(102, 1100, "b")]);
    }

    #[test]
    fn the_slot_is_confirmed_only_up_to_the_oldest_waiting_commit() {
        let mut g = Gate::new(Vec::new());
        g.keepalive(Lsn(500));
        g.admit(commit(101, 1000, "a"));
        g.admit(commit(102, 1100, "b"));
        g.admit(commit(103, 1200, "c"));
        assert_eq!(g.confirmable(), Some(Lsn(500)));
        // 102 visible first: nothing more can be confirmed while 101 waits.
        g.decide(&snap("101:103:101"), g.horizon());
        assert_eq!(g.confirmable(), Some(Lsn(500)));
        // 101 visible, 103 not: up to 102's end.
        g.decide(&snap("103:104:103"), g.horizon());
        assert_eq!(g.confirmable(), Some(Lsn(1100)));
        g.decide(&snap("104:104:"), g.horizon());
        assert_eq!(g.confirmable(), Some(Lsn(1200)));
    }

    #[test]
    fn commits_with_nothing_to_apply_do_not_wait() {
        let mut g = Gate::new(Vec::new());
        g.admit(Commit {
            xid: 7,
            end_lsn: Lsn(90),
            changes: Vec::new(),
        });
        assert!(!g.waiting());
        assert_eq!(g.confirmable(), Some(Lsn(90)));
    }

    #[test]
    fn a_transaction_from_before_the_slot_flushes_when_it_becomes_visible_undecoded() {
        let mut g = Gate::new(vec![50, 60]);
        assert!(g.waiting());
        // 60 is decoded (it committed after the consistent point): the gate handles it.
        g.admit(commit(60, 1000, "a"));
        let d = g.decide(&snap("50:61:50"), g.horizon());
        assert!(!d.flush_all);
        assert_eq!(d.visible.len(), 1);
        // 50 completes without a decoded commit: its change may be one the slot never sees.
        let d = g.decide(&snap("61:61:"), g.horizon());
        assert!(d.flush_all);
        assert!(!g.waiting());
    }

    #[test]
    fn a_long_wait_turns_keys_into_flushes() {
        let mut g = Gate::new(Vec::new());
        let keys: Vec<String> = (0..MAX_WAITING_KEYS / 2 + 1)
            .map(|i| i.to_string())
            .collect();
        for xid in [1, 2] {
            g.admit(Commit {
                xid,
                end_lsn: Lsn(u64::from(xid)),
                changes: vec![Evict::Keys("users".into(), keys.clone())],
            });
        }
        let d = g.decide(&snap("3:3:"), g.horizon());
        assert_eq!(
            d.visible
                .iter()
                .flat_map(|c| c.changes.clone())
                .collect::<Vec<_>>(),
            vec![Evict::Table("users".into()), Evict::Table("users".into())]
        );
    }

    #[test]
    fn new_rules_flush_the_tables_of_waiting_commits() {
        let mut g = Gate::new(Vec::new());
        g.admit(Commit {
            xid: 5,
            end_lsn: Lsn(1),
            changes: vec![
                Evict::Keys("users".into(), vec!["a".into()]),
                Evict::Keys("orgs".into(), vec!["b".into()]),
            ],
        });
        g.flush_tables(&["users".into()]);
        let d = g.decide(&snap("6:6:"), g.horizon());
        assert_eq!(
            d.visible[0].changes,
            vec![
                Evict::Table("users".into()),
                Evict::Keys("orgs".into(), vec!["b".into()])
            ]
        );
    }

    /// A model of the race the gate closes, over every interleaving of three actors:
    ///
    /// * the writer: its commit record is flushed (decodable), then it becomes visible;
    /// * the source: decodes the commit (only once flushed), then polls twice (each poll takes
    ///   a snapshot when it begins and applies what it decided when it ends);
    /// * a loader that missed: takes its ticket (the cache's epoch), reads the row (the new
    ///   value only once visible), stores it unless an invalidation came after its ticket.
    ///
    /// The cache starts with the old row. At the end (the writer visible, the source polled
    /// until nothing waits), the cache must not hold the old row. Applying at decoding, as the
    /// source did before the gate, fails in some interleavings: the test can fail.
    fn stale_orders(apply_at_decoding: bool) -> (usize, usize) {
        #[derive(Clone, Copy, PartialEq, Debug)]
        enum Row {
            Old,
            New,
        }
        #[derive(Clone)]
        struct World {
            flushed: bool,
            visible: bool,
            gate: std::rc::Rc<std::cell::RefCell<Gate>>,
            poll: Option<(Snapshot, u64)>,
            epoch: u64,
            cached: Option<Row>,
            ticket: u64,
            read: Option<Row>,
        }
        const XID: u32 = 100;
        let snapshot = |visible: bool| {
            if visible {
                snap("101:101:")
            } else {
                snap("100:101:100")
            }
        };
        fn invalidate(w: &mut World) {
            w.epoch += 1;
            w.cached = None;
        }
        fn apply(w: &mut World, d: Decided) {
            if !d.visible.is_empty() {
                invalidate(w);
            }
        }
        // Steps per actor, in program order: writer 0..2, source 0..5, loader 0..3.
        let lengths = [2usize, 5, 3];
        let mut orders = Vec::new();
        let mut order = Vec::new();
        fn interleave(left: [usize; 3], order: &mut Vec<usize>, all: &mut Vec<Vec<usize>>) {
            if left.iter().all(|n| *n == 0) {
                all.push(order.clone());
                return;
            }
            for a in 0..3 {
                if left[a] > 0 {
                    let mut l = left;
                    l[a] -= 1;
                    order.push(a);
                    interleave(l, order, all);
                    order.pop();
                }
            }
        }
        interleave(lengths, &mut order, &mut orders);
        let (mut run, mut stale) = (0, 0);
        'orders: for order in &orders {
            let mut w = World {
                flushed: false,
                visible: false,
                gate: Default::default(),
                poll: None,
                epoch: 0,
                cached: Some(Row::Old),
                ticket: 0,
                read: None,
            };
            let mut pc = [0usize; 3];
            for &actor in order {
                let step = pc[actor];
                pc[actor] += 1;
                match (actor, step) {
                    (0, 0) => w.flushed = true,
                    (0, _) => w.visible = true,
                    // Decoding needs the record flushed: orders that decode first are not real.
                    (1, 0) if !w.flushed => continue 'orders,
                    (1, 0) => {
                        if apply_at_decoding {
                            invalidate(&mut w);
                        } else {
                            w.gate.borrow_mut().admit(commit(XID, 1, "a"));
                        }
                    }
                    (1, 1 | 3) => {
                        let horizon = w.gate.borrow().horizon();
                        w.poll = Some((snapshot(w.visible), horizon));
                    }
                    (1, _) => {
                        let (s, h) = w.poll.take().expect("begun");
                        let d = w.gate.borrow_mut().decide(&s, h);
                        apply(&mut w, d);
                    }
                    (2, 0) => w.ticket = w.epoch,
                    (2, 1) => w.read = Some(if w.visible { Row::New } else { Row::Old }),
                    _ => {
                        if w.epoch == w.ticket {
                            w.cached = w.read;
                        }
                    }
                }
            }
            // The source goes on polling while something waits; the writer is visible now.
            while w.gate.borrow().waiting() {
                let h = w.gate.borrow().horizon();
                let d = w.gate.borrow_mut().decide(&snapshot(true), h);
                apply(&mut w, d);
            }
            run += 1;
            if w.cached == Some(Row::Old) {
                stale += 1;
            }
        }
        (run, stale)
    }

    #[test]
    fn no_interleaving_stores_a_row_its_commit_superseded() {
        let (run, stale) = stale_orders(false);
        assert!(run >= 500, "only {run} orders explored");
        assert_eq!(stale, 0, "{stale} of {run} orders left the old row cached");
    }

    #[test]
    fn applying_at_decoding_stores_a_superseded_row_in_some_order() {
        let (run, stale) = stale_orders(true);
        assert!(
            stale > 0,
            "none of {run} orders found the race the gate closes"
        );
    }
}
