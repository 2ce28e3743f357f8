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
pub struct TableHandler<K, V> {
    cache: Cache<K, V>,
    tables: Vec<String>,
    /// Tables whose rows are the cache's keys ([`TableHandler::keyed_by`]), with the parser of
    /// a row's key.
    keyed: Vec<(String, ParseKey<K>)>,
}

/// The most keys a table's changes invalidate in one step of the cache.
const INVALIDATION_CHUNK: usize = 512;

type ParseKey<K> = Box<dyn Fn(&str) -> Option<K> + Send + Sync>;

impl<K, V> std::fmt::Debug for TableHandler<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keyed: Vec<&str> = self.keyed.iter().map(|(t, _)| t.as_str()).collect();
        f.debug_struct("TableHandler")
            .field("tables", &self.tables)
            .field("keyed", &keyed)
            .finish_non_exhaustive()
    }
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
        let tables: Vec<String> = tables.into_iter().map(Into::into).collect();
        cache.watch_tables(tables.iter());
        Self {
            cache,
            tables,
            keyed: Vec::new(),
        }
    }

    /// Says that the rows of `table` are the cache's keys (the table becomes one of the
    /// handler's if it was not yet): a
    /// change of row `key` also invalidates the cache's key `parse(key)`, so a value needs no
    /// tag for its own row (a tag and its index row are about 200 bytes an entry). A key that
    /// does not parse flushes the cache, since the entry it names cannot be found. Rows of
    /// `table` are still invalidated as tags too, for the values that carry them.
    ///
    /// ```
    /// use nearcache::{Cache, CacheConfig, Fill, TableHandler};
    /// use nearcache_source::Handler;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let cache: Cache<u64, String> = Cache::new(CacheConfig::default());
    /// let handler = TableHandler::new(cache.clone(), ["invoices"]).keyed_by("invoices", |k| k.parse().ok());
    /// handler.coherent();
    /// // No tag: the entry's key is its row.
    /// cache.get_or_store(42, || async { Ok(Fill::found("A-1".to_string())) }).await.unwrap();
    /// assert!(handler.invalidate("invoices", &["42".to_string()]));
    /// assert_eq!(cache.get(&42), None);
    /// # });
    /// ```
    #[must_use]
    pub fn keyed_by(
        mut self,
        table: impl Into<String>,
        parse: impl Fn(&str) -> Option<K> + Send + Sync + 'static,
    ) -> Self {
        let table = table.into();
        if !self.caches(&table) {
            self.cache.watch_tables([&table]);
            self.tables.push(table.clone());
        }
        self.keyed.push((table, Box::new(parse)));
        self
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
        let parse = self.keyed.iter().find(|(t, _)| t == table).map(|(_, p)| p);
        // A chunk at a time, each one step under the fence's lock: a bulk commit's keys do not
        // hold it for long.
        for chunk in keys.chunks(INVALIDATION_CHUNK) {
            let mut parsed = Vec::new();
            if let Some(parse) = parse {
                parsed.reserve(chunk.len());
                for key in chunk {
                    match parse(key) {
                        Some(k) => parsed.push(k),
                        None => {
                            tracing::warn!(table, key = %key, "nearcache: a changed row's key is not one of the cache's keys; flushing");
                            self.cache.flush();
                            return true;
                        }
                    }
                }
            }
            let tags: Vec<Tag> = chunk.iter().map(|k| Tag::row(table, k)).collect();
            self.cache.invalidate_all(&parsed, &tags);
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

#[cfg(test)]
mod tests {
    use nearcache_source::Handler;

    use crate::{Cache, CacheConfig, Fill, TableHandler, Tag};

    fn keyed() -> (Cache<u64, String>, TableHandler<u64, String>) {
        let cache = Cache::new(CacheConfig::default());
        let handler = TableHandler::new(cache.clone(), ["users", "orgs"])
            .keyed_by("users", |k| k.parse().ok());
        handler.coherent();
        (cache, handler)
    }

    #[tokio::test]
    async fn a_keyed_row_evicts_its_key_and_still_its_tag() {
        let (cache, handler) = keyed();
        let untagged = || async { Ok(Fill::found("ada".to_string())) };
        cache.get_or_store(1, untagged).await.unwrap();
        // Another key built from user 1's row, tagged with it.
        let tagged =
            || async { Ok(Fill::found("team".to_string()).with_tag(Tag::row("users", 1))) };
        cache.get_or_store(9, tagged).await.unwrap();
        let other = || async { Ok(Fill::found("bob".to_string())) };
        cache.get_or_store(2, other).await.unwrap();
        assert!(handler.invalidate("users", &["1".to_string()]));
        assert_eq!((cache.get(&1), cache.get(&9)), (None, None));
        assert_eq!(cache.get(&2).as_deref(), Some("bob"));
        // A row of a table that is not keyed names no key.
        assert!(handler.invalidate("orgs", &["2".to_string()]));
        assert_eq!(cache.get(&2).as_deref(), Some("bob"));
    }

    #[tokio::test]
    async fn a_keyed_table_is_one_of_the_handlers_tables() {
        let cache: Cache<u64, String> = Cache::new(CacheConfig::default());
        let handler =
            TableHandler::new(cache.clone(), ["orgs"]).keyed_by("users", |k| k.parse().ok());
        handler.coherent();
        cache.put(1, "ada".to_string());
        assert!(handler.invalidate("users", &["1".to_string()]));
        assert_eq!(cache.get(&1), None);
    }

    #[tokio::test]
    async fn a_key_that_does_not_parse_flushes() {
        let (cache, handler) = keyed();
        cache.put(1, "ada".to_string());
        let flushes = cache.stats().flushes;
        assert!(handler.invalidate("users", &["not-a-number".to_string()]));
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.stats().flushes, flushes + 1);
    }
}
