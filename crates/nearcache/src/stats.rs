//! Counters of a cache, kept in atomics. Each counter is declared once, below: its name, its
//! help text (also its doc) and its kind; the atomics, the snapshot and the list an exposition
//! iterates over ([`Stats::metrics`]) are all generated from that declaration.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One counter of a [`Stats`] snapshot, described for an exposition such as Prometheus': the
/// same type as a source's counters and gauges (`nearcache_source::Metric`), so that one
/// exposition renders both.
pub use nearcache_source::Metric;

macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        /// A snapshot of a cache's counters since it was made. Every field is a monotonic
        /// counter; [`Stats::metrics`] lists them with their names and help texts.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $(
                #[doc = $help]
                pub $name: u64,
            )*
        }

        #[derive(Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: AtomicU64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> Stats {
                Stats {
                    $($name: self.$name.load(Relaxed),)*
                }
            }
        }

        impl Stats {
            /// Every counter with its name and help text, in declaration order.
            pub fn metrics(&self) -> Vec<Metric> {
                vec![$(Metric { name: stringify!($name), help: $help, value: self.$name as f64 },)*]
            }
        }
    };
}

counters! {
    hits: "Lookups answered from the cache (negative entries included).",
    misses: "Lookups the cache could not answer while coherent.",
    bypassed: "Lookups made while in bypass mode (each calls its loader).",
    loads: "Loader calls.",
    load_errors: "Loader calls that failed.",
    coalesced: "Callers of get_or_store served by another caller's load.",
    unwatched_fills: "Loaded values stored with no tag of a table the cache's source watches (the tables its TableHandler was made with): no change can evict them, only their TTL.",
    discarded_fills: "Loads returned but not stored, because an invalidation or a flush happened after their ticket (or the cache went to bypass).",
    invalidations: "Keys and tags invalidated (invalidate, invalidate_tag, and each of invalidate_all's).",
    invalidated_entries: "Entries removed by invalidations.",
    flushes: "Flushes, including those of entering bypass mode.",
    expired: "Entries that expired (TTL, time to idle).",
    evicted: "Entries evicted to respect the capacity.",
    oversized: "Values not stored because they alone weigh more than the cache's max_bytes.",
    audit_checked: "Cached entries the audit loaded again and compared.",
    audit_mismatched: "Audited entries that differed from the database when loaded (usually a change whose invalidation was on its way).",
    audit_stale: "Audited entries still cached the source's bound after they differed: an invalidation was missed. Each is evicted.",
    refreshes: "Entries loaded again ahead of their expiry because a read found them older than refresh_after (counted in loads too).",
    warmed: "Loads made by a warm start (keys kept across a restart, loaded again once coherent).",
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_listed_once_with_its_value() {
        let c = Counters::default();
        bump(&c.hits);
        bump(&c.hits);
        bump(&c.evicted);
        let metrics = c.snapshot().metrics();
        assert_eq!(metrics.len(), 19);
        let get = |name: &str| metrics.iter().find(|m| m.name == name).unwrap().value;
        assert_eq!((get("hits"), get("evicted"), get("loads")), (2.0, 1.0, 0.0));
        let mut names: Vec<&str> = metrics.iter().map(|m| m.name).collect();
        names.dedup();
        assert_eq!(names.len(), 19);
    }
}
