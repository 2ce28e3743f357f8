//! Split brain: after a failover, the old primary may come back as a read-write server on its
//! old timeline, with commits the new primary never saw, while the new primary takes writes.
//! A connection that chose it by "the first host that takes writes" would read another history
//! than the rest of the instance. So each process remembers, per cluster (its system
//! identifier), the newest timeline any of its connections has seen, and every connection
//! refuses a server on an older one: it is a former primary.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// A server's cluster and timeline: its system identifier, and the timeline of the WAL it
/// writes now; both NULL on a standby (which has no current WAL position to ask about).
pub const TIMELINE_SQL: &str =
    "SELECT CASE WHEN NOT pg_is_in_recovery() THEN system_identifier::text END, \
            CASE WHEN NOT pg_is_in_recovery() \
                 THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int \
            END \
       FROM pg_control_system()";

fn newest() -> &'static Mutex<HashMap<String, i32>> {
    static NEWEST: OnceLock<Mutex<HashMap<String, i32>>> = OnceLock::new();
    NEWEST.get_or_init(Mutex::default)
}

/// Whether a server of cluster `system` on `timeline` may be used: not if a connection of this
/// process has seen a newer timeline of the same cluster. Remembers the timeline if it is the
/// newest.
pub fn admit(system: &str, timeline: i32) -> Result<(), FormerPrimary> {
    let mut newest = newest().lock().unwrap_or_else(|e| e.into_inner());
    let seen = newest.entry(system.to_string()).or_insert(timeline);
    if timeline < *seen {
        return Err(FormerPrimary {
            timeline,
            newest: *seen,
        });
    }
    *seen = timeline;
    Ok(())
}

/// A server on an older timeline than one this process has seen of its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a former primary: it writes timeline {timeline}, and this process has seen timeline \
     {newest} of its cluster (a failover happened and it came back; fence it)"
)]
pub struct FormerPrimary {
    /// The server's timeline.
    pub timeline: i32,
    /// The newest this process has seen.
    pub newest: i32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_timeline_of_the_same_cluster_is_refused_once_a_newer_was_seen() {
        assert!(admit("fence-test-a", 1).is_ok());
        assert!(admit("fence-test-a", 2).is_ok(), "a promotion");
        assert_eq!(
            admit("fence-test-a", 1),
            Err(FormerPrimary {
                timeline: 1,
                newest: 2
            })
        );
        assert!(admit("fence-test-a", 2).is_ok());
        assert!(
            admit("fence-test-b", 1).is_ok(),
            "another cluster is another story"
        );
    }
}
