//! The interface a service codes against to cache what it loads, and a stub that caches nothing.
//!
//! Depend on this crate from code that *uses* a cache (handlers, auth layers): it names the
//! [`Store`] trait, the [`Fill`] a loader returns (a value or "no such row", the [`Tag`]s it
//! depends on, an optional TTL), and [`PassThrough`], which calls the loader every time and
//! stores nothing, so tests see the database rather than a cache filled by an earlier test.
//! The implementation with a real cache is `nearcache::Cache`; this crate depends on no cache.
//!
//! With the `mock` feature, `MockStore` is a mockall mock of [`Store`].
//!
//! ```
//! use nearcache_store::{Fill, PassThrough, Store, Tag};
//!
//! # tokio_test_block_on(async {
//! let store: std::sync::Arc<dyn Store<u32, String>> = std::sync::Arc::new(PassThrough::new());
//! let loaded = store
//!     .get_or_store(7, Box::pin(async { Ok(Fill::found("seven".to_string()).with_tag(Tag::row("numbers", 7))) }))
//!     .await
//!     .unwrap();
//! assert_eq!(loaded.as_deref(), Some("seven"));
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

mod error;
mod fill;
mod passthrough;
mod store;
mod tag;

pub use error::{LoadError, SharedError};
pub use fill::Fill;
pub use passthrough::PassThrough;
#[cfg(feature = "mock")]
pub use store::MockStore;
pub use store::{Loader, Mode, Store};
pub use tag::{RowKey, Tag};
