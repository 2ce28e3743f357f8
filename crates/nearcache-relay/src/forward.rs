//! The relay's handler and its queue: what the source reports becomes events for the publisher,
//! in order, in a queue bounded by the keys it holds. Past the bound the queue refuses and says
//! it overflowed: the relay then stops its source, says it is in doubt and starts a new epoch,
//! rather than holding a growing backlog in memory (during a NATS outage, for instance).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use nearcache_nats::Change;
use nearcache_source::Handler;

use crate::relay::RelayStatus;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// What the source said, in the order it said it.
#[derive(Debug)]
pub(crate) enum Event {
    /// The source's state: `true` once it delivers every change, `false` when in doubt.
    State(bool),
    /// A change to publish.
    Change(Change),
    /// The changes that follow come from the transaction that committed at this position.
    Commit(String),
    /// Time for a heartbeat, queued at this instant behind everything queued before it.
    Beat(Instant),
}

impl Event {
    /// What the event weighs against the queue's bound: its keys, at least one.
    fn weight(&self) -> usize {
        match self {
            Event::Change(Change::Keys { keys, .. }) => keys.len().max(1),
            _ => 1,
        }
    }
}

/// The sending side of the queue, shared by the handler and the publisher's heartbeat timer.
#[derive(Debug)]
pub(crate) struct Queue {
    tx: UnboundedSender<Event>,
    /// What it holds, kept in the relay's status (`nearcache_relay_queued`).
    status: RelayStatus,
    bound: usize,
    overflowed: AtomicBool,
    /// Wakes the publisher when the queue overflows.
    overflow: tokio::sync::Notify,
}

impl Queue {
    /// A queue that holds at most `bound` keys (events count one each), empty: its count in
    /// `status` starts again from zero.
    pub(crate) fn new(bound: usize, status: RelayStatus) -> (Arc<Self>, UnboundedReceiver<Event>) {
        let (tx, rx) = unbounded_channel();
        status.0.queued.store(0, Relaxed);
        let queue = Arc::new(Self {
            tx,
            status,
            bound: bound.max(1),
            overflowed: AtomicBool::new(false),
            overflow: tokio::sync::Notify::new(),
        });
        (queue, rx)
    }

    /// Queues `event`, unless the queue is full (or overflowed already): then the event is
    /// dropped and the queue says so from then on.
    pub(crate) fn push(&self, event: Event) {
        if self.overflowed.load(Relaxed) {
            return;
        }
        let weight = event.weight();
        // Counted only if it fits, so that the count never reads above the bound.
        let fits = self
            .status
            .0
            .queued
            .fetch_update(Relaxed, Relaxed, |held| {
                (held + weight <= self.bound).then_some(held + weight)
            })
            .is_ok();
        if !fits {
            self.overflowed.store(true, Relaxed);
            self.overflow.notify_one();
            return;
        }
        if self.tx.send(event).is_err() {
            // The publisher gone means the relay is stopping; nothing to do.
            self.status.0.queued.fetch_sub(weight, Relaxed);
        }
    }

    /// The publisher took `event` off the queue.
    pub(crate) fn took(&self, event: &Event) {
        self.status.0.queued.fetch_sub(event.weight(), Relaxed);
    }

    /// Completes once the queue has overflowed (at once if it has).
    pub(crate) async fn overflow(&self) {
        if !self.overflowed() {
            self.overflow.notified().await;
        }
    }

    /// Whether an event was dropped because the queue was full.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed.load(Relaxed)
    }
}

/// Forwards every call of the source to the publisher. It caches nothing, so it forwards every
/// table: instances ignore those they do not cache.
pub(crate) struct Forward(pub(crate) Arc<Queue>);

impl Handler for Forward {
    fn bypass(&self) {
        self.0.push(Event::State(false));
    }

    fn flush_all(&self) {
        self.0.push(Event::Change(Change::FlushAll));
    }

    fn coherent(&self) {
        self.0.push(Event::State(true));
    }

    fn invalidate(&self, table: &str, keys: &[String]) -> bool {
        self.0.push(Event::Change(Change::Keys {
            table: table.to_string(),
            keys: keys.to_vec(),
        }));
        true
    }

    fn flush_table(&self, table: &str) -> bool {
        self.0.push(Event::Change(Change::FlushTable {
            table: table.to_string(),
        }));
        true
    }

    fn at_commit(&self, lsn: &str) {
        self.0.push(Event::Commit(lsn.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Event {
        Event::Change(Change::Keys {
            table: "users".into(),
            keys: (0..n).map(|i| i.to_string()).collect(),
        })
    }

    #[test]
    fn a_full_queue_refuses_and_says_so_until_it_is_replaced() {
        let (queue, mut rx) = Queue::new(10, RelayStatus::default());
        queue.push(keys(6));
        queue.push(Event::State(true));
        assert_eq!(queue.status.queued(), 7);
        assert!(!queue.overflowed());
        // Four more keys would make eleven.
        queue.push(keys(4));
        assert!(queue.overflowed());
        assert_eq!(queue.status.queued(), 7);
        // Taking events frees room, but an overflowed queue stays refused: what it dropped
        // is lost, and only a new epoch makes up for it.
        let first = rx.try_recv().unwrap();
        queue.took(&first);
        assert_eq!(queue.status.queued(), 1);
        queue.push(Event::State(true));
        assert_eq!(queue.status.queued(), 1);
        assert!(matches!(rx.try_recv(), Ok(Event::State(true))));
        assert!(rx.try_recv().is_err());
    }
}
