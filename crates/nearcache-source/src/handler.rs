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
