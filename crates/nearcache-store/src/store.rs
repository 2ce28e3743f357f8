//! The Store trait.

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::{Fill, LoadError, Tag};

/// A load that has not started yet: a boxed future, polled only on a miss.
pub type Loader<V> = BoxFuture<'static, Result<Fill<V>, LoadError>>;

/// Whether a cache serves entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Entries are served and stored.
    Coherent,
    /// Nothing is served or stored: every lookup calls its loader. A cache that cannot be sure
    /// it hears about changes is in this mode.
    Bypass,
}

impl Mode {
    /// `"coherent"` or `"bypass"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Coherent => "coherent",
            Mode::Bypass => "bypass",
        }
    }
}

/// What a service needs of a cache. Object safe: hold it as `Arc<dyn Store<K, V>>`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Store<K, V>: Send + Sync
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
{
    /// The cached value of `key`, or the result of `loader` (stored when it is safe to).
    /// `Ok(None)` means the loader said there is no such row.
    ///
    /// # Errors
    /// The loader's error; it is never cached.
    async fn get_or_store(&self, key: K, loader: Loader<V>) -> Result<Option<V>, LoadError>;

    /// Forgets `key`, and keeps a load of it already in flight from storing an older value.
    fn invalidate(&self, key: &K);

    /// Forgets every entry that depends on `tag`, and fences loads in flight likewise.
    fn invalidate_tag(&self, tag: &Tag);

    /// Forgets everything, and fences every load in flight.
    fn flush(&self);

    /// Whether entries are currently served.
    fn mode(&self) -> Mode;
}
