//! Applying a commit once it is visible: the handler hears its position, then each table's
//! evictions.

use nearcache_source::{Handler, SourceStatus};

use crate::decoder::Evict;
use crate::gate::Commit;

/// Applies a visible commit's evictions.
pub(crate) fn apply<H: Handler + ?Sized>(commit: Commit, handler: &H, status: &SourceStatus) {
    if commit.changes.is_empty() {
        return;
    }
    handler.at_commit(commit.end_lsn.text(&mut [0; 17]));
    for change in commit.changes {
        status.notification();
        let cached = match change {
            Evict::Keys(table, keys) => handler.invalidate(&table, &keys),
            Evict::Table(table) => handler.flush_table(&table),
        };
        if !cached {
            status.ignored();
        }
    }
}
