//! The invalidation handler for a cache of rows, for any source (the WAL, LISTEN, a relay).

use std::hash::Hash;

use nearcache_source::Handler;

use crate::{Cache, Mode, Tag};

/// Drives `cache` from an invalidation source: a changed row `table:key` evicts every entry
/// tagged [`Tag::row`]`(table, key)`, a table-wide change flushes the cache, and the source's
/// doubts switch the gate. Tables the cache was not built from are ignored (and counted so by
/// the source).
///
/// A cache driven by a source must serve nothing until the source delivers every change, so
/// making the handler puts the cache in [`Mode::Bypass`], whatever its
/// [`CacheConfig::initial_mode`](crate::CacheConfig::initial_mode) (a cache used without a
/// source is the other choice, and needs no handler). Several caches behind one source:
/// `nearcache_source::Handlers`.
///
/// ```
/// use std::sync::Arc;
/// use nearcache::{Cache, CacheConfig, Fill, Mode, TableHandler, Tag};
/// use nearcache_source::Handler;
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let cache: Cache<u64, String> = Cache::new(CacheConfig::default());
/// let handler = Arc::new(TableHandler::new(cache.clone(), ["invoices"]));
/// assert_eq!(cache.mode(), Mode::Bypass, "nothing served before the source delivers");
/// // What a source does once it delivers every change:
/// handler.flush_all();
/// handler.coherent();
/// let load = || async { Ok(Fill::found("A-1".to_string()).with_tag(Tag::row("invoices", 42))) };
/// cache.get_or_store(42, load).await.unwrap();
/// assert!(handler.invalidate("invoices", &["42".to_string()]));
/// assert_eq!(cache.get(&42), None);
/// assert!(!handler.invalidate("customers", &["1".to_string()]), "not cached here");
/// # });
/// ```
#[derive(Debug)]
pub struct TableHandler<K, V> {
    cache: Cache<K, V>,
    tables: Box<[String]>,
}

impl<K, V> TableHandler<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// A handler for `cache`, whose values are built from rows of `tables`; the cache is put
    /// in bypass until the source says it delivers every change.
    pub fn new<I, S>(cache: Cache<K, V>, tables: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        cache.set_mode(Mode::Bypass);
        let tables: Box<[String]> = tables.into_iter().map(Into::into).collect();
        cache.watch_tables(tables.iter());
        Self { cache, tables }
    }

    fn caches(&self, table: &str) -> bool {
        self.tables.iter().any(|t| t == table)
    }
}

impl<K, V> Handler for TableHandler<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn bypass(&self) {
        self.cache.set_mode(Mode::Bypass);
    }

    fn flush_all(&self) {
        self.cache.flush();
    }

    fn coherent(&self) {
        self.cache.set_mode(Mode::Coherent);
    }

    fn invalidate(&self, table: &str, keys: &[String]) -> bool {
        if !self.caches(table) {
            return false;
        }
        for key in keys {
            self.cache.invalidate_tag(&Tag::row(table, key));
        }
        true
    }

    fn flush_table(&self, table: &str) -> bool {
        if !self.caches(table) {
            return false;
        }
        // Entries carry row tags, not table tags: only a flush covers every row of a table.
        self.cache.flush();
        true
    }
}
