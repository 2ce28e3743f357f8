//! An invalidation source that reads Postgres' write-ahead log: logical decoding (`pgoutput`)
//! of the publication `nearcache` through a temporary replication slot. Nothing runs in the
//! writer's transaction and nothing is locked at commit: the WAL is written anyway.
//!
//! Depend on it, with `nearcache`, instead of `nearcache-listener`: the [`Handler`] and
//! [`SourceStatus`] are the same (`nearcache-source`), so switching sources is one call.
//!
//! # Protocol
//!
//! [`run`] holds an ordinary connection (checks, heartbeats) and a replication connection:
//!
//! 1. Check the database: `wal_level = logical`, the publication exists and holds every cached
//!    table. Any problem keeps the handler in bypass, is reported by
//!    [`SourceStatus::problem`], and is checked again on the next attempt.
//! 2. Create a TEMPORARY logical slot on the replication connection (it belongs to that
//!    session: a consumer that dies, however, leaves no slot and retains no WAL), start
//!    streaming from its consistent point, then [`Handler::flush_all`] and
//!    [`Handler::coherent`]: every change committed after the consistent point will be
//!    decoded, and everything before it has been flushed.
//! 3. Changes are collected per transaction: INSERT, UPDATE (the old and new key when the key
//!    changed), DELETE as [`Handler::invalidate`]; TRUNCATE as [`Handler::flush_table`]. A row
//!    is named by the key column its table was attached with (`nearcache_attached.key_column`),
//!    which the table's replica identity must carry (or be FULL): for a cached table whose
//!    identity does not, the source stays in bypass and says how to fix it.
//! 4. The visibility gate: a commit is decoded as soon as its record is flushed, which is
//!    before new snapshots can see it (with a synchronous standby, for as long as the standby
//!    takes). A decoded commit is applied only once `pg_current_snapshot()`, taken after it was
//!    decoded, shows its transaction complete; one snapshot per poll decides every waiting
//!    commit. Transactions that held an xid when the slot became consistent are watched too:
//!    one that becomes visible without being decoded (its commit preceded the slot) flushes
//!    everything. The slot is confirmed only up to the oldest commit not yet applied, so a live
//!    consumer holds back little WAL.
//! 5. An UPDATE that changed only ignored columns (`nearcache_attach`'s list) evicts nothing:
//!    the source remembers a digest of each row's watched columns as decoded, and evicts when
//!    it differs or is unknown (bounded; forgetting is safe).
//! 6. Every `heartbeat_interval` the source emits `pg_logical_emit_message` on the ordinary
//!    connection and expects it back through the slot, and behind the gate (a poll begun after
//!    it came back has applied what was visible), within `heartbeat_timeout`; the round trip
//!    measures decoding lag.
//! 7. Every `check_interval` the checks of step 1 run again: a problem ends the stream (bypass,
//!    the problem reported); changed attach rules are reloaded and their tables flushed.
//! 8. Any error, a closed stream, an undecodable message, a heartbeat late, or shutdown:
//!    [`Handler::bypass`] at once; then reconnect with backoff, a new slot, flush, coherent.
//!
//! Needs: `wal_level = logical`, a free replication slot and WAL sender per consumer
//! (`max_replication_slots`, `max_wal_senders`), and a role with the REPLICATION attribute.
//! Writes under `session_replication_role = replica` and prepared transactions (at COMMIT
//! PREPARED) are in the WAL like any other, and so are columns added later.

mod apply;
mod check;
mod config;
mod decoder;
mod digests;
mod gate;
mod heartbeat;
mod lsn;
mod pgoutput;
mod replication;
mod source;
mod txn;
mod usable;

pub use config::{ConfigError, WalConfig};
pub use nearcache_source::{Handler, SourceState, SourceStatus, StatusSnapshot};
pub use source::run;
pub use usable::{AskError, Decodable};
