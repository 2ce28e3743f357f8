//! The relay: one process (or two, one active) reads Postgres' changes exactly as an instance
//! would (the WAL by default, LISTEN possible) and publishes them to a NATS JetStream stream,
//! which any number of instances follow with `nearcache-nats`. Postgres then serves one
//! replication slot (or one LISTEN connection) per relay instead of one per instance, and
//! decodes its WAL once.
//!
//! Every message carries the relay's epoch (new at every start or takeover) and a sequence
//! number; heartbeats come every interval with the relay's source state and lag. With a lease
//! (a key in a JetStream key-value bucket with a time to live), any number of relays may run:
//! exactly one holds the key and publishes; the others wait, and one takes over within the
//! lease's time to live after the active one dies.

mod forward;
mod lease;
mod publisher;
mod relay;
mod status;

pub use relay::{run, RelayConfig, RelaySource, RelayStatus, Role};
