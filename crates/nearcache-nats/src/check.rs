//! The instance's own check of its cached tables: the relay checks what its source relies on
//! for every table it reads, but it cannot know which tables an instance caches, nor that the
//! instance's database is the one it reads. So the instance asks its own database, through its
//! own pool, whether each table it caches is read the way the relay says it reads (its
//! heartbeats carry a [`Reads`]): before it first becomes coherent, whenever that changes, and
//! then on a timer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::wire::Reads;

/// What a check or a probe's write says went wrong in the caller's own database layer, with
/// its causes (a `sqlx::Error`, a `tokio_postgres::Error`, …).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the cached tables did not pass their check. The source bypasses, and shows the message
/// with its causes as its problem.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// They are not read as the relay says: one line per problem, each with its fix.
    #[error("{}", .0.join("; "))]
    Problems(Vec<String>),
    /// The check could not be made: the database layer's error.
    #[error(transparent)]
    Failed(BoxError),
}

/// The check's outcome.
pub type CheckResult = Pin<Box<dyn Future<Output = Result<(), CheckError>> + Send>>;

/// Checks, through the instance's own database pool, that every table the instance caches is
/// read the way the relay reads (`None`: a relay that does not say; check what does not depend
/// on it).
pub type CheckTables = Arc<dyn Fn(Option<Reads>) -> CheckResult + Send + Sync>;

/// The instance's check of its cached tables, and how often it is made again.
#[derive(Clone)]
pub struct TableCheck {
    /// Time between checks while subscribed. Default 10 s.
    pub interval: Duration,
    /// The check.
    pub check: CheckTables,
}

impl TableCheck {
    /// `check`, made every 10 s.
    pub fn new(check: CheckTables) -> Self {
        Self {
            interval: Duration::from_secs(10),
            check,
        }
    }
}

impl fmt::Debug for TableCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TableCheck")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// The check's state within one subscription.
pub(crate) struct Checker<'a> {
    config: Option<&'a TableCheck>,
    /// How the relay says it reads, once it has said (`Some(None)`: a relay that does not say).
    reads: Option<Option<Reads>>,
    /// What the last check that passed was made against.
    passed: Option<Option<Reads>>,
    /// When the next check is due.
    next: Option<Instant>,
    /// The check in flight, and what it is made against.
    pub(crate) running: Option<CheckResult>,
    running_for: Option<Reads>,
}

impl<'a> Checker<'a> {
    pub(crate) fn new(config: Option<&'a TableCheck>) -> Self {
        Self {
            config,
            reads: None,
            passed: None,
            next: None,
            running: None,
            running_for: None,
        }
    }

    /// Whether the cache may be coherent: no check configured, or the last one passed against
    /// what the relay says now.
    pub(crate) fn passed(&self) -> bool {
        self.config.is_none() || (self.passed.is_some() && self.passed == self.reads)
    }

    /// A heartbeat said how the relay reads: a change is checked at once.
    pub(crate) fn heard(&mut self, reads: Option<&Reads>) {
        if self.config.is_some() && self.reads.as_ref().map(Option::as_ref) != Some(reads) {
            self.reads = Some(reads.cloned());
            self.next = Some(Instant::now());
        }
    }

    /// When the next check is due (none while one runs).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.running.is_none().then_some(self.next).flatten()
    }

    /// Starts the check due.
    pub(crate) fn start(&mut self) {
        let (Some(config), Some(reads)) = (self.config, self.reads.clone()) else {
            return;
        };
        self.next = None;
        self.running_for = reads.clone();
        self.running = Some((config.check)(reads));
    }

    /// The check in flight finished with `result`: returns it, and schedules the next.
    pub(crate) fn finished(&mut self, result: Result<(), CheckError>) -> Result<(), CheckError> {
        self.running = None;
        let made_for = Some(self.running_for.take());
        let interval = self.config.map_or(Duration::from_secs(10), |c| c.interval);
        // A relay that changed how it reads meanwhile is checked again at once.
        self.next = Some(if made_for == self.reads {
            Instant::now() + interval
        } else {
            Instant::now()
        });
        match result {
            Ok(()) => {
                self.passed = made_for;
                Ok(())
            }
            Err(problem) => {
                self.passed = None;
                Err(problem)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A check that records what it was asked about and finds `problems` (none: a pass).
    fn recording(problems: &[&str]) -> (TableCheck, Arc<Mutex<Vec<Option<Reads>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let problems: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let check = TableCheck::new(Arc::new(move |reads| {
            log.lock().unwrap().push(reads);
            let answer = if problems.is_empty() {
                Ok(())
            } else {
                Err(CheckError::Problems(problems.clone()))
            };
            Box::pin(async move { answer })
        }));
        (check, seen)
    }

    fn wal(publication: &str) -> Reads {
        Reads::Wal {
            publication: publication.into(),
        }
    }

    #[tokio::test]
    async fn coherence_waits_for_a_check_against_what_the_relay_says_now() {
        let (config, seen) = recording(&[]);
        let mut c = Checker::new(Some(&config));
        assert!(!c.passed(), "nothing checked yet");
        assert_eq!(
            c.deadline(),
            None,
            "nothing to check against before a heartbeat"
        );
        c.heard(Some(&wal("a")));
        assert!(c.deadline().is_some());
        c.start();
        assert_eq!(c.deadline(), None, "one at a time");
        let result = c.running.as_mut().unwrap().await;
        // The relay changed how it reads while the check ran: that check does not count.
        c.heard(Some(&wal("b")));
        assert!(c.finished(result).is_ok());
        assert!(!c.passed());
        assert!(
            c.deadline().unwrap() <= Instant::now(),
            "checked again at once"
        );
        c.start();
        let result = c.running.as_mut().unwrap().await;
        assert!(c.finished(result).is_ok());
        assert!(c.passed());
        assert!(c.deadline().unwrap() > Instant::now() + Duration::from_secs(9));
        // The same again is no news.
        c.heard(Some(&wal("b")));
        assert!(c.passed());
        assert_eq!(*seen.lock().unwrap(), vec![Some(wal("a")), Some(wal("b"))]);
    }

    #[tokio::test]
    async fn a_problem_is_returned_and_withdraws_the_pass() {
        let (config, _) = recording(&["users is not in publication nearcache"]);
        let mut c = Checker::new(Some(&config));
        c.heard(None);
        c.start();
        let result = c.running.as_mut().unwrap().await;
        let problem = c.finished(result).unwrap_err();
        assert_eq!(problem.to_string(), "users is not in publication nearcache");
        assert!(!c.passed());
    }

    #[test]
    fn without_a_check_the_cache_may_be_coherent_at_once() {
        let mut c = Checker::new(None);
        c.heard(Some(&wal("a")));
        assert!(c.passed());
        assert_eq!(c.deadline(), None);
    }
}
