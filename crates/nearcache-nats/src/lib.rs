//! The fleet's invalidation source: a relay (`nearcache-relay`) reads Postgres once and
//! publishes every change to a NATS JetStream stream; each instance runs [`run`] here, which
//! drives the same [`Handler`] as the direct sources.
//!
//! # Wire format
//!
//! Every message on `<prefix>.changes` is one JSON [`Message`]: the relay's `epoch` (a fresh id
//! per relay start or takeover), its `seq` (1, 2, 3… within the epoch, heartbeats included),
//! whether the relay's own source is `coherent`, and what changed. Heartbeats come every
//! interval, so silence is a fault too.
//!
//! # Protocol of an instance
//!
//! 1. Connect; create an ordered consumer on the stream, delivering only new messages; then
//!    the handler stays in bypass until a message says the relay is coherent, at which point
//!    [`Handler::flush_all`] then [`Handler::coherent`]: nothing committed before the
//!    subscription survives, everything after it arrives.
//! 2. A delivery gap between NATS and the instance is replayed by JetStream: the ordered
//!    consumer starts again after the last stream sequence it saw, and messages seen twice are
//!    skipped by their sequence.
//! 3. Bypass and flush at once on a gap in the relay's own sequence that no replay can fill,
//!    a new epoch, a message saying the relay's source is in doubt, no message for
//!    `heartbeat_timeout`, a lost NATS connection, or a message that does not parse.
//!    Each is counted; then the instance is coherent again as soon as the relay is.
//! 4. With a [`Probe`], the instance proves the whole path while coherent: at once, then every
//!    interval, it writes its own row of an attached probe table through its own database pool
//!    and must read that key back from the stream within the probe's timeout, or it bypasses
//!    and subscribes again. A heartbeat says the relay is alive; the probe says the relay reads
//!    the database this instance writes to and publishes where it listens.
//! 5. With a [`TableCheck`], the instance checks through its own database pool that every
//!    table it caches is read the way the relay's heartbeats say the relay reads (in the
//!    publication, with a replica identity that carries the attached key; or carrying the
//!    triggers on the relay's channel): before its cache first becomes coherent, whenever the
//!    relay's way changes, and every interval after. A problem bypasses, shown as the
//!    source's problem, and the instance subscribes again.

mod check;
mod config;
mod probe;
mod security;
mod source;
mod wire;

pub use check::{BoxError, CheckError, CheckResult, CheckTables, TableCheck};
pub use config::{NatsConfig, NatsConfigError};
pub use probe::{probe_key, Probe, ProbeWrite};
pub use security::{NatsSecurity, SecurityError};
pub use source::run;
pub use wire::{Change, Message, Reads, CHANGES};
