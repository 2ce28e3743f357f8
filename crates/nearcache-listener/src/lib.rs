//! A LISTEN/NOTIFY listener that keeps a near cache coherent with Postgres.
//!
//! Depend on it, with `nearcache`, to cache your own tables: install the triggers of
//! `sql/0003_nearcache_install.sql` and attach them to your tables, implement [`Handler`] (a few lines that turn table keys into
//! cache invalidations), and spawn [`run`]. It depends on no cache.
//!
//! # Protocol
//!
//! [`run`] holds one dedicated connection (never a pooled one), with TCP keepalives, and drives
//! the handler's coherence gate:
//!
//! 1. Connect; `LISTEN` in autocommit; ask the database whether the configured tables carry
//!    the triggers as they must and notify on our channel (`nearcache_check`; any problem keeps
//!    the handler in bypass, is reported by [`ListenerStatus::problem`], and is checked again on
//!    the next attempt); then [`Handler::flush_all`], then
//!    [`Handler::coherent`] — in this order, so that no change committed before the `LISTEN`
//!    can survive in the cache.
//! 2. Each notification becomes [`Handler::invalidate`] or [`Handler::flush_table`]. A payload
//!    it cannot parse is logged, counted and answered with [`Handler::flush_all`].
//! 3. Every `heartbeat_interval` the listener notifies itself on a channel of its own and
//!    expects the message back within `heartbeat_timeout`.
//! 4. On any error, a heartbeat not back in time, or shutdown: [`Handler::bypass`] at once,
//!    then (unless shutting down) reconnect with exponential backoff, jitter and a cap, forever.
//!
//! No transaction is ever run on the listening connection (notifications are held back while
//! one is open). The connection asks for a read-write server: LISTEN does not work on a
//! standby, nor behind a transaction-pooling PgBouncer.
//!
//! ```no_run
//! use std::sync::Arc;
//! use nearcache_listener::{run, Handler, ListenerConfig, ListenerStatus};
//!
//! struct Log;
//! impl Handler for Log {
//!     fn bypass(&self) { println!("bypass") }
//!     fn flush_all(&self) { println!("flush") }
//!     fn coherent(&self) { println!("coherent") }
//!     fn invalidate(&self, table: &str, keys: &[String]) -> bool {
//!         println!("{table}: {keys:?}");
//!         true
//!     }
//!     fn flush_table(&self, table: &str) -> bool { println!("{table}: flush"); true }
//! }
//!
//! # async fn demo() -> Result<(), nearcache_listener::ConfigError> {
//! let config = ListenerConfig::new("postgres://app@db/app")?;
//! let status = ListenerStatus::default();
//! // Send on `stop` (or wire in a signal) to shut down.
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! tokio::spawn(run(config, Arc::new(Log), status.clone(), async { let _ = stopped.await; }));
//! # drop(stop);
//! # Ok(()) }
//! ```

mod config;
mod listener;
mod payload;

pub use config::{ConfigError, ListenerConfig};
pub use listener::run;
/// The contract and status shared with the other sources, under this crate's names too.
pub use nearcache_source::{
    Handler, Metric, SourceState as ListenerState, SourceStatus as ListenerStatus, StatusSnapshot,
};
pub use payload::{parse, Op, Payload, PayloadError, FORMAT_VERSION};
