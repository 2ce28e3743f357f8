//! A per-process cache ("near cache") of rows from a database, kept coherent with the database
//! by invalidations, built on [moka](https://docs.rs/moka).
//!
//! Depend on this crate where a cache is built and wired (the binary of a service); code that
//! only *uses* a cache depends on `nearcache-store` and its [`Store`] trait, which [`Cache`]
//! implements. This crate does no I/O: what tells it that rows changed (a source:
//! `nearcache-wal` or `nearcache-listener`) drives a [`TableHandler`], which calls
//! [`Cache::invalidate_tag`], [`Cache::flush`] and [`Cache::set_mode`].
//!
//! # What it offers
//!
//! ConCache's operations: [`get`](Cache::get), [`put`](Cache::put),
//! [`insert_new`](Cache::insert_new), [`update`](Cache::update) and
//! [`update_existing`](Cache::update_existing) (isolated read-modify-write),
//! [`get_or_store`](Cache::get_or_store) (one load per key however many callers miss at once),
//! [`delete`](Cache::delete), [`touch`](Cache::touch), [`len`](Cache::len); an absolute TTL,
//! time-to-idle under that cap, per-entry TTLs, a capacity bound, negative entries and
//! modification callbacks. On top of that:
//!
//! * **Fenced fills.** `get_or_store` takes a ticket before it calls the loader. The loaded
//!   value is stored only if no invalidation of its key or of any of its [`Tag`]s, and no flush,
//!   happened after the ticket; otherwise it is returned to the caller and not stored.
//! * **Tags.** A value names the rows it was built from; [`Cache::invalidate_tag`] evicts every
//!   entry carrying the tag through an index, without scanning the cache.
//! * **Coherence gate.** In [`Mode::Bypass`] nothing is served or stored; entering it flushes.
//!
//! # Consistency model
//!
//! Let an invalidation *complete* when `invalidate_tag(T)`, `invalidate(key)`, `delete(key)`,
//! `put(key, …)`, `flush()` or `set_mode(Bypass)` returns. The invariant:
//!
//! > No `get_or_store`, `get` or hit that begins after an invalidation (of the key, of one of
//! > the value's tags, or a flush) has completed answers with a value loaded under a ticket
//! > older than that invalidation, or stored before it.
//!
//! It holds for a caller that shares another caller's load, too: a waiter takes the leader's
//! value only if the fence still admits it (nothing the value depends on was invalidated after
//! its ticket, and no flush happened), whether or not the leader managed to store it; otherwise
//! it loads for itself. Unrelated invalidations do not send waiters to the database. So if
//! invalidations are issued once a change is committed, a reader that starts after the
//! invalidation sees the change or something newer.
//!
//! The fence keeps an invalidation for one to two [`CacheConfig::fence_window`]s: a load that
//! began longer ago than a window is not stored (its caller still gets the value it loaded),
//! which is what lets the fence forget old invalidations instead of holding each one until its
//! memory is full.
//!
//! The unit tests check this invariant under every interleaving of the protocol's steps for
//! small scenarios (two loads and an invalidation of their tag; a load, a flush and a
//! Bypass/Coherent round trip; a load and a put; a load and a delete; a refresh ahead of expiry
//! and an invalidation of its key or its tag), with an explorer that
//! pauses the cache at each step boundary (`src/explore.rs`, compiled into test builds only).
//!
//! The staleness bound is therefore the delay between a commit and its invalidation: with
//! Postgres notifications, the notification's delivery; under faults, whatever puts the cache
//! in [`Mode::Bypass`] (the listener's heartbeat timeout). TTL is only a backstop.
//!
//! # Example
//!
//! ```
//! use nearcache::{Cache, CacheConfig, Fill, Tag};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let cache: Cache<u64, String> = Cache::new(CacheConfig::default());
//! let load = || async { Ok(Fill::found("ada".to_string()).with_tag(Tag::row("orgs", 7))) };
//!
//! assert_eq!(cache.get_or_store(1, load).await.unwrap().as_deref(), Some("ada"));
//! assert_eq!(cache.get(&1).as_deref(), Some("ada"));
//!
//! // The organization changed: every user that embeds it goes.
//! cache.invalidate_tag(&Tag::row("orgs", 7));
//! assert_eq!(cache.get(&1), None);
//! # });
//! ```

mod cache;
mod config;
mod entry;
mod expiry;
#[cfg(test)]
mod explore;
mod fence;
mod flight;
mod handler;
mod monitor;
mod removal;
mod rows;
mod stats;
mod tags;
mod weight;

pub use cache::{Audit, Cache, Internals, Write};
pub use config::CacheConfig;
pub use entry::{Cause, Change};
pub use handler::TableHandler;
pub use monitor::{Health, Monitor};
pub use nearcache_source::{Exposition, MetricKind};
pub use nearcache_store::{Fill, LoadError, Loader, Mode, RowKey, Store, Tag};
pub use stats::{Metric, Stats};
pub use weight::{ENTRY_OVERHEAD, TAG_OVERHEAD};

#[cfg(test)]
mod tests;
