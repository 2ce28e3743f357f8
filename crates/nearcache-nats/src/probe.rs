//! The end-to-end probe: the instance writes a row of its own through its own database pool and
//! must read the change back from the relay's stream within a timeout. A heartbeat proves that
//! the relay and NATS are alive; only the probe proves that what this instance's database
//! commits is what the relay reads and publishes where this instance listens (not another
//! database, another prefix, a stalled slot behind a relay that still heartbeats).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::check::BoxError;

/// Writes probe number `n` through the instance's own database pool: the row keyed
/// [`probe_key`]`(instance, n)` (and deletes the instance's earlier ones); `Err` is the database
/// layer's error, logged and shown with its causes as the source's problem.
pub type ProbeWrite =
    Arc<dyn Fn(u64) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send + Sync>;

/// What an instance writes, where it expects it back, and how often.
#[derive(Clone)]
pub struct Probe {
    /// The attached table the probe writes (the reference schema's `nearcache_probe`).
    pub table: String,
    /// This instance's key in that table: unique per process.
    pub instance: String,
    /// Time between probes once the cache is coherent (the first is sent at once). Default 5 s.
    pub interval: Duration,
    /// How long a probe may take to come back before the cache bypasses and the source
    /// subscribes again. Default 5 s.
    pub timeout: Duration,
    /// The write.
    pub write: ProbeWrite,
}

impl Probe {
    /// A probe of `table` keyed `instance`, written by `write`, with the default timings.
    pub fn new(table: impl Into<String>, instance: impl Into<String>, write: ProbeWrite) -> Self {
        Self {
            table: table.into(),
            instance: instance.into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            write,
        }
    }
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe")
            .field("table", &self.table)
            .field("instance", &self.instance)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The key of probe number `n` of `instance` in the probe table: each probe writes a row of
/// its own, so that the number it comes back with is the one that was sent.
pub fn probe_key(instance: &str, n: u64) -> String {
    format!("{instance}/{n}")
}

/// The probe's state within one subscription.
pub(crate) struct Prober<'a> {
    probe: &'a Probe,
    n: u64,
    /// When the probe in flight was sent.
    sent: Option<Instant>,
    /// When the next is due (while coherent).
    next: Option<Instant>,
    /// Where a failed write reports itself.
    errors: tokio::sync::mpsc::UnboundedSender<BoxError>,
}

/// What the probe's deadline means when it passes.
pub(crate) enum Due {
    /// Time to send one.
    Send,
    /// The one in flight is late.
    Late(Duration),
}

impl<'a> Prober<'a> {
    pub(crate) fn new(
        probe: &'a Probe,
        errors: tokio::sync::mpsc::UnboundedSender<BoxError>,
    ) -> Self {
        Self {
            probe,
            n: 0,
            sent: None,
            next: None,
            errors,
        }
    }

    pub(crate) fn table(&self) -> &str {
        &self.probe.table
    }

    /// The cache just became coherent: probe at once.
    pub(crate) fn start(&mut self) {
        self.next = Some(Instant::now());
    }

    /// The cache bypasses: no probing until it is coherent again.
    pub(crate) fn pause(&mut self) {
        self.next = None;
        self.sent = None;
    }

    /// The next deadline, and what it means.
    pub(crate) fn deadline(&self) -> Option<(Instant, Due)> {
        match (self.sent, self.next) {
            (Some(sent), _) => Some((sent + self.probe.timeout, Due::Late(self.probe.timeout))),
            (None, Some(next)) => Some((next, Due::Send)),
            (None, None) => None,
        }
    }

    /// Sends the next probe: the write runs on its own task, so that a slow database never
    /// holds up the delivery of changes.
    pub(crate) fn send(&mut self) {
        self.n += 1;
        self.sent = Some(Instant::now());
        self.next = None;
        let (write, n, errors) = (self.probe.write.clone(), self.n, self.errors.clone());
        tokio::spawn(async move {
            if let Err(e) = write(n).await {
                let _ = errors.send(e);
            }
        });
    }

    /// Keys of the probe table arrived: returns the round trip if one is the probe in flight.
    /// Only its number counts: a late answer to an earlier probe says nothing about how far
    /// behind the stream is now.
    pub(crate) fn arrived(&mut self, keys: &[String]) -> Option<Duration> {
        self.sent?;
        let want = probe_key(&self.probe.instance, self.n);
        if !keys.contains(&want) {
            return None;
        }
        let sent = self.sent.take()?;
        self.next = Some(Instant::now() + self.probe.interval);
        Some(sent.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> Probe {
        Probe::new(
            "nearcache_probe",
            "me",
            Arc::new(|_| Box::pin(async { Ok(()) })),
        )
    }

    #[tokio::test]
    async fn only_this_instances_key_answers_the_probe_in_flight() {
        let probe = probe();
        let (errors, _) = tokio::sync::mpsc::unbounded_channel();
        let mut p = Prober::new(&probe, errors);
        assert!(p.deadline().is_none(), "no probing before coherent");
        p.start();
        assert!(matches!(p.deadline(), Some((_, Due::Send))));
        p.send();
        assert!(matches!(p.deadline(), Some((_, Due::Late(_)))));
        assert!(p.arrived(&["someone else/1".into()]).is_none());
        assert!(p
            .arrived(&["someone else/1".into(), "me/1".into()])
            .is_some());
        // Answered: the next is due an interval later; a repeat of the key answers nothing.
        assert!(matches!(p.deadline(), Some((_, Due::Send))));
        assert!(p.arrived(&["me/1".into()]).is_none());
        // A late answer to an earlier probe does not answer the one in flight.
        p.send();
        assert!(p.arrived(&["me/1".into()]).is_none());
        assert!(matches!(p.deadline(), Some((_, Due::Late(_)))));
        assert!(p.arrived(&["me/2".into()]).is_some());
        p.pause();
        assert!(p.deadline().is_none());
    }
}
