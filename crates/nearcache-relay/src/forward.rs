//! The relay's handler: what its source reports becomes events for the publisher, in order.

use nearcache_nats::Change;
use nearcache_source::Handler;
use tokio::sync::mpsc::UnboundedSender;

/// What the source said, in the order it said it.
#[derive(Debug)]
pub(crate) enum Event {
    /// The source's state: `true` once it delivers every change, `false` when in doubt.
    State(bool),
    /// A change to publish.
    Change(Change),
    /// The changes that follow come from the transaction that committed at this position.
    Commit(String),
}

/// Forwards every call of the source to the publisher. It caches nothing, so it forwards every
/// table: instances ignore those they do not cache.
pub(crate) struct Forward(pub(crate) UnboundedSender<Event>);

impl Forward {
    fn send(&self, event: Event) {
        // The publisher gone means the relay is stopping; nothing to do.
        let _ = self.0.send(event);
    }
}

impl Handler for Forward {
    fn bypass(&self) {
        self.send(Event::State(false));
    }

    fn flush_all(&self) {
        self.send(Event::Change(Change::FlushAll));
    }

    fn coherent(&self) {
        self.send(Event::State(true));
    }

    fn invalidate(&self, table: &str, keys: &[String]) -> bool {
        self.send(Event::Change(Change::Keys {
            table: table.to_string(),
            keys: keys.to_vec(),
        }));
        true
    }

    fn flush_table(&self, table: &str) -> bool {
        self.send(Event::Change(Change::FlushTable {
            table: table.to_string(),
        }));
        true
    }

    fn at_commit(&self, lsn: &str) {
        self.send(Event::Commit(lsn.to_string()));
    }
}
