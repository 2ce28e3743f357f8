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
//! 3. Changes are collected per transaction and applied at its commit: INSERT, UPDATE (the old
//!    and new key when the key changed), DELETE as [`Handler::invalidate`]; TRUNCATE as
//!    [`Handler::flush_table`]. The processed position is confirmed to the server
//!    continuously, so a live consumer holds back little WAL.
//! 4. An UPDATE that changed only ignored columns (`nearcache_attach`'s list) evicts nothing:
//!    the source remembers a digest of each row's watched columns as decoded, and evicts when
//!    it differs or is unknown (bounded; forgetting is safe).
//! 5. Every `heartbeat_interval` the source emits `pg_logical_emit_message` on the ordinary
//!    connection and expects it back through the slot within `heartbeat_timeout`; the round
//!    trip measures decoding lag.
//! 6. Any error, a closed stream, an undecodable message, a heartbeat late, or shutdown:
//!    [`Handler::bypass`] at once; then reconnect with backoff, a new slot, flush, coherent.
//!
//! Needs: `wal_level = logical`, a free replication slot and WAL sender per consumer
//! (`max_replication_slots`, `max_wal_senders`), and a role with the REPLICATION attribute.
//! Writes under `session_replication_role = replica` and prepared transactions (at COMMIT
//! PREPARED) are in the WAL like any other, and so are columns added later.

mod config;
mod pgoutput;
mod source;

pub use config::{ConfigError, WalConfig};
pub use nearcache_source::{Handler, SourceState, SourceStatus, StatusSnapshot};
pub use source::run;
