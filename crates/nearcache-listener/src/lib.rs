//! A LISTEN/NOTIFY listener that keeps a near cache coherent with Postgres.
//!
//! Depend on it, with `nearcache`, to cache your own tables: install the triggers of
//! `sql/0003_nearcache_install.sql` and attach them to your tables, give [`run`] a
//! [`Handler`] (`nearcache::TableHandler` for a nearcache cache), and spawn it. It depends on
//! no cache.
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
//! End to end, with a nearcache `Cache` and its reusable handler (`TableHandler`, which maps a
//! changed row to its tag and a table-wide change to a flush):
//!
//! ```no_run
//! use std::sync::Arc;
//! use nearcache::{Cache, CacheConfig, Fill, LoadError, Mode, TableHandler, Tag};
//! use nearcache_listener::{run, ListenerConfig, ListenerStatus};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Serve nothing until the listener listens.
//! let cache: Cache<i64, String> =
//!     Cache::new(CacheConfig { initial_mode: Mode::Bypass, ..CacheConfig::default() });
//! let handler = Arc::new(TableHandler::new(cache.clone(), ["invoices"]));
//! let config = ListenerConfig::new("postgres://app@db/app")?.with_tables(["invoices"]);
//! let status = ListenerStatus::default();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! tokio::spawn(run(config, handler, status.clone(), async { let _ = stopped.await; }));
//!
//! // Loaders tag what they load with the rows it came from.
//! let invoice = cache
//!     .get_or_store(42, || async {
//!         let number = String::from("A-42"); // your query here
//!         Ok::<_, LoadError>(Fill::found(number).with_tag(Tag::row("invoices", 42_i64)))
//!     })
//!     .await?;
//! // An UPDATE of invoices row 42, by anyone, evicts it on every instance.
//! # let _ = (invoice, stop);
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
