//! The contract between an invalidation source and the caches it drives.

/// What a source (LISTEN, the WAL, a relay) tells the cache side. Calls come from one task, in
/// protocol order: [`Handler::bypass`] whenever delivery is in doubt, then, once the source
/// delivers every change from a known point on, [`Handler::flush_all`] and
/// [`Handler::coherent`]; in between, invalidations.
pub trait Handler: Send + Sync + 'static {
    /// Stop serving from the cache and flush it: the source can no longer be sure it hears
    /// about changes.
    fn bypass(&self);

    /// Flush every cache the handler drives.
    fn flush_all(&self);

    /// Serve from the cache again: the source delivers every change from now on.
    fn coherent(&self);

    /// These rows of `table` changed. Returns `false` if the handler does not cache `table`.
    fn invalidate(&self, table: &str, keys: &[String]) -> bool;

    /// Any row of `table` may have changed. Returns `false` if the handler does not cache it.
    fn flush_table(&self, table: &str) -> bool;

    /// The changes that follow come from the transaction that committed at `lsn` (Postgres'
    /// text form, `0/16B6C50`). Sources that know commit positions (the WAL) say so; the
    /// relay forwards it in its messages. Nothing to do for a cache.
    fn at_commit(&self, lsn: &str) {
        let _ = lsn;
    }
}

/// Several handlers driven by one source: a service that caches several tables in several
/// caches (each with its own handler, its own tables) follows one source, and every call
/// reaches every handler, the source's doubts included, so all bypass and serve again together.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use nearcache_source::{Handler, Handlers};
///
/// /// Caches `table` only; counts flushes.
/// struct One(&'static str, Arc<AtomicUsize>);
/// impl Handler for One {
///     fn bypass(&self) {}
///     fn flush_all(&self) { self.1.fetch_add(1, Ordering::Relaxed); }
///     fn coherent(&self) {}
///     fn invalidate(&self, table: &str, _: &[String]) -> bool { table == self.0 }
///     fn flush_table(&self, table: &str) -> bool { table == self.0 }
/// }
/// let flushes = Arc::new(AtomicUsize::new(0));
/// let both = Handlers::new()
///     .with(One("products", flushes.clone()))
///     .with(One("prices", flushes.clone()));
/// assert!(both.invalidate("prices", &["7".into()]));
/// assert!(!both.invalidate("orders", &["7".into()]), "nobody caches it");
/// both.flush_all();
/// assert_eq!(flushes.load(Ordering::Relaxed), 2, "every cache hears it");
/// ```
#[derive(Default)]
pub struct Handlers(Vec<Box<dyn Handler>>);

impl Handlers {
    /// No handlers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// These handlers and `handler`.
    #[must_use]
    pub fn with(mut self, handler: impl Handler) -> Self {
        self.0.push(Box::new(handler));
        self
    }
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("handlers", &self.0.len())
            .finish()
    }
}

impl Handler for Handlers {
    fn bypass(&self) {
        self.0.iter().for_each(|h| h.bypass());
    }

    fn flush_all(&self) {
        self.0.iter().for_each(|h| h.flush_all());
    }

    fn coherent(&self) {
        self.0.iter().for_each(|h| h.coherent());
    }

    fn invalidate(&self, table: &str, keys: &[String]) -> bool {
        // Every handler is told, not only the first that caches the table.
        self.0
            .iter()
            .fold(false, |any, h| h.invalidate(table, keys) | any)
    }

    fn flush_table(&self, table: &str) -> bool {
        self.0
            .iter()
            .fold(false, |any, h| h.flush_table(table) | any)
    }

    fn at_commit(&self, lsn: &str) {
        self.0.iter().for_each(|h| h.at_commit(lsn));
    }
}
